//! Per-session settings, built once: from the command line (clap also reads their environment
//! variables) or, for the session-manager-plugin entry, from the environment alone, with the
//! same usage error for a bad value either way. Every mode opens its session with them through
//! [`session::open`](super::session::open), so a new per-session setting touches the CLI, this
//! type and the code that uses it.

use std::time::Duration;

use crate::cli::{Cli, ResumeArgs, UsageError};
use crate::os;
use crate::proto::SessionConfig;
use crate::proto::pacer::Rate;
use crate::transport::DriverConfig;

/// `--resume-timeout`'s variable.
pub const RESUME_TIMEOUT_ENV: &str = "SSM_PROXY_RESUME_TIMEOUT";
/// `--dead-after`'s variable.
pub const DEAD_AFTER_ENV: &str = "SSM_PROXY_DEAD_AFTER";
/// `--max-rate`'s variable.
pub const MAX_RATE_ENV: &str = "SSM_PROXY_MAX_RATE";
/// `--eof-wait`'s variable.
pub const EOF_WAIT_ENV: &str = "SSM_PROXY_EOF_WAIT";

/// What one session is allowed and expected to do, whatever the mode.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// How long to keep trying to resume a lost connection.
    pub resume_timeout: Duration,
    /// Silence after which the websocket is presumed dead; pings go every third of it.
    pub dead_after: Duration,
    /// Bytes per protocol message.
    pub max_payload: usize,
    /// Upload rate limit (`--max-rate`), on top of what pause_publication teaches.
    pub max_rate: Rate,
    /// After local EOF, how long to wait for the service to close the session.
    pub eof_wait: Duration,
}

/// What the session's bytes are, which decides how its local side ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ssh's byte stream (proxy mode, the plugin's SSH documents): ssh hanging up (SIGHUP)
    /// and a vanished stdout reader end the local side like EOF.
    Relay,
    /// Port forwarding: output waits, unacked, until a local connection takes it.
    Forward,
    /// A shell or a command.
    Shell,
    /// Whatever the handshake says (the session-manager-plugin drop-in, whose session the AWS
    /// CLI started from any document).
    Any,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            resume_timeout: Duration::from_secs(300),
            dead_after: Duration::from_secs(30),
            max_payload: 1024,
            max_rate: Rate::default(),
            eof_wait: Duration::from_secs(5),
        }
    }
}

impl SessionSettings {
    /// Proxy mode's settings.
    pub fn from_cli(cli: &Cli) -> Self {
        Self {
            dead_after: Duration::from_secs(cli.dead_after),
            max_payload: cli.max_payload,
            ..Self::from_resume(&cli.resume)
        }
    }

    /// The settings of a mode whose command line has only `--resume-timeout` (`forward`,
    /// `shell`).
    pub fn from_resume(args: &ResumeArgs) -> Self {
        Self {
            max_rate: args.max_rate.unwrap_or_default(),
            eof_wait: Duration::from_secs(args.eof_wait),
            ..Self::resuming(args.resume_timeout)
        }
    }

    /// The defaults, resuming for `secs` seconds.
    pub fn resuming(secs: u64) -> Self {
        Self {
            resume_timeout: Duration::from_secs(secs),
            ..Self::default()
        }
    }

    /// The settings of the session-manager-plugin entry, which has no command line of ours:
    /// `SSM_PROXY_RESUME_TIMEOUT`, `SSM_PROXY_DEAD_AFTER`, `SSM_PROXY_MAX_RATE` and
    /// `SSM_PROXY_EOF_WAIT`, or the defaults. A value that is
    /// not a number of seconds is a usage error, as it is for the flags.
    pub fn from_env() -> Result<Self, UsageError> {
        let defaults = Self::default();
        Ok(Self {
            resume_timeout: env_seconds(RESUME_TIMEOUT_ENV)?.unwrap_or(defaults.resume_timeout),
            dead_after: env_seconds(DEAD_AFTER_ENV)?.unwrap_or(defaults.dead_after),
            eof_wait: env_seconds(EOF_WAIT_ENV)?.unwrap_or(defaults.eof_wait),
            max_rate: env_rate()?.unwrap_or_default(),
            ..defaults
        })
    }

    /// The driver configuration for a session of `mode` to `target` (`destination`: the
    /// `HOST:PORT` the agent dials when forwarding, for messages).
    pub fn driver_config(&self, mode: Mode, target: &str, destination: &str) -> DriverConfig {
        let dead_after = self.dead_after.max(Duration::from_secs(1));
        DriverConfig {
            session: SessionConfig {
                max_payload: self.max_payload.clamp(1, 64 * 1024),
                hold_output: mode == Mode::Forward,
                // Shell-type documents may run without a handshake: no ready deadline, input
                // soon after the channel opens (§5.1).
                no_handshake: mode == Mode::Shell,
                max_rate: self.max_rate,
                ..Default::default()
            },
            resume_timeout: self.resume_timeout,
            dead_after,
            eof_wait: self.eof_wait,
            ping_interval: dead_after.min(Duration::from_secs(30)) / 3,
            hangup: (mode == Mode::Relay).then_some(os::SIGHUP),
            target: target.to_owned(),
            destination: destination.to_owned(),
            notify: super::report::notify,
        }
    }
}

