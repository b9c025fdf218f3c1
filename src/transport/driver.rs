//! Drives one [`Session`] over a websocket for its whole life: the `select!` loop that feeds the
//! sans-IO core (quinn's `ConnectionDriver`), websocket pings and liveness, and reconnection
//! through ResumeSession that keeps every sequence number and unacked message (§10).
//!
//! The local side is two channels, so every front-end (stdio relay, TCP forward, smux, shell)
//! uses the same driver: `input` closing means local EOF, `output` closing means the local
//! reader is gone. The service side is a [`Service`]: [`Aws`] and the real websocket, or the
//! tests' in-memory fake on tokio's paused clock (driver/tests.rs).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval};
use tokio_tungstenite::tungstenite::Message;

use super::service::Service;
use super::websocket;
use crate::aws::{Aws, AwsError, SessionGrant};
use crate::proto::payload::Size;
use crate::proto::{Event, Session, SessionConfig, SessionError, SessionKind};

/// Tunables of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Session tunables.
    pub session: SessionConfig,
    /// How long to keep trying to resume a lost websocket.
    pub resume_timeout: Duration,
    /// Websocket ping interval (the official 5 min is too long for NATs and proxies, §2.4).
    pub ping_interval: Duration,
    /// Silence after which the websocket is presumed dead.
    pub dead_after: Duration,
    /// After local EOF (all input acked), how long to wait in silence for the agent's
    /// channel_closed before ending the session ourselves. The official client sends nothing on
    /// EOF: the agent ends the session when its destination closes. A TerminateSession flag
    /// sent at once races the destination's own close (the agent then logs "Failed to read
    /// from port").
    pub eof_wait: Duration,
    /// Byte-stream sessions under ssh: this signal (SIGHUP: ssh hanging up on its ProxyCommand
    /// as it exits) and a vanished stdout reader end the local side like EOF does, and the
    /// session still ends with the agent's channel_closed (bounded by `eof_wait`).
    pub hangup: Option<i32>,
    /// Target id, for the KMS encryption context (§6).
    pub target: String,
    /// `HOST:PORT` the agent dials (port forwarding), for messages.
    pub destination: String,
    /// Tells the user what the front end chooses to show of a [`Notice`] (the driver prints
    /// nothing itself: stdout may be the byte stream).
    pub notify: fn(&Notice),
}

/// Something about the session the user may want to know, shown as the front end decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The handshake completed with KMS encryption on (§6).
    Encrypted,
    /// The remote command's stderr (PayloadType StdErr: command sessions with separate
    /// output streams, §3).
    Stderr(Bytes),
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            resume_timeout: Duration::from_secs(300),
            ping_interval: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            eof_wait: Duration::from_secs(5),
            hangup: None,
            target: String::new(),
            destination: String::new(),
            notify: |_| {},
        }
    }
}

/// What the local side sends into the session.
#[derive(Debug)]
pub enum Input {
    /// Stream bytes (PayloadType Output).
    Data(Bytes),
    /// A Flag message (e.g. DisconnectToPort when a basic-mode connection closes).
    Flag(crate::proto::frame::Flag),
    /// A terminal size (shell sessions).
    Resize(Size),
    /// A local connection can take output now (port forwarding; before it, output is left
    /// unacked when the session holds output). Answered once acted on: output sent before the
    /// answer belongs to the previous connection.
    Connected(oneshot::Sender<()>),
    /// A basic-mode connection ended: DisconnectToPort, and output for it is dropped.
    Disconnected,
}

/// The local ends of the relayed byte stream.
pub struct Local {
    /// Input to send; the channel closing is local EOF.
    pub input: mpsc::Receiver<Input>,
    /// Bytes received; a send failing means the local reader is gone.
    pub output: mpsc::Sender<Bytes>,
}

