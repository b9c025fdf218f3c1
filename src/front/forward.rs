//! `ssm-proxy forward TARGET -L [BIND:]LPORT:[HOST:]RPORT`: local TCP listeners whose
//! connections reach a port on (or behind) the target through port-forwarding sessions, one
//! session per `-L`. The agent version picks the mode (§8.1): smux with one stream per
//! connection, or basic with one connection at a time.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::aws::{Aws, SessionGrant};
use crate::cli::{AwsArgs, ForwardArgs};
use crate::front::target::{self, TargetSpec};
use crate::os;
use crate::proto::SessionKind;
use crate::proto::frame::flag;
use crate::proto::smux::{Mux, MuxEvent, Role};
use crate::transport::{DriveError, Driver, DriverConfig, End, Input, Local};

/// smux keepalive period for agents that still expect one (Go's default, §8.4).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Bytes per local read.
const READ_CHUNK: usize = 16 * 1024;

/// Serves every `-L` until a signal or a fatal error; returns the exit status.
pub async fn run(args: ForwardArgs, aws_args: AwsArgs) -> anyhow::Result<u8> {
    let spec = TargetSpec::parse(&args.target)?;
    let (aws, profile) = super::connect(&aws_args).await?;
    let target = target::resolve(&aws, &spec, profile.as_deref(), !aws_args.no_cache).await?;
    let mut forwards = Vec::new();
    for spec in args.forwards {
        let listener = listen(&spec.bind, spec.local_port).await?;
        let port = listener.local_addr()?.port();
        let (document, parameters) = spec.document(port);
        let forward = Forward {
            aws: aws.clone(),
            target: target.clone(),
            document: document.to_owned(),
            parameters,
            destination: format!("{}:{}", spec.host_label(), spec.remote_port),
            resume_timeout: args.resume.resume_timeout,
        };
        forwards.push((forward, listener, None));
    }
    serve(forwards).await
}

/// Serves one forward whose first session was already started by someone else (the AWS CLI,
/// for the session-manager-plugin entry); later sessions are started with `document` and
/// `parameters`, as the first one was.
pub async fn run_granted(
    forward: Forward,
    grant: SessionGrant,
    listener: TcpListener,
) -> anyhow::Result<u8> {
    serve(vec![(forward, listener, Some(grant))]).await
}

/// Binds a local port, with an error that says what to do when it is taken.
pub async fn listen(bind: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((bind, port))
        .await
        .with_context(|| format!("cannot listen on {bind}:{port}: choose another local port"))
}

/// Runs every forward until a signal (exit status of the signal) or until all have ended.
async fn serve(forwards: Vec<(Forward, TcpListener, Option<SessionGrant>)>) -> anyhow::Result<u8> {
    let mut signals = os::signals();
    let mut stops = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (forward, listener, grant) in forwards {
        let addr = listener.local_addr()?;
        // The one line scripts wait for; printed whatever the verbosity.
        eprintln!(
            "listening on {addr} -> {} {}",
            forward.target, forward.destination
        );
        let (stop_tx, stop_rx) = mpsc::channel(1);
        stops.push(stop_tx);
        let span = tracing::info_span!("forward", local = %addr);
        tasks.spawn(forward.serve(listener, grant, stop_rx).instrument(span));
    }
    let mut status = 0u8;
    loop {
        tokio::select! {
            sig = signals.recv() => {
                let sig = sig.unwrap_or(os::SIGINT);
                for s in &stops {
                    let _ = s.send(sig).await;
                }
                while tasks.join_next().await.is_some() {}
                return Ok(os::signal_exit_code(sig));
            }
            done = tasks.join_next() => match done {
                None => return Ok(status),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    eprintln!("ssm-proxy: {}", one_line(&format!("{e:#}")));
                    status = 1;
                }
                Some(Err(e)) => anyhow::bail!("forward task failed: {e}"),
            },
        }
    }
}

/// Whether a session failed because the service ended it (channel_closed with a reason, or
/// gone while disconnected).
fn ended_by_service(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<DriveError>(),
        Some(DriveError::ClosedWithError(_) | DriveError::Gone)
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One local listener and how to start the sessions that serve it.
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
    /// Seconds to keep trying to resume a lost connection.
    pub resume_timeout: u64,
}

