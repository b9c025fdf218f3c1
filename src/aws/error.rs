//! Control-plane failures as one line each: the cause, then the fix (the rules of the product).

use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use thiserror::Error;

/// Why an SSM call failed.
#[derive(Debug, Error)]
pub enum AwsError {
    /// No region anywhere.
    #[error(
        "no AWS region configured: pass --region, set AWS_REGION, or add `region = ...` to your AWS profile"
    )]
    NoRegion,
    /// The credential chain found nothing.
    #[error(
        "no AWS credentials found{}: run `aws sso login{}` or `aws configure{}`, set AWS_PROFILE, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        named(" for profile ", .profile),
        named(" --profile ", .profile),
        named(" --profile ", .profile)
    )]
    NoCredentials {
        /// The profile named (--profile, AWS_PROFILE): the fix must name it, or `aws sso
        /// login` refreshes the wrong one.
        profile: Option<String>,
    },
    /// Credentials exist but are rejected (expired, bad signature).
    #[error(
        "AWS rejected the credentials{of} ({code}): refresh them (e.g. `aws sso login{login}`) and retry",
        of = named(" of profile ", .profile), login = named(" --profile ", .profile)
    )]
    BadCredentials {
        /// The service's error code.
        code: String,
        /// The profile named, as in [`AwsError::NoCredentials`].
        profile: Option<String>,
    },
    /// The profile asked for is in neither AWS file.
    #[error(
        "AWS profile {0:?} does not exist in {1}: check the name (`aws configure list-profiles`), or create it with `aws configure --profile {0}` or `aws configure sso --profile {0}`"
    )]
    NoProfile(String, String),
    /// The target has no connected agent (or does not exist).
    #[error(
        "target {target} is not connected to Session Manager (offline or unknown) in {region}: check the instance is running, its SSM agent is online, and the region is right"
    )]
    TargetNotConnected {
        /// Target id.
        target: String,
        /// Region asked.
        region: String,
    },
    /// IAM said no.
    #[error(
        "access denied: {0}: allow ssm:StartSession for this target and document in your IAM policy"
    )]
    AccessDenied(String),
    /// Unknown document.
    #[error("invalid document: {0}: check the --document name and that it exists in this region")]
    InvalidDocument(String),
    /// Bad document parameters.
    #[error("invalid document parameters: {0}: check the port and --parameter values")]
    InvalidParameters(String),
    /// The session id is unknown to the service.
    #[error("session {0} no longer exists")]
    NoSuchSession(String),
    /// The endpoint could not be reached.
    #[error(
        "could not reach the SSM endpoint {endpoint}: {detail}: check the network, proxy settings (HTTPS_PROXY) and AWS_ENDPOINT_URL_SSM"
    )]
    Unreachable {
        /// URL tried.
        endpoint: String,
        /// Transport error text.
        detail: String,
    },
    /// IAM refused DescribeInstanceInformation (needed to look targets up by name or tag).
    #[error(
        "access denied: {0}: allow ssm:DescribeInstanceInformation to look instances up by name or tag, or use the instance id"
    )]
    DescribeDenied(String),
    /// IAM refused EC2 Instance Connect.
    #[error(
        "access denied: {0}: allow ec2-instance-connect:SendSSHPublicKey on this instance (for this ec2:osuser) in your IAM policy"
    )]
    EicDenied(String),
    /// EC2 Instance Connect refused the key for another reason.
    #[error(
        "EC2 Instance Connect refused the key for {instance} ({code}: {message}): check that it is a running EC2 instance with ec2-instance-connect installed and that the key is an OpenSSH RSA, ECDSA or ED25519 public key"
    )]
    EicRefused {
        /// Instance id.
        instance: String,
        /// Error code.
        code: String,
        /// Error message.
        message: String,
    },
    /// No managed node carries this name or tag.
    #[error(
        "no managed instance {what} in {region}: check the spelling, the region and the profile (`ssm-proxy doctor` shows them), or use the instance id"
    )]
    NoMatch {
        /// `named "web-1"` or `tagged Role=web`.
        what: String,
        /// Region searched.
        region: String,
    },
    /// Several managed nodes carry this name or tag.
    #[error(
        "{count} managed instances {what} in {region}: {list}: use the instance id, or a tag:KEY=VALUE that picks one"
    )]
    Ambiguous {
        /// `named "web-1"` or `tagged Role=web`.
        what: String,
        /// Region searched.
        region: String,
        /// How many matched.
        count: usize,
        /// `i-… (name, status, agent version), …`.
        list: String,
    },
    /// The node exists but its agent is not connected.
    #[error(
        "instance {id} {what} is {status} in {region}, not Online: start the instance, or check that its SSM agent is running and can reach SSM"
    )]
    Offline {
        /// Instance id.
        id: String,
        /// `named "web-1"` or `tagged Role=web`.
        what: String,
        /// Its PingStatus.
        status: String,
        /// Region searched.
        region: String,
    },
    /// The EC2 Instance Connect endpoint could not be reached.
    #[error(
        "could not reach the EC2 Instance Connect endpoint {endpoint}: {detail}: check the network, proxy settings (HTTPS_PROXY) and AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT"
    )]
    EicUnreachable {
        /// URL tried.
        endpoint: String,
        /// Transport error text.
        detail: String,
    },
    /// Anything else the service said.
    #[error("SSM error {code}: {message}")]
    Service {
        /// Error code.
        code: String,
        /// Error message.
        message: String,
    },
    /// KMS refused or could not provide a data key for session encryption.
    #[error(
        "KMS key {key} cannot encrypt this session ({why}): allow kms:GenerateDataKey on that key for your identity, or check the key id in the Session Manager preferences"
    )]
    Kms {
        /// Key id or ARN the agent asked for.
        key: String,
        /// What KMS said.
        why: String,
    },
    /// KMS could not be reached for the session's data key.
    #[error(
        "could not reach KMS at {endpoint} for key {key}: {detail}: check the network, proxy settings (HTTPS_PROXY) and AWS_ENDPOINT_URL_KMS (in a private subnet: a kms VPC endpoint)"
    )]
    KmsUnreachable {
        /// Key id or ARN the agent asked for.
        key: String,
        /// URL tried.
        endpoint: String,
        /// Transport error text.
        detail: String,
    },
    /// IAM refused an ECS call (ECS Exec).
    #[error(
        "access denied: {0}: allow ecs:ExecuteCommand, ecs:DescribeTasks and ecs:ListTasks on this cluster's tasks in your IAM policy (docs/ecs.md)"
    )]
    EcsDenied(String),
    /// The ECS endpoint could not be reached.
    #[error(
        "could not reach the ECS endpoint {endpoint}: {detail}: check the network, proxy settings (HTTPS_PROXY) and AWS_ENDPOINT_URL_ECS"
    )]
    EcsUnreachable {
        /// URL tried.
        endpoint: String,
        /// Transport error text.
        detail: String,
    },
    /// No such cluster, task or service.
    #[error(
        "no ECS {what} in {region}: check the names (aws ecs list-tasks --cluster CLUSTER), the region and the profile"
    )]
    EcsNotFound {
        /// `cluster NAME` or `task or service NAME in cluster NAME`.
        what: String,
        /// Region asked.
        region: String,
    },
    /// The service exists but runs no task.
    #[error(
        "ECS service {service} in cluster {cluster} has no running task: scale it up (aws ecs update-service --desired-count 1) or wait for its deployment"
    )]
    EcsNoTasks {
        /// Service name.
        service: String,
        /// Cluster name.
        cluster: String,
    },
    /// The task is not RUNNING.
    #[error(
        "ECS task {task} is {status}, not RUNNING: exec into a running task (aws ecs list-tasks --desired-status RUNNING)"
    )]
    EcsNotRunning {
        /// Task id.
        task: String,
        /// Its lastStatus.
        status: String,
    },
    /// The task was started without execute-command.
    #[error(
        "execute-command is not enabled on ECS task {task}: run a new task with --enable-execute-command, or redeploy its service (aws ecs update-service --enable-execute-command --force-new-deployment)"
    )]
    EcsExecDisabled {
        /// Task id.
        task: String,
    },
    /// The container's ExecuteCommandAgent is not running.
    #[error(
        "the ExecuteCommandAgent of container {container} in ECS task {task} is {status}, not RUNNING: give the task role ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel and OpenDataChannel, let the task reach ssmmessages, or wait for the agent to start"
    )]
    EcsAgent {
        /// Task id.
        task: String,
        /// Container name.
        container: String,
        /// The agent's lastStatus (`absent` when not listed).
        status: String,
    },
    /// The container is ambiguous or unknown.
    #[error("ECS task {task} has {why} ({names}): name one as ecs:CLUSTER/TASK/CONTAINER")]
    EcsContainer {
        /// Task id.
        task: String,
        /// `several containers` or `no container NAME`.
        why: String,
        /// The task's container names.
        names: String,
    },
    /// ECS refused for another reason.
    #[error("ECS refused the command ({code}: {message}): see docs/ecs.md")]
    EcsRefused {
        /// Error code.
        code: String,
        /// Error message.
        message: String,
    },
    /// Everything else.
    #[error("{0}")]
    Other(String),
}

