//! The simulator: a fake SSM API, the message-gateway websocket and an agent emulator that dials
//! real local TCP services or runs a shell on a real pty, with seeded fault injection. Used by
//! the tests (in-process, through [`Sim::start`]) and by `ssm-proxy sim`.
//!
//! It shares only the frame codec and payload types with the client: the agent model is written
//! separately from protocol.md §12 so the two sides cannot agree on a misreading.

pub mod agent;
pub mod api;
pub mod documents;
pub mod ecs;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod gateway;
pub mod kms;
pub mod limit;
pub mod pair;
pub mod service;
pub mod shell;
pub mod sigv4;
pub mod target;
pub mod throttle;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;

pub use ecs::SimTask;
pub use faults::{DropPlan, FaultPlan, PausePlan};
pub use fleet::SimInstance;
pub use service::{Service, SimStats};
pub use throttle::ApiLimit;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Targets answered with `TargetNotConnected`.
    pub offline: Vec<String>,
    /// Targets answered with `AccessDeniedException`.
    pub denied: Vec<String>,
    /// Faults on client → agent frames.
    pub up: FaultPlan,
    /// Faults on agent → client frames.
    pub down: FaultPlan,
    /// When to kill the client's websocket.
    pub drops: DropPlan,
    /// Publication pauses sent to the client.
    pub pauses: PausePlan,
    /// Pace the agent like the real one: 1 ms sleep per 1 KiB read (§11).
    pub paced: bool,
    /// The fast agent of benchmarks (a send window, per-message timers) instead of the
    /// faithful one (see `agent::AgentConfig::fast`).
    pub fast_agent: bool,
    /// Per-session client messages per second above which the gateway pauses publication, and
    /// closes the websocket if the client keeps sending (off when None).
    pub max_msg_rate: Option<u32>,
    /// Send some frames to the client with longer headers (HeaderLength 124, payload at HL + 4),
    /// which the official parsers accept.
    pub odd_headers: bool,
    /// AgentVersion announced in the handshake.
    pub agent_version: String,
    /// Seed for ids and faults.
    pub seed: u64,
    /// The managed nodes DescribeInstanceInformation lists (default: `web-1`, `db-1`).
    pub fleet: Vec<SimInstance>,
    /// How long a key pushed with SendSSHPublicKey stays valid (default 60 s).
    pub eic_validity: std::time::Duration,
    /// Program for shell sessions (default: `$SHELL`, else `/bin/sh`).
    pub shell: Option<String>,
    /// How long a shell's output waits before its first read, as the agent's pty pump does
    /// (§12.4: 1 s; the prompt is then already waiting).
    pub shell_output_delay: std::time::Duration,
    /// KMS key the agent asks the client to encrypt every session with (none: no encryption).
    pub kms_key: Option<String>,
    /// Keys the fake KMS refuses (AccessDeniedException).
    pub kms_denied: Vec<String>,
    /// The agent sends an encryption challenge the client cannot decrypt.
    pub kms_bad_challenge: bool,
    /// Rate limit of StartSession, ResumeSession and TerminateSession (each its own bucket);
    /// None: unlimited.
    pub api_limit: Option<ApiLimit>,
    /// Targets that answer `TargetNotConnected` (and show `ConnectionLost`) until this long
    /// after the simulator started: instances still booting.
    pub online_after: Vec<(String, std::time::Duration)>,
    /// Accept unsigned websocket upgrades, as from clients older than 1.2.764.0 (§16.1).
    pub allow_unsigned: bool,
    /// The secret of the printed access key ([`ACCESS_KEY`]): `ssm-proxy sim` draws a new one
    /// each run, so that only who reads its output can use it.
    pub secret: String,
    /// Access keys (id, secret) accepted beside the printed one, e.g. for rotating credentials.
    pub keys: Vec<(String, String)>,
    /// Access keys the API accepts but the gateway refuses, like credentials allowed
    /// ssm:StartSession but not ssmmessages:OpenDataChannel.
    pub api_only_keys: Vec<(String, String)>,
    /// Targets whose shell and command sessions (and ECS Exec) run a program on this machine;
    /// `*` means every target. Others are refused with AccessDeniedException. The in-process
    /// default is `*`; `ssm-proxy sim` allows none unless told (`--allow-commands`).
    pub commands: Vec<String>,
    /// End sessions with no client data for this long, as the service's idle timeout does.
    pub idle_timeout: Option<std::time::Duration>,
    /// The ECS tasks the fake ECS API knows (default: cluster `sim`, service `web`).
    pub ecs_tasks: Vec<SimTask>,
    /// Custom Session documents by name (their JSON content, see `documents`).
    pub documents: Vec<(String, serde_json::Value)>,
    /// Ports of the simulated target that are served elsewhere on this machine, as
    /// (target port, local port): e.g. its sshd on 22 is a test sshd on another port.
    pub target_ports: Vec<(u16, u16)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            offline: Vec::new(),
            denied: Vec::new(),
            up: FaultPlan::default(),
            down: FaultPlan::default(),
            drops: DropPlan::default(),
            pauses: PausePlan::default(),
            paced: false,
            fast_agent: false,
            max_msg_rate: None,
            odd_headers: false,
            agent_version: AGENT_VERSION.into(),
            seed: 1,
            fleet: fleet::default_fleet(),
            eic_validity: fleet::EIC_VALIDITY,
            shell: None,
            shell_output_delay: std::time::Duration::from_secs(1),
            kms_key: None,
            kms_denied: Vec::new(),
            kms_bad_challenge: false,
            api_limit: None,
            online_after: Vec::new(),
            allow_unsigned: false,
            secret: SECRET_KEY.to_owned(),
            keys: Vec::new(),
            api_only_keys: Vec::new(),
            commands: vec!["*".to_owned()],
            idle_timeout: None,
            ecs_tasks: ecs::default_tasks(),
            documents: Vec::new(),
            target_ports: Vec::new(),
        }
    }
}

