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
mod sign;

pub use sign::{SERVICE as SIGNING_SERVICE, is_presigned, upgrade_headers};

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
use aws_sdk_ssm::config::retry::{RetryPartition, TokenBucket};

use crate::net::Net;

pub use ecs::EcsContainer;
pub use error::AwsError;
pub use identity::Identity;
pub use inventory::ManagedNode;
pub use kms::DataKey;

/// How long StartSession may take before a notice says what is being waited for.
const SLOW_CALL: Duration = Duration::from_secs(5);

/// Where the AWS configuration comes from, as the user gave it.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `--profile` (else AWS_PROFILE, else "default").
    pub profile: Option<String>,
    /// `--region` (else AWS_REGION / AWS_DEFAULT_REGION, else the profile's region).
    pub region: Option<String>,
    /// `--endpoint-url` for SSM (else AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL / shared config).
    pub endpoint_url: Option<String>,
    /// `--reason`: StartSession's Reason, shown in the session history and CloudTrail.
    pub reason: Option<String>,
    /// Proxies and trust roots, for the SDK's calls and the data channel alike.
    pub net: Net,
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
    reason: Option<String>,
    /// The profile named (--profile, AWS_PROFILE), for the fixes of credential failures.
    profile: Option<String>,
    /// The loaded configuration, for the clients of other services (EC2 Instance Connect, STS).
    sdk: aws_config::SdkConfig,
    /// Sessions whose TerminateSession did not go through in time (throttled, unreachable):
    /// [`Aws::terminate_pending`] retries them once the local side is released.
    unterminated: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Credentials that sign the data-channel upgrade (`sign.rs`).
    signing: sign::SigningCache,
    /// The network settings the SDK's client uses, for the data channel.
    net: Net,
}

/// Attempts per SSM call. Each `ssh` is its own process with one StartSession, so the SDK's
/// adaptive mode (a client-side rate limiter that learns within one process) never gets to
/// learn; standard mode with jittered exponential backoff spreads a fleet's retries instead.
const MAX_ATTEMPTS: u32 = 20;

/// The SDK's retry budget for SSM calls (its token bucket): a retry after a throttle costs 2,
/// after any other error (connection refused, timeout, 5xx) 20, so throttling is retried up to
/// `MAX_ATTEMPTS` times (a minute or two of backoff: 200 ssh started at once against a limit of
/// 5 calls a second need that) while a dead endpoint still fails after three attempts.
fn retry_budget(name: &'static str) -> RetryPartition {
    RetryPartition::custom(name)
        .token_bucket(
            TokenBucket::builder()
                .capacity(40)
                .retry_cost(20)
                .timeout_retry_cost(20)
                .throttling_retry_cost(2)
                .build(),
        )
        .build()
}

/// SSM's retry settings: backoff from 0.5 s (jittered, doubling) to at most 10 s.
fn ssm_retry() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(10))
}

/// Timeouts for SSM calls: one attempt 10 s, a call with all its retries 2 minutes.
fn ssm_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(120))
        .build()
}

