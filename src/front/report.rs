//! The error edge: every failure of every mode becomes one stderr line, `ssm-proxy: CAUSE: FIX`,
//! and one of the exit statuses the README documents; beside it, the official client's lines
//! for a session that ended without an error. Nothing else prints a failure or picks its
//! status.

use crate::aws::AwsError;
use crate::cli::UsageError;
use crate::transport::{DriveError, End, Notice};

/// Bad arguments (clap's own status).
pub const USAGE: u8 = 2;
/// A failure without a class of its own.
pub const OTHER: u8 = 1;

/// A failure as the user sees it: one line and an exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    line: String,
    status: u8,
}

impl Failure {
    /// The line of `err` (its whole chain, on one line) and its status: that of the first
    /// error in the chain with a class (69 unavailable, 77 credentials or permissions, 78
    /// configuration from [`AwsError`] and [`DriveError`], 2 from [`UsageError`]), else 1.
    pub fn of(err: &anyhow::Error) -> Self {
        Self {
            line: one_line(&format!("{err:#}")),
            status: status(err),
        }
    }

    /// A mistake in the arguments found before any mode runs (clap's, or main's own).
    pub fn usage(line: impl Into<String>) -> Self {
        Self {
            line: one_line(&line.into()),
            status: USAGE,
        }
    }

    /// The line, without the `ssm-proxy: ` prefix.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The exit status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Prints the line on stderr; returns the exit status.
    pub fn report(&self) -> u8 {
        eprintln!("ssm-proxy: {}", self.line);
        self.status
    }
}

fn status(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| {
            if let Some(e) = e.downcast_ref::<AwsError>() {
                return Some(e.exit_code());
            }
            if let Some(e) = e.downcast_ref::<DriveError>() {
                return Some(e.exit_code());
            }
            e.is::<UsageError>().then_some(USAGE)
        })
        .unwrap_or(OTHER)
}

/// Says how a session that ended without an error ended, in the official client's words (on
/// stderr: stdout may be the byte stream): the service closed the channel, or the session
/// ended on the service while we were disconnected (§1.1). Other ends say nothing.
pub fn session_end(end: &End, session_id: &str) {
    match end {
        End::Closed => eprintln!("Exiting session with sessionId: {session_id}."),
        End::Gone => eprintln!("Session: {session_id} timed out."),
        End::LocalEof | End::LocalGone | End::Signal(_) => {}
    }
}

/// Shows a session [`Notice`] as the official client does (on stderr: stdout may be the byte
/// stream).
pub fn notify(notice: &Notice) {
    match notice {
        Notice::Encrypted => eprintln!("This session is encrypted using AWS KMS."),
        // As it came: the remote program's own bytes.
        Notice::Stderr(bytes) => {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(bytes).and_then(|()| err.flush());
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_classified_error_decides() {
        let denied = anyhow::Error::new(AwsError::AccessDenied("no".into()));
        assert_eq!(Failure::of(&denied).status(), 77);
        let dial = anyhow::Error::new(DriveError::Dial {
            url: "wss://x".into(),
            detail: "refused".into(),
        })
        .context("forward 8080");
        assert_eq!(Failure::of(&dial).status(), 69);
        let usage = anyhow::Error::new(UsageError("bad\n  flag".into()));
        assert_eq!(Failure::of(&usage).line(), "bad flag");
        assert_eq!(Failure::of(&usage).status(), USAGE);
        assert_eq!(Failure::of(&anyhow::anyhow!("other")).status(), OTHER);
    }

    #[test]
    fn kms_failures_are_not_blamed_on_the_agent_version() {
        use crate::proto::SessionError;
        let line = |e| Failure::of(&anyhow::Error::new(DriveError::Handshake(e))).line;
        let kms = line(SessionError::ChallengeMismatch);
        assert!(
            kms.contains("kms:Decrypt") && !kms.contains("up to date"),
            "{kms}"
        );
        let handshake = line(SessionError::HandshakeTimeout(30));
        assert!(
            handshake.ends_with("is up to date and running"),
            "{handshake}"
        );
    }
}
