//! The Windows build end to end, on Linux: `wine ssm-proxy.exe %h %p` as ssh's ProxyCommand
//! against the simulator and a real sshd, `ssm-proxy.exe forward`, Ctrl-C, and `--help`.
//!
//! The .exe and the Wine prefix (with the stand-in bcryptprimitives.dll) come from
//! scripts/test-windows: `SSM_PROXY_WINE_EXE` and `SSM_PROXY_WINE_PREFIX` name them (default:
//! where that script leaves them, under target/win). `.ci/run` runs it first and sets both;
//! without them the tests fail in CI and skip elsewhere (support::require).
//!
//! ssh ends its ProxyCommand with SIGHUP, which kills a Wine process outright, as Windows
//! OpenSSH's TerminateProcess does: these tests are what prove the .exe's watchdog
//! (src/os.rs) ends the session anyway.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::sshd::shell_quote;
use crate::support::{
    ChildGuard, Fixture, TARGET, TempDir, apply_env, kill_group, kill_pid, require, run_ok,
    run_with_timeout, sha256_file, spawn_group, wait_bounded, wait_until, write_random_file,
};

/// Wine starts slowly (a second or more per process on a busy machine).
const SHORT: u64 = 120;
const BULK: u64 = 400;

/// The Windows build and the prefix it runs in.
struct Wine {
    exe: PathBuf,
    prefix: PathBuf,
}

