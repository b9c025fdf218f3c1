//! End to end: restricted networks. A small HTTP CONNECT proxy written here (it counts the
//! tunnels it opens and relays bytes) and a TLS front with a private CA stand between ssm-proxy
//! and the simulator's gateway: the data channel goes `wss://localhost:PORT` (the
//! `--ssmmessages-endpoint` override) through `HTTPS_PROXY`, trusting `AWS_CA_BUNDLE`;
//! `NO_PROXY` bypasses the proxy; the SDK's API calls take the same proxy and bundle; a refusing
//! proxy and bad settings fail in one line. A SOCKS5 proxy in the environment (`ALL_PROXY`,
//! `socks5://` and `socks5h://`) carries API calls and the data channel of an ssh session
//! byte-exact, and `NO_PROXY` CIDR entries with a port exempt just that port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::recording::RecordingServer;
use crate::support::socks;
use crate::support::{
    Fixture, TARGET, TempDir, one_line_failure, proxy_bin, proxy_command, proxy_run, require,
    run_ok, run_with_timeout, sha256_file, write_random_file,
};

const SSH_BOUND: u64 = 30;

/// A thread-per-connection HTTP CONNECT proxy on 127.0.0.1:0 that records every CONNECT target;
/// `refuse`: answer every CONNECT with 403.
fn connect_proxy(refuse: bool) -> RecordingServer {
    RecordingServer::start(move |conn, log| tunnel(conn, log, refuse))
}

fn proxy_url(proxy: &RecordingServer) -> String {
    format!("http://{}", proxy.addr)
}

/// Serves one proxy client: reads the CONNECT head, dials the target, relays both ways.
fn tunnel(mut client: TcpStream, connects: &Mutex<Vec<String>>, refuse: bool) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(authority)) = (words.next(), words.next()) else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    connects
        .lock()
        .expect("connects")
        .push(authority.to_owned());
    if refuse {
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let Ok(upstream) = TcpStream::connect(authority) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    socks::splice(client, upstream);
}

