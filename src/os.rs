//! Everything OS-specific, in one place: which signals end a session, how a ProxyCommand
//! word is quoted, terminal size changes, and how the simulator runs a shell or a command.

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
    #[cfg(not(unix))]
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
