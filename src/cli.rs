//! Command-line syntax (clap derive). Only the shape of the arguments lives here; turning them
//! into configuration happens in the front-ends.

// Doc comments here are also --help text, written for terminals: `[BIND:]` is syntax, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The top-level help's closing text: examples, then the exit statuses.
pub const EXAMPLES: &str = "\
Examples:
  # ~/.ssh/config: every instance id goes through Session Manager
  Host i-* mi-*
      ProxyCommand ssm-proxy %h %p

  ssh ec2-user@i-0123456789abcdef0
  ssh -o ProxyCommand='ssm-proxy --profile prod --region eu-west-1 %h %p' ec2-user@i-0123...
  ssm-proxy -v i-0123456789abcdef0 22 < /dev/null     # check that a session can be opened
  ssh ec2-user@web-1                                   # by Name tag (Host web-1 ... in ssh_config)
  ssm-proxy ssh-config --send-key >> ~/.ssh/config     # a ready Host block, EC2 Instance Connect
  ssm-proxy doctor web-1                               # check credentials, endpoints, target

  # one Host block per account and region: ssh ec2-user@web-1.prod.eu-west-1
  Host *.prod.eu-west-1
      ProxyCommand ssm-proxy --alias %h %p

  # try it locally against the built-in simulator (prints the environment to use)
  ssm-proxy sim > sim.env &  sleep 1; . ./sim.env; ssh -o ProxyCommand='ssm-proxy %h %p' localhost-user@i-0123456789abcdef0

Exit status: 0 on a normal end, 2 for bad arguments, 69 target or network unavailable,
77 credentials or permissions, 78 configuration (region, document), 1 anything else.";

/// Reach any machine through AWS Systems Manager Session Manager: an ssh ProxyCommand with no
/// inbound ports, no bastion and no Python.
#[derive(Debug, Parser)]
#[command(name = "ssm-proxy", version, after_help = EXAMPLES)]
#[command(subcommand_negates_reqs = true)]
#[command(
    override_usage = "ssm-proxy [OPTIONS] TARGET [PORT]\n       ssm-proxy <COMMAND> [OPTIONS] [ARGS]"
)]
pub struct Cli {
    /// Other modes.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Instance or managed-node id (i-0123456789abcdef0, mi-…), a Name tag value (web-1), or
    /// tag:KEY=VALUE; names and tags are looked up with DescribeInstanceInformation.
    #[arg(required = true)]
    pub target: Option<String>,

    /// Port on the target to connect to (ssh's %p).
    #[arg(value_parser = parse_port, default_value = "22")]
    pub port: u16,

    /// Session document to start.
    #[arg(long, default_value = crate::proto::documents::SSH, value_name = "NAME")]
    pub document: String,

    /// Extra document parameter (repeatable); portNumber comes from PORT.
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,

    /// `--resume-timeout`, `--reason`.
    #[command(flatten)]
    pub resume: ResumeArgs,

    /// TARGET is TARGET.PROFILE.REGION (ssh's %h for `Host *.PROFILE.REGION`); a PROFILE of
    /// `default` keeps --profile or the ambient one. Alias parts override --profile, --region.
    #[arg(long)]
    pub alias: bool,

    /// Push a public key with EC2 Instance Connect right before the session (valid 60 s);
    /// default: the first of ~/.ssh/id_ed25519.pub, id_ecdsa.pub, id_rsa.pub. Needs --user.
    #[arg(
        long,
        value_name = "PUBKEY",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub send_key: Option<String>,

    /// OS user for --send-key (ssh's %r).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// If the target's agent is not connected yet (an instance still booting), keep asking for
    /// up to SECONDS instead of failing at once.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECONDS",
        env = "SSM_PROXY_WAIT"
    )]
    pub wait: u64,

    /// Bytes per protocol message (1024 is what the service is known to accept).
    #[arg(long, default_value_t = 1024, value_name = "BYTES", hide = true)]
    pub max_payload: usize,

    /// Seconds of silence after which the websocket is presumed dead and resumed.
    #[arg(
        long,
        default_value_t = 30,
        value_name = "SECONDS",
        hide = true,
        env = "SSM_PROXY_DEAD_AFTER"
    )]
    pub dead_after: u64,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub aws: AwsArgs,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub log: LogArgs,
}

