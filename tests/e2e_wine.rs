//! The Windows build end to end, on Linux: `wine ssm-proxy.exe %h %p` as ssh's ProxyCommand
//! against the simulator and a real sshd, `ssm-proxy.exe forward`, and `--help`.
//!
//! The .exe and the Wine prefix (with the stand-in bcryptprimitives.dll) come from
//! scripts/test-windows, which `.ci/run` runs first; without them the tests fail in CI and
//! skip elsewhere (support::require).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::sshd::shell_quote;
use crate::support::{
    ChildGuard, Fixture, TARGET, TempDir, apply_env, require, run_ok, run_with_timeout,
    sha256_file, spawn_group, wait_bounded, wait_until, write_random_file,
};

/// Wine starts slowly (a second or more per process on a busy machine).
const SHORT: u64 = 120;
const BULK: u64 = 400;

/// Where scripts/test-windows leaves the .exe and the prefix.
struct Wine {
    exe: PathBuf,
    prefix: PathBuf,
}

impl Wine {
    /// The Windows build and a prepared prefix, or `None` (after `require`) when missing.
    fn find() -> Option<Wine> {
        let win = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("win");
        let wine = Wine {
            exe: win.join("x86_64-pc-windows-gnu/debug/ssm-proxy.exe"),
            prefix: win.join("wineprefix"),
        };
        let dll = wine
            .prefix
            .join("drive_c/windows/system32/bcryptprimitives.dll");
        let has_wine = Command::new("wine")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let ready = has_wine && wine.exe.is_file() && dll.is_file();
        if !require(
            ready,
            "wine, or the Windows build and its Wine prefix (run scripts/test-windows)",
        ) {
            return None;
        }
        wine.start_server();
        Some(wine)
    }

    /// Starts the prefix's wineserver and Wine's own background programs once, detached and
    /// with no stdio. Otherwise the first `wine` of a test starts them, they inherit that
    /// test's pipes and hold them open for seconds after the test's processes exit. The
    /// server stays up 60 s after its last program ends.
    fn start_server(&self) {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let quiet = |cmd: &mut Command| {
                apply_env(cmd, &self.env(Vec::new()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            };
            for (program, args) in [
                ("wineserver", &["-p60"][..]),
                ("wine", &["cmd", "/c", "exit"]),
            ] {
                let mut cmd = Command::new(program);
                quiet(cmd.args(args));
                let mut child = spawn_group(&mut cmd);
                assert!(
                    wait_bounded(&mut child, SHORT).is_some(),
                    "{program} {args:?} did not finish"
                );
            }
        });
    }

    /// The variables Wine needs, added to a client environment.
    fn env(&self, mut env: Vec<(String, String)>) -> Vec<(String, String)> {
        env.push(("WINEPREFIX".into(), self.prefix.display().to_string()));
        env.push(("WINEDEBUG".into(), "-all".into()));
        env.push(("WINEDLLOVERRIDES".into(), "mscoree,mshtml=".into()));
        env
    }

    /// `wine ssm-proxy.exe %h %p`, quoted for ssh's `sh -c`.
    fn proxy_command(&self) -> String {
        format!(
            "wine {} %h %p",
            shell_quote(&self.exe.display().to_string())
        )
    }

