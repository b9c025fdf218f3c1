//! The fake KMS: GenerateDataKey for the client and Decrypt for the agent, with the encryption
//! context checked exactly as KMS does, and denial for configured keys (§6).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::error::ApiError;

/// One data key handed out: (key id, plaintext, encryption context).
type Issued = (String, Vec<u8>, BTreeMap<String, String>);

/// Data keys issued, by ciphertext blob.
#[derive(Default)]
pub struct Kms {
    denied: Vec<String>,
    issued: Mutex<HashMap<Vec<u8>, Issued>>,
}

impl Kms {
    /// A KMS that refuses `denied` keys.
    pub fn new(denied: Vec<String>) -> Self {
        Self {
            denied,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// `TrentService.GenerateDataKey`.
    pub fn generate_data_key(&self, input: &Value) -> Result<Value, ApiError> {
        let key = input
            .get("KeyId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if self.denied.contains(&key) {
            return Err(ApiError::client(
                "AccessDeniedException",
                format!(
                    "User: arn:aws:iam::123456789012:user/sim is not authorized to perform: \
                     kms:GenerateDataKey on resource: {key} because no identity-based policy allows it"
                ),
            ));
        }
        let bytes = input
            .get("NumberOfBytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if bytes != 64 {
            return Err(ApiError::client(
                "ValidationException",
                "Session Manager keys are 64 bytes",
            ));
        }
        let mut plaintext = vec![0u8; 64];
        let mut blob = b"simkms:".to_vec();
        blob.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        // The sim's keys only need to differ per session; they protect nothing.
        plaintext
            .iter_mut()
            .zip(uuid::Uuid::new_v4().as_bytes().iter().cycle())
            .for_each(|(p, r)| *p = *r);
        plaintext[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let context = context_of(input);
        self.lock()
            .insert(blob.clone(), (key.clone(), plaintext.clone(), context));
        Ok(json!({
            "CiphertextBlob": BASE64.encode(&blob),
            "Plaintext": BASE64.encode(&plaintext),
            "KeyId": format!("arn:aws:kms:us-east-1:123456789012:key/{key}"),
        }))
    }

    /// The agent's Decrypt: the context must match the one the key was generated with.
    pub fn decrypt(
        &self,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        let issued = self.lock();
        let (_, plaintext, expected) = issued
            .get(blob)
            .ok_or("InvalidCiphertextException: unknown blob")?;
        if expected != context {
            return Err(format!(
                "InvalidCiphertextException: encryption context {context:?} != {expected:?}"
            ));
        }
        Ok(plaintext.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Issued>> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn context_of(input: &Value) -> BTreeMap<String, String> {
    input
        .get("EncryptionContext")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}
