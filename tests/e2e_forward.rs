//! `ssm-proxy forward` end to end: the real binary listening locally, the simulator's agent
//! dialing real local services, in both agent modes (smux and basic), with SHA-256 on every byte.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{DropPlan, Sim, SimConfig};

use crate::support::forward::{
    Forwarder, echo_round_trip, echo_server, greeting_echo_server, greeting_round_trip,
};
use crate::support::realagent::RealAgent;
use crate::support::sshd::Sshd;
use crate::support::{
    TARGET, TempDir, apply_env, kill_pid, proxy_bin, random_bytes, release_bin, run_ok,
    sha256_file, wait_bounded, wait_until, write_random_file,
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

/// Basic mode `rounds` times in a row through one forward: every connection gets its own
/// greeting first, then its own echo, byte-exact.
fn server_first_in_basic_mode(bin: &std::path::Path, env: &[(String, String)], rounds: u64) {
    let spec = format!("0:{}", greeting_echo_server());
    let fwd = Forwarder::start_with(bin, env, &["-v", "-L", &spec]);
    let mut last = 0;
    for i in 0..rounds {
        let conn = fwd.connect();
        let round = std::panic::catch_unwind(|| greeting_round_trip(conn, 64 * 1024, 400 + i));
        let (n, sent, received) = round.unwrap_or_else(|_| {
            panic!(
                "connection {i} failed; forward's log:\n{}",
                fwd.stderr_text()
            )
        });
        assert!(n > last, "connection {i}: greeting {n} after {last}");
        assert_eq!(sent, received, "connection {i}");
        last = n;
    }
    assert!(
        !fwd.stderr_text().contains("panicked"),
        "{}",
        fwd.stderr_text()
    );
}

#[test]
fn basic_mode_server_first_20_times_simulator() {
    let sim = Sim::start(SimConfig {
        agent_version: "3.0.196.0".into(),
        ..Default::default()
    })
    .expect("sim");
    server_first_in_basic_mode(proxy_bin(), &sim.env(), 20);
}

#[test]
fn basic_mode_server_first_20_times_real_agent() {
    let agent = RealAgent::start(&["--agent-version", "3.0.196.0"]);
    server_first_in_basic_mode(release_bin(), &agent.env(), 20);
}

#[test]
fn mux_mode_server_first_20_times_real_agent() {
    let agent = RealAgent::start(&[]);
    server_first_in_basic_mode(release_bin(), &agent.env(), 20);
}

/// 20 sequential ssh sessions through one basic-mode forward.
fn ssh_20_times(bin: &std::path::Path, env: &[(String, String)]) -> usize {
    let sshd = Sshd::start();
    let fwd = Forwarder::start_with(bin, env, &["-L", &format!("0:{}", sshd.port())]);
    let mut ok = 0;
    for i in 0..20 {
        let out = crate::support::run_with_timeout(
            sshd.direct_ssh_cmd_to(fwd.local_port)
                .arg(format!("echo run {i}"))
                .stdin(Stdio::null()),
            30,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("run {i}\n"),
            "ssh {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ok += 1;
    }
    ok
}

#[test]
fn basic_mode_20_sequential_ssh_real_agent() {
    let agent = RealAgent::start(&["--agent-version", "3.0.196.0"]);
    assert_eq!(ssh_20_times(release_bin(), &agent.env()), 20);
}

#[test]
fn basic_mode_20_sequential_ssh_simulator() {
    let sim = Sim::start(SimConfig {
        agent_version: "3.0.196.0".into(),
        ..Default::default()
    })
    .expect("sim");
    assert_eq!(ssh_20_times(proxy_bin(), &sim.env()), 20);
}

/// The real agent's sessions: (id, ended).
fn sessions(agent: &RealAgent) -> Vec<(String, bool)> {
    let all = agent.sessions();
    all.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            let id = s["SessionId"].as_str()?.to_owned();
            Some((id, s["Ended"].as_bool() == Some(true)))
        })
        .collect()
}

fn session_ids(agent: &RealAgent) -> Vec<String> {
    sessions(agent).into_iter().map(|(id, _)| id).collect()
}

