//! Shared helpers for the end-to-end tests: bounded process execution, temporary directories,
//! deterministic test data, SHA-256 digests and a fixture that pairs the in-process simulator
//! with a real OpenSSH `sshd`.
//!
//! Every wait in here is bounded: a hung child is killed (with its whole process group, so a
//! ProxyCommand spawned by `ssh` goes too) and the test fails with whatever output it produced.

pub mod echo;
pub mod forward;
pub mod realagent;
pub mod recording;
pub mod socks;
pub mod sshd;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

pub use sshd::Sshd;

/// The instance id every test connects to; the simulator's agent dials `127.0.0.1:PORT`.
pub const TARGET: &str = "i-0123456789abcdef0";

/// Path of the binary under test.
pub fn proxy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ssm-proxy"))
}

/// The release build of the binary, as users run it: some failures show only there
/// (`panic = "abort"`, optimised timing). Built once per test process into its own target
/// directory (`target/rel`), because the `cargo test` that runs us holds the lock of the
/// ordinary one; `scripts/test` builds it first, so this is then a no-op.
pub fn release_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("rel");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--bin",
                "ssm-proxy",
                "--quiet",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&root)
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
        target.join("release").join("ssm-proxy")
    })
}

/// A directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory; `tag` makes leftovers easy to attribute.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "ssm-proxy-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Sends `signal` (e.g. "KILL", "TERM") to the process group led by `pid`.
pub fn kill_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to the single process `pid`.
pub fn kill_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Spawns `cmd` as the leader of a new process group so that a timeout can kill everything it
/// started (ssh's ProxyCommand included).
pub fn spawn_group(cmd: &mut Command) -> Child {
    cmd.process_group(0);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// Kills a child's process group when dropped; for long-running children such as `ssh -N -L`.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill_group(self.0.id(), "KILL");
            // Not every guarded child leads its own group.
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Waits at most `secs` seconds for `child` to exit. On timeout the process group is killed and
/// `None` is returned.
pub fn wait_bounded(child: &mut Child, secs: u64) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            kill_group(child.id(), "KILL");
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pipe to its end on a background thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` capturing stdout and stderr (stdin as the caller set it; the command builders use
/// /dev/null); kills it and fails the test if it has not finished within `secs` seconds.
pub fn run_with_timeout(cmd: &mut Command, secs: u64) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn_group(cmd);
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_bounded(&mut child, secs);
    // Kill stragglers that still hold the pipes (e.g. a ProxyCommand that outlived ssh) so the
    // readers finish; the group leader has exited, so this only reaches leftovers.
    let reap_deadline = Instant::now() + Duration::from_secs(5);
    while !(out.is_finished() && err.is_finished()) {
        if Instant::now() >= reap_deadline {
            kill_group(child.id(), "KILL");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "timed out after {secs}s: {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Like [`run_with_timeout`], but also asserts exit status 0 (showing stderr if not).
pub fn run_ok(cmd: &mut Command, secs: u64) -> Output {
    let out = run_with_timeout(cmd, secs);
    assert!(
        out.status.success(),
        "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Incremental SHA-256 (hex digest), for data that streams through a pipe.
pub struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    /// A fresh digest.
    pub fn new() -> Sha256 {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// SHA-256 of a file's contents, hex, read in chunks.
pub fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            return h.finish();
        }
        h.update(&buf[..n]);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*): test data that is incompressible yet
/// reproducible from its seed.
pub struct XorShift(u64);

impl XorShift {
    /// A generator; any seed works (zero is remapped).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` deterministic random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    XorShift::new(seed).fill(&mut buf);
    buf
}

/// Like [`write_random_file`], for output read through a shell session: every U+FFFD (EF BF BD)
/// is broken up, because the real agent sends only the first byte of one (`processStdoutData`
/// in shell.go takes it for a decoding error; the simulator does the same).
pub fn write_shell_safe_random_file(path: &Path, len: u64, seed: u64) -> String {
    let mut data = random_bytes(len as usize, seed);
    for i in 0..data.len().saturating_sub(2) {
        if data[i..i + 3] == [0xEF, 0xBF, 0xBD] {
            data[i + 2] = 0xBC;
        }
    }
    fs::write(path, &data).expect("write file");
    sha256(&data)
}

