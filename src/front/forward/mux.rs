//! Multiplexed mode (§8.4): every local connection is a smux stream in one session.
//!
//! smux v1 has no per-stream flow control, so output for a connection that stops reading is
//! queued for it, up to [`BACKLOG`] bytes, while the others go on; past that the whole session
//! waits for it (memory stays bounded, nothing is dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::READ_CHUNK;
use super::conn::Conn;
use crate::proto::smux::{Mux, MuxEvent, Role};
use crate::transport::Input;

/// smux keepalive period for agents that still expect one (Go's default, §8.4).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Output bytes queued for one local connection that is not reading before the session waits
/// for it (smux's own per-session receive buffer is 4 MiB).
pub const BACKLOG: usize = 4 << 20;

/// Output on its way to one connection, with the backlog it holds.
type Chunk = (Bytes, OwnedSemaphorePermit);

struct Stream {
    tx: mpsc::UnboundedSender<Chunk>,
    room: Arc<Semaphore>,
}

/// Serves every connection until the session goes, or the listener goes (or, with `idle`, no
/// connection is open for that long) and the last connection has closed.
pub async fn engine(
    conns: &mut mpsc::Receiver<Conn>,
    input: mpsc::Sender<Input>,
    mut output: mpsc::Receiver<Bytes>,
    keepalive: bool,
    idle: Option<Duration>,
) {
    let (done, acted) = tokio::sync::oneshot::channel();
    if input.send(Input::Connected(done)).await.is_err() || acted.await.is_err() {
        return;
    }
    let mut mux = Mux::new(Role::Client);
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let (from_conn_tx, mut from_conn) = mpsc::channel::<(u32, Option<Bytes>)>(64);
    let mut ticker = tokio::time::interval(KEEPALIVE);
    let mut accepting = true;
    let mut idle_since = tokio::time::Instant::now();
    // The next smux frame for the session. It waits in a select branch, never in an await of
    // its own: while the session takes no input (the agent has not acked), output must still
    // reach the connections, or the agent, blocked on us, never acks (a deadlock).
    let mut pending: Option<Bytes> = None;
    loop {
        if pending.is_none() {
            pending = mux.poll_transmit();
        }
        if !streams.is_empty() {
            idle_since = tokio::time::Instant::now();
        } else if !accepting {
            return;
        }
        let idle_at = idle.map(|d| idle_since + d);
        tokio::select! {
            permit = input.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(Input::Data(pending.take().unwrap_or_default())),
                Err(_) => return,
            },
            conn = conns.recv(), if accepting => match conn {
                Some(conn) => {
                    let id = mux.open();
                    tracing::info!(conn = id, peer = %conn.peer, "connection opened");
                    streams.insert(id, spawn_conn(id, conn, from_conn_tx.clone()));
                }
                None => accepting = false,
            },
            // Local reads only when everything read before is on its way: memory stays bounded.
            Some((id, chunk)) = from_conn.recv(), if pending.is_none() => match chunk {
                Some(data) => mux.send(id, &data),
                None => {
                    tracing::info!(conn = id, "connection closed");
                    mux.finish(id);
                }
            },
            data = output.recv() => match data {
                Some(data) if on_output(&mut mux, &mut streams, &data).await => {}
                _ => return,
            },
            _ = ticker.tick(), if keepalive => mux.keepalive(),
            _ = sleep_until(idle_at), if accepting && streams.is_empty() && idle_at.is_some() => {
                // No new connection may slip in after this: the sender sees it closed.
                conns.close();
                accepting = false;
                while let Ok(conn) = conns.try_recv() {
                    let id = mux.open();
                    streams.insert(id, spawn_conn(id, conn, from_conn_tx.clone()));
                }
            }
        }
    }
}

/// Hands the session's output to the connections it is for; false when the agent's smux
/// stream is broken.
async fn on_output(mux: &mut Mux, streams: &mut HashMap<u32, Stream>, data: &Bytes) -> bool {
    if let Err(e) = mux.handle_bytes(data) {
        tracing::error!(error = %e, "the agent's smux stream is broken");
        return false;
    }
    while let Some(ev) = mux.poll_event() {
        match ev {
            MuxEvent::Data(id, b) => deliver(streams, id, b).await,
            // The agent is done with this stream (destination closed or refused): the local
            // connection closes once its backlog is written.
            MuxEvent::Fin(id) => {
                streams.remove(&id);
            }
            MuxEvent::Opened(_) => {}
        }
    }
    true
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues output for one connection; waits only when its backlog is full.
async fn deliver(streams: &mut HashMap<u32, Stream>, id: u32, data: Bytes) {
    let Some(stream) = streams.get(&id) else {
        return;
    };
    let n = u32::try_from(data.len().min(BACKLOG)).unwrap_or(u32::MAX);
    let Ok(permit) = stream.room.clone().acquire_many_owned(n).await else {
        return;
    };
    if stream.tx.send((data, permit)).is_err() {
        streams.remove(&id);
    }
}

/// Pumps one local connection: reads go to `to_mux` tagged with `id` (None at EOF or error);
/// output comes through the returned stream, whose sender closing closes the connection.
fn spawn_conn(id: u32, conn: Conn, to_mux: mpsc::Sender<(u32, Option<Bytes>)>) -> Stream {
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let room = Arc::new(Semaphore::new(BACKLOG));
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(conn.stream);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut reading = true;
        loop {
            tokio::select! {
                n = r.read(&mut buf), if reading => match n {
                    Ok(n) if n > 0 => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if to_mux.send((id, Some(chunk))).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        reading = false;
                        let _ = to_mux.send((id, None)).await;
                    }
                },
                chunk = rx.recv() => match chunk {
                    Some((data, _room)) => {
                        if w.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        let _ = w.shutdown().await;
        if reading {
            let _ = to_mux.send((id, None)).await;
        }
    });
    Stream { tx, room }
}
