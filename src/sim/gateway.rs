//! The message gateway: accepts the client's data-channel websocket (first text frame
//! OpenDataChannelInput with a valid token), and runs one task per session that joins the client
//! websocket, the [`Agent`] model and the agent's real TCP connection to its destination,
//! injecting the configured faults on the way (§12.5).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::agent::{Agent, AgentConfig, AgentEvent, PortMode};
use super::config::SimConfig;
use super::faults::{DropPlan, Faults};
use super::frames::{channel_closed, publication, widen_header};
use super::limit::{RateLimit, Verdict};
use super::service::{Attach, Service, SessionPlan, Ws};
use super::shell::{Shell, ShellEvent, ShellSpec};
use super::target::{TargetEvent, Targets};
use crate::proto::crypto::encryption_context;
use crate::proto::frame::{Frame, MessageType, flag};
use crate::proto::payload::OpenDataChannelInput;

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
    let mut task = SessionTask::new(plan, service);
    loop {
        let now = Instant::now();
        task.check_idle(now);
        task.agent_events(now);
        task.relay_agent_frames(now).await;
        task.apply_drops(now).await;
        if let Some(output) = task.finished.take() {
            task.close(&output).await;
            return;
        }
        task.turn(&mut attach, now).await;
    }
}

/// One session as its task runs it: the client websocket, the agent model, the agent's
/// destination (or shell), and the faults between them.
struct SessionTask<'a> {
    plan: SessionPlan,
    service: &'a Service,
    cfg: &'a SimConfig,
    agent: Agent,
    up: Faults,
    down: Faults,
    delayed: BinaryHeap<Delayed>,
    tie: u64,
    client: Option<Box<Ws>>,
    link: LinkState,
    /// (when the next pause starts, when the current one ends)
    pause: (Option<Instant>, Option<Instant>),
    opened_once: bool,
    targets: Targets,
    shell: Option<Shell>,
    finished: Option<String>,
    /// Client data resets the idle timeout; websocket pings do not (§16.4).
    last_activity: Instant,
    limit: Option<RateLimit>,
    odd: u32,
}