/// AWS configuration of every mode that calls AWS.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// AWS profile (default: AWS_PROFILE, then "default").
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// SSM API endpoint (default: AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL, then the standard one).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Data-channel endpoint replacing scheme, host and port of the service's StreamUrl, for
    /// PrivateLink or FIPS, e.g. wss://vpce-0abc-xyz.ssmmessages.eu-west-1.vpce.amazonaws.com
    /// (default: SSM_PROXY_SSMMESSAGES_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub ssmmessages_endpoint: Option<String>,

    /// Look names and tags up again instead of using the 60 s cache.
    #[arg(long)]
    pub no_cache: bool,

    /// StartSession's Reason (from the mode's `--reason`), not an option of its own here.
    #[arg(skip)]
    pub reason: Option<String>,
}

impl AwsArgs {
    /// These options, each falling back to `outer`'s: options given before a subcommand
    /// (`ssm-proxy --profile prod doctor`) count for it.
    pub fn or(self, outer: &AwsArgs) -> AwsArgs {
        AwsArgs {
            profile: self.profile.or_else(|| outer.profile.clone()),
            region: self.region.or_else(|| outer.region.clone()),
            endpoint_url: self.endpoint_url.or_else(|| outer.endpoint_url.clone()),
            ssmmessages_endpoint: self
                .ssmmessages_endpoint
                .or_else(|| outer.ssmmessages_endpoint.clone()),
            no_cache: self.no_cache || outer.no_cache,
            reason: self.reason.or_else(|| outer.reason.clone()),
        }
    }
}

/// Diagnostics. They go to stderr or a file, never to stdout.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// More detail on stderr: -v what the session does (resumes, timings), -vv protocol and
    /// AWS SDK details, -vvv also the libraries' debug output (never tokens).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also append diagnostics to this file.
    #[arg(long, global = true, env = "SSM_PROXY_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// Modes other than the ProxyCommand relay.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Forward local ports to ports on (or behind) the target, like `ssh -L`.
    Forward(ForwardArgs),
    /// Run the local simulator (fake SSM API, gateway and agent) for demos and tests.
    #[cfg(feature = "sim")]
    Sim(Box<SimArgs>),
    /// Print a ready ~/.ssh/config Host block that uses this executable.
    SshConfig(SshConfigArgs),
    /// Check credentials, region, endpoints, proxy, a target and local ssh; print each fix.
    Doctor(DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout.
    Man,
    /// Open a shell on the target, or run one command there (like `ssh TARGET [COMMAND]`).
    Shell(ShellArgs),
}

/// `ssm-proxy shell`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  ssm-proxy shell i-0123456789abcdef0                     # an interactive shell
  ssm-proxy shell web-1 -- df -h /                        # one command; its exit status is ours
  ssm-proxy shell web-1 -- 'journalctl -u nginx | tail'   # one word: a remote command line
  ssm-proxy shell -t web-1 -- top                         # a command that needs a terminal
  echo 'uptime; exit' | ssm-proxy shell web-1             # a shell fed from a pipe

Escapes (on a terminal, right after Enter): ~. disconnects, ~? lists them, ~~ sends one ~.")]
pub struct ShellArgs {
    /// Instance or managed-node id, a Name tag value, tag:KEY=VALUE, or an ECS container
    /// ecs:CLUSTER/TASK[/CONTAINER] (TASK: task id or service name).
    pub target: String,

    /// Run this instead of a shell (after `--`). Several words are quoted for the remote sh;
    /// one word is passed as a command line.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Run COMMAND on a remote terminal (AWS-StartInteractiveCommand), e.g. for top or vim.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,

    /// Session document (default: SSM-SessionManagerRunShell; with COMMAND,
    /// AWS-StartNonInteractiveCommand, or AWS-StartInteractiveCommand with -t).
    #[arg(long, value_name = "NAME")]
    pub document: Option<String>,

    /// Extra document parameter (repeatable); `command` comes from COMMAND.
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,

