//! A slow local reader must never turn into dropped data (issue 19, §16.3): downloads into a
//! reader that stalls for a while every 16 MiB, through `ssm-proxy shell -- cat` and through
//! `ssm-proxy forward`, against the faithful simulated agent (no send window, oldest-only
//! resend). Plain ssh is protected by SSH's own channel window; a shell and a forward are not.
//! Byte-exact by sha256; the client must neither drop nor refuse output (it stops reading the
//! websocket instead), and its dead-link detector must not call the stall a dead path.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::forward::Forwarder;
use crate::support::{
    ChildGuard, Sha256, TARGET, TempDir, apply_env, proxy_bin, random_bytes, sha256, spawn_group,
    wait_bounded, write_shell_safe_random_file,
};

/// Stall this long…
const STALL: Duration = Duration::from_secs(10);
/// …every this many bytes.
const EVERY: usize = 16 << 20;
/// Two stalls and a tail.
const LEN: usize = 33 << 20;

/// Reads `len` bytes from `src`, stalling [`STALL`] every [`EVERY`] bytes; returns the digest.
fn stalling_read(mut src: impl Read, len: usize) -> (String, usize) {
    let mut sha = Sha256::new();
    let mut got = 0;
    let mut next_stall = EVERY;
    let mut buf = vec![0u8; 64 * 1024];
    while got < len {
        let want = buf.len().min(next_stall - got);
        let n = src.read(&mut buf[..want]).expect("read");
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        got += n;
        if got == next_stall {
            thread::sleep(STALL);
            next_stall += EVERY;
        }
    }
    (sha.finish(), got)
}

fn sim() -> Sim {
    let config = SimConfig {
        shell: Some("/bin/sh".into()),
        shell_output_delay: Duration::ZERO,
        ..Default::default()
    };
    Sim::start(config).expect("start simulator")
}

#[test]
fn stalled_reader_through_shell_cat_is_byte_exact() {
    let dir = TempDir::new("stall-shell");
    let file = dir.join("data.bin");
    let want = write_shell_safe_random_file(&file, LEN as u64, 19);
    let sim = sim();
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args(["shell", TARGET, "--", "cat", &file.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = ChildGuard(spawn_group(&mut cmd));
    let stdout = child.0.stdout.take().expect("stdout");
    let (got, n) = stalling_read(stdout, LEN + 1);
    let status = wait_bounded(&mut child.0, 60).expect("ssm-proxy shell exits");
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(n, LEN, "bytes received; stderr: {err}");
    assert_eq!(got, want, "content differs; stderr: {err}");
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(
        sim.stats().resumed,
        0,
        "the stall was taken for a dead path"
    );
    eprintln!(
        "shell cat {LEN} B with 2 stalls of {STALL:?}: {:?}",
        t0.elapsed()
    );
}

#[test]
fn stalled_reader_through_a_forward_is_byte_exact() {
    // A destination that sends LEN bytes at once and closes.
    let data = random_bytes(LEN, 1919);
    let want = sha256(&data);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.write_all(&data);
        }
    });
    let sim = sim();
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args(["forward", TARGET, "-L", &format!("0:127.0.0.1:{port}")])
        .stdout(Stdio::null());
    let fwd = Forwarder::spawn(&mut cmd);
    let conn = fwd.connect();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let t0 = Instant::now();
    let (got, n) = stalling_read(conn, LEN);
    assert_eq!(n, LEN, "bytes received; stderr: {}", fwd.stderr_text());
    assert_eq!(got, want, "content differs");
    assert_eq!(
        sim.stats().resumed,
        0,
        "the stall was taken for a dead path"
    );
    eprintln!(
        "forward {LEN} B with 2 stalls of {STALL:?}: {:?}",
        t0.elapsed()
    );
}
