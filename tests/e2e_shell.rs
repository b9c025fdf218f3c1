//! `ssm-proxy shell` end to end: the real binary on a real terminal (a tmux pane), on pipes, and
//! running remote commands, against the simulator's shell sessions (a real local pty running
//! `/bin/sh`, §12.3). Every wait polls for a signal with a bound; tmux servers run on their own
//! socket and are killed on drop.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::{
    TempDir, apply_env, proxy_bin, require, run_with_timeout, spawn_group, wait_bounded, wait_until,
};

const TARGET: &str = "i-0123456789abcdef0";
/// Bound for one session from launch to exit.
const SESSION: u64 = 60;
/// Bound for one thing to appear on the screen.
const SCREEN: u64 = 20;
/// The remote prompt, distinct from the local pane's.
const REMOTE_PROMPT: &str = "sim$ ";

/// A simulator whose shell sessions run `/bin/sh` with [`REMOTE_PROMPT`] (through a wrapper
/// script in `dir`), with the agent's real 1 s output delay unless `instant`.
fn shell_sim(dir: &Path, instant: bool) -> Sim {
    Sim::start(shell_config(dir, instant)).expect("start simulator")
}

/// The configuration of [`shell_sim`].
fn shell_config(dir: &Path, instant: bool) -> SimConfig {
    let wrapper = dir.join("remote-shell");
    fs::write(
        &wrapper,
        format!("#!/bin/sh\nPS1='{REMOTE_PROMPT}' exec /bin/sh -i\n"),
    )
    .expect("write wrapper");
    make_executable(&wrapper);
    let mut config = SimConfig {
        shell: Some(wrapper.display().to_string()),
        ..Default::default()
    };
    if instant {
        config.shell_output_delay = Duration::ZERO;
    }
    config
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = fs::metadata(path).expect("stat").permissions();
    perm.set_mode(0o755);
    fs::set_permissions(path, perm).expect("chmod");
}

fn shell_cmd(sim: &Sim, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(proxy_bin());
    let mut env = sim.env();
    env.push(("HOME".into(), home.display().to_string()));
    apply_env(&mut cmd, &env).arg("shell").args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn assert_no_sessions(sim: &Sim) {
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left active in the simulator: {:?}",
        sim.stats()
    );
}

/// A tmux server on its own socket with one `cols`×`rows` window running `sh`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(dir: &Path, cols: u16, rows: u16) -> Tmux {
        static N: AtomicU64 = AtomicU64::new(0);
        let socket = format!(
            "ssm-proxy-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux { socket };
        // A plain local sh with a known prompt; -u and a UTF-8 locale so text survives.
        let out = tmux.run(&[
            "-u",
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "-c",
            &dir.display().to_string(),
            "env PS1='local$ ' LANG=C.UTF-8 /bin/sh",
        ]);
        assert!(out.status.success(), "tmux new-session: {}", show(&out));
        tmux.wait_for("the local prompt", |s| s.contains("local$"));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, 10)
    }

    /// Keys by tmux name (`Enter`, `C-c`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "send-keys: {}", show(&out));
    }

    /// Text typed as it is.
    fn type_text(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "t", "-l", text]);
        assert!(out.status.success(), "send-keys -l: {}", show(&out));
    }

    fn screen(&self) -> String {
        text(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout)
    }

    /// Polls the screen until `pred` holds; fails the test with the screen after [`SCREEN`] s.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(SCREEN);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a process with exactly this argv runs on this machine (the simulator's shell is
/// local, so the test can see what the remote side runs).
fn process_running(argv: &[&str]) -> bool {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
}

/// A script that records the terminal settings, runs `ssm-proxy shell TARGET` with the
/// simulator's environment, then records its exit status and the settings again.
fn launch_script(sim: &Sim, dir: &Path) -> PathBuf {
    let mut env = sim.env();
    env.push(("HOME".into(), dir.display().to_string()));
    env.push(("PATH".into(), "/usr/bin:/bin".into()));
    let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
    let d = dir.display();
    let script = format!(
        "stty -g > {d}/before\nenv -i TERM=\"$TERM\" LANG=C.UTF-8 {} '{}' shell {TARGET}\n\
         echo $? > {d}/status.tmp\nstty -g > {d}/after\nmv {d}/status.tmp {d}/status\n",
        vars.join(" "),
        proxy_bin().display()
    );
    let path = dir.join("launch.sh");
    fs::write(&path, script).expect("write script");
    path
}

