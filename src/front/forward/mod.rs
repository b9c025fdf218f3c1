//! `ssm-proxy forward TARGET -L [BIND:]LPORT:[HOST:]RPORT`: local listeners whose connections
//! reach a port on (or behind) the target through port-forwarding sessions, one session per
//! `-L`. The agent version picks the mode (§8.1): smux with one stream per connection, or basic
//! with one connection at a time.
//!
//! The engines take accepted connections from a channel rather than owning a listener, so TCP
//! and Unix listeners and the plugin entry share them. A session the service ends (idle
//! timeout, maximum duration, TerminateSession) ends the forward: no new session is started
//! behind the administrator's back.

mod basic;
mod conn;
mod mux;
pub mod socks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub use conn::{Conn, Listener, LocalStream};
pub use mux::BACKLOG;

use crate::aws::Aws;
use crate::cli::{AwsArgs, ForwardArgs};
use crate::front::report::{self, Failure};
use crate::front::session::{self, Opening};
use crate::front::settings::{Mode, SessionSettings};
use crate::front::target::{self, TargetSpec};
use crate::os;
use crate::proto::SessionKind;
use crate::transport::{Driver, End, Local};

/// Bytes per local read.
const READ_CHUNK: usize = 16 * 1024;

/// Serves every `-L` until a signal, the end of a session or a fatal error; returns the exit
/// status.
pub async fn run(args: ForwardArgs, aws_args: AwsArgs) -> anyhow::Result<u8> {
    let spec = TargetSpec::parse(&args.target)?;
    let (aws, profile) = super::connect(&aws_args).await?;
    let target = target::resolve(&aws, &spec, profile.as_deref(), !aws_args.no_cache).await?;
    let settings = SessionSettings::from_resume(&args.resume);
    let mut forwards = Vec::new();
    let mut sockets = Vec::new();
    let socks = Arc::new(socks::Socks {
        aws: aws.clone(),
        target: target.clone(),
        settings: settings.clone(),
    });
    for (bind, port) in &args.dynamic {
        let listener = listen_on(bind, *port).await?;
        sockets.extend(listener.path());
        forwards.push(Job::Socks(socks.clone(), listener));
    }
    for spec in args.forwards {
        let listener = listen_on(&spec.bind, spec.local_port).await?;
        sockets.extend(listener.path());
        let (document, parameters) = spec.document(listener.port());
        let forward = Forward {
            aws: aws.clone(),
            target: target.clone(),
            document: document.to_owned(),
            parameters,
            destination: format!("{}:{}", spec.host_label(), spec.remote_port),
            settings: settings.clone(),
        };
        forwards.push(Job::Forward(Box::new(forward), listener));
    }
    let status = serve(forwards).await;
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    status
}

/// Serves one forward over a session someone else started and opened (the
/// session-manager-plugin entry, which has seen the handshake), until a signal or the session's
/// end; the caller decides what is printed and the exit status.
pub async fn run_opened(
    forward: Forward,
    driver: Driver,
    listener: TcpListener,
) -> anyhow::Result<End> {
    let mut signals = os::signals();
    let (stop_tx, stop_rx) = mpsc::channel(1);
    let listener = Listener::Tcp(listener);
    let label = listener.label();
    let span = tracing::info_span!("session", id = %driver.session_id());
    let session = forward.serve_driver(
        Some(&label),
        listener.spawn_accept(),
        driver,
        stop_rx,
        None,
        span,
    );
    tokio::pin!(session);
    loop {
        tokio::select! {
            end = &mut session => return end,
            sig = signals.recv() => {
                let _ = stop_tx.try_send(sig.unwrap_or(os::SIGINT));
            }
        }
    }
}

/// Binds a local TCP port, with an error that says what to do when it is taken.
pub async fn listen(bind: &str, port: u16) -> anyhow::Result<TcpListener> {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {bind}:{port}: choose another local port"))
}

