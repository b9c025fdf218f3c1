//! Everything OS-specific, in one place: which signals end a session, how a ProxyCommand
//! word is quoted, terminal size changes, the Windows console's modes and text, the Windows
//! watchdog that ends a session when ssh kills us, and how the simulator runs a shell or a
//! command.
//!
//! Paths need nothing here: `dirs` gives `%USERPROFILE%` as the home (so `~/.ssh` is
//! `%USERPROFILE%\.ssh`) and `%LOCALAPPDATA%` as the cache directory on Windows.

use tokio::sync::mpsc;

/// SIGHUP: ssh sends it to its ProxyCommand when it exits.
pub const SIGHUP: i32 = 1;
/// SIGINT (Ctrl-C).
pub const SIGINT: i32 = 2;
/// SIGTERM.
pub const SIGTERM: i32 = 15;

/// Signals that should end the session, as their numbers. Installing the handlers also undoes a
/// SIG_IGN inherited from a parent such as the AWS CLI (§1.3).
pub fn signals() -> mpsc::Receiver<i32> {
    let (tx, rx) = mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, num) in [
            (SignalKind::hangup(), SIGHUP),
            (SignalKind::interrupt(), SIGINT),
            (SignalKind::terminate(), SIGTERM),
        ] {
            if let Ok(mut s) = signal(kind) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.send(num).await;
                    }
                });
            }
        }
    }
    // Windows has console control events instead: Ctrl-C (as SIGINT: a byte for the remote
    // program on a raw terminal, else the end), Ctrl-Break (ends the session, as SIGTERM) and
    // the console window closing (as SIGHUP: a normal end; Windows allows a few seconds).
    #[cfg(windows)]
    {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
        macro_rules! forward {
            ($make:expr, $num:expr) => {
                if let Ok(mut s) = $make {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            let _ = tx.send($num).await;
                        }
                    });
                }
            };
        }
        forward!(ctrl_c(), SIGINT);
        forward!(ctrl_break(), SIGTERM);
        forward!(ctrl_close(), SIGHUP);
    }
    #[cfg(not(any(unix, windows)))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(SIGINT).await;
        }
    });
    rx
}

/// Resolves when the reader of stdout is gone (a pipe or socket whose other end closed),
/// without writing to it: a session nobody reads must not wait for stdin to close. Never
/// resolves where that cannot be watched (a file, /dev/null, other OSes).
pub async fn stdout_closed() {
    #[cfg(unix)]
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            use rustix::event::{PollFd, PollFlags, poll};
            let stdout = std::io::stdout();
            // No events asked: poll returns only for POLLERR (a pipe's reader closed it),
            // POLLHUP (a socket's peer did) or POLLNVAL.
            let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
            loop {
                match poll(&mut fds, None) {
                    Ok(n) if n > 0 => break,
                    Err(rustix::io::Errno::INTR) | Ok(_) => continue,
                    Err(_) => return,
                }
            }
            let _ = tx.send(());
        });
        if rx.await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Conventional exit status for death by a signal.
pub fn signal_exit_code(sig: i32) -> u8 {
    match sig {
        SIGHUP => 0, // ssh hanging up on its ProxyCommand is the normal end
        s => 128u8.saturating_add(s as u8),
    }
}

/// Whether the system's ssh can share one connection between invocations (`ControlMaster`):
/// Windows OpenSSH cannot (it has no Unix sockets to pass descriptors over; Win32-OpenSSH
/// issue 405), and a `ControlPath` makes its every connection fail.
pub const SSH_SHARES_CONNECTIONS: bool = cfg!(not(windows));

/// Quotes one word of an ssh_config `ProxyCommand`: ssh runs it with `sh -c` on Unix (single
/// quotes), and directly through CreateProcess on Windows (double quotes). `%` is doubled
/// because ssh expands `%` tokens first.
pub fn proxy_command_word(s: &str) -> String {
    let s = s.replace('%', "%%");
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._+-=,:@%\\".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s;
    }
    #[cfg(windows)]
    {
        format!("\"{}\"", s.replace('"', "\\\""))
    }
    #[cfg(not(windows))]
    {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Ticks whenever the terminal may have changed size; the receiver reads the size itself and
/// skips ticks without a change. Unix: SIGWINCH, event-driven. Elsewhere there is no such
/// signal, so the size is polled four times a second.
pub fn window_changes() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::window_change()) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    // A full channel already holds a tick: this change is covered by it.
                    if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                        return;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    });
    rx
}