    /// `--resume-timeout`, `--reason`.
    #[command(flatten)]
    pub resume: ResumeArgs,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Options every session mode has: how long a session rides out a lost connection, and the
/// reason recorded with it.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// How long to keep trying to resume a lost connection.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "SECONDS",
        env = "SSM_PROXY_RESUME_TIMEOUT"
    )]
    pub resume_timeout: u64,

    /// Upload rate limit for a service limit known in advance: N messages per second, or N
    /// followed by B, K or M for bytes per second (e.g. 500, 512K). Without it uploads are
    /// still slowed down whenever the service sends pause_publication.
    #[arg(
        long,
        value_name = "RATE",
        value_parser = crate::proto::pacer::Rate::parse,
        env = "SSM_PROXY_MAX_RATE"
    )]
    pub max_rate: Option<crate::proto::pacer::Rate>,

    /// After local EOF, how long to wait for the service to close the session before ending
    /// it ourselves.
    #[arg(
        long,
        default_value_t = 5,
        value_name = "SECONDS",
        env = "SSM_PROXY_EOF_WAIT"
    )]
    pub eof_wait: u64,

    /// Why this session is opened (1 to 256 characters): StartSession's Reason, which Session
    /// Manager shows in its session history and CloudTrail records (e.g. --reason %r@%h).
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// A mistake in the arguments found after parsing; reported like clap's errors (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--parameter KEY=VALUE` arguments as StartSession parameters (a repeated KEY gathers its
/// values); `example` is a parameter the error message shows.
pub fn document_parameters(
    items: &[String],
    example: &str,
) -> Result<std::collections::HashMap<String, Vec<String>>, UsageError> {
    let mut parameters = std::collections::HashMap::<String, Vec<String>>::new();
    for p in items {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "--parameter {p:?} is not KEY=VALUE: write e.g. --parameter {example}"
            ))
        })?;
        parameters
            .entry(k.to_owned())
            .or_default()
            .push(v.to_owned());
    }
    Ok(parameters)
}

/// `ssm-proxy ssh-config`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  ssm-proxy ssh-config >> ~/.ssh/config
  ssm-proxy ssh-config --profile prod --region eu-west-1 --send-key 'prod-*'
  ssm-proxy ssh-config --alias '*.prod.eu-west-1' '*.default.us-east-1'
  ssm-proxy ssh-config --reuse 'i-*'            # one session per host, shared (ControlMaster)")]
pub struct SshConfigArgs {
    /// Host patterns for the block (default: i-* mi-*).
    #[arg(value_name = "HOST_PATTERN")]
    pub patterns: Vec<String>,

    /// Push ~/.ssh/id_*.pub with EC2 Instance Connect for ssh's user (%r) on every connection.
    #[arg(long)]
    pub send_key: bool,

    /// The patterns are TARGET.PROFILE.REGION aliases (adds --alias).
    #[arg(long)]
    pub alias: bool,

    /// Share one session among all ssh connections to a host (ControlMaster auto, kept 10
    /// minutes after the last one): Ansible's many ssh runs then cost one StartSession per host.
    #[arg(long)]
    pub reuse: bool,

    /// Record a reason with every session (--reason in the ProxyCommand); ssh expands %r (user)
    /// and %h (host) in it. Without a value: %r@%h.
    #[arg(
        long,
        value_name = "TEMPLATE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "%r@%h"
    )]
    pub reason: Option<String>,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `ssm-proxy doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Also check this target (id, name or tag:KEY=VALUE): found, Online, agent version.
    pub target: Option<String>,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `ssm-proxy completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `ssm-proxy forward`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  ssm-proxy forward i-0123456789abcdef0 -L 8888:8888             # Jupyter on the instance
  ssm-proxy forward i-0123456789abcdef0 -L 5432:db.internal:5432 # a database behind it
  ssm-proxy forward i-0123456789abcdef0 -L 0:80 -L 127.0.0.1:9000:localhost:9000
  ssm-proxy forward i-0123456789abcdef0 -D 1080   # SOCKS5: curl --socks5-hostname 127.0.0.1:1080

Each -L is its own session. Without HOST (or with localhost, 127.0.0.1, ::1) the document is
AWS-StartPortForwardingSession, otherwise AWS-StartPortForwardingSessionToRemoteHost.
LPORT 0 picks a free port. One line per forward is printed to stderr when it listens:
  listening on 127.0.0.1:PORT -> TARGET HOST:RPORT")]