#[test]
fn release_forward_ends_with_the_session_the_service_ends() {
    // An administrator's TerminateSession: one line, status 0, and no new session behind it.
    let agent = RealAgent::start(&[]);
    let mut fwd = Forwarder::start_with(
        release_bin(),
        &agent.env(),
        &["-L", &format!("0:{}", echo_server())],
    );
    let (sent, received) = echo_round_trip(fwd.connect(), 64 * 1024, 5);
    assert_eq!(sent, received);
    let ids = session_ids(&agent);
    assert_eq!(ids.len(), 1, "{}", agent.sessions());
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-X", "POST", &agent.endpoint])
        .args(["-H", "X-Amz-Target: AmazonSSM.TerminateSession"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args(["-d", &format!("{{\"SessionId\":\"{}\"}}", ids[0])])
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let status = wait_bounded(&mut fwd.child.0, 20).expect("forward exits");
    assert_eq!(status.code(), Some(0), "{}", fwd.stderr_text());
    let text = fwd.stderr_text();
    assert!(text.contains("closed the forwarding session"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(session_ids(&agent).len(), 1, "a new session was started");
}

#[test]
fn release_forward_exits_130_on_sigint_in_both_modes() {
    for args in [&[][..], &["--agent-version", "3.0.196.0"][..]] {
        let agent = RealAgent::start(args);
        let mut fwd = Forwarder::start_with(
            release_bin(),
            &agent.env(),
            &["-L", &format!("0:{}", echo_server())],
        );
        let (sent, received) = echo_round_trip(fwd.connect(), 64 * 1024, 6);
        assert_eq!(sent, received);
        let _open = fwd.connect(); // a connection still open at the signal
        kill_pid(fwd.pid(), "INT");
        let status = wait_bounded(&mut fwd.child.0, 10).expect("exits after SIGINT");
        assert_eq!(status.code(), Some(130), "{args:?}: {}", fwd.stderr_text());
        assert!(
            !fwd.stderr_text().contains("panicked"),
            "{}",
            fwd.stderr_text()
        );
        assert!(
            wait_until(15, || sessions(&agent).iter().all(|(_, ended)| *ended)),
            "session left on the service: {}",
            agent.sessions()
        );
        assert_eq!(sessions(&agent).len(), 1);
    }
}

#[test]
fn a_stalled_connection_does_not_stall_the_others() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    // It sends 3.5 MiB and never reads: its echo waits in its backlog (under the 4 MiB bound),
    // more than socket buffers and channels alone would hold.
    let stalled = fwd.connect();
    let mut writer = stalled.try_clone().expect("clone");
    thread::spawn(move || {
        let _ = writer.write_all(&random_bytes(7 << 19, 11));
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..9u64)
        .map(|i| {
            let conn = fwd.connect();
            thread::spawn(move || echo_round_trip(conn, 4 << 20, 500 + i))
        })
        .collect();
    for w in workers {
        let (sent, received) = w.join().expect("worker");
        assert_eq!(sent, received);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "mux, 9 connections beside a stalled one: {:.1} MB/s aggregate each way",
        9.0 * 4.0 * 1.048_576 / secs
    );
    drop(stalled);
}

#[test]
fn no_listening_line_before_the_session_starts() {
    let sim = Sim::start(SimConfig {
        offline: vec![TARGET.into()],
        ..Default::default()
    })
    .expect("sim");
    let mut cmd = Command::new(proxy_bin());
    let out = crate::support::run_with_timeout(
        apply_env(&mut cmd, &sim.env())
            .args(["forward", TARGET, "-L", &format!("0:{}", echo_server())])
            .stdin(Stdio::null()),
        30,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("listening on"), "{err}");
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn listens_on_ipv6_and_unix_sockets() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let echo = echo_server();
    if TcpListener::bind("[::1]:0").is_ok() {
        let fwd = Forwarder::start(&sim, &format!("[::1]:0:{echo}"));
        assert!(
            fwd.stderr_text().contains("listening on [::1]:"),
            "{}",
            fwd.stderr_text()
        );
        let conn = std::net::TcpStream::connect(("::1", fwd.local_port)).expect("connect v6");
        let (sent, received) = echo_round_trip(conn, 256 * 1024, 12);
        assert_eq!(sent, received);
    }
    let dir = TempDir::new("fwd-unix");
    let path = dir.join("fwd.sock");
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args([
            "forward",
            TARGET,
            "-L",
            &format!("{}:{echo}", path.display()),
        ])
        .stdout(Stdio::null());
    let (mut child, text) = spawn_until_listening(&mut cmd);
    assert!(text.contains(&path.display().to_string()), "{text}");
    let mut conn = std::os::unix::net::UnixStream::connect(&path).expect("connect unix");
    // No half-close: the agent's smux session closes both directions on a FIN.
    conn.write_all(b"over a unix socket").expect("write");
    let mut got = [0u8; 18];
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    conn.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"over a unix socket");
    drop(conn);
    kill_pid(child.id(), "TERM");
    assert!(wait_bounded(&mut child, 10).is_some());
    assert!(!path.exists(), "socket file left behind");
}

/// Spawns `cmd` and returns once stderr has a `listening on` line (and that line).
fn spawn_until_listening(cmd: &mut Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = crate::support::spawn_group(cmd);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("listening line");
    (child, line)
}

/// An HTTP server that answers every request with `body` (Connection: close).
fn http_body_server(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind http");
    let port = listener.local_addr().expect("addr").port();
    let body = std::sync::Arc::new(body);
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let body = body.clone();
            thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            });
        }
    });
    port
}