/// The user's shell, for the simulator's shell sessions: `$SHELL`, else `/bin/sh` (Windows:
/// `%ComSpec%`, else `cmd.exe`).
pub fn user_shell() -> String {
    #[cfg(windows)]
    let (var, fallback) = ("ComSpec", "cmd.exe");
    #[cfg(not(windows))]
    let (var, fallback) = ("SHELL", "/bin/sh");
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// How the agent runs one command line: `sh -c LINE` (Windows: `cmd /C LINE`).
pub fn command_line(line: &str) -> (String, Vec<String>) {
    #[cfg(windows)]
    let (program, flag) = ("cmd.exe", "/C");
    #[cfg(not(windows))]
    let (program, flag) = ("sh", "-c");
    (program.to_owned(), vec![flag.to_owned(), line.to_owned()])
}

/// A process's exit status as a shell reports it: its code, or 128 + the signal that killed it.
pub fn exit_status_code(status: std::process::ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    -1
}

/// Points stdin, stdout and stderr at the null device, so that whoever holds the other ends of
/// our pipes (ssh, and what reads ssh's stderr) sees them closed while we finish up.
pub fn release_stdio() {
    #[cfg(unix)]
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

/// Windows: ssh ends its ProxyCommand with TerminateProcess (Win32-OpenSSH's `kill()`; under
/// Wine its SIGHUP does the same), so no handler of ours runs and the session would stay open on
/// the service until it times out. A watchdog (this program again, detached, with the same
/// arguments and [`WATCHDOG_VAR`] naming the session) holds a pipe from us for the session's
/// life: when the pipe closes without [`Watchdog::disarm`], we were killed, and it ends the
/// session. Elsewhere ssh's SIGHUP reaches us, so there is no watchdog.
pub struct Watchdog {
    #[cfg(windows)]
    pipe: Option<std::process::ChildStdin>,
}

/// Set in the watchdog's environment: the session it ends when its parent is gone.
pub const WATCHDOG_VAR: &str = "SSM_PROXY_WATCHDOG_SESSION";

impl Watchdog {
    /// Starts the watchdog for `session_id` (Windows); failing to start it only loses the
    /// cleanup, so that is logged, not fatal.
    pub fn start(session_id: &str) -> Watchdog {
        #[cfg(windows)]
        {
            let pipe = spawn_watchdog(session_id)
                .inspect_err(|e| tracing::warn!(error = %e, "no watchdog for the session"))
                .ok();
            Watchdog { pipe }
        }
        #[cfg(not(windows))]
        {
            let _ = session_id;
            Watchdog {}
        }
    }

    /// We end (or ended) the session ourselves: the watchdog exits without a call.
    pub fn disarm(self) {
        #[cfg(windows)]
        if let Some(mut pipe) = self.pipe {
            use std::io::Write;
            let _ = pipe.write_all(b"done");
        }
    }
}

/// A copy of this program with the same arguments, no console, no stdio but a pipe from us, in
/// a process group of its own (Ctrl-C is ours to handle) and, where the job allows, out of ssh's
/// job (which may be killed as a whole). Returns the pipe.
#[cfg(windows)]
fn spawn_watchdog(session_id: &str) -> std::io::Result<std::process::ChildStdin> {
    use std::os::windows::process::CommandExt;
    use std::process::{Command, Stdio};
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
    if let Err(e) = uninheritable_stdio() {
        tracing::debug!(error = %e, "stdio stays inheritable");
    }
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1))
        .env(WATCHDOG_VAR, session_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let flags = DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP;
    let mut child = cmd
        .creation_flags(flags | CREATE_BREAKAWAY_FROM_JOB)
        .spawn()
        .or_else(|_| cmd.creation_flags(flags).spawn())?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the watchdog"))
}

/// Puts non-inheritable duplicates of stdin, stdout and stderr in their places and closes the
/// originals: std lets a child inherit every inheritable handle, and ssh's pipes held by the
/// watchdog would keep whoever reads ssh's output waiting after we are gone. Call before any
/// thread uses stdio. A handle shared by two of them (stdout and stderr, often) is closed once.
#[cfg(windows)]
fn uninheritable_stdio() -> std::io::Result<()> {
    use filedescriptor::{FileDescriptor, StdioDescriptor};
    use std::os::windows::io::{AsRawHandle, IntoRawHandle};
    let redirect = |slot| {
        let result = match slot {
            StdioDescriptor::Stdin => FileDescriptor::redirect_stdio(&std::io::stdin(), slot),
            StdioDescriptor::Stdout => FileDescriptor::redirect_stdio(&std::io::stdout(), slot),
            StdioDescriptor::Stderr => FileDescriptor::redirect_stdio(&std::io::stderr(), slot),
        };
        result.map_err(std::io::Error::other)
    };
    let mut originals: Vec<FileDescriptor> = Vec::new();
    for slot in [
        StdioDescriptor::Stdin,
        StdioDescriptor::Stdout,
        StdioDescriptor::Stderr,
    ] {
        let original = redirect(slot)?;
        if originals
            .iter()
            .any(|o| o.as_raw_handle() == original.as_raw_handle())
        {
            // Already owned once: closing it twice could close a reused handle.
            let _ = original.into_raw_handle();
        } else {
            originals.push(original);
        }
    }
    drop(originals);
    Ok(())
}

/// In a watchdog: the session to end if its parent is killed. Never set elsewhere.
pub fn watchdog_session() -> Option<String> {
    if cfg!(windows) {
        std::env::var(WATCHDOG_VAR).ok().filter(|s| !s.is_empty())
    } else {
        None
    }
}

/// In a watchdog: waits for the parent to exit; true if it was killed (its pipe closed without
/// the word of [`Watchdog::disarm`]).
pub async fn parent_killed() -> bool {
    let read = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut got = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut got);
        got.is_empty()
    });
    read.await.unwrap_or(true)
}