pub struct ForwardArgs {
    /// Instance or managed-node id (i-…, mi-…), a Name tag value, tag:KEY=VALUE, or an ECS
    /// container ecs:CLUSTER/TASK[/CONTAINER].
    pub target: String,

    /// A forward: [BIND:]LPORT:[HOST:]RPORT (repeatable; BIND defaults to 127.0.0.1; an IPv6
    /// BIND in brackets, `[::1]:LPORT:RPORT`; a Unix socket: `/PATH:[HOST:]RPORT`).
    #[arg(short = 'L', long = "local", value_name = "[BIND:]LPORT:[HOST:]RPORT", required_unless_present = "dynamic", value_parser = ForwardSpec::parse)]
    pub forwards: Vec<ForwardSpec>,

    /// A SOCKS5 proxy (repeatable; BIND defaults to 127.0.0.1): each CONNECT destination gets
    /// its own port-forwarding session, reused by its connections. No sshd needed.
    #[arg(short = 'D', long = "dynamic", value_name = "[BIND:]PORT", value_parser = parse_dynamic)]
    pub dynamic: Vec<(String, u16)>,

    /// `--resume-timeout`, `--reason`.
    #[command(flatten)]
    pub resume: ResumeArgs,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Parses `-D [BIND:]PORT` (`[v6]:PORT`, or a Unix socket path).
pub fn parse_dynamic(s: &str) -> Result<(String, u16), String> {
    if s.contains('/') {
        return Ok((s.to_owned(), 0));
    }
    let (bind, port) = match s.rsplit_once(':') {
        Some((b, p)) => (b.trim_start_matches('[').trim_end_matches(']'), p),
        None => ("127.0.0.1", s),
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("expected [BIND:]PORT, got {s:?}"))?;
    let bind = if bind.is_empty() { "127.0.0.1" } else { bind };
    Ok((bind.to_owned(), port))
}

/// Whether a forward's HOST names the target itself: then the document is
/// AWS-StartPortForwardingSession, since agents from 3.3.4851 refuse ToRemoteHost to loopback
/// (protocol.md §16.2).
pub fn is_target_itself(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
        || host == "127.0.0.1"
        || host == "::1"
}

/// One `-L` specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// Local address to listen on.
    pub bind: String,
    /// Local port (0 = any free port).
    pub local_port: u16,
    /// Remote host as seen from the target (None = the target itself).
    pub host: Option<String>,
    /// Remote port.
    pub remote_port: u16,
}

impl ForwardSpec {
    /// Parses `[BIND:]LPORT:[HOST:]RPORT` like ssh: with three parts, a numeric first part is
    /// LPORT (`LPORT:HOST:RPORT`), otherwise it is BIND (`BIND:LPORT:RPORT`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str, zero_ok: bool| match p.parse::<u16>() {
            Ok(n) if n > 0 || zero_ok => Ok(n),
            _ => Err(format!("{p:?} is not a port number in {s:?}")),
        };
        // `[v6]:...` and a Unix socket path (`/path:...`, ssh's form) as BIND.
        let (bracketed, rest) = match s.strip_prefix('[').and_then(|r| r.split_once("]:")) {
            Some((v6, rest)) => (Some(v6), rest),
            None => (None, s),
        };
        let mut parts: Vec<&str> = rest.split(':').collect();
        if bracketed.is_none() && parts.len() >= 2 && parts[0].contains('/') {
            parts.insert(1, "0");
        }
        if let Some(v6) = bracketed {
            parts.insert(0, v6);
        }
        let (bind, lport, host, rport) = match parts.as_slice() {
            [l, r] => (None, *l, None, *r),
            [a, b, r] if a.parse::<u16>().is_ok() && bracketed.is_none() => {
                (None, *a, Some(*b), *r)
            }
            [a, l, r] => (Some(*a), *l, None, *r),
            [a, l, h, r] => (Some(*a), *l, Some(*h), *r),
            _ => return Err(format!("expected [BIND:]LPORT:[HOST:]RPORT, got {s:?}")),
        };
        Ok(Self {
            bind: bind
                .filter(|b| !b.is_empty())
                .unwrap_or("127.0.0.1")
                .to_owned(),
            local_port: port(lport, true)?,
            host: host
                .filter(|h| !h.is_empty() && !is_target_itself(h))
                .map(str::to_owned),
            remote_port: port(rport, false)?,
        })
    }

    /// The remote host for messages.
    pub fn host_label(&self) -> &str {
        self.host.as_deref().unwrap_or("localhost")
    }

    /// The session document and its parameters for this forward.
    pub fn document(
        &self,
        local_port: u16,
    ) -> (&'static str, std::collections::HashMap<String, Vec<String>>) {
        let mut params = std::collections::HashMap::new();
        params.insert("portNumber".to_owned(), vec![self.remote_port.to_string()]);
        params.insert("localPortNumber".to_owned(), vec![local_port.to_string()]);
        match &self.host {
            None => (crate::proto::documents::PORT_FORWARDING, params),
            Some(h) => {
                params.insert("host".to_owned(), vec![h.clone()]);
                (
                    crate::proto::documents::PORT_FORWARDING_TO_REMOTE_HOST,
                    params,
                )
            }
        }
    }
}

