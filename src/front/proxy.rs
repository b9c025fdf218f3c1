//! The ProxyCommand relay (`ssm-proxy %h %p`): resolve the target (id, name, tag, alias), push a
//! key with EC2 Instance Connect if asked, StartSession with AWS-StartSSHSession, then stdin →
//! data channel → stdout, and nothing else ever on stdout (§8.2, pitfall 7): not even the
//! session's own bytes until its handshake says it is a byte stream. [`relay_opened`] is the
//! part the session-manager-plugin entry shares.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::aws::{Aws, SessionGrant};
use crate::cli::{self, AwsArgs, Cli, UsageError};
use crate::front::report;
use crate::front::session::{self, Opened, Opening};
use crate::front::settings::{Mode, SessionSettings};
use crate::front::target::{self, Alias, TargetSpec};
use crate::os;
use crate::proto::SessionKind;
use crate::transport::{Driver, End, Outcome, stdio};

/// Public keys `--send-key` tries, in order, under `~/.ssh`.
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"];

/// Runs one relay session; returns the process exit status.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let given = cli.target.clone().unwrap_or_default();
    // An alias TARGET.PROFILE.REGION overrides the profile and region flags.
    let (target_text, aws_args) = if cli.alias {
        let a = Alias::parse(&given)?;
        let aws_args = AwsArgs {
            profile: a.profile.or(cli.aws.profile.clone()),
            region: Some(a.region),
            ..cli.aws.clone()
        };
        (a.target, aws_args)
    } else {
        (given, cli.aws.clone())
    };
    if let Some(session_id) = os::watchdog_session() {
        return watch(&aws_args, &session_id).await;
    }
    let spec = TargetSpec::parse(&target_text)?;
    let mut parameters = cli::document_parameters(&cli.parameters, "host=db.internal")?;
    parameters.insert("portNumber".into(), vec![cli.port.to_string()]);
    let settings = SessionSettings::from_cli(&cli);
    let send_key = match &cli.send_key {
        None => None,
        Some(arg) => {
            let user = cli.user.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
                UsageError("--send-key needs the OS user: add --user %r to the ProxyCommand".into())
            })?;
            Some((user, public_key(arg)?))
        }
    };
    let mut signals = os::signals();
    let (aws, profile) = super::connect(&aws_args).await?;
    let mut wait = super::wait::Wait::new(Duration::from_secs(cli.wait));
    let prepare = async {
        let target = wait
            .retry(&target_text, || async {
                Ok(target::resolve(&aws, &spec, profile.as_deref(), !aws_args.no_cache).await?)
            })
            .await?;
        if let Some((user, key)) = &send_key {
            if !target.starts_with("i-") {
                return Err(anyhow::Error::new(UsageError(format!(
                    "--send-key works only for EC2 instances (i-…), not {target}: drop --send-key \
                     and put your key in the node's authorized_keys"
                ))));
            }
            aws.send_ssh_public_key(&target, user, key).await?;
            tracing::info!(%target, %user, "public key pushed with EC2 Instance Connect");
        }
        let grant = wait
            .retry(&target, || async {
                let parameters = parameters.clone();
                Ok(aws
                    .start_session(&target, &cli.document, parameters)
                    .await?)
            })
            .await?;
        anyhow::Ok((target, grant))
    };
    let (target, grant) = tokio::select! {
        r = prepare => r?,
        sig = signals.recv() => return Ok(os::signal_exit_code(sig.unwrap_or(os::SIGINT))),
    };
    let watchdog = os::Watchdog::start(&grant.session_id);
    let result = relay(aws, grant, &target, &settings, &mut signals).await;
    watchdog.disarm();
    result
}

/// The watchdog of a relay on Windows (see [`os::Watchdog`]): once the relay is gone, ends its
/// session unless the relay said it had ended it itself. Its stdio is a pipe and the null
/// device; the same arguments give it the same profile, region and endpoints.
async fn watch(aws_args: &AwsArgs, session_id: &str) -> anyhow::Result<u8> {
    if !os::parent_killed().await {
        return Ok(0);
    }
    tracing::info!(session = %session_id, "the relay was killed; terminating its session");
    let (aws, _) = super::connect(aws_args).await?;
    match aws.terminate_session(session_id).await {
        Ok(()) => tracing::info!(session = %session_id, "session terminated"),
        Err(e) => {
            tracing::info!(error = %e, "TerminateSession failed; retrying");
            aws.terminate_pending().await;
        }
    }
    Ok(0)
}

/// Opens a started session and relays stdin and stdout over it until it ends, if the handshake
/// says it is a byte stream; leaves nothing running on the service if it fails.
pub async fn relay(
    aws: Aws,
    grant: SessionGrant,
    target: &str,
    settings: &SessionSettings,
    signals: &mut mpsc::Receiver<i32>,
) -> anyhow::Result<u8> {
    let session_id = grant.session_id.clone();
    let span = tracing::info_span!("session", id = %session_id, %target);
    let result = async {
        tracing::info!("session started");
        match session::open(&aws, grant, target, settings, Mode::Relay, signals).await? {
            Opening::Ended(outcome) => Ok(outcome),
            Opening::Opened(o) if o.kind == SessionKind::Stream => {
                serve(&aws, o.into_output(), signals).await
            }
            // A shell's prompt or smux frames would corrupt ssh's byte stream: nothing of
            // theirs has reached stdout.
            Opening::Opened(o) => Err(NotStream(o.kind).into()),
        }
    }
    .instrument(span)
    .await;
    finish(aws, &session_id, result).await
}

