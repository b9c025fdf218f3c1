//! How the simulator behaves ([`SimConfig`]) and the credentials it prints.

use super::ecs::{self, SimTask};
use super::faults::{DropPlan, FaultPlan, PausePlan};
use super::fleet::{self, SimInstance};
use super::throttle::ApiLimit;

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