impl<'a> SessionTask<'a> {
    fn new(plan: SessionPlan, service: &'a Service) -> Self {
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
        let shell = plan.plugin.is_shell().then(|| {
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
        Self {
            agent: Agent::new(agent_cfg, start.into_std()),
            up: Faults::new(cfg.up.clone(), cfg.seed ^ plan.seed.wrapping_mul(3) ^ 0x11),
            down: Faults::new(
                cfg.down.clone(),
                cfg.seed ^ plan.seed.wrapping_mul(5) ^ 0x22,
            ),
            delayed: BinaryHeap::new(),
            tie: 0,
            client: None,
            link: LinkState::default(),
            pause: (cfg.pauses.every.map(|e| start + e), None),
            opened_once: false,
            targets: Targets::new(plan.properties.clone(), cfg.paced)
                .with_ports(cfg.target_ports.clone()),
            shell,
            finished: None,
            last_activity: start,
            limit: cfg.max_msg_rate.map(|n| RateLimit::new(n, start)),
            odd: 0,
            plan,
            service,
            cfg,
        }
    }

    /// As the service: an idle session gets channel_closed on both sides (§9.2).
    fn check_idle(&mut self, now: Instant) {
        if let Some(idle) = self.cfg.idle_timeout
            && self.finished.is_none()
            && now >= self.last_activity + idle
        {
            tracing::info!(session = %self.plan.session_id, "sim: idle timeout");
            self.end();
        }
    }

    /// Closes the destination (or kills the shell).
    fn close_destination(&mut self) {
        self.targets.close();
        if let Some(shell) = self.shell.as_mut() {
            shell.kill();
        }
    }

    /// The service ends the session: destination closed, channel_closed with no output.
    fn end(&mut self) {
        self.close_destination();
        self.finished = Some(String::new());
    }

    fn agent_events(&mut self, now: Instant) {
        while let Some(ev) = self.agent.poll_event() {
            match ev {
                AgentEvent::Dial => match self.shell.as_mut() {
                    Some(shell) => shell.spawn(),
                    None => {
                        if self.agent.mode() == PortMode::Mux {
                            self.targets.use_mux();
                        }
                        self.targets.dial();
                    }
                },
                AgentEvent::ToTarget(b) => match self.shell.as_mut() {
                    Some(shell) => shell.write(b),
                    None => self.targets.write(b),
                },
                AgentEvent::CloseTarget => self.close_destination(),
                AgentEvent::Finished(output) => self.finished = Some(output),
                AgentEvent::DecryptKey { blob, challenge } => {
                    self.decrypt_key(now, &blob, challenge.as_deref())
                }
                AgentEvent::Resize(size) => {
                    if let Some(shell) = self.shell.as_mut() {
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
    }

    /// The agent's KMS Decrypt of the client's data key, under the session's context (§6).
    fn decrypt_key(&mut self, now: Instant, blob: &[u8], challenge: Option<&str>) {
        let context = encryption_context(&self.plan.session_id, &self.plan.target, challenge);
        let key = self.service.kms.decrypt(blob, &context);
        if key.is_ok() {
            self.service.encrypted.fetch_add(1, Ordering::Relaxed);
        }
        self.agent.set_data_key(now.into_std(), key);
    }

    /// The agent's frames through the down faults to the client.
    async fn relay_agent_frames(&mut self, now: Instant) {
        while let Some(frame) = self.agent.poll_transmit() {
            self.odd += 1;
            let frame = match self.cfg.odd_headers && self.odd.is_multiple_of(5) {
                true => widen_header(&frame),
                false => frame,
            };
            for (delay, msg) in self.down.apply(frame) {
                if delay.is_zero() {
                    self.link.relay(&mut self.client, msg).await;
                } else {
                    self.tie += 1;
                    self.delayed
                        .push(Reverse((now + delay, self.tie, false, msg)));
                }
            }
        }
        // One flush per turn for everything relayed since the last: frames leave in batches,
        // as from the real gateway, instead of a syscall each.
        self.link.flush(&mut self.client).await;
    }

    /// Kills the client's websocket when the drop plan says so.
    async fn apply_drops(&mut self, now: Instant) {
        if self.client.is_some() && self.link.should_drop(&self.cfg.drops, now) {
            self.link.kill(&mut self.client, &self.cfg.drops).await;
            if let Some(outage) = self.cfg.drops.outage {
                self.service.begin_outage(outage);
            }
            self.service.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The session is over: channel_closed with the agent's output, then the websocket closes.
    async fn close(&mut self, output: &str) {
        if let Some(ws) = self.client.as_mut() {
            let closed = channel_closed(&self.plan.target, &self.plan.session_id, output);
            let _ = ws.send(Message::binary(closed)).await;
            let _ = WebSocketStream::close(&mut **ws, None).await;
        }
    }

    /// When the next timer of the session is due.
    fn deadline(&self, now: Instant) -> Instant {
        let drop_at = self
            .cfg
            .drops
            .after
            .filter(|_| self.client.is_some() && self.link.may_drop(&self.cfg.drops));
        [
            self.agent.poll_timeout().map(Instant::from_std),
            self.delayed.peek().map(|d| d.0.0),
            drop_at.map(|d| self.link.opened + d),
            self.cfg.idle_timeout.map(|t| self.last_activity + t),
            self.pause.0,
            self.pause.1,
            self.limit.as_ref().and_then(RateLimit::resume_at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(3600))
    }

    /// Waits for the first of: a websocket or command from the service, client messages, the
    /// destination, the shell, a timer; and handles it.
    async fn turn(&mut self, attach: &mut mpsc::UnboundedReceiver<Attach>, now: Instant) {
        let deadline = self.deadline(now);
        let can_read = self.agent.can_read_target();
        tokio::select! {
            a = attach.recv() => self.on_attach(a, now).await,
            // The faithful agent's read loop stops while its destination write blocks.
            msg = next_message(&mut self.client), if !self.link.blackholed && self.agent.can_take_frames() => {
                self.on_client_messages(msg, now).await
            }
            ev = self.targets.next(can_read) => self.on_target(ev, now),
            ev = next_shell(&mut self.shell, can_read) => self.on_shell(ev, now),
            _ = tokio::time::sleep_until(deadline) => self.on_timer().await,
        }
    }

    async fn on_attach(&mut self, attach: Option<Attach>, now: Instant) {
        let Some(Attach::Client(ws)) = attach else {
            // TerminateSession, or the service is gone.
            return self.end();
        };
        self.client = Some(ws);
        let kill_in_handshake = !self.opened_once && self.cfg.drops.in_handshake;
        self.link.attached(now, kill_in_handshake);
        self.link.deliver_waiting(&mut self.client).await;
        if self.opened_once {
            self.agent.handle_client_reconnect(now.into_std());
        } else {
            self.opened_once = true;
            self.agent.start(now.into_std());
        }
    }

    /// `first` and what else is already readable: in the same turn, so its acks leave in one
    /// flush.
    async fn on_client_messages(&mut self, first: Option<WsResult>, now: Instant) {
        let mut next = Some(first);
        for _ in 0..=READ_BATCH {
            let Some(msg) = next else { break };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if !self.on_client_binary(b, now).await {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => self.deliver_up(now, Bytes::from(t)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.client = None;
                    break;
                }
            }
            next = self.client.as_mut().and_then(|ws| ws.next().now_or_never());
        }
    }

    /// One binary client message, under the rate limit; false when that closed the websocket.
    async fn on_client_binary(&mut self, b: Bytes, now: Instant) -> bool {
        self.link.bytes += b.len() as u64;
        self.last_activity = now;
        let data = b.get(4..21) == Some(&b"input_stream_data"[..]);
        match self.limit.as_mut().map(|l| l.on_message(now, data)) {
            Some(Verdict::Pause) => {
                tracing::info!("sim: client above --max-msg-rate; pause_publication");
                self.service.pauses.fetch_add(1, Ordering::Relaxed);
                let pause = publication(MessageType::PausePublication);
                self.link.relay(&mut self.client, pause).await;
            }
            Some(Verdict::Close) => {
                tracing::info!("sim: client kept sending while paused; closing");
                if let Some(mut ws) = self.client.take() {
                    let _ = WebSocketStream::close(&mut *ws, None).await;
                }
                return false;
            }
            _ => {}
        }
        self.deliver_up(now, b);
        true
    }

    /// A client frame through the up faults to the agent.
    fn deliver_up(&mut self, now: Instant, msg: Bytes) {
        for (delay, m) in self.up.apply(msg) {
            if delay.is_zero() {
                self.agent.handle_frame(now.into_std(), &m);
            } else {
                self.tie += 1;
                self.delayed.push(Reverse((now + delay, self.tie, true, m)));
            }
        }
    }

    fn on_target(&mut self, ev: TargetEvent, now: Instant) {
        let now = now.into_std();
        match ev {
            TargetEvent::Connected => self.agent.handle_target_connected(),
            TargetEvent::DialFailed(e) => self.agent.handle_target_failed(&e),
            TargetEvent::Data(b) => self.agent.handle_target_data(now, b),
            TargetEvent::Eof if self.agent.mode() == PortMode::Basic => {
                self.agent.handle_target_closed()
            }
            TargetEvent::Eof => self.agent.handle_target_eof(now),
            TargetEvent::Written(n) => self.agent.handle_target_written(n),
            TargetEvent::StreamRefused(id) => {
                tracing::info!(stream = id, "sim: destination refused a mux stream");
                self.agent.send_flag(now, flag::CONNECT_TO_PORT_ERROR);
                if let TargetEvent::Data(fin) = self.targets.take_mux_bytes() {
                    self.agent.handle_target_data(now, fin);
                }
            }
            TargetEvent::Nothing => {}
        }
    }

    fn on_shell(&mut self, ev: ShellEvent, now: Instant) {
        let now = now.into_std();
        match ev {
            ShellEvent::Started => self.agent.handle_target_connected(),
            ShellEvent::Failed(e) => self.agent.handle_shell_failed(&e),
            ShellEvent::Output(b) => self.agent.handle_target_data(now, b),
            ShellEvent::Stderr(b) => self.agent.handle_target_stderr(now, b),
            ShellEvent::Written(n) => self.agent.handle_target_written(n),
            ShellEvent::Exited(code) => self.agent.handle_process_exit(now, code),
            ShellEvent::Nothing => {}
        }
    }

    /// Timers: the agent's, the rate limit's resume, publication pauses, delayed frames.
    async fn on_timer(&mut self) {
        let now = Instant::now();
        self.agent.handle_timeout(now.into_std());
        if let Some(l) = self
            .limit
            .as_mut()
            .filter(|l| l.resume_at().is_some_and(|t| t <= now))
        {
            l.resumed(now);
            let start = publication(MessageType::StartPublication);
            self.link.relay(&mut self.client, start).await;
        }
        if self.pause.0.is_some_and(|t| t <= now) {
            let pause = publication(MessageType::PausePublication);
            self.link.relay(&mut self.client, pause).await;
            self.service.pauses.fetch_add(1, Ordering::Relaxed);
            self.pause = (None, Some(now + self.cfg.pauses.length));
        } else if self.pause.1.is_some_and(|t| t <= now) {
            let start = publication(MessageType::StartPublication);
            self.link.relay(&mut self.client, start).await;
            self.pause = (self.cfg.pauses.every.map(|e| now + e), None);
        }
        while self.delayed.peek().is_some_and(|d| d.0.0 <= now) {
            let Some(Reverse((_, _, to_agent, msg))) = self.delayed.pop() else {
                break;
            };
            if to_agent {
                self.agent.handle_frame(now.into_std(), &msg);
            } else {
                self.link.relay(&mut self.client, msg).await;
            }
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

/// What reading the client's websocket gives.
type WsResult = Result<Message, tokio_tungstenite::tungstenite::Error>;

async fn next_message(client: &mut Option<Box<Ws>>) -> Option<WsResult> {
    match client.as_mut() {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}
