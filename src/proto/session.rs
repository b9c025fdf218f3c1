//! The client side of one data channel as a deterministic state machine (quinn-proto style).
//!
//! Feed it websocket messages ([`Session::handle_frame`]), local input ([`Session::handle_input`])
//! and time ([`Session::handle_timeout`]); drain frames to send ([`Session::poll_transmit`]),
//! bytes for the local side ([`Session::poll_output`]) and [`Event`]s, then sleep until
//! [`Session::poll_timeout`]. It never reads a clock, touches I/O or draws OS randomness: the
//! caller passes `now` and a seed. The sequence state survives reconnects
//! ([`Session::handle_reconnect`]), as §4.1 requires.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::crypto::{Cipher, Side};
use super::frame::{Flag, Frame, MessageType, PayloadType, flag, flags, ptype};
use super::gate::{Gate, Take};
use super::handshake::{self, SessionKind};
use super::inbox::{Arrival, Inbox};
use super::outbox::Outbox;
use super::pacer::{Pacer, Rate};
use super::payload::{
    Acknowledge, ChannelClosed, HandshakeComplete, HandshakeRequest, SessionTypeParams, Size,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Version we report, in the OpenDataChannelInput, the handshake and the drop-in's
/// `--version`: the newest official session-manager-plugin release (1.2.896.0, 2026-10, from
/// its release notes; protocol.md §16.1). AWS names 1.2.764.0 the oldest supported plugin, the
/// AWS CLI requires more than 1.2.497.0, and §5.5's thresholds are all below (pitfall 9).
/// Raise it with each official release that changes what the service or agent expect.
pub const CLIENT_VERSION: &str = "1.2.896.0";

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Epoch milliseconds at `start` (for CreatedDate; the session never reads the clock).
    pub unix_ms_at_start: u64,
    /// Largest payload per input message (§11: 1024 unless experimenting).
    pub max_payload: usize,
    /// Unacked payload bytes allowed in flight before input is refused.
    pub send_window: usize,
    /// Bytes of undelivered (and out-of-order) output at which the session stops wanting frames
    /// ([`Session::wants_frames`]): the caller then stops reading the websocket, so a slow local
    /// reader backs up the service and the agent like the official client's synchronous writes
    /// do (§16.3), and nothing is dropped.
    pub output_limit: usize,
    /// Undelivered output after which new in-order data is left unacked anyway: only reached by
    /// a caller that keeps feeding frames when [`Session::wants_frames`] says no.
    pub output_hard_limit: usize,
    /// Out-of-order payload bytes held at most.
    pub reorder_limit: usize,
    /// How long to wait for the session to become ready (handshake or first output).
    pub ready_timeout: Duration,
    /// The document runs a shell plugin, which may start without a handshake (§5.1): no ready
    /// deadline (a quiet command may print nothing for minutes), and input is taken after
    /// `no_handshake_grace` even if no output came (a `cat` waits for input first).
    pub no_handshake: bool,
    /// How long a `no_handshake` session waits for a HandshakeRequest (KMS) before it takes
    /// input; the agent sends one, if any, as soon as its channel opens.
    pub no_handshake_grace: Duration,
    /// Fixed upload rate limit (`--max-rate`), on top of what pause_publication teaches.
    pub max_rate: Rate,
    /// How long a pause_publication may hold input back before we try again (§7).
    pub pause_watchdog: Duration,
    /// Seed for message ids.
    pub seed: u64,
    /// Leave output unacked until [`Session::connected`] (port forwarding, see `gate`).
    pub hold_output: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            unix_ms_at_start: 1_700_000_000_000,
            max_payload: 1024,
            send_window: 256 * 1024,
            output_limit: 1024 * 1024,
            output_hard_limit: 16 * 1024 * 1024,
            reorder_limit: 4 * 1024 * 1024,
            ready_timeout: Duration::from_secs(30),
            no_handshake: false,
            no_handshake_grace: Duration::from_secs(1),
            max_rate: Rate::default(),
            pause_watchdog: Duration::from_secs(5),
            seed: 0,
            hold_output: false,
        }
    }
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished (or the first shell output arrived): start pumping input.
    Ready {
        /// The mode to run.
        kind: SessionKind,
        /// Agent version from the HandshakeRequest (empty without handshake).
        agent_version: String,
    },
    /// A message for the user (HandshakeComplete CustomerMessage). Goes to stderr.
    Notice(String),
    /// Agent stderr bytes (PayloadType StdErr).
    Stderr(Bytes),
    /// The remote command's exit status (PayloadType ExitCode).
    ExitCode(i32),
    /// A Flag from the agent (e.g. ConnectToPortError).
    Flag(Flag),
    /// The service closed the channel; `output` is empty on a normal end.
    Closed {
        /// Failure text from the service, if any.
        output: String,
    },
    /// The session could not be established, or its encryption failed.
    Failed(SessionError),
    /// The agent asks for KMS encryption: call GenerateDataKey (64 bytes) with this key and the
    /// encryption context of §6 (plus `aws:ssm:RandomChallenge` = `challenge` when present),
    /// then answer with [`Session::set_data_key`] (if GenerateDataKey fails, the session cannot
    /// be established: end it).
    DataKeyNeeded {
        /// KMSKeyId from the request.
        key_id: String,
        /// The random challenge the agent offers for the encryption context.
        challenge: Option<String>,
    },
}

