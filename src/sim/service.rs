//! The simulator's service state: which targets exist, the sessions, their tokens, and the API
//! operations on them. The websocket side lives in `gateway`, the agent in `agent`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

use super::agent::Plugin;
use super::config::SimConfig;
use super::error::ApiError;
use crate::proto::documents;

/// The client's data-channel websocket.
pub type Ws = WebSocketStream<TcpStream>;

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
    /// What the document runs: Port, or a shell plugin (then [`super::shell::Shell`] replaces
    /// the targets).
    pub plugin: Plugin,
}

/// Starts the task of a new session (the gateway's); the returned sender feeds it websockets
/// and commands. Passed in so that the service need not know the gateway.
pub type Launch = fn(SessionPlan, Arc<Service>) -> mpsc::UnboundedSender<Attach>;

/// A live session as the service knows it.
struct Entry {
    tokens: Vec<String>,
    attach: mpsc::UnboundedSender<Attach>,
    ended: bool,
}

/// Counters the tests read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// StartSession calls that created a session.
    pub started: u64,
    /// TerminateSession calls.
    pub terminated: u64,
    /// ResumeSession calls that returned a token.
    pub resumed: u64,
    /// Data-channel websocket opens accepted (first opens and reconnects).
    pub opens: u64,
    /// Client websockets killed by the drop plan.
    pub drops: u64,
    /// pause_publication messages sent to clients.
    pub pauses: u64,
    /// DescribeInstanceInformation calls.
    pub describes: u64,
    /// Sessions whose agent got its KMS data key (encrypted from then on).
    pub encrypted: u64,
    /// StartSession calls, throttled and refused ones included.
    pub start_calls: u64,
    /// Calls answered with ThrottlingException.
    pub throttled: u64,
}

/// Shared state of one simulator instance.
pub struct Service {
    config: SimConfig,
    launch: Launch,
    ws_base: String,
    sessions: Mutex<HashMap<String, Entry>>,
    started: AtomicU64,
    terminated: AtomicU64,
    resumed: AtomicU64,
    pub(crate) opens: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) pauses: AtomicU64,
    counter: AtomicU64,
    describes: AtomicU64,
    pub(crate) encrypted: AtomicU64,
    /// SSM calls that arrived on the ECS endpoint.
    pub(crate) misrouted: AtomicU64,
    /// Until when new data-channel connections are refused (a simulated network outage).
    outage_until: Mutex<Option<std::time::Instant>>,
    eic: super::fleet::EicKeys,
    pub(crate) kms: super::kms::Kms,
    throttle: super::throttle::Throttle,
    start_calls: AtomicU64,
    throttled: AtomicU64,
    /// When the simulator started (instances with `online_after` boot from then).
    born: std::time::Instant,
    /// (session id, Reason) of every StartSession that gave one: the session history's audit trail.
    reasons: Mutex<Vec<(String, String)>>,
    /// The access key of every signed upgrade accepted, in order.
    signers: Mutex<Vec<String>>,
}

impl Service {
    /// A service whose stream URLs point at `ws_base` (e.g. `ws://127.0.0.1:1234`) and whose
    /// sessions `launch` starts.
    pub fn new(config: SimConfig, ws_base: String, launch: Launch) -> Self {
        Self {
            launch,
            eic: super::fleet::EicKeys::new(config.eic_validity),
            kms: super::kms::Kms::new(config.kms_denied.clone()),
            throttle: super::throttle::Throttle::new(config.api_limit),
            start_calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            born: std::time::Instant::now(),
            config,
            ws_base,
            sessions: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
            terminated: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            describes: AtomicU64::new(0),
            encrypted: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            outage_until: Mutex::new(None),
            reasons: Mutex::new(Vec::new()),
            signers: Mutex::new(Vec::new()),
        }
    }

