//! `ssm-proxy forward` end to end: the real binary listening locally, the simulator's agent
//! dialing real local services, in both agent modes (smux and basic), with SHA-256 on every byte.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{DropPlan, Sim, SimConfig};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::sshd::Sshd;
use crate::support::{
    TARGET, TempDir, apply_env, kill_pid, proxy_bin, random_bytes, run_ok, sha256_file,
    wait_bounded, wait_until, write_random_file,
};

#[test]
fn ten_concurrent_mux_connections_move_4mib_each_way() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let workers: Vec<_> = (0..10u64)
        .map(|i| {
            let conn = fwd.connect();
            thread::spawn(move || echo_round_trip(conn, 4 << 20, i))
        })
        .collect();
    for w in workers {
        let (sent, received) = w.join().expect("worker");
        assert_eq!(sent, received);
    }
    assert!(
        fwd.stderr_text().is_empty() || !fwd.stderr_text().contains("ERROR"),
        "{}",
        fwd.stderr_text()
    );
}

#[test]
fn basic_mode_serves_sequential_connections() {
    // An agent too old for smux: both sides must fall back to one connection at a time.
    let sim = Sim::start(SimConfig {
        agent_version: "3.0.100.0".into(),
        ..Default::default()
    })
    .expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    for i in 0..3 {
        let (sent, received) = echo_round_trip(fwd.connect(), 1 << 20, 100 + i);
        assert_eq!(sent, received, "connection {i}");
    }
}

#[test]
fn ssh_and_scp_through_a_forwarded_port() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let sshd = Sshd::start();
    let fwd = Forwarder::start(&sim, &format!("0:{}", sshd.port()));
    let mut ssh = sshd.direct_ssh_cmd_to(fwd.local_port);
    let out = run_ok(ssh.arg("echo forwarded"), 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "forwarded\n");
    let dir = TempDir::new("fwd-scp");
    let src = dir.join("src.bin");
    let digest = write_random_file(&src, 8 << 20, 5);
    let remote = sshd.dir().join("fwd.bin");
    run_ok(
        sshd.direct_scp_cmd_to(fwd.local_port)
            .arg(&src)
            .arg(format!("{}@127.0.0.1:{}", sshd.user(), remote.display())),
        120,
    );
    assert_eq!(sha256_file(&remote), digest);
}

#[test]
fn http_request_with_curl() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind http");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = [0u8; 4096];
            let _ = conn.read(&mut req);
            let body = "hello from behind the instance\n";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{port}"));
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .arg(format!("http://127.0.0.1:{}/", fwd.local_port)),
        30,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from behind the instance\n"
    );
}

#[test]
fn a_connection_closed_mid_transfer_leaves_the_others_intact() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let survivors: Vec<_> = (0..3u64)
        .map(|i| {
            let conn = fwd.connect();
            thread::spawn(move || echo_round_trip(conn, 2 << 20, 200 + i))
        })
        .collect();
    let mut victim = fwd.connect();
    victim
        .write_all(&random_bytes(256 * 1024, 9))
        .expect("write");
    drop(victim); // closed with data in flight
    for s in survivors {
        let (sent, received) = s.join().expect("survivor");
        assert_eq!(sent, received);
    }
    let (sent, received) = echo_round_trip(fwd.connect(), 1 << 20, 300);
    assert_eq!(sent, received, "a new connection after the abort");
}

#[test]
fn refused_destination_closes_that_connection_and_the_forward_keeps_serving() {
    let placeholder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = placeholder.local_addr().expect("addr").port();
    drop(placeholder); // nothing listens on `port` now
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{port}"));
    let mut refused = fwd.connect();
    refused
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(
        refused.read(&mut buf).expect("closed, not reset"),
        0,
        "the local connection is closed"
    );
    assert!(
        wait_until(10, || fwd
            .stderr_text()
            .contains("could not connect to the destination")),
        "log line missing: {}",
        fwd.stderr_text()
    );
    // Now something listens there: the same forward serves it.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("rebind");
    thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"late but here");
        }
    });
    let mut ok = fwd.connect();
    ok.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = ok.read_to_end(&mut got);
    assert_eq!(got, b"late but here");
}

#[test]
fn sigint_terminates_the_session_and_exits() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let mut fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let (sent, received) = echo_round_trip(fwd.connect(), 64 * 1024, 1);
    assert_eq!(sent, received);
    assert_eq!(sim.active_sessions(), 1);
    let started = Instant::now();
    kill_pid(fwd.pid(), "INT");
    let status = wait_bounded(&mut fwd.child.0, 10).expect("exits after SIGINT");
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
    assert!(sim.stats().terminated >= 1);
}

#[test]
fn websocket_drops_during_a_forward_are_resumed() {
    let config = SimConfig {
        drops: DropPlan::parse("after-bytes=3000000,max=2").expect("plan"),
        // FIXME(issue 19): against the faithful agent the frames lost in the reset connection
        // come back one per 100 ms tick and this stalls past the read timeout; fast agent here
        // until the client or the gateway model covers it.
        fast_agent: true,
        ..Default::default()
    };
    let sim = Sim::start(config).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let (sent, received) = echo_round_trip(fwd.connect(), 4 << 20, 77);
    assert_eq!(sent, received);
    assert_eq!(sim.stats().drops, 2);
    assert!(sim.stats().resumed >= 2);
}

#[test]
fn bad_forward_specs_are_usage_errors() {
    let out = Command::new(proxy_bin())
        .args(["forward", TARGET, "-L", "nonsense"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("LPORT"), "{err}");
}

#[test]
fn targets_are_found_by_name() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("fwd-home");
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.join("cache"))
        .args(["forward", "web-1", "-L", &format!("0:{}", echo_server())])
        .stdout(Stdio::null());
    let fwd = Forwarder::spawn(&mut cmd);
    assert!(
        fwd.stderr_text()
            .contains(&format!("-> {TARGET} localhost:")),
        "{}",
        fwd.stderr_text()
    );
    let (sent, received) = echo_round_trip(fwd.connect(), 256 * 1024, 9);
    assert_eq!(sent, received);
    assert_eq!(sim.stats().describes, 1);
}