/// Binds `-L`'s BIND: a TCP address, or a Unix socket path (anything with a `/`).
async fn listen_on(bind: &str, port: u16) -> anyhow::Result<Listener> {
    if bind.contains('/') {
        #[cfg(unix)]
        {
            let l = tokio::net::UnixListener::bind(bind).with_context(|| {
                format!("cannot listen on {bind}: remove the file or choose another path")
            })?;
            return Ok(Listener::Unix(l, bind.into()));
        }
        #[cfg(not(unix))]
        anyhow::bail!(
            "cannot listen on {bind}: Unix sockets are not available here; use a TCP port"
        );
    }
    Ok(Listener::Tcp(listen(bind, port).await?))
}

/// Runs every forward until a signal (exit status of the signal) or until one has ended (its
/// status; the others are stopped).
async fn serve(jobs: Vec<Job>) -> anyhow::Result<u8> {
    let mut signals = os::signals();
    let mut stops = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let (stop_tx, stop_rx) = mpsc::channel(1);
        stops.push(stop_tx);
        match job {
            Job::Forward(forward, listener) => {
                let label = listener.label();
                let span = tracing::info_span!("forward", local = %label);
                let conns = listener.spawn_accept();
                tasks.spawn(
                    async move { forward.session(Some(&label), conns, stop_rx, None).await }
                        .instrument(span),
                );
            }
            Job::Socks(socks, listener) => {
                let label = listener.label();
                eprintln!("listening on {label} -> {} SOCKS5", socks.target);
                let span = tracing::info_span!("socks", local = %label);
                let conns = listener.spawn_accept();
                tasks.spawn(socks::serve(socks, conns, stop_rx).instrument(span));
            }
        }
    }
    let stop_all = |sig: i32| {
        for s in &stops {
            let _ = s.try_send(sig);
        }
    };
    let first = tokio::select! {
        sig = signals.recv() => {
            let sig = sig.unwrap_or(os::SIGINT);
            stop_all(sig);
            while tasks.join_next().await.is_some() {}
            return Ok(os::signal_exit_code(sig));
        }
        done = tasks.join_next() => done,
    };
    let status = match first {
        None => 0,
        Some(Ok(Ok(End::Signal(sig)))) => os::signal_exit_code(sig),
        Some(Ok(Ok(end))) => {
            eprintln!("ssm-proxy: {}", ended(&end));
            0
        }
        Some(Ok(Err(e))) => Failure::of(&e).report(),
        Some(Err(e)) => anyhow::bail!("forward task failed: {e}"),
    };
    // One forward ended: the others stop too, so scripts see the process go.
    stop_all(os::SIGTERM);
    let wait_rest = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), wait_rest).await;
    Ok(status)
}

/// What one `-L` or `-D` serves.
enum Job {
    /// A forward and its listener.
    Forward(Box<Forward>, Listener),
    /// A SOCKS5 server.
    Socks(Arc<socks::Socks>, Listener),
}

/// The one line for a session that ended without an error.
fn ended(end: &End) -> String {
    match end {
        End::Closed | End::Gone => {
            "the service closed the forwarding session (idle timeout, maximum \
                        session duration or TerminateSession); start it again to continue"
                .into()
        }
        other => format!("forwarding session ended ({other:?})"),
    }
}

/// One local listener and how to start the session that serves it.
pub struct Forward {
    /// SSM clients.
    pub aws: Aws,
    /// The resolved target id.
    pub target: String,
    /// Port-forwarding document.
    pub document: String,
    /// Its parameters.
    pub parameters: HashMap<String, Vec<String>>,
    /// `HOST:PORT` as seen from the target, for messages.
    pub destination: String,
    /// The session's settings.
    pub settings: SessionSettings,
}

