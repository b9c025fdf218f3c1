//! The message gateway: accepts the client's data-channel websocket (first text frame
//! OpenDataChannelInput with a valid token), and runs one task per session that joins the client
//! websocket, the [`Agent`] model and the agent's real TCP connection to its destination,
//! injecting the configured faults on the way (§12.5).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::agent::{Agent, AgentConfig, AgentEvent, Plugin, PortMode};
use super::faults::{DropPlan, Faults};
use super::limit::{RateLimit, Verdict};
use super::service::Service;
use super::shell::{Shell, ShellEvent, ShellSpec};
use super::target::{TargetEvent, Targets};
use crate::proto::crypto::encryption_context;
use crate::proto::frame::{Frame, MessageType, flag, ptype};
use crate::proto::payload::OpenDataChannelInput;

type Ws = WebSocketStream<TcpStream>;

/// What the service hands a session task.
pub enum Attach {
    /// A client websocket that presented a valid token.
    Client(Box<Ws>),
    /// TerminateSession was called.
    Terminate,
}

/// Everything a session task needs to know at start.
pub struct SessionPlan {
    /// Session id.
    pub session_id: String,
    /// Target id.
    pub target: String,
    /// Document properties after substitution.
    pub properties: Value,
    /// Seed for ids and faults.
    pub seed: u64,
    /// What the document runs: Port, or a shell plugin (then [`Shell`] replaces the targets).
    pub plugin: Plugin,
}

/// Accepts data-channel websockets until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<Service>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(accept(stream, service.clone()));
    }
}

async fn accept(stream: TcpStream, service: Arc<Service>) {
    if service.in_outage() {
        // The network is "down": the connection dies before any HTTP is spoken.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        return;
    }
    let mut path = String::new();
    let mut signer = None;
    // The error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        path = req.uri().path().to_owned();
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let uri = format!("http://{host}{}", req.uri());
        let keys = service.signing_keys();
        let now = std::time::SystemTime::now();
        match super::sigv4::verify("GET", &uri, req.headers(), &keys, now) {
            Ok(key) => signer = Some(key),
            Err(_) if service.config().allow_unsigned => {}
            Err(why) => {
                tracing::info!(%why, "upgrade refused");
                let body = format!(
                    "{{\"message\":\"Forbidden: the OpenDataChannel request must be SigV4-signed: {why}\"}}"
                );
                let mut refused = http::Response::new(Some(body));
                *refused.status_mut() = http::StatusCode::FORBIDDEN;
                return Err(refused);
            }
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if let Some(key) = signer {
        service.signed_by(key);
    }
    let session_id = path
        .strip_prefix("/v1/data-channel/")
        .unwrap_or_default()
        .to_owned();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let open: Option<OpenDataChannelInput> = match first {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).ok(),
        _ => None,
    };
    let token = open.map(|o| o.token_value).unwrap_or_default();
    // The service's behaviour on a bad token is unconfirmed (§2.2); closing is the safe reading.
    let ws = Box::new(ws);
    if service.attach(&session_id, &token, Attach::Client(ws)) {
        service.opens.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the task of a new session; the returned sender feeds it websockets and commands.
pub fn spawn_session(plan: SessionPlan, service: Arc<Service>) -> mpsc::UnboundedSender<Attach> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let id = plan.session_id.clone();
        run_session(plan, &service, rx).await;
        service.mark_ended(&id);
    });
    tx
}

/// Frames kept for a client that is away (realagent's relay queue holds 2048 per direction).
const WAITING_FRAMES: usize = 4096;

/// Client messages already readable that one turn takes after the first.
const READ_BATCH: usize = 256;

/// A message held back by a delay fault: (due, tie, to_agent, bytes).
type Delayed = Reverse<(Instant, u64, bool, Bytes)>;

