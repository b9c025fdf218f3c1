//! The network settings of one run, read from the environment once and handed by value to both
//! ways out: the SDK's HTTPS client (`aws::http`) and the data-channel websocket
//! (`transport::websocket`), so API calls and the data channel always take the same route.
//!
//! * Proxies: `HTTPS_PROXY` (TLS traffic) and `HTTP_PROXY` (plain), `ALL_PROXY` for both, lower
//!   case too; `http://` proxies are tunnelled through with CONNECT, `socks5://` (names resolved
//!   here) and `socks5h://` (names resolved by the proxy) with SOCKS5 (RFC 1928, user/password
//!   RFC 1929).
//! * `NO_PROXY`: `*`, names and domain suffixes, IP addresses and CIDR blocks, each with an
//!   optional `:port`.
//! * Trust roots: the system's, plus the certificates of `AWS_CA_BUNDLE`.
//! * The data-channel endpoint override (`--ssmmessages-endpoint`,
//!   `SSM_PROXY_SSMMESSAGES_ENDPOINT`).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Environment variable for the data-channel endpoint override.
pub const ENDPOINT_ENV: &str = "SSM_PROXY_SSMMESSAGES_ENDPOINT";

/// The longest CONNECT response head read from a proxy.
const MAX_PROXY_HEAD: usize = 16 * 1024;

/// Network settings, cheap to clone.
#[derive(Clone, Default)]
pub struct Net {
    /// Proxy for TLS traffic, with the variable that named it.
    https_proxy: Option<(String, Proxy)>,
    /// Proxy for plain traffic, with the variable that named it.
    http_proxy: Option<(String, Proxy)>,
    /// `NO_PROXY` as given.
    no_proxy: String,
    /// `AWS_CA_BUNDLE`'s path and usable certificates.
    bundle: Option<(String, Arc<Vec<CertificateDer<'static>>>)>,
    /// Replaces scheme, host and port of every StreamUrl.
    endpoint_override: Option<String>,
    /// The websocket's TLS configuration, made on first use (loading the system roots takes
    /// tens of milliseconds that ws:// and SDK-only commands need not spend).
    tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("https_proxy", &self.https_proxy)
            .field("http_proxy", &self.http_proxy)
            .field("no_proxy", &self.no_proxy)
            .field("ca_bundle", &self.bundle.as_ref().map(|b| &b.0))
            .field("endpoint_override", &self.endpoint_override)
            .finish()
    }
}