/// The AgentVersion the simulated agent announces unless told otherwise: a recent
/// amazon-ssm-agent release (smux port forwarding without keepalive pings).
pub const AGENT_VERSION: &str = "3.3.1957.0";

/// The access key the simulator prints for its clients.
pub const ACCESS_KEY: &str = "AKIASIMULATOR000000";
/// Its secret in the tests (`SimConfig::secret`'s default).
pub const SECRET_KEY: &str = "simulator-secret";

/// A running simulator bound to loopback.
pub struct SimServer {
    service: Arc<Service>,
    api: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds the API and gateway on `ip` (ephemeral ports) and starts serving.
    pub async fn bind(config: SimConfig, ip: IpAddr, api_port: u16) -> std::io::Result<Self> {
        let api_listener = TcpListener::bind((ip, api_port)).await?;
        let ws_listener = TcpListener::bind((ip, 0)).await?;
        let api = api_listener.local_addr()?;
        let ws = ws_listener.local_addr()?;
        let service = Arc::new(Service::new(config, format!("ws://{ws}")));
        let tasks = vec![
            tokio::spawn(api::serve(api_listener, service.clone())),
            tokio::spawn(gateway::serve(ws_listener, service.clone())),
        ];
        Ok(Self {
            service,
            api,
            tasks,
        })
    }

    /// `http://ip:port` of the API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The service state.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Environment a client needs to use this simulator with the real AWS SDK.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_SSM", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.service.config().secret.clone(),
            ),
            ("AWS_REGION", sigv4::REGION.into()),
            // AWS CLI v1 reads only this one.
            ("AWS_DEFAULT_REGION", sigv4::REGION.into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", self.endpoint()),
            ("AWS_ENDPOINT_URL_STS", self.endpoint()),
            ("AWS_ENDPOINT_URL_KMS", self.endpoint()),
            // Its own path: SSM calls sent there are refused, as the real ECS endpoint would.
            (
                "AWS_ENDPOINT_URL_ECS",
                format!("{}{}", self.endpoint(), api::ECS_PATH),
            ),
            (
                "SSM_PROXY_SSMMESSAGES_ENDPOINT",
                self.service.ws_base().to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A simulator on its own runtime thread, for synchronous tests. Stops when dropped.
pub struct Sim {
    server: Option<SimServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    /// Starts a simulator on 127.0.0.1 with ephemeral ports.
    pub fn start(config: SimConfig) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let server = SimServer::bind(config, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await;
                let ok = server.is_ok();
                let _ = ready_tx.send(server);
                if ok {
                    let _ = stop_rx.await;
                }
            });
        });
        let server = ready_rx.recv()??;
        Ok(Self {
            server: Some(server),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn server(&self) -> &SimServer {
        // Present from start() until drop.
        self.server.as_ref().expect("simulator running")
    }

    /// Environment for clients (see [`SimServer::env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        self.server().env()
    }

    /// API endpoint URL.
    pub fn endpoint(&self) -> String {
        self.server().endpoint()
    }

    /// Sessions started and not yet over.
    pub fn active_sessions(&self) -> usize {
        self.server().service().active_sessions()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.server().service().stats()
    }

    /// The service state (fleet, EC2 Instance Connect keys, …).
    pub fn service(&self) -> &Arc<Service> {
        self.server().service()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.server.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
