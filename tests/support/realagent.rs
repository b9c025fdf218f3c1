//! The real amazon-ssm-agent session code as a backend: `../shared/realagent/bin/realagent
//! serve` (see its README), one process per test, on a loopback port it picks itself.
//!
//! It is the judge of conformance: where it and our simulator disagree, the simulator is wrong.
#![allow(dead_code)] // the conformance suite uses the rest as it grows

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{TempDir, kill_group, spawn_group};

/// Where the prebuilt binary lives: `SSM_PROXY_REALAGENT`, or `../shared/realagent/bin/realagent`
/// beside the repository (as CI lays it out).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SSM_PROXY_REALAGENT") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/realagent/bin/realagent")
}

/// A running `realagent serve`; stopped (with its worker children) on drop.
pub struct RealAgent {
    child: Child,
    /// `http://127.0.0.1:PORT`: the SSM API, KMS and the client side of the data channel.
    pub endpoint: String,
    /// The AgentVersion its handshakes report.
    pub agent_version: String,
    /// Everything it wrote to stderr so far (its per-session log and summaries).
    pub log: Arc<Mutex<String>>,
    _work: TempDir,
}

impl RealAgent {
    /// Starts it with extra `serve` flags (e.g. `["--agent-version", "3.0.196.0"]`).
    /// Panics (with its stderr) if it does not print its JSON line within 20 s.
    pub fn start(args: &[&str]) -> RealAgent {
        let bin = binary();
        assert!(
            bin.exists(),
            "realagent is missing at {} (set SSM_PROXY_REALAGENT)",
            bin.display()
        );
        let work = TempDir::new("realagent");
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--work-dir"])
            .arg(work.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_group(&mut cmd);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if !line.trim().is_empty() => line,
            _ => {
                kill_group(child.id(), "KILL");
                let _ = child.wait();
                panic!("realagent did not start: {}", log.lock().unwrap());
            }
        };
        let info: serde_json::Value =
            serde_json::from_str(line.trim()).expect("realagent JSON line");
        RealAgent {
            child,
            endpoint: info["Endpoint"].as_str().expect("Endpoint").to_owned(),
            agent_version: info["AgentVersion"].as_str().unwrap_or_default().to_owned(),
            log,
            _work: work,
        }
    }

    /// Client environment (the README's): dummy credentials, a region and the SSM/KMS
    /// endpoint overrides.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "AKIDREALAGENT"),
            ("AWS_SECRET_ACCESS_KEY", "realagent-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL_SSM", self.endpoint.as_str()),
            ("AWS_ENDPOINT_URL_KMS", self.endpoint.as_str()),
            ("AWS_ENDPOINT_URL_STS", self.endpoint.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `GET /sessions`: per-session documents, frame counts, agent warnings and results.
    pub fn sessions(&self) -> serde_json::Value {
        let url = format!("{}/sessions", self.endpoint);
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Closes one side's websocket at TCP level (`side` is `client` or `agent`).
    pub fn drop_side(&self, side: &str) {
        let url = format!("{}/debug/drop-{side}", self.endpoint);
        let _ = Command::new("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output();
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        // SIGTERM lets it stop its worker children; KILL the group if it lingers.
        kill_group(self.child.id(), "TERM");
        if super::wait_bounded(&mut self.child, 5).is_none() {
            kill_group(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}