#[test]
fn shell_on_a_terminal() {
    if !require(have_tmux(), "tmux") {
        return;
    }
    let dir = TempDir::new("shell-tty");
    let sim = shell_sim(dir.path(), false);
    let tmux = launched(&sim, &dir);

    // A command and its output (the typed text shows `$((6*7))`, only the output shows 42).
    tmux.type_text("echo hello-$((6*7))");
    tmux.keys(&["Enter"]);
    tmux.wait_for("command output", |s| s.contains("hello-42"));

    // The real window size at start, then a resize through SIGWINCH.
    tmux.type_text("stty size");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the initial size", |s| {
        s.lines().any(|l| l.trim() == "40 120")
    });
    tmux.type_text("clear");
    tmux.keys(&["Enter"]);
    tmux.wait_for("a cleared screen", |s| !s.contains("40 120"));
    let out = tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    assert!(out.status.success(), "resize-window: {}", show(&out));
    // The resize reaches the remote pty asynchronously: ask until it reports the new size.
    let deadline = Instant::now() + Duration::from_secs(SCREEN);
    loop {
        tmux.type_text("stty size");
        tmux.keys(&["Enter"]);
        let seen = wait_until(2, || tmux.screen().lines().any(|l| l.trim() == "30 100"));
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stty size never said 30 100; screen:\n{}",
            tmux.screen()
        );
    }

    // UTF-8 typed (and pasted as one burst) arrives intact and comes back.
    tmux.type_text("echo 'héllo wörld — 日本語 ✓'");
    tmux.keys(&["Enter"]);
    tmux.wait_for("UTF-8 output", |s| {
        s.lines().any(|l| l.trim() == "héllo wörld — 日本語 ✓")
    });

    // Ctrl-C reaches the remote program and stops it; the shell lives on.
    tmux.type_text("sleep 987");
    tmux.keys(&["Enter"]);
    assert!(
        wait_until(SCREEN, || process_running(&["sleep", "987"])),
        "sleep 987 never started; screen:\n{}",
        tmux.screen()
    );
    tmux.keys(&["C-c"]);
    assert!(
        wait_until(SCREEN, || !process_running(&["sleep", "987"])),
        "Ctrl-C did not stop sleep; screen:\n{}",
        tmux.screen()
    );
    tmux.type_text("echo alive-$((2+3))");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the shell after Ctrl-C", |s| s.contains("alive-5"));

    // Ctrl-Z and Ctrl-\ are bytes for the remote program too (cat -v shows them, the local
    // process neither stops nor quits).
    tmux.type_text("stty -isig -echo; cat -v; stty sane");
    tmux.keys(&["Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-z", "C-\\", "Enter"]);
    tmux.wait_for("^Z^\\ from cat -v", |s| s.contains("^Z^\\"));
    tmux.keys(&["C-d"]);
    tmux.type_text("echo back-$((3+4))");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the shell after cat", |s| s.contains("back-7"));

    // ~? lists the escapes; ~. disconnects.
    tmux.keys(&["Enter"]);
    tmux.type_text("~?");
    tmux.wait_for("the escape help", |s| {
        s.contains("Supported escape sequences")
    });
    tmux.type_text("~.");
    assert_eq!(finished(&tmux, &dir), "0");
    assert_no_sessions(&sim);
    tmux.wait_for("the disconnect note", |s| s.contains("disconnected (~.)"));
}

/// Pids of processes whose argv starts with `prefix` and whose working directory is `cwd`
/// (each test's pane starts in its own directory).
fn pids_of(prefix: &[&str], cwd: &Path) -> Vec<u32> {
    let want: Vec<u8> = prefix
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(&want)))
        .filter(|e| fs::read_link(e.path().join("cwd")).is_ok_and(|d| d == cwd))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Launches `ssm-proxy shell` in a fresh tmux pane and waits for the remote prompt.
fn launched(sim: &Sim, dir: &TempDir) -> Tmux {
    let script = launch_script(sim, dir.path());
    let tmux = Tmux::start(dir.path(), 120, 40);
    tmux.type_text(&format!("sh {}", script.display()));
    tmux.keys(&["Enter"]);
    // capture-pane drops trailing blanks: look for the prompt without its space.
    tmux.wait_for("the remote prompt", |s| {
        s.contains(REMOTE_PROMPT.trim_end())
    });
    tmux
}

