//! The agent's program side for the shell plugins (§12.3, §12.4): the user's shell, or one
//! command, on a real local pty (Standard_Stream, InteractiveCommands), or one command on pipes
//! with stdout and stderr apart (NonInteractiveCommands). Blocking pty I/O runs on plain
//! threads, pipe I/O on tasks; like `target`, they report through two channels: control
//! (always taken) and output (taken only while the agent may send, which is the back-pressure).
//! It speaks no protocol: chunking, ExitCode and draining belong to the agent model.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use portable_pty::{ChildKiller, CommandBuilder, MasterPty, PtySize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::agent::Plugin;
use crate::os;
use crate::proto::payload::Size;

/// How long, after the process exited, its output may take to reach end-of-file (a background
/// job can hold the pty open forever). Only time in which the agent could send counts.
const EXIT_DRAIN: Duration = Duration::from_millis(500);
/// Bytes per read of the program's output; the agent cuts it into ≤ 1024-byte messages.
const READ_CHUNK: usize = 4096;

/// What happened on the program side.
#[derive(Debug, PartialEq, Eq)]
pub enum ShellEvent {
    /// The program runs: input can be taken.
    Started,
    /// The program could not be started.
    Failed(String),
    /// Terminal output (pty) or standard output (pipes).
    Output(Bytes),
    /// Standard error (pipes only; a pty merges it into the output).
    Stderr(Bytes),
    /// Bytes written to the program (back-pressure accounting).
    Written(usize),
    /// The program exited with this status and its output was read.
    Exited(i32),
    /// Nothing for the agent.
    Nothing,
}

enum Report {
    Started,
    Failed(String),
    Written(usize),
    Exited(i32),
}

enum Chunk {
    Out(Bytes),
    Err(Bytes),
    Eof,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ShellSpec {
    /// Which plugin: a pty for Standard_Stream and InteractiveCommands, pipes otherwise.
    pub plugin: Plugin,
    /// The shell for Standard_Stream (default [`os::user_shell`]).
    pub program: Option<String>,
    /// The command line of the command plugins.
    pub command: Option<String>,
    /// Wait before the first output read (the agent's 1 s, §12.4).
    pub output_delay: Duration,
}

/// The program of one shell session.
pub struct Shell {
    spec: ShellSpec,
    size: Size,
    master: Option<Box<dyn MasterPty + Send>>,
    pty_killer: Option<Box<dyn ChildKiller + Send + Sync>>,
    pipe_killer: Option<oneshot::Sender<()>>,
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    report_tx: mpsc::UnboundedSender<Report>,
    report_rx: mpsc::UnboundedReceiver<Report>,
    data_tx: mpsc::Sender<Chunk>,
    data_rx: mpsc::Receiver<Chunk>,
    /// Output streams not at end-of-file yet.
    open_streams: usize,
    /// Exit status and the drain deadline, once the process has exited.
    exited: Option<(i32, Instant)>,
    /// When the output readers start reading (spawn time + the agent's delay).
    reading_from: Instant,
    finished: bool,
}

impl Shell {
    /// Nothing runs until [`Shell::spawn`].
    pub fn new(spec: ShellSpec) -> Self {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(4);
        Self {
            spec,
            // What a pty has until the client sends its size.
            size: Size { cols: 80, rows: 24 },
            master: None,
            pty_killer: None,
            pipe_killer: None,
            writer: None,
            report_tx,
            report_rx,
            data_tx,
            data_rx,
            open_streams: 0,
            exited: None,
            reading_from: Instant::now(),
            finished: false,
        }
    }

    /// Starts the program; [`ShellEvent::Started`] or [`ShellEvent::Failed`] follows.
    pub fn spawn(&mut self) {
        self.reading_from = Instant::now() + self.spec.output_delay;
        let started = match self.spec.plugin.uses_pty() {
            true => self.spawn_pty(),
            false => self.spawn_pipes(),
        };
        let _ = self.report_tx.send(match started {
            Ok(()) => Report::Started,
            Err(e) => Report::Failed(e),
        });
    }

    fn spawn_pty(&mut self) -> Result<(), String> {
        let pair = portable_pty::native_pty_system()
            .openpty(pty_size(self.size))
            .map_err(|e| format!("cannot open a pty: {e}"))?;
        let mut cmd = match &self.spec.command {
            None => CommandBuilder::new(self.spec.program.clone().unwrap_or_else(os::user_shell)),
            Some(line) => {
                let (program, args) = os::command_line(line);
                let mut cmd = CommandBuilder::new(program);
                cmd.args(args);
                cmd
            }
        };
        cmd.env("TERM", "xterm-256color");
        let mut child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| format!("cannot start the shell: {e}"))?;
        // Only the child may hold the slave: its exit must end the output with EOF.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().map_err(|e| e.to_string())?;
        let mut writer = pair.master.take_writer().map_err(|e| e.to_string())?;
        self.pty_killer = Some(child.clone_killer());
        self.master = Some(pair.master);
        self.open_streams = 1;
        let report = self.report_tx.clone();
        std::thread::spawn(move || {
            let code = child.wait().map_or(-1, |s| s.exit_code() as i32);
            let _ = report.send(Report::Exited(code));
        });
        let data = self.data_tx.clone();
        let delay = self.spec.output_delay;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = Chunk::Out(Bytes::copy_from_slice(&buf[..n]));
                        if data.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = data.blocking_send(Chunk::Eof);
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        self.writer = Some(tx);
        let report = self.report_tx.clone();
        std::thread::spawn(move || {
            while let Some(b) = rx.blocking_recv() {
                if writer.write_all(&b).and_then(|()| writer.flush()).is_err() {
                    break;
                }
                let _ = report.send(Report::Written(b.len()));
            }
        });
        Ok(())
    }