impl Forward {
    /// Runs sessions for this listener: one that fails on our side is replaced by a new one, one
    /// the service ends is not.
    async fn serve(
        self,
        listener: TcpListener,
        mut grant: Option<SessionGrant>,
        mut stop: mpsc::Receiver<i32>,
    ) -> anyhow::Result<()> {
        let mut first = true;
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = self.session(&listener, grant.take(), &mut stop).await;
            match result {
                Ok(End::Signal(_)) | Ok(End::LocalGone) => return Ok(()),
                // The service (idle timeout, maximum duration, an administrator) ended it:
                // no new session behind anyone's back.
                Ok(End::Closed) => return Ok(()),
                Err(e) if ended_by_service(&e) => return Err(e),
                Ok(end) => tracing::warn!(?end, "session ended; starting a new one"),
                Err(e) if first => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "session failed; starting a new one")
                }
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.recv() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn session(
        &self,
        listener: &TcpListener,
        grant: Option<SessionGrant>,
        stop: &mut mpsc::Receiver<i32>,
    ) -> anyhow::Result<End> {
        let grant = match grant {
            Some(g) => g,
            None => {
                self.aws
                    .start_session(&self.target, &self.document, self.parameters.clone())
                    .await?
            }
        };
        let span = tracing::info_span!("session", id = %grant.session_id);
        let config = DriverConfig {
            resume_timeout: Duration::from_secs(self.resume_timeout),
            target: self.target.clone(),
            ..Default::default()
        };
        let mut driver = Driver::connect(self.aws.clone(), grant, config)
            .instrument(span.clone())
            .await?;
        let (input_tx, input) = mpsc::channel::<Input>(16);
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
            let kind = ready_rx.await.ok()?;
            tracing::info!(?kind, "forwarding");
            match kind {
                SessionKind::Mux { keepalive } => {
                    mux_engine(listener, input_tx, output_rx, keepalive).await
                }
                SessionKind::Basic => basic_engine(listener, input_tx, output_rx).await,
                _ => tracing::error!("the document did not start a port-forwarding session"),
            }
            Some(())
        };
        tokio::pin!(engine);
        // A finished engine must not be polled again.
        let mut engine_done = false;
        let outcome = loop {
            tokio::select! {
                res = &mut driver_task => break res,
                sig = stop.recv() => {
                    let _ = signal_tx.send(sig.unwrap_or(os::SIGINT)).await;
                }
                _ = &mut engine, if !engine_done => engine_done = true,
            }
        };
        match outcome.context("session task panicked")? {
            Ok(outcome) => Ok(outcome.end),
            Err(e) => Err(e.into()),
        }
    }
}

/// Multiplexed mode: every accepted connection is a smux stream.
async fn mux_engine(
    listener: &TcpListener,
    input: mpsc::Sender<Input>,
    mut output: mpsc::Receiver<Bytes>,
    keepalive: bool,
) {
    let mut mux = Mux::new(Role::Client);
    let mut conns: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let (from_conn_tx, mut from_conn) = mpsc::channel::<(u32, Option<Bytes>)>(64);
    let mut ticker = tokio::time::interval(KEEPALIVE);
    loop {
        while let Some(frame) = mux.poll_transmit() {
            if input.send(Input::Data(frame)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let id = mux.open();
                tracing::info!(conn = id, %peer, "connection opened");
                conns.insert(id, spawn_conn(id, stream, from_conn_tx.clone()));
            }
            Some((id, chunk)) = from_conn.recv() => match chunk {
                Some(data) => mux.send(id, &data),
                None => {
                    tracing::info!(conn = id, "connection closed");
                    mux.finish(id);
                }
            },
            data = output.recv() => {
                let Some(data) = data else { return };
                if let Err(e) = mux.handle_bytes(&data) {
                    tracing::error!(error = %e, "the agent's smux stream is broken");
                    return;
                }
                while let Some(ev) = mux.poll_event() {
                    match ev {
                        MuxEvent::Data(id, b) => {
                            if let Some(conn) = conns.get(&id)
                                && conn.send(b).await.is_err()
                            {
                                conns.remove(&id);
                            }
                        }
                        // The agent is done with this stream (destination closed or refused).
                        MuxEvent::Fin(id) => {
                            conns.remove(&id);
                        }
                        MuxEvent::Opened(_) => {}
                    }
                }
            }
            _ = ticker.tick(), if keepalive => mux.keepalive(),
        }
    }
}

/// Basic mode: one connection at a time; its end is signalled with DisconnectToPort (§8.3).
async fn basic_engine(
    listener: &TcpListener,
    input: mpsc::Sender<Input>,
    mut output: mpsc::Receiver<Bytes>,
) {
    loop {
        let (stream, peer) = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => break c,
                    Err(_) => continue,
                },
                // Output for a connection that is already gone.
                data = output.recv() => if data.is_none() { return },
            }
        };
        tracing::info!(%peer, "connection opened");
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        if input.send(Input::Data(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                    _ => break,
                },
                data = output.recv() => match data {
                    Some(data) => {
                        if w.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
            }
        }
        tracing::info!(%peer, "connection closed");
        if input
            .send(Input::Flag(flag::DISCONNECT_TO_PORT))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Pumps one local connection: reads go to `to_mux` tagged with `id` (None at EOF); the returned
/// sender takes bytes for it (dropping it closes the connection for writing).
fn spawn_conn(
    id: u32,
    stream: TcpStream,
    to_mux: mpsc::Sender<(u32, Option<Bytes>)>,
) -> mpsc::Sender<Bytes> {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if to_mux
                        .send((id, Some(Bytes::copy_from_slice(&buf[..n]))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                _ => break,
            }
        }
        let _ = to_mux.send((id, None)).await;
    });
    tx
}
