//! JSON bodies carried by frames and by the first websocket text message (§2.2, §4.2, §5.3, §9.1).
//! Field order follows the official Go structs so that what we send matches them byte for byte;
//! parsing is lenient (unknown keys ignored, missing keys defaulted).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// First websocket text message after the upgrade (§2.2). Its Debug output hides the token.
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct OpenDataChannelInput {
    /// Always "1.0".
    pub message_schema_version: String,
    /// Fresh UUID per (re)open.
    pub request_id: String,
    /// StartSession / ResumeSession token.
    pub token_value: String,
    /// UUID fixed for the life of the process.
    pub client_id: String,
    /// Client version string.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_version: String,
}

impl std::fmt::Debug for OpenDataChannelInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDataChannelInput")
            .field("message_schema_version", &self.message_schema_version)
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("client_version", &self.client_version)
            .finish()
    }
}

/// Body of an `acknowledge` frame (§4.2).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Acknowledge {
    /// MessageType of the acked message.
    pub acknowledged_message_type: String,
    /// Canonical text of the acked message's id.
    pub acknowledged_message_id: String,
    /// The acked sequence number: the only field receivers match on.
    pub acknowledged_message_sequence_number: i64,
    /// Always true.
    pub is_sequential_message: bool,
}

/// One requested action of a HandshakeRequest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedAction {
    /// "SessionType" or "KMSEncryption" (or something we do not know).
    pub action_type: String,
    /// Action-specific parameters.
    pub action_parameters: Value,
}

/// HandshakeRequest, agent → client (§5.3).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeRequest {
    /// Agent version, decides mux vs basic forwarding (§5.5).
    pub agent_version: String,
    /// Actions to answer, in order.
    pub requested_client_actions: Vec<RequestedAction>,
}

/// Parameters of the SessionType action.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionTypeParams {
    /// "Port", "Standard_Stream", "InteractiveCommands", "NonInteractiveCommands".
    pub session_type: String,
    /// Document properties after substitution (`null` for shells).
    pub properties: Value,
}

/// ActionStatus values (§5.3).
pub mod status {
    /// The action was performed.
    pub const SUCCESS: i32 = 1;
    /// The action failed.
    pub const FAILED: i32 = 2;
    /// The action is not supported.
    pub const UNSUPPORTED: i32 = 3;
}

/// One processed action of a HandshakeResponse.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProcessedAction {
    /// Echo of the requested ActionType.
    pub action_type: String,
    /// One of [`status`].
    pub action_status: i32,
    /// Action-specific result or null.
    pub action_result: Value,
    /// Error text, empty on success.
    pub error: String,
}

/// HandshakeResponse, client → agent (§5.3).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeResponse {
    /// Our version; the agent derives mux/keepalive from it (§5.5).
    pub client_version: String,
    /// One entry per requested action, in request order.
    pub processed_client_actions: Vec<ProcessedAction>,
    /// `null` when empty.
    pub errors: Option<Vec<String>>,
}

/// HandshakeComplete, agent → client (§5.3).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeComplete {
    /// Nanoseconds.
    pub handshake_time_to_complete: i64,
    /// Shown to the user (on stderr, never stdout).
    pub customer_message: String,
}

/// Body of a service `channel_closed` (§9.1).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ChannelClosed {
    /// Message id text.
    pub message_id: String,
    /// Free-form date text.
    pub created_date: String,
    /// Target id.
    pub destination_id: String,
    /// Session id.
    pub session_id: String,
    /// "channel_closed".
    pub message_type: String,
    /// 1.
    pub schema_version: i64,
    /// Failure text; empty on a normal end.
    pub output: String,
}

/// Terminal size, PayloadType Size (§3.6).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

#[cfg(test)]
mod tests {

    #[test]
    fn open_data_channel_debug_hides_the_token() {
        let open = OpenDataChannelInput {
            token_value: "secret-token".into(),
            request_id: "r-1".into(),
            ..Default::default()
        };
        let text = format!("{open:?}");
        assert!(
            !text.contains("secret-token") && text.contains("r-1"),
            "{text}"
        );
    }
    use super::*;

    #[test]
    fn handshake_response_matches_the_official_bytes() {
        let r = HandshakeResponse {
            client_version: "1.2.0.0".into(),
            processed_client_actions: vec![ProcessedAction {
                action_type: "SessionType".into(),
                action_status: status::SUCCESS,
                action_result: Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
    }

    #[test]
    fn channel_closed_parses_leniently() {
        let c: ChannelClosed =
            serde_json::from_str(r#"{"Output":"bye","MessageSchemaVersion":"1.0"}"#).unwrap();
        assert_eq!(c.output, "bye");
        assert_eq!(
            serde_json::to_string(&Size { cols: 80, rows: 24 }).unwrap(),
            r#"{"cols":80,"rows":24}"#
        );
    }
}