    /// (session id, Reason) of each StartSession that gave a Reason, in order.
    pub fn reasons(&self) -> Vec<(String, String)> {
        self.reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The keys whose signatures the gateway accepts: the printed one and the configured extras.
    pub fn signing_keys(&self) -> Vec<(String, String)> {
        let mut keys = vec![(
            super::config::ACCESS_KEY.to_owned(),
            self.config.secret.clone(),
        )];
        keys.extend(self.config.keys.iter().cloned());
        keys
    }

    /// The keys whose signatures the API accepts: the gateway's and the API-only ones.
    pub fn api_keys(&self) -> Vec<(String, String)> {
        let mut keys = self.signing_keys();
        keys.extend(self.config.api_only_keys.iter().cloned());
        keys
    }

    pub(crate) fn signed_by(&self, key: String) {
        self.signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
    }

    /// The access key of every signed upgrade accepted so far, in order.
    pub fn signers(&self) -> Vec<String> {
        self.signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `ws://ip:port` of the gateway.
    pub fn ws_base(&self) -> &str {
        &self.ws_base
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream_url(&self, session_id: &str) -> String {
        format!(
            "{}/v1/data-channel/{session_id}?role=publish_subscribe",
            self.ws_base
        )
    }

    fn token(&self) -> String {
        format!("sim-token-{}", uuid::Uuid::new_v4().simple())
    }

    /// Takes a token of `op`'s rate limit, counting the calls it refuses.
    pub fn throttle(&self, op: &'static str) -> Result<(), ApiError> {
        if op == "StartSession" {
            self.start_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.throttle.check(op).inspect_err(|_| {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Whether `target` is still booting (`online_after` has not passed yet).
    fn booting(&self, target: &str) -> bool {
        let up = self.born.elapsed();
        self.config
            .online_after
            .iter()
            .any(|(t, after)| t == target && up < *after)
    }

    /// `StartSession`.
    pub fn start_session(self: &Arc<Self>, input: &Value) -> Result<Value, ApiError> {
        let target = input
            .get("Target")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.check_target(target)?;
        let document = input
            .get("DocumentName")
            .and_then(Value::as_str)
            .unwrap_or(documents::SHELL);
        // The real API's constraint on Reason: 1 to 256 characters (`^.{1,256}$`).
        let reason = input.get("Reason").and_then(Value::as_str);
        if reason.is_some_and(|r| r.is_empty() || r.chars().count() > 256 || r.contains('\n')) {
            return Err(ApiError::client(
                "ValidationException",
                "1 validation error detected: Value at 'reason' failed to satisfy constraint: \
                 Member must satisfy regular expression pattern: ^.{1,256}$",
            ));
        }
        let params = input.get("Parameters").cloned().unwrap_or(Value::Null);
        let custom = self
            .config
            .documents
            .iter()
            .find(|(name, _)| name == document);
        if let Some((_, content)) = custom {
            let (plugin, properties) = super::documents::resolve(content, &params)?;
            return Ok(self.spawn(target, plugin, properties, "sim", reason));
        }
        let plugin = match document {
            documents::SHELL => Plugin::Shell,
            documents::INTERACTIVE_COMMAND => Plugin::InteractiveCommands,
            documents::NON_INTERACTIVE_COMMAND => Plugin::NonInteractiveCommands,
            _ => Plugin::Port,
        };
        if !matches!(plugin, Plugin::Port) && !self.runs_commands(target) {
            return Err(commands_denied(target, document));
        }
        let properties = builtin_properties(document, &params)?;
        Ok(self.spawn(target, plugin, properties, "sim", reason))
    }

    /// StartSession's refusals for the target itself: invalid, denied, or not connected.
    fn check_target(&self, target: &str) -> Result<(), ApiError> {
        if target.is_empty() || target.len() > 400 {
            return Err(ApiError::client(
                "ValidationException",
                "1 validation error detected: Value at 'target' failed to satisfy constraint",
            ));
        }
        if self.config.denied.iter().any(|t| t == target) {
            return Err(ApiError {
                status: hyper::StatusCode::BAD_REQUEST,
                code: "AccessDeniedException",
                message: format!(
                    "User: arn:aws:iam::123456789012:user/sim is not authorized to perform: \
                     ssm:StartSession on resource: arn:aws:ec2:us-east-1:123456789012:instance/{target}"
                ),
            });
        }
        let fleet_offline = self
            .config
            .fleet
            .iter()
            .any(|i| i.id == target && !i.online);
        if self.config.offline.iter().any(|t| t == target)
            || fleet_offline
            || self.booting(target)
            || !(looks_like_target(target) || super::ecs::reachable(&self.config.ecs_tasks, target))
        {
            return Err(ApiError::client(
                "TargetNotConnected",
                format!("{target} is not connected."),
            ));
        }
        Ok(())
    }

    /// Starts a session of the simulated agent; returns SessionId, TokenValue and StreamUrl
    /// (ids start with `prefix`; `reason` is StartSession's `Reason`).
    fn spawn(
        self: &Arc<Self>,
        target: &str,
        plugin: Plugin,
        properties: Value,
        prefix: &str,
        reason: Option<&str>,
    ) -> Value {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let session_id = format!(
            "{prefix}-{n:04}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let token = self.token();
        let plan = SessionPlan {
            session_id: session_id.clone(),
            target: target.to_owned(),
            properties,
            seed: n,
            plugin,
        };
        let attach = (self.launch)(plan, self.clone());
        self.lock().insert(
            session_id.clone(),
            Entry {
                tokens: vec![token.clone()],
                attach,
                ended: false,
            },
        );
        if let Some(r) = reason {
            let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
            reasons.push((session_id.clone(), r.to_owned()));
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        json!({"SessionId": session_id, "TokenValue": token, "StreamUrl": self.stream_url(&session_id)})
    }

    /// ECS `ExecuteCommand`: the command on the container's pty (InteractiveCommands), its
    /// session in the response's camelCase `session` (§16.2).
    pub fn execute_command(self: &Arc<Self>, input: &Value) -> Result<Value, ApiError> {
        let ecs = super::ecs::execute_command(&self.config.ecs_tasks, &self.config.denied, input)?;
        if !self.runs_commands(&ecs.target) {
            return Err(commands_denied(&ecs.target, documents::INTERACTIVE_COMMAND));
        }
        let properties = json!({"command": ecs.command});
        let grant = self.spawn(
            &ecs.target,
            Plugin::InteractiveCommands,
            properties,
            "ecs-execute-command",
            None,
        );
        let mut response = ecs.response;
        response["session"] = json!({
            "sessionId": grant["SessionId"],
            "streamUrl": grant["StreamUrl"],
            "tokenValue": grant["TokenValue"],
        });
        Ok(response)
    }

    /// Whether shell and command sessions may run a program here for `target`.
    fn runs_commands(&self, target: &str) -> bool {
        self.config.commands.iter().any(|t| t == "*" || t == target)
    }

    /// `ResumeSession`: a new token for a live session; no token once it has ended (§1.1).
    pub fn resume_session(&self, input: &Value) -> Result<Value, ApiError> {
        let id = input
            .get("SessionId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let token = self.token();
        let mut sessions = self.lock();
        let entry = sessions.get_mut(id).ok_or_else(|| {
            ApiError::client(
                "DoesNotExistException",
                format!("Session {id} does not exist"),
            )
        })?;
        if entry.ended {
            return Ok(json!({"SessionId": id}));
        }
        entry.tokens.push(token.clone());
        self.resumed.fetch_add(1, Ordering::Relaxed);
        Ok(json!({"SessionId": id, "TokenValue": token, "StreamUrl": self.stream_url(id)}))
    }

    /// `TerminateSession`: ends the session on both sides.
    pub fn terminate_session(&self, input: &Value) -> Result<Value, ApiError> {
        let id = input
            .get("SessionId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(entry) = self.lock().get_mut(id) {
            let _ = entry.attach.send(Attach::Terminate);
            entry.ended = true;
        }
        self.terminated.fetch_add(1, Ordering::Relaxed);
        Ok(json!({"SessionId": id}))
    }

    /// `DescribeInstanceInformation` over the configured fleet.
    pub fn describe_instances(&self, input: &Value) -> Result<Value, ApiError> {
        self.describes.fetch_add(1, Ordering::Relaxed);
        if self.config.online_after.is_empty() {
            return super::fleet::describe(&self.config.fleet, input);
        }
        let mut fleet = self.config.fleet.clone();
        for i in fleet.iter_mut().filter(|i| self.booting(&i.id)) {
            i.online = false;
        }
        super::fleet::describe(&fleet, input)
    }

    /// EC2 Instance Connect `SendSSHPublicKey`.
    pub fn send_ssh_public_key(&self, input: &Value) -> Result<Value, ApiError> {
        self.eic
            .send(&self.config.fleet, &self.config.denied, input)
    }

    /// Keys pushed for `user` that are still valid, one per line (an `AuthorizedKeysCommand`'s
    /// output).
    pub fn eic_authorized_keys(&self, user: &str) -> String {
        self.eic.authorized_keys(user)
    }

    /// Keys pushed for `instance` so far.
    pub fn eic_pushed(&self, instance: &str) -> usize {
        self.eic.pushed_for(instance)
    }

    /// Hands an opened websocket to its session if the token is valid for it.
    pub fn attach(&self, session_id: &str, token: &str, conn: Attach) -> bool {
        let sessions = self.lock();
        match sessions.get(session_id) {
            Some(e) if !e.ended && e.tokens.iter().any(|t| t == token) => {
                e.attach.send(conn).is_ok()
            }
            _ => false,
        }
    }

    /// Refuses new data-channel connections for `length`, as a network outage would.
    pub fn begin_outage(&self, length: Duration) {
        *self.outage_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now() + length);
    }

    /// Whether a simulated outage is going on.
    pub fn in_outage(&self) -> bool {
        self.outage_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// Called by the session task when the session is over.
    pub fn mark_ended(&self, session_id: &str) {
        if let Some(e) = self.lock().get_mut(session_id) {
            e.ended = true;
        }
    }

    /// SSM calls sent to the ECS endpoint (refused; a client bug).
    pub fn misrouted(&self) -> u64 {
        self.misrouted.load(Ordering::Relaxed)
    }

    /// Sessions started and not yet over.
    pub fn active_sessions(&self) -> usize {
        self.lock().values().filter(|e| !e.ended).count()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        SimStats {
            started: self.started.load(Ordering::Relaxed),
            terminated: self.terminated.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            opens: self.opens.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            describes: self.describes.load(Ordering::Relaxed),
            encrypted: self.encrypted.load(Ordering::Relaxed),
            start_calls: self.start_calls.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

/// What StartSession answers for a shell or command document on a target not allowed to run
/// commands: what an IAM policy without that document would get.
fn commands_denied(target: &str, document: &str) -> ApiError {
    ApiError {
        status: hyper::StatusCode::BAD_REQUEST,
        code: "AccessDeniedException",
        message: format!(
            "User: arn:aws:iam::123456789012:user/sim is not authorized to perform: \
             ssm:StartSession on resource: arn:aws:ssm:us-east-1::document/{document} for \
             {target} (the simulator runs commands only for targets given with \
             --allow-commands)"
        ),
    }
}

/// The properties of one of AWS's own session documents, from StartSession's `Parameters`.
fn builtin_properties(document: &str, params: &Value) -> Result<Value, ApiError> {
    let param = |name: &str| {
        params
            .get(name)
            .and_then(|v| v.get(0))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(match document {
        // The shell: what it runs comes from the sim's configuration (§12.3).
        documents::SHELL => json!({}),
        documents::INTERACTIVE_COMMAND | documents::NON_INTERACTIVE_COMMAND => {
            let command = param("command").filter(|c| !c.trim().is_empty());
            let command = command.ok_or_else(|| {
                ApiError::client(
                    "InvalidParameters",
                    "Parameter \"command\" is required by the document.",
                )
            })?;
            // NonInteractiveCommands: stderr apart and the exit status only on request
            // (the document's `separateOutputStream`, default "false").
            match param("separateOutputStream") {
                Some(separate) => json!({"command": command, "separateOutputStream": separate}),
                None => json!({"command": command}),
            }
        }
        documents::SSH => json!({"portNumber": port_param(param("portNumber"), "22")?}),
        documents::PORT_FORWARDING => json!({
            "portNumber": port_param(param("portNumber"), "80")?,
            "type": "LocalPortForwarding",
            "localPortNumber": param("localPortNumber").unwrap_or_else(|| "0".into()),
        }),
        documents::PORT_FORWARDING_TO_REMOTE_HOST => json!({
            "portNumber": port_param(param("portNumber"), "80")?,
            "type": "LocalPortForwarding",
            "localPortNumber": param("localPortNumber").unwrap_or_else(|| "0".into()),
            "host": param("host").unwrap_or_default(),
        }),
        other => {
            return Err(ApiError::client(
                "InvalidDocument",
                format!("Document with name {other} does not exist."),
            ));
        }
    })
}

fn looks_like_target(t: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    t.strip_prefix("i-")
        .or_else(|| t.strip_prefix("mi-"))
        .is_some_and(hex)
}

fn port_param(value: Option<String>, default: &str) -> Result<String, ApiError> {
    let v = value.unwrap_or_else(|| default.to_owned());
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(v),
        _ => Err(ApiError::client(
            "InvalidParameters",
            format!("Parameter \"portNumber\" value \"{v}\" does not match the allowed pattern"),
        )),
    }
}
