//! KMS-encrypted sessions end to end (protocol.md §6): the simulator's agent asks for
//! `KMSEncryption`, the client gets a data key from the fake KMS, and every payload travels
//! AES-256-GCM sealed. ssh and scp both ways, a port forward and a remote command must work
//! unchanged; a denied key and a failed challenge must each fail fast with one clear line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::{
    Fixture, TARGET, TempDir, apply_env, one_line_failure, proxy_bin, proxy_run, run_ok,
    run_with_timeout, wait_until,
};

const KEY: &str = "alias/ssm-sessions";
/// Bound for a run that must fail.
const FAIL_BOUND: u64 = 15;

/// The line the official client prints once a session is KMS-encrypted.
const ENCRYPTED_NOTICE: &str = "This session is encrypted using AWS KMS.";

fn kms(config: SimConfig) -> SimConfig {
    SimConfig {
        kms_key: Some(KEY.into()),
        ..config
    }
}

#[test]
fn ssh_and_scp_8mib_both_ways_through_an_encrypted_session() {
    let fx = Fixture::with(kms(SimConfig::default()));
    let out = run_ok(fx.ssh().arg("echo encrypted"), 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "encrypted\n");
    // What the official client shows, on stderr (stdout is the byte stream).
    assert!(String::from_utf8_lossy(&out.stderr).contains(ENCRYPTED_NOTICE));
    fx.scp_round_trip(8, 81);
    // ssh, scp up, scp down: each session ran on a KMS data key.
    assert_eq!(fx.sim.stats().encrypted, 3);
}

#[test]
fn port_forward_under_kms() {
    let sim = Sim::start(kms(SimConfig::default())).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let workers: Vec<_> = (0..3u64)
        .map(|i| {
            let conn = fwd.connect();
            std::thread::spawn(move || echo_round_trip(conn, 2 << 20, 300 + i))
        })
        .collect();
    for w in workers {
        let (sent, received) = w.join().expect("worker");
        assert_eq!(sent, received);
    }
    assert_eq!(sim.stats().encrypted, 1);
}

#[test]
fn remote_command_under_kms_keeps_its_exit_status() {
    let sim = Sim::start(kms(SimConfig {
        shell_output_delay: Duration::ZERO,
        ..Default::default()
    }))
    .expect("sim");
    let home = TempDir::new("kms-shell");
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .env("HOME", home.path())
        .args(["shell", TARGET, "--", "sh", "-c", "echo sealed; exit 3"])
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, 60);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sealed\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains(ENCRYPTED_NOTICE));
    assert_eq!(sim.stats().encrypted, 1);
}

/// A failure that must come quickly, as one line, with no session left on the service.
fn fails_fast(sim: &Sim, extra_env: &[(&str, &str)]) -> (Option<i32>, String) {
    let home = TempDir::new("kms-fail");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let started = Instant::now();
    let out = proxy_run(&env, &[TARGET, "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
    (out.status.code(), line)
}

#[test]
fn denied_key_is_one_clear_line() {
    let sim = Sim::start(kms(SimConfig {
        kms_denied: vec![KEY.into()],
        ..Default::default()
    }))
    .expect("sim");
    let (code, line) = fails_fast(&sim, &[]);
    assert_eq!(code, Some(77), "{line}");
    assert_eq!(sim.stats().encrypted, 0);
    assert!(
        line.contains(KEY) && line.contains("kms:GenerateDataKey"),
        "{line}"
    );
}

#[test]
fn failed_challenge_is_one_clear_line() {
    let sim = Sim::start(kms(SimConfig {
        kms_bad_challenge: true,
        ..Default::default()
    }))
    .expect("sim");
    let (code, line) = fails_fast(&sim, &[]);
    assert_ne!(code, Some(0));
    assert!(line.contains("challenge"), "{line}");
}

#[test]
fn unreachable_kms_is_one_clear_line() {
    let sim = Sim::start(kms(SimConfig::default())).expect("sim");
    // A port nothing listens on: connection refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let (code, line) = fails_fast(&sim, &[("AWS_ENDPOINT_URL_KMS", &url)]);
    assert_eq!(code, Some(69), "{line}");
    assert!(
        line.contains(KEY) && line.contains("AWS_ENDPOINT_URL_KMS"),
        "{line}"
    );
}

#[test]
fn interactive_shell_under_kms() {
    let sim = Sim::start(kms(SimConfig {
        shell_output_delay: Duration::ZERO,
        shell: Some("/bin/sh".into()),
        ..Default::default()
    }))
    .expect("sim");
    let home = TempDir::new("kms-sh");
    let script = home.join("in.sh");
    std::fs::write(&script, "echo kms-$((6*7))\nexit\n").expect("script");
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .env("HOME", home.path())
        .args(["shell", TARGET])
        .stdin(std::fs::File::open(&script).expect("open"));
    let out = run_with_timeout(&mut cmd, 60);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kms-42"),
        "{out:?}"
    );
    assert_eq!(sim.stats().encrypted, 1);
}