/// `ssm-proxy sim`.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Prints `export VAR=value` lines for the client on stdout, then serves until \
interrupted.\n\nFault syntax: loss=0.01,dup=0.01,reorder=0.02,corrupt=0.001,drop-every=50,delay=5ms,jitter=2ms"
)]
pub struct SimArgs {
    /// Address of the SSM API (the gateway takes an ephemeral port beside it); a loopback
    /// address unless --unsafe-non-loopback.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// Let --listen be an address other machines can reach. Unsafe: whoever can reach it and
    /// read the printed credentials can dial this machine's ports through it, and run commands
    /// on it for the --allow-commands targets.
    #[arg(long)]
    pub unsafe_non_loopback: bool,

    /// Run shell and command sessions (and ECS Exec) for TARGET here, as the user running the
    /// simulator (repeatable; `*` for every target). Without it they are refused with
    /// AccessDeniedException.
    #[arg(long = "allow-commands", value_name = "TARGET")]
    pub allow_commands: Vec<String>,

    /// Answer StartSession for this target with TargetNotConnected (repeatable).
    #[arg(long, value_name = "TARGET")]
    pub offline: Vec<String>,

    /// Answer StartSession for this target with AccessDeniedException (repeatable).
    #[arg(long, value_name = "TARGET")]
    pub deny: Vec<String>,

    /// Faults on client → agent frames.
    #[arg(long, value_name = "FAULTS", default_value = "")]
    pub faults_up: String,

    /// Faults on agent → client frames.
    #[arg(long, value_name = "FAULTS", default_value = "")]
    pub faults_down: String,

    /// When to kill the client's websocket: after-bytes=N, after=MSms, clean (close 1000 "Bye"
    /// instead of a TCP reset), handshake (right after the HandshakeRequest), max=N, blackhole
    /// (stop relaying instead of closing), outage=MS (then refuse new connections for MS).
    #[arg(long, value_name = "DROPS", default_value = "")]
    pub drops: String,

    /// Send the client pause_publication bursts: every=MSms,for=MSms.
    #[arg(long, value_name = "PAUSES", default_value = "")]
    pub pauses: String,

    /// Pace the agent like the real one (1 KiB reads with a 1 ms sleep).
    #[arg(long)]
    pub paced: bool,

    /// Use the fast agent (a send window, every message on its own timer) instead of the one
    /// that behaves like amazon-ssm-agent (oldest-only resend every 100 ms, no window); for
    /// benchmarks of the client alone.
    #[arg(long)]
    pub fast_agent: bool,

    /// Client messages per second per session above which the gateway sends pause_publication,
    /// then closes the websocket if the client keeps sending.
    #[arg(long, value_name = "N")]
    pub max_msg_rate: Option<u32>,

    /// Send every fifth frame with a longer header (HeaderLength 124), as the official parsers
    /// allow.
    #[arg(long)]
    pub odd_headers: bool,

    /// Encrypt every session with this KMS key, as a kmsKeyId in the Session Manager
    /// preferences does (the agent asks for KMSEncryption in the handshake).
    #[arg(long, value_name = "KEY")]
    pub kms: Option<String>,

    /// Make the fake KMS refuse this key (repeatable).
    #[arg(long, value_name = "KEY")]
    pub kms_deny: Vec<String>,

