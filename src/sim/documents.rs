//! Custom Session documents (`aws ssm create-document --document-type Session`): the
//! simulator runs one by its `sessionType` with its `properties`, `{{ name }}` placeholders
//! replaced by the StartSession parameters or the document's defaults, as the service does
//! before the agent sees them.

use serde_json::{Value, json};

use super::agent::Plugin;
use super::error::ApiError;

/// The plugin a custom document runs and the properties the agent gets (for the shell plugins,
/// in the simulator's flat form: `command`, `separateOutputStream`).
pub fn resolve(document: &Value, params: &Value) -> Result<(Plugin, Value), ApiError> {
    let plugin = match document.get("sessionType").and_then(Value::as_str) {
        Some("Port") => Plugin::Port,
        Some("Standard_Stream") => Plugin::Shell,
        Some("InteractiveCommands") => Plugin::InteractiveCommands,
        Some("NonInteractiveCommands") => Plugin::NonInteractiveCommands,
        other => {
            return Err(ApiError::client(
                "InvalidDocument",
                format!("the document's sessionType {other:?} is not a session type"),
            ));
        }
    };
    let value = |name: &str| -> Result<String, ApiError> {
        let given = params
            .get(name)
            .and_then(|v| v.get(0))
            .and_then(Value::as_str);
        let default = document
            .pointer(&format!("/parameters/{name}/default"))
            .and_then(|d| match d {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            });
        given.map(str::to_owned).or(default).ok_or_else(|| {
            ApiError::client(
                "InvalidParameters",
                format!("Parameter \"{name}\" is required by the document."),
            )
        })
    };
    let properties = substitute(document.get("properties").unwrap_or(&Value::Null), &value)?;
    let properties = match plugin {
        Plugin::Port | Plugin::Shell => properties,
        // The agent's shell properties are per platform (`linux.commands`, …).
        Plugin::InteractiveCommands | Plugin::NonInteractiveCommands => {
            let linux = properties.get("linux").unwrap_or(&properties);
            let mut flat = json!({"command": linux.get("commands").cloned().unwrap_or_default()});
            if let Some(separate) = linux.get("separateOutputStream") {
                flat["separateOutputStream"] = separate.clone();
            }
            flat
        }
    };
    Ok((plugin, properties))
}

/// `value` with every `{{ name }}` in its strings replaced.
fn substitute(
    value: &Value,
    lookup: &impl Fn(&str) -> Result<String, ApiError>,
) -> Result<Value, ApiError> {
    Ok(match value {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(open) = rest.find("{{") {
                let Some(close) = rest[open..].find("}}") else {
                    break;
                };
                out.push_str(&rest[..open]);
                out.push_str(&lookup(rest[open + 2..open + close].trim())?);
                rest = &rest[open + close + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, lookup)?)))
                .collect::<Result<_, ApiError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_parameters_then_defaults() {
        let doc = json!({
            "schemaVersion": "1.0",
            "sessionType": "Port",
            "parameters": {
                "portNumber": {"type": "String", "default": "22"},
                "localPortNumber": {"type": "String", "default": "0"}
            },
            "properties": {
                "portNumber": "{{ portNumber }}",
                "type": "LocalPortForwarding",
                "localPortNumber": "{{localPortNumber}}"
            }
        });
        let (plugin, props) = resolve(&doc, &json!({"portNumber": ["8080"]})).expect("resolve");
        assert_eq!(plugin, Plugin::Port);
        assert_eq!(
            props,
            json!({"portNumber": "8080", "type": "LocalPortForwarding", "localPortNumber": "0"})
        );
        let cmd = json!({
            "sessionType": "NonInteractiveCommands",
            "parameters": {"command": {"type": "String"}},
            "properties": {"linux": {"commands": "{{ command }}", "separateOutputStream": "true"}}
        });
        let (plugin, props) = resolve(&cmd, &json!({"command": ["uptime"]})).expect("cmd");
        assert_eq!(plugin, Plugin::NonInteractiveCommands);
        assert_eq!(
            props,
            json!({"command": "uptime", "separateOutputStream": "true"})
        );
        let missing = resolve(&cmd, &Value::Null).expect_err("no command");
        assert_eq!(missing.code, "InvalidParameters");
        assert!(resolve(&json!({"sessionType": "Foo"}), &Value::Null).is_err());
    }
}
