//! ECS Exec (protocol.md §16.2). `ssm-proxy shell ecs:CLUSTER/TASK[/CONTAINER] [-- COMMAND]`
//! asks ECS `ExecuteCommand` for the session and runs it like any shell session; `forward` and
//! the other modes reach a container through [`target::resolve`], which turns the same form into
//! the SSM target `ecs:CLUSTER_TASKID_RUNTIMEID`. Also what the session-manager-plugin entry
//! needs to recognise a hand-off from `aws ecs execute-command`: camelCase keys, and the ECS
//! endpoint in `argv[6]` where the SSM one would be.
//!
//! [`target::resolve`]: super::target::resolve

use std::collections::HashMap;

use serde_json::Value;

use crate::aws::EcsContainer;
use crate::cli::{AwsArgs, ShellArgs, UsageError};
use crate::front::settings::SessionSettings;
use crate::front::shell::{self, Plan};
use crate::os;
use crate::proto::documents;

/// What `shell ecs:…` runs without a COMMAND.
pub const DEFAULT_COMMAND: &str = "/bin/sh";

/// `ecs:CLUSTER/TASK[/CONTAINER]` split: cluster, task or service, container.
pub type EcsSpec = (String, String, Option<String>);

/// `ecs:CLUSTER/TASK[/CONTAINER]`, split; `None` for anything else (the SSM form
/// `ecs:CLUSTER_TASKID_RUNTIMEID` has no `/`).
pub fn parse(s: &str) -> Option<Result<EcsSpec, UsageError>> {
    let rest = s.strip_prefix("ecs:").filter(|r| r.contains('/'))?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        [c, t] if !c.is_empty() && !t.is_empty() => Ok((c.to_string(), t.to_string(), None)),
        [c, t, n] if !c.is_empty() && !t.is_empty() && !n.is_empty() => {
            Ok((c.to_string(), t.to_string(), Some(n.to_string())))
        }
        _ => Err(UsageError(format!(
            "target {s:?} is not ecs:CLUSTER/TASK[/CONTAINER]: write e.g. ecs:prod/web/app \
             (TASK: a task id or a service name)"
        ))),
    })
}

/// `ssm-proxy shell ecs:…`: ExecuteCommand with COMMAND (default `/bin/sh`) on the container's
/// terminal, then the same terminal handling as any shell session.
pub async fn shell(
    args: ShellArgs,
    aws_args: AwsArgs,
    (cluster, task, container): EcsSpec,
) -> anyhow::Result<u8> {
    if args.document.is_some() || !args.parameters.is_empty() {
        return Err(UsageError(
            "--document and --parameter do not apply to ecs: targets: ECS Exec runs one \
             command on the container's terminal; give it after --"
                .into(),
        )
        .into());
    }
    let command =
        shell::remote_command(&args.command).unwrap_or_else(|| DEFAULT_COMMAND.to_owned());
    let plan = Plan {
        document: documents::ECS_EXEC.to_owned(),
        parameters: HashMap::from([("command".to_owned(), vec![command.clone()])]),
        remote_tty: true,
    };
    let mut signals = os::signals();
    let (aws, _) = super::connect(&aws_args).await?;
    let start = async {
        let target: EcsContainer = aws
            .ecs_container(&cluster, &task, container.as_deref())
            .await?;
        tracing::info!(target = %target.target(), container = %target.container, "ECS container");
        let grant = aws.ecs_execute_command(&target, &command).await?;
        anyhow::Ok((target.target(), grant))
    };
    let (target, grant) = tokio::select! {
        r = start => r?,
        sig = signals.recv() => return Ok(os::signal_exit_code(sig.unwrap_or(os::SIGINT))),
    };
    let settings = SessionSettings::from_resume(&args.resume);
    shell::run_session(aws, grant, &target, &plan, &settings, signals).await
}

/// A JSON field matched case-insensitively, as the official plugin's Go decoder matches them:
/// `aws ssm start-session` sends `SessionId`, `aws ecs execute-command` `sessionId`.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).or_else(|| {
        v.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Whether a plugin hand-off comes from `aws ecs execute-command`: ECS's camelCase response,
/// or an ECS endpoint in `argv[6]`. Then `argv[6]` is no SSM endpoint: ResumeSession and
/// TerminateSession go to the region's SSM endpoint instead.
pub fn is_hand_off(response: &Value, endpoint: Option<&str>) -> bool {
    let camel = response.get("sessionId").is_some() && response.get("SessionId").is_none();
    let host = endpoint
        .and_then(|e| e.split("://").nth(1))
        .unwrap_or_default();
    camel || host.starts_with("ecs.") || host.starts_with("ecs-fips.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecs_targets_split() {
        let p = |s| parse(s).map(|r| r.map_err(|e| e.0));
        assert_eq!(p("i-0123"), None);
        assert_eq!(p("ecs:prod_abc_def-1"), None);
        assert_eq!(
            p("ecs:prod/web"),
            Some(Ok(("prod".into(), "web".into(), None)))
        );
        assert_eq!(
            p("ecs:prod/0123abcd/app"),
            Some(Ok(("prod".into(), "0123abcd".into(), Some("app".into()))))
        );
        for bad in ["ecs:/web", "ecs:prod/", "ecs:a/b/c/d", "ecs:a/b/"] {
            assert!(matches!(p(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn hand_offs_from_ecs_are_recognised() {
        let camel: Value =
            serde_json::json!({"sessionId": "s", "streamUrl": "u", "tokenValue": "t"});
        let pascal: Value =
            serde_json::json!({"SessionId": "s", "StreamUrl": "u", "TokenValue": "t"});
        assert_eq!(
            field(&camel, "TokenValue").and_then(Value::as_str),
            Some("t")
        );
        assert!(is_hand_off(&camel, None));
        assert!(!is_hand_off(
            &pascal,
            Some("https://ssm.us-east-1.amazonaws.com")
        ));
        assert!(is_hand_off(
            &pascal,
            Some("https://ecs.eu-west-1.amazonaws.com")
        ));
    }
}