    /// `wine ssm-proxy.exe ARGS` with `env` applied.
    fn command(&self, env: &[(String, String)], args: &[&str]) -> Command {
        let mut cmd = Command::new("wine");
        apply_env(&mut cmd, &self.env(env.to_vec()))
            .arg(&self.exe)
            .args(args);
        cmd
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "issue 17: not yet green on the merged tree; run scripts/test-windows, then --ignored"]
fn wine_help_prints_usage_without_crlf() {
    let Some(wine) = Wine::find() else { return };
    let out = run_ok(wine.command(&[], &["--help"]).stdin(Stdio::null()), SHORT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage:"), "{text}");
    assert!(text.contains("ssm-proxy"), "{text}");
    // stdout is binary on Windows too: no text-mode CRLF translation.
    assert!(!out.stdout.contains(&b'\r'), "CR in --help output");
}

#[test]
#[ignore = "issue 17: not yet green on the merged tree; run scripts/test-windows, then --ignored"]
fn wine_proxy_command_runs_ssh_true_and_exit_status() {
    let Some(wine) = Wine::find() else { return };
    let fx = Fixture::new();
    let env = wine.env(fx.env());
    let ssh = || fx.sshd.ssh_cmd_via(&wine.proxy_command(), TARGET, &env);
    let out = run_with_timeout(ssh().arg("true"), SHORT);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    let out = run_with_timeout(ssh().arg("echo hello; exit 7"), SHORT);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    fx.assert_no_sessions();
    assert!(fx.sim.stats().started >= 2, "went through the simulator");
}

#[test]
#[ignore = "issue 17: not yet green on the merged tree; run scripts/test-windows, then --ignored"]
fn wine_proxy_command_scp_16mib_both_ways() {
    let Some(wine) = Wine::find() else { return };
    let fx = Fixture::new();
    let env = wine.env(fx.env());
    let local = TempDir::new("wine-scp");
    let src = local.join("src.bin");
    let digest = write_random_file(&src, 16 << 20, 17);
    let remote = fx.sshd.dir().join("wine-up.bin");
    let scp = || fx.sshd.scp_cmd_via(&wine.proxy_command(), &env);
    run_ok(scp().arg(&src).arg(fx.sshd.remote(&remote)), BULK);
    assert_eq!(sha256_file(&remote), digest, "upload corrupted");
    let down = local.join("down.bin");
    run_ok(scp().arg(fx.sshd.remote(&remote)).arg(&down), BULK);
    assert_eq!(fs::metadata(&down).map(|m| m.len()).ok(), Some(16 << 20));
    assert_eq!(sha256_file(&down), digest, "download corrupted");
    fx.assert_no_sessions();
}

#[test]
#[ignore = "issue 17: not yet green on the merged tree; run scripts/test-windows, then --ignored"]
fn wine_proxy_command_ends_the_session_when_ssh_goes() {
    let Some(wine) = Wine::find() else { return };
    let fx = Fixture::new();
    let env = wine.env(fx.env());
    let mut cmd = fx.sshd.ssh_cmd_via(&wine.proxy_command(), TARGET, &env);
    cmd.arg("echo up; exec sleep 600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut ssh = ChildGuard(spawn_group(&mut cmd));
    let mut line = String::new();
    BufReader::new(ssh.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "up\n");
    assert_eq!(fx.sim.active_sessions(), 1);
    // ssh going away (Ctrl-C in a terminal, a closed VS Code window) closes the ProxyCommand's
    // stdin and sends it SIGHUP: the .exe must end the session, not leave it open.
    crate::support::kill_pid(ssh.0.id(), "INT");
    assert!(
        wait_bounded(&mut ssh.0, SHORT).is_some(),
        "ssh did not exit"
    );
    fx.assert_no_sessions();
}

#[test]
#[ignore = "issue 17: not yet green on the merged tree; run scripts/test-windows, then --ignored"]
fn wine_forward_moves_bytes_exactly() {
    let Some(wine) = Wine::find() else { return };
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let spec = format!("0:{}", echo_server());
    let mut cmd = wine.command(&sim.env(), &["forward", TARGET, "-L", &spec]);
    cmd.stdout(Stdio::null());
    let fwd = Forwarder::spawn(&mut cmd);
    for i in 0..2u64 {
        let (sent, received) = echo_round_trip(fwd.connect(), 4 << 20, 300 + i);
        assert_eq!(sent, received, "connection {i}");
    }
    assert!(
        wait_until(10, || sim.active_sessions() == 1),
        "one session carries the forward"
    );
    drop(fwd);
}