/// Writes `len` deterministic random bytes to `path` in 1 MiB chunks; returns their SHA-256.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> String {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    let mut file = io::BufWriter::new(File::create(path).expect("create file"));
    let mut rng = XorShift::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).expect("write");
        h.update(&buf[..n]);
        left -= n as u64;
    }
    file.flush().expect("flush");
    h.finish()
}

/// Relative path -> SHA-256 for every regular file under `root`, sorted by path.
pub fn tree_digest(root: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("prefix");
                out.push((rel.to_string_lossy().into_owned(), sha256_file(&path)));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Polls `cond` every 20 ms for at most `secs` seconds; returns whether it became true.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Applies a child environment: drops every inherited `AWS_*` variable (so a developer's
/// profile or region cannot leak in), the proxy variables, `XDG_CACHE_HOME` (the target cache
/// then lives under the test's HOME) and the data-channel override, then sets `env`.
pub fn apply_env<'a>(cmd: &'a mut Command, env: &[(String, String)]) -> &'a mut Command {
    // Proxy settings and the cache location are the machine's too; the tests that need them
    // set them.
    const MACHINE: [&str; 6] = [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "XDG_CACHE_HOME",
        "SSM_PROXY_SSMMESSAGES_ENDPOINT",
    ];
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AWS_") || MACHINE.contains(&k.to_ascii_uppercase().as_str()) {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
}

/// A simulator plus a real sshd plus an isolated HOME: everything one ssh-level test needs.
pub struct Fixture {
    /// The in-process SSM simulator (fields drop in order: sim stops before sshd).
    pub sim: Sim,
    /// The OpenSSH server the simulator's agent dials.
    pub sshd: Sshd,
    /// HOME for client processes (ssh, scp, rsync, git).
    pub home: TempDir,
}

impl Fixture {
    /// Starts a default simulator and an sshd.
    pub fn new() -> Fixture {
        Fixture::with(SimConfig::default())
    }

    /// Starts a simulator configured with `config` (faults, drops) and an sshd.
    pub fn with(config: SimConfig) -> Fixture {
        let sim = Sim::start(config).expect("start simulator");
        Fixture {
            sim,
            sshd: Sshd::start(),
            home: TempDir::new("home"),
        }
    }

    /// Environment for client processes: the simulator's AWS variables, an isolated HOME and
    /// a git setup that ignores the machine's global configuration.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.sim.env();
        env.push(("HOME".into(), self.home.path().display().to_string()));
        env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
        env
    }

    /// `ssh USER@TARGET` through the proxy, with the fixture's environment.
    pub fn ssh(&self) -> Command {
        self.sshd.ssh_cmd(proxy_bin(), &self.env())
    }

    /// Uploads then downloads `mib` MiB with scp through the proxy, checks both copies with
    /// SHA-256, and checks that no session is left.
    pub fn scp_round_trip(&self, mib: u64, seed: u64) {
        const BOUND: u64 = 300;
        let env = self.env();
        let local = TempDir::new("scp");
        let src = local.join("src.bin");
        let digest = write_random_file(&src, mib << 20, seed);
        let remote = self.sshd.dir().join(format!("up-{seed}.bin"));
        let scp = || self.sshd.scp_cmd(proxy_bin(), &env);
        run_ok(scp().arg(&src).arg(self.sshd.remote(&remote)), BOUND);
        assert_eq!(sha256_file(&remote), digest, "upload corrupted");
        let down = local.join("down.bin");
        run_ok(scp().arg(self.sshd.remote(&remote)).arg(&down), BOUND);
        assert_eq!(fs::metadata(&down).map(|m| m.len()).unwrap_or(0), mib << 20);
        assert_eq!(sha256_file(&down), digest, "download corrupted");
        self.assert_no_sessions();
    }

    /// Asserts that every session the simulator started has ended (bounded wait), i.e. the
    /// proxy left no orphaned session behind.
    pub fn assert_no_sessions(&self) {
        let sim = &self.sim;
        if !wait_until(10, || sim.active_sessions() == 0) {
            let stats = sim.stats();
            panic!(
                "orphaned sessions: {} still active (started {}, terminated {}, resumed {})",
                sim.active_sessions(),
                stats.started,
                stats.terminated,
                stats.resumed
            );
        }
    }
}

