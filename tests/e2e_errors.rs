//! End to end: how `ssm-proxy TARGET PORT` fails. Each case runs the binary directly (stdin
//! from /dev/null, bounded to 5 s) and requires a non-zero exit, nothing on stdout and exactly
//! one line on stderr naming the cause, so that ssh shows the user something actionable.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::{self, TARGET, TempDir, apply_env, proxy_bin, run_with_timeout};

/// Bound for every error case.
const BOUND: u64 = 5;

/// An environment for the binary: `base` minus `remove`, plus `set`, with HOME pointing at an
/// empty directory (so no `~/.aws` can be found). The simulator's environment already points
/// AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE at files that do not exist.
fn env_for(
    home: &TempDir,
    base: Vec<(String, String)>,
    remove: &[&str],
    set: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base
        .into_iter()
        .filter(|(k, _)| !remove.contains(&k.as_str()))
        .collect();
    env.push(("HOME".to_owned(), home.path().display().to_string()));
    env.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Runs `ssm-proxy ARGS...` with exactly `env` (plus PATH and friends from the test process).
fn run_proxy(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, env).args(args).stdin(Stdio::null());
    run_with_timeout(&mut cmd, BOUND)
}

/// The failure's one stderr line (see [`support::one_line_failure`]), lower-cased.
fn one_line_failure(out: &Output) -> String {
    support::one_line_failure(out).to_lowercase()
}

/// A runtime (non-usage) failure: also `ssm-proxy: ...` prefixed.
fn runtime_failure(out: &Output) -> String {
    let line = one_line_failure(out);
    assert!(
        line.starts_with("ssm-proxy: "),
        "stderr line lacks the `ssm-proxy: ` prefix: {line:?}"
    );
    line
}

#[test]
fn offline_target_says_not_connected() {
    let sim = Sim::start(SimConfig {
        offline: vec![TARGET.to_owned()],
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("err-home");
    let out = run_proxy(&env_for(&home, sim.env(), &[], &[]), &[TARGET, "22"]);
    let line = runtime_failure(&out);
    assert!(
        line.contains("not connected") || line.contains("offline"),
        "{line}"
    );
    assert_eq!(sim.active_sessions(), 0);
}

#[test]
fn denied_target_says_denied() {
    let sim = Sim::start(SimConfig {
        denied: vec![TARGET.to_owned()],
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("err-home");
    let out = run_proxy(&env_for(&home, sim.env(), &[], &[]), &[TARGET, "22"]);
    let line = runtime_failure(&out);
    assert!(line.contains("denied"), "{line}");
    assert_eq!(sim.active_sessions(), 0);
}

#[test]
fn missing_credentials_say_credentials() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("err-home");
    // IMDS is switched off so an EC2 build host's instance role cannot satisfy the chain.
    let env = env_for(
        &home,
        sim.env(),
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ],
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let out = run_proxy(&env, &[TARGET, "22"]);
    let line = runtime_failure(&out);
    assert!(line.contains("credentials"), "{line}");
    assert_eq!(sim.stats().started, 0);
}

#[test]
fn missing_region_says_region_within_a_second() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("err-home");
    let env = env_for(
        &home,
        sim.env(),
        &["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"],
        &[],
    );
    let started = Instant::now();
    let out = run_proxy(&env, &[TARGET, "22"]);
    let elapsed = started.elapsed();
    let line = runtime_failure(&out);
    assert!(line.contains("region"), "{line}");
    assert!(
        elapsed < Duration::from_secs(1),
        "took {elapsed:?} to report a missing region"
    );
    assert_eq!(sim.stats().started, 0);
}

#[test]
fn unreachable_endpoint_says_so() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("err-home");
    let env = env_for(
        &home,
        sim.env(),
        &["AWS_ENDPOINT_URL_SSM"],
        &[("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:1")],
    );
    let out = run_proxy(&env, &[TARGET, "22"]);
    let line = runtime_failure(&out);
    assert!(line.contains("reach") || line.contains("connect"), "{line}");
    assert_eq!(sim.stats().started, 0);
}

#[test]
fn bad_port_is_a_usage_error() {
    let home = TempDir::new("err-home");
    let env = env_for(&home, Vec::new(), &[], &[]);
    for port in ["99999", "abc"] {
        let out = run_proxy(&env, &[TARGET, port]);
        let line = one_line_failure(&out);
        assert_eq!(out.status.code(), Some(2), "port {port}: {line}");
        assert!(line.contains("port"), "port {port}: {line}");
    }
}
