//! Aggregate throughput of `ssm-proxy forward` through the simulator: one connection versus ten
//! concurrent ones over the same smux session, next to the same echo service reached directly.
//! Each connection sends its share to a TCP echo service and reads it back (both directions
//! at once), checked byte for byte; the table reports MiB/s counted one way, and both ways.
//!
//!   cargo bench --bench forward
//!   FORWARD_BENCH_MB=256 cargo bench --bench forward     # total MiB per run, split over conns
//!   FORWARD_BENCH_CONNS="10 100" cargo bench --bench forward
//!   FORWARD_BENCH_LOG=1 cargo bench --bench forward        # ssm-proxy -v on stderr

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::echo_server;

const TARGET: &str = "i-0123456789abcdef0";
const RUNS: usize = 3;
static LOG: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FORWARD_BENCH_LOG").is_some());

/// `ssm-proxy forward` in the background; killed on drop.
struct Forward(Child, u16);

impl Forward {
    fn start(sim: &Sim, agent_port: u16) -> Forward {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ssm-proxy"))
            .envs(sim.env())
            .args(["forward", TARGET, "-L", &format!("0:{agent_port}")])
            .args((*LOG).then_some("-v"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssm-proxy");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let port = lines
            .find_map(|l| {
                let l = l.ok()?;
                let addr = l.strip_prefix("listening on ")?.split(' ').next()?;
                addr.rsplit(':').next()?.parse().ok()
            })
            .expect("listening line");
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if *LOG {
                    eprintln!("{line}");
                }
            }
        });
        Forward(child, port)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // SIGINT: the forward ends its session on the service and logs its statistics.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Pushes `len` pseudo-random bytes through an echo connection and reads them back.
fn echo(port: u16, len: usize, seed: u8) {
    let conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let chunk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    let mut w = conn.try_clone().expect("clone");
    let sent = chunk.clone();
    let writer = thread::spawn(move || {
        let mut left = len;
        while left > 0 {
            let n = left.min(sent.len());
            w.write_all(&sent[..n]).expect("write");
            left -= n;
        }
    });
    let mut r = conn;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {got} of {len} bytes");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                chunk[(got + i) % chunk.len()],
                "byte {} differs",
                got + i
            );
        }
        got += n;
    }
    writer.join().expect("writer");
}

/// Best of `RUNS`: wall time to move `total` bytes each way over `conns` concurrent connections.
fn measure(port: u16, conns: usize, total: usize) -> Duration {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let workers: Vec<_> = (0..conns)
                .map(|i| thread::spawn(move || echo(port, total / conns, i as u8)))
                .collect();
            workers.into_iter().for_each(|w| w.join().expect("worker"));
            started.elapsed()
        })
        .min()
        .expect("runs")
}

fn main() {
    // `cargo bench` passes --bench; anything else (e.g. `cargo test --benches`) is a dry run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: usize = std::env::var("FORWARD_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160);
    let total = mib << 20;
    let conn_counts: Vec<usize> = std::env::var("FORWARD_BENCH_CONNS")
        .unwrap_or_else(|_| "1 10".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let echo_port = echo_server();
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let forward = Forward::start(&sim, echo_port);
    println!(
        "| path | connections | MiB each way | best of {RUNS} | MiB/s one way | MiB/s both ways |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (path, port) in [
        ("ssm-proxy forward (smux)", forward.1),
        ("direct", echo_port),
    ] {
        for &conns in &conn_counts {
            let wall = measure(port, conns, total);
            let rate = mib as f64 / wall.as_secs_f64();
            println!(
                "| {path} | {conns} | {mib} | {:.2} s | {rate:.1} | {:.1} |",
                wall.as_secs_f64(),
                2.0 * rate
            );
        }
    }
}