/// Console modes a remote terminal needs beyond raw mode, set while alive. Windows: VT input
/// (arrow and function keys arrive as the escape sequences a remote pty expects; characters,
/// whatever the keyboard layout, arrive as UTF-8 because std reads the console as UTF-16) and
/// VT output (the remote's escape sequences are rendered, and LF does not also return the
/// carriage: the remote pty sends CR LF itself). Elsewhere the terminal already is one.
pub struct VtConsole {
    /// (input bits added, output bits added), cleared again on drop.
    #[cfg(windows)]
    added: (u32, u32),
}

impl VtConsole {
    /// Turns the modes on where possible; failures (no console: a pipe, mintty) leave things
    /// as they are.
    pub fn enable() -> VtConsole {
        #[cfg(windows)]
        {
            use crossterm_winapi::Handle;
            const ENABLE_VIRTUAL_TERMINAL_INPUT: u32 = 0x0200;
            const ENABLE_VIRTUAL_TERMINAL_PROCESSING: u32 = 0x0004;
            const DISABLE_NEWLINE_AUTO_RETURN: u32 = 0x0008;
            let added = (
                add_console_mode(Handle::current_in_handle(), ENABLE_VIRTUAL_TERMINAL_INPUT),
                add_console_mode(
                    Handle::current_out_handle(),
                    ENABLE_VIRTUAL_TERMINAL_PROCESSING | DISABLE_NEWLINE_AUTO_RETURN,
                ),
            );
            VtConsole { added }
        }
        #[cfg(not(windows))]
        VtConsole {}
    }
}

/// Sets `bits` on a console handle's mode; returns the bits that were newly set (0 on failure).
#[cfg(windows)]
fn add_console_mode(handle: std::io::Result<crossterm_winapi::Handle>, bits: u32) -> u32 {
    let Ok(mode) = handle.map(crossterm_winapi::ConsoleMode::from) else {
        return 0;
    };
    match mode.mode() {
        Ok(old) if mode.set_mode(old | bits).is_ok() => bits & !old,
        _ => 0,
    }
}