/// `curl --socks5-hostname` through `-D`: returns (sha256 of the body, time to first byte).
fn socks_get(socks_port: u16, url: &str, dir: &TempDir, name: &str) -> (String, f64) {
    let out_file = dir.join(name);
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "120", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks_port}"))
            .args(["-w", "%{time_starttransfer}", "-o"])
            .arg(&out_file)
            .arg(url),
        130,
    );
    let ttfb = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1.0);
    (sha256_file(&out_file), ttfb)
}

#[test]
fn socks5_reaches_two_destinations_byte_exact() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let bodies = [random_bytes(8 << 20, 21), random_bytes(8 << 20, 22)];
    let ports = [
        http_body_server(bodies[0].clone()),
        http_body_server(bodies[1].clone()),
    ];
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args(["forward", TARGET, "-D", "0"])
        .stdout(Stdio::null());
    let fwd = Forwarder::spawn(&mut cmd);
    assert!(
        fwd.stderr_text().contains("SOCKS5"),
        "{}",
        fwd.stderr_text()
    );
    let dir = TempDir::new("socks");
    // localhost is the target itself; 127.0.0.1 too (AWS-StartPortForwardingSession).
    let urls = [
        format!("http://localhost:{}/", ports[0]),
        format!("http://127.0.0.1:{}/", ports[1]),
    ];
    let (sha0, new_ttfb) = socks_get(fwd.local_port, &urls[0], &dir, "a");
    let (sha1, _) = socks_get(fwd.local_port, &urls[1], &dir, "b");
    assert_eq!(sha0, crate::support::sha256(&bodies[0]));
    assert_eq!(sha1, crate::support::sha256(&bodies[1]));
    let (again, reused_ttfb) = socks_get(fwd.local_port, &urls[0], &dir, "c");
    assert_eq!(again, sha0);
    eprintln!(
        "SOCKS5 time to first byte: new destination {new_ttfb:.3} s, reused {reused_ttfb:.3} s"
    );
    assert!(
        wait_until(5, || sim.stats().started == 2),
        "one session per destination: {:?}",
        sim.stats()
    );
}

#[test]
fn a_closed_ssh_port_names_the_fix() {
    // `ssm-proxy TARGET PORT` with nothing listening there: the service's reason plus the fix.
    let placeholder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = placeholder.local_addr().expect("addr").port().to_string();
    drop(placeholder);
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let out = crate::support::proxy_run(&sim.env(), &[TARGET, &port], 30);
    let line = crate::support::one_line_failure(&out);
    assert!(
        line.contains("Unable to connect to specified port"),
        "{line}"
    );
    assert!(line.contains("listens on that port"), "{line}");
}