impl Wine {
    /// The Windows build and a prepared prefix, with the prefix's wineserver running; `None`
    /// (after `require`) when missing.
    fn find() -> Option<Wine> {
        let win = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("win");
        let path = |var: &str, default: PathBuf| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or(default, PathBuf::from)
        };
        let wine = Wine {
            exe: path(
                "SSM_PROXY_WINE_EXE",
                win.join("x86_64-pc-windows-gnu/debug/ssm-proxy.exe"),
            ),
            prefix: path("SSM_PROXY_WINE_PREFIX", win.join("wineprefix")),
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
            &format!(
                "wine, or the Windows build {} and its Wine prefix {} (run scripts/test-windows)",
                wine.exe.display(),
                wine.prefix.display()
            ),
        ) {
            return None;
        }
        wine.start_server();
        Some(wine)
    }

    /// Makes sure the prefix's wineserver and Wine's own background programs run, started
    /// detached and with no stdio. Otherwise the first `wine` of a test starts them, they
    /// inherit that test's pipes and hold them open for seconds after the test's processes
    /// exit. The server stays up 60 s after its last program ends (CI then stops it with
    /// `wineserver -k`), so a later test may find it gone and start it again here.
    fn start_server(&self) {
        static LOCK: Mutex<()> = Mutex::new(());
        let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let quiet = |program: &str, args: &[&str]| {
            let mut cmd = Command::new(program);
            apply_env(&mut cmd, &self.env(Vec::new()))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = spawn_group(&mut cmd);
            wait_bounded(&mut child, SHORT)
                .unwrap_or_else(|| panic!("{program} {args:?} did not finish in {SHORT} s"))
        };
        // Exit status 0: this call started the server (2: one was running already).
        if quiet("wineserver", &["-p60"]).success() {
            quiet("wine", &["cmd", "/c", "exit"]);
        }
    }

    /// The .exe's file name.
    fn file_name(&self) -> String {
        self.exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Waits (bounded) until no copy of the .exe serves `port`: the relays ssh started and
    /// their watchdogs have all exited.
    fn assert_gone(&self, port: u16) {
        let (name, port) = (self.file_name(), port.to_string());
        let running = || {
            let Ok(procs) = fs::read_dir("/proc") else {
                return false;
            };
            procs.flatten().any(|p| {
                fs::read(p.path().join("cmdline")).is_ok_and(|line| {
                    let mut args = line.split(|b| *b == 0);
                    args.next().is_some_and(|a| a.ends_with(name.as_bytes()))
                        && args.any(|a| a == port.as_bytes())
                })
            })
        };
        assert!(
            wait_until(30, || !running()),
            "a {name} for port {port} is still running"
        );
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
fn wine_ssh_config_names_the_exe_by_its_windows_path() {
    let Some(wine) = Wine::find() else { return };
    // What VS Code Remote-SSH runs: the .exe's absolute path (it does not search PATH).
    let out = run_ok(
        wine.command(&[], &["ssh-config"]).stdin(Stdio::null()),
        SHORT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ProxyCommand "))
        .unwrap_or_else(|| panic!("no ProxyCommand in {text}"));
    let exe = line.strip_suffix(" %h %p").unwrap_or(line);
    let name = format!("\\{}", wine.file_name());
    assert!(
        exe.get(1..3) == Some(":\\") && exe.ends_with(&name) && !exe.contains('/'),
        "not an absolute Windows path: {line}"
    );
    // Windows OpenSSH has no ControlMaster: --reuse is refused, not written.
    let out = run_with_timeout(
        wine.command(&[], &["ssh-config", "--reuse"])
            .stdin(Stdio::null()),
        SHORT,
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr_of(&out).contains("ControlMaster"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
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
    // ssh killed each .exe when it was done (SIGHUP, TerminateProcess on Windows): their
    // watchdogs ended the sessions and exited.
    fx.assert_no_sessions();
    assert!(fx.sim.stats().started >= 2, "went through the simulator");
    wine.assert_gone(fx.sshd.port());
}

#[test]
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
    wine.assert_gone(fx.sshd.port());
}

#[test]
fn wine_proxy_command_ends_the_session_when_ssh_goes() {
    let Some(wine) = Wine::find() else { return };
    let fx = Fixture::new();
    let env = wine.env(fx.env());
    // ssh alone interrupted (its window closed, say), then Ctrl-C in a terminal, which reaches
    // the whole foreground group: Wine turns SIGINT into the .exe's CTRL_C_EVENT, as a Windows
    // console does. Either way ssh kills the .exe as it exits.
    for (round, group) in [(1u64, false), (2, true)] {
        let mut cmd = fx.sshd.ssh_cmd_via(&wine.proxy_command(), TARGET, &env);
        cmd.arg("echo up; exec sleep 600")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut ssh = ChildGuard(spawn_group(&mut cmd));
        let stdout = ssh.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(SHORT));
        assert_eq!(line.as_deref(), Ok("up\n"), "round {round}");
        assert_eq!(fx.sim.active_sessions(), 1);
        match group {
            false => kill_pid(ssh.0.id(), "INT"),
            true => kill_group(ssh.0.id(), "INT"),
        }
        assert!(
            wait_bounded(&mut ssh.0, SHORT).is_some(),
            "ssh did not exit (round {round})"
        );
        fx.assert_no_sessions();
        assert_eq!(fx.sim.stats().started, round);
    }
    wine.assert_gone(fx.sshd.port());
}

#[test]
fn wine_forward_moves_bytes_exactly_and_ends_on_ctrl_c() {
    let Some(wine) = Wine::find() else { return };
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let spec = format!("0:{}", echo_server());
    let mut cmd = wine.command(&sim.env(), &["forward", TARGET, "-L", &spec]);
    cmd.stdout(Stdio::null());
    let mut fwd = Forwarder::spawn(&mut cmd);
    for i in 0..2u64 {
        let (sent, received) = echo_round_trip(fwd.connect(), 4 << 20, 300 + i);
        assert_eq!(sent, received, "connection {i}");
    }
    assert!(
        wait_until(10, || sim.active_sessions() == 1),
        "one session carries the forward"
    );
    // Ctrl-C: Wine delivers SIGINT as CTRL_C_EVENT; the handler ends the session (status 130).
    kill_pid(fwd.pid(), "INT");
    let status = wait_bounded(&mut fwd.child.0, SHORT).expect("exits after Ctrl-C");
    assert_eq!(status.code(), Some(130), "{}", fwd.stderr_text());
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
    assert!(sim.stats().terminated >= 1);
}