impl Net {
    /// Reads and checks the environment; `endpoint_override` is `--ssmmessages-endpoint`
    /// (unset: `SSM_PROXY_SSMMESSAGES_ENDPOINT`). A mistake fails here, before any session.
    pub fn from_env(endpoint_override: Option<String>) -> anyhow::Result<Net> {
        let endpoint_override =
            endpoint_override.or_else(|| env_first(&[ENDPOINT_ENV]).map(|(_, v)| v));
        if let Some(e) = &endpoint_override {
            Endpoint::parse(e).with_context(|| {
                format!(
                    "bad data-channel endpoint override {e:?} (--ssmmessages-endpoint or \
                     {ENDPOINT_ENV}): write e.g. wss://ssmmessages.us-east-1.amazonaws.com"
                )
            })?;
        }
        let proxy = |names: &[&str]| -> anyhow::Result<Option<(String, Proxy)>> {
            let Some((name, value)) = env_first(names) else {
                return Ok(None);
            };
            let proxy = Proxy::parse(&value).with_context(|| {
                format!("{name} is not a usable proxy URL: write e.g. {name}=http://proxy:3128")
            })?;
            Ok(Some((name, proxy)))
        };
        Ok(Net {
            https_proxy: proxy(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])?,
            http_proxy: proxy(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])?,
            no_proxy: env_first(&["NO_PROXY", "no_proxy"])
                .map(|(_, v)| v)
                .unwrap_or_default(),
            bundle: ca_bundle()?,
            endpoint_override,
            tls: Arc::default(),
        })
    }

    /// The data-channel endpoint override, if any.
    pub fn endpoint_override(&self) -> Option<&str> {
        self.endpoint_override.as_deref()
    }

    /// The proxy named for TLS (`tls`) or plain traffic, with its variable.
    pub fn proxy(&self, tls: bool) -> Option<(&str, &Proxy)> {
        let named = if tls {
            &self.https_proxy
        } else {
            &self.http_proxy
        };
        named.as_ref().map(|(n, p)| (n.as_str(), p))
    }

    /// Whether any proxy is configured.
    pub fn has_proxy(&self) -> bool {
        self.https_proxy.is_some() || self.http_proxy.is_some()
    }

    /// `NO_PROXY` as given (empty when unset).
    pub fn no_proxy_list(&self) -> &str {
        &self.no_proxy
    }

    /// The proxy that traffic to `host:port` takes, `None` for a direct connection.
    pub fn route(&self, tls: bool, host: &str, port: u16) -> Option<&Proxy> {
        if no_proxy_matches(&self.no_proxy, host, port) {
            return None;
        }
        self.proxy(tls).map(|(_, p)| p)
    }

    /// Opens TCP to `host:port` the way [`Net::route`] says: directly, through an HTTP proxy
    /// with CONNECT, or through a SOCKS5 proxy.
    pub async fn connect(&self, tls: bool, host: &str, port: u16) -> anyhow::Result<TcpStream> {
        let authority = authority(host, port);
        let Some(proxy) = self.route(tls, host, port) else {
            let tcp = TcpStream::connect((host, port))
                .await
                .with_context(|| format!("TCP connect to {authority}"))?;
            let _ = tcp.set_nodelay(true);
            return Ok(tcp);
        };
        let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
            .await
            .with_context(|| format!("could not connect to the proxy {proxy}"))?;
        let _ = tcp.set_nodelay(true);
        let tcp = match proxy.kind {
            ProxyKind::Http => http_connect(tcp, proxy, &authority).await?,
            ProxyKind::Socks5 { remote_dns } => {
                socks5_connect(tcp, proxy, host, port, remote_dns).await?
            }
        };
        tracing::debug!(%proxy, %authority, "tunnel through proxy open");
        Ok(tcp)
    }

    /// `AWS_CA_BUNDLE`'s path and certificates, if set.
    pub fn ca_bundle(&self) -> Option<(&str, &[CertificateDer<'static>])> {
        self.bundle
            .as_ref()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
    }

    /// The TLS client configuration of the data channel, on the aws-lc-rs provider the SDK uses
    /// too, trusting what the SDK's calls trust: the system's roots plus `AWS_CA_BUNDLE`'s.
    pub fn tls_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some((_, extra)) = self.ca_bundle() {
            roots.add_parsable_certificates(extra.iter().cloned());
        }
        if roots.is_empty() {
            anyhow::bail!(
                "no trusted CA certificates found on this system: install ca-certificates or set AWS_CA_BUNDLE"
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(self.tls.get_or_init(|| Arc::new(config)).clone())
    }
}

/// How a proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP CONNECT.
    Http,
    /// SOCKS5; `remote_dns` (`socks5h://`) sends names to the proxy to resolve.
    Socks5 {
        /// Whether the proxy resolves names.
        remote_dns: bool,
    },
}

/// A proxy from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// How to speak to it.
    pub kind: ProxyKind,
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// User and password from the URL (percent-decoded).
    auth: Option<(String, String)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are never printed.
        let auth = if self.auth.is_some() { "***@" } else { "" };
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 { remote_dns: false } => "socks5",
            ProxyKind::Socks5 { remote_dns: true } => "socks5h",
        };
        write!(f, "{scheme}://{auth}{}", authority(&self.host, self.port))
    }
}

