//! stdin and stdout as the two channels of a [`Local`](super::driver::Local), each served by a
//! plain thread: blocking reads and writes work the same on every OS, and bounded channels give
//! back-pressure both ways.

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::driver::Local;

/// Bytes per stdin read; the session splits them into protocol-sized messages.
const READ_CHUNK: usize = 32 * 1024;

/// Starts the stdin reader and stdout writer threads.
pub fn local() -> Local {
    let (in_tx, input) = mpsc::channel::<Bytes>(8);
    let (output, mut out_rx) = mpsc::channel::<Bytes>(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.resize(READ_CHUNK, 0);
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if in_tx.blocking_send(buf.split().freeze()).is_err() {
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
    });
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        while let Some(data) = out_rx.blocking_recv() {
            // EPIPE: the reader (ssh) is gone. Dropping the receiver tells the driver.
            if stdout
                .write_all(&data)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return;
            }
        }
    });
    Local { input, output }
}