/// Waits for the launch script to finish; returns ssm-proxy's exit status and checks that the
/// terminal settings are what they were before it started.
fn finished(tmux: &Tmux, dir: &TempDir) -> String {
    let status = dir.join("status");
    assert!(
        wait_until(SCREEN, || status.exists()),
        "ssm-proxy did not exit; screen:\n{}",
        tmux.screen()
    );
    let before = fs::read_to_string(dir.join("before")).unwrap();
    let after = fs::read_to_string(dir.join("after")).unwrap();
    assert!(!before.trim().is_empty());
    assert_eq!(before, after, "terminal settings changed");
    fs::read_to_string(&status).unwrap().trim().to_owned()
}

#[test]
fn shell_exit_ends_the_session_and_restores_the_terminal() {
    if !require(have_tmux(), "tmux") {
        return;
    }
    let dir = TempDir::new("shell-exit");
    let sim = shell_sim(dir.path(), true);
    let tmux = launched(&sim, &dir);
    tmux.type_text("exit");
    tmux.keys(&["Enter"]);
    // A shell reports no exit code: the channel closing normally is 0.
    assert_eq!(finished(&tmux, &dir), "0");
    assert_no_sessions(&sim);
}

#[test]
fn sigterm_ends_the_session_and_restores_the_terminal() {
    if !require(have_tmux(), "tmux") {
        return;
    }
    let dir = TempDir::new("shell-term");
    let sim = shell_sim(dir.path(), true);
    let tmux = launched(&sim, &dir);
    let bin = proxy_bin().display().to_string();
    let pids = pids_of(&[&bin, "shell", TARGET], dir.path());
    assert_eq!(pids.len(), 1, "one ssm-proxy shell process: {pids:?}");
    crate::support::kill_pid(pids[0], "TERM");
    assert_eq!(finished(&tmux, &dir), "143");
    assert_no_sessions(&sim);
}

#[test]
fn command_exit_status_and_streams() {
    let dir = TempDir::new("shell-cmd");
    let sim = shell_sim(dir.path(), false);
    let mut cmd = shell_cmd(
        &sim,
        dir.path(),
        &[TARGET, "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    cmd.stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, SESSION);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(text(&out.stdout), "out\n", "{}", show(&out));
    assert!(text(&out.stderr).contains("err"), "{}", show(&out));
    assert_no_sessions(&sim);
}

#[test]
fn command_output_is_byte_exact() {
    let dir = TempDir::new("shell-bytes");
    let sim = shell_sim(dir.path(), true);
    // Multi-byte characters across many 1024-byte messages, plus bytes that are not UTF-8.
    let mut data = "añ€😀 日本語\n".repeat(3000).into_bytes();
    data.extend_from_slice(&[0xff, 0xfe, 0xe2, 0x82]);
    let file = dir.join("data.txt");
    fs::write(&file, &data).unwrap();
    let mut cmd = shell_cmd(
        &sim,
        dir.path(),
        &[TARGET, "--", "cat", &file.display().to_string()],
    );
    cmd.stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, SESSION);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == data,
        "output differs ({} of {} bytes)",
        out.stdout.len(),
        data.len()
    );
    assert_no_sessions(&sim);
}

#[test]
fn interactive_command_runs_on_a_remote_terminal() {
    let dir = TempDir::new("shell-t");
    let sim = shell_sim(dir.path(), true);
    let mut cmd = shell_cmd(
        &sim,
        dir.path(),
        &[
            "-t",
            TARGET,
            "--",
            "sh",
            "-c",
            "test -t 0 && echo on-a-tty; exit 3",
        ],
    );
    cmd.stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, SESSION);
    assert!(text(&out.stdout).contains("on-a-tty"), "{}", show(&out));
    // InteractiveCommands report no exit code (§12.4): a normal close is 0 (docs/shell.md).
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_no_sessions(&sim);
}

#[test]
fn piped_stdin_drives_the_shell() {
    let dir = TempDir::new("shell-pipe");
    let sim = shell_sim(dir.path(), false);
    let mut cmd = shell_cmd(&sim, dir.path(), &[TARGET]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_group(&mut cmd);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"echo piped; exit\n").expect("write");
    drop(stdin);
    let status = wait_bounded(&mut child, SESSION).expect("ssm-proxy shell did not exit");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let shown = format!("stdout:\n{}\nstderr:\n{}", text(&stdout), text(&stderr));
    assert_eq!(status.code(), Some(0), "{shown}");
    assert!(
        text(&stdout).lines().any(|l| l.trim_end() == "piped"),
        "{shown}"
    );
    assert_no_sessions(&sim);
}

