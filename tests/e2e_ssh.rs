//! End to end: real OpenSSH clients (`ssh`, `scp`, `rsync`, `git`) talk to a real `sshd`
//! through `ssm-proxy` as ProxyCommand, with the in-process simulator standing in for AWS.
//!
//! Every test checks real bytes (SHA-256), exit codes or terminal output, and ends by asserting
//! the simulator has no session left open.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::support::{
    self, ChildGuard, Fixture, Sha256, TempDir, proxy_bin, random_bytes, run_ok, run_with_timeout,
    sha256, sha256_file, wait_bounded, write_random_file,
};

/// Bound for short commands (one ssh round trip).
const SHORT: u64 = 60;
/// Bound for bulk transfers.
const BULK: u64 = 300;

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn direct_baseline_matches_proxied() {
    let fx = Fixture::new();
    // The last word of SSH_CONNECTION is the server port: the proxied session must land on
    // the very same sshd.
    let script = "echo hello; id -un; echo \"${SSH_CONNECTION##* }\"";
    let direct = run_ok(fx.sshd.direct_ssh_cmd().arg(script), SHORT);
    let proxied = run_ok(fx.ssh().arg(script), SHORT);
    assert_eq!(
        stdout_of(&direct),
        format!("hello\n{}\n{}\n", fx.sshd.user(), fx.sshd.port())
    );
    assert_eq!(stdout_of(&proxied), stdout_of(&direct));
    fx.assert_no_sessions();
}

#[test]
fn ssh_true_exits_zero() {
    let fx = Fixture::new();
    let out = run_with_timeout(fx.ssh().arg("true"), SHORT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    fx.assert_no_sessions();
    assert!(
        fx.sim.stats().started >= 1,
        "the session went through the simulator"
    );
}

#[test]
fn ssh_exit_code_propagates() {
    let fx = Fixture::new();
    let out = run_with_timeout(fx.ssh().arg("exit 3"), SHORT);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.assert_no_sessions();
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let fx = Fixture::new();
    let out = run_ok(fx.ssh().arg("echo out; echo err >&2"), SHORT);
    assert_eq!(stdout_of(&out), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("err"), "stderr: {stderr:?}");
    assert!(
        !stderr.contains("out"),
        "stdout leaked into stderr: {stderr:?}"
    );
    fx.assert_no_sessions();
}

#[test]
fn scp_64mib_up_and_down() {
    Fixture::new().scp_round_trip(64, 64);
}

/// Counts "Number of regular files transferred: N" in `rsync --stats` output.
#[test]
fn rsync_tree_then_delta() {
    let fx = Fixture::new();
    support::rsync_tree_then_delta(&fx.sshd, proxy_bin(), &fx.env(), BULK);
    fx.assert_no_sessions();
}

/// Runs a local git command (no network) in `dir`.
fn git_local(fx: &Fixture, dir: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    support::apply_env(&mut cmd, &fx.env()).stdin(Stdio::null());
    stdout_of(&run_ok(cmd.current_dir(dir).args(args), SHORT))
}

#[test]
fn git_push_and_clone() {
    let fx = Fixture::new();
    let env = fx.env();
    let bare = fx.sshd.dir().join("repo.git");
    git_local(
        &fx,
        fx.sshd.dir(),
        &["init", "-q", "--bare", "-b", "main", "repo.git"],
    );

    let local = TempDir::new("git");
    let work = local.join("work");
    fs::create_dir(&work).expect("mkdir");
    git_local(&fx, &work, &["init", "-q", "-b", "main"]);
    git_local(&fx, &work, &["config", "user.name", "Test"]);
    git_local(&fx, &work, &["config", "user.email", "test@example.com"]);
    fs::write(work.join("README"), "hello over ssm\n").expect("write");
    let blob_digest = write_random_file(&work.join("blob.bin"), 1 << 20, 7);
    git_local(&fx, &work, &["add", "."]);
    git_local(&fx, &work, &["commit", "-q", "-m", "first"]);
    let url = fx.sshd.remote(&bare);
    run_ok(
        fx.sshd
            .git_cmd(proxy_bin(), &env)
            .current_dir(&work)
            .args(["push", "-q", &url, "main"]),
        BULK,
    );

    let clone = local.join("clone");
    run_ok(
        fx.sshd
            .git_cmd(proxy_bin(), &env)
            .args(["clone", "-q", &url])
            .arg(&clone),
        BULK,
    );
    assert_eq!(
        fs::read_to_string(clone.join("README")).expect("README"),
        "hello over ssm\n"
    );
    assert_eq!(sha256_file(&clone.join("blob.bin")), blob_digest);

    // A second commit pushed from the clone must land in the bare repository.
    git_local(&fx, &clone, &["config", "user.name", "Test"]);
    git_local(&fx, &clone, &["config", "user.email", "test@example.com"]);
    fs::write(clone.join("second.txt"), "two\n").expect("write");
    git_local(&fx, &clone, &["add", "second.txt"]);
    git_local(&fx, &clone, &["commit", "-q", "-m", "second"]);
    run_ok(
        fx.sshd
            .git_cmd(proxy_bin(), &env)
            .current_dir(&clone)
            .args(["push", "-q", "origin", "main"]),
        BULK,
    );
    let local_head = git_local(&fx, &clone, &["rev-parse", "HEAD"]);
    let remote_head = git_local(&fx, &bare, &["rev-parse", "main"]);
    assert_eq!(remote_head, local_head);
    fx.assert_no_sessions();
}

/// A one-connection TCP echo server on 127.0.0.1; returns its port.
fn echo_server() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut out = conn.try_clone().expect("clone");
        let _ = std::io::copy(&mut conn, &mut out);
    });
    (port, handle)
}

