//! The `session-manager-plugin` drop-in: what `aws ssm start-session` runs after its own
//! StartSession call (protocol.md §1.3). Chosen before clap parsing, by the program name
//! (a `session-manager-plugin` symlink) or by the plugin's positional argv:
//!
//! | argv | content |
//! |---|---|
//! | 1 | the StartSession response JSON, or the name of an env var (prefix `AWS_SSM_START_SESSION_RESPONSE`) holding it |
//! | 2 | region · 3 `StartSession` · 4 profile (may be empty) |
//! | 5 | the StartSession request JSON (`Target`, `DocumentName`, `Parameters`) |
//! | 6 | the SSM endpoint URL |
//!
//! As in the official plugin, the agent's handshake decides what the session is, not the
//! document's name (custom documents, documents started without `--parameters`): a Port
//! session without `type` runs the same relay as proxy mode ([`proxy::relay_opened`]), with
//! ResumeSession and TerminateSession sent to the argv region, profile and endpoint; unlike the
//! official plugin nothing is printed on stdout (it is ssh's byte stream). LocalPortForwarding
//! runs [`forward`]'s engines on the handed-over session, listening on the Properties'
//! `localPortNumber`; shells and commands run [`shell`]'s terminal handling (with a
//! NonInteractiveCommands exit status as ours). A session the service ends, with or without a
//! reason, exits 0 as the official plugin does; our own failures exit non-zero.

use std::collections::HashMap;
use std::ffi::OsString;

use serde_json::Value;

use crate::aws::{Aws, AwsOptions, SessionGrant};
use crate::cli::UsageError;
use crate::front::forward::{self, Forward};
use crate::front::session::{self, Opened, Opening};
use crate::front::settings::{Mode, SessionSettings};
use crate::front::{ecs, proxy, shell};
use crate::net::Net;
use crate::os;
use crate::proto::SessionKind;
use crate::proto::documents;
use crate::proto::session::CLIENT_VERSION;
use crate::transport::{DriveError, End};

/// The name the AWS CLI runs.
pub const PLUGIN_NAME: &str = "session-manager-plugin";

/// What `--version` answers: the official release we match ([`CLIENT_VERSION`]'s comment).
pub const PLUGIN_VERSION: &str = CLIENT_VERSION;

/// Prefix of the env var that carries the StartSession response.
pub const RESPONSE_ENV: &str = "AWS_SSM_START_SESSION_RESPONSE";

/// What argv asks of the plugin entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// No arguments: say that it is installed.
    Installed,
    /// `--version`.
    Version,
    /// One or two arguments other than `--version` (the first one here): the official plugin
    /// prints "Unknown operation" and exits 0.
    Unknown(String),
    /// A session handed over by the AWS CLI.
    Session(PluginArgs),
}

/// The positional arguments of a session hand-off.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// `argv[1]`: the response JSON, or the name of the env var holding it.
    pub response: String,
    /// `argv[2]`.
    pub region: String,
    /// `argv[3]` (`StartSession`).
    pub operation: String,
    /// `argv[4]`; empty for none.
    pub profile: String,
    /// `argv[5]`, absent from legacy 4-argument calls.
    pub request: Option<String>,
    /// `argv[6]`.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for PluginArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // argv[1] may be the response itself, token included.
        let response = self.response_env().unwrap_or("<response JSON, redacted>");
        f.debug_struct("PluginArgs")
            .field("response", &response)
            .field("region", &self.region)
            .field("operation", &self.operation)
            .field("profile", &self.profile)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl PluginArgs {
    /// The env var to read the response from, when `argv[1]` names one rather than holding JSON.
    pub fn response_env(&self) -> Option<&str> {
        self.response
            .starts_with(RESPONSE_ENV)
            .then_some(self.response.as_str())
    }
}

