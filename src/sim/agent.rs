//! A sans-IO model of amazon-ssm-agent's data channel for Port sessions (protocol.md §12.1).
//!
//! Written from the agent's behaviour, not from our client: it shares only the frame codec and
//! payload types with `proto::session`, so a misreading on one side cannot make both agree. Like
//! the real agent it retransmits only the head of its outgoing queue, re-acks duplicates, acks
//! and drops client data that arrives before HandshakeComplete, and leaves client data unacked
//! until its destination connection is up.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::proto::frame::{Frame, MessageType, flag, flags, ptype};
use crate::proto::payload::{Acknowledge, HandshakeResponse, status};
use crate::proto::rto::RttEstimator;
use crate::proto::session::splitmix;

/// The agent's 15 s wait for a HandshakeResponse (§5.6).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent waits for its outgoing buffer to drain before closing (§9.2).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the agent announces and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// AgentVersion in the HandshakeRequest.
    pub version: String,
    /// Document properties after substitution (e.g. `{"portNumber":"22"}`).
    pub properties: Value,
    /// Bytes per output message (the agent reads 1024 at a time).
    pub chunk: usize,
    /// Unacked messages after which the agent stops reading its destination. The real agent has
    /// no such window (it is paced by 1 ms sleeps and the service instead), but an unpaced
    /// simulator needs one to keep its memory bounded.
    pub window: usize,
    /// Client bytes queued towards the destination after which client data is left unacked.
    pub target_backlog_limit: usize,
    /// Seed for message ids.
    pub seed: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            version: "3.3.1957.0".into(),
            properties: json!({"portNumber": "22"}),
            chunk: 1024,
            window: 1024,
            target_backlog_limit: 1024 * 1024,
            seed: 1,
        }
    }
}

/// How a Port session moves bytes, as the agent decides it (§5.5, §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMode {
    /// No `type` property (AWS-StartSSHSession): one connection; its end ends the session.
    Stream,
    /// LocalPortForwarding, one connection at a time, re-dialed after DisconnectToPort.
    Basic,
    /// LocalPortForwarding over smux: one connection per stream.
    Mux,
}

/// What the agent asks its I/O wrapper to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Connect to the destination port (after HandshakeComplete).
    Dial,
    /// Bytes for the destination connection, in order.
    ToTarget(Bytes),
    /// Close the destination connection.
    CloseTarget,
    /// The session is over; the service tells the client with `channel_closed` and this text.
    Finished(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    AwaitResponse(Instant),
    Running,
    Draining(Instant),
    Done,
}

#[derive(Debug)]
struct Sent {
    seq: i64,
    frame: Bytes,
    last_sent: Instant,
    resent: bool,
}

/// The agent end of one session.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    phase: Phase,
    start: Instant,
    next_seq: i64,
    sent: VecDeque<Sent>,
    rtt: RttEstimator,
    expected: i64,
    held: BTreeMap<i64, Frame>,
    target_up: bool,
    target_backlog: usize,
    /// Acked data that arrived out of order before the destination was connected.
    before_dial: Vec<Bytes>,
    paused: bool,
    client_version: String,
    mode: PortMode,
    /// Basic mode: the destination was closed by DisconnectToPort; dial again on new data.
    redial: bool,
    transmit: VecDeque<Bytes>,
    events: VecDeque<AgentEvent>,
    rng: u64,
}

