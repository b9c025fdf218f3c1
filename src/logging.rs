//! Diagnostics through `tracing`: to stderr (never stdout, which belongs to ssh) and optionally
//! appended to a file. Quiet by default: a ProxyCommand's stderr shows on every ssh connection.

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
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

/// Target of notices: events that say what a long wait is about (reconnecting, a slow
/// endpoint). They are shown at default verbosity as plain `ssm-proxy: …` lines, like ssh's own
/// notices, and hidden by -q (they are `warn` events).
pub const NOTICE: &str = "ssm_proxy::notice";

/// Prints notice events as one plain line on stderr (`\r\n` on a raw terminal).
struct Notices;

impl<S: tracing::Subscriber> Layer<S> for Notices {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != NOTICE {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let end = match crossterm::terminal::is_raw_mode_enabled() {
            Ok(true) => "\r\n",
            _ => "\n",
        };
        eprint!("ssm-proxy: {}{end}", message.0);
    }
}

/// Installs the global subscriber. `SSM_PROXY_LOG` (EnvFilter syntax) overrides the level.
pub fn init(args: &LogArgs) {
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
    // Owner-only and never through a symlink: the log names sessions, targets and endpoints.
    let mut append = std::fs::OpenOptions::new();
    append.create(true).append(true);
    let file = args
        .log_file
        .as_ref()
        .map(|p| (p, crate::os::private_file(p, &mut append)));
    let (writer, unopened) = match file {
        Some((_, Ok(f))) => (BoxMakeWriter::new(std::io::stderr.and(Mutex::new(f))), None),
        Some((p, Err(e))) => (BoxMakeWriter::new(std::io::stderr), Some((p, e))),
        None => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(writer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() != NOTICE
        }));
    tracing_subscriber::registry()
        .with(filter)
        .with(no_token_dumps)
        .with(fmt)
        .with(Notices)
        .init();
    if let Some((path, e)) = unopened {
        tracing::warn!(
            target: NOTICE,
            "cannot write the log file {}: {e}; logging to stderr only",
            path.display()
        );
    }
}