/// Decides, before any parsing, whether this process is the plugin entry; `None` means the
/// normal `ssm-proxy` command line.
pub fn detect(args: &[OsString]) -> Option<Invocation> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let by_name = text.first().is_some_and(|a0| {
        // Either separator: Windows paths may use both.
        let base = a0.rsplit(['/', '\\']).next().unwrap_or_default();
        let base = base.strip_suffix(".exe").unwrap_or(base);
        base.eq_ignore_ascii_case(PLUGIN_NAME)
    });
    let positional = text.len() >= 4
        && text[3] == "StartSession"
        && (text[1].trim_start().starts_with('{') || text[1].starts_with(RESPONSE_ENV));
    if !by_name && !positional {
        return None;
    }
    Some(match text.len() {
        0 | 1 => Invocation::Installed,
        2 if text[1] == "--version" => Invocation::Version,
        // Any operation: `run` refuses all but StartSession.
        n if n >= 4 => Invocation::Session(PluginArgs {
            response: text[1].clone(),
            region: text[2].clone(),
            operation: text[3].clone(),
            profile: text[4..].first().cloned().unwrap_or_default(),
            request: text.get(5).cloned(),
            endpoint: text.get(6).cloned().filter(|e| !e.is_empty()),
        }),
        _ => Invocation::Unknown(text[1].clone()),
    })
}

/// What the official plugin prints on stdout when run without arguments (exit 0); the ECS
/// CLI probes this on every call.
pub fn installed_message() -> &'static str {
    "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a \
     session.\n\n"
}

/// What the official plugin prints on stdout, exiting 0, for one or two arguments other than
/// `--version`; `first` is the first argument.
pub fn unknown_message(first: &str) -> String {
    format!(
        "\nUnknown operation {first}. \nUse session-manager-plugin --version to check the \
         version.\n\n"
    )
}

/// A failure of the hand-off itself.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// argv or the JSON in it is not what the AWS CLI sends.
    #[error("{0}: run it through the AWS CLI (aws ssm start-session), and update the AWS CLI")]
    BadHandOff(String),
}

