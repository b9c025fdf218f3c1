//! The ProxyCommand relay (`ssm-proxy %h %p`): AWS-StartSSHSession, stdin → data channel →
//! stdout, and nothing else ever on stdout (§8.2, pitfall 7).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tracing::Instrument;

use crate::aws::{Aws, AwsOptions};
use crate::cli::Cli;
use crate::os;
use crate::proto::SessionConfig;
use crate::transport::{DriveError, Driver, DriverConfig, End, Outcome, stdio};

/// Runs one relay session; returns the process exit status.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let target = cli.target.clone().unwrap_or_default();
    let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
    for p in &cli.parameters {
        let (k, v) = p.split_once('=').with_context(|| {
            format!("--parameter {p:?} is not KEY=VALUE: write e.g. --parameter host=db.internal")
        })?;
        parameters
            .entry(k.to_owned())
            .or_default()
            .push(v.to_owned());
    }
    parameters.insert("portNumber".into(), vec![cli.port.to_string()]);
    let mut signals = os::signals();
    let opts = AwsOptions {
        profile: cli.aws.profile,
        region: cli.aws.region,
        endpoint_url: cli.aws.endpoint_url,
    };
    let aws = Aws::load(&opts).await?;
    let grant = tokio::select! {
        g = aws.start_session(&target, &cli.document, parameters) => g?,
        sig = signals.recv() => return Ok(os::signal_exit_code(sig.unwrap_or(os::SIGINT))),
    };
    let session_id = grant.session_id.clone();
    let config = DriverConfig {
        session: SessionConfig {
            max_payload: cli.max_payload.clamp(1, 64 * 1024),
            ..Default::default()
        },
        resume_timeout: Duration::from_secs(cli.resume_timeout),
        dead_after: Duration::from_secs(cli.dead_after.max(1)),
        ping_interval: Duration::from_secs(cli.dead_after.clamp(1, 30)) / 3,
        ..Default::default()
    };
    let span = tracing::info_span!("session", id = %session_id, %target);
    let result = async {
        tracing::info!("session started");
        let mut driver = Driver::connect(aws.clone(), grant, config).await?;
        let (local, stdout_done) = stdio::local();
        let outcome = driver.run(local, None, &mut signals).await;
        tracing::info!(resumes = driver.resumes(), ?outcome, "session over");
        // On a normal end, what was received must reach stdout before we exit.
        if let Ok(Outcome {
            end: End::Closed | End::LocalEof,
            ..
        }) = &outcome
        {
            stdout_done.wait(Duration::from_secs(30));
        }
        outcome
    }
    .instrument(span)
    .await;
    match result {
        Ok(outcome) => Ok(match outcome.end {
            End::Signal(sig) => os::signal_exit_code(sig),
            _ => 0,
        }),
        Err(e) => {
            // Leave nothing running on the service, whatever went wrong here.
            if !matches!(e, DriveError::Gone | DriveError::ClosedWithError(_)) {
                let _ = aws.terminate_session(&session_id).await;
            }
            Err(e.into())
        }
    }
}