    /// AgentVersion the simulated agent announces (≤ 3.0.196.0 means basic port forwarding).
    #[arg(long, default_value = crate::sim::AGENT_VERSION, value_name = "VERSION")]
    pub agent_version: String,

    /// Add a managed node to the fleet DescribeInstanceInformation lists (repeatable):
    /// ID[,name=NAME][,KEY=VALUE...][,offline][,agent=VERSION][,platform=Linux].
    #[arg(long = "instance", value_name = "SPEC")]
    pub instances: Vec<String>,

    /// Seed for faults and ids.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Rate-limit StartSession, ResumeSession and TerminateSession to N calls a second each,
    /// answering ThrottlingException beyond it, as AWS does.
    #[arg(long, value_name = "N")]
    pub api_tps: Option<f64>,

    /// Calls allowed at once under --api-tps (default: twice N).
    #[arg(long, value_name = "B", requires = "api_tps")]
    pub api_burst: Option<u32>,

    /// TARGET answers TargetNotConnected until SECONDS after the start, like an instance that
    /// is booting (repeatable).
    #[arg(long, value_name = "TARGET=SECONDS", value_parser = parse_online_after)]
    pub online_after: Vec<(String, std::time::Duration)>,

    /// Accept data-channel upgrades that are not SigV4-signed, as from session-manager-plugin
    /// older than 1.2.764.0 (by default they are refused with HTTP 403, as by the service).
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[cfg(feature = "sim")]
fn parse_online_after(s: &str) -> Result<(String, std::time::Duration), String> {
    let (target, secs) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TARGET=SECONDS, got {s:?}"))?;
    let secs = secs
        .parse::<f64>()
        .ok()
        .and_then(|n| std::time::Duration::try_from_secs_f64(n).ok())
        .ok_or_else(|| format!("{secs:?} is not a number of seconds in {s:?}"))?;
    Ok((target.to_owned(), secs))
}

fn parse_reason(s: &str) -> Result<String, String> {
    match s.chars().count() {
        1..=256 if !s.contains(['\n', '\r']) => Ok(s.to_owned()),
        _ => Err("a reason is one line of 1 to 256 characters".into()),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port must be a number from 1 to 65535, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::ForwardSpec;

    #[test]
    fn forward_specs_parse_like_ssh() {
        let f = |s| ForwardSpec::parse(s).map(|f| (f.bind, f.local_port, f.host, f.remote_port));
        assert_eq!(f("8888:8888"), Ok(("127.0.0.1".into(), 8888, None, 8888)));
        assert_eq!(
            f("0:db.internal:5432"),
            Ok(("127.0.0.1".into(), 0, Some("db.internal".into()), 5432))
        );
        assert_eq!(f("0.0.0.0:80:8080"), Ok(("0.0.0.0".into(), 80, None, 8080)));
        assert!(f("::9000:localhost:9000").is_err());
        assert_eq!(
            f("127.0.0.1:9000:localhost:9000"),
            Ok(("127.0.0.1".into(), 9000, None, 9000))
        );
        assert!(f("80").is_err() && f("a:b").is_err() && f("1:0").is_err());
        assert_eq!(f("[::1]:0:80"), Ok(("::1".into(), 0, None, 80)));
        // Loopback is the target itself: never ToRemoteHost.
        assert_eq!(f("0:127.0.0.1:80"), Ok(("127.0.0.1".into(), 0, None, 80)));
        assert_eq!(f("0:LOCALHOST:80"), Ok(("127.0.0.1".into(), 0, None, 80)));
        assert!(super::is_target_itself("[::1]") && super::is_target_itself("localhost."));
        assert!(!super::is_target_itself("127.0.0.2") && !super::is_target_itself("db"));
        assert_eq!(
            f("[::]:5432:db:5432"),
            Ok(("::".into(), 5432, Some("db".into()), 5432))
        );
        assert_eq!(f("/tmp/f.sock:80"), Ok(("/tmp/f.sock".into(), 0, None, 80)));
        assert_eq!(
            f("/tmp/f.sock:db:5432"),
            Ok(("/tmp/f.sock".into(), 0, Some("db".into()), 5432))
        );
    }
}
