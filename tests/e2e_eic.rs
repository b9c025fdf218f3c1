//! End to end: EC2 Instance Connect. The test sshd has no authorized_keys file; its
//! AuthorizedKeysCommand asks the simulator which keys were pushed with SendSSHPublicKey for the
//! user in the last 60 s. So ssh fails without `--send-key`, and works with it: the key really
//! travelled through the SDK, the simulator and sshd.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssm_proxy::sim::{SimConfig, SimInstance};

use crate::support::{
    Fixture, TARGET, is_root, one_line_failure, proxy_command, proxy_run, require, run_ok,
    run_with_timeout, wait_until,
};

const SSH_BOUND: u64 = 30;
const FAIL_BOUND: u64 = 10;

/// A root-owned directory outside /tmp: sshd refuses an AuthorizedKeysCommand whose path has a
/// group- or world-writable directory (such as /tmp) in it. Removed on drop.
struct SafeDir(PathBuf);

impl SafeDir {
    fn new() -> SafeDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/run/ssm-proxy-test-eic-{}-{n}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create dir under /run");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        SafeDir(path)
    }
}

impl Drop for SafeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fixture whose sshd accepts only keys pushed through the simulator's EC2 Instance Connect.
/// `None` (after saying so) when this machine cannot run it outside CI.
fn eic_fixture(config: SimConfig) -> Option<(Fixture, SafeDir)> {
    if !require(is_root(), "root (sshd's AuthorizedKeysCommandUser)")
        || !require(Path::new("/usr/bin/curl").exists() || which("curl"), "curl")
    {
        return None;
    }
    let sim = ssm_proxy::sim::Sim::start(config).expect("simulator");
    let dir = SafeDir::new();
    let script = dir.0.join("eic-keys");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec curl -sf --max-time 5 \"{}/sim/eic-keys/$1\"\n",
            sim.endpoint()
        ),
    )
    .expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod script");
    let sshd = crate::support::Sshd::start_with(&format!(
        "AuthorizedKeysFile none\nAuthorizedKeysCommand {} %u\nAuthorizedKeysCommandUser root\n",
        script.display()
    ));
    let fx = Fixture {
        sim,
        sshd,
        home: crate::support::TempDir::new("eic-home"),
    };
    Some((fx, dir))
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pubkey(fx: &Fixture) -> String {
    format!("{}.pub", fx.sshd.key().display())
}

fn ssh(fx: &Fixture, proxy_args: &str, host: &str) -> std::process::Output {
    let mut cmd = fx
        .sshd
        .ssh_cmd_via(&proxy_command(proxy_args), host, &fx.env());
    cmd.arg("echo ok");
    run_with_timeout(&mut cmd, SSH_BOUND)
}

#[test]
fn key_is_refused_until_pushed_then_accepted() {
    let Some((fx, _dir)) = eic_fixture(SimConfig::default()) else {
        return;
    };
    let out = ssh(&fx, "", TARGET);
    assert!(
        !out.status.success(),
        "sshd accepted a key that was never pushed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.sim.service().eic_pushed(TARGET), 0);

    let args = format!("--send-key={} --user %r", pubkey(&fx));
    let out = ssh(&fx, &args, TARGET);
    assert!(
        out.status.success(),
        "ssh with --send-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(fx.sim.service().eic_pushed(TARGET), 1);

    // The default key (~/.ssh/id_ed25519.pub) and a target by name.
    let ssh_dir = fx.home.join(".ssh");
    fs::create_dir_all(&ssh_dir).expect(".ssh");
    fs::copy(pubkey(&fx), ssh_dir.join("id_ed25519.pub")).expect("copy key");
    let out = run_ok(
        fx.sshd
            .ssh_cmd_via(&proxy_command("--send-key --user %r"), "web-1", &fx.env())
            .arg("echo ok"),
        SSH_BOUND,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(fx.sim.service().eic_pushed(TARGET), 2);
    fx.assert_no_sessions();
}

#[test]
fn pushed_keys_expire() {
    let Some((fx, _dir)) = eic_fixture(SimConfig {
        eic_validity: Duration::from_secs(1),
        ..Default::default()
    }) else {
        return;
    };
    let args = format!("--send-key={} --user %r", pubkey(&fx));
    let out = ssh(&fx, &args, TARGET);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = fx.sshd.user().to_owned();
    let service = fx.sim.service().clone();
    assert!(
        wait_until(10, || service.eic_authorized_keys(&user).is_empty()),
        "the pushed key never expired"
    );
    let out = ssh(&fx, "", TARGET);
    assert!(!out.status.success(), "an expired key was still accepted");
    fx.assert_no_sessions();
}

#[test]
fn send_key_errors_are_one_line() {
    let fx = Fixture::with(SimConfig {
        fleet: vec![
            SimInstance::new(TARGET, "web-1"),
            SimInstance::new("i-0bbbbbbbbbbbbbbb1", "old").offline(),
        ],
        denied: vec!["i-0ddddddddddddddd1".into()],
        ..Default::default()
    });
    let env = fx.env();
    let key = pubkey(&fx);
    let private = fx.sshd.key().display().to_string();
    let send = format!("--send-key={key}");
    let send_private = format!("--send-key={private}");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec![&send, TARGET, "22"], 2, "--send-key needs the os user"),
        (
            vec!["--send-key", "--user", "root", TARGET, "22"],
            2,
            "no public key in",
        ),
        (
            vec![&send_private, "--user", "root", TARGET, "22"],
            2,
            "is a private key",
        ),
        (
            vec![&send, "--user", "root", "mi-0123456789abcdef0", "22"],
            2,
            "works only for ec2 instances",
        ),
        (
            vec![&send, "--user", "root", "i-0bbbbbbbbbbbbbbb1", "22"],
            69,
            "ec2 instance connect refused the key for i-0bbbbbbbbbbbbbbb1 (ec2instancestateinvalidexception",
        ),
        (
            vec![&send, "--user", "root", "i-0eeeeeeeeeeeeeee1", "22"],
            69,
            "ec2instancenotfoundexception",
        ),
        (
            vec![&send, "--user", "root", "i-0ddddddddddddddd1", "22"],
            77,
            "allow ec2-instance-connect:sendsshpublickey",
        ),
    ];
    for (args, code, want) in cases {
        let out = proxy_run(&env, &args, FAIL_BOUND);
        let line = one_line_failure(&out).to_lowercase();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {line}");
        assert!(line.contains(want), "{args:?}: want {want:?} in {line}");
    }
    assert_eq!(fx.sim.stats().started, 0, "no session after a failed push");
}
