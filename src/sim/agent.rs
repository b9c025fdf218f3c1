//! A sans-IO model of amazon-ssm-agent's data channel for Port sessions (protocol.md §12.1) and
//! the shell plugins (§12.3, §12.4: no handshake for shells, UTF-8 chunking, ExitCode).
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

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::proto::crypto::{Cipher, Side};
use crate::proto::frame::{Flag, Frame, MessageType, PayloadType, flag, flags, ptype};
use crate::proto::payload::{Acknowledge, HandshakeResponse, Size, status};

/// The agent's resend scheduler wakes this often and resends at most the oldest unacked
/// message (`ResendSleepInterval`, datachannel.go, §16.3).
pub const RESEND_TICK: Duration = Duration::from_millis(100);
/// Unacked messages the agent stores; later ones are sent once and never resent
/// (`OutgoingMessageBufferCapacity`, §16.3).
pub const OUTGOING_CAPACITY: usize = 100_000;
/// Client bytes the destination may have unwritten before the agent's synchronous write blocks
/// (standing in for the kernel's socket buffers): then it neither reads nor acks (§16.3).
pub const WRITE_BLOCKS_AT: usize = 256 * 1024;

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
    /// The fast agent of benchmarks instead of the faithful one: a window of `window` unacked
    /// messages, every expired message resent on its own timer, and a full destination leaves
    /// client data unacked. The faithful agent (default) behaves like amazon-ssm-agent (§16.3):
    /// no window, the oldest unacked message resent once per [`RESEND_TICK`], at most
    /// [`OUTGOING_CAPACITY`] stored, and a blocked destination write blocks its reading
    /// ([`Agent::can_take_frames`]).
    pub fast: bool,
    /// Fast agent only: unacked messages after which it stops reading its destination.
    pub window: usize,
    /// Client bytes queued towards the destination after which client data is left unacked
    /// (fast agent) or the agent stops reading (faithful agent).
    pub target_backlog_limit: usize,
    /// Seed for message ids.
    pub seed: u64,
    /// The plugin the document runs: Port, or one of the shell plugins.
    pub plugin: Plugin,
    /// KMS key to encrypt the session with (the preferences' kmsKeyId), if any (§6).
    pub kms_key: Option<String>,
    /// Send an encryption challenge the client cannot decrypt (tests the failure path).
    pub bad_challenge: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            version: super::AGENT_VERSION.into(),
            properties: json!({"portNumber": "22"}),
            chunk: 1024,
            fast: false,
            window: 1024,
            target_backlog_limit: WRITE_BLOCKS_AT,
            seed: 1,
            plugin: Plugin::Port,
            kms_key: None,
            bad_challenge: false,
        }
    }
}

/// The agent plugin a document runs (§1.2, §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// SSH and port forwarding: handshake, then destination connections.
    Port,
    /// Standard_Stream: the user's shell on a pty, no handshake.
    Shell,
    /// InteractiveCommands: one command on a pty, no handshake.
    InteractiveCommands,
    /// NonInteractiveCommands: one command on pipes; handshake, StdErr and ExitCode payloads.
    NonInteractiveCommands,
}