/// A self-signed certificate for `localhost` (CA:FALSE, so it is its own trust anchor).
struct Cert {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn make_cert() -> Option<Cert> {
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(openssl, "openssl (to make a test certificate)") {
        return None;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Cert {
        _dir: dir,
        cert,
        key,
    })
}

/// Terminates TLS on 127.0.0.1:0 and relays to `backend` (the simulator's gateway).
struct TlsFront {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(cert: &Cert, backend: SocketAddr) -> TlsFront {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(&cert.key).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind tls");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsFront { addr, _rt: rt }
    }
}

/// The simulator's API address.
fn api(sim: &Sim) -> SocketAddr {
    sim.endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("api address")
}

fn gateway(sim: &Sim) -> SocketAddr {
    sim.service()
        .ws_base()
        .trim_start_matches("ws://")
        .parse()
        .expect("gateway address")
}

/// `ssh TARGET echo ok` with `ssm-proxy PROXY_ARGS %h %p` in `env` must print ok.
fn ssh_echo_ok(fx: &Fixture, proxy_args: &str, env: &[(String, String)]) {
    let mut cmd = fx.sshd.ssh_cmd_via(&proxy_command(proxy_args), TARGET, env);
    cmd.arg("echo ok");
    let out = run_with_timeout(&mut cmd, SSH_BOUND);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn with(base: &[(String, String)], set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    env.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn data_channel_tunnels_through_a_connect_proxy_with_a_private_ca() {
    let Some(cert) = make_cert() else {
        return;
    };
    let fx = Fixture::new();
    let front = TlsFront::start(&cert, gateway(&fx.sim));
    let proxy = connect_proxy(false);
    let endpoint = format!("wss://localhost:{}", front.addr.port());
    let bundle = cert.cert.display().to_string();
    let env = with(
        &fx.env(),
        &[
            ("HTTPS_PROXY", &proxy_url(&proxy)),
            ("NO_PROXY", "127.0.0.1"),
            ("AWS_CA_BUNDLE", &bundle),
        ],
    );
    // The flag wins over the simulator's SSM_PROXY_SSMMESSAGES_ENDPOINT in the environment.
    let args = format!("--ssmmessages-endpoint {endpoint}");
    ssh_echo_ok(&fx, &args, &env);
    let authority = format!("localhost:{}", front.addr.port());
    assert_eq!(
        proxy.log(),
        vec![authority.clone()],
        "one tunnel, to the overridden endpoint (the SDK's http:// calls are not proxied)"
    );

    // Without the bundle the private CA is not trusted: the dial fails after the tunnel opened.
    let no_ca: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "AWS_CA_BUNDLE")
        .cloned()
        .collect();
    let mut cmd = fx.sshd.ssh_cmd_via(&proxy_command(&args), TARGET, &no_ca);
    cmd.arg("echo ok");
    let out = run_with_timeout(&mut cmd, SSH_BOUND);
    assert!(!out.status.success(), "untrusted certificate accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not open the data channel") && stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(proxy.log().len() > 1);

    // NO_PROXY exempts the host: no new tunnel.
    let before = proxy.log().len();
    let bypass = with(&env, &[("NO_PROXY", "localhost")]);
    ssh_echo_ok(&fx, &args, &bypass);
    assert_eq!(
        proxy.log().len(),
        before,
        "NO_PROXY host went through the proxy"
    );
    fx.assert_no_sessions();
}

#[test]
fn api_calls_tunnel_through_the_proxy_and_trust_the_bundle_too() {
    let Some(cert) = make_cert() else {
        return;
    };
    let fx = Fixture::new();
    let api = api(&fx.sim);
    // The SSM API behind TLS with the private CA, as https://localhost:PORT.
    let front = TlsFront::start(&cert, api);
    let proxy = connect_proxy(false);
    let bundle = cert.cert.display().to_string();
    let endpoint = format!("https://localhost:{}", front.addr.port());
    let env = with(
        &fx.env(),
        &[
            ("AWS_ENDPOINT_URL_SSM", &endpoint),
            ("HTTPS_PROXY", &proxy_url(&proxy)),
            // The data channel (plain ws:// to the simulator) goes direct.
            ("NO_PROXY", "127.0.0.1"),
            ("AWS_CA_BUNDLE", &bundle),
        ],
    );
    ssh_echo_ok(&fx, "", &env);
    let authority = format!("localhost:{}", front.addr.port());
    let connects = proxy.log();
    assert!(
        !connects.is_empty() && connects.iter().all(|c| *c == authority),
        "StartSession and TerminateSession must tunnel to {authority}: {connects:?}"
    );
    fx.assert_no_sessions();
}

#[test]
fn a_refusing_proxy_fails_in_one_line() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let proxy = connect_proxy(true);
    let home = TempDir::new("net-home");
    let env = with(
        &sim.env(),
        &[
            ("HOME", &home.path().display().to_string()),
            ("HTTPS_PROXY", &proxy_url(&proxy)),
            ("SSM_PROXY_SSMMESSAGES_ENDPOINT", "wss://localhost:9"),
        ],
    );
    let started = Instant::now();
    let out = proxy_run(&env, &[TARGET, "22"], 15);
    let line = one_line_failure(&out);
    assert!(
        line.contains("refused CONNECT localhost:9: HTTP/1.1 403 Forbidden"),
        "{line}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!proxy.log().is_empty());
    assert_eq!(sim.active_sessions(), 0, "the session was not terminated");
}

#[test]
fn bad_network_settings_fail_before_any_session() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let home = TempDir::new("net-home");
    let home = home.path().display().to_string();
    struct Case {
        env: &'static [(&'static str, &'static str)],
        flags: &'static [&'static str],
        want: &'static str,
    }
    let cases = [
        Case {
            env: &[("AWS_CA_BUNDLE", "/nonexistent/ca.pem")],
            flags: &[],
            want: "AWS_CA_BUNDLE=/nonexistent/ca.pem could not be read",
        },
        Case {
            env: &[("HTTPS_PROXY", "socks4://127.0.0.1:1080")],
            flags: &[],
            want: "HTTPS_PROXY is not a usable proxy URL",
        },
        Case {
            env: &[],
            flags: &["--ssmmessages-endpoint", "ftp://example"],
            want: "bad data-channel endpoint override",
        },
    ];
    for case in cases {
        let mut env = with(&sim.env(), case.env);
        env.push(("HOME".into(), home.clone()));
        let mut args = case.flags.to_vec();
        args.extend([TARGET, "22"]);
        let out = proxy_run(&env, &args, 10);
        let line = one_line_failure(&out);
        assert!(line.contains(case.want), "want {:?} in {line}", case.want);
    }
    assert_eq!(sim.stats().started, 0);
}

