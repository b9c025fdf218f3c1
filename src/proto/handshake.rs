//! Answering the agent's HandshakeRequest (§5) and choosing the client mode from it (§8.1).

use serde_json::Value;

use super::payload::{
    HandshakeRequest, HandshakeResponse, ProcessedAction, SessionTypeParams, status,
};

/// What the client does with the data channel once the handshake is over (§8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Port session without `type` (AWS-StartSSHSession): one byte stream, stdin ⇄ stdout.
    Stream,
    /// LocalPortForwarding with an agent new enough for smux (> 3.0.196.0).
    Mux {
        /// Whether the smux keepalive must run (agent ≤ 3.1.1511.0).
        keepalive: bool,
    },
    /// LocalPortForwarding with an old agent: one TCP connection at a time.
    Basic,
    /// Standard_Stream / InteractiveCommands / NonInteractiveCommands.
    Shell,
}

/// The result of evaluating a HandshakeRequest.
#[derive(Debug)]
pub struct Evaluated {
    /// Response to send (next client sequence number).
    pub response: HandshakeResponse,
    /// The mode chosen, if the SessionType action was understood.
    pub kind: Option<SessionKind>,
    /// KMS key requested by a `KMSEncryption` action, answered later by the caller.
    pub kms_key_id: Option<String>,
}

/// Answers every requested action, in order (§5.3). `KMSEncryption` is answered as unsupported
/// when `kms_result` is `None`, else with that ActionResult.
pub fn evaluate(
    req: &HandshakeRequest,
    client_version: &str,
    kms_result: Option<Value>,
) -> Evaluated {
    let mut kind = None;
    let mut kms_key_id = None;
    let mut errors = Vec::new();
    let mut actions = Vec::new();
    for action in &req.requested_client_actions {
        let mut out = ProcessedAction {
            action_type: action.action_type.clone(),
            action_status: status::SUCCESS,
            action_result: Value::Null,
            error: String::new(),
        };
        match action.action_type.as_str() {
            "SessionType" => {
                let params: SessionTypeParams =
                    super::json::from_value(action.action_parameters.clone()).unwrap_or_default();
                kind = session_kind(&params, &req.agent_version);
                if kind.is_none() {
                    out.action_status = status::FAILED;
                    out.error = format!("Unknown session type {}", params.session_type);
                }
            }
            "KMSEncryption" => {
                kms_key_id = super::json::get(&action.action_parameters, "KMSKeyId")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match &kms_result {
                    Some(result) => out.action_result = result.clone(),
                    None => {
                        out.action_status = status::UNSUPPORTED;
                        out.error = "KMS encryption is not supported for this session".into();
                    }
                }
            }
            other => {
                // The official plugin answers with status 0 here (a bug, §5.3); 3 is the honest code.
                out.action_status = status::UNSUPPORTED;
                out.error = format!("Unsupported action {other}");
            }
        }
        if !out.error.is_empty() {
            errors.push(out.error.clone());
        }
        actions.push(out);
    }
    let response = HandshakeResponse {
        client_version: client_version.to_owned(),
        processed_client_actions: actions,
        errors: (!errors.is_empty()).then_some(errors),
    };
    Evaluated {
        response,
        kind,
        kms_key_id,
    }
}

/// Agents newer than this multiplex port forwarding with smux (§5.5); older ones forward one
/// connection at a time.
const MUX_AGENT_VERSION: &str = "3.0.196.0";
/// Agents up to this one expect the client's smux keepalive pings (§5.5).
const KEEPALIVE_AGENT_VERSION: &str = "3.1.1511.0";

fn session_kind(params: &SessionTypeParams, agent_version: &str) -> Option<SessionKind> {
    match params.session_type.as_str() {
        "Standard_Stream" | "InteractiveCommands" | "NonInteractiveCommands" => {
            Some(SessionKind::Shell)
        }
        "Port" => {
            let kind = super::json::get(&params.properties, "type").and_then(Value::as_str);
            Some(match kind {
                Some("LocalPortForwarding")
                    if version_greater(agent_version, MUX_AGENT_VERSION) =>
                {
                    SessionKind::Mux {
                        keepalive: !version_greater(agent_version, KEEPALIVE_AGENT_VERSION),
                    }
                }
                Some("LocalPortForwarding") => SessionKind::Basic,
                _ => SessionKind::Stream,
            })
        }
        _ => None,
    }
}

/// The official client's comparison (§5.5): same number of numeric components, strictly
/// greater; anything unparsable is "not greater".
pub fn version_greater(a: &str, b: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|c| c.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) if a.len() == b.len() && !a.is_empty() => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_vectors_of_the_official_tests() {
        for v in [
            "1.2.3.4",
            "2.3.4.5",
            "3.0.195.100",
            "2.99.1000.0",
            "",
            "3,0.0.0",
            "3.1",
        ] {
            assert!(!version_greater(v, "3.0.196.0"), "{v}");
        }
        for v in ["3.1.0.0", "3.0.197.0", "3.0.196.1", "4.0.0.0"] {
            assert!(version_greater(v, "3.0.196.0"), "{v}");
        }
        assert!(!version_greater("3.1.1476.0", "3.1.1511.0"));
        assert!(version_greater("3.1.1600.0", "3.1.1511.0"));
    }

    #[test]
    fn answers_every_action_in_order() {
        let req: HandshakeRequest = serde_json::from_str(
            r#"{"AgentVersion":"3.1.0.0","RequestedClientActions":[
              {"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"80","type":"LocalPortForwarding"}}},
              {"ActionType":"Foo","ActionParameters":{}}]}"#,
        )
        .unwrap();
        let e = evaluate(&req, "1.2.707.0", None);
        assert_eq!(e.kind, Some(SessionKind::Mux { keepalive: true }));
        let types: Vec<_> = e
            .response
            .processed_client_actions
            .iter()
            .map(|a| a.action_status)
            .collect();
        assert_eq!(types, [status::SUCCESS, status::UNSUPPORTED]);
        assert_eq!(
            e.response.errors,
            Some(vec!["Unsupported action Foo".to_owned()])
        );
    }
}
