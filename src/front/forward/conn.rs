//! Local connections as the engines take them: accepted by whoever owns the listener (`-L`'s
//! TCP or Unix listener, the plugin entry), handed over on a channel.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A local byte stream (TCP or Unix socket).
pub trait LocalStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LocalStream for T {}

/// One accepted local connection and a name for logs.
pub struct Conn {
    /// The stream.
    pub stream: Box<dyn LocalStream>,
    /// Who connected, for logs.
    pub peer: String,
}

/// Where a forward listens.
pub enum Listener {
    /// A TCP port.
    Tcp(TcpListener),
    /// A Unix socket path (removed when the listener goes).
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// The address for the `listening on` line.
    pub fn label(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a: SocketAddr| a.to_string())
                .unwrap_or_default(),
            #[cfg(unix)]
            Self::Unix(_, path) => path.display().to_string(),
        }
    }

    /// The socket file to remove at exit, if any.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Tcp(_) => None,
            #[cfg(unix)]
            Self::Unix(_, path) => Some(path.clone()),
        }
    }

    /// The bound TCP port (0 for a Unix socket).
    pub fn port(&self) -> u16 {
        match self {
            Self::Tcp(l) => l.local_addr().map(|a| a.port()).unwrap_or(0),
            #[cfg(unix)]
            Self::Unix(..) => 0,
        }
    }

    /// Accepts connections into a channel until the receiver goes away.
    pub fn spawn_accept(self) -> mpsc::Receiver<Conn> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let conn = match &self {
                    Self::Tcp(l) => match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            Conn {
                                stream: Box::new(s),
                                peer: peer.to_string(),
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            continue;
                        }
                    },
                    #[cfg(unix)]
                    Self::Unix(l, path) => match l.accept().await {
                        Ok((s, _)) => Conn {
                            stream: Box::new(s),
                            peer: path.display().to_string(),
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            continue;
                        }
                    },
                };
                tokio::select! {
                    sent = tx.send(conn) => if sent.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            #[cfg(unix)]
            if let Self::Unix(_, path) = &self {
                let _ = std::fs::remove_file(path);
            }
        });
        rx
    }
}