async fn run_session(
    plan: SessionPlan,
    service: &Service,
    mut attach: mpsc::UnboundedReceiver<Attach>,
) {
    let cfg = service.config();
    let start = Instant::now();
    let agent_cfg = AgentConfig {
        version: cfg.agent_version.clone(),
        properties: plan.properties.clone(),
        seed: plan.seed.wrapping_mul(31).wrapping_add(cfg.seed),
        plugin: plan.plugin,
        kms_key: cfg.kms_key.clone(),
        bad_challenge: cfg.kms_bad_challenge,
        fast: cfg.fast_agent,
        ..Default::default()
    };
    let mut agent = Agent::new(agent_cfg, start.into_std());
    let mut up = Faults::new(cfg.up.clone(), cfg.seed ^ plan.seed.wrapping_mul(3) ^ 0x11);
    let mut down = Faults::new(
        cfg.down.clone(),
        cfg.seed ^ plan.seed.wrapping_mul(5) ^ 0x22,
    );
    let mut delayed: BinaryHeap<Delayed> = BinaryHeap::new();
    let mut tie = 0u64;
    let mut client: Option<Box<Ws>> = None;
    let mut link = LinkState::default();
    // (when the next pause starts, when the current one ends)
    let mut pause: (Option<Instant>, Option<Instant>) = (cfg.pauses.every.map(|e| start + e), None);
    let mut opened_once = false;
    let mut targets =
        Targets::new(plan.properties.clone(), cfg.paced).with_ports(cfg.target_ports.clone());
    let mut shell = plan.plugin.is_shell().then(|| {
        Shell::new(ShellSpec {
            plugin: plan.plugin,
            program: cfg.shell.clone(),
            command: plan
                .properties
                .get("command")
                .and_then(Value::as_str)
                .map(str::to_owned),
            output_delay: cfg.shell_output_delay,
        })
    });
    let mut finished: Option<String> = None;
    // Client data resets the idle timeout; websocket pings do not (§16.4).
    let mut last_activity = start;
    let mut limit = cfg.max_msg_rate.map(|n| RateLimit::new(n, start));
    let mut odd = 0u32;

    loop {
        let now = Instant::now();
        if let Some(idle) = cfg.idle_timeout
            && finished.is_none()
            && now >= last_activity + idle
        {
            // As the service: channel_closed to both peers (§9.2).
            tracing::info!(session = %plan.session_id, "sim: idle timeout");
            targets.close();
            if let Some(shell) = shell.as_mut() {
                shell.kill();
            }
            finished = Some(String::new());
        }
        while let Some(ev) = agent.poll_event() {
            match ev {
                AgentEvent::Dial => match shell.as_mut() {
                    Some(shell) => shell.spawn(),
                    None => {
                        if agent.mode() == PortMode::Mux {
                            targets.use_mux();
                        }
                        targets.dial();
                    }
                },
                AgentEvent::ToTarget(b) => match shell.as_mut() {
                    Some(shell) => shell.write(b),
                    None => targets.write(b),
                },
                AgentEvent::CloseTarget => {
                    targets.close();
                    if let Some(shell) = shell.as_mut() {
                        shell.kill();
                    }
                }
                AgentEvent::Finished(output) => finished = Some(output),
                AgentEvent::DecryptKey { blob, challenge } => {
                    let context =
                        encryption_context(&plan.session_id, &plan.target, challenge.as_deref());
                    let key = service.kms.decrypt(&blob, &context);
                    if key.is_ok() {
                        service.encrypted.fetch_add(1, Ordering::Relaxed);
                    }
                    agent.set_data_key(now.into_std(), key);
                }
                AgentEvent::Resize(size) => {
                    if let Some(shell) = shell.as_mut() {
                        shell.resize(size);
                    }
                }
                AgentEvent::ToService(frame) => {
                    // The service keeps agent_session_state to itself (§12.5).
                    if let Ok(f) = Frame::decode(&frame) {
                        let state = String::from_utf8_lossy(&f.payload).into_owned();
                        tracing::debug!(%state, "sim: agent_session_state (not relayed)");
                    }
                }
            }
        }
        while let Some(frame) = agent.poll_transmit() {
            odd += 1;
            let frame = match cfg.odd_headers && odd.is_multiple_of(5) {
                true => widen_header(&frame),
                false => frame,
            };
            for (delay, msg) in down.apply(frame) {
                if delay.is_zero() {
                    link.relay(&mut client, msg).await;
                } else {
                    tie += 1;
                    delayed.push(Reverse((now + delay, tie, false, msg)));
                }
            }
        }
        // One flush per turn for everything relayed since the last: frames leave in batches,
        // as from the real gateway, instead of a syscall each.
        link.flush(&mut client).await;
        if client.is_some() && link.should_drop(&cfg.drops, now) {
            link.kill(&mut client, &cfg.drops).await;
            if let Some(outage) = cfg.drops.outage {
                service.begin_outage(outage);
            }
            service.drops.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(output) = finished.take() {
            if let Some(ws) = client.as_mut() {
                let _ = ws
                    .send(Message::binary(channel_closed(&plan, &output)))
                    .await;
                let _ = WebSocketStream::close(&mut **ws, None).await;
            }
            return;
        }
        let drop_at = cfg
            .drops
            .after
            .filter(|_| client.is_some() && link.may_drop(&cfg.drops));
        let deadline = [
            agent.poll_timeout().map(Instant::from_std),
            delayed.peek().map(|d| d.0.0),
            drop_at.map(|d| link.opened + d),
            cfg.idle_timeout.map(|t| last_activity + t),
            pause.0,
            pause.1,
            limit.as_ref().and_then(RateLimit::resume_at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            a = attach.recv() => match a {
                Some(Attach::Client(ws)) => {
                    client = Some(ws);
                    link.attached(now, !opened_once && cfg.drops.in_handshake);
                    link.deliver_waiting(&mut client).await;
                    if opened_once {
                        agent.handle_client_reconnect(now.into_std());
                    } else {
                        opened_once = true;
                        agent.start(now.into_std());
                    }
                }
                Some(Attach::Terminate) | None => {
                    targets.close();
                    if let Some(shell) = shell.as_mut() {
                        shell.kill();
                    }
                    finished = Some(String::new());
                }
            },
            // The faithful agent's read loop stops while its destination write blocks.
            msg = next_message(&mut client), if !link.blackholed && agent.can_take_frames() => {
                // What is already readable goes in the same turn, so its acks leave in one flush.
                let mut next = Some(msg);
                for _ in 0..=READ_BATCH {
                    let Some(msg) = next else { break };
                    match msg {
                        Some(Ok(Message::Binary(b))) => {
                            link.bytes += b.len() as u64;
                            last_activity = now;
                            let data = b.get(4..21) == Some(&b"input_stream_data"[..]);
                            match limit.as_mut().map(|l| l.on_message(now, data)) {
                                Some(Verdict::Pause) => {
                                    tracing::info!("sim: client above --max-msg-rate; pause_publication");
                                    service.pauses.fetch_add(1, Ordering::Relaxed);
                                    link.relay(&mut client, publication(MessageType::PausePublication)).await;
                                }
                                Some(Verdict::Close) => {
                                    tracing::info!("sim: client kept sending while paused; closing");
                                    if let Some(mut ws) = client.take() {
                                        let _ = WebSocketStream::close(&mut *ws, None).await;
                                    }
                                    break;
                                }
                                _ => {}
                            }
                            deliver_up(&mut agent, &mut up, &mut delayed, &mut tie, now, b);
                        }
                        Some(Ok(Message::Text(t))) => deliver_up(&mut agent, &mut up, &mut delayed, &mut tie, now, Bytes::from(t)),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            client = None;
                            break;
                        }
                    }
                    next = client.as_mut().and_then(|ws| ws.next().now_or_never());
                }
            }
            ev = targets.next(agent.can_read_target()) => match ev {
                TargetEvent::Connected => agent.handle_target_connected(),
                TargetEvent::DialFailed(e) => agent.handle_target_failed(&e),
                TargetEvent::Data(b) => agent.handle_target_data(now.into_std(), b),
                TargetEvent::Eof if agent.mode() == PortMode::Basic => agent.handle_target_closed(),
                TargetEvent::Eof => agent.handle_target_eof(now.into_std()),
                TargetEvent::Written(n) => agent.handle_target_written(n),
                TargetEvent::StreamRefused(id) => {
                    tracing::info!(stream = id, "sim: destination refused a mux stream");
                    agent.send_flag(now.into_std(), flag::CONNECT_TO_PORT_ERROR);
                    if let TargetEvent::Data(fin) = targets.take_mux_bytes() {
                        agent.handle_target_data(now.into_std(), fin);
                    }
                }
                TargetEvent::Nothing => {}
            },
            ev = next_shell(&mut shell, agent.can_read_target()) => match ev {
                ShellEvent::Started => agent.handle_target_connected(),
                ShellEvent::Failed(e) => agent.handle_shell_failed(&e),
                ShellEvent::Output(b) => agent.handle_target_data(now.into_std(), b),
                ShellEvent::Stderr(b) => agent.handle_target_stderr(now.into_std(), b),
                ShellEvent::Written(n) => agent.handle_target_written(n),
                ShellEvent::Exited(code) => agent.handle_process_exit(now.into_std(), code),
                ShellEvent::Nothing => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                agent.handle_timeout(now.into_std());
                if let Some(l) = limit.as_mut().filter(|l| l.resume_at().is_some_and(|t| t <= now)) {
                    l.resumed(now);
                    link.relay(&mut client, publication(MessageType::StartPublication)).await;
                }
                if pause.0.is_some_and(|t| t <= now) {
                    link.relay(&mut client, publication(MessageType::PausePublication)).await;
                    service.pauses.fetch_add(1, Ordering::Relaxed);
                    pause = (None, Some(now + cfg.pauses.length));
                } else if pause.1.is_some_and(|t| t <= now) {
                    link.relay(&mut client, publication(MessageType::StartPublication)).await;
                    pause = (cfg.pauses.every.map(|e| now + e), None);
                }
                while delayed.peek().is_some_and(|d| d.0.0 <= now) {
                    let Some(Reverse((_, _, to_agent, msg))) = delayed.pop() else { break };
                    if to_agent {
                        agent.handle_frame(now.into_std(), &msg);
                    } else {
                        link.relay(&mut client, msg).await;
                    }
                }
            }
        }
    }
}

fn deliver_up(
    agent: &mut Agent,
    up: &mut Faults,
    delayed: &mut BinaryHeap<Delayed>,
    tie: &mut u64,
    now: Instant,
    msg: Bytes,
) {
    for (delay, m) in up.apply(msg) {
        if delay.is_zero() {
            agent.handle_frame(now.into_std(), &m);
        } else {
            *tie += 1;
            delayed.push(Reverse((now + delay, *tie, true, m)));
        }
    }
}

/// The client websocket's life as the drop plan sees it.
struct LinkState {
    opened: Instant,
    bytes: u64,
    kills: u32,
    kill_in_handshake: bool,
    blackholed: bool,
    /// Frames for a client that is away.
    waiting: VecDeque<Bytes>,
}

impl Default for LinkState {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            bytes: 0,
            kills: 0,
            kill_in_handshake: false,
            blackholed: false,
            waiting: VecDeque::new(),
        }
    }
}

