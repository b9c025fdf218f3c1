//! stdin and stdout as the two channels of a [`Local`], each served by a
//! plain thread: blocking reads and writes work the same on every OS, and bounded channels give
//! back-pressure both ways.

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::driver::{Input, Local};

/// Bytes per stdin read; the session splits them into protocol-sized messages.
const READ_CHUNK: usize = 32 * 1024;

/// Signals when everything handed to stdout has been written (or stdout failed).
pub struct StdoutDone(std::sync::mpsc::Receiver<()>);

impl StdoutDone {
    /// Waits at most `limit` for the writer to finish; call after the [`Local`] was dropped.
    pub fn wait(&self, limit: std::time::Duration) {
        let _ = self.0.recv_timeout(limit);
    }
}

/// Starts the stdin reader and stdout writer threads.
pub fn local() -> (Local, StdoutDone) {
    let (in_tx, input) = mpsc::channel::<Input>(8);
    let (output, done) = stdout_writer();
    std::thread::spawn(move || {
        read_stdin(|chunk| in_tx.blocking_send(Input::Data(chunk)).is_ok());
    });
    (Local { input, output }, done)
}

/// Reads stdin until end of file, a read error, or `each` returning false, handing over every
/// chunk read (at most 32 KiB). Blocking: run it on a thread of its own.
pub fn read_stdin(mut each: impl FnMut(Bytes) -> bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.resize(READ_CHUNK, 0);
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if !each(buf.split().freeze()) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "stdin read failed");
                return;
            }
        }
    }
}

/// Starts the stdout writer thread alone: what is sent is written and flushed in order; the
/// channel's bound is back-pressure, and a closed stdout drops the receiver.
pub fn stdout_writer() -> (mpsc::Sender<Bytes>, StdoutDone) {
    let (output, mut out_rx) = mpsc::channel::<Bytes>(8);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        let mut text = crate::os::ConsoleText::for_stdout();
        while let Some(data) = out_rx.blocking_recv() {
            // EPIPE: the reader (ssh) is gone. Dropping the receiver tells the driver.
            if stdout
                .write_all(&text.convert(&data))
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
        }
        let _ = done_tx.send(());
    });
    (output, StdoutDone(done))
}