impl Aws {
    /// Resolves region and credentials providers without touching the network, so a missing
    /// region fails at once instead of after the SDK's 3 s instance-metadata probe.
    pub async fn load(opts: &AwsOptions) -> Result<Self, AwsError> {
        let named = opts
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()));
        if let Some(name) = &named {
            check_profile_exists(name)?;
        }
        let region = region(opts).await?;
        let sdk = sdk_config(opts, &region).await?;
        let mut conf = aws_sdk_ssm::config::Builder::from(&sdk)
            .retry_config(ssm_retry())
            .retry_partition(retry_budget("ssm-proxy-ssm"))
            .timeout_config(ssm_timeouts());
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
            reason: opts.reason.clone(),
            profile: named,
            sdk,
            unterminated: Default::default(),
            signing: Default::default(),
            net: opts.net.clone(),
        })
    }

    /// The network settings (proxies, trust roots, data-channel endpoint override).
    pub fn net(&self) -> &Net {
        &self.net
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
        let call = self
            .ssm
            .start_session()
            .target(target)
            .document_name(document)
            .set_parameters((!parameters.is_empty()).then_some(parameters))
            .set_reason(self.reason.clone())
            .send();
        tokio::pin!(call);
        // An endpoint that accepts and never answers takes the whole operation timeout.
        let out = tokio::select! {
            out = &mut call => out,
            () = tokio::time::sleep(SLOW_CALL) => {
                let (endpoint, waited) = (&self.endpoint, SLOW_CALL.as_secs());
                tracing::warn!(target: "ssm_proxy::notice", "waiting for {endpoint} to answer StartSession ({waited} s so far)…");
                call.await
            }
        }
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

    /// TerminateSession, bounded so that exiting never hangs on it. A call that was throttled
    /// or timed out is remembered for [`Aws::terminate_pending`].
    pub async fn terminate_session(&self, session_id: &str) -> Result<(), AwsError> {
        let call = self.ssm.terminate_session().session_id(session_id).send();
        let result = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.classify(e, session_id)),
            Err(_) => Err(AwsError::Other("TerminateSession timed out".into())),
        };
        if result.as_ref().is_err_and(AwsError::is_transient) {
            self.lock_unterminated().push(session_id.to_owned());
        }
        result
    }

    /// Whether some TerminateSession still has to be retried.
    pub fn has_pending_terminations(&self) -> bool {
        !self.lock_unterminated().is_empty()
    }

    /// Retries the TerminateSession calls that did not go through, each with the SDK's full
    /// retry budget (a bucket of its own) and up to 2 minutes; call it after the local side is
    /// released, so that nobody waits for it. Failures are only logged.
    pub async fn terminate_pending(&self) {
        let pending = std::mem::take(&mut *self.lock_unterminated());
        for id in pending {
            let patient = aws_sdk_ssm::config::Builder::default()
                .retry_partition(retry_budget("ssm-proxy-terminate"))
                .timeout_config(ssm_timeouts());
            let result = self
                .ssm
                .terminate_session()
                .session_id(&id)
                .customize()
                .config_override(patient)
                .send()
                .await;
            match result {
                Ok(_) => tracing::info!(session = %id, "session terminated on retry"),
                Err(e) => {
                    let e = self.classify(e, &id);
                    tracing::warn!(session = %id, error = %e, "TerminateSession failed");
                }
            }
        }
    }

    fn lock_unterminated(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.unterminated.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn classify<E, R>(&self, err: aws_sdk_ssm::error::SdkError<E, R>, subject: &str) -> AwsError
    where
        E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        error::classify(err, subject, &self.site(&self.endpoint))
    }

    /// Where a call to `endpoint` goes, for the messages of its failures.
    fn site<'a>(&'a self, endpoint: &'a str) -> error::Site<'a> {
        error::Site {
            region: &self.region,
            endpoint,
            profile: self.profile.as_deref(),
        }
    }
}

/// A named profile must be in the config or credentials file, else every later message (no
/// region, no credentials) would send the user looking in the wrong place. `default` may
/// exist nowhere: the environment can supply everything.
fn check_profile_exists(name: &str) -> Result<(), AwsError> {
    if name == "default" {
        return Ok(());
    }
    let file = |var: &str, home_rel: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(home_rel)))
    };
    let config = file("AWS_CONFIG_FILE", ".aws/config");
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let read = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    if profile_sections(&read(&config), true).any(|p| p == name)
        || profile_sections(&read(&credentials), false).any(|p| p == name)
    {
        return Ok(());
    }
    let shown = |p: Option<std::path::PathBuf>| p.map(|p| p.display().to_string());
    let mut files: Vec<String> = [shown(config), shown(credentials)]
        .into_iter()
        .flatten()
        .collect();
    files.dedup();
    let files = files.join(" or ");
    Err(AwsError::NoProfile(name.to_owned(), files))
}

/// Profile names in an AWS config (`[profile NAME]`, `[default]`) or credentials (`[NAME]`)
/// file.
fn profile_sections(text: &str, config: bool) -> impl Iterator<Item = &str> {
    text.lines().filter_map(move |l| {
        let inner = l.trim().strip_prefix('[')?.split(']').next()?.trim();
        match inner.strip_prefix("profile") {
            Some(rest) if config && rest.starts_with([' ', '\t']) => Some(rest.trim()),
            _ if config && inner != "default" => None,
            _ => Some(inner),
        }
    })
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

/// The region: the flag, else the environment, else the profile; never the metadata service,
/// so a user who gave one waits for nothing.
async fn region(opts: &AwsOptions) -> Result<Region, AwsError> {
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
    region.ok_or(AwsError::NoRegion)
}

/// The SDK's shared configuration: our HTTP client (proxies, trust roots), the credential
/// chain with a metadata service that gives up fast, and our retry and timeout limits.
async fn sdk_config(opts: &AwsOptions, region: &Region) -> Result<aws_config::SdkConfig, AwsError> {
    // The metadata service is the chain's last resort; off EC2 it must not cost seconds.
    let imds = aws_config::imds::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_millis(500))
        .max_attempts(1)
        .build();
    let http = http::client(&opts.net)?;
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
    Ok(loader.load().await)
}

#[cfg(test)]
mod tests {
    #[test]
    fn profile_sections_follow_each_file_s_syntax() {
        let config =
            "[default]\nregion=x\n[profile prod]\n[ profile  dev ]\n[sso-session s]\n[other]\n";
        let names: Vec<_> = super::profile_sections(config, true).collect();
        assert_eq!(names, ["default", "prod", "dev"]);
        let creds: Vec<_> = super::profile_sections("[ci]\nkey=1\n[profile x]\n", false).collect();
        assert_eq!(creds, ["ci", "profile x"]);
    }
}