impl AwsError {
    /// Whether retrying the same call can help (used while resuming).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Other(_))
            || matches!(self, Self::Service { code, .. } if code.contains("Internal") || code.contains("Throttl"))
    }

    /// Process exit code (sysexits): credentials/permission 77, configuration 78,
    /// unavailable target or network 69, anything else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NoCredentials { .. }
            | Self::BadCredentials { .. }
            | Self::AccessDenied(_)
            | Self::DescribeDenied(_)
            | Self::EicDenied(_)
            | Self::EcsDenied(_)
            | Self::Kms { .. } => 77,
            Self::NoRegion
            | Self::NoProfile(..)
            | Self::InvalidDocument(_)
            | Self::InvalidParameters(_)
            | Self::Ambiguous { .. }
            | Self::EcsExecDisabled { .. }
            | Self::EcsContainer { .. } => 78,
            Self::TargetNotConnected { .. }
            | Self::Unreachable { .. }
            | Self::NoMatch { .. }
            | Self::Offline { .. }
            | Self::EicRefused { .. }
            | Self::EicUnreachable { .. }
            | Self::KmsUnreachable { .. }
            | Self::EcsUnreachable { .. }
            | Self::EcsNotFound { .. }
            | Self::EcsNoTasks { .. }
            | Self::EcsNotRunning { .. }
            | Self::EcsAgent { .. } => 69,
            _ => 1,
        }
    }
}

