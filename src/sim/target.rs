//! The agent's destination side: real TCP connections to the port (or host) of the document.
//! One connection for SSH-style and basic port sessions, or one per smux stream for multiplexed
//! port forwarding (the agent runs the smux server, §8.4, §12.2). Dials, reads and writes run in
//! tasks that report back through two channels: control events (always taken) and data (taken
//! only while the agent may send, which is the back-pressure).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::proto::smux::{Mux, MuxEvent, Role};

/// Ids of single (non-mux) connections have this bit set; mux stream ids never do.
const SINGLE: u32 = 0x8000_0000;

/// What happened on the destination side.
#[derive(Debug)]
pub enum TargetEvent {
    /// The single connection is up.
    Connected,
    /// The single connection could not be made.
    DialFailed(String),
    /// Bytes to send to the client (already smux-framed in mux mode).
    Data(Bytes),
    /// The single connection closed.
    Eof,
    /// Bytes written to destinations (back-pressure accounting).
    Written(usize),
    /// A mux stream's destination could not be dialed: the agent sends ConnectToPortError.
    StreamRefused(u32),
    /// Nothing for the agent (internal bookkeeping happened).
    Nothing,
}

enum Report {
    Dialed(u32, std::io::Result<TcpStream>),
    Written(usize),
    Bridged,
}

/// Data read from a connection; `None` is EOF.
type Chunk = (u32, Option<Bytes>);

/// All destination connections of one session.
pub struct Targets {
    properties: Value,
    paced: bool,
    /// (target port, local port) for ports of the target served elsewhere.
    ports: Vec<(u16, u16)>,
    mux: Option<Mux>,
    /// Id of the current single connection (a new one per dial, so stale events are ignored).
    single: u32,
    writers: HashMap<u32, mpsc::UnboundedSender<Bytes>>,
    /// Data for mux streams whose destination is still being dialed (smux buffers it too).
    dialing: HashMap<u32, Vec<Bytes>>,
    report_tx: mpsc::UnboundedSender<Report>,
    report_rx: mpsc::UnboundedReceiver<Report>,
    data_tx: mpsc::Sender<Chunk>,
    data_rx: mpsc::Receiver<Chunk>,
}

impl Targets {
    /// Destinations as the document's properties describe them (`portNumber`, `host`).
    pub fn new(properties: Value, paced: bool) -> Self {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(4);
        Self {
            properties,
            paced,
            ports: Vec::new(),
            mux: None,
            single: SINGLE,
            writers: HashMap::new(),
            dialing: HashMap::new(),
            report_tx,
            report_rx,
            data_tx,
            data_rx,
        }
    }

    /// Switches to multiplexed mode: the client's bytes are smux frames.
    pub fn use_mux(&mut self) {
        self.mux = Some(Mux::new(Role::Server));
    }

    /// Dials the single connection (SSH-style and basic sessions).
    pub fn dial(&mut self) {
        if self.mux.is_some() {
            // The smux bridge is local and up at once; streams dial on their own.
            let _ = self.report_tx.send(Report::Bridged);
            return;
        }
        self.single = SINGLE | (self.single.wrapping_add(1) & !SINGLE);
        self.spawn_dial(self.single);
    }

    /// Bytes from the client for the destination(s).
    pub fn write(&mut self, data: Bytes) {
        let Some(mux) = self.mux.as_mut() else {
            self.write_to(self.single, data);
            return;
        };
        if mux.handle_bytes(&data).is_err() {
            // A broken smux stream ends every connection, as in Go's smux.
            self.writers.clear();
        }
        let _ = self.report_tx.send(Report::Written(data.len()));
        while let Some(ev) = self.mux.as_mut().and_then(Mux::poll_event) {
            match ev {
                MuxEvent::Opened(id) => {
                    self.dialing.insert(id, Vec::new());
                    self.spawn_dial(id);
                }
                MuxEvent::Data(id, b) => self.write_to(id, b),
                // The agent closes the destination entirely when the client finishes (§8.4).
                MuxEvent::Fin(id) => {
                    self.writers.remove(&id);
                    self.dialing.remove(&id);
                }
            }
        }
    }

    /// Closes the single connection (DisconnectToPort, TerminateSession).
    pub fn close(&mut self) {
        self.writers.remove(&self.single);
    }

    /// Waits for the next event; data is taken only when `can_read`.
    pub async fn next(&mut self, can_read: bool) -> TargetEvent {
        tokio::select! {
            Some(report) = self.report_rx.recv() => self.on_report(report),
            Some((id, chunk)) = self.data_rx.recv(), if can_read => self.on_chunk(id, chunk),
        }
    }