/// A ProxyCommand running the binary under test with `args` before `%h %p` (e.g. `--no-cache`).
pub fn proxy_command(args: &str) -> String {
    let bin = sshd::shell_quote(&proxy_bin().display().to_string());
    if args.is_empty() {
        format!("{bin} %h %p")
    } else {
        format!("{bin} {args} %h %p")
    }
}

/// `ssm-proxy ARGS...` with stdin from /dev/null and exactly `env` (see [`apply_env`]).
pub fn proxy_run(env: &[(String, String)], args: &[&str], secs: u64) -> Output {
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, env).args(args).stdin(Stdio::null());
    run_with_timeout(&mut cmd, secs)
}

/// Asserts a failure in the product's shape (non-zero exit, nothing on stdout, exactly one
/// stderr line starting `ssm-proxy: `) and returns that line.
pub fn one_line_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got {} (stderr {stderr:?})",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = stderr.trim();
    assert!(
        line.starts_with("ssm-proxy: ") && !line.contains('\n'),
        "not one `ssm-proxy: ` line: {stderr:?}"
    );
    line.to_owned()
}

/// Whether this process runs as root (sshd's AuthorizedKeysCommand tests need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// For a test that needs a tool this machine lacks: fails in CI (where `.ci/run` must have
/// installed it), otherwise says loudly that the test is skipped. Returns whether to go on.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing in CI: .ci/run must provide it"
    );
    eprintln!("\n*** SKIPPED: {what} is missing on this machine (the test runs in CI) ***\n");
    false
}

/// The number in rsync's `--stats` line "Number of regular files transferred".
pub fn rsync_transferred(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Number of regular files transferred: "))
        .map(|n| n.replace(',', "").trim().parse().expect("count"))
        .unwrap_or_else(|| panic!("no transfer count in rsync output:\n{stdout}"))
}

/// rsync of a 200-file tree to `sshd` through `proxy`, then a delta (three files grown so the
/// size-and-mtime quick check sees them, one added, one deleted): checks both trees byte for
/// byte and that the delta moved only the four changed files.
pub fn rsync_tree_then_delta(sshd: &Sshd, proxy: &Path, env: &[(String, String)], bound: u64) {
    let local = TempDir::new("rsync");
    let src = local.join("tree");
    for i in 0..200u64 {
        let size = (i * 7919) % 65536 + 1;
        write_random_file(&src.join(format!("d{}/f{i:03}.bin", i % 10)), size, i);
    }
    let dst = sshd.dir().join("mirror");
    let sync = |what: &str| {
        let out = run_ok(
            sshd.rsync_cmd(proxy, env)
                .args(["-a", "--delete", "--stats"])
                .arg(format!("{}/", src.display()))
                .arg(sshd.remote(&dst)),
            bound,
        );
        assert_eq!(tree_digest(&src), tree_digest(&dst), "{what}: trees differ");
        rsync_transferred(&String::from_utf8_lossy(&out.stdout))
    };
    assert_eq!(sync("initial sync"), 200);
    for i in [3u64, 77, 150] {
        let path = src.join(format!("d{}/f{i:03}.bin", i % 10));
        let mut data = fs::read(&path).expect("read");
        data[0] ^= 0xff;
        data.extend_from_slice(&random_bytes(4096, 1000 + i));
        fs::write(&path, data).expect("modify");
    }
    write_random_file(&src.join("d0/new.bin"), 100_000, 4242);
    fs::remove_file(src.join("d1/f001.bin")).expect("delete");
    assert_eq!(sync("delta sync"), 4);
}

/// Starts `cmd` (an `ssh -N -L LOCAL_PORT:…`) and connects to its listener on `local_port`:
/// None if ssh exited first or the listener did not come up within `secs`.
pub fn open_local_forward(
    cmd: &mut Command,
    local_port: u16,
    secs: u64,
) -> Option<(ChildGuard, std::net::TcpStream)> {
    let mut ssh = ChildGuard(spawn_group(cmd));
    let mut conn = None;
    wait_until(secs, || {
        if matches!(ssh.0.try_wait(), Ok(Some(_))) {
            return true;
        }
        conn = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, local_port)).ok();
        conn.is_some()
    });
    conn.map(|conn| (ssh, conn))
}
