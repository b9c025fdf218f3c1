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
//! SSH documents run the same relay as proxy mode ([`proxy::relay`]), with ResumeSession and
//! TerminateSession sent to the argv region, profile and endpoint. Unlike the official plugin,
//! nothing is printed on stdout (it is ssh's byte stream) and failures exit non-zero.
//! Port-forwarding documents run [`forward`]'s engines on the handed-over session, shell and
//! command documents [`shell`]'s terminal handling (with the remote exit status as ours).

use std::collections::HashMap;
use std::ffi::OsString;

use serde_json::Value;

use crate::aws::{Aws, AwsOptions, SessionGrant};
use crate::cli::UsageError;
use crate::front::forward::{self, Forward};
use crate::front::{ecs, proxy, shell};
use crate::os;
use crate::proto::session::CLIENT_VERSION;
use crate::transport::websocket::{self, NetConfig};

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
        )
        .into());
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
            return Err(
                PluginError::BadHandOff("the StartSession request has no Target".into()).into(),
            );
        }
    };
    let from_ecs = ecs::is_hand_off(&resp, args.endpoint.as_deref());
    let document = request
        .get("DocumentName")
        .and_then(Value::as_str)
        .unwrap_or(match from_ecs {
            true => ecs::ECS_DOCUMENT,
            false => "SSM-SessionManagerRunShell",
        })
        .to_owned();
    let parameters = document_parameters(&request);
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let aws = Aws::load(&AwsOptions {
        profile: nonempty(&args.profile),
        region: nonempty(&args.region),
        // From ECS, argv[6] is the ECS endpoint: SSM calls go to the region's SSM endpoint.
        endpoint_url: args.endpoint.clone().filter(|_| !from_ecs),
        reason: None,
    })
    .await?;
    // From here on, a failure must not leave the session the AWS CLI started running.
    if let Err(e) = websocket::configure(NetConfig::default()) {
        return Err(super::end_failed_session(&aws, &grant.session_id, e).await);
    }
    if document.contains("PortForwarding") || parameters.contains_key("localPortNumber") {
        return port_forward(aws, grant, target, document, parameters).await;
    }
    if is_shell_document(&document) || !parameters.contains_key("portNumber") {
        // The AWS CLI's default (no --document-name) is the account's shell document.
        let plan = shell::Plan {
            remote_tty: document != shell::COMMAND_DOCUMENT,
            parameters,
            document,
        };
        let signals = os::signals();
        return shell::run_granted(aws, grant, &target, &plan, env_resume_timeout(), signals).await;
    }
    let config = proxy::driver_config(1024, env_resume_timeout(), 30);
    // Re-enables SIGINT, which the AWS CLI set to ignored before starting us (§1.3).
    let mut signals = os::signals();
    proxy::relay(aws, grant, &target, config, &mut signals).await
}

/// Serves a port-forwarding document like the official plugin: listen on `localPortNumber`
/// (0 or absent: any free port) and print where, on stdout as it does (scripts wait for
/// "Waiting for connections..."; stdout is no byte stream here). A lost connection is resumed;
/// a session the service ends (idle timeout, maximum duration, TerminateSession) ends this.
async fn port_forward(
    aws: Aws,
    grant: SessionGrant,
    target: String,
    document: String,
    mut parameters: HashMap<String, Vec<String>>,
) -> anyhow::Result<u8> {
    let param = |k: &str| parameters.get(k).and_then(|v| v.first()).cloned();
    let destination = format!(
        "{}:{}",
        param("host").unwrap_or_else(|| "localhost".into()),
        param("portNumber").unwrap_or_else(|| "80".into())
    );
    let listener = async {
        let local_port = match param("localPortNumber").filter(|p| !p.is_empty()) {
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
        Err(e) => return Err(super::end_failed_session(&aws, &grant.session_id, e).await),
    };
    let port = listener.local_addr()?.port();
    // Sessions started later must ask for the port actually bound.
    parameters.insert("localPortNumber".into(), vec![port.to_string()]);
    println!(
        "\nStarting session with SessionId: {id}\nPort {port} opened for sessionId {id}.\n\
         Waiting for connections...\n",
        id = grant.session_id
    );
    let resume_timeout = env_resume_timeout();
    let forward = Forward {
        aws,
        target,
        document,
        parameters,
        destination,
        resume_timeout,
    };
    forward::run_granted(forward, grant, listener).await
}

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

fn env_resume_timeout() -> u64 {
    std::env::var("SSM_PROXY_RESUME_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// Documents that open a shell or run a command rather than a port session.
fn is_shell_document(document: &str) -> bool {
    [
        shell::SHELL_DOCUMENT,
        shell::INTERACTIVE_DOCUMENT,
        shell::COMMAND_DOCUMENT,
        ecs::ECS_DOCUMENT,
    ]
    .contains(&document)
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
