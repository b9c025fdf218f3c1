//! A running forwarder (`ssm-proxy forward`, or the plugin entry serving a port-forwarding
//! document) and a TCP echo service behind it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ssm_proxy::sim::Sim;

pub use super::echo::echo_server;
use super::{ChildGuard, Sha256, TARGET, apply_env, proxy_bin, random_bytes, sha256, spawn_group};

/// A running `ssm-proxy forward` and what it printed on stderr.
pub struct Forwarder {
    pub child: ChildGuard,
    pub local_port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    /// `ssm-proxy forward TARGET -L spec` against `sim`.
    pub fn start(sim: &Sim, spec: &str) -> Forwarder {
        let mut cmd = Command::new(proxy_bin());
        apply_env(&mut cmd, &sim.env())
            .args(["forward", TARGET, "-L", spec])
            .stdout(Stdio::null());
        Forwarder::spawn(&mut cmd)
    }

    /// `BIN forward TARGET ARGS...` with `env` (the simulator's, the real agent's).
    pub fn start_with(bin: &std::path::Path, env: &[(String, String)], args: &[&str]) -> Forwarder {
        let mut cmd = Command::new(bin);
        apply_env(&mut cmd, env)
            .args(["forward", TARGET])
            .args(args)
            .stdout(Stdio::null());
        Forwarder::spawn(&mut cmd)
    }

    /// Runs `cmd` (in its own process group) and waits for its `listening on` line.
    pub fn spawn(cmd: &mut Command) -> Forwarder {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = spawn_group(cmd);
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let port = line.strip_prefix("listening on ").map(|rest| {
                    rest.split(' ')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                });
                // Recorded before the port is announced: `stderr_text` then has the line.
                sink.lock().expect("lock").push(line);
                if let Some(port) = port {
                    let _ = port_tx.send(port);
                }
            }
        });
        let local_port = port_rx
            .recv_timeout(Duration::from_secs(15))
            .ok()
            .flatten()
            .expect("listening line");
        Forwarder {
            child: ChildGuard(child),
            local_port,
            stderr: lines,
        }
    }

    pub fn connect(&self) -> TcpStream {
        TcpStream::connect((Ipv4Addr::LOCALHOST, self.local_port)).expect("connect to forward")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// Sends `len` bytes through `conn` while reading the echo; returns (sent, received) digests.
pub fn echo_round_trip(conn: TcpStream, len: usize, seed: u64) -> (String, String) {
    let data = random_bytes(len, seed);
    let sent = sha256(&data);
    let mut writer = conn.try_clone().expect("clone");
    let send = thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            writer.write_all(chunk).expect("write");
        }
    });
    let mut reader = conn;
    reader
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut sha = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < len {
        let n = reader.read(&mut buf).expect("read echo");
        assert!(n > 0, "connection closed after {got} of {len} bytes");
        sha.update(&buf[..n]);
        got += n;
    }
    send.join().expect("sender");
    (sent, sha.finish())
}

/// A server-first service: at accept it writes `HELLO <n>\n` (n counts connections from 1),
/// then echoes. Runs until the test process ends.
pub fn greeting_echo_server() -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind greeter");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for (n, conn) in listener.incoming().flatten().enumerate() {
            thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                let mut r = conn;
                if w.write_all(format!("HELLO {}\n", n + 1).as_bytes()).is_ok() {
                    let _ = std::io::copy(&mut r, &mut w);
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Reads a `HELLO <n>` greeting without sending anything first (the server speaks first), then
/// echoes `len` bytes; returns n and the (sent, received) digests. Bytes left over from another
/// connection would break the greeting or the digest.
pub fn greeting_round_trip(conn: TcpStream, len: usize, seed: u64) -> (u64, String, String) {
    let mut reader = conn.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        let n = reader.read(&mut byte).expect("read greeting");
        assert!(n > 0, "closed before the greeting: {line:?}");
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let n = text
        .strip_prefix("HELLO ")
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a greeting: {text:?}"));
    let (sent, received) = echo_round_trip(conn, len, seed);
    (n, sent, received)
}