impl Proxy {
    /// Parses `http://`, `socks5://` or `socks5h://` `[user:pass@]host[:port][/]`, or a bare
    /// `host:port` (HTTP). Default ports: 80 for HTTP, 1080 for SOCKS.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (kind, rest) = match url.split_once("://") {
            None => (ProxyKind::Http, url),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (ProxyKind::Http, rest),
                "socks5" => (ProxyKind::Socks5 { remote_dns: false }, rest),
                "socks5h" => (ProxyKind::Socks5 { remote_dns: true }, rest),
                other => anyhow::bail!(
                    "proxy scheme {other}:// is not supported (http:// proxies, tunnelled with \
                     CONNECT, and socks5:// or socks5h://)"
                ),
            },
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).context("no host in the proxy URL")?;
        let auth = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(user), percent_decode(pass))
        });
        let default_port = match kind {
            ProxyKind::Http => 80,
            ProxyKind::Socks5 { .. } => 1080,
        };
        Ok(Self {
            kind,
            host,
            port: port.unwrap_or(default_port),
            auth,
        })
    }

    /// `Proxy-Authorization: Basic` value for an HTTP proxy with credentials.
    fn basic(&self) -> Option<String> {
        self.auth
            .as_ref()
            .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
    }
}

/// CONNECT `authority` through an HTTP proxy.
async fn http_connect(
    mut tcp: TcpStream,
    proxy: &Proxy,
    authority: &str,
) -> anyhow::Result<TcpStream> {
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(basic) = proxy.basic() {
        request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte: nothing after the response head may be consumed here, it belongs to TLS or
    // the websocket upgrade.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD {
            anyhow::bail!("the proxy {proxy} sent an over-long response to CONNECT");
        }
        let b = tcp.read_u8().await.with_context(|| {
            format!("the proxy {proxy} closed the connection during CONNECT {authority}")
        })?;
        head.push(b);
    }
    let status = String::from_utf8_lossy(&head);
    let status = status.lines().next().unwrap_or_default().trim();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !code.starts_with('2') {
        anyhow::bail!("the proxy {proxy} refused CONNECT {authority}: {status}");
    }
    Ok(tcp)
}

/// A SOCKS5 CONNECT through `tcp` (tokio-socks speaks the protocol); with `socks5://` the name
/// is resolved here and the proxy gets an address.
async fn socks5_connect(
    tcp: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
    remote_dns: bool,
) -> anyhow::Result<TcpStream> {
    use tokio_socks::tcp::Socks5Stream;
    let target = authority(host, port);
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => Some(std::net::SocketAddr::new(ip, port)),
        Err(_) if remote_dns => None,
        Err(_) => Some(
            tokio::net::lookup_host((host, port))
                .await
                .with_context(|| format!("could not resolve {host} (for the proxy {proxy})"))?
                .next()
                .with_context(|| format!("{host} has no address (for the proxy {proxy})"))?,
        ),
    };
    let stream = match (&proxy.auth, addr) {
        (None, Some(a)) => Socks5Stream::connect_with_socket(tcp, a).await,
        (None, None) => Socks5Stream::connect_with_socket(tcp, (host, port)).await,
        (Some((u, p)), Some(a)) => {
            Socks5Stream::connect_with_password_and_socket(tcp, a, u, p).await
        }
        (Some((u, p)), None) => {
            Socks5Stream::connect_with_password_and_socket(tcp, (host, port), u, p).await
        }
    }
    .map_err(|e| {
        // In parentheses, and without ": ": the SDK's error line shows the last part after one.
        let why = e.to_string().replace(": ", " ");
        anyhow::anyhow!("the SOCKS5 proxy {proxy} refused CONNECT {target} ({why})")
    })?;
    Ok(stream.into_inner())
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// wss / https.
    pub tls: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port (443 or 80 when absent).
    pub port: u16,
    /// Path and query, from the first `/` or `?` (empty if none).
    pub rest: String,
}

impl Endpoint {
    /// Parses `ws://`, `wss://`, `http://` or `https://` URLs.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (scheme, after) = url
            .split_once("://")
            .with_context(|| format!("{url:?} has no scheme"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "wss" | "https" => true,
            "ws" | "http" => false,
            other => anyhow::bail!("unsupported scheme {other:?} in {url:?}"),
        };
        let cut = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(cut);
        let (host, port) = split_host_port(authority)
            .with_context(|| format!("{url:?} has no valid host[:port]"))?;
        Ok(Self {
            tls,
            host,
            port: port.unwrap_or(if tls { 443 } else { 80 }),
            rest: rest.to_owned(),
        })
    }

    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The URL again (websocket schemes).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.rest)
    }
}