/// Runs a handed-over session; `response` is the StartSession response JSON (already taken
/// from the env var by `main`, which also unset it).
pub async fn run(args: PluginArgs, response: &str) -> anyhow::Result<u8> {
    if args.operation != "StartSession" {
        return Err(PluginError::BadHandOff(format!(
            "unknown operation {:?} (only StartSession)",
            args.operation
        ))
        .into());
    }
    let (grant, request) = HandOff::parse(&args, response)?;
    // A mistake in the proxy settings or in our variables still ends the session the AWS CLI
    // started, directly.
    let (net, net_error) = match Net::from_env(None) {
        Ok(net) => (net, None),
        Err(e) => (Net::default(), Some(e)),
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let aws = Aws::load(&AwsOptions {
        profile: nonempty(&args.profile),
        region: nonempty(&args.region),
        // From ECS, argv[6] is the ECS endpoint: SSM calls go to the region's SSM endpoint.
        endpoint_url: args.endpoint.clone().filter(|_| !request.from_ecs),
        reason: None,
        net,
    })
    .await?;
    let session_id = grant.session_id.clone();
    let settings = match (net_error, SessionSettings::from_env()) {
        (Some(e), _) => return Err(super::end_failed_session(&aws, &session_id, e).await),
        (None, Err(e)) => {
            return Err(super::end_failed_session(&aws, &session_id, e.into()).await);
        }
        (None, Ok(settings)) => settings,
    };
    let session = Handed {
        aws,
        session_id,
        request,
        settings,
    };
    let result = session.run(grant).await;
    // The official plugin ends every session with status 0, a reason from the service
    // included (it prints "SessionId: ID : REASON"); on stderr here, stdout may be ssh's.
    match result {
        Err(e) => match e.downcast_ref::<DriveError>() {
            Some(DriveError::ClosedWithError(why)) => {
                eprintln!("SessionId: {} : {why}", session.session_id);
                Ok(0)
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// What the AWS CLI's StartSession request asked for.
struct HandOff {
    target: String,
    /// The document the AWS CLI asked for: for messages and the command plan; what runs is
    /// what the agent's handshake says.
    document: String,
    parameters: HashMap<String, Vec<String>>,
    /// Handed over by `aws ecs execute-command`.
    from_ecs: bool,
}

impl HandOff {
    /// The grant in `response` and what the request in `args` asked for.
    fn parse(args: &PluginArgs, response: &str) -> Result<(SessionGrant, Self), PluginError> {
        let resp: Value = serde_json::from_str(response).map_err(|e| {
            PluginError::BadHandOff(format!("the StartSession response is not JSON ({e})"))
        })?;
        // `aws ecs execute-command` hands over ECS's camelCase keys (§16.2).
        let field = |k: &str| {
            ecs::field(&resp, k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (Some(session_id), Some(token), Some(stream_url)) =
            (field("SessionId"), field("TokenValue"), field("StreamUrl"))
        else {
            return Err(PluginError::BadHandOff(
                "the StartSession response lacks SessionId, TokenValue or StreamUrl".into(),
            ));
        };
        let grant = SessionGrant {
            session_id,
            token,
            stream_url,
        };
        // Legacy 4-argument calls have no request; `"Parameters": null` is tolerated (§1.3).
        let request: Value = match &args.request {
            None => Value::Null,
            Some(r) => serde_json::from_str(r).map_err(|e| {
                PluginError::BadHandOff(format!("the StartSession request is not JSON ({e})"))
            })?,
        };
        let target = match request.get("Target").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None if args.request.is_none() => "unknown".to_owned(),
            None => {
                return Err(PluginError::BadHandOff(
                    "the StartSession request has no Target".into(),
                ));
            }
        };
        let from_ecs = ecs::is_hand_off(&resp, args.endpoint.as_deref());
        let document = request
            .get("DocumentName")
            .and_then(Value::as_str)
            .unwrap_or(match from_ecs {
                true => documents::ECS_EXEC,
                false => documents::SHELL,
            })
            .to_owned();
        let hand_off = Self {
            target,
            document,
            parameters: document_parameters(&request),
            from_ecs,
        };
        Ok((grant, hand_off))
    }
}

/// A session the AWS CLI started and handed over.
struct Handed {
    aws: Aws,
    session_id: String,
    request: HandOff,
    settings: SessionSettings,
}

impl Handed {
    /// Opens the data channel, learns from the handshake what the session is (§8.1: the
    /// SessionType action and its Properties, or a shell's first output when there is no
    /// handshake), and serves it as that: an SSH byte stream on stdin/stdout, a shell or
    /// command on the terminal, or port forwarding on `localPortNumber`. Custom documents and
    /// documents started without `--parameters` work the same way.
    async fn run(&self, grant: SessionGrant) -> anyhow::Result<u8> {
        // Re-enables SIGINT, which the AWS CLI set to ignored before starting us (§1.3).
        let mut signals = os::signals();
        let (aws, target) = (self.aws.clone(), &self.request.target);
        let open = session::open(&aws, grant, target, &self.settings, Mode::Any, &mut signals);
        let opened = match open.await {
            Ok(Opening::Opened(opened)) => opened,
            // Over before it was ready: a signal, or the service closed it.
            Ok(Opening::Ended(outcome)) => {
                return Ok(match outcome.end {
                    End::Signal(sig) => os::signal_exit_code(sig),
                    _ => 0,
                });
            }
            Err(e) => {
                return Err(super::end_failed_session(&aws, &self.session_id, e.into()).await);
            }
        };
        match opened.kind {
            SessionKind::Stream => proxy::relay_opened(aws, opened, target, &mut signals).await,
            SessionKind::Shell => {
                let plan = shell::Plan {
                    // Only NonInteractiveCommands runs without a pty; shells and interactive
                    // commands without KMS send no handshake at all (agent `sessionplugin.go`).
                    remote_tty: opened.session_type().session_type != NON_INTERACTIVE,
                    parameters: self.request.parameters.clone(),
                    document: self.request.document.clone(),
                };
                shell::run_opened(aws, opened, target, &plan, signals).await
            }
            SessionKind::Mux { .. } | SessionKind::Basic => {
                drop(signals);
                self.port_forward(opened).await
            }
        }
    }

    /// Serves port forwarding like the official plugin: listen on the Properties'
    /// `localPortNumber` (absent or 0: any free port) and print where, on stdout as it does
    /// (scripts wait for "Waiting for connections..."; stdout is no byte stream here). A lost
    /// connection is resumed; a session the service ends (idle timeout, maximum duration,
    /// TerminateSession) ends this, and no new session is started.
    async fn port_forward(&self, opened: Opened) -> anyhow::Result<u8> {
        let properties = opened.session_type().properties;
        let mut driver = opened.driver;
        let property = |k: &str| match properties.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let destination = format!(
            "{}:{}",
            property("host").unwrap_or_else(|| "localhost".into()),
            property("portNumber").unwrap_or_else(|| "80".into())
        );
        driver.config_mut().destination = destination.clone();
        let listener = async {
            let local_port = match property("localPortNumber").filter(|p| !p.is_empty()) {
                None => 0,
                Some(p) => p.parse::<u16>().map_err(|_| {
                    UsageError(format!(
                        "localPortNumber {p:?} is not a port number: give 0-65535 in --parameters"
                    ))
                })?,
            };
            forward::listen("127.0.0.1", local_port).await
        };
        let listener = match listener.await {
            Ok(l) => l,
            Err(e) => return Err(super::end_failed_session(&self.aws, &self.session_id, e).await),
        };
        let port = listener.local_addr()?.port();
        println!(
            "\nStarting session with SessionId: {id}\nPort {port} opened for sessionId {id}.\n\
             Waiting for connections...\n",
            id = self.session_id
        );
        let forward = Forward {
            aws: self.aws.clone(),
            target: self.request.target.clone(),
            document: self.request.document.clone(),
            parameters: self.request.parameters.clone(),
            destination,
            settings: self.settings.clone(),
        };
        match forward::run_opened(forward, driver, listener).await? {
            End::Signal(sig) => Ok(os::signal_exit_code(sig)),
            // The driver has printed the official line ("Exiting session with sessionId").
            _ => Ok(0),
        }
    }
}

/// The session type that runs a command on pipes rather than on a pty.
const NON_INTERACTIVE: &str = "NonInteractiveCommands";

/// The request's `Parameters`: lists of strings as the AWS CLI sends them (single strings and
/// numbers tolerated).
fn document_parameters(request: &Value) -> HashMap<String, Vec<String>> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(Value::Object(map)) = request.get("Parameters") else {
        return HashMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let values = match v {
                Value::Array(items) => items.iter().map(text).collect(),
                one => vec![text(one)],
            };
            (k.clone(), values)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn detects_by_name_and_by_shape() {
        assert_eq!(detect(&argv(&["ssm-proxy", "i-0123", "22"])), None);
        assert_eq!(detect(&argv(&["ssm-proxy", "--version"])), None);
        assert_eq!(
            detect(&argv(&["/usr/local/bin/session-manager-plugin"])),
            Some(Invocation::Installed)
        );
        assert_eq!(
            detect(&argv(&["C:\\bin\\session-manager-plugin.exe", "--version"])),
            Some(Invocation::Version)
        );
        assert!(matches!(
            detect(&argv(&["session-manager-plugin", "bogus"])),
            Some(Invocation::Unknown(_))
        ));
        let full = [
            "ssm-proxy",
            "AWS_SSM_START_SESSION_RESPONSE",
            "us-east-1",
            "StartSession",
            "",
            "{\"Target\": \"i-0123\"}",
            "https://ssm.us-east-1.amazonaws.com",
        ];
        let Some(Invocation::Session(a)) = detect(&argv(&full)) else {
            panic!("not a session: {full:?}");
        };
        assert_eq!(a.response_env(), Some(RESPONSE_ENV));
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.profile, "");
        assert_eq!(
            a.endpoint.as_deref(),
            Some("https://ssm.us-east-1.amazonaws.com")
        );
        let legacy = ["x", "{\"SessionId\": \"s\"}", "eu-west-1", "StartSession"];
        let Some(Invocation::Session(a)) = detect(&argv(&legacy)) else {
            panic!("legacy form not detected");
        };
        assert_eq!(a.response_env(), None);
        assert_eq!(a.request, None);
    }
}