#[test]
fn unknown_document_fails_in_one_line() {
    let dir = TempDir::new("shell-doc");
    let sim = shell_sim(dir.path(), true);
    let mut cmd = shell_cmd(&sim, dir.path(), &[TARGET, "--document", "No-Such-Doc"]);
    cmd.stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, SESSION);
    let line = crate::support::one_line_failure(&out);
    assert!(line.contains("No-Such-Doc"), "{line}");
}

/// Milliseconds since `t0`.
fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// Median of 20 keystroke echoes on the pane's current line: type one letter, poll the screen
/// until it shows. `prompt` marks the line being typed on.
fn echo_median(tmux: &Tmux, prompt: &str) -> f64 {
    let line = |s: &str| {
        s.lines()
            .rfind(|l| l.contains(prompt))
            .map(|l| l.trim_end().to_owned())
            .unwrap_or_default()
    };
    let mut samples = Vec::new();
    for c in "abcdefghijklmnopqrst".chars() {
        // capture-pane drops trailing blanks, so compare lengths and the last character.
        let before = line(&tmux.screen()).len();
        let t0 = Instant::now();
        tmux.type_text(&c.to_string());
        // A tight poll (no sleep, no helper threads) for a finer measurement than wait_for.
        let deadline = t0 + Duration::from_secs(SCREEN);
        loop {
            let out = Command::new("tmux")
                .args(["-L", &tmux.socket, "capture-pane", "-p", "-t", "t"])
                .output()
                .expect("capture-pane");
            let now = line(&text(&out.stdout));
            if now.len() > before && now.ends_with(c) {
                break;
            }
            assert!(Instant::now() < deadline, "no echo of {c}");
        }
        samples.push(ms_since(t0));
    }
    tmux.keys(&["C-u"]);
    samples.sort_by(f64::total_cmp);
    (samples[9] + samples[10]) / 2.0
}

/// Start-up and keystroke-echo latency through the simulator, printed (not asserted):
/// `cargo test --test integration shell_latency -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand"]
fn shell_latency() {
    if !require(have_tmux(), "tmux") {
        return;
    }
    for (instant, kms) in [(false, false), (true, false), (true, true)] {
        let dir = TempDir::new("shell-latency");
        let sim = Sim::start(SimConfig {
            kms_key: kms.then(|| "alias/latency".to_owned()),
            ..shell_config(dir.path(), instant)
        })
        .expect("start simulator");
        let script = launch_script(&sim, dir.path());
        let tmux = Tmux::start(dir.path(), 120, 40);
        let local = echo_median(&tmux, "local$");
        tmux.type_text(&format!("sh {}", script.display()));
        let t0 = Instant::now();
        tmux.keys(&["Enter"]);
        tmux.wait_for("the remote prompt", |s| {
            s.contains(REMOTE_PROMPT.trim_end())
        });
        let start = ms_since(t0);
        let remote = echo_median(&tmux, REMOTE_PROMPT.trim_end());
        println!(
            "agent output delay {}{}: Enter to prompt {start:.0} ms (tmux); echo median of 20: \
             {remote:.1} ms remote, {local:.1} ms local pane (tmux polling floor)",
            if instant { "0 s" } else { "1 s (real agent)" },
            if kms { ", KMS-encrypted" } else { "" }
        );
        tmux.type_text("exit");
        tmux.keys(&["Enter"]);
        assert!(wait_until(SCREEN, || dir.join("status").exists()));
        // The same start through pipes: launch to first stdout byte, then echoes without tmux
        // in the way. A reader thread and bounded receives keep every wait bounded.
        let mut cmd = shell_cmd(&sim, dir.path(), &[TARGET]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let mut child = crate::support::ChildGuard(spawn_group(&mut cmd));
        let mut stdout = child.0.stdout.take().expect("stdout");
        let mut stdin = child.0.stdin.take().expect("stdin");
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let next = || {
            rx.recv_timeout(Duration::from_secs(SCREEN))
                .expect("output over pipes")
        };
        let mut seen = next();
        let start = ms_since(t0);
        while !String::from_utf8_lossy(&seen).contains(REMOTE_PROMPT) {
            seen.extend(next());
        }
        let mut samples = Vec::new();
        for c in b"abcdefghijklmnopqrst" {
            let t0 = Instant::now();
            stdin.write_all(&[*c]).expect("write");
            stdin.flush().expect("flush");
            while !next().contains(c) {}
            samples.push(ms_since(t0));
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "  over pipes: launch to first output byte {start:.0} ms; echo median of 20 \
             {:.2} ms (min {:.2}, max {:.2})",
            (samples[9] + samples[10]) / 2.0,
            samples[0],
            samples[19]
        );
    }
}
