//! `ssm-proxy shell TARGET [-- COMMAND...]`: an interactive shell (Standard_Stream, §8.5) or one
//! remote command (InteractiveCommands with `-t`, else NonInteractiveCommands) over one session.
//!
//! On a terminal the local side is put in raw mode (restored on every way out: normal end, error,
//! signal, panic), the window size is sent at start and on every change, and ssh-style `~`
//! escapes are read after a newline. Without a terminal the bytes pass as they are. The exit
//! status is the remote command's (ExitCode payload, which the agent sends only for
//! NonInteractiveCommands with `separateOutputStream=true`, so we ask for it), or 0 when the
//! channel closed without one.
//! Nothing here speaks the protocol: the [`Driver`](crate::transport::Driver) does.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::aws::{Aws, SessionGrant};
use crate::cli::{self, AwsArgs, ShellArgs, UsageError};
use crate::front::report;
use crate::front::session::{self, Opened, Opening};
use crate::front::settings::{Mode, SessionSettings};
use crate::front::target::{self, TargetSpec};
use crate::os;
use crate::proto::SessionKind;
use crate::proto::documents;
use crate::proto::payload::Size;
use crate::transport::{End, Input, Local, Outcome, stdio};

/// The NonInteractiveCommands parameter that makes the agent send stderr apart and the exit
/// status at the end.
const SEPARATE_OUTPUT: &str = "separateOutputStream";

/// Not a signal number: the `~.` escape asks the driver to end the session. It travels on the
/// driver's signal channel, which already means "terminate the session and return".
const DISCONNECT: i32 = 0;
/// The escape character, as in ssh.
const ESCAPE: u8 = b'~';
/// What `~?` prints (raw mode: lines end in CR LF).
const ESCAPE_HELP: &str = "\r\nSupported escape sequences:\r\n \
    ~.   - terminate the session\r\n \
    ~?   - this message\r\n \
    ~~   - send the escape character by typing it twice\r\n\
    (Note that escapes are only recognized immediately after newline.)\r\n";

/// What to start: the document, its parameters, and whether the remote side has a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Session document.
    pub document: String,
    /// StartSession parameters.
    pub parameters: HashMap<String, Vec<String>>,
    /// The remote side runs on a pty (shell, `-t`): local raw mode and window sizes apply.
    pub remote_tty: bool,
}

impl Plan {
    /// The session the arguments ask for.
    pub fn new(args: &ShellArgs) -> Result<Self, UsageError> {
        let mut parameters = cli::document_parameters(&args.parameters, "command=uptime")?;
        let Some(command) = remote_command(&args.command) else {
            return Ok(Self {
                document: args
                    .document
                    .clone()
                    .unwrap_or_else(|| documents::SHELL.into()),
                parameters,
                remote_tty: true,
            });
        };
        parameters.insert("command".into(), vec![command]);
        let default = match args.tty {
            true => documents::INTERACTIVE_COMMAND,
            false => documents::NON_INTERACTIVE_COMMAND,
        };
        let document = args.document.clone().unwrap_or_else(|| default.into());
        if document == documents::NON_INTERACTIVE_COMMAND {
            // Without it the agent merges stderr into the output and reports no exit status
            // (agent `shell.go`: only `processCommandsWithOutputStreamSeparate` sends StdErr
            // and `EXIT_CODE: n`).
            parameters
                .entry(SEPARATE_OUTPUT.into())
                .or_insert_with(|| vec!["true".into()]);
        }
        Ok(Self {
            document,
            parameters,
            remote_tty: args.tty,
        })
    }
}

