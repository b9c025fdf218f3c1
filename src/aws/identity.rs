//! Who the credentials belong to, for `ssm-proxy doctor`: which provider of the default chain
//! supplied them, and the identity STS GetCallerIdentity reports.

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ssm::error::DisplayErrorContext;

use super::{Aws, AwsError};

/// Where the credentials came from.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider of the default chain that supplied them (`Environment`, `Profile`,
    /// `WebIdentityToken`, `EcsContainer`, `Ec2InstanceMetadata`, …).
    pub source: String,
    /// The access key id, shortened to its first and last four characters.
    pub access_key: String,
}

impl Aws {
    /// Resolves the credentials (without calling any AWS API).
    pub async fn identity(&self) -> Result<Identity, AwsError> {
        let provider = self
            .sdk
            .credentials_provider()
            .ok_or_else(|| self.no_credentials())?;
        // Whatever failed (nothing found, an expired SSO token, an unreachable metadata
        // service), the fix is the same; the detail is for -vv.
        let creds = provider.provide_credentials().await.map_err(|e| {
            tracing::debug!(error = %DisplayErrorContext(&e), "credentials not loaded");
            self.no_credentials()
        })?;
        // `Credentials` keeps the provider's name private; its Debug output (which redacts the
        // secret) is the only place that shows it.
        let debug = format!("{creds:?}");
        let source = debug
            .split("provider_name: \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("unknown")
            .to_owned();
        let key = creds.access_key_id();
        let access_key = match key.len() {
            n if n > 8 && key.is_ascii() => format!("{}…{}", &key[..4], &key[n - 4..]),
            _ => "****".to_owned(),
        };
        Ok(Identity { source, access_key })
    }

    fn no_credentials(&self) -> AwsError {
        AwsError::NoCredentials {
            profile: self.profile.clone(),
        }
    }

    /// STS GetCallerIdentity: the ARN the credentials act as.
    pub async fn caller_arn(&self) -> Result<String, AwsError> {
        let client = aws_sdk_sts::Client::new(&self.sdk);
        let endpoint = std::env::var("AWS_ENDPOINT_URL_STS")
            .unwrap_or_else(|_| format!("https://sts.{}.amazonaws.com", self.region));
        let out =
            client.get_caller_identity().send().await.map_err(|e| {
                super::error::classify(e, "GetCallerIdentity", &self.site(&endpoint))
            })?;
        Ok(out.arn().unwrap_or("unknown").to_owned())
    }
}