/// `scp` up and down `mib` MiB through ssm-proxy in `env`; both copies must match.
fn scp_round_trip(fx: &Fixture, env: &[(String, String)], mib: u64, seed: u64) {
    let local = TempDir::new("socks-scp");
    let src = local.join("src.bin");
    let digest = write_random_file(&src, mib << 20, seed);
    let remote = fx.sshd.dir().join(format!("socks-{seed}.bin"));
    let scp = || fx.sshd.scp_cmd(proxy_bin(), env);
    run_ok(scp().arg(&src).arg(fx.sshd.remote(&remote)), 120);
    assert_eq!(sha256_file(&remote), digest, "upload corrupted");
    let down = local.join("down.bin");
    run_ok(scp().arg(fx.sshd.remote(&remote)).arg(&down), 120);
    assert_eq!(sha256_file(&down), digest, "download corrupted");
}

/// `ALL_PROXY=socks5h://user:pass@…`: StartSession/TerminateSession and the data channel all go
/// through the SOCKS5 proxy, names resolved by the proxy; an scp carries 4 MiB each way
/// byte-exact. With `socks5://` the name is resolved here and the proxy gets an address.
#[test]
fn socks5_proxy_in_the_environment_carries_api_calls_and_the_data_channel() {
    let fx = Fixture::new();
    let api = api(&fx.sim);
    let gw = gateway(&fx.sim);
    let socks = socks::start(Some(("ops", "s3cr:t")));
    // The data channel by name, so that socks5h and socks5 differ in what the proxy sees.
    let by_name = format!("ws://localhost:{}", gw.port());
    let env = with(
        &fx.env(),
        &[
            (
                "ALL_PROXY",
                &format!("socks5h://ops:s3cr%3At@{}", socks.addr),
            ),
            ("SSM_PROXY_SSMMESSAGES_ENDPOINT", &by_name),
        ],
    );
    scp_round_trip(&fx, &env, 4, 31);
    let connects = socks.log();
    let api_seen = connects.iter().filter(|c| **c == api.to_string()).count();
    let gw_seen = connects
        .iter()
        .filter(|c| **c == format!("localhost:{}", gw.port()))
        .count();
    // Two scp runs: each a StartSession, a data channel and a TerminateSession (at least).
    assert!(api_seen >= 2 && gw_seen >= 2, "{connects:?}");
    assert_eq!(api_seen + gw_seen, connects.len(), "{connects:?}");
    fx.assert_no_sessions();

    // socks5:// resolves here: the proxy is asked for 127.0.0.1, never for the name.
    let before = socks.log().len();
    let local_dns = with(
        &env,
        &[(
            "ALL_PROXY",
            &format!("socks5://ops:s3cr%3At@{}", socks.addr),
        )],
    );
    ssh_echo_ok(&fx, "", &local_dns);
    let later = socks.log()[before..].to_vec();
    assert!(
        later.contains(&format!("127.0.0.1:{}", gw.port())),
        "{later:?}"
    );
    assert!(
        !later.iter().any(|c| c.starts_with("localhost")),
        "{later:?}"
    );

    // A wrong password fails in one line, naming the proxy without the credentials.
    let wrong = with(
        &env,
        &[("ALL_PROXY", &format!("socks5h://ops:nope@{}", socks.addr))],
    );
    let out = proxy_run(&wrong, &[TARGET, "22"], 30);
    let line = one_line_failure(&out);
    assert!(line.contains("SOCKS5 proxy socks5h://***@"), "{line}");
    assert!(!line.contains("nope"), "{line}");
    fx.assert_no_sessions();
}

/// `NO_PROXY` with a CIDR block and a port exempts exactly that port, on both paths: the API
/// calls (to that port) go direct, the data channel (another port, same address) through the
/// proxy.
#[test]
fn no_proxy_cidr_with_a_port_exempts_only_that_port() {
    let fx = Fixture::new();
    let api = api(&fx.sim);
    let gw = gateway(&fx.sim);
    let socks = socks::start(None);
    let env = with(
        &fx.env(),
        &[
            ("ALL_PROXY", &format!("socks5://{}", socks.addr)),
            (
                "NO_PROXY",
                &format!("example.com, 127.0.0.0/8:{}", api.port()),
            ),
        ],
    );
    ssh_echo_ok(&fx, "", &env);
    assert_eq!(socks.log(), vec![gw.to_string()]);

    // The other way round: the data channel exempt, the API calls proxied.
    let env = with(&env, &[("NO_PROXY", &format!("127.0.0.0/8:{}", gw.port()))]);
    ssh_echo_ok(&fx, "", &env);
    let connects = socks.log();
    assert!(
        connects.len() >= 2 && connects[1..].iter().all(|c| *c == api.to_string()),
        "{connects:?}"
    );
    fx.assert_no_sessions();
}