    fn on_report(&mut self, report: Report) -> TargetEvent {
        match report {
            Report::Written(n) => TargetEvent::Written(n),
            Report::Bridged => TargetEvent::Connected,
            Report::Dialed(id, Ok(stream)) if id & SINGLE != 0 => {
                if id != self.single {
                    return TargetEvent::Nothing;
                }
                self.attach(id, stream);
                TargetEvent::Connected
            }
            Report::Dialed(id, Ok(stream)) => {
                self.attach(id, stream);
                for data in self.dialing.remove(&id).unwrap_or_default() {
                    self.write_to(id, data);
                }
                TargetEvent::Nothing
            }
            Report::Dialed(id, Err(e)) if id & SINGLE != 0 => match id == self.single {
                true => TargetEvent::DialFailed(e.to_string()),
                false => TargetEvent::Nothing,
            },
            Report::Dialed(id, Err(_)) => {
                self.dialing.remove(&id);
                if let Some(mux) = self.mux.as_mut() {
                    mux.finish(id);
                }
                TargetEvent::StreamRefused(id)
            }
        }
    }

    fn on_chunk(&mut self, id: u32, chunk: Option<Bytes>) -> TargetEvent {
        let Some(mux) = self.mux.as_mut() else {
            return match (id == self.single, chunk) {
                (false, _) => TargetEvent::Nothing,
                (true, Some(b)) => TargetEvent::Data(b),
                (true, None) => TargetEvent::Eof,
            };
        };
        match chunk {
            Some(b) => mux.send(id, &b),
            None => {
                mux.finish(id);
                self.writers.remove(&id);
            }
        }
        self.take_mux_bytes()
    }

    /// smux frames waiting to go to the client (FINs for refused streams included).
    pub fn take_mux_bytes(&mut self) -> TargetEvent {
        let Some(mux) = self.mux.as_mut() else {
            return TargetEvent::Nothing;
        };
        let frames: Vec<Bytes> = std::iter::from_fn(|| mux.poll_transmit()).collect();
        if frames.is_empty() {
            TargetEvent::Nothing
        } else {
            TargetEvent::Data(frames.concat().into())
        }
    }

    fn write_to(&mut self, id: u32, data: Bytes) {
        if let Some(queue) = self.dialing.get_mut(&id) {
            queue.push(data);
            return;
        }
        match self.writers.get(&id) {
            Some(w) => {
                let _ = w.send(data);
            }
            // Nowhere to write (closed or not dialed): count it as written so nothing stalls.
            None => {
                let _ = self.report_tx.send(Report::Written(data.len()));
            }
        }
    }

    /// Ports of the target that are served elsewhere on this machine (target, local).
    pub fn with_ports(mut self, ports: Vec<(u16, u16)>) -> Self {
        self.ports = ports;
        self
    }

    fn spawn_dial(&self, id: u32) {
        let port = self
            .properties
            .get("portNumber")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<u16>().ok())
            .map(|p| {
                let mapped = self.ports.iter().find(|(on_target, _)| *on_target == p);
                mapped.map_or(p, |(_, local)| *local)
            });
        let host = match self.properties.get("host").and_then(Value::as_str) {
            None | Some("" | "localhost") => "127.0.0.1".to_owned(),
            Some(h) => h.to_owned(),
        };
        let tx = self.report_tx.clone();
        tokio::spawn(async move {
            let res = match port {
                Some(port) => TcpStream::connect((host.as_str(), port)).await,
                None => Err(std::io::Error::other(
                    "Port number is empty in session properties.",
                )),
            };
            let _ = tx.send(Report::Dialed(id, res));
        });
    }

    fn attach(&mut self, id: u32, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        self.writers.insert(id, tx);
        let report = self.report_tx.clone();
        let count_mux = self.mux.is_none();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    break;
                }
                if count_mux {
                    let _ = report.send(Report::Written(b.len()));
                }
            }
            let _ = w.shutdown().await;
        });
        let data = self.data_tx.clone();
        let paced = self.paced;
        tokio::spawn(async move {
            // The real agent reads 1 KiB, then sleeps 1 ms (§11); unpaced reads what is there.
            let mut buf = vec![0u8; if paced { 1024 } else { 16 * 1024 }];
            // A 1 ms tokio sleep lasts up to 2 ms (timer granularity), which halved the rate:
            // the pauses follow a schedule instead, without saving up a burst while stalled.
            let mut next = tokio::time::Instant::now();
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if data
                            .send((id, Some(Bytes::copy_from_slice(&buf[..n]))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if paced {
                            let now = tokio::time::Instant::now();
                            next = (next + Duration::from_millis(1))
                                .max(now - Duration::from_millis(5));
                            tokio::time::sleep_until(next).await;
                        }
                    }
                }
            }
            let _ = data.send((id, None)).await;
        });
    }
}
