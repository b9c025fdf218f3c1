//! A small SOCKS5 proxy for the tests (RFC 1928 CONNECT, optional RFC 1929 user/password) on
//! 127.0.0.1:0, thread per connection, recording every CONNECT target as the client named it:
//! `host:port` for a domain name (socks5h), `ip:port` for an address (socks5).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub struct Socks5 {
    pub addr: SocketAddr,
    connects: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Socks5 {
    /// Starts the proxy; with `auth`, clients must log in with that user and password.
    pub fn start(auth: Option<(&str, &str)>) -> Socks5 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind socks");
        let addr = listener.local_addr().expect("addr");
        let connects = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let (c, s) = (connects.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    let (c, auth) = (c.clone(), auth.clone());
                    thread::spawn(move || serve(conn, &c, auth.as_ref()));
                }
            }
        });
        Socks5 {
            addr,
            connects,
            stop,
            thread: Some(thread),
        }
    }

    /// CONNECT targets so far, in order.
    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().expect("connects").clone()
    }
}

impl Drop for Socks5 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn serve(mut client: TcpStream, connects: &Mutex<Vec<String>>, auth: Option<&(String, String)>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(()) = handshake(&mut client, auth) else {
        return;
    };
    // Request: VER CMD RSV ATYP ADDR PORT.
    let Some(head) = read_n(&mut client, 4) else {
        return;
    };
    if head[..3] != [5, 1, 0] {
        let _ = client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        return;
    }
    let host = match head[3] {
        1 => read_n(&mut client, 4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        3 => read_n(&mut client, 1)
            .and_then(|len| read_n(&mut client, len[0] as usize))
            .map(|name| String::from_utf8_lossy(&name).into_owned()),
        4 => read_n(&mut client, 16).map(|b| {
            let octets: [u8; 16] = b.try_into().expect("16 bytes");
            format!("[{}]", Ipv6Addr::from(octets))
        }),
        _ => None,
    };
    let (Some(host), Some(port)) = (host, read_n(&mut client, 2)) else {
        return;
    };
    let target = format!("{host}:{}", u16::from_be_bytes([port[0], port[1]]));
    connects.lock().expect("connects").push(target.clone());
    let Ok(upstream) = TcpStream::connect(&target) else {
        // Host unreachable.
        let _ = client.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
        return;
    };
    if client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_err() {
        return;
    }
    splice(client, upstream);
}

/// Relays both ways until both sides have ended (each end passed on as a write shutdown).
pub fn splice(client: TcpStream, upstream: TcpStream) {
    let _ = client.set_read_timeout(None);
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut client, mut upstream) = (client, upstream);
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// Method selection, and the user/password sub-negotiation when `auth` is required.
fn handshake(client: &mut TcpStream, auth: Option<&(String, String)>) -> Option<()> {
    let head = read_n(client, 2)?;
    if head[0] != 5 {
        return None;
    }
    let methods = read_n(client, head[1] as usize)?;
    let wanted = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        let _ = client.write_all(&[5, 0xff]);
        return None;
    }
    client.write_all(&[5, wanted]).ok()?;
    let Some((user, pass)) = auth else {
        return Some(());
    };
    let ver = read_n(client, 2)?;
    let got_user = read_n(client, ver[1] as usize)?;
    let plen = read_n(client, 1)?;
    let got_pass = read_n(client, plen[0] as usize)?;
    let ok = got_user == user.as_bytes() && got_pass == pass.as_bytes();
    client.write_all(&[1, if ok { 0 } else { 1 }]).ok()?;
    ok.then_some(())
}
