//! The user-facing modes. Each only decides where the session's bytes come from and go to.

pub mod doctor;
pub mod ecs;
pub mod forward;
pub mod manual;
pub mod plugin;
pub mod proxy;
pub mod report;
pub mod session;
pub mod settings;
pub mod shell;
#[cfg(feature = "sim")]
pub mod sim;
pub mod ssh_config;
pub mod target;
pub mod wait;

use crate::aws::{Aws, AwsOptions};
use crate::cli::AwsArgs;
use crate::net::Net;
use crate::transport::DriveError;

/// Applies the network flags and loads the SDK clients; returns them with the profile, which
/// keys the target cache.
pub async fn connect(args: &AwsArgs) -> anyhow::Result<(Aws, Option<String>)> {
    let opts = AwsOptions {
        profile: args.profile.clone(),
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        reason: args.reason.clone(),
        net: Net::from_env(args.ssmmessages_endpoint.clone())?,
    };
    Ok((Aws::load(&opts).await?, opts.profile))
}

/// After a session failed on our side: terminate it on the service (unless the service itself
/// already ended it) so nothing is left running; returns the error to report.
pub async fn end_failed_session(aws: &Aws, session_id: &str, e: anyhow::Error) -> anyhow::Error {
    let over = matches!(
        e.downcast_ref::<DriveError>(),
        Some(DriveError::Gone | DriveError::ClosedWithError(_))
    );
    if !over {
        let _ = aws.terminate_session(session_id).await;
    }
    e
}

/// Before exiting: if a TerminateSession did not go through (throttled, say), says how the
/// session ended now, lets go of stdin, stdout and stderr (so neither ssh nor whatever reads
/// ssh's output waits for us) and then retries the call with the SDK's full retry budget.
pub async fn settle(aws: &Aws, result: anyhow::Result<u8>) -> anyhow::Result<u8> {
    if !aws.has_pending_terminations() {
        return result;
    }
    if let Err(e) = &result {
        // main's line, printed while stderr is still there (main's own goes to /dev/null).
        report::Failure::of(e).report();
    }
    tracing::info!("stdio released; retrying TerminateSession");
    crate::os::release_stdio();
    aws.terminate_pending().await;
    result
}
