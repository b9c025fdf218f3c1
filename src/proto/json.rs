//! JSON decoding that matches struct field names case-insensitively, as Go's `encoding/json`
//! does (§16.3): the official peers accept `sessionId` for `SessionId`, so we must too. Keys of
//! maps (`serde_json::Value`, `HashMap`) are kept as sent; only struct fields are folded, using
//! the field names serde hands to `deserialize_struct`.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;

/// Decodes `bytes` into `T`, matching field names case-insensitively (an exact match wins).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    from_value(serde_json::from_slice(bytes)?)
}

/// [`from_slice`] for text.
#[cfg(test)]
fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    from_value(serde_json::from_str(text)?)
}

/// Decodes an already parsed value, folding struct field names.
pub fn from_value<T: DeserializeOwned>(value: Value) -> serde_json::Result<T> {
    T::deserialize(Fold(value))
}

/// The member of a JSON object named `key`, compared case-insensitively (an exact match wins).
pub fn get<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A JSON value whose struct field names are matched case-insensitively when deserialized.
struct Fold(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Fold {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Fold {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                visitor.visit_seq(SeqDeserializer::new(items.into_iter().map(Fold)))
            }
            Value::Object(map) => visitor.visit_map(MapDeserializer::new(
                map.into_iter().map(|(k, v)| (k, Fold(v))),
            )),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let Value::Object(map) = self.0 else {
            return self.0.deserialize_struct(name, fields, visitor);
        };
        let folded: Vec<(String, Fold)> = map
            .into_iter()
            .map(|(k, v)| (k, Fold(v)))
            .map(|(k, v)| {
                let exact = fields.contains(&k.as_str());
                let name = fields
                    .iter()
                    .find(|f| !exact && f.eq_ignore_ascii_case(&k))
                    .map(|f| (*f).to_owned());
                (name.unwrap_or(k), v)
            })
            .collect();
        visitor.visit_map(MapDeserializer::new(folded.into_iter()))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Fold(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::payload::{Acknowledge, HandshakeRequest};

    #[test]
    fn field_names_match_case_insensitively_like_go() {
        let ack: Acknowledge = from_str(
            r#"{"acknowledgedMessageType":"output_stream_data","ACKNOWLEDGEDMESSAGESEQUENCENUMBER":7}"#,
        )
        .unwrap();
        assert_eq!(ack.acknowledged_message_sequence_number, 7);
        assert_eq!(ack.acknowledged_message_type, "output_stream_data");
        let req: HandshakeRequest = from_str(
            r#"{"agentVersion":"3.3.1.0","requestedClientActions":[{"actionType":"SessionType","actionParameters":{"sessionType":"Port"}}]}"#,
        )
        .unwrap();
        assert_eq!(req.agent_version, "3.3.1.0");
        assert_eq!(req.requested_client_actions[0].action_type, "SessionType");
        // Map keys stay as sent; `get` folds them on lookup.
        let params = &req.requested_client_actions[0].action_parameters;
        assert_eq!(get(params, "SessionType"), Some(&Value::from("Port")));
    }
}
