//! A TCP echo service on an ephemeral port. Self-contained, so that `benches/forward.rs` can
//! include it too (`#[path]`).

use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::thread;

/// A TCP echo server on an ephemeral port; runs until the test process ends.
pub fn echo_server() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut r = conn.try_clone().expect("clone");
                let mut w = conn;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    port
}