#[test]
fn local_forward_carries_8mib() {
    const LEN: usize = 8 << 20;
    let fx = Fixture::new();
    let (echo_port, echo) = echo_server();
    let data = random_bytes(LEN, 88);

    // ssh -L needs a concrete local port: pick a free one, retrying if we lose it to a race.
    let mut tunnel = None;
    for _ in 0..3 {
        let local_port = support::sshd::free_port();
        let mut cmd = fx.ssh();
        cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("127.0.0.1:{local_port}:127.0.0.1:{echo_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pair) = support::open_local_forward(&mut cmd, local_port, SHORT) {
            tunnel = Some(pair);
            break;
        }
    }
    let (mut ssh, mut conn) = tunnel.expect("the -L listener never came up");

    conn.set_read_timeout(Some(Duration::from_secs(SHORT)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let to_send = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&to_send).expect("send through tunnel");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    let mut echoed = Vec::with_capacity(LEN);
    conn.read_to_end(&mut echoed).expect("read echo");
    sender.join().expect("sender");
    echo.join().expect("echo server");
    assert_eq!(echoed.len(), LEN);
    assert_eq!(sha256(&echoed), sha256(&data));

    // Ask ssh to exit cleanly (it then closes the proxy) and expect no session left behind.
    support::kill_pid(ssh.0.id(), "TERM");
    assert!(
        wait_bounded(&mut ssh.0, SHORT).is_some(),
        "ssh -N did not exit"
    );
    fx.assert_no_sessions();
}

#[test]
fn tty_is_allocated() {
    let fx = Fixture::new();
    let out = run_ok(fx.ssh().args(["-tt"]).arg("tty"), SHORT);
    let stdout = stdout_of(&out);
    assert!(
        stdout.trim().starts_with("/dev/pts/"),
        "tty printed {stdout:?}"
    );
    fx.assert_no_sessions();
}

#[test]
fn eight_parallel_sessions() {
    let fx = Fixture::new();
    let env = fx.env();
    let files = TempDir::new("parallel");
    thread::scope(|s| {
        let workers: Vec<_> = (0..8u64)
            .map(|i| {
                let (fx, env, files) = (&fx, &env, &files);
                s.spawn(move || {
                    // Upstream: 1 MiB on stdin, hashed by the server.
                    let path = files.join(format!("in{i}.bin"));
                    let digest = write_random_file(&path, 1 << 20, 500 + i);
                    let input = fs::File::open(&path).expect("open");
                    let out = run_ok(
                        fx.sshd
                            .ssh_cmd(proxy_bin(), env)
                            .arg("sha256sum")
                            .stdin(Stdio::from(input)),
                        BULK,
                    );
                    assert_eq!(stdout_of(&out), format!("{digest}  -\n"), "session {i} up");
                    // Downstream: the server sends the same bytes back.
                    let out = run_ok(
                        fx.sshd
                            .ssh_cmd(proxy_bin(), env)
                            .arg(format!("cat {}", path.display())),
                        BULK,
                    );
                    assert_eq!(sha256(&out.stdout), digest, "session {i} down");
                })
            })
            .collect();
        for w in workers {
            w.join().expect("parallel session failed");
        }
    });
    assert!(fx.sim.stats().started >= 16);
    fx.assert_no_sessions();
}

#[test]
fn full_duplex_16mib_through_cat() {
    const LEN: u64 = 16 << 20;
    let fx = Fixture::new();
    let mut cmd = fx.ssh();
    cmd.arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(support::spawn_group(&mut cmd));
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut stderr = child.0.stderr.take().expect("stderr");

    // Writer and reader run at the same time: `cat` echoes while we are still sending.
    let writer = thread::spawn(move || {
        let mut rng = support::XorShift::new(16);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut left = LEN;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            stdin.write_all(&buf[..n]).expect("write to ssh");
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finish()
    });
    let reader = thread::spawn(move || {
        let mut h = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = stdout.read(&mut buf).expect("read from ssh");
            if n == 0 {
                return (total, h.finish());
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let status = wait_bounded(&mut child.0, BULK).expect("ssh cat timed out");
    let sent = writer.join().expect("writer");
    let (received, got) = reader.join().expect("reader");
    let err = err_reader.join().expect("stderr");
    assert!(status.success(), "ssh cat failed ({status}): {err}");
    assert_eq!(received, LEN);
    assert_eq!(got, sent);
    fx.assert_no_sessions();
}