    fn spawn_pipes(&mut self) -> Result<(), String> {
        let line = self.spec.command.clone().unwrap_or_default();
        let (program, args) = os::command_line(&line);
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the command: {e}"))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the command has no pipes".into());
        };
        self.open_streams = 2;
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        self.pipe_killer = Some(kill_tx);
        let report = self.report_tx.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                // Killed, or the session is gone (sender dropped).
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let code = status.map_or(-1, os::exit_status_code);
            let _ = report.send(Report::Exited(code));
        });
        let delay = self.spec.output_delay;
        tokio::spawn(pump(stdout, false, self.data_tx.clone(), delay));
        tokio::spawn(pump(stderr, true, self.data_tx.clone(), delay));
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        self.writer = Some(tx);
        let report = self.report_tx.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if stdin.write_all(&b).await.is_err() {
                    break;
                }
                let _ = report.send(Report::Written(b.len()));
            }
        });
        Ok(())
    }

    /// Bytes from the client for the program.
    pub fn write(&mut self, data: Bytes) {
        let n = data.len();
        let sent = self.writer.as_ref().is_some_and(|w| w.send(data).is_ok());
        if !sent {
            // Nowhere to write (exited): count it as written so nothing stalls.
            let _ = self.report_tx.send(Report::Written(n));
        }
    }

    /// A new terminal size (kept for a pty that does not exist yet).
    pub fn resize(&mut self, size: Size) {
        self.size = size;
        if let Some(master) = &self.master
            && let Err(e) = master.resize(pty_size(size))
        {
            tracing::debug!(error = %e, "sim: pty resize failed");
        }
    }

    /// Ends the program (TerminateSession, channel_closed): SIGHUP to a pty's shell, as a
    /// hang-up would; a kill for a piped command.
    pub fn kill(&mut self) {
        if let Some(mut killer) = self.pty_killer.take() {
            let _ = killer.kill();
        }
        self.pipe_killer.take();
    }

    /// Waits for the next event; output is taken only when `can_read`.
    pub async fn next(&mut self, can_read: bool) -> ShellEvent {
        if self.finished {
            return std::future::pending().await;
        }
        if let Some((code, deadline)) = self.exited.as_mut() {
            if self.open_streams == 0 || Instant::now() >= *deadline {
                let code = *code;
                self.finished = true;
                return ShellEvent::Exited(code);
            }
            if !can_read {
                *deadline = (*deadline).max(Instant::now() + EXIT_DRAIN);
            }
        }
        let deadline = self.exited.map(|(_, d)| d);
        tokio::select! {
            Some(report) = self.report_rx.recv() => self.on_report(report),
            Some(chunk) = self.data_rx.recv(), if can_read => self.on_chunk(chunk),
            _ = sleep_until(deadline) => ShellEvent::Nothing,
        }
    }

    fn on_report(&mut self, report: Report) -> ShellEvent {
        match report {
            Report::Started => ShellEvent::Started,
            Report::Failed(e) => ShellEvent::Failed(e),
            Report::Written(n) => ShellEvent::Written(n),
            Report::Exited(code) => {
                tracing::debug!(code, "sim: shell exited");
                // The drain starts when the readers do (after the agent's initial delay).
                let from = Instant::now().max(self.reading_from);
                self.exited = Some((code, from + EXIT_DRAIN));
                ShellEvent::Nothing
            }
        }
    }

    fn on_chunk(&mut self, chunk: Chunk) -> ShellEvent {
        match chunk {
            Chunk::Out(b) => ShellEvent::Output(b),
            Chunk::Err(b) => ShellEvent::Stderr(b),
            Chunk::Eof => {
                self.open_streams = self.open_streams.saturating_sub(1);
                ShellEvent::Nothing
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pty_size(size: Size) -> PtySize {
    let clamp = |v: u32| v.clamp(1, u32::from(u16::MAX)) as u16;
    PtySize {
        rows: clamp(size.rows),
        cols: clamp(size.cols),
        pixel_width: 0,
        pixel_height: 0,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads one pipe of a command after the agent's initial delay.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stderr: bool,
    data: mpsc::Sender<Chunk>,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let b = Bytes::copy_from_slice(&buf[..n]);
                let chunk = if stderr { Chunk::Err(b) } else { Chunk::Out(b) };
                if data.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = data.send(Chunk::Eof).await;
}