impl LinkState {
    fn attached(&mut self, now: Instant, kill_in_handshake: bool) {
        if self.blackholed {
            self.waiting.clear();
        }
        self.opened = now;
        self.bytes = 0;
        self.blackholed = false;
        self.kill_in_handshake = kill_in_handshake;
    }

    fn may_drop(&self, plan: &DropPlan) -> bool {
        !self.blackholed && plan.max.is_none_or(|m| self.kills < m)
    }

    fn should_drop(&self, plan: &DropPlan, now: Instant) -> bool {
        self.may_drop(plan)
            && (self.kill_in_handshake
                || plan.after_bytes.is_some_and(|b| self.bytes >= b)
                || plan.after.is_some_and(|d| now >= self.opened + d))
    }

    /// Sends to the client unless the path is dead.
    async fn relay(&mut self, client: &mut Option<Box<Ws>>, msg: Bytes) {
        if self.blackholed {
            return;
        }
        self.bytes += msg.len() as u64;
        match client.as_mut() {
            #[allow(clippy::collapsible_match)]
            Some(ws) => {
                if ws.feed(Message::binary(msg)).await.is_err() {
                    *client = None;
                }
            }
            // The service keeps the agent's frames while the client is away and delivers them
            // on its next connection (as realagent's relay does); the faithful agent would
            // otherwise resend them one per 100 ms.
            None if self.waiting.len() < WAITING_FRAMES => self.waiting.push_back(msg),
            None => {}
        }
    }

