//! Diagnostics through `tracing`: to stderr (never stdout, which belongs to ssh) and optionally
//! appended to a file. Quiet by default: a ProxyCommand's stderr shows on every ssh connection.

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogArgs;

/// Libraries whose trace output would show session tokens.
const TOKEN_CARRIERS: [&str; 8] = [
    "tungstenite",
    "tokio_tungstenite",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_ssm",
    "hyper",
    "hyper_util",
];

/// Whether -q asked for errors only (notices are not printed then).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether -q was given.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber. `SSM_PROXY_LOG` (EnvFilter syntax) overrides the level.
pub fn init(args: &LogArgs) {
    QUIET.store(args.quiet, std::sync::atomic::Ordering::Relaxed);
    // Our own level, and one step quieter for the libraries (the SDK warns about harmless things).
    let (ours, theirs) = match (args.quiet, args.verbose) {
        (true, _) => ("error", "error"),
        (false, 0) => ("warn", "error"),
        (false, 1) => ("info", "warn"),
        (false, 2) => ("debug", "info"),
        _ => ("trace", "debug"),
    };
    let filter = EnvFilter::try_from_env("SSM_PROXY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{theirs},ssm_proxy={ours}")));
    // At trace level these libraries dump request and response bodies and websocket frames,
    // which carry the session token: their trace output is dropped, whatever SSM_PROXY_LOG says.
    let no_token_dumps = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !TOKEN_CARRIERS.iter().any(|c| meta.target().starts_with(c))
    });
    // Timestamps (since start) only where they help: debugging latency.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime());
    let file = args.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match file {
        Some(f) => builder
            .with_writer(std::io::stderr.and(Mutex::new(f)))
            .finish()
            .with(no_token_dumps)
            .init(),
        None => builder
            .with_writer(std::io::stderr)
            .finish()
            .with(no_token_dumps)
            .init(),
    }
}
