//! `ssm-proxy sim`: the simulator as a process, for demos and for trying one's own setup.

use std::io::Write;

use crate::cli::{SimArgs, UsageError};
use crate::sim::{FaultPlan, SimConfig, SimServer};

/// Serves until SIGINT/SIGTERM; the client environment goes to stdout first.
pub async fn run(args: SimArgs) -> anyhow::Result<u8> {
    if !args.listen.ip().is_loopback() && !args.unsafe_non_loopback {
        return Err(UsageError(format!(
            "--listen {}: the simulator serves only loopback addresses (127.0.0.1, ::1); add \
             --unsafe-non-loopback to let other machines reach it",
            args.listen
        ))
        .into());
    }
    let parse = |s: &str, which: &str| {
        FaultPlan::parse(s).map_err(|e| anyhow::anyhow!("--faults-{which}: {e}"))
    };
    let mut fleet = crate::sim::fleet::default_fleet();
    for spec in &args.instances {
        fleet.push(
            crate::sim::SimInstance::parse(spec).map_err(|e| anyhow::anyhow!("--instance: {e}"))?,
        );
    }
    let config = SimConfig {
        fleet,
        offline: args.offline,
        denied: args.deny,
        up: parse(&args.faults_up, "up")?,
        down: parse(&args.faults_down, "down")?,
        drops: crate::sim::DropPlan::parse(&args.drops)
            .map_err(|e| anyhow::anyhow!("--drops: {e}"))?,
        pauses: crate::sim::PausePlan::parse(&args.pauses)
            .map_err(|e| anyhow::anyhow!("--pauses: {e}"))?,
        paced: args.paced,
        fast_agent: args.fast_agent,
        max_msg_rate: args.max_msg_rate,
        odd_headers: args.odd_headers,
        agent_version: args.agent_version,
        kms_key: args.kms,
        kms_denied: args.kms_deny,
        seed: args.seed,
        api_limit: args.api_tps.map(|n| {
            let burst = args.api_burst.unwrap_or((n * 2.0).ceil() as u32);
            crate::sim::ApiLimit::new(n, burst)
        }),
        online_after: args.online_after,
        allow_unsigned: args.allow_unsigned,
        // A fresh secret: only who reads the printed environment can use this simulator.
        secret: format!("sim-{}", uuid::Uuid::new_v4().simple()),
        commands: args.allow_commands,
        ..Default::default()
    };
    let server = SimServer::bind(config, args.listen.ip(), args.listen.port()).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# ssm-proxy simulator: SSM API at {}",
        server.endpoint()
    )?;
    for (k, v) in server.env() {
        writeln!(out, "export {k}={v}")?;
    }
    out.flush()?;
    drop(out);
    let mut signals = crate::os::signals();
    let sig = signals.recv().await.unwrap_or(crate::os::SIGINT);
    eprintln!(
        "ssm-proxy sim: stopping ({} sessions still active)",
        server.service().active_sessions()
    );
    let stats = server.service().stats();
    eprintln!(
        "ssm-proxy sim: {} StartSession calls, {} sessions started, {} terminated, {} calls throttled",
        stats.start_calls, stats.started, stats.terminated, stats.throttled
    );
    Ok(crate::os::signal_exit_code(sig))
}