/// Why a session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The service sent channel_closed with an empty Output.
    Closed,
    /// Local input ended and no channel_closed came within `eof_wait`; we terminated the
    /// session.
    LocalEof,
    /// The local reader went away (EPIPE); we terminated the session.
    LocalGone,
    /// A signal asked us to stop; we terminated the session.
    Signal(i32),
    /// The session ended on the service while we were disconnected (ResumeSession gave no
    /// token): the official client says it timed out and exits 0 (§1.1).
    Gone,
}

/// The result of a session.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub end: End,
    /// Exit status reported by the agent (command sessions).
    pub exit_code: Option<i32>,
    /// Ended from our side and the service confirmed TerminateSession (false when it could not
    /// be reached, e.g. `~.` during a resume).
    pub terminated: bool,
}

/// A session failure; its text is the one line the user sees.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// A control-plane call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The service closed the channel with a reason.
    #[error("session closed by the service: {0}{hint}", hint = closed_hint(.0))]
    ClosedWithError(String),
    /// The handshake did not complete or was refused, or the session's encryption failed.
    #[error("{0}: {hint}", hint = failed_hint(.0))]
    Handshake(SessionError),
    /// The data channel could not be opened.
    #[error(
        "could not open the data channel to {url}: {detail}: check the network and proxy settings"
    )]
    Dial {
        /// Stream URL (without query).
        url: String,
        /// Cause.
        detail: String,
    },
    /// Resuming failed for longer than allowed.
    #[error("connection lost and not resumed within {0} s: {1}")]
    ResumeTimeout(u64, String),
    /// The service refused the signed upgrade (HTTP 403).
    #[error(
        "the service refused to open the data channel to {0} (HTTP 403 to the signed request): \
         refresh the AWS credentials (e.g. aws sso login), check the system clock and that the \
         policy allows ssmmessages:OpenDataChannel"
    )]
    Forbidden(String),
    /// The StreamUrl is not one the session token may be sent to (§16.1).
    #[error("{0}")]
    StreamUrl(String),
    /// The session no longer exists on the service.
    #[error("the session ended while disconnected (ResumeSession returned no token)")]
    Gone,
}

/// The fix for a session that could not go on: KMS failures are not the agent's version.
fn failed_hint(why: &SessionError) -> &'static str {
    if let SessionError::OutputMissing(_) = why {
        return "run it again (-v shows the reconnects that lost it)";
    }
    match why.is_encryption() {
        true => {
            "KMS encryption failed: check the key in the Session Manager preferences, that the \
             target's role may kms:Decrypt with it, and the SSM agent's version"
        }
        false => "check that the SSM agent on the target is up to date and running",
    }
}

/// The fix for a known `channel_closed` reason.
fn closed_hint(why: &str) -> &'static str {
    if why.contains("Unable to connect to specified port") {
        ": nothing accepted the connection on the target; check that the service runs and \
         listens on that port there (ss -ltn)"
    } else {
        ""
    }
}

impl DriveError {
    /// Process exit status, in the same classes as [`AwsError::exit_code`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Aws(e) => e.exit_code(),
            Self::Dial { .. } | Self::ResumeTimeout(..) => 69,
            Self::StreamUrl(_) => 78,
            Self::Forbidden(_) => 77,
            _ => 1,
        }
    }
}

/// One session's live state.
pub struct Driver<S: Service = Aws> {
    service: S,
    grant: SessionGrant,
    client_id: String,
    config: DriverConfig,
    session: Session,
    writer: mpsc::UnboundedSender<Message>,
    reader: S::Reader,
    last_heard: Instant,
    exit_code: Option<i32>,
    resumes: u32,
    /// Whether the current websocket has carried anything from the service.
    heard_since_open: bool,
    /// Wait before resuming a websocket that died without carrying anything; doubles while
    /// they keep dying so.
    flap_delay: Duration,
}

/// The local side's state across turns of [`Driver::run`]'s loop.
struct LocalState {
    /// Local input is still open (its end is local EOF).
    input_open: bool,
    /// After local EOF with everything acked: when to stop waiting for channel_closed.
    eof_quiet_until: Option<Instant>,
    /// Byte-stream sessions: the local reader is gone (its output is dropped).
    output_gone: bool,
    /// When ssh hung up: the bound on waiting for the agent to end the session.
    hangup_until: Option<Instant>,
}

