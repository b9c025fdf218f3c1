//! A small SOCKS5 proxy for the tests (RFC 1928 CONNECT, optional RFC 1929 user/password) on
//! 127.0.0.1:0, thread per connection, recording every CONNECT target as the client named it:
//! `host:port` for a domain name (socks5h), `ip:port` for an address (socks5).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use super::recording::RecordingServer;

/// Starts the proxy; with `auth`, clients must log in with that user and password. Its log
/// holds every CONNECT target.
pub fn start(auth: Option<(&str, &str)>) -> RecordingServer {
    let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
    RecordingServer::start(move |conn, log| serve(conn, log, auth.as_ref()))
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
