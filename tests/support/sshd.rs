//! A real OpenSSH `sshd` on a free loopback port, with throwaway host and user keys, for the
//! end-to-end tests, plus builders for `ssh`, `scp`, `rsync` and git commands that reach it
//! through `ssm-proxy` as ProxyCommand (or directly, for comparison).
//!
//! The login user is the current user (root in CI); the server's files live in a temp dir that
//! is removed when the [`Sshd`] drops, which also kills the server.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{TARGET, TempDir, apply_env};

/// How many fresh ports to try when sshd loses the race for one.
const START_ATTEMPTS: usize = 5;
/// Upper bound for one sshd to start answering with its banner.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running sshd; killed, and its directory removed, on drop.
pub struct Sshd {
    child: Child,
    port: u16,
    user: String,
    key: PathBuf,
    // Declared last so the directory outlives the server process.
    dir: TempDir,
}

/// Picks a loopback port nobody listens on (bind to port 0, then release it). Ports handed out
/// earlier in this process are skipped so parallel tests never pick the same one.
pub fn free_port() -> u16 {
    static USED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a port");
        let port = listener.local_addr().expect("local_addr").port();
        if USED.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// Runs `ssh-keygen` to create an ed25519 key pair without passphrase at `path`.
fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ssm-proxy-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed: {status}");
}

/// The current user's login name.
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 user name")
        .trim()
        .to_owned()
}

/// Whether something on `port` accepts a connection and greets with an SSH-2.0 banner.
fn answers_ssh(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut banner = Vec::new();
    let mut buf = [0u8; 64];
    while banner.len() < 8 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => banner.extend_from_slice(&buf[..n]),
        }
    }
    banner.starts_with(b"SSH-2.0-")
}

