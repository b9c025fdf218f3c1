//! Bounded memory: 1 GiB from a fast TCP source through the real binary to a reader that is
//! slower than the source. The proxy must apply back-pressure (leave data unacked) instead of
//! buffering, so its peak RSS stays far below the transfer size; and not a byte may be lost.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::{ChildGuard, Sha256, XorShift, apply_env, proxy_bin, wait_bounded};

const TOTAL: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Peak resident set of a process so far, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn one_gib_to_a_slow_reader_keeps_rss_bounded() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let source = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut rng = XorShift::new(42);
        let mut sha = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            rng.fill(&mut block);
            conn.write_all(&block).expect("source write");
            sha.update(&block);
            sent += block.len() as u64;
        }
        sha.finish()
    });
    let mut cmd = std::process::Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args(["i-0123456789abcdef0", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = ChildGuard(cmd.spawn().expect("spawn ssm-proxy"));
    let pid = child.0.id();
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut sha = Sha256::new();
    let mut got = 0u64;
    let mut peak = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while got < TOTAL && std::time::Instant::now() < deadline {
        let n = stdout.read(&mut buf).expect("read stdout");
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        got += n as u64;
        if got % (16 << 20) < n as u64 {
            peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
            // The slow part: the source writes as fast as it can, we stop for a while.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    drop(child.0.stdin.take());
    let expected = source.join().expect("source thread");
    assert_eq!(got, TOTAL, "bytes delivered");
    assert_eq!(sha.finish(), expected, "content");
    eprintln!("memory: 1 GiB delivered, ssm-proxy peak RSS {} KiB", peak);
    assert!(peak > 0 && peak < RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    assert!(
        wait_bounded(&mut child.0, 30).is_some(),
        "ssm-proxy did not exit after the close"
    );
}
