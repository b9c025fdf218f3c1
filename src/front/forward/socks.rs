//! `-D [BIND:]PORT`: a SOCKS5 server (RFC 1928: CONNECT, no authentication) with no sshd on the
//! target. Each destination gets its own port-forwarding session
//! (`AWS-StartPortForwardingSessionToRemoteHost`, or `AWS-StartPortForwardingSession` for the
//! target itself), reused for all its connections through smux and ended after an idle time.
//!
//! The server side is written here rather than taken from a crate: the SOCKS5 crates own their
//! listener and dial the destination themselves, while the forwarding engines take accepted
//! connections; the part needed (greeting, CONNECT, reply) is a few dozen lines.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Conn, Forward};
use crate::aws::Aws;
use crate::cli::ForwardSpec;
use crate::front::report::Failure;
use crate::front::settings::SessionSettings;
use crate::os;
use crate::transport::End;

/// Destinations with a session at the same time, at most (StartSession is rate-limited).
pub const MAX_SESSIONS: usize = 16;
/// A destination's session ends after this long without connections.
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a client may take for the SOCKS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every destination's session shares.
pub struct Socks {
    /// SSM clients.
    pub aws: Aws,
    /// The resolved target id.
    pub target: String,
    /// The sessions' settings.
    pub settings: SessionSettings,
}

/// Where a CONNECT goes, as the target sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Host name or address (resolved on the far side).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Serves SOCKS clients until a signal.
pub async fn serve(
    socks: Arc<Socks>,
    mut conns: mpsc::Receiver<Conn>,
    mut stop: mpsc::Receiver<i32>,
) -> anyhow::Result<End> {
    let (req_tx, mut requests) = mpsc::channel::<(Destination, Conn)>(16);
    let mut sessions: HashMap<Destination, mpsc::Sender<Conn>> = HashMap::new();
    let mut stops: Vec<mpsc::Sender<i32>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            sig = stop.recv() => {
                let sig = sig.unwrap_or(os::SIGINT);
                for s in &stops {
                    let _ = s.try_send(sig);
                }
                while tasks.join_next().await.is_some() {}
                return Ok(End::Signal(sig));
            }
            conn = conns.recv() => {
                let Some(conn) = conn else { return Ok(End::LocalGone) };
                let req_tx = req_tx.clone();
                tokio::spawn(async move {
                    let peer = conn.peer.clone();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(conn)).await {
                        Ok(Ok(req)) => { let _ = req_tx.send(req).await; }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "SOCKS handshake failed"),
                        Err(_) => tracing::info!(%peer, "SOCKS handshake timed out"),
                    }
                });
            }
            Some((dest, conn)) = requests.recv() => {
                sessions.retain(|_, tx| !tx.is_closed());
                let conn = match sessions.get(&dest) {
                    Some(tx) => match tx.send(conn).await {
                        Ok(()) => continue,
                        Err(back) => back.0,
                    },
                    None => conn,
                };
                if sessions.len() >= MAX_SESSIONS {
                    tracing::warn!(%dest, "{MAX_SESSIONS} destinations already have a session; closing this connection");
                    continue;
                }
                let (tx, rx) = mpsc::channel(16);
                let _ = tx.send(conn).await;
                sessions.insert(dest.clone(), tx);
                let (stop_tx, stop_rx) = mpsc::channel(1);
                stops.retain(|s| !s.is_closed());
                stops.push(stop_tx);
                let forward = forward_to(&socks, &dest);
                let span = tracing::info_span!("socks", %dest);
                tasks.spawn(async move {
                    tracing::info!("starting a session");
                    match forward.session(None, rx, stop_rx, Some(IDLE)).await {
                        Ok(end) => tracing::info!(?end, "session over"),
                        Err(e) => tracing::warn!("session for {dest} failed: {}", Failure::of(&e).line()),
                    }
                }.instrument(span));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// The session settings for one destination.
fn forward_to(socks: &Socks, dest: &Destination) -> Forward {
    let spec = ForwardSpec {
        bind: String::new(),
        local_port: 0,
        host: (!crate::cli::is_target_itself(&dest.host)).then(|| dest.host.clone()),
        remote_port: dest.port,
    };
    let (document, parameters) = spec.document(0);
    Forward {
        aws: socks.aws.clone(),
        target: socks.target.clone(),
        document: document.to_owned(),
        parameters,
        destination: dest.to_string(),
        settings: socks.settings.clone(),
    }
}

/// Reply codes (RFC 1928 §6).
mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
}

/// Reads the greeting and the CONNECT request and answers them; returns the destination and
/// the connection, ready to carry its bytes.
pub async fn handshake(mut conn: Conn) -> anyhow::Result<(Destination, Conn)> {
    let s = &mut conn.stream;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    anyhow::ensure!(head[0] == 5, "not SOCKS5 (version {})", head[0]);
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        anyhow::bail!("the client offers no method without authentication");
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    anyhow::ensure!(req[0] == 5, "bad request version {}", req[0]);
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await?;
            String::from_utf8(name)?
        }
        other => {
            s.write_all(&answer(reply::ADDRESS_NOT_SUPPORTED)).await?;
            anyhow::bail!("address type {other} is not supported");
        }
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    if req[1] != 1 {
        s.write_all(&answer(reply::COMMAND_NOT_SUPPORTED)).await?;
        anyhow::bail!("only CONNECT is supported (command {})", req[1]);
    }
    // The session reports a failed dial by closing the stream; there is no earlier answer.
    s.write_all(&answer(reply::SUCCEEDED)).await?;
    let dest = Destination {
        host,
        port: u16::from_be_bytes(port),
    };
    tracing::info!(peer = %conn.peer, %dest, "SOCKS CONNECT");
    Ok((dest, conn))
}

fn answer(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}