/// Quotes `s` for a POSIX shell: as is when it only holds safe characters, otherwise in single
/// quotes. rsync's `-e` splitting understands this too, as long as `s` has no single quote.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._+-=,:@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Sshd {
    /// Generates keys and a config in a fresh temp dir and starts `sshd -D -e` on a free port,
    /// returning once it answers with its banner. Retries on a new port if sshd exits early.
    pub fn start() -> Sshd {
        Sshd::start_with("")
    }

    /// Like [`Sshd::start`], with `extra` lines at the top of sshd_config; sshd takes the first
    /// value of a keyword, so they override the defaults (e.g. `AuthorizedKeysFile none`).
    pub fn start_with(extra: &str) -> Sshd {
        let dir = TempDir::new("sshd");
        let host_key = dir.join("host_ed25519");
        let key = dir.join("id_ed25519");
        keygen(&host_key);
        keygen(&key);
        fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))
            .expect("write authorized_keys");
        // Privilege separation needs this directory; only root can create it, and only root
        // needs it.
        let _ = fs::create_dir_all("/run/sshd");
        let user = current_user();

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = dir.join("sshd_config");
            let text = format!("{extra}{}", sshd_config(dir.path(), &host_key, port));
            fs::write(&config, text).expect("sshd_config");
            let log_path = dir.join("sshd.log");
            let log = fs::File::create(&log_path).expect("sshd.log");
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn /usr/sbin/sshd");

            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait sshd") {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push(format!("port {port}: sshd exited ({status}): {log}"));
                    break;
                }
                if answers_ssh(port) {
                    return Sshd {
                        child,
                        port,
                        user,
                        key,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push(format!("port {port}: no banner within 10s: {log}"));
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd did not start:\n{}", failures.join("\n"));
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's private key (its `.pub` is beside it).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The server's temp dir; tests put remote-side files (bare repos, upload targets) here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `USER@i-0123456789abcdef0:PATH`, the remote spec for scp, rsync and git.
    pub fn remote(&self, path: &Path) -> String {
        format!("{}@{}:{}", self.user, TARGET, path.display())
    }

    /// Options shared by every client, as separate arguments.
    fn common_opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.key.display().to_string()])
        .collect()
    }

    /// The ProxyCommand option value running `proxy` for `%h %p`.
    fn proxy_opt(proxy: &Path) -> String {
        format!(
            "ProxyCommand={} %h %p",
            shell_quote(&proxy.display().to_string())
        )
    }

    /// `ssh ... -p PORT -o ProxyCommand="<proxy> %h %p" USER@TARGET`; append the remote command.
    pub fn ssh_cmd(&self, proxy: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = client("ssh", env);
        cmd.args(self.common_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-o")
            .arg(Self::proxy_opt(proxy))
            .arg(format!("{}@{}", self.user, TARGET));
        cmd
    }

    /// `ssh ... -p PORT -o ProxyCommand=<proxy_command> USER@HOST`: a ProxyCommand given whole
    /// (already quoted) and any destination host (a name, an alias); append the remote command.
    pub fn ssh_cmd_via(
        &self,
        proxy_command: &str,
        host: &str,
        env: &[(String, String)],
    ) -> Command {
        let mut cmd = client("ssh", env);
        cmd.args(self.common_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"))
            .arg(format!("{}@{}", self.user, host));
        cmd
    }

    /// `ssh ... -p PORT USER@127.0.0.1`, no proxy: the baseline the proxied runs must match.
    pub fn direct_ssh_cmd(&self) -> Command {
        let mut cmd = client("ssh", &[]);
        cmd.args(self.common_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user));
        cmd
    }

    /// `ssh ... -p PORT USER@127.0.0.1` to another local port (e.g. a forward of this sshd).
    pub fn direct_ssh_cmd_to(&self, port: u16) -> Command {
        let mut cmd = client("ssh", &[]);
        cmd.args(self.common_opts())
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", self.user));
        cmd
    }

    /// `scp ... -P PORT` to another local port; append sources and destination.
    pub fn direct_scp_cmd_to(&self, port: u16) -> Command {
        let mut cmd = client("scp", &[]);
        cmd.arg("-q")
            .args(self.common_opts())
            .arg("-P")
            .arg(port.to_string());
        cmd
    }

    /// `scp ... -P PORT -o ProxyCommand=...`; append sources and destination (see [`remote`]).
    ///
    /// [`remote`]: Sshd::remote
    pub fn scp_cmd(&self, proxy: &Path, env: &[(String, String)]) -> Command {
        let proxy = shell_quote(&proxy.display().to_string());
        self.scp_cmd_via(&format!("{proxy} %h %p"), env)
    }

    /// `scp ... -P PORT -o ProxyCommand=<proxy_command>`: a ProxyCommand given whole (already
    /// quoted); append sources and destination.
    pub fn scp_cmd_via(&self, proxy_command: &str, env: &[(String, String)]) -> Command {
        let mut cmd = client("scp", env);
        cmd.arg("-q")
            .args(self.common_opts())
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"));
        cmd
    }

    /// The ssh command line (shell-quoted) used as `rsync -e` and `GIT_SSH_COMMAND`.
    pub fn ssh_command_line(&self, proxy: &Path) -> String {
        let mut words = vec!["ssh".to_owned()];
        words.extend(self.common_opts().iter().map(|w| shell_quote(w)));
        words.push("-p".into());
        words.push(self.port.to_string());
        words.push("-o".into());
        words.push(shell_quote(&Self::proxy_opt(proxy)));
        words.join(" ")
    }

    /// `rsync -e "ssh ..."`; append flags, sources and destination.
    pub fn rsync_cmd(&self, proxy: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = client("rsync", env);
        cmd.arg("-e").arg(self.ssh_command_line(proxy));
        cmd
    }

    /// `git` with `GIT_SSH_COMMAND` going through the proxy; append the git subcommand.
    pub fn git_cmd(&self, proxy: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = client("git", env);
        cmd.env("GIT_SSH_COMMAND", self.ssh_command_line(proxy))
            .env("GIT_TERMINAL_PROMPT", "0");
        cmd
    }
}

/// A client command with stdin from /dev/null (callers may override) and `env` applied.
fn client(program: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    apply_env(&mut cmd, env).stdin(Stdio::null());
    cmd
}

/// The server configuration: loopback only, key authentication only, quiet.
fn sshd_config(dir: &Path, host_key: &Path, port: u16) -> String {
    format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized}\n\
         StrictModes no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PidFile none\n\
         Subsystem sftp internal-sftp\n\
         AllowTcpForwarding yes\n\
         PermitTTY yes\n\
         MaxStartups 64\n\
         MaxSessions 64\n\
         LogLevel ERROR\n",
        host_key = host_key.display(),
        authorized = dir.join("authorized_keys").display(),
    )
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