/// `host:port`, bracketing IPv6 addresses.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host[:port]` / `[v6][:port]`; `None` when the host is empty or the port invalid.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        (host, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 address has more than one colon and no port.
            Some((h, _)) if h.contains(':') => (authority, None),
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn env_first(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| ((*n).to_owned(), v.trim().to_owned()))
    })
}

/// Whether a `NO_PROXY` list exempts `host:port`: `*`; names, which also cover their
/// subdomains (`example.com`, `.example.com`, `*.example.com`); IP addresses; CIDR blocks
/// (`10.0.0.0/8`, `fd00::/8`) for IP hosts. Every entry may end in `:port` (`[v6]:port`,
/// `10.0.0.0/8:443`), and then exempts only that port.
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                // `NET/BITS[:PORT]`; a v6 block with a port is written `[NET]/BITS:PORT`.
                let (bits, entry_port) = match bits.split_once(':') {
                    Some((b, p)) => (b, p.parse::<u16>().ok()),
                    None => (bits, None),
                };
                return entry_port.is_none_or(|p| p == port)
                    && host_ip.is_some_and(|ip| in_cidr(ip, net, bits));
            }
            let Some((name, entry_port)) = split_host_port(entry) else {
                return false;
            };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            match (host_ip, name.parse::<IpAddr>()) {
                (Some(ip), Ok(entry_ip)) => ip == entry_ip,
                _ => {
                    let suffix = name.trim_start_matches("*.").trim_start_matches('.');
                    host == suffix || host.ends_with(&format!(".{suffix}"))
                }
            }
        })
}