    /// Delivers the frames kept while the client was away.
    async fn deliver_waiting(&mut self, client: &mut Option<Box<Ws>>) {
        while client.is_some()
            && let Some(msg) = self.waiting.pop_front()
        {
            self.relay(client, msg).await;
        }
    }

    /// Sends what [`relay`](Self::relay) queued.
    async fn flush(&mut self, client: &mut Option<Box<Ws>>) {
        if let Some(ws) = client.as_mut()
            && ws.flush().await.is_err()
        {
            *client = None;
        }
    }

    async fn kill(&mut self, client: &mut Option<Box<Ws>>, plan: &DropPlan) {
        self.kills += 1;
        tracing::info!(
            kill = self.kills,
            attached = client.is_some(),
            bytes = self.bytes,
            "sim: killing the client websocket"
        );
        self.kill_in_handshake = false;
        if plan.blackhole {
            self.blackholed = true;
            return;
        }
        let Some(mut ws) = client.take() else { return };
        if plan.clean {
            let bye = CloseFrame {
                code: CloseCode::Normal,
                reason: "Bye".into(),
            };
            let _ = WebSocketStream::close(&mut *ws, Some(bye)).await;
        } else {
            // SO_LINGER 0: close sends a TCP reset, like a network failure.
            #[allow(deprecated)]
            let _ = ws.get_ref().set_linger(Some(Duration::ZERO));
        }
    }
}