/// The `command` parameter from the words after `--`: one word is a command line as it is
/// (`'ls | wc -l'`), several are an argv, each quoted for the remote `sh -c` where needed, so
/// `sh -c 'exit 7'` stays three words (where ssh would run `sh -c exit 7`).
pub fn remote_command(words: &[String]) -> Option<String> {
    match words {
        [] => None,
        [line] => Some(line.clone()),
        words => Some(
            words
                .iter()
                .map(|w| sh_word(w))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// Quotes one word for a POSIX shell (the agent runs commands with `sh -c` on Linux and macOS).
fn sh_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._+-=,:@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs one shell or command session; returns the process exit status.
pub async fn run(args: ShellArgs, aws_args: AwsArgs) -> anyhow::Result<u8> {
    let spec = TargetSpec::parse(&args.target)?;
    if let TargetSpec::Ecs {
        cluster,
        task,
        container,
    } = spec
    {
        return super::ecs::shell(args, aws_args, (cluster, task, container)).await;
    }
    let plan = Plan::new(&args)?;
    let mut signals = os::signals();
    let (aws, profile) = super::connect(&aws_args).await?;
    let start = async {
        let target = target::resolve(&aws, &spec, profile.as_deref(), !aws_args.no_cache).await?;
        let grant = aws
            .start_session(&target, &plan.document, plan.parameters.clone())
            .await?;
        anyhow::Ok((target, grant))
    };
    // Until the session runs, Ctrl-C is an ordinary interrupt.
    let (target, grant) = tokio::select! {
        r = start => r?,
        sig = signals.recv() => return Ok(os::signal_exit_code(sig.unwrap_or(os::SIGINT))),
    };
    let settings = SessionSettings::from_resume(&args.resume);
    run_session(aws, grant, &target, &plan, &settings, signals).await
}

/// Opens a started shell or command session and runs it to its end (also for ECS Exec);
/// returns the process exit status.
pub async fn run_session(
    aws: Aws,
    grant: SessionGrant,
    target: &str,
    plan: &Plan,
    settings: &SessionSettings,
    mut signals: mpsc::Receiver<i32>,
) -> anyhow::Result<u8> {
    let session_id = grant.session_id.clone();
    let span = tracing::info_span!("session", id = %session_id, %target);
    let open = session::open(&aws, grant, target, settings, Mode::Shell, &mut signals);
    let result = match open.instrument(span).await {
        Ok(Opening::Opened(o)) if o.kind == SessionKind::Shell => {
            return run_opened(aws, o, target, plan, signals).await;
        }
        Ok(Opening::Opened(o)) => Err(NotShell(o.kind).into()),
        Ok(Opening::Ended(outcome)) => Ok(outcome),
        Err(e) => Err(e.into()),
    };
    finish(&aws, &session_id, result).await
}

/// Runs an open shell or command session (its kind dispatched on: here or by the
/// session-manager-plugin entry) on the terminal or stdio to its end.
pub async fn run_opened(
    aws: Aws,
    opened: Opened,
    target: &str,
    plan: &Plan,
    signals: mpsc::Receiver<i32>,
) -> anyhow::Result<u8> {
    let mut driver = opened.into_output();
    let session_id = driver.session_id().to_owned();
    let raw = plan.remote_tty && std::io::stdin().is_terminal();
    let span = tracing::info_span!("session", id = %session_id, %target);
    let result: anyhow::Result<Outcome> = async {
        tracing::info!(document = %plan.document, raw, "session started");
        // Raw from here to the end of this block, whatever way it ends.
        let terminal = match raw {
            true => Some(RawTerminal::enable()?),
            false => None,
        };
        let (input_tx, input) = mpsc::channel::<Input>(8);
        let (end_tx, mut ends) = mpsc::channel::<i32>(4);
        let (output, stdout_done) = stdio::stdout_writer();
        if raw {
            // The size goes first, before any keystroke (§8.5), then on every change.
            let size = terminal_size();
            if let Some(size) = size {
                let _ = input_tx.send(Input::Resize(size)).await;
            }
            tokio::spawn(track_size(input_tx.clone(), size));
        }
        let stdin_mode = match (raw, plan.remote_tty) {
            (true, _) => StdinMode::Terminal,
            (false, eot) => StdinMode::Pipe { eot },
        };
        spawn_stdin(input_tx.clone(), end_tx.clone(), stdin_mode);
        // `input_tx` lives on in this task: stdin's end is not the session's end (the remote
        // program's exit is), so the driver must never see the input channel close.
        tokio::spawn(route_signals(signals, input_tx, end_tx, raw));
        let local = Local { input, output };
        let outcome = driver.run(local, None, &mut ends).await;
        tracing::info!(?outcome, "session result");
        // What was received reaches the terminal before it leaves raw mode.
        stdout_done.wait(Duration::from_secs(5));
        drop(terminal);
        Ok(outcome?)
    }
    .instrument(span)
    .await;
    finish(&aws, &session_id, result).await
}

/// The exit status of a session that ended with `result`, after the line for a normal end; a
/// failed session is terminated on the service.
async fn finish(
    aws: &Aws,
    session_id: &str,
    result: anyhow::Result<Outcome>,
) -> anyhow::Result<u8> {
    match result {
        Ok(outcome) => {
            report::session_end(&outcome.end, session_id);
            Ok(exit_status(&outcome, session_id))
        }
        Err(e) => Err(super::end_failed_session(aws, session_id, e).await),
    }
}

/// The exit status for a session that ended without an error: a signal's, the remote
/// command's, else 0 (the channel closed normally, or `~.`, or our stdout went away).
fn exit_status(outcome: &Outcome, session_id: &str) -> u8 {
    match (&outcome.end, outcome.exit_code) {
        (End::Signal(DISCONNECT), _) => {
            // On its own line: the remote prompt usually left the cursor mid-line.
            match outcome.terminated {
                true => {
                    eprintln!("\nssm-proxy: disconnected (~.); session {session_id} terminated")
                }
                false => eprintln!(
                    "\nssm-proxy: disconnected (~.); the service could not be reached to end \
                     session {session_id}: it ends when the service notices, or run \
                     aws ssm terminate-session --session-id {session_id}"
                ),
            }
            0
        }
        (End::Signal(sig), _) => os::signal_exit_code(*sig),
        // Statuses are 0–255 on Unix; a negative or larger report wraps like a shell's `exit`.
        (_, Some(code)) => code.rem_euclid(256) as u8,
        (_, None) => 0,
    }
}

/// The document started something other than a shell or command session.
#[derive(Debug, thiserror::Error)]
#[error(
    "the document started a {} session, not a shell: use `ssm-proxy TARGET PORT` for SSH and \
     `ssm-proxy forward` for port forwarding",
    match .0 { SessionKind::Stream => "byte-stream", _ => "port-forwarding" }
)]
struct NotShell(SessionKind);

/// Raw mode on the controlling terminal while alive. Dropping it restores the settings saved
/// when it was made; a panic hook does the same, since a release build aborts on panic and
/// runs no destructors.
struct RawTerminal {
    /// The console's VT modes (Windows), cleared on drop.
    _vt: os::VtConsole,
}

impl RawTerminal {
    fn enable() -> anyhow::Result<Self> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = crossterm::terminal::disable_raw_mode();
                previous(info);
            }));
        });
        crossterm::terminal::enable_raw_mode().context(
            "cannot put the terminal in raw mode: run from a terminal, or pipe stdin for a \
             session without one",
        )?;
        Ok(Self {
            _vt: os::VtConsole::enable(),
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The terminal's size, if there is a terminal to ask.
fn terminal_size() -> Option<Size> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    (cols > 0 && rows > 0).then_some(Size {
        cols: cols.into(),
        rows: rows.into(),
    })
}

/// Sends the window size whenever it changes (event-driven where the OS allows, see
/// [`os::window_changes`]).
async fn track_size(input: mpsc::Sender<Input>, mut last: Option<Size>) {
    let mut changes = os::window_changes();
    while changes.recv().await.is_some() {
        let size = terminal_size();
        if size.is_some() && size != last {
            last = size;
            if let Some(size) = size {
                tracing::debug!(cols = size.cols, rows = size.rows, "window resized");
                if input.send(Input::Resize(size)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Signals during the session. On a raw terminal Ctrl-C is a byte for the remote program, and
/// a SIGINT sent from elsewhere becomes that same byte (the official plugin's mapping, §8.5);
/// every other signal ends the session.
async fn route_signals(
    mut signals: mpsc::Receiver<i32>,
    input: mpsc::Sender<Input>,
    end: mpsc::Sender<i32>,
    raw: bool,
) {
    while let Some(sig) = signals.recv().await {
        if raw && sig == os::SIGINT {
            let _ = input.send(Input::Data(Bytes::from_static(b"\x03"))).await;
        } else if end.send(sig).await.is_err() {
            return;
        }
    }
}

/// How stdin is read.
#[derive(Debug, Clone, Copy)]
enum StdinMode {
    /// A raw terminal: escapes apply; its end (hang-up) ends the session.
    Terminal,
    /// A pipe or file, passed as it is. At its end `eot` sends one Ctrl-D, which the remote
    /// pty turns into end-of-file for the shell; then the session lasts until the shell exits.
    Pipe {
        /// Whether the remote side is a pty (else nothing can say "end of input", §9.2).
        eot: bool,
    },
}

/// Reads stdin on a plain thread (blocking reads work the same everywhere).
fn spawn_stdin(input: mpsc::Sender<Input>, end: mpsc::Sender<i32>, mode: StdinMode) {
    std::thread::spawn(move || {
        let mut escapes = Escapes::default();
        let mut disconnected = false;
        stdio::read_stdin(|data| {
            if let StdinMode::Pipe { .. } = mode {
                return input.blocking_send(Input::Data(data)).is_ok();
            }
            for action in escapes.feed(&data) {
                match action {
                    Action::Send(bytes) => {
                        if input.blocking_send(Input::Data(bytes)).is_err() {
                            return false;
                        }
                    }
                    Action::Help => {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(ESCAPE_HELP.as_bytes());
                        let _ = err.flush();
                    }
                    Action::Disconnect => {
                        tracing::info!("~. escape: disconnecting");
                        let _ = end.blocking_send(DISCONNECT);
                        disconnected = true;
                        return false;
                    }
                }
            }
            true
        });
        if disconnected || input.is_closed() {
            return;
        }
        match mode {
            // The terminal is gone (hang-up): nobody is left to type.
            StdinMode::Terminal => {
                let _ = end.blocking_send(os::SIGHUP);
            }
            StdinMode::Pipe { eot: true } => {
                tracing::debug!("stdin ended; sending Ctrl-D");
                let _ = input.blocking_send(Input::Data(Bytes::from_static(b"\x04")));
            }
            StdinMode::Pipe { eot: false } => tracing::debug!("stdin ended"),
        }
    });
}

/// What the escape reader asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the remote side.
    Send(Bytes),
    /// `~?`: print the list of escapes.
    Help,
    /// `~.`: end the session.
    Disconnect,
}

/// ssh's escape reader: `~` right after a newline (or at the start) is held back and decides
/// with the next byte: `.` disconnects, `?` prints help, `~` sends one `~`, anything else sends
/// both. Only ASCII bytes are looked at, so UTF-8 and pasted text pass intact.
#[derive(Debug)]
pub struct Escapes {
    at_line_start: bool,
    pending: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Self {
            at_line_start: true,
            pending: false,
        }
    }
}

impl Escapes {
    /// Processes one read; a `~` at the end of it waits for the next read.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut out = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.pending {
                self.pending = false;
                match b {
                    b'.' => {
                        flush(&mut out, &mut actions);
                        actions.push(Action::Disconnect);
                        return actions;
                    }
                    b'?' => {
                        flush(&mut out, &mut actions);
                        actions.push(Action::Help);
                        // ssh lets the next escape follow at once.
                        self.at_line_start = true;
                        continue;
                    }
                    ESCAPE => {
                        out.push(ESCAPE);
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(ESCAPE),
                }
            } else if self.at_line_start && b == ESCAPE {
                self.pending = true;
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        flush(&mut out, &mut actions);
        actions
    }
}

fn flush(out: &mut Vec<u8>, actions: &mut Vec<Action>) {
    if !out.is_empty() {
        actions.push(Action::Send(Bytes::from(std::mem::take(out))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(reads: &[&[u8]]) -> (Vec<u8>, Vec<Action>) {
        let mut e = Escapes::default();
        let mut sent = Vec::new();
        let mut other = Vec::new();
        for r in reads {
            for a in e.feed(r) {
                match a {
                    Action::Send(b) => sent.extend_from_slice(&b),
                    a => other.push(a),
                }
            }
        }
        (sent, other)
    }

    #[test]
    fn escapes_act_only_after_a_newline() {
        assert_eq!(feed_all(&[b"~."]).1, [Action::Disconnect]);
        assert_eq!(
            feed_all(&[b"ls\r~.rest"]),
            (b"ls\r".to_vec(), vec![Action::Disconnect])
        );
        assert_eq!(feed_all(&[b"ls\n", b"~", b"."]).1, [Action::Disconnect]);
        assert_eq!(feed_all(&[b"a~.b"]), (b"a~.b".to_vec(), vec![]));
        assert_eq!(feed_all(&[b"~~.x"]), (b"~.x".to_vec(), vec![]));
        assert_eq!(feed_all(&[b"~x"]), (b"~x".to_vec(), vec![]));
        assert_eq!(
            feed_all(&[b"~?~."]),
            (Vec::new(), vec![Action::Help, Action::Disconnect])
        );
    }

    #[test]
    fn utf8_and_pastes_pass_intact() {
        let text = "héllo wörld ~ 日本語 🎉\r\nnext ~line\r\n".as_bytes();
        assert_eq!(feed_all(&[text]).0, text);
        // Split inside a multi-byte character.
        assert_eq!(feed_all(&[&text[..2], &text[2..]]).0, text);
    }

    #[test]
    fn commands_are_quoted_for_sh() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(remote_command(&[]), None);
        assert_eq!(
            remote_command(&words(&["ls | wc -l"])).as_deref(),
            Some("ls | wc -l")
        );
        assert_eq!(
            remote_command(&words(&["sh", "-c", "exit 7"])).as_deref(),
            Some("sh -c 'exit 7'")
        );
        assert_eq!(
            remote_command(&words(&["echo", "it's", ""])).as_deref(),
            Some(r"echo 'it'\''s' ''")
        );
    }

    #[test]
    fn exit_status_follows_the_remote_command() {
        let o = |end, exit_code| Outcome {
            end,
            exit_code,
            terminated: true,
        };
        assert_eq!(exit_status(&o(End::Closed, Some(7)), "s"), 7);
        assert_eq!(exit_status(&o(End::Closed, None), "s"), 0);
        assert_eq!(exit_status(&o(End::Closed, Some(-1)), "s"), 255);
        assert_eq!(exit_status(&o(End::Signal(os::SIGTERM), Some(3)), "s"), 143);
    }
}