impl Agent {
    /// A fresh agent; nothing happens until [`Agent::start`].
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        Self {
            rng: config.seed,
            config,
            phase: Phase::Idle,
            start: now,
            next_seq: 0,
            sent: VecDeque::new(),
            rtt: RttEstimator::default(),
            expected: 0,
            held: BTreeMap::new(),
            target_up: false,
            target_backlog: 0,
            before_dial: Vec::new(),
            paused: false,
            client_version: String::new(),
            mode: PortMode::Stream,
            redial: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The data channel opened: send the HandshakeRequest (seq 0, flags SYN).
    pub fn start(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        let request = json!({
            "AgentVersion": self.config.version,
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "Port", "Properties": self.config.properties},
            }],
        });
        self.send(
            now,
            ptype::HANDSHAKE_REQUEST,
            Bytes::from(request.to_string()),
        );
        self.phase = Phase::AwaitResponse(now + HANDSHAKE_TIMEOUT);
    }

    /// One frame from the client (through the service).
    pub fn handle_frame(&mut self, now: Instant, raw: &Bytes) {
        // The real agent checks HL, type and date but not the digest; we check it too, to catch
        // client bugs (a stricter peer than AWS, never a laxer one).
        let Ok(frame) = Frame::decode(raw) else {
            return;
        };
        match frame.message_type {
            MessageType::Acknowledge => {
                self.paused = false;
                if let Ok(ack) = serde_json::from_slice::<Acknowledge>(&frame.payload) {
                    self.on_ack(now, ack.acknowledged_message_sequence_number);
                }
            }
            MessageType::InputStreamData => {
                self.paused = false;
                self.on_input(now, frame);
            }
            MessageType::PausePublication => self.paused = true,
            MessageType::StartPublication => self.paused = false,
            MessageType::ChannelClosed => self.finish(""),
            _ => {}
        }
    }

    fn on_input(&mut self, now: Instant, frame: Frame) {
        if frame.sequence < self.expected {
            self.ack(now, &frame); // "Resending acknowledge for already processed message"
            return;
        }
        if frame.sequence > self.expected {
            if self.held.len() < 100_000 {
                self.ack(now, &frame);
                self.held.insert(frame.sequence, frame);
            }
            return;
        }
        if !self.take(now, &frame, false) {
            return; // not ready: no ack, the client retransmits
        }
        self.ack(now, &frame);
        self.expected += 1;
        // Held messages were acked when they arrived: they must be delivered whatever the backlog.
        while let Some(next) = self.held.remove(&self.expected) {
            self.take(now, &next, true);
            self.expected += 1;
        }
    }

    /// Processes one in-order client message; false means "handler not ready". `acked` messages
    /// were already acknowledged and are taken even over the backlog limit.
    fn take(&mut self, now: Instant, frame: &Frame, acked: bool) -> bool {
        match (self.phase, frame.payload_type) {
            (Phase::AwaitResponse(_), ptype::HANDSHAKE_RESPONSE) => {
                let resp: HandshakeResponse =
                    serde_json::from_slice(&frame.payload).unwrap_or_default();
                if resp
                    .processed_client_actions
                    .iter()
                    .any(|a| a.action_status != status::SUCCESS)
                {
                    self.finish("Handshake failed: the client rejected a requested action");
                    return true;
                }
                self.client_version = resp.client_version;
                self.mode = self.port_mode();
                let took = now.saturating_duration_since(self.start).as_nanos() as i64;
                let done = json!({"HandshakeTimeToComplete": took, "CustomerMessage": ""});
                self.send(
                    now,
                    ptype::HANDSHAKE_COMPLETE,
                    Bytes::from(done.to_string()),
                );
                self.phase = Phase::Running;
                self.events.push_back(AgentEvent::Dial);
                true
            }
            // §4.3: data before the handshake is over is acked and discarded.
            (Phase::AwaitResponse(_) | Phase::Idle, _) => true,
            (Phase::Running, ptype::OUTPUT) => {
                if self.redial {
                    // Basic mode re-dials on the first data after a DisconnectToPort (§3.6).
                    self.redial = false;
                    self.events.push_back(AgentEvent::Dial);
                }
                let full = self.target_backlog >= self.config.target_backlog_limit;
                if !acked && (!self.target_up || full) {
                    return false;
                }
                if !self.target_up {
                    self.before_dial.push(frame.payload.clone());
                    return true;
                }
                self.target_backlog += frame.payload.len();
                self.events
                    .push_back(AgentEvent::ToTarget(frame.payload.clone()));
                true
            }
            (Phase::Running, ptype::FLAG) => {
                match frame.flag_value() {
                    flag::TERMINATE_SESSION => {
                        self.events.push_back(AgentEvent::CloseTarget);
                        self.finish("");
                    }
                    flag::DISCONNECT_TO_PORT => match self.mode {
                        // sshd-style session: a closed destination ends it (§12.1 step 7).
                        PortMode::Stream => {
                            self.events.push_back(AgentEvent::CloseTarget);
                            self.finish("");
                        }
                        PortMode::Basic => {
                            self.events.push_back(AgentEvent::CloseTarget);
                            self.target_up = false;
                            self.redial = true;
                        }
                        PortMode::Mux => {} // ignored by the mux session (§3.6)
                    },
                    _ => {}
                }
                true
            }
            _ => true, // Size and unknown types: acked, ignored
        }
    }

    fn on_ack(&mut self, now: Instant, seq: i64) {
        let Some(pos) = self.sent.iter().position(|s| s.seq == seq) else {
            return;
        };
        if let Some(s) = self.sent.remove(pos)
            && !s.resent
        {
            self.rtt
                .on_sample(now.saturating_duration_since(s.last_sent));
        }
        self.resend_head(now);
        if let Phase::Draining(_) = self.phase
            && self.sent.is_empty()
        {
            self.finish("");
        }
    }

    /// The mode chosen at the handshake.
    pub fn mode(&self) -> PortMode {
        self.mode
    }

    /// Agent-side choice (§5.5): mux needs LocalPortForwarding, a client ≥ 1.1.70, and an agent
    /// new enough to have smux at all (> 3.0.196.0, the threshold clients use too).
    fn port_mode(&self) -> PortMode {
        let forwarding = self.config.properties.get("type").and_then(Value::as_str)
            == Some("LocalPortForwarding");
        match forwarding {
            false => PortMode::Stream,
            true if version_at_least(&self.client_version, &[1, 1, 70])
                && !version_at_least(&self.config.version, &[3, 0, 196, 1]) =>
            {
                PortMode::Basic
            }
            true if version_at_least(&self.client_version, &[1, 1, 70]) => PortMode::Mux,
            true => PortMode::Basic,
        }
    }

    /// Sends a Flag to the client (ConnectToPortError when a mux stream cannot be dialed).
    pub fn send_flag(&mut self, now: Instant, value: u32) {
        self.send(
            now,
            ptype::FLAG,
            Bytes::copy_from_slice(&value.to_be_bytes()),
        );
    }

    /// The destination connection is established.
    pub fn handle_target_connected(&mut self) {
        self.target_up = true;
        for data in std::mem::take(&mut self.before_dial) {
            self.target_backlog += data.len();
            self.events.push_back(AgentEvent::ToTarget(data));
        }
    }

    /// The destination closed in basic mode: wait for the client to reconnect (re-dial on data).
    pub fn handle_target_closed(&mut self) {
        self.target_up = false;
        self.redial = true;
    }

    /// The destination could not be reached: the session fails like the agent's (§12.4).
    pub fn handle_target_failed(&mut self, why: &str) {
        self.finish(&format!("Unable to connect to specified port: {why}"));
    }

    /// The I/O wrapper wrote `n` bytes of [`AgentEvent::ToTarget`] data.
    pub fn handle_target_written(&mut self, n: usize) {
        self.target_backlog = self.target_backlog.saturating_sub(n);
    }

    /// Bytes read from the destination: sent as Output messages of at most `chunk` bytes.
    pub fn handle_target_data(&mut self, now: Instant, mut data: Bytes) {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(self.config.chunk));
            self.send(now, ptype::OUTPUT, chunk);
        }
    }

    /// The destination closed: drain, then finish (§12.1 step 8).
    pub fn handle_target_eof(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Running) {
            self.phase = Phase::Draining(now + DRAIN_TIMEOUT);
            if self.sent.is_empty() {
                self.finish("");
            }
        }
    }

    /// Whether the wrapper may read more from the destination now.
    pub fn can_read_target(&self) -> bool {
        self.phase == Phase::Running && !self.paused && self.sent.len() < self.config.window
    }

    /// Timers: head retransmission, handshake timeout, drain timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.resend_head(now);
        match self.phase {
            Phase::AwaitResponse(deadline) if now >= deadline => self.finish(
                "Handshake timed out. Please ensure that you have the latest version of the \
                 session manager plugin.",
            ),
            Phase::Draining(deadline) if now >= deadline => self.finish(""),
            _ => {}
        }
    }

    /// When to call [`Agent::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let head = self
            .sent
            .front()
            .filter(|_| !self.paused)
            .map(|s| s.last_sent + self.rtt.rto());
        let phase = match self.phase {
            Phase::AwaitResponse(t) | Phase::Draining(t) => Some(t),
            _ => None,
        };
        [head, phase].into_iter().flatten().min()
    }

    /// Next frame for the client.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// Next instruction for the I/O wrapper.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// ClientVersion from the HandshakeResponse.
    pub fn client_version(&self) -> &str {
        &self.client_version
    }

    /// The client's websocket came back: resend the head at once.
    pub fn handle_client_reconnect(&mut self, now: Instant) {
        self.paused = false;
        if let Some(head) = self.sent.front_mut() {
            head.last_sent = now - self.rtt.rto();
        }
        self.resend_head(now);
    }

    fn resend_head(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        let rto = self.rtt.rto();
        if let Some(head) = self.sent.front_mut()
            && head.last_sent + rto <= now
        {
            // Unlike the plugin, the agent writes lastSentTime back (§4.4).
            head.last_sent = now;
            head.resent = true;
            self.transmit.push_back(head.frame.clone());
        }
    }

    fn finish(&mut self, output: &str) {
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.events
                .push_back(AgentEvent::Finished(output.to_owned()));
        }
    }

    fn send(&mut self, now: Instant, payload_type: u32, payload: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = self.frame(
            now,
            MessageType::OutputStreamData,
            seq,
            payload_type,
            payload,
        );
        if !self.paused {
            self.transmit.push_back(frame.clone());
        }
        self.sent.push_back(Sent {
            seq,
            frame,
            last_sent: now,
            resent: false,
        });
    }

    fn ack(&mut self, now: Instant, acked: &Frame) {
        let body = json!({
            "AcknowledgedMessageType": acked.message_type.as_str(),
            "AcknowledgedMessageId": acked.message_id.hyphenated().to_string(),
            "AcknowledgedMessageSequenceNumber": acked.sequence,
            "IsSequentialMessage": true,
        });
        let frame = self.frame(
            now,
            MessageType::Acknowledge,
            0,
            ptype::NONE,
            body.to_string().into(),
        );
        self.transmit.push_back(frame);
    }

    fn frame(
        &mut self,
        now: Instant,
        kind: MessageType,
        seq: i64,
        pt: u32,
        payload: Bytes,
    ) -> Bytes {
        let flags = match (&kind, seq) {
            (MessageType::Acknowledge, _) => flags::ACK,
            (_, 0) => flags::SYN,
            _ => 0,
        };
        let id = (u128::from(splitmix(&mut self.rng)) << 64) | u128::from(splitmix(&mut self.rng));
        Frame {
            message_type: kind,
            schema_version: 1,
            created_date: 1_700_000_000_000
                + now.saturating_duration_since(self.start).as_millis() as u64,
            sequence: seq,
            flags,
            message_id: Uuid::from_u128(id),
            payload_type: pt,
            payload,
        }
        .encode()
    }
}

/// Agent-side version comparison (numeric components; a missing or non-numeric one is smaller).
fn version_at_least(version: &str, min: &[u64]) -> bool {
    let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    let n = parts.len().max(min.len());
    let pad = |v: &[u64]| {
        (0..n)
            .map(|i| v.get(i).copied().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    pad(&parts) >= pad(min)
}