/// Whether `ip` lies in `net/bits` (false for malformed blocks).
fn in_cidr(ip: IpAddr, net: &str, bits: &str) -> bool {
    let (Ok(net), Ok(bits)) = (
        net.trim_matches(['[', ']']).parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    let (h, n, width) = match (ip, net) {
        (IpAddr::V4(h), IpAddr::V4(n)) => (u32::from(h) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(h), IpAddr::V6(n)) => (u128::from(h), u128::from(n), 128),
        // An IPv4-mapped IPv6 host against a v4 block.
        (IpAddr::V6(h), IpAddr::V4(n)) => match h.to_ipv4_mapped() {
            Some(h) => (u32::from(h) as u128, u32::from(n) as u128, 32),
            None => return false,
        },
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    bits == 0 || (h >> shift) == (n >> shift)
}

/// The certificates of `AWS_CA_BUNDLE` (a PEM file) with its path; `None` when it is unset. Only
/// certificates rustls accepts as roots are kept (the SDK's trust store would panic on the
/// others).
fn ca_bundle() -> anyhow::Result<Option<(String, Arc<Vec<CertificateDer<'static>>>)>> {
    let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let shown = std::path::Path::new(&path).display().to_string();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "AWS_CA_BUNDLE={shown} could not be read ({e}): point it at a PEM file of CA certificates"
            )
        })?;
    let mut store = rustls::RootCertStore::empty();
    let usable: Vec<_> = certs
        .into_iter()
        .filter(|c| store.add(c.clone()).is_ok())
        .collect();
    if usable.is_empty() {
        anyhow::bail!(
            "AWS_CA_BUNDLE={shown} holds no usable certificate: point it at a PEM file of CA certificates"
        );
    }
    Ok(Some((shown, Arc::new(usable))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e =
            Endpoint::parse("wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/s?role=x")
                .expect("parse");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.rest.as_str()),
            (
                true,
                "ssmmessages.us-east-1.amazonaws.com",
                443,
                "/v1/data-channel/s?role=x"
            )
        );
        let e = Endpoint::parse("http://[::1]:8080").expect("v6");
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "::1", 8080));
        assert_eq!(e.authority(), "[::1]:8080");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("wss://:443").is_err());
        assert!(Endpoint::parse("wss://h:0").is_err());
        assert!(Endpoint::parse("no-scheme").is_err());
    }

    /// The NO_PROXY table: entry list, host, port, exempt?
    #[test]
    fn no_proxy_table() {
        let names = "localhost, .internal,*.corp.example:8443,10.0.0.1";
        let cidrs = "10.0.0.0/8, 192.168.1.0/24,fd00::/8, 172.16.0.0/12:443, [fc00::]/7:8443";
        let table: &[(&str, &str, u16, bool)] = &[
            (names, "localhost", 443, true),
            (names, "db.internal", 443, true),
            (names, "internal", 443, true),
            (names, "xinternal", 443, false),
            (names, "a.corp.example", 8443, true),
            (names, "a.corp.example", 443, false),
            (names, "10.0.0.1", 443, true),
            (names, "10.0.0.2", 443, false),
            (names, "ssmmessages.us-east-1.amazonaws.com", 443, false),
            ("*", "anything", 1, true),
            (cidrs, "10.1.2.3", 443, true),
            (cidrs, "192.168.1.77", 443, true),
            (cidrs, "192.168.2.1", 443, false),
            (cidrs, "11.0.0.1", 443, false),
            (cidrs, "fd12::1", 443, true),
            (cidrs, "[fd12::1]", 443, true),
            (cidrs, "fe80::1", 443, false),
            (cidrs, "::ffff:10.9.8.7", 443, true),
            (cidrs, "ssmmessages.us-east-1.amazonaws.com", 443, false),
            // A port on a CIDR entry limits it to that port.
            (cidrs, "172.20.0.5", 443, true),
            (cidrs, "172.20.0.5", 80, false),
            (cidrs, "fc00::9", 8443, true),
            (cidrs, "fc00::9", 443, false),
            // IPs compare as addresses; a v6 entry with a port is bracketed.
            ("::1", "0:0:0:0:0:0:0:1", 443, true),
            ("[::1]:8080", "::1", 8080, true),
            ("[::1]:8080", "::1", 8081, false),
            ("127.0.0.1:3128", "127.0.0.1", 3128, true),
            ("127.0.0.1:3128", "127.0.0.1", 80, false),
            ("10.0.0.0/33", "10.0.0.1", 443, false),
            ("0.0.0.0/0", "8.8.8.8", 443, true),
            ("", "localhost", 443, false),
            ("Example.COM.", "api.example.com", 443, true),
        ];
        for (list, host, port, exempt) in table {
            assert_eq!(
                no_proxy_matches(list, host, *port),
                *exempt,
                "NO_PROXY={list:?} {host}:{port}"
            );
        }
    }

    #[test]
    fn proxies_parse_and_hide_credentials() {
        let p = Proxy::parse("http://user:p%40ss@proxy.corp:3128/").expect("parse");
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::Http, "proxy.corp", 3128)
        );
        assert_eq!(
            p.basic().as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("user:p@ss")
                    .as_str()
            )
        );
        assert_eq!(p.to_string(), "http://***@proxy.corp:3128");
        assert_eq!(Proxy::parse("proxy:8080").expect("bare").port, 8080);
        assert_eq!(Proxy::parse("http://proxy").expect("default").port, 80);
        let s = Proxy::parse("socks5://127.0.0.1").expect("socks5");
        assert_eq!(
            (s.kind, s.port),
            (ProxyKind::Socks5 { remote_dns: false }, 1080)
        );
        let s = Proxy::parse("SOCKS5H://u:p@[::1]:9050").expect("socks5h");
        assert_eq!(
            (s.kind, s.host.as_str(), s.port),
            (ProxyKind::Socks5 { remote_dns: true }, "::1", 9050)
        );
        assert_eq!(s.to_string(), "socks5h://***@[::1]:9050");
        assert!(Proxy::parse("https://proxy:443").is_err());
        assert!(Proxy::parse("socks4://proxy:1080").is_err());
    }
}
