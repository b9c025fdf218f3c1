//! The server half the tests' proxies share: a thread per connection on 127.0.0.1:0, a log of
//! the destinations clients asked for, and a stop on drop (no thread outlives its test).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// Destinations in the order clients asked for them.
pub type Log = Arc<Mutex<Vec<String>>>;

pub struct RecordingServer {
    pub addr: SocketAddr,
    log: Log,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingServer {
    /// Serves every connection with `serve` (on its own thread), handing it the log to record
    /// the destination in.
    pub fn start(serve: impl Fn(TcpStream, &Log) + Send + Sync + 'static) -> RecordingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test proxy");
        let addr = listener.local_addr().expect("addr");
        let log = Log::default();
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let (l, s) = (log.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    let (l, serve) = (l.clone(), serve.clone());
                    thread::spawn(move || serve(conn, &l));
                }
            }
        });
        RecordingServer {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Destinations so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