#[cfg(windows)]
impl Drop for VtConsole {
    fn drop(&mut self) {
        use crossterm_winapi::{ConsoleMode, Handle};
        for (handle, bits) in [
            (Handle::current_in_handle(), self.added.0),
            (Handle::current_out_handle(), self.added.1),
        ] {
            if let (Ok(h), true) = (handle, bits != 0) {
                let mode = ConsoleMode::from(h);
                if let Ok(now) = mode.mode() {
                    let _ = mode.set_mode(now & !bits);
                }
            }
        }
    }
}

/// Text for a terminal's output. A Windows console takes only UTF-8 (std writes it with
/// WriteConsoleW and fails on anything else), so a remote program's stray bytes would end the
/// session: there invalid sequences become U+FFFD, and a sequence split between two chunks is
/// held until the next. Pipes and other systems get the bytes as they are.
#[derive(Default)]
pub struct ConsoleText {
    console: bool,
    /// An incomplete UTF-8 sequence from the end of the previous chunk.
    carry: Vec<u8>,
}

impl ConsoleText {
    /// For stdout: converts only when it is a Windows console.
    pub fn for_stdout() -> ConsoleText {
        use std::io::IsTerminal;
        ConsoleText {
            console: cfg!(windows) && std::io::stdout().is_terminal(),
            carry: Vec::new(),
        }
    }

    /// The bytes to write for `data`.
    pub fn convert<'a>(&mut self, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if !self.console {
            return data.into();
        }
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(data);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out.into_bytes().into()
    }
}

/// Opens `path` as a file only its owner may read (the log, the target cache): created 0600 on
/// Unix, and never through a symlink at its last component (`O_NOFOLLOW`: a planted link is
/// refused, not followed). `options` says how to open it.
pub fn private_file(
    path: &std::path::Path,
    options: &mut std::fs::OpenOptions,
) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
        options.mode(0o600).custom_flags(nofollow as i32);
    }
    options.open(path)
}

/// Creates `dir` (with its parents) for files only its owner may read: 0700 on Unix, made so
/// if it already existed, and refused if it is a symlink.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() {
            let why = format!("{} is not a directory", dir.display());
            return Err(std::io::Error::other(why));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_replaces_invalid_and_joins_split_sequences() {
        let mut text = ConsoleText {
            console: true,
            carry: Vec::new(),
        };
        // "é" is C3 A9; split between chunks it is held, not replaced.
        assert_eq!(&*text.convert(b"caf\xc3"), b"caf");
        assert_eq!(&*text.convert(b"\xa9 \xff!"), "é \u{fffd}!".as_bytes());
        let mut pipe = ConsoleText::default();
        assert_eq!(&*pipe.convert(b"\xff\xc3"), b"\xff\xc3");
    }

    #[test]
    fn signal_exit_codes() {
        assert_eq!(signal_exit_code(SIGHUP), 0);
        assert_eq!(signal_exit_code(SIGINT), 130);
        assert_eq!(signal_exit_code(SIGTERM), 143);
    }

    #[cfg(windows)]
    #[test]
    fn windows_paths_and_quoting() {
        // A path with spaces is double-quoted for Windows OpenSSH (no shell), backslashes kept.
        assert_eq!(
            proxy_command_word(r"C:\Program Files\ssm-proxy\ssm-proxy.exe"),
            r#""C:\Program Files\ssm-proxy\ssm-proxy.exe""#
        );
        assert_eq!(
            proxy_command_word(r"C:\tools\ssm-proxy.exe"),
            r"C:\tools\ssm-proxy.exe"
        );
        let (program, args) = command_line("exit 3");
        assert_eq!((program.as_str(), args[0].as_str()), ("cmd.exe", "/C"));
        // %LOCALAPPDATA% for the cache, %USERPROFILE% as home (in Wine too: its own profile).
        let local = std::env::var_os("LOCALAPPDATA").expect("LOCALAPPDATA");
        assert_eq!(dirs::cache_dir(), Some(std::path::PathBuf::from(local)));
        let profile = std::env::var_os("USERPROFILE").expect("USERPROFILE");
        assert_eq!(dirs::home_dir(), Some(std::path::PathBuf::from(profile)));
    }
}