/// A whole number of seconds from the variable `name`, if set and not empty.
fn env_seconds(name: &str) -> Result<Option<Duration>, UsageError> {
    seconds(name, std::env::var_os(name).as_deref())
}

/// `--max-rate`'s value from its variable, if set and not empty.
fn env_rate() -> Result<Option<Rate>, UsageError> {
    let Some(value) = std::env::var_os(MAX_RATE_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    Rate::parse(&text).map(Some).map_err(|e| {
        UsageError(format!(
            "invalid value {text:?} for {MAX_RATE_ENV}: {e}: give N messages per second or N \
             with B, K or M for bytes per second, or unset it"
        ))
    })
}

/// `value` of the variable `name` as a whole number of seconds.
fn seconds(name: &str, value: Option<&std::ffi::OsStr>) -> Result<Option<Duration>, UsageError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.parse::<u64>() {
        Ok(secs) => Ok(Some(Duration::from_secs(secs))),
        Err(e) => Err(UsageError(format!(
            "invalid value {text:?} for {name}: {e}: give a whole number of seconds, or unset it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_gets_the_same_tunables() {
        let s = SessionSettings::resuming(7);
        let relay = s.driver_config(Mode::Relay, "i-1", "");
        let forward = s.driver_config(Mode::Forward, "i-1", "db:5432");
        let shell = s.driver_config(Mode::Shell, "i-1", "");
        for c in [&relay, &forward, &shell] {
            assert_eq!(c.resume_timeout, Duration::from_secs(7));
            assert_eq!(c.dead_after, Duration::from_secs(30));
            assert_eq!(c.ping_interval, Duration::from_secs(10));
            assert_eq!(c.session.max_payload, 1024);
            assert_eq!(c.target, "i-1");
        }
        assert_eq!(relay.hangup, Some(os::SIGHUP));
        assert_eq!((forward.hangup, shell.hangup), (None, None));
        assert!(forward.session.hold_output && !shell.session.hold_output);
        assert_eq!(forward.destination, "db:5432");
        let tight = SessionSettings {
            dead_after: Duration::ZERO,
            max_payload: 1 << 20,
            ..s
        };
        let c = tight.driver_config(Mode::Relay, "i-1", "");
        assert_eq!(c.dead_after, Duration::from_secs(1));
        assert_eq!(c.session.max_payload, 64 * 1024);
    }

    #[test]
    fn max_rate_reaches_every_mode_from_its_flag() {
        use clap::Parser;
        let proxy = Cli::try_parse_from(["ssm-proxy", "--max-rate", "100", "i-1", "22"]).unwrap();
        let c = SessionSettings::from_cli(&proxy).driver_config(Mode::Relay, "i-1", "");
        assert_eq!(c.session.max_rate.messages, Some(100.0));
        let args = ["ssm-proxy", "shell", "--max-rate", "512K", "i-1"];
        let shell = Cli::try_parse_from(args).unwrap();
        let Some(crate::cli::Command::Shell(a)) = &shell.command else {
            panic!("shell")
        };
        let c = SessionSettings::from_resume(&a.resume).driver_config(Mode::Shell, "i-1", "");
        assert_eq!(c.session.max_rate.bytes, Some(512.0 * 1024.0));
        assert_eq!(SessionSettings::default().max_rate, Rate::default());
        let args = [
            "ssm-proxy",
            "forward",
            "--eof-wait",
            "9",
            "i-1",
            "-L",
            "1:2",
        ];
        let forward = Cli::try_parse_from(args).unwrap();
        let Some(crate::cli::Command::Forward(a)) = &forward.command else {
            panic!("forward")
        };
        let c = SessionSettings::from_resume(&a.resume).driver_config(Mode::Forward, "i-1", "");
        assert_eq!(c.eof_wait, Duration::from_secs(9));
        let c = SessionSettings::default().driver_config(Mode::Relay, "i-1", "");
        assert_eq!(c.eof_wait, Duration::from_secs(5));
    }

    #[test]
    fn a_bad_variable_is_a_usage_error() {
        let v = |s: &str| seconds(RESUME_TIMEOUT_ENV, Some(std::ffi::OsStr::new(s)));
        assert_eq!(v("42").ok(), Some(Some(Duration::from_secs(42))));
        assert_eq!(v("").ok(), Some(None));
        assert_eq!(seconds(RESUME_TIMEOUT_ENV, None).ok(), Some(None));
        let e = v("abc").expect_err("abc");
        assert!(
            e.0.starts_with("invalid value \"abc\" for SSM_PROXY_RESUME_TIMEOUT"),
            "{e}"
        );
    }
}
