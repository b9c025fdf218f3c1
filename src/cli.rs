//! Command-line syntax (clap derive). Only the shape of the arguments lives here; turning them
//! into configuration happens in the front-ends.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # ~/.ssh/config: every instance id goes through Session Manager
  Host i-* mi-*
      ProxyCommand ssm-proxy %h %p

  ssh ec2-user@i-0123456789abcdef0
  ssh -o ProxyCommand='ssm-proxy --profile prod --region eu-west-1 %h %p' ec2-user@i-0123...
  ssm-proxy -v i-0123456789abcdef0 22 < /dev/null     # check that a session can be opened

  # try it locally against the built-in simulator (prints the environment to use)
  ssm-proxy sim > sim.env &  sleep 1; . ./sim.env; ssh -o ProxyCommand='ssm-proxy %h %p' localhost-user@i-0123456789abcdef0

Exit status: 0 on a normal end, 2 for bad arguments, 69 target or network unavailable,
77 credentials or permissions, 78 configuration (region, document), 1 anything else.";

/// Reach any machine through AWS Systems Manager Session Manager: an ssh ProxyCommand with no
/// inbound ports, no bastion and no Python.
#[derive(Debug, Parser)]
#[command(name = "ssm-proxy", version, after_help = EXAMPLES)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    /// Other modes.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Instance or managed-node id: i-0123456789abcdef0, mi-0123456789abcdef0.
    #[arg(required = true)]
    pub target: Option<String>,

    /// Port on the target to connect to (ssh's %p).
    #[arg(value_parser = parse_port, default_value = "22")]
    pub port: u16,

    /// Session document to start.
    #[arg(long, default_value = "AWS-StartSSHSession", value_name = "NAME")]
    pub document: String,

    /// Extra document parameter (repeatable); portNumber comes from PORT.
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,

    /// How long to keep trying to resume a lost connection.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "SECONDS",
        env = "SSM_PROXY_RESUME_TIMEOUT"
    )]
    pub resume_timeout: u64,

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

/// AWS configuration shared by every mode.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// AWS profile (default: AWS_PROFILE, then "default").
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,

    /// SSM API endpoint (default: AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL, then the standard one).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

/// Diagnostics. They go to stderr or a file, never to stdout.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// More detail on stderr (-v info, -vv debug, -vvv protocol trace).
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
    /// Run the local simulator (fake SSM API, gateway and agent) for demos and tests.
    Sim(SimArgs),
}

/// `ssm-proxy sim`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Prints `export VAR=value` lines for the client on stdout, then serves until \
interrupted.\n\nFault syntax: loss=0.01,dup=0.01,reorder=0.02,corrupt=0.001,drop-every=50,delay=5ms,jitter=2ms"
)]
pub struct SimArgs {
    /// Address of the SSM API (the gateway takes an ephemeral port beside it).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

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
    /// (stop relaying instead of closing).
    #[arg(long, value_name = "DROPS", default_value = "")]
    pub drops: String,

    /// Send the client pause_publication bursts: every=MSms,for=MSms.
    #[arg(long, value_name = "PAUSES", default_value = "")]
    pub pauses: String,

    /// Pace the agent like the real one (1 KiB reads with a 1 ms sleep).
    #[arg(long)]
    pub paced: bool,

    /// Seed for faults and ids.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port must be a number from 1 to 65535, got {s:?}")),
    }
}
