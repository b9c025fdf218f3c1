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

/// Proxy mode on a document that starts a shell: the shell's prompt, sent at once and before
/// any handshake, never reaches stdout (ssh would take it for its peer's banner); the one line
/// says what the document started.
#[test]
fn proxy_mode_on_a_shell_document_writes_nothing_to_stdout() {
    let shell = serde_json::json!({
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "parameters": {
            "portNumber": {"type": "String", "default": "22"},
            "host": {"type": "String", "default": "localhost"}
        }
    });
    let sim = Sim::start(SimConfig {
        shell: Some("/bin/sh".into()),
        shell_output_delay: Duration::ZERO,
        documents: vec![("Corp-Shell".into(), shell)],
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("err-home");
    let env = env_for(&home, sim.env(), &[], &[]);
    // stdin stays open (EOF would end the session before the prompt can arrive).
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &env)
        .args(["--document", "Corp-Shell", TARGET, "22"])
        .stdin(Stdio::piped());
    let out = run_with_timeout(&mut cmd, BOUND);
    let line = runtime_failure(&out);
    assert!(line.contains("started a shell session"), "{line}");
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(wait_until_no_sessions(&sim), "session left running");
}

/// Whether every session of `sim` has ended within a bounded wait.
fn wait_until_no_sessions(sim: &Sim) -> bool {
    support::wait_until(10, || sim.active_sessions() == 0)
}

/// A target the exit-status table's simulator answers with TargetNotConnected.
const OFFLINE: &str = "i-0000000000000000a";
/// A target it answers with AccessDeniedException.
const DENIED: &str = "i-000000000000000d";

/// A TCP service on an ephemeral port that closes every connection at once: the agent then
/// ends the session with channel_closed.
fn closing_server() -> u16 {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || listener.incoming().for_each(drop));
    port
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `ssm-proxy TARGET PORT` with stdin held open until the simulator has opened the data
/// channel, then `signal`; the exit status.
fn stopped_by(signal: &str) -> Option<i32> {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("err-home");
    let port = support::forward::echo_server().to_string();
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &env_for(&home, sim.env(), &[], &[]))
        .args([TARGET, &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = support::ChildGuard(support::spawn_group(&mut cmd));
    assert!(
        support::wait_until(10, || sim.stats().opens >= 1),
        "no session opened"
    );
    support::kill_pid(child.0.id(), signal);
    support::wait_bounded(&mut child.0, 10).and_then(|s| s.code())
}

/// The README's exit statuses, one row per failure class and the ways each is reached, in
/// proxy mode and (where the edge is the same) forward and shell: 0 normal end, 2 bad
/// arguments, 69 target or network unavailable (a failed data-channel dial and a resume
/// timeout included), 77 credentials or permissions, 78 configuration, 130/143 signals, 1
/// anything else. Every failure is one `ssm-proxy: ` line with nothing on stdout.
#[test]
fn every_failure_class_exits_with_its_documented_status() {
    let sim = Sim::start(SimConfig {
        offline: vec![OFFLINE.to_owned()],
        denied: vec![DENIED.to_owned()],
        ..Default::default()
    })
    .expect("sim");
    let kms = Sim::start(SimConfig {
        kms_key: Some("alias/denied".into()),
        kms_denied: vec!["alias/denied".into()],
        ..Default::default()
    })
    .expect("sim");
    let challenge = Sim::start(SimConfig {
        kms_key: Some("alias/session".into()),
        kms_bad_challenge: true,
        ..Default::default()
    })
    .expect("sim");
    let lossy = Sim::start(SimConfig {
        drops: ssm_proxy::sim::DropPlan::parse("after=300ms,max=1,outage=30000ms").expect("plan"),
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("err-home");
    let env = |sim: &Sim, set: &[(&str, &str)]| {
        let remove: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
        env_for(&home, sim.env(), &remove, set)
    };
    let run = |env: Vec<(String, String)>, args: &[&str]| support::proxy_run(&env, args, 15);
    let open = closing_server().to_string();
    let closed = closed_port().to_string();
    let echo = support::forward::echo_server().to_string();
    let no_dial = [("SSM_PROXY_SSMMESSAGES_ENDPOINT", "ws://127.0.0.1:1")];
    let plain_ws = [("SSM_PROXY_SSMMESSAGES_ENDPOINT", "ws://192.0.2.1:80")];
    let no_creds = env_for(
        &home,
        sim.env(),
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"],
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let no_region = env_for(
        &home,
        sim.env(),
        &["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"],
        &[],
    );
    let rows: Vec<(&str, i32, Output)> = vec![
        ("normal end", 0, run(env(&sim, &[]), &[TARGET, &open])),
        ("bad port", 2, run(env(&sim, &[]), &[TARGET, "abc"])),
        (
            "bad SSM_PROXY_RESUME_TIMEOUT",
            2,
            run(
                env(&sim, &[("SSM_PROXY_RESUME_TIMEOUT", "abc")]),
                &[TARGET, &open],
            ),
        ),
        (
            "--send-key without --user",
            2,
            run(
                env(&sim, &[]),
                &["--send-key=ssh-ed25519 AAAA", TARGET, "22"],
            ),
        ),
        (
            "target not connected",
            69,
            run(env(&sim, &[]), &[OFFLINE, "22"]),
        ),
        (
            "SSM endpoint unreachable",
            69,
            run(
                env(&sim, &[("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:1")]),
                &[TARGET, "22"],
            ),
        ),
        (
            "data-channel dial failed",
            69,
            run(env(&sim, &no_dial), &[TARGET, &echo]),
        ),
        (
            "forward: data-channel dial failed",
            69,
            run(
                env(&sim, &no_dial),
                &["forward", TARGET, "-L", &format!("0:{echo}")],
            ),
        ),
        (
            "shell: target not connected",
            69,
            run(env(&sim, &[]), &["shell", OFFLINE, "--", "true"]),
        ),
        (
            "resume timeout",
            69,
            run(
                env(&lossy, &[]),
                &["-q", "--resume-timeout", "1", TARGET, &echo],
            ),
        ),
        ("access denied", 77, run(env(&sim, &[]), &[DENIED, "22"])),
        ("no credentials", 77, run(no_creds, &[TARGET, "22"])),
        (
            "credentials rejected",
            77,
            run(
                env(&sim, &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")]),
                &[TARGET, "22"],
            ),
        ),
        ("KMS key denied", 77, run(env(&kms, &[]), &[TARGET, &echo])),
        ("no region", 78, run(no_region, &[TARGET, "22"])),
        (
            "unknown profile",
            78,
            run(env(&sim, &[("AWS_PROFILE", "nope")]), &[TARGET, "22"]),
        ),
        (
            "unknown document",
            78,
            run(env(&sim, &[]), &["--document", "Nope", TARGET, "22"]),
        ),
        (
            "plain ws:// to another host",
            78,
            run(env(&sim, &plain_ws), &[TARGET, "22"]),
        ),
        (
            "channel closed with an error",
            1,
            run(env(&sim, &[]), &[TARGET, &closed]),
        ),
        (
            "KMS challenge not answerable",
            1,
            run(env(&challenge, &[]), &[TARGET, &echo]),
        ),
    ];
    let mut wrong = Vec::new();
    for (case, status, out) in &rows {
        if out.status.code() != Some(*status) {
            wrong.push(format!(
                "{case}: exit {:?}, documented {status}; stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        } else if *status != 0 {
            support::one_line_failure(out);
        }
    }
    for (signal, status) in [("INT", 130), ("TERM", 143)] {
        let got = stopped_by(signal);
        if got != Some(status) {
            wrong.push(format!("SIG{signal}: exit {got:?}, documented {status}"));
        }
    }
    assert!(wrong.is_empty(), "exit statuses:\n{}", wrong.join("\n"));
    let sims = [
        ("sim", &sim),
        ("kms", &kms),
        ("challenge", &challenge),
        ("lossy", &lossy),
    ];
    for (name, s) in sims {
        let left = || s.active_sessions() == 0;
        assert!(support::wait_until(10, left), "{name}: a session was left");
    }
}
