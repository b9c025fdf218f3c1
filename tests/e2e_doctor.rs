//! End to end: `ssm-proxy doctor [TARGET]` against the simulator: every check passes on a good
//! setup (exit 0), and each broken piece is named with its fix (exit 1), quickly.

use std::process::Output;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig, SimInstance};

use crate::support::{TempDir, proxy_run};

const BOUND: u64 = 30;

/// `doctor ARGS` with the simulator's environment changed by `remove` and `set`.
fn doctor(sim: &Sim, remove: &[&str], set: &[(&str, &str)], args: &[&str]) -> (Output, String) {
    let home = TempDir::new("doctor-home");
    let mut env: Vec<(String, String)> = sim
        .env()
        .into_iter()
        .filter(|(k, _)| !remove.contains(&k.as_str()))
        .collect();
    env.push(("HOME".into(), home.path().display().to_string()));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    env.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let out = proxy_run(&env, &all, BOUND);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|r| r.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{text}"))
}

#[test]
fn all_checks_pass_on_a_good_setup() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let (out, text) = doctor(&sim, &[], &[], &["web-1"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for (check, want) in [
        ("region", "us-east-1 (from AWS_REGION)"),
        ("credentials", "AKIA…0000"),
        ("identity", "arn:aws:iam::123456789012:user/sim"),
        ("SSM endpoint", "2 managed nodes online"),
        (
            "target",
            "web-1 is i-0123456789abcdef0 (web-1), Online, agent 3.3.1957.0, Amazon Linux 2023",
        ),
        ("data channel", "answered"),
        ("ssh", "OpenSSH"),
    ] {
        let l = line(&text, check);
        assert!(l.starts_with("ok  "), "{l}");
        assert!(l.contains(want), "want {want:?} in {l}");
    }
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Doctor never starts a session.
    assert_eq!(sim.stats().started, 0);
}

#[test]
fn broken_pieces_fail_with_their_fix() {
    let sim = Sim::start(SimConfig {
        fleet: vec![SimInstance::new("i-0bbbbbbbbbbbbbbb1", "old").offline()],
        ..Default::default()
    })
    .expect("simulator");

    let (out, text) = doctor(&sim, &[], &[], &["old"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "target");
    assert!(l.starts_with("FAIL") && l.contains("ConnectionLost"), "{l}");
    assert!(text.contains("1 check failed"), "{text}");

    let (out, text) = doctor(
        &sim,
        &[],
        &[
            ("SSM_PROXY_SSMMESSAGES_ENDPOINT", "ws://127.0.0.1:1"),
            ("HTTPS_PROXY", "socks4://127.0.0.1:1080"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "data channel");
    assert!(l.starts_with("FAIL") && l.contains("127.0.0.1:1"), "{l}");
    let l = line(&text, "network settings");
    assert!(l.starts_with("FAIL") && l.contains("not supported"), "{l}");

    let started = Instant::now();
    let (out, text) = doctor(
        &sim,
        &[],
        &[("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:1")],
        &["web-1"],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "SSM endpoint");
    assert!(
        l.starts_with("FAIL") && l.contains("could not reach"),
        "{l}"
    );
    assert!(line(&text, "target").starts_with("skip"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "doctor took {:?}",
        started.elapsed()
    );

    let (out, text) = doctor(
        &sim,
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "credentials");
    assert!(l.starts_with("FAIL") && l.contains("aws sso login"), "{l}");

    let started = Instant::now();
    let (out, text) = doctor(&sim, &["AWS_REGION", "AWS_DEFAULT_REGION"], &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "region");
    assert!(l.starts_with("FAIL") && l.contains("--region"), "{l}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn ssh_config_block_completions_and_man_page() {
    let fx = crate::support::Fixture::new();
    let out = crate::support::run_ok(
        crate::support::apply_env(
            &mut std::process::Command::new(crate::support::proxy_bin()),
            &fx.env(),
        )
        .args(["ssh-config", "--send-key", "--region", "us-east-1"]),
        10,
    );
    let block = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(block.contains("Host i-* mi-*\n"), "{block}");
    let proxy_command = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("ProxyCommand "))
        .unwrap_or_else(|| panic!("no ProxyCommand in {block}"));
    let bin = crate::support::proxy_bin().display().to_string();
    assert!(
        proxy_command.starts_with(&bin) && proxy_command.ends_with("--send-key --user %r %h %p"),
        "{proxy_command}"
    );
    // The generated ProxyCommand works as is (the key push included: the fixture's key).
    let ssh_dir = fx.home.join(".ssh");
    std::fs::create_dir_all(&ssh_dir).expect(".ssh");
    std::fs::copy(
        format!("{}.pub", fx.sshd.key().display()),
        ssh_dir.join("id_ed25519.pub"),
    )
    .expect("copy key");
    let mut cmd = fx
        .sshd
        .ssh_cmd_via(proxy_command, crate::support::TARGET, &fx.env());
    cmd.arg("echo ok");
    let out = crate::support::run_ok(&mut cmd, 30);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(fx.sim.service().eic_pushed(crate::support::TARGET), 1);

    let run = |args: &[&str]| {
        let out = crate::support::run_ok(
            std::process::Command::new(crate::support::proxy_bin()).args(args),
            10,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("ssh-config") && bash.contains("--send-key"),
        "{bash}"
    );
    let man = run(&["man"]);
    assert!(man.contains(".TH ssm-proxy 1"), "{man}");
    assert!(man.contains("doctor"), "{man}");
}