/// `prefix` and the named profile, or nothing when none was named.
fn named(prefix: &str, profile: &Option<String>) -> String {
    profile
        .as_ref()
        .map(|p| format!("{prefix}{p}"))
        .unwrap_or_default()
}

/// Where a call went, for the messages of its failures.
pub(super) struct Site<'a> {
    /// The region asked.
    pub region: &'a str,
    /// The endpoint URL.
    pub endpoint: &'a str,
    /// The profile named (--profile, AWS_PROFILE), if any.
    pub profile: Option<&'a str>,
}

/// Maps an SDK error to an [`AwsError`].
pub(super) fn classify<E, R>(err: SdkError<E, R>, subject: &str, site: &Site<'_>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let text = DisplayErrorContext(&err).to_string();
    tracing::debug!(error = %text, "SSM call failed");
    let profile = || site.profile.map(str::to_owned);
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = e.message().unwrap_or_default().to_owned();
            match code.as_str() {
                "TargetNotConnected" | "InvalidTarget" | "InvalidInstanceId" => {
                    AwsError::TargetNotConnected {
                        target: subject.to_owned(),
                        region: site.region.to_owned(),
                    }
                }
                "AccessDeniedException" | "AccessDenied" => AwsError::AccessDenied(message),
                "InvalidDocument" => AwsError::InvalidDocument(message),
                "InvalidParameters" | "ValidationException" | "InvalidDocumentContent" => {
                    AwsError::InvalidParameters(message)
                }
                "DoesNotExistException" => AwsError::NoSuchSession(subject.to_owned()),
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "InvalidClientTokenId" => AwsError::BadCredentials {
                    code,
                    profile: profile(),
                },
                _ => AwsError::Service { code, message },
            }
        }
        _ if is_credentials_error(&err) => AwsError::NoCredentials { profile: profile() },
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => AwsError::Unreachable {
            endpoint: site.endpoint.to_owned(),
            detail: short(&text),
        },
        _ => AwsError::Other(short(&text)),
    }
}

/// Whether the credential chain is what failed (it surfaces as a dispatch failure).
fn is_credentials_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The innermost cause of an SDK error chain, on one line: `DisplayErrorContext` prints
/// "outer: inner: innermost (DebugDump...)", and only the message part is worth showing.
fn short(text: &str) -> String {
    let dump = [
        "DispatchFailure",
        "TimeoutError",
        "ResponseError",
        "ConstructionFailure",
        "ServiceError",
    ]
    .iter()
    .filter_map(|k| text.find(&format!(" ({k}(")))
    .min()
    .unwrap_or(text.len());
    let messages = text[..dump].replace('\n', " ");
    // The innermost readable message: skip Debug dumps some errors print (`Other(… { … })`).
    let readable = |s: &&str| !s.trim().is_empty() && !s.contains(['{', '}', '[', ']']);
    let last = messages
        .rsplit(": ")
        .find(readable)
        .or_else(|| messages.rsplit(": ").find(|s| !s.trim().is_empty()))
        .unwrap_or(&messages);
    last.trim().chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::{AwsError, short};

    #[test]
    fn credential_fixes_name_the_profile_given() {
        let none = AwsError::NoCredentials { profile: None }.to_string();
        assert!(
            none.starts_with("no AWS credentials found: run `aws sso login` or"),
            "{none}"
        );
        let prod = AwsError::NoCredentials {
            profile: Some("prod".into()),
        };
        assert!(
            prod.to_string()
                .contains("found for profile prod: run `aws sso login --profile prod`")
        );
        let rejected = AwsError::BadCredentials {
            code: "ExpiredTokenException".into(),
            profile: Some("prod".into()),
        };
        assert!(
            rejected
                .to_string()
                .contains("credentials of profile prod (ExpiredTokenException)")
        );
        assert_eq!(rejected.exit_code(), 77);
    }

    #[test]
    fn short_details_are_the_innermost_readable_message() {
        assert_eq!(
            short(
                "dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111) (DispatchFailure(DispatchFailure { source: … }))"
            ),
            "Connection refused (os error 111)"
        );
        assert_eq!(
            short(
                "dispatch failure: other: client error (Connect): invalid peer certificate: Other(OtherError(UnsupportedSignatureAlgorithmContext { signature_algorithm_id: [6, 9], supported_algorithms: [] }))"
            ),
            "invalid peer certificate"
        );
        assert_eq!(short("plain"), "plain");
    }
}