impl Forward {
    /// Runs this forward's session until it ends; prints the `listening on` line for `label`
    /// once the session is ready (scripts wait for it). With `idle`, the session ends after
    /// that long without connections (multiplexed mode).
    async fn session(
        &self,
        label: Option<&str>,
        conns: mpsc::Receiver<Conn>,
        mut stop: mpsc::Receiver<i32>,
        idle: Option<Duration>,
    ) -> anyhow::Result<End> {
        let start = self
            .aws
            .start_session(&self.target, &self.document, self.parameters.clone());
        let grant = tokio::select! {
            grant = start => grant?,
            sig = stop.recv() => return Ok(End::Signal(sig.unwrap_or(os::SIGINT))),
        };
        let span = tracing::info_span!("session", id = %grant.session_id);
        let session_id = grant.session_id.clone();
        let open = session::open(
            &self.aws,
            grant,
            &self.target,
            &self.settings,
            Mode::Forward,
            &mut stop,
        );
        let failed = match open.instrument(span.clone()).await {
            Ok(Opening::Opened(o))
                if matches!(o.kind, SessionKind::Mux { .. } | SessionKind::Basic) =>
            {
                let mut driver = o.driver;
                driver.config_mut().destination = self.destination.clone();
                return self
                    .serve_driver(label, conns, driver, stop, idle, span)
                    .await;
            }
            Ok(Opening::Opened(o)) => NotForward(o.kind).into(),
            Ok(Opening::Ended(outcome)) => {
                report::session_end(&outcome.end, &session_id);
                return Ok(outcome.end);
            }
            Err(e) => e.into(),
        };
        // Nothing is left running on the service (the session did start).
        Err(super::end_failed_session(&self.aws, &session_id, failed).await)
    }

    /// Runs an open session to its end, its engine serving `conns` once it is ready.
    async fn serve_driver(
        &self,
        label: Option<&str>,
        mut conns: mpsc::Receiver<Conn>,
        mut driver: Driver,
        mut stop: mpsc::Receiver<i32>,
        idle: Option<Duration>,
        span: tracing::Span,
    ) -> anyhow::Result<End> {
        let session_id = driver.session_id().to_owned();
        let (input_tx, input) = mpsc::channel(16);
        let (output, output_rx) = mpsc::channel::<Bytes>(16);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (signal_tx, mut signals) = mpsc::channel(1);
        let run = async move {
            driver
                .run(Local { input, output }, Some(ready_tx), &mut signals)
                .await
        };
        let mut driver_task = tokio::spawn(run.instrument(span.clone()));
        let engine = async {
            let Ok(kind) = ready_rx.await else { return };
            tracing::info!(?kind, "forwarding");
            match kind {
                SessionKind::Mux { keepalive } => {
                    announce(label, self);
                    mux::engine(&mut conns, input_tx, output_rx, keepalive, idle).await
                }
                SessionKind::Basic => {
                    announce(label, self);
                    basic::engine(&mut conns, input_tx, output_rx).await
                }
                _ => tracing::error!("the document did not start a port-forwarding session"),
            }
        };
        tokio::pin!(engine);
        let mut engine_done = false;
        let outcome = loop {
            tokio::select! {
                res = &mut driver_task => break res,
                sig = stop.recv() => {
                    let _ = signal_tx.send(sig.unwrap_or(os::SIGINT)).await;
                }
                // Polled until it completes, never after. Its end (listener gone, idle) ends
                // the session.
                _ = &mut engine, if !engine_done => {
                    engine_done = true;
                    let _ = signal_tx.try_send(os::SIGTERM);
                }
            }
        };
        match outcome.context("session task panicked")? {
            Ok(outcome) => {
                report::session_end(&outcome.end, &session_id);
                Ok(outcome.end)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The document started something other than port forwarding.
#[derive(Debug, thiserror::Error)]
#[error(
    "the document started a {} session, not port forwarding: use \
     AWS-StartPortForwardingSession or AWS-StartPortForwardingSessionToRemoteHost here",
    match .0 { SessionKind::Shell => "shell", _ => "byte-stream" }
)]
struct NotForward(SessionKind);

/// The one line scripts wait for; printed whatever the verbosity, once the session is ready.
fn announce(label: Option<&str>, forward: &Forward) {
    let Some(label) = label else {
        return tracing::info!(destination = %forward.destination, "session ready");
    };
    eprintln!(
        "listening on {label} -> {} {}",
        forward.target, forward.destination
    );
}
