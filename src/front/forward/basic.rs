//! Basic mode (agents up to 3.0.196.0, §8.3): one local connection at a time on one
//! destination connection; its end is signalled with DisconnectToPort.
//!
//! Output is held unacked until a connection can take it, and output for a closed connection is
//! dropped, never handed to the next one (see `proto::gate`).

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::READ_CHUNK;
use super::conn::Conn;
use crate::transport::Input;

/// Serves connections one after the other until the session or the listener goes.
pub async fn engine(
    conns: &mut mpsc::Receiver<Conn>,
    input: mpsc::Sender<Input>,
    mut output: mpsc::Receiver<Bytes>,
) {
    let mut first = true;
    loop {
        let conn = loop {
            tokio::select! {
                conn = conns.recv() => match conn {
                    Some(c) => break c,
                    None => return,
                },
                // Output for the connection that is gone.
                data = output.recv() => if data.is_none() { return },
            }
        };
        tracing::info!(peer = %conn.peer, "connection opened");
        if !connected(&input, &mut output, first).await {
            return;
        }
        first = false;
        if !pump(conn, &input, &mut output).await {
            return;
        }
        if input.send(Input::Disconnected).await.is_err() {
            return;
        }
    }
}

/// Tells the driver a connection can take output; drops the previous connection's output still
/// on its way. False when the session is over.
async fn connected(
    input: &mpsc::Sender<Input>,
    output: &mut mpsc::Receiver<Bytes>,
    first: bool,
) -> bool {
    let (done, acted) = oneshot::channel();
    if input.send(Input::Connected(done)).await.is_err() {
        return false;
    }
    tokio::pin!(acted);
    loop {
        tokio::select! {
            biased;
            r = &mut acted => {
                if r.is_err() {
                    return false;
                }
                break;
            }
            data = output.recv() => if data.is_none() { return false },
        }
    }
    // Queued before the driver acted: the old connection's. Before the first connection
    // nothing was delivered, and what comes now is the held greeting.
    if !first {
        while output.try_recv().is_ok() {}
    }
    true
}

/// Relays one connection; false when the session is over.
async fn pump(conn: Conn, input: &mpsc::Sender<Input>, output: &mut mpsc::Receiver<Bytes>) -> bool {
    let peer = conn.peer;
    let (mut r, mut w) = tokio::io::split(conn.stream);
    let mut buf = vec![0u8; READ_CHUNK];
    // Two loops side by side, never one waiting for the other: output must reach the
    // connection while the session takes no input (the agent acks only once it has written
    // what it holds, and it writes only once we read).
    let up = async {
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if input.send(Input::Data(data)).await.is_err() {
                        return false;
                    }
                }
                _ => return true,
            }
        }
    };
    let down = async {
        loop {
            match output.recv().await {
                Some(data) => {
                    if w.write_all(&data).await.is_err() {
                        return true;
                    }
                }
                None => return false,
            }
        }
    };
    let alive = tokio::select! {
        alive = up => alive,
        alive = down => alive,
    };
    let _ = w.shutdown().await;
    tracing::info!(%peer, "connection closed");
    alive
}