/// The shell's next event; never, for a Port session.
async fn next_shell(shell: &mut Option<Shell>, can_read: bool) -> ShellEvent {
    match shell.as_mut() {
        Some(shell) => shell.next(can_read).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    client: &mut Option<Box<Ws>>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match client.as_mut() {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

/// The same frame with a HeaderLength of 124 (8 bytes of padding before PayloadLength): the
/// official parsers take the payload from HL + 4, so clients must too (§16.3).
fn widen_header(frame: &Bytes) -> Bytes {
    const HL: usize = crate::proto::frame::HEADER_LEN as usize;
    if frame.len() < HL + 4 || frame.get(..4) != Some(&(HL as u32).to_be_bytes()[..]) {
        return frame.clone();
    }
    let mut b = BytesMut::with_capacity(frame.len() + 8);
    b.put_u32(HL as u32 + 8);
    b.put_slice(&frame[4..HL]);
    b.put_bytes(0, 8);
    b.put_slice(&frame[HL..]);
    b.freeze()
}

/// A service `pause_publication` / `start_publication` (no payload, not sequenced, §7).
fn publication(kind: MessageType) -> Bytes {
    Frame {
        message_type: kind,
        schema_version: 1,
        created_date: 1_700_000_000_000,
        sequence: 0,
        flags: 0,
        message_id: uuid::Uuid::new_v4(),
        payload_type: ptype::NONE,
        payload: Bytes::new(),
    }
    .encode()
}

/// A service-style `channel_closed`: HL 112, NUL-padded type, no PayloadType (§3.3, §13.2 V8).
pub fn channel_closed(plan: &SessionPlan, output: &str) -> Bytes {
    let id = uuid::Uuid::new_v4();
    let payload = json!({
        "MessageType": "channel_closed",
        "MessageId": id.to_string(),
        "CreatedDate": "2026-01-01T00:00:00.000Z",
        "DestinationId": plan.target,
        "SessionId": plan.session_id,
        "SchemaVersion": 1,
        "Output": output,
    })
    .to_string();
    let mut b = BytesMut::with_capacity(116 + payload.len());
    b.put_u32(112);
    b.put_slice(b"channel_closed");
    b.put_bytes(0, 32 - "channel_closed".len());
    b.put_u32(1);
    b.put_u64(1_700_000_000_000);
    b.put_i64(0);
    b.put_u64(0);
    b.put_slice(&id.as_bytes()[8..]);
    b.put_slice(&id.as_bytes()[..8]);
    b.put_slice(digest(&SHA256, payload.as_bytes()).as_ref());
    b.put_u32(payload.len() as u32);
    b.put_slice(payload.as_bytes());
    b.freeze()
}
