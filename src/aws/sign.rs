//! SigV4 for the data-channel websocket upgrade, as the official client signs it since
//! 1.2.764.0 (§16.1): the `GET` of the StreamUrl, service `ssmmessages`, the session's region,
//! an empty payload, headers `host` and `x-amz-date` (plus `x-amz-security-token` with temporary
//! credentials). A presigned StreamUrl (`X-Amz-*` query parameters) is left alone. The signer is
//! the SDK's own `aws-sigv4`; the credentials are the API calls' provider chain, refreshed
//! before they expire.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::{Aws, AwsError};

/// The signing name of the message gateway.
pub const SERVICE: &str = "ssmmessages";

/// Credentials closer than this to their expiry are fetched again before signing.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The query parameters of a presigned URL (any one is enough, as in the official client).
const PRESIGNED: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// Whether `url` already carries a SigV4 query signature.
pub fn is_presigned(url: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    query
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .any(|k| PRESIGNED.iter().any(|p| p.eq_ignore_ascii_case(k)))
}

/// The headers that sign a `GET` of `url` sent with `Host: host` at `time`.
pub fn upgrade_headers(
    credentials: &Credentials,
    region: &str,
    url: &str,
    host: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", host)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Cached credentials for signing, shared by the clones of one [`Aws`].
pub type SigningCache = std::sync::Arc<tokio::sync::Mutex<Option<Credentials>>>;

impl Aws {
    /// SigV4 headers for the websocket upgrade to `url` (whose `Host` header is `host`), or none
    /// when the URL is presigned. Credentials come from the same provider chain as the API
    /// calls, fetched again when they are within 5 minutes of expiring.
    pub async fn sign_upgrade(
        &self,
        url: &str,
        host: &str,
    ) -> Result<Vec<(String, String)>, AwsError> {
        if is_presigned(url) {
            return Ok(Vec::new());
        }
        let credentials = self.signing_credentials().await?;
        upgrade_headers(&credentials, &self.region, url, host, SystemTime::now())
            .map_err(|e| AwsError::Other(format!("could not sign the data-channel request: {e}")))
    }

    async fn signing_credentials(&self) -> Result<Credentials, AwsError> {
        let mut cached = self.signing.lock().await;
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE)
        };
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        let provider = self.sdk.credentials_provider().ok_or_else(|| {
            AwsError::Other(
                "no credentials provider to sign the data channel with: configure AWS credentials"
                    .into(),
            )
        })?;
        let c = provider.provide_credentials().await.map_err(|e| {
            AwsError::Other(format!(
                "could not load AWS credentials to sign the data channel: {}: check the profile \
                 or run `aws sso login`",
                aws_sdk_ssm::error::DisplayErrorContext(&e)
            ))
        })?;
        *cached = Some(c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_are_recognised() {
        assert!(is_presigned(
            "wss://h/v1/data-channel/s?role=publish_subscribe&X-Amz-Signature=ab"
        ));
        assert!(is_presigned("wss://h/p?x-amz-credential=a"));
        assert!(!is_presigned(
            "wss://h/v1/data-channel/s?role=publish_subscribe&cell-number=AAA"
        ));
        assert!(!is_presigned("wss://h/v1/data-channel/s"));
    }

    #[test]
    fn upgrade_is_signed_for_ssmmessages() {
        let c = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let h = upgrade_headers(
            &c,
            "eu-west-1",
            "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe",
            "ssmmessages.eu-west-1.amazonaws.com",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_900_000),
        )
        .expect("sign");
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        let auth = get("authorization").expect("authorization");
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251205/eu-west-1/ssmmessages/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, Signature="
        ));
        assert_eq!(get("x-amz-date"), Some("20251205T020000Z"));
        assert_eq!(get("x-amz-security-token"), Some("tok"));
        assert_eq!(get("x-amz-content-sha256"), None);
    }
}