/// Relays stdin and stdout over an open byte-stream session (the session-manager-plugin
/// entry's, whose kind it has dispatched on) until it ends.
pub async fn relay_opened(
    aws: Aws,
    opened: Opened,
    target: &str,
    signals: &mut mpsc::Receiver<i32>,
) -> anyhow::Result<u8> {
    let driver = opened.into_output();
    let session_id = driver.session_id().to_owned();
    let span = tracing::info_span!("session", id = %session_id, %target);
    let result = serve(&aws, driver, signals).instrument(span).await;
    finish(aws, &session_id, result).await
}

/// Runs a byte-stream session on stdin and stdout to its end.
async fn serve(
    aws: &Aws,
    mut driver: Driver,
    signals: &mut mpsc::Receiver<i32>,
) -> anyhow::Result<Outcome> {
    // ssh hanging up on us (SIGHUP) is an end like EOF.
    driver.config_mut().hangup = Some(os::SIGHUP);
    let session_id = driver.session_id().to_owned();
    let (local, stdout_done) = stdio::local();
    let outcome = tokio::select! {
        outcome = driver.run(local, None, signals) => outcome,
        // Nobody reads what the session would deliver: end it now, not at stdin's EOF.
        () = os::stdout_closed() => {
            tracing::info!("stdout closed; ending the session");
            let terminated = aws.terminate_session(&session_id).await.is_ok();
            Ok(Outcome { end: End::LocalGone, exit_code: None, terminated })
        }
    };
    tracing::info!(?outcome, "session result");
    // On a normal end, what was received must reach stdout before we exit.
    if let Ok(Outcome {
        end: End::Closed | End::Gone | End::LocalEof,
        ..
    }) = &outcome
    {
        stdout_done.wait(Duration::from_secs(30));
    }
    Ok(outcome?)
}

/// The exit status of a relay that ended with `result`: the line for a normal end, the session
/// terminated after a failure, and any TerminateSession still owed retried.
async fn finish(aws: Aws, session_id: &str, result: anyhow::Result<Outcome>) -> anyhow::Result<u8> {
    let result = match result {
        Ok(outcome) => {
            report::session_end(&outcome.end, session_id);
            Ok(match outcome.end {
                End::Signal(sig) => os::signal_exit_code(sig),
                _ => 0,
            })
        }
        Err(e) => Err(super::end_failed_session(&aws, session_id, e).await),
    };
    super::settle(&aws, result).await
}

/// The session is not a single byte stream.
#[derive(Debug, thiserror::Error)]
#[error(
    "the document started a {} session, not an SSH byte stream: use AWS-StartSSHSession here, \
     and `ssm-proxy forward` for port forwarding",
    match .0 { SessionKind::Shell => "shell", _ => "port-forwarding" }
)]
struct NotStream(SessionKind);

/// The OpenSSH public key for `--send-key`: `arg` empty means the first default key under
/// `~/.ssh`; a value starting with a key type is the key itself; anything else is a path.
pub fn public_key(arg: &str) -> anyhow::Result<String> {
    let looks_like_key = |s: &str| {
        [
            "ssh-ed25519 ",
            "ssh-rsa ",
            "ecdsa-sha2-",
            "sk-ssh-ed25519@",
            "sk-ecdsa-sha2-",
        ]
        .iter()
        .any(|k| s.starts_with(k))
    };
    let arg = arg.trim();
    if looks_like_key(arg) {
        return Ok(arg.to_owned());
    }
    let home = dirs::home_dir();
    let path = if arg.is_empty() {
        let dir = home.map(|h| h.join(".ssh")).unwrap_or_default();
        DEFAULT_KEYS
            .iter()
            .map(|k| dir.join(k))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                UsageError(format!(
                    "--send-key: no public key in {} (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): \
                     create one with ssh-keygen -t ed25519, or pass --send-key=PATH",
                    dir.display()
                ))
            })?
    } else if let (Some(rest), Some(home)) = (arg.strip_prefix("~/"), home) {
        home.join(rest)
    } else {
        PathBuf::from(arg)
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        UsageError(format!(
            "--send-key: cannot read {} ({e}): pass the path of an OpenSSH public key (.pub)",
            path.display()
        ))
    })?;
    let key = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    match key {
        Some(k) if looks_like_key(k) => Ok(k.to_owned()),
        _ if text.contains("PRIVATE KEY") => Err(UsageError(format!(
            "--send-key: {} is a private key: pass the .pub file beside it",
            path.display()
        ))
        .into()),
        _ => Err(UsageError(format!(
            "--send-key: {} is not an OpenSSH public key (ssh-ed25519 AAAA…): pass a .pub file",
            path.display()
        ))
        .into()),
    }
}