/// Why a session cannot go on (reported once, as [`Event::Failed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No HandshakeComplete within `ready_timeout`.
    #[error("the agent did not complete the handshake within {0} s")]
    HandshakeTimeout(u64),
    /// The HandshakeRequest asks for a session type we do not know (§8.1).
    #[error("the agent asked for a session type this client does not know")]
    UnknownSessionType,
    /// The data key from GenerateDataKey is unusable.
    #[error("{0}")]
    DataKey(#[from] super::crypto::CryptoError),
    /// An encryption challenge came before any data key (§6).
    #[error("the agent sent an encryption challenge but KMS encryption was never set up")]
    ChallengeWithoutKey,
    /// The challenge does not open with our key.
    #[error(
        "the agent's KMS encryption challenge does not decrypt with our data key (the agent and \
         this client disagree on the key)"
    )]
    ChallengeMismatch,
    /// Encrypted data that does not open with our key.
    #[error("data from the agent does not decrypt with the session's KMS key")]
    Undecryptable,
    /// channel_closed while output after a gap was held: the gap will never be filled.
    #[error(
        "the session closed with output missing: message {0} never arrived (the agent gave up resending it)"
    )]
    OutputMissing(i64),
}

impl SessionError {
    /// Whether KMS encryption is what failed (rather than the handshake itself).
    pub fn is_encryption(&self) -> bool {
        !matches!(
            self,
            Self::HandshakeTimeout(_) | Self::UnknownSessionType | Self::OutputMissing(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for HandshakeRequest (or, for a shell without handshake, the first output).
    Opening,
    /// The HandshakeRequest asks for KMS encryption: waiting for the caller's data key.
    AwaitingKey,
    /// HandshakeResponse sent; waiting for HandshakeComplete.
    Handshaking(Option<SessionKind>),
    Ready(SessionKind),
    Closed,
}

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Frames rejected by the codec.
    pub bad_frames: u64,
    /// Sequenced messages that arrived again.
    pub duplicates: u64,
    /// Sequenced messages that arrived ahead of order and were buffered.
    pub reordered: u64,
    /// In-order messages left unacked because the local side was not draining output (only when
    /// the caller ignored [`Session::wants_frames`]).
    pub refused: u64,
    /// Input messages sent (first transmissions).
    pub sent: u64,
}

/// The client end of a data channel.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    start: Instant,
    state: State,
    next_seq: i64,
    outbox: Outbox,
    inbox: Inbox,
    transmit: VecDeque<Bytes>,
    output: VecDeque<Bytes>,
    output_bytes: usize,
    events: VecDeque<Event>,
    paused_since: Option<Instant>,
    agent_version: Option<String>,
    /// The HandshakeRequest waiting for a data key.
    pending_request: Option<HandshakeRequest>,
    cipher: Option<Cipher>,
    rng: u64,
    stats: Stats,
    /// The in-order message refused for lack of output room, unacked: taken (and acked) as soon
    /// as the local side has read enough, rather than when the agent next retransmits it, which
    /// may be a second later or, while it drains after its destination closed, never.
    held: Option<Frame>,
    gate: Gate,
    pacer: Pacer,
    /// The handshake's SessionType action: what the agent runs, with the document's properties.
    session_type: Option<SessionTypeParams>,
}

impl Session {
    /// A session that has just opened its websocket at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            inbox: Inbox::new(config.reorder_limit),
            gate: Gate::initial(config.hold_output),
            pacer: Pacer::new(config.max_rate, now),
            rng: config.seed ^ 0x9e37_79b9_7f4a_7c15,
            config,
            start: now,
            state: State::Opening,
            next_seq: 0,
            outbox: Outbox::default(),
            transmit: VecDeque::new(),
            output: VecDeque::new(),
            output_bytes: 0,
            events: VecDeque::new(),
            paused_since: None,
            agent_version: None,
            pending_request: None,
            cipher: None,
            stats: Stats::default(),
            held: None,
            session_type: None,
        }
    }

    /// Handles one received websocket message (binary or text, §2.3).
    pub fn handle_frame(&mut self, now: Instant, raw: Bytes) {
        let frame = match Frame::decode(&raw) {
            Ok(f) => f,
            Err(err) => {
                self.stats.bad_frames += 1;
                tracing::debug!(%err, len = raw.len(), "dropped bad frame");
                return;
            }
        };
        match frame.message_type {
            MessageType::OutputStreamData => {
                self.paused_since = None;
                self.on_stream_message(now, frame);
            }
            MessageType::Acknowledge => {
                self.paused_since = None;
                if let Ok(ack) = super::json::from_slice::<Acknowledge>(&frame.payload) {
                    self.outbox
                        .on_ack(now, ack.acknowledged_message_sequence_number);
                    self.reopen_if_acked(now);
                }
            }
            MessageType::ChannelClosed => {
                let closed: ChannelClosed =
                    super::json::from_slice(&frame.payload).unwrap_or_default();
                if self.inbox.buffered_bytes() > 0 {
                    // Output after a gap arrived, the gap never will: the agent stopped resending
                    // (it drains for 2 s at most, §12.1). Say so rather than end quietly short.
                    return self.fail(SessionError::OutputMissing(self.inbox.expected()));
                }
                self.close(closed.output);
            }
            MessageType::PausePublication => {
                if self.paused_since.is_none() {
                    self.pacer.on_pause(now);
                    tracing::debug!(rate = ?self.pacer.learned(), "pause_publication: upload rate lowered");
                }
                self.paused_since.get_or_insert(now);
            }
            MessageType::StartPublication => self.paused_since = None,
            _ => tracing::trace!(kind = frame.message_type.as_str(), "ignored message"),
        }
    }

    fn on_stream_message(&mut self, now: Instant, frame: Frame) {
        match self.inbox.classify(frame.sequence) {
            Arrival::Duplicate => {
                // §4.3: re-ack, or the agent resends this head forever.
                self.stats.duplicates += 1;
                self.ack(now, &frame);
            }
            Arrival::Ahead => {
                let ack = self.ack_frame(now, &frame);
                if self.inbox.buffer(frame) {
                    self.stats.reordered += 1;
                    self.transmit.push_back(ack);
                }
            }
            Arrival::InOrder => {
                if !self.process(now, &frame, false) {
                    self.stats.refused += 1;
                    self.held = Some(frame);
                    return;
                }
                self.held = None;
                self.ack(now, &frame);
                self.inbox.advance();
                // Buffered messages were acked when buffered, so they must be delivered now.
                while let Some(next) = self.inbox.take_next() {
                    self.process(now, &next, true);
                    self.inbox.advance();
                }
            }
        }
    }

    /// Whether the session is still before Ready (under the ready deadline).
    fn establishing(&self) -> bool {
        matches!(
            self.state,
            State::Opening | State::AwaitingKey | State::Handshaking(_)
        )
    }

    /// The ready deadline, if this session has one.
    fn ready_deadline(&self) -> Option<Instant> {
        (self.establishing() && !self.config.no_handshake)
            .then(|| self.start + self.config.ready_timeout)
    }

    /// When a `no_handshake` session that heard nothing starts taking input.
    fn grace_deadline(&self) -> Option<Instant> {
        (self.config.no_handshake && self.state == State::Opening)
            .then(|| self.start + self.config.no_handshake_grace)
    }

    /// Whether the caller should read more websocket messages now. False while the local side
    /// has `output_limit` bytes or more to take (backpressure), or a refused message waits.
    /// Out-of-order data does not count: it waits for a lost message that only reading brings
    /// (a full reorder buffer leaves later arrivals unacked instead, to be resent).
    pub fn wants_frames(&self) -> bool {
        self.held.is_none() && self.output_bytes < self.config.output_limit
    }

    /// Whether the held message can be taken now.
    fn can_take_held(&self) -> bool {
        self.held.is_some()
            && match self.gate.take(false) {
                Take::Deliver => self.output_bytes < self.config.output_hard_limit,
                Take::Refuse => false,
                Take::Drop => true,
            }
    }

    /// Acts on an in-order message. Returns false when it cannot be taken now (left unacked).
    fn process(&mut self, now: Instant, frame: &Frame, must_take: bool) -> bool {
        match frame.payload_type {
            ptype::HANDSHAKE_REQUEST => self.on_handshake_request(now, frame),
            ptype::HANDSHAKE_COMPLETE => {
                let done: HandshakeComplete =
                    super::json::from_slice(&frame.payload).unwrap_or_default();
                if !done.customer_message.is_empty() {
                    self.events.push_back(Event::Notice(done.customer_message));
                }
                if let State::Handshaking(kind) = self.state {
                    self.become_ready(kind.unwrap_or(SessionKind::Stream), String::new());
                }
            }
            ptype::ENC_CHALLENGE_REQUEST => self.on_challenge(now, frame),
            ptype::OUTPUT | ptype::STDERR | ptype::EXIT_CODE if self.cipher.is_some() => {
                let plain = self.cipher.as_ref().map(|c| c.open(&frame.payload));
                match plain {
                    Some(Ok(payload)) => {
                        let clear = Frame {
                            payload,
                            ..frame.clone()
                        };
                        return self.process_clear(&clear, must_take);
                    }
                    _ => self.fail(SessionError::Undecryptable),
                }
            }
            _ => return self.process_clear(frame, must_take),
        }
        true
    }

    /// Output, stderr, exit code and flags after any decryption.
    fn process_clear(&mut self, frame: &Frame, must_take: bool) -> bool {
        match frame.payload_type {
            ptype::OUTPUT => {
                if self.state == State::Opening {
                    // §5.1: no handshake; the first output makes this a shell.
                    self.become_ready(SessionKind::Shell, String::new());
                }
                match self.gate.take(must_take) {
                    Take::Refuse => return false,
                    Take::Drop => return true,
                    Take::Deliver => {}
                }
                if !must_take && self.output_bytes >= self.config.output_hard_limit {
                    return false;
                }
                if !frame.payload.is_empty() && self.state != State::Closed {
                    self.output_bytes += frame.payload.len();
                    self.output.push_back(frame.payload.clone());
                }
            }
            ptype::STDERR => self.events.push_back(Event::Stderr(frame.payload.clone())),
            ptype::EXIT_CODE => {
                let text = String::from_utf8_lossy(&frame.payload);
                let code = text
                    .trim()
                    .trim_start_matches("EXIT_CODE:")
                    .trim()
                    .parse()
                    .ok();
                self.events.push_back(Event::ExitCode(code.unwrap_or(-1)));
            }
            ptype::FLAG => self.events.push_back(Event::Flag(frame.flag_value())),
            other => tracing::debug!(ptype = other.0, "ignored payload type"),
        }
        true
    }

    fn on_handshake_request(&mut self, now: Instant, frame: &Frame) {
        if self.state != State::Opening {
            return;
        }
        let req: HandshakeRequest = super::json::from_slice(&frame.payload).unwrap_or_default();
        let kms = req
            .requested_client_actions
            .iter()
            .find(|a| a.action_type == "KMSEncryption");
        if let Some(kms) = kms {
            let param = |k: &str| {
                super::json::get(&kms.action_parameters, k)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            };
            self.events.push_back(Event::DataKeyNeeded {
                key_id: param("KMSKeyId").unwrap_or_default(),
                challenge: param("Challenge"),
            });
            self.agent_version = Some(req.agent_version.clone());
            self.pending_request = Some(req);
            self.state = State::AwaitingKey;
            return;
        }
        self.respond_to_handshake(now, &req, None);
    }

    /// Answers a HandshakeRequest; `kms_result` is the KMSEncryption ActionResult, if any.
    fn respond_to_handshake(
        &mut self,
        now: Instant,
        req: &HandshakeRequest,
        kms_result: Option<serde_json::Value>,
    ) {
        self.session_type = req
            .requested_client_actions
            .iter()
            .find(|a| a.action_type == "SessionType")
            .and_then(|a| serde_json::from_value(a.action_parameters.clone()).ok());
        let eval = handshake::evaluate(req, CLIENT_VERSION, kms_result);
        tracing::debug!(agent = %req.agent_version, kind = ?eval.kind, "handshake request");
        let body = serde_json::to_vec(&eval.response).unwrap_or_default();
        self.send_stream(now, ptype::HANDSHAKE_RESPONSE, Bytes::from(body));
        self.state = State::Handshaking(eval.kind);
        self.agent_version = Some(req.agent_version.clone());
        if eval.kind.is_none() {
            self.fail(SessionError::UnknownSessionType);
        }
    }

    /// The data key for KMS encryption (§6): `plaintext` from GenerateDataKey (64 bytes) and
    /// its `ciphertext` blob, which goes to the agent in the HandshakeResponse.
    pub fn set_data_key(&mut self, now: Instant, plaintext: &[u8], ciphertext: &[u8]) {
        let Some(req) = self.pending_request.take() else {
            return;
        };
        match Cipher::new(Side::Client, plaintext, self.rng) {
            Ok(cipher) => self.cipher = Some(cipher),
            Err(e) => return self.fail(e.into()),
        }
        let challenge = req.requested_client_actions.iter().any(|a| {
            a.action_type == "KMSEncryption"
                && super::json::get(&a.action_parameters, "Challenge").is_some()
        });
        let mut result = serde_json::json!({
            "KMSCipherTextKey": BASE64.encode(ciphertext),
            "KMSCipherTextHash": null,
        });
        if challenge {
            result["ChallengeAcknowledgement"] = serde_json::Value::Bool(true);
        }
        self.respond_to_handshake(now, &req, Some(result));
    }

    /// §6: the agent sends 64 random bytes encrypted with its key; we prove we hold the data key
    /// by sending them back encrypted with ours.
    fn on_challenge(&mut self, now: Instant, frame: &Frame) {
        let body: serde_json::Value = super::json::from_slice(&frame.payload).unwrap_or_default();
        let sealed = super::json::get(&body, "Challenge")
            .and_then(serde_json::Value::as_str)
            .and_then(|c| BASE64.decode(c).ok());
        let answer = match (&mut self.cipher, sealed) {
            (Some(cipher), Some(sealed)) => cipher.open(&sealed).map(|plain| cipher.seal(&plain)),
            _ => {
                return self.fail(SessionError::ChallengeWithoutKey);
            }
        };
        match answer {
            Ok(answer) => {
                let body = serde_json::json!({"Challenge": BASE64.encode(answer)});
                self.send_stream(
                    now,
                    ptype::ENC_CHALLENGE_RESPONSE,
                    Bytes::from(body.to_string()),
                );
            }
            Err(_) => self.fail(SessionError::ChallengeMismatch),
        }
    }

    fn become_ready(&mut self, kind: SessionKind, agent_version: String) {
        let agent_version = self.agent_version.take().unwrap_or(agent_version);
        self.state = State::Ready(kind);
        self.events.push_back(Event::Ready {
            kind,
            agent_version,
        });
    }

    fn fail(&mut self, why: SessionError) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(Event::Failed(why));
        }
    }

    fn close(&mut self, output: String) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(Event::Closed { output });
        }
    }

    /// Queues local bytes as input messages of at most `max_payload` bytes. The caller checks
    /// [`Session::can_accept_input`] first; input given anyway is still sent, never dropped.
    pub fn handle_input(&mut self, now: Instant, mut data: Bytes) {
        self.pacer.tick(now);
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(self.config.max_payload));
            self.pacer.on_sent(chunk.len());
            self.send_stream(now, ptype::OUTPUT, chunk);
        }
    }

    /// Sends a terminal size (PayloadType Size).
    pub fn handle_resize(&mut self, now: Instant, size: Size) {
        let body = serde_json::to_vec(&size).unwrap_or_default();
        self.send_stream(now, ptype::SIZE, Bytes::from(body));
    }

    /// Sends a Flag message (e.g. [`flag::TERMINATE_SESSION`]).
    pub fn send_flag(&mut self, now: Instant, value: Flag) {
        self.send_stream(
            now,
            ptype::FLAG,
            Bytes::copy_from_slice(&value.0.to_be_bytes()),
        );
    }

    /// A local connection can take output now (port forwarding, see `gate`). After a
    /// DisconnectToPort this makes the agent dial its destination again.
    pub fn connected(&mut self, now: Instant) {
        self.gate = self.gate.connected();
        self.reopen_if_acked(now);
    }

    /// The end of a basic-mode connection: tell the agent, and drop what it still sends for it.
    pub fn disconnect_to_port(&mut self, now: Instant) {
        self.send_flag(now, flag::DISCONNECT_TO_PORT);
        self.gate = Gate::Discard;
        self.output.clear();
        self.output_bytes = 0;
    }

    fn reopen_if_acked(&mut self, now: Instant) {
        if self.gate == Gate::Reopen && self.outbox.is_empty() {
            self.gate = Gate::Open;
            // The agent re-dials on the next Output message (agent `port_basic.go`): a server
            // that speaks first would otherwise wait for the client forever.
            self.send_stream(now, ptype::OUTPUT, Bytes::new());
        }
    }

    /// Asks the agent to end the session (Flag TerminateSession, §9.2).
    pub fn terminate(&mut self, now: Instant) {
        if matches!(self.state, State::Ready(_)) {
            self.send_flag(now, flag::TERMINATE_SESSION);
        }
    }

    /// Runs the timers: retransmissions, the ready deadline and the pause watchdog.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pacer.tick(now);
        if self.can_take_held()
            && let Some(frame) = self.held.take()
        {
            self.on_stream_message(now, frame);
        }
        if self.paused_since.is_none() {
            self.outbox.resend_due(now, &mut self.transmit);
        }
        if self.grace_deadline().is_some_and(|t| now >= t) {
            // §5.1: no HandshakeRequest came, so none will: a shell-type session without one.
            self.become_ready(SessionKind::Shell, String::new());
        }
        if self.ready_deadline().is_some_and(|t| now >= t) {
            let secs = self.config.ready_timeout.as_secs();
            self.fail(SessionError::HandshakeTimeout(secs));
        }
        if let Some(since) = self.paused_since
            && now >= since + self.config.pause_watchdog
        {
            self.paused_since = None;
        }
    }

    /// The websocket was replaced: frames queued for the old one are gone, so resend everything
    /// unacked at once (§10) instead of waiting for the RTO.
    pub fn handle_reconnect(&mut self, now: Instant) {
        self.transmit.clear();
        self.paused_since = None;
        self.outbox.resend_all(now, &mut self.transmit);
    }

    /// Next frame to send on the websocket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// Output for the local side, concatenated up to `max` bytes per call (batched writes).
    pub fn poll_output(&mut self, max: usize) -> Option<Bytes> {
        let first = self.output.pop_front()?;
        if first.len() >= max
            || self
                .output
                .front()
                .is_none_or(|b| first.len() + b.len() > max)
        {
            self.output_bytes -= first.len();
            return Some(first);
        }
        let mut buf = BytesMut::with_capacity(max.min(self.output_bytes));
        buf.extend_from_slice(&first);
        while let Some(next) = self.output.front() {
            if buf.len() + next.len() > max {
                break;
            }
            buf.extend_from_slice(next);
            self.output.pop_front();
        }
        self.output_bytes -= buf.len();
        Some(buf.freeze())
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Session::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// When [`Session::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pause = self.paused_since.map(|t| t + self.config.pause_watchdog);
        // Already due: the session started before any now the caller can pass.
        let held = self.can_take_held().then_some(self.start);
        // Nothing is resent while the service has paused publication.
        let resend = self
            .paused_since
            .is_none()
            .then(|| self.outbox.next_deadline())
            .flatten();
        let pacing = matches!(self.state, State::Ready(_))
            .then(|| self.pacer.next_ready())
            .flatten();
        [
            resend,
            self.ready_deadline(),
            self.grace_deadline(),
            pause,
            held,
            pacing,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether new input may be queued now: ready, not paused, window not full (§7), under the
    /// upload rate.
    pub fn can_accept_input(&self) -> bool {
        matches!(self.state, State::Ready(_))
            && self.paused_since.is_none()
            && self.outbox.unacked_bytes() < self.config.send_window
            && self.gate != Gate::Reopen
            && self.pacer.ready()
    }

    /// Whether all input sent so far has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Whether KMS encryption is set up (§6).
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The mode, once the session is ready.
    pub fn kind(&self) -> Option<SessionKind> {
        match self.state {
            State::Ready(kind) => Some(kind),
            _ => None,
        }
    }

    /// The agent's SessionType action (session type and document properties); `None` before
    /// the handshake and for shells that have none (§5.1).
    pub fn session_type(&self) -> Option<&SessionTypeParams> {
        self.session_type.as_ref()
    }

    /// Whether the channel is over (closed by the service or failed).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Bytes waiting in [`Session::poll_output`].
    pub fn pending_output(&self) -> usize {
        self.output_bytes
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Total retransmissions.
    pub fn retransmissions(&self) -> u64 {
        self.outbox.retransmissions()
    }

    /// Current RTO.
    pub fn rto(&self) -> Duration {
        self.outbox.rto()
    }

    fn send_stream(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        // §6: of the client's messages only Output is encrypted.
        let payload = match (&mut self.cipher, payload_type) {
            (Some(cipher), ptype::OUTPUT) => cipher.seal(&payload),
            _ => payload,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let len = payload.len();
        let frame = Frame {
            message_type: MessageType::InputStreamData,
            schema_version: 1,
            created_date: self.unix_ms(now),
            sequence: seq,
            flags: 0,
            message_id: self.next_id(),
            payload_type,
            payload,
        }
        .encode();
        self.stats.sent += 1;
        self.outbox.push(now, seq, frame.clone(), len);
        self.transmit.push_back(frame);
    }

    fn ack(&mut self, now: Instant, frame: &Frame) {
        let ack = self.ack_frame(now, frame);
        self.transmit.push_back(ack);
    }

    fn ack_frame(&mut self, now: Instant, frame: &Frame) -> Bytes {
        let body = Acknowledge {
            acknowledged_message_type: frame.message_type.as_str().to_owned(),
            acknowledged_message_id: frame.message_id.hyphenated().to_string(),
            acknowledged_message_sequence_number: frame.sequence,
            is_sequential_message: true,
        };
        Frame {
            message_type: MessageType::Acknowledge,
            schema_version: 1,
            created_date: self.unix_ms(now),
            sequence: 0,
            flags: flags::ACK,
            message_id: self.next_id(),
            payload_type: ptype::NONE,
            payload: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        }
        .encode()
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.config.unix_ms_at_start + now.saturating_duration_since(self.start).as_millis() as u64
    }

    fn next_id(&mut self) -> Uuid {
        let hi = splitmix(&mut self.rng);
        let lo = splitmix(&mut self.rng);
        uuid::Builder::from_random_bytes(((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes())
            .into_uuid()
    }
}

/// SplitMix64: tiny, seedable, good enough for message ids.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
