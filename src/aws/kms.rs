//! KMS GenerateDataKey for session encryption (§6): 64 bytes under the key the agent names,
//! bound to the session by its encryption context.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use zeroize::Zeroizing;

use super::{Aws, AwsError};

/// A data key: the plaintext for us, the ciphertext blob for the agent.
pub struct DataKey {
    /// 64 bytes, never logged, overwritten with zeros when dropped (right after the session's
    /// cipher is keyed with it).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// What the agent decrypts with KMS.
    pub ciphertext: Vec<u8>,
}

impl Aws {
    /// GenerateDataKey(NumberOfBytes = 64) with `context`, bounded so a dead KMS fails in seconds.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        context: HashMap<String, String>,
    ) -> Result<DataKey, AwsError> {
        let kms = aws_sdk_kms::Client::new(&self.sdk);
        let call = kms
            .generate_data_key()
            .key_id(key_id)
            .number_of_bytes(64)
            .set_encryption_context(Some(context))
            .send();
        let kms_error = |why: String| AwsError::Kms {
            key: key_id.to_owned(),
            why,
        };
        let endpoint = std::env::var("AWS_ENDPOINT_URL_KMS")
            .unwrap_or_else(|_| format!("https://kms.{}.amazonaws.com", self.region));
        let unreachable = |detail: String| AwsError::KmsUnreachable {
            key: key_id.to_owned(),
            endpoint: endpoint.clone(),
            detail,
        };
        let out = match tokio::time::timeout(Duration::from_secs(15), call).await {
            Err(_) => return Err(unreachable("no answer within 15 s".into())),
            Ok(Err(e)) => {
                let why = match &e {
                    SdkError::ServiceError(s) => format!(
                        "{}: {}",
                        s.err().code().unwrap_or("error"),
                        s.err().message().unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                return Err(
                    match super::error::classify(e, key_id, &self.site(&endpoint)) {
                        AwsError::Unreachable { detail, .. } => unreachable(detail),
                        e @ (AwsError::NoCredentials { .. } | AwsError::BadCredentials { .. }) => e,
                        other => kms_error(if why.is_empty() {
                            other.to_string()
                        } else {
                            why.trim_end_matches(['.', ' ', ':']).to_owned()
                        }),
                    },
                );
            }
            Ok(Ok(out)) => out,
        };
        match (out.plaintext, out.ciphertext_blob) {
            (Some(p), Some(c)) => Ok(DataKey {
                plaintext: Zeroizing::new(p.into_inner()),
                ciphertext: c.into_inner(),
            }),
            _ => Err(kms_error("GenerateDataKey returned no key".into())),
        }
    }
}
