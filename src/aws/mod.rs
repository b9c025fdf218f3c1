//! The control plane through the real AWS SDK: configuration (profile, region, credentials,
//! endpoint overrides), StartSession, ResumeSession and TerminateSession, and the mapping of
//! every failure to one line that names the cause and the fix. Beside them: the managed-node
//! inventory (`inventory`), EC2 Instance Connect (`eic`), ECS Exec (`ecs`) and the caller
//! identity (`identity`).

mod ecs;
mod eic;
mod error;
mod http;
mod identity;
mod inventory;
mod kms;

pub use http::ca_bundle;

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ssm::config::Region;

pub use ecs::EcsContainer;
pub use error::AwsError;
pub use identity::Identity;
pub use inventory::ManagedNode;
pub use kms::DataKey;

/// Where the AWS configuration comes from, as the user gave it.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `--profile` (else AWS_PROFILE, else "default").
    pub profile: Option<String>,
    /// `--region` (else AWS_REGION / AWS_DEFAULT_REGION, else the profile's region).
    pub region: Option<String>,
    /// `--endpoint-url` for SSM (else AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL / shared config).
    pub endpoint_url: Option<String>,
}

/// What StartSession and ResumeSession hand out.
#[derive(Clone)]
pub struct SessionGrant {
    /// Session id.
    pub session_id: String,
    /// Short-lived data-channel token (never logged).
    pub token: String,
    /// Websocket URL, used verbatim.
    pub stream_url: String,
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGrant")
            .field("session_id", &self.session_id)
            .field("stream_url", &self.stream_url)
            .finish_non_exhaustive()
    }
}

/// SSM client plus what error messages need to mention.
#[derive(Clone, Debug)]
pub struct Aws {
    ssm: aws_sdk_ssm::Client,
    region: String,
    endpoint: String,
    /// The loaded configuration, for the clients of other services (EC2 Instance Connect, STS).
    sdk: aws_config::SdkConfig,
}

impl Aws {
    /// Resolves region and credentials providers without touching the network, so a missing
    /// region fails at once instead of after the SDK's 3 s instance-metadata probe.
    pub async fn load(opts: &AwsOptions) -> Result<Self, AwsError> {
        let region = match &opts.region {
            Some(r) => Some(Region::new(r.clone())),
            None => {
                let mut profile = ProfileFileRegionProvider::builder();
                if let Some(p) = &opts.profile {
                    profile = profile.profile_name(p);
                }
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(profile.build())
                    .region()
                    .await
            }
        };
        let region = region.ok_or(AwsError::NoRegion)?;
        // The metadata service is the chain's last resort; off EC2 it must not cost seconds.
        let imds = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_millis(500))
            .max_attempts(1)
            .build();
        let http = http::client()?;
        let mut chain = DefaultCredentialsChain::builder()
            .configure(ProviderConfig::default().with_http_client(http.clone()))
            .region(region.clone())
            .imds_client(imds);
        if let Some(p) = &opts.profile {
            chain = chain.profile_name(p);
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region.clone())
            .credentials_provider(chain.build().await)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(100)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            );
        if let Some(p) = &opts.profile {
            loader = loader.profile_name(p);
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_ssm::config::Builder::from(&sdk);
        if let Some(url) = &opts.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        let conf = conf.build();
        let endpoint = opts
            .endpoint_url
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_SSM").ok())
            .unwrap_or_else(|| format!("https://ssm.{region}.amazonaws.com"));
        Ok(Self {
            ssm: aws_sdk_ssm::Client::from_conf(conf),
            region: region.to_string(),
            endpoint,
            sdk,
        })
    }

    /// The resolved region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The SSM endpoint in use (for messages and `doctor`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// StartSession with a document and its parameters.
    pub async fn start_session(
        &self,
        target: &str,
        document: &str,
        parameters: HashMap<String, Vec<String>>,
    ) -> Result<SessionGrant, AwsError> {
        let out = self
            .ssm
            .start_session()
            .target(target)
            .document_name(document)
            .set_parameters((!parameters.is_empty()).then_some(parameters))
            .send()
            .await
            .map_err(|e| self.classify(e, target))?;
        grant(out.session_id, out.token_value, out.stream_url).ok_or_else(|| {
            AwsError::Other("StartSession returned no session id, token or stream URL".into())
        })
    }

    /// ResumeSession. `Ok(None)` means the session is gone (no token, §1.1).
    pub async fn resume_session(&self, session_id: &str) -> Result<Option<SessionGrant>, AwsError> {
        let out = self
            .ssm
            .resume_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| self.classify(e, session_id))?;
        // An empty StreamUrl means "keep the old one" (§10).
        let id = out.session_id.or_else(|| Some(session_id.to_owned()));
        Ok(grant(
            id,
            out.token_value,
            Some(out.stream_url.unwrap_or_default()),
        ))
    }

    /// TerminateSession, bounded so that exiting never hangs on it.
    pub async fn terminate_session(&self, session_id: &str) -> Result<(), AwsError> {
        let call = self.ssm.terminate_session().session_id(session_id).send();
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.classify(e, session_id)),
            Err(_) => Err(AwsError::Other("TerminateSession timed out".into())),
        }
    }

    fn classify<E, R>(&self, err: aws_sdk_ssm::error::SdkError<E, R>, subject: &str) -> AwsError
    where
        E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        error::classify(err, subject, &self.region, &self.endpoint)
    }
}

fn grant(id: Option<String>, token: Option<String>, url: Option<String>) -> Option<SessionGrant> {
    match (id, token, url) {
        (Some(session_id), Some(token), Some(stream_url)) if !token.is_empty() => {
            Some(SessionGrant {
                session_id,
                token,
                stream_url,
            })
        }
        _ => None,
    }
}