/// What one turn of the loop came to.
enum Step {
    /// Go round again.
    Next,
    /// The websocket is lost: resume it.
    Lost,
    /// End the session from our side.
    End(End),
}

/// Most output bytes handed to the local side at once.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// Websocket messages already readable that one turn of the loop takes after the first.
const READ_BATCH: usize = 256;
/// First and largest wait before resuming a websocket that died without carrying anything.
const FLAP_DELAY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// First and largest wait between failed ResumeSession attempts.
const RESUME_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

// The summary is logged when the driver goes, however the session ended: a front end may stop
// running it (its stdout reader gone) and end the session itself.
impl<S: Service> Drop for Driver<S> {
    fn drop(&mut self) {
        tracing::info!(
            resumes = self.resumes,
            retransmissions = self.session.retransmissions(),
            "session over"
        );
    }
}

impl<S: Service> Driver<S> {
    /// Opens the data channel for a freshly started session (retrying the same token briefly,
    /// as the official client does, §10 step 1).
    pub async fn connect(
        service: S,
        grant: SessionGrant,
        mut config: DriverConfig,
    ) -> Result<Self, DriveError> {
        let client_id = uuid::Uuid::new_v4().to_string();
        service
            .check_url(&grant.stream_url)
            .map_err(DriveError::StreamUrl)?;
        let mut attempt = 0;
        let (writer, reader) = loop {
            match service.open(&grant, &client_id).await {
                Ok(channel) => break channel,
                Err(e) if websocket::forbidden(&e) => {
                    return Err(DriveError::Forbidden(shown_url(&grant.stream_url)));
                }
                Err(e) if attempt >= 3 => {
                    return Err(DriveError::Dial {
                        url: shown_url(&grant.stream_url),
                        detail: format!("{e:#}"),
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), attempt, "data channel open failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        };
        let now = Instant::now();
        config.session.unix_ms_at_start = unix_ms();
        config.session.seed = random_seed();
        let session = Session::new(config.session.clone(), now.into_std());
        Ok(Self {
            service,
            grant,
            client_id,
            config,
            session,
            writer,
            reader,
            last_heard: now,
            exit_code: None,
            resumes: 0,
            heard_since_open: false,
            flap_delay: FLAP_DELAY.0,
        })
    }

    /// Session id.
    pub fn session_id(&self) -> &str {
        &self.grant.session_id
    }

    /// The session kind, once the handshake is over.
    pub fn kind(&self) -> Option<SessionKind> {
        self.session.kind()
    }

    /// The agent's SessionType action (session type, document properties), if it sent one.
    pub fn session_type(&self) -> Option<&crate::proto::payload::SessionTypeParams> {
        self.session.session_type()
    }

    /// Settings that may still change after the handshake (hangup, destination, timeouts).
    pub fn config_mut(&mut self) -> &mut DriverConfig {
        &mut self.config
    }

    /// Lets output through to the local side (a session started with `hold_output` whose kind
    /// turned out not to be port forwarding).
    pub fn open_output(&mut self) {
        self.session.connected(Instant::now().into_std());
    }

    /// Runs the session until it ends. `ready` learns the session kind when the handshake is
    /// over (at once if it already is); `signals` delivers signal numbers that should end the
    /// session.
    pub async fn run(
        &mut self,
        local: Local,
        mut ready: Option<oneshot::Sender<SessionKind>>,
        signals: &mut mpsc::Receiver<i32>,
    ) -> Result<Outcome, DriveError> {
        if let Some(kind) = self.session.kind()
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(kind);
        }
        self.run_inner(local, ready, signals).await
    }

    /// [`run`](Self::run), but only for a session whose kind (known after the handshake)
    /// `wanted` accepts: any other kind is returned as `Err` at once, with the session still
    /// open (its data would mean nothing to this caller).
    pub async fn run_kind(
        &mut self,
        local: Local,
        signals: &mut mpsc::Receiver<i32>,
        wanted: impl Fn(&SessionKind) -> bool,
    ) -> Result<Result<Outcome, DriveError>, SessionKind> {
        let (ready, kind_rx) = oneshot::channel();
        let run = self.run(local, Some(ready), signals);
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => Ok(outcome),
            Ok(kind) = kind_rx => match wanted(&kind) {
                true => Ok(run.await),
                false => Err(kind),
            },
        }
    }

    async fn run_inner(
        &mut self,
        mut local: Local,
        mut ready: Option<oneshot::Sender<SessionKind>>,
        signals: &mut mpsc::Receiver<i32>,
    ) -> Result<Outcome, DriveError> {
        let mut state = LocalState {
            input_open: true,
            eof_quiet_until: None,
            output_gone: false,
            hangup_until: None,
        };
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush();
            if let Some(outcome) = self.handle_events(&local.output, &mut ready).await? {
                return Ok(outcome);
            }
            if let Some(end) = self.quiet_end(&mut state) {
                return Ok(self.finish(end).await);
            }
            match self.wait(&mut local, &mut state, &mut ping, signals).await {
                Step::Next => {}
                Step::End(end) => return Ok(self.finish(end).await),
                Step::Lost => {
                    if let Some(outcome) = self.reconnect(&local.output, signals).await? {
                        return Ok(outcome);
                    }
                }
            }
        }
    }

    /// Acts on what the session reports; `Some` once it is over.
    async fn handle_events(
        &mut self,
        output: &mpsc::Sender<Bytes>,
        ready: &mut Option<oneshot::Sender<SessionKind>>,
    ) -> Result<Option<Outcome>, DriveError> {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Ready {
                    kind,
                    agent_version,
                } => {
                    tracing::info!(?kind, %agent_version, "session ready");
                    if self.session.is_encrypted() {
                        (self.config.notify)(&Notice::Encrypted);
                    }
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(kind);
                    }
                }
                Event::Notice(text) => tracing::info!("{text}"),
                Event::Stderr(bytes) => (self.config.notify)(&Notice::Stderr(bytes)),
                Event::ExitCode(code) => self.exit_code = Some(code),
                Event::Flag(crate::proto::frame::flag::CONNECT_TO_PORT_ERROR) => tracing::warn!(
                    "the agent could not connect to the destination {}: check that a service listens there and that the target can reach it",
                    self.config.destination
                ),
                Event::Flag(f) => tracing::debug!(flag = f.0, "flag from agent"),
                Event::Closed { output: reason } => {
                    // Everything acked before the close is owed to the local reader.
                    self.deliver_remaining(output).await;
                    return match reason.is_empty() {
                        true => Ok(Some(self.outcome(End::Closed))),
                        false => Err(DriveError::ClosedWithError(reason)),
                    };
                }
                Event::Failed(why) => return Err(DriveError::Handshake(why)),
                Event::DataKeyNeeded { key_id, challenge } => {
                    self.fetch_data_key(&key_id, challenge).await?
                }
            }
        }
        Ok(None)
    }

    /// The quiet ends: local EOF with everything acked and no channel_closed within
    /// `eof_wait`, or the wait after ssh hung up over. Drops output nobody reads any more.
    fn quiet_end(&mut self, state: &mut LocalState) -> Option<End> {
        let now = Instant::now();
        if state.output_gone {
            while self.session.poll_output(OUTPUT_CHUNK).is_some() {}
        }
        if !state.input_open && self.session.all_acked() && self.session.pending_output() == 0 {
            let quiet = *state
                .eof_quiet_until
                .get_or_insert(now + self.config.eof_wait);
            if now >= quiet {
                tracing::info!(wait = ?self.config.eof_wait, "no channel_closed after local EOF; terminating the session");
                return Some(End::LocalEof);
            }
        }
        if state.hangup_until.is_some_and(|t| now >= t) {
            return Some(End::Signal(self.config.hangup.unwrap_or(0)));
        }
        None
    }

    /// When the loop must wake up with nothing else happening: the session's timers and the
    /// quiet ends.
    fn next_timer(&self, state: &LocalState) -> Instant {
        [
            self.session.poll_timeout().map(Instant::from_std),
            state.eof_quiet_until,
            state.hangup_until,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Instant::now() + Duration::from_secs(3600))
    }

    /// Waits for the next thing to do and does it: websocket messages, local input, room for
    /// output, a timer, the ping tick or a signal.
    async fn wait(
        &mut self,
        local: &mut Local,
        state: &mut LocalState,
        ping: &mut Interval,
        signals: &mut mpsc::Receiver<i32>,
    ) -> Step {
        let timer = self.next_timer(state);
        let accept = state.input_open && self.session.can_accept_input();
        let has_output = !state.output_gone && self.session.pending_output() > 0;
        // Backpressure: while the local side has a full buffer to take, the websocket is not
        // read, so the service and the agent wait instead of our dropping data. A vanished
        // reader takes nothing: keep reading for the agent's channel_closed.
        let read = state.output_gone || self.session.wants_frames();
        tokio::select! {
            msg = self.reader.next(), if read => self.read_batch(msg),
            data = local.input.recv(), if accept => {
                self.on_input(data, state);
                Step::Next
            }
            permit = local.output.reserve(), if has_output => match permit {
                Ok(permit) => {
                    if let Some(out) = self.session.poll_output(OUTPUT_CHUNK) {
                        state.eof_quiet_until = None;
                        permit.send(out);
                    }
                    Step::Next
                }
                Err(_) if self.config.hangup.is_some() => {
                    tracing::debug!("local reader gone; waiting for the agent to end the session");
                    state.output_gone = true;
                    Step::Next
                }
                Err(_) => Step::End(End::LocalGone),
            },
            _ = tokio::time::sleep_until(timer) => {
                self.session.handle_timeout(Instant::now().into_std());
                Step::Next
            }
            _ = ping.tick() => self.on_ping(read),
            sig = signals.recv() => self.on_signal(sig, state),
        }
    }

    /// One websocket read, and what is already readable after it: its output then reaches the
    /// local side in one batch, and its acks go out together. Events (channel_closed above
    /// all) are acted on before anything after them is read.
    fn read_batch(
        &mut self,
        first: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Step {
        let mut lost = self.on_message(first);
        for _ in 0..READ_BATCH {
            if lost || self.session.has_events() || !self.session.wants_frames() {
                break;
            }
            match self.reader.next().now_or_never() {
                Some(msg) => lost = self.on_message(msg),
                None => break,
            }
        }
        match lost {
            true => Step::Lost,
            false => Step::Next,
        }
    }

    /// Local input, or its end (`None`).
    fn on_input(&mut self, data: Option<Input>, state: &mut LocalState) {
        let now = Instant::now().into_std();
        state.eof_quiet_until = None;
        match data {
            Some(Input::Data(b)) => self.session.handle_input(now, b),
            Some(Input::Flag(f)) => self.session.send_flag(now, f),
            Some(Input::Resize(size)) => self.session.handle_resize(now, size),
            Some(Input::Connected(done)) => {
                self.session.connected(now);
                let _ = done.send(());
            }
            Some(Input::Disconnected) => self.session.disconnect_to_port(now),
            None => state.input_open = false,
        }
    }

    /// The ping tick: a websocket silent for `dead_after` is lost, else ping it. `reading`:
    /// whether the loop reads the websocket now.
    fn on_ping(&mut self, reading: bool) -> Step {
        if !reading {
            // Not reading is our choice, not the path's silence.
            self.last_heard = Instant::now();
        }
        if self.last_heard.elapsed() > self.config.dead_after {
            tracing::info!(
                "no traffic from the service for {:?}; reconnecting",
                self.config.dead_after
            );
            return Step::Lost;
        }
        let _ = self
            .writer
            .send(Message::Ping(Bytes::from_static(b"keepalive")));
        Step::Next
    }

    /// A signal: the hangup signal waits (bounded) for the agent; any other ends the session.
    fn on_signal(&mut self, sig: Option<i32>, state: &mut LocalState) -> Step {
        match sig {
            Some(sig) if Some(sig) == self.config.hangup => {
                // ssh has exited: its pipes end too, and the agent ends the session when sshd
                // closes; don't race that with a TerminateSession flag.
                tracing::debug!("SIGHUP: waiting for the agent to end the session");
                state
                    .hangup_until
                    .get_or_insert(Instant::now() + self.config.eof_wait);
                Step::Next
            }
            sig => Step::End(End::Signal(sig.unwrap_or(0))),
        }
    }

    /// A lost websocket: resume the session on a new one; `Some` when the session is over
    /// instead (a signal during the resume ends it at once).
    async fn reconnect(
        &mut self,
        output: &mpsc::Sender<Bytes>,
        signals: &mut mpsc::Receiver<i32>,
    ) -> Result<Option<Outcome>, DriveError> {
        // Notices (shown at default verbosity): a resume can take minutes, and silence looks
        // like a hang.
        let since = self.last_heard.elapsed().as_secs();
        tracing::warn!(target: "ssm_proxy::notice", "reconnecting to Session Manager (connection lost {since} s ago)…");
        let started = Instant::now();
        // A signal must not wait for --resume-timeout.
        let resumed = tokio::select! {
            resumed = self.resume() => resumed,
            sig = signals.recv() => {
                return Ok(Some(self.finish(End::Signal(sig.unwrap_or(0))).await));
            }
        };
        let took = started.elapsed().as_secs_f64();
        match resumed {
            Ok(()) => {
                tracing::warn!(target: "ssm_proxy::notice", "reconnected after {took:.1} s; the session goes on");
                Ok(None)
            }
            // Timed out or terminated while we were away (§1.1).
            Err(DriveError::Gone) => {
                self.deliver_remaining(output).await;
                Ok(Some(self.outcome(End::Gone)))
            }
            Err(e) => {
                tracing::warn!(target: "ssm_proxy::notice", "could not reconnect; giving up after {took:.0} s");
                Err(e)
            }
        }
    }

    /// KMS encryption requested by the agent: get a data key bound to this session (§6).
    async fn fetch_data_key(
        &mut self,
        key_id: &str,
        challenge: Option<String>,
    ) -> Result<(), DriveError> {
        let context = crate::proto::crypto::encryption_context(
            &self.grant.session_id,
            &self.config.target,
            challenge.as_deref(),
        );
        tracing::info!(%key_id, "session is KMS-encrypted; requesting a data key");
        let key = self
            .service
            .data_key(key_id, context.into_iter().collect())
            .await?;
        self.session
            .set_data_key(Instant::now().into_std(), &key.plaintext, &key.ciphertext);
        Ok(())
    }

    /// Hands all remaining output to the local side (bounded, in case the reader is stuck).
    async fn deliver_remaining(&mut self, output: &mpsc::Sender<Bytes>) {
        let drain = async {
            while let Some(out) = self.session.poll_output(OUTPUT_CHUNK) {
                if output.send(out).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
    }

    /// Handles one websocket read; true means the websocket is lost.
    fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        match msg {
            Some(Ok(Message::Binary(b))) => self.heard(b),
            Some(Ok(Message::Text(t))) => self.heard(Bytes::from(t)),
            Some(Ok(Message::Close(frame))) => {
                tracing::info!(?frame, "websocket closed by the service");
                return true;
            }
            Some(Ok(_)) => self.last_heard = Instant::now(),
            Some(Err(e)) => {
                tracing::info!(error = %e, "websocket lost");
                return true;
            }
            None => {
                tracing::info!("websocket ended");
                return true;
            }
        }
        false
    }

    fn heard(&mut self, frame: Bytes) {
        self.last_heard = Instant::now();
        self.heard_since_open = true;
        self.session.handle_frame(self.last_heard.into_std(), frame);
    }

    fn flush(&mut self) {
        while let Some(frame) = self.session.poll_transmit() {
            let _ = self.writer.send(Message::Binary(frame));
        }
    }

    fn outcome(&self, end: End) -> Outcome {
        Outcome {
            end,
            exit_code: self.exit_code,
            terminated: false,
        }
    }

    /// Ends the session from our side: TerminateSession flag on the channel and the API call,
    /// so nothing is left running on the service (§9.2).
    async fn finish(&mut self, end: End) -> Outcome {
        self.session.terminate(Instant::now().into_std());
        self.flush();
        let terminated = match self.service.terminate(&self.grant.session_id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "TerminateSession failed");
                false
            }
        };
        Outcome {
            terminated,
            ..self.outcome(end)
        }
    }

    /// Replaces a lost websocket: ResumeSession (fresh credentials come from the provider chain
    /// on every call), dial the returned URL, resend everything unacked; retried with backoff
    /// for `resume_timeout`.
    async fn resume(&mut self) -> Result<(), DriveError> {
        // A gateway that accepts websockets and drops them at once must not turn into a hot
        // loop of ResumeSession calls.
        if !self.heard_since_open {
            tracing::debug!(wait = ?self.flap_delay, "websocket died empty; waiting before resuming");
            tokio::time::sleep(self.flap_delay).await;
            self.flap_delay = (self.flap_delay * 2).min(FLAP_DELAY.1);
        } else {
            self.flap_delay = FLAP_DELAY.0;
        }
        let started = Instant::now();
        let mut backoff = RESUME_BACKOFF.0;
        let mut last_error = String::from("no attempt made");
        while started.elapsed() < self.config.resume_timeout {
            match self.resume_once().await? {
                Ok(()) => {
                    tracing::info!(after = ?started.elapsed(), "data channel resumed");
                    return Ok(());
                }
                Err(why) => last_error = why,
            }
            tracing::info!(error = %last_error, retry_in = ?backoff, "resume failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESUME_BACKOFF.1);
        }
        Err(DriveError::ResumeTimeout(
            self.config.resume_timeout.as_secs(),
            last_error,
        ))
    }

    /// One ResumeSession and dial; `Ok(Err(why))` when worth trying again.
    async fn resume_once(&mut self) -> Result<Result<(), String>, DriveError> {
        let grant = match self.service.resume(&self.grant.session_id).await {
            Ok(Some(grant)) => grant,
            Ok(None) => return Err(DriveError::Gone),
            Err(e) if !e.is_transient() => return Err(e.into()),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if !grant.stream_url.is_empty() {
            self.service
                .check_url(&grant.stream_url)
                .map_err(DriveError::StreamUrl)?;
            self.grant.stream_url = grant.stream_url;
        }
        self.grant.token = grant.token;
        let (writer, reader) = match self.service.open(&self.grant, &self.client_id).await {
            Ok(channel) => channel,
            Err(e) => return Ok(Err(format!("{e:#}"))),
        };
        self.writer = writer;
        self.reader = reader;
        self.last_heard = Instant::now();
        self.heard_since_open = false;
        self.session.handle_reconnect(self.last_heard.into_std());
        self.resumes += 1;
        Ok(Ok(()))
    }
}

/// A StreamUrl as shown to the user: without its query.
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_owned()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

fn random_seed() -> u64 {
    // Message ids must be unique, not secret. std's per-process hash keys come from the OS
    // once; aws-lc-rs's RNG setup costs tens of milliseconds on the connect path.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_ms());
    h.write_u32(std::process::id());
    h.finish()
}

// The fake service's far end is the simulator's agent.
#[cfg(all(test, feature = "sim"))]
mod tests;
