//! Everything OS-specific, in one place: which signals end a session.

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

/// Conventional exit status for death by a signal.
pub fn signal_exit_code(sig: i32) -> u8 {
    match sig {
        SIGHUP => 0, // ssh hanging up on its ProxyCommand is the normal end
        s => 128u8.saturating_add(s as u8),
    }
}