impl Plugin {
    /// The SessionType of the HandshakeRequest.
    pub fn session_type(self) -> &'static str {
        match self {
            Self::Port => "Port",
            Self::Shell => "Standard_Stream",
            Self::InteractiveCommands => "InteractiveCommands",
            Self::NonInteractiveCommands => "NonInteractiveCommands",
        }
    }

    /// Whether the plugin itself asks for a handshake (§5.1; KMS asks for one regardless).
    pub fn needs_handshake(self) -> bool {
        matches!(self, Self::Port | Self::NonInteractiveCommands)
    }

    /// One of the shell plugins (Standard_Stream and the two command types).
    pub fn is_shell(self) -> bool {
        self != Self::Port
    }

    /// Whether the program runs on a pty (and Size messages resize it).
    pub fn uses_pty(self) -> bool {
        matches!(self, Self::Shell | Self::InteractiveCommands)
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
    /// KMS Decrypt of the client's data key blob with this encryption context; answer with
    /// [`Agent::set_data_key`].
    DecryptKey {
        /// CiphertextBlob from the HandshakeResponse.
        blob: Vec<u8>,
        /// The challenge to add to the context when the client acknowledged it.
        challenge: Option<String>,
    },
    /// Resize the pty (shell plugins, PayloadType Size).
    Resize(Size),
    /// A message for the service only (`agent_session_state`), never relayed to the client.
    ToService(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    AwaitResponse(Instant),
    /// Waiting for KMS to decrypt the client's data key.
    AwaitKey(Instant),
    /// EncChallengeRequest sent; waiting for the response.
    AwaitChallenge(Instant),
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
    rtt: AgentRtt,
    /// The next wake-up of the faithful agent's resend scheduler.
    next_tick: Instant,
    expected: i64,
    held: BTreeMap<i64, Frame>,
    target_up: bool,
    target_backlog: usize,
    /// Acked data that arrived out of order before the destination was connected.
    before_dial: Vec<Bytes>,
    paused: bool,
    client_version: String,
    /// The session's KMS cipher once the data key is known.
    cipher: Option<Cipher>,
    /// Challenge offered for the encryption context (base64).
    kms_challenge: String,
    /// The 64 bytes the client must send back.
    challenge_secret: Vec<u8>,
    mode: PortMode,
    /// Basic mode: the destination was closed by DisconnectToPort; dial again on new data.
    redial: bool,
    /// Basic mode: a re-dial is under way (the real one dials inside its read loop).
    redialing: bool,
    /// Messages resent.
    resent: u64,
    transmit: VecDeque<Bytes>,
    events: VecDeque<AgentEvent>,
    rng: u64,
    /// Shell plugins: the incomplete UTF-8 sequence at the end of the last read, per stream
    /// (0 stdout, 1 stderr), sent with the next read (§12.3).
    text_tail: [Vec<u8>; 2],
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
            rtt: AgentRtt::default(),
            next_tick: now + RESEND_TICK,
            expected: 0,
            held: BTreeMap::new(),
            target_up: false,
            target_backlog: 0,
            before_dial: Vec::new(),
            paused: false,
            client_version: String::new(),
            cipher: None,
            kms_challenge: String::new(),
            challenge_secret: Vec::new(),
            mode: PortMode::Stream,
            redial: false,
            redialing: false,
            resent: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            text_tail: [Vec::new(), Vec::new()],
        }
    }

    /// The data channel opened: send the HandshakeRequest (seq 0, flags SYN).
    pub fn start(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        if !self.config.plugin.needs_handshake() && self.config.kms_key.is_none() {
            // §5.1: no handshake; the shell starts at once and its first output (seq 0, SYN)
            // tells the client what kind of session this is.
            self.phase = Phase::Running;
            self.events.push_back(AgentEvent::Dial);
            return;
        }
        // Properties are the document's for Port and null for the shell plugins (§5.3).
        let properties = match self.config.plugin {
            Plugin::Port => self.config.properties.clone(),
            _ => Value::Null,
        };
        let mut actions = vec![json!({
            "ActionType": "SessionType",
            "ActionParameters": {"SessionType": self.config.plugin.session_type(), "Properties": properties},
        })];
        if let Some(key) = &self.config.kms_key {
            let challenge: Vec<u8> = (0..2)
                .flat_map(|_| next_random(&mut self.rng).to_le_bytes())
                .collect();
            self.kms_challenge = BASE64.encode(challenge);
            actions.push(json!({
                "ActionType": "KMSEncryption",
                "ActionParameters": {"KMSKeyId": key, "Challenge": self.kms_challenge},
            }));
        }
        let request =
            json!({"AgentVersion": self.config.version, "RequestedClientActions": actions});
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
        if let (Some(cipher), ptype::OUTPUT) = (&self.cipher, frame.payload_type) {
            // §6: the client encrypts its Output payloads.
            let Ok(payload) = cipher.open(&frame.payload) else {
                return false;
            };
            let clear = Frame {
                payload,
                ..frame.clone()
            };
            return self.take_clear(now, &clear, acked);
        }
        self.take_clear(now, frame, acked)
    }

    fn take_clear(&mut self, now: Instant, frame: &Frame, acked: bool) -> bool {
        match (self.phase, frame.payload_type) {
            (Phase::AwaitResponse(_), ptype::HANDSHAKE_RESPONSE) => {
                self.on_handshake_response(now, frame);
                true
            }
            (Phase::AwaitChallenge(_), ptype::ENC_CHALLENGE_RESPONSE) => {
                self.on_challenge_response(now, frame)
            }
            // §4.3: data before the handshake is over is acked and discarded.
            (
                Phase::AwaitResponse(_)
                | Phase::AwaitKey(_)
                | Phase::AwaitChallenge(_)
                | Phase::Idle,
                _,
            ) => true,
            (Phase::Running, ptype::OUTPUT) => self.on_output(frame, acked),
            // §3.6: the shell plugins switch only on Output and Size; Flags are acked, ignored.
            (Phase::Running, ptype::FLAG) if self.config.plugin.is_shell() => true,
            (Phase::Running, ptype::SIZE) if self.config.plugin.uses_pty() => {
                // §12.4: before the pty exists the handler is not ready: no ack.
                if !acked && !self.target_up {
                    return false;
                }
                if let Ok(size) = serde_json::from_slice::<Size>(&frame.payload) {
                    self.events.push_back(AgentEvent::Resize(size));
                }
                true
            }
            (Phase::Running, ptype::FLAG) => {
                self.on_flag(frame.flag_value());
                true
            }
            _ => true, // Size and unknown types: acked, ignored
        }
    }

    fn on_handshake_response(&mut self, now: Instant, frame: &Frame) {
        let resp: HandshakeResponse = serde_json::from_slice(&frame.payload).unwrap_or_default();
        if resp
            .processed_client_actions
            .iter()
            .any(|a| a.action_status != status::SUCCESS)
        {
            return self.finish("Handshake failed: the client rejected a requested action");
        }
        self.client_version = resp.client_version.clone();
        self.mode = self.port_mode();
        match self.config.kms_key {
            Some(_) => self.request_decrypt(now, &resp),
            None => self.complete_handshake(now, ""),
        }
    }

    /// §5.4: the KMS action's result carries the data key for us to decrypt.
    fn request_decrypt(&mut self, now: Instant, resp: &HandshakeResponse) {
        let result = resp
            .processed_client_actions
            .iter()
            .find(|a| a.action_type == "KMSEncryption")
            .map(|a| a.action_result.clone())
            .unwrap_or_default();
        let blob = result
            .get("KMSCipherTextKey")
            .and_then(Value::as_str)
            .and_then(|b| BASE64.decode(b).ok());
        let acknowledged = result
            .get("ChallengeAcknowledgement")
            .and_then(Value::as_bool)
            == Some(true);
        match blob {
            Some(blob) => {
                let challenge = acknowledged.then(|| self.kms_challenge.clone());
                self.events
                    .push_back(AgentEvent::DecryptKey { blob, challenge });
                self.phase = Phase::AwaitKey(now + HANDSHAKE_TIMEOUT);
            }
            None => self.finish("KMS encryption is required but the client sent no data key"),
        }
    }

    /// Client data for the destination; false when the handler is not ready (no ack).
    fn on_output(&mut self, frame: &Frame, acked: bool) -> bool {
        if self.redial {
            // Basic mode re-dials on the first data after a DisconnectToPort (§3.6).
            self.redial = false;
            self.redialing = true;
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

    fn on_flag(&mut self, value: Flag) {
        match value {
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
    }

    fn on_ack(&mut self, now: Instant, seq: i64) {
        let Some(pos) = self.sent.iter().position(|s| s.seq == seq) else {
            return;
        };
        if let Some(s) = self.sent.remove(pos)
            && (!s.resent || !self.config.fast)
        {
            // The real agent samples every ack against LastSentTime, resent or not.
            self.rtt
                .on_sample(now.saturating_duration_since(s.last_sent));
        }
        if self.config.fast {
            self.resend_head(now);
        }
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
    pub fn send_flag(&mut self, now: Instant, value: Flag) {
        self.send(
            now,
            ptype::FLAG,
            Bytes::copy_from_slice(&value.0.to_be_bytes()),
        );
    }

    /// The destination connection is established.
    pub fn handle_target_connected(&mut self) {
        self.target_up = true;
        self.redialing = false;
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
        if self.config.plugin.is_shell() {
            self.send_text(now, ptype::OUTPUT, &data);
            return;
        }
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(self.config.chunk));
            self.send(now, ptype::OUTPUT, chunk);
        }
    }

    /// Standard error of a NonInteractiveCommands process: StdErr messages, chunked like output,
    /// when the document asked for `separateOutputStream`; otherwise merged into the output.
    pub fn handle_target_stderr(&mut self, now: Instant, data: Bytes) {
        match self.separate_output() {
            true => self.send_text(now, ptype::STDERR, &data),
            false => self.send_text(now, ptype::OUTPUT, &data),
        }
    }

    /// NonInteractiveCommands with `separateOutputStream` true (Go's `strconv.ParseBool`): the
    /// only case in which the real agent sends StdErr and ExitCode payloads (`shell.go`).
    fn separate_output(&self) -> bool {
        let value = self.config.properties.get("separateOutputStream");
        let value = value.and_then(Value::as_str).unwrap_or("false");
        self.config.plugin == Plugin::NonInteractiveCommands
            && matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
    }

    /// The shell or command could not be started: the session fails.
    pub fn handle_shell_failed(&mut self, why: &str) {
        self.finish(&format!("Unable to start the shell: {why}"));
    }

    /// The shell or command exited and its output was read: send what is held back, the exit
    /// code for NonInteractiveCommands with separate output (§12.4), then drain and finish like
    /// a closed destination.
    pub fn handle_process_exit(&mut self, now: Instant, code: i32) {
        for (i, pt) in [(0, ptype::OUTPUT), (1, ptype::STDERR)] {
            let tail = std::mem::take(&mut self.text_tail[i]);
            if !tail.is_empty() {
                self.send(now, pt, Bytes::from(tail));
            }
        }
        if self.separate_output() && self.phase == Phase::Running {
            self.send(now, ptype::EXIT_CODE, format!("EXIT_CODE: {code}").into());
        }
        self.handle_target_eof(now);
    }

    /// Shell output: at most `chunk` bytes per message, cut on UTF-8 boundaries, with an
    /// incomplete sequence at the end held back for the next read (§12.3). Bytes that are not
    /// UTF-8 still go out, cut at `chunk`.
    fn send_text(&mut self, now: Instant, payload_type: PayloadType, data: &[u8]) {
        let i = usize::from(payload_type == ptype::STDERR);
        let mut buf = std::mem::take(&mut self.text_tail[i]);
        buf.extend_from_slice(data);
        let keep = incomplete_utf8_tail(&buf);
        self.text_tail[i] = buf.split_off(buf.len() - keep);
        drop_replacement_char_tails(&mut buf);
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let n = utf8_cut(rest, self.config.chunk.max(4));
            self.send(now, payload_type, Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
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

    /// Whether the wrapper may read more from the destination now. The faithful agent reads
    /// whatever the acks; a pause only keeps what it reads from being sent.
    pub fn can_read_target(&self) -> bool {
        match self.config.fast {
            true => {
                self.phase == Phase::Running && !self.paused && self.sent.len() < self.config.window
            }
            false => self.phase == Phase::Running,
        }
    }

    /// Whether the wrapper may hand the agent client frames now. The faithful agent's read loop
    /// stops while its destination write blocks or while it re-dials (basic mode).
    pub fn can_take_frames(&self) -> bool {
        self.config.fast
            || (self.target_backlog < self.config.target_backlog_limit
                && !(self.mode == PortMode::Basic && self.redialing))
    }

    /// Timers: head retransmission, handshake timeout, drain timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.config.fast {
            true => self.resend_head(now),
            false if now >= self.next_tick => {
                while self.next_tick <= now {
                    self.next_tick += RESEND_TICK;
                }
                self.resend_oldest(now);
            }
            false => {}
        }
        match self.phase {
            Phase::AwaitKey(deadline) | Phase::AwaitChallenge(deadline) if now >= deadline => {
                self.finish("Timed out waiting for encryption challenge.")
            }
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
        let head = match self.config.fast {
            true => self
                .sent
                .front()
                .filter(|_| !self.paused)
                .map(|s| s.last_sent + self.rtt.rto()),
            false => (!self.sent.is_empty()).then_some(self.next_tick),
        };
        let phase = match self.phase {
            Phase::AwaitResponse(t)
            | Phase::AwaitKey(t)
            | Phase::AwaitChallenge(t)
            | Phase::Draining(t) => Some(t),
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

    /// The client's websocket came back: the fast agent resends the head at once; the
    /// faithful one waits for its next tick, as the real scheduler does.
    pub fn handle_client_reconnect(&mut self, now: Instant) {
        self.paused = false;
        if !self.config.fast {
            return;
        }
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

    /// The faithful scheduler: the oldest unacked message, if its RTO has passed since it was
    /// last sent (strictly, as `time.Since(LastSentTime) > RetransmissionTimeout`).
    fn resend_oldest(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        let rto = self.rtt.rto();
        if let Some(head) = self.sent.front_mut()
            && now.saturating_duration_since(head.last_sent) > rto
        {
            head.last_sent = now;
            head.resent = true;
            self.resent += 1;
            self.transmit.push_back(head.frame.clone());
        }
    }

    /// Messages the agent resent.
    pub fn retransmissions(&self) -> u64 {
        self.resent
    }

    fn finish(&mut self, output: &str) {
        if let Phase::Draining(_) = self.phase
            && self.config.plugin.is_shell()
        {
            // §9.2: a shell that exited is reported to the service once drained.
            let state = self.session_state("Terminating");
            self.events.push_back(AgentEvent::ToService(state));
        }
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.events
                .push_back(AgentEvent::Finished(output.to_owned()));
        }
    }

    /// KMS answered the Decrypt of the client's data key (§6): send the challenge.
    pub fn set_data_key(&mut self, now: Instant, key: Result<Vec<u8>, String>) {
        if !matches!(self.phase, Phase::AwaitKey(_)) {
            return;
        }
        let cipher = match key
            .map_err(|e| e.to_string())
            .and_then(|k| Cipher::new(Side::Agent, &k, self.rng).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                return self.finish(&format!("KMS decryption of the session key failed: {e}"));
            }
        };
        let secret: Vec<u8> = (0..8)
            .flat_map(|_| next_random(&mut self.rng).to_le_bytes())
            .collect();
        let mut cipher = cipher;
        let sealed = match self.config.bad_challenge {
            // Sealed with a key the client cannot have.
            true => Cipher::new(Side::Agent, &[7u8; 64], 1)
                .map(|mut c| c.seal(&secret))
                .unwrap_or_default(),
            false => cipher.seal(&secret),
        };
        self.cipher = Some(cipher);
        self.challenge_secret = secret;
        let body = json!({"Challenge": BASE64.encode(sealed)});
        self.send(
            now,
            ptype::ENC_CHALLENGE_REQUEST,
            Bytes::from(body.to_string()),
        );
        self.phase = Phase::AwaitChallenge(now + HANDSHAKE_TIMEOUT);
    }

    /// §6: the client's answer must decrypt (with its key half) to our secret. A wrong answer is
    /// left unacked, as in the agent, and the session times out.
    fn on_challenge_response(&mut self, now: Instant, frame: &Frame) -> bool {
        let body: Value = serde_json::from_slice(&frame.payload).unwrap_or_default();
        let answer = body
            .get("Challenge")
            .and_then(Value::as_str)
            .and_then(|c| BASE64.decode(c).ok());
        let opened = match (&self.cipher, answer) {
            (Some(cipher), Some(answer)) => cipher.open(&answer).ok(),
            _ => None,
        };
        if opened.as_deref() != Some(self.challenge_secret.as_slice()) {
            return false;
        }
        self.complete_handshake(now, "This session is encrypted using AWS KMS.");
        true
    }

    /// HandshakeComplete, then the session runs and the destination is dialled.
    fn complete_handshake(&mut self, now: Instant, customer_message: &str) {
        let took = now.saturating_duration_since(self.start).as_nanos() as i64;
        let done = json!({"HandshakeTimeToComplete": took, "CustomerMessage": customer_message});
        self.send(
            now,
            ptype::HANDSHAKE_COMPLETE,
            Bytes::from(done.to_string()),
        );
        self.phase = Phase::Running;
        self.events.push_back(AgentEvent::Dial);
    }

    fn send(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        // §6: the agent encrypts Output, StdErr and ExitCode once the key is set up.
        let payload = match (&mut self.cipher, payload_type) {
            (Some(c), ptype::OUTPUT | ptype::STDERR | ptype::EXIT_CODE) => c.seal(&payload),
            _ => payload,
        };
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
        if !self.config.fast && self.sent.len() >= OUTGOING_CAPACITY {
            // datachannel.go: a full buffer silently does not store it.
            return;
        }
        self.sent.push_back(Sent {
            seq,
            frame,
            last_sent: now,
            resent: false,
        });
    }

    /// `agent_session_state` (seq 0, flags 3, §3.6), addressed to the service.
    fn session_state(&mut self, state: &str) -> Bytes {
        let body = json!({"SchemaVersion": 1, "SessionState": state, "SessionId": ""});
        // The model reads no clock; the session's start is a good enough CreatedDate here.
        self.frame(
            self.start,
            MessageType::AgentSessionState,
            0,
            ptype::NONE,
            body.to_string().into(),
        )
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
        pt: PayloadType,
        payload: Bytes,
    ) -> Bytes {
        let flags = match (&kind, seq) {
            (MessageType::Acknowledge | MessageType::AgentSessionState, _) => flags::ACK,
            (_, 0) => flags::SYN,
            _ => 0,
        };
        let id =
            (u128::from(next_random(&mut self.rng)) << 64) | u128::from(next_random(&mut self.rng));
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

/// The agent's own random numbers (xorshift64*), separate from the client's generator.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The agent's RTT estimate (datachannel.go `calculateRetransmissionTimeout`): RTT 100 ms and
/// RTO 200 ms to start, every sample blended in at 1/8 (no first-sample shortcut, no Karn rule
/// in the faithful agent), RTO = RTT + max(10 ms, 4·RTTVAR), at most 1 s.
#[derive(Debug, Clone)]
struct AgentRtt {
    rtt: f64,
    rttvar: f64,
    rto: Duration,
}

impl Default for AgentRtt {
    fn default() -> Self {
        Self {
            rtt: 0.1,
            rttvar: 0.0,
            rto: Duration::from_millis(200),
        }
    }
}

impl AgentRtt {
    fn rto(&self) -> Duration {
        self.rto
    }

    fn on_sample(&mut self, sample: Duration) {
        let sample = sample.as_secs_f64();
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.rtt - sample).abs();
        self.rtt = 0.875 * self.rtt + 0.125 * sample;
        let rto = self.rtt + (4.0 * self.rttvar).max(0.010);
        self.rto = Duration::from_secs_f64(rto.min(1.0));
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

/// Where to end a message of at most `max` bytes so that no UTF-8 character is split: backs up
/// over at most three continuation bytes; data that is not UTF-8 is cut at `max`.
fn utf8_cut(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&cut| cut > 0 && !data.get(cut).copied().is_some_and(is_continuation))
        .unwrap_or(max)
}

/// The real agent's shell output loses two bytes of every U+FFFD (EF BF BD) it reads: it takes
/// the character for a decoding error (`utf8.RuneError`) and sends only its first byte, then
/// skips all three (`processStdoutData`, agent/session/shell/shell.go, 3.3.1142). Binary output
/// through a shell session is therefore not byte-exact with the real agent; neither here.
fn drop_replacement_char_tails(buf: &mut Vec<u8>) {
    const FFFD: [u8; 3] = [0xEF, 0xBF, 0xBD];
    let mut out = 0;
    let mut i = 0;
    while i < buf.len() {
        buf[out] = buf[i];
        out += 1;
        i += if buf[i..].starts_with(&FFFD) { 3 } else { 1 };
    }
    buf.truncate(out);
}

/// How many bytes at the end of `data` start a UTF-8 character that is not complete yet.
fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let b = data[data.len() - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn shell_output_is_cut_on_utf8_boundaries() {
        let text = "añ€😀".repeat(300);
        let bytes = text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let n = utf8_cut(&bytes[pos..], 1024);
            assert!(n <= 1024 && n > 0);
            assert!(std::str::from_utf8(&bytes[pos..pos + n]).is_ok());
            pos += n;
        }
        // Not UTF-8 at all: still progresses, at full size.
        assert_eq!(utf8_cut(&[0x80; 2000], 1024), 1024);
    }

    #[test]
    fn a_replacement_character_loses_its_last_two_bytes_as_with_the_real_agent() {
        let mut buf = b"a\xEF\xBF\xBDb\xEF\xBFc".to_vec();
        drop_replacement_char_tails(&mut buf);
        assert_eq!(buf, b"a\xEFb\xEF\xBFc");
    }

    #[test]
    fn incomplete_sequences_are_held_back() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail(&euro[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&[b'a', euro[0], euro[1]]), 2);
        assert_eq!(incomplete_utf8_tail(euro), 0);
        assert_eq!(incomplete_utf8_tail(&[0x80, 0x80, 0x80, 0x80]), 0);
    }

    #[test]
    fn shells_start_without_a_handshake_and_chunk_text() {
        let now = Instant::now();
        let config = AgentConfig {
            plugin: Plugin::Shell,
            ..Default::default()
        };
        let mut agent = Agent::new(config, now);
        agent.start(now);
        assert_eq!(agent.poll_event(), Some(AgentEvent::Dial));
        assert!(agent.poll_transmit().is_none(), "no HandshakeRequest");
        agent.handle_target_connected();
        let euro = "€".as_bytes();
        agent.handle_target_data(now, Bytes::copy_from_slice(&[b'$', b' ', euro[0]]));
        agent.handle_target_data(now, Bytes::copy_from_slice(&euro[1..]));
        let first = Frame::decode(&agent.poll_transmit().unwrap()).unwrap();
        assert_eq!(
            (first.sequence, first.flags, first.payload_type),
            (0, flags::SYN, ptype::OUTPUT)
        );
        assert_eq!(&first.payload[..], b"$ ");
        let second = Frame::decode(&agent.poll_transmit().unwrap()).unwrap();
        assert_eq!(&second.payload[..], euro);
    }
}
