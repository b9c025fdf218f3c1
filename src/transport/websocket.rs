//! The data-channel websocket: dial `StreamUrl` (wss through rustls with the system roots plus
//! `AWS_CA_BUNDLE`, or plain ws for the simulator), through an HTTP CONNECT proxy when
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` say so and `NO_PROXY` does not exempt the host, with
//! scheme, host and port optionally replaced (`--ssmmessages-endpoint`, for PrivateLink and
//! FIPS), and send the OpenDataChannelInput text frame (§2.1, §2.2).
//!
//! The OpenDataChannelInput carries the session token: it is serialized straight into the frame
//! and never logged.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::aws::Aws;
use crate::proto::payload::OpenDataChannelInput;
use crate::proto::session::CLIENT_VERSION;

/// An open data channel.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long dialing (proxy + TCP + TLS + upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest CONNECT response head we read from a proxy.
const MAX_PROXY_HEAD: usize = 16 * 1024;

/// Environment variable for the data-channel endpoint override.
pub const ENDPOINT_ENV: &str = "SSM_PROXY_SSMMESSAGES_ENDPOINT";

/// Network settings of the data channel, fixed once per process.
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    /// Replaces scheme, host and port of every StreamUrl, e.g.
    /// `wss://vpce-0abc.ssmmessages.eu-west-1.vpce.amazonaws.com`.
    pub endpoint_override: Option<String>,
}

static NET: OnceLock<NetConfig> = OnceLock::new();

/// Sets the network configuration for this process (first call wins) after checking it, the
/// proxy variables and `AWS_CA_BUNDLE`, so that a mistake there fails before StartSession. An
/// override left unset is taken from `SSM_PROXY_SSMMESSAGES_ENDPOINT`.
pub fn configure(mut config: NetConfig) -> anyhow::Result<()> {
    if config.endpoint_override.is_none() {
        config.endpoint_override = env_override();
    }
    if let Some(e) = &config.endpoint_override {
        Endpoint::parse(e).with_context(|| {
            format!(
                "bad data-channel endpoint override {e:?} (--ssmmessages-endpoint or \
                 {ENDPOINT_ENV}): write e.g. wss://ssmmessages.us-east-1.amazonaws.com"
            )
        })?;
    }
    let _ = NET.set(config);
    for tls in [false, true] {
        proxy_from_env(tls)?;
    }
    if std::env::var_os("AWS_CA_BUNDLE").is_some() {
        tls_config()?;
    }
    Ok(())
}

/// The configuration set by [`configure`], else `SSM_PROXY_SSMMESSAGES_ENDPOINT`.
fn net() -> &'static NetConfig {
    NET.get_or_init(|| NetConfig {
        endpoint_override: env_override(),
    })
}

fn env_override() -> Option<String> {
    std::env::var(ENDPOINT_ENV).ok().filter(|s| !s.is_empty())
}

/// Where a websocket URL points.
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
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL again.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.rest)
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

/// `url` with scheme, host and port replaced by the configured override, if any.
pub fn effective_url(url: &str) -> anyhow::Result<String> {
    match &net().endpoint_override {
        None => Ok(url.to_owned()),
        Some(over) => {
            let target = Endpoint::parse(url)?;
            let over = Endpoint::parse(over)?;
            Ok(Endpoint {
                rest: target.rest,
                ..over
            }
            .url())
        }
    }
}

/// An HTTP proxy to tunnel through with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Proxy host.
    pub host: String,
    /// Proxy port (default 80).
    pub port: u16,
    /// `Proxy-Authorization: Basic` value, from the URL's user:password.
    basic: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self)
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never printed.
        let auth = if self.basic.is_some() { "***@" } else { "" };
        write!(f, "http://{auth}{}:{}", self.host, self.port)
    }
}

impl Proxy {
    /// Parses `http://[user:pass@]host[:port][/]` or `host:port`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => anyhow::bail!(
                "proxy scheme {scheme}:// is not supported (only http:// proxies, which tunnel \
                 TLS with CONNECT)"
            ),
            None => url,
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).context("no host in the proxy URL")?;
        let basic = userinfo.map(|u| {
            let decoded = percent_decode(u);
            base64::engine::general_purpose::STANDARD.encode(decoded)
        });
        Ok(Self {
            host,
            port: port.unwrap_or(80),
            basic,
        })
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
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
    out
}

fn env_first(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| ((*n).to_owned(), v.trim().to_owned()))
    })
}

/// The proxy the environment names for TLS (`HTTPS_PROXY`) or plain (`HTTP_PROXY`) traffic,
/// `ALL_PROXY` as the fallback, with the variable it came from.
pub fn proxy_from_env(tls: bool) -> anyhow::Result<Option<(String, Proxy)>> {
    let names: &[&str] = if tls {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    match env_first(names) {
        None => Ok(None),
        Some((name, value)) => {
            let proxy = Proxy::parse(&value).with_context(|| {
                format!("{name} is not a usable proxy URL: write e.g. {name}=http://proxy:3128")
            })?;
            Ok(Some((name, proxy)))
        }
    }
}

/// Whether `NO_PROXY` exempts `host` (port `port`): `*`, exact names or IPs, domain suffixes
/// (`example.com`, `.example.com`, `*.example.com`), each optionally with `:port`, and CIDR
/// blocks (`10.0.0.0/8`, `fd00::/8`) for IP hosts.
pub fn no_proxy(host: &str, port: u16) -> bool {
    env_first(&["NO_PROXY", "no_proxy"])
        .is_some_and(|(_, list)| no_proxy_matches(&list, host, port))
}

fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    list.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return in_cidr(&host, net, bits);
            }
            let (name, entry_port) = match split_host_port(entry) {
                Some((h, p)) => (h, p),
                None => return false,
            };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.to_ascii_lowercase();
            let suffix = name.trim_start_matches("*.").trim_start_matches('.');
            host == suffix || host.ends_with(&format!(".{suffix}"))
        })
}

/// Whether the IP `host` lies in `net/bits` (false for names and malformed blocks).
fn in_cidr(host: &str, net: &str, bits: &str) -> bool {
    use std::net::IpAddr;
    let (Ok(host), Ok(net), Ok(bits)) = (
        host.parse::<IpAddr>(),
        net.trim_matches(['[', ']']).parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    let (h, n, width) = match (host, net) {
        (IpAddr::V4(h), IpAddr::V4(n)) => (u32::from(h) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(h), IpAddr::V6(n)) => (u128::from(h), u128::from(n), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    bits == 0 || (h >> shift) == (n >> shift)
}

/// How the websocket reaches an endpoint: directly, or through this proxy.
pub fn route(ep: &Endpoint) -> anyhow::Result<Option<Proxy>> {
    if no_proxy(&ep.host, ep.port) {
        return Ok(None);
    }
    Ok(proxy_from_env(ep.tls)?.map(|(_, p)| p))
}

/// Opens TCP to `ep`, through `proxy` with CONNECT when given.
async fn connect_tcp(ep: &Endpoint, proxy: Option<&Proxy>) -> anyhow::Result<TcpStream> {
    let Some(proxy) = proxy else {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .with_context(|| format!("TCP connect to {}", ep.authority()))?;
        let _ = tcp.set_nodelay(true);
        return Ok(tcp);
    };
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .with_context(|| format!("could not connect to the proxy {proxy}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = ep.authority();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(basic) = &proxy.basic {
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
    tracing::debug!(%proxy, %authority, "tunnel through proxy open");
    Ok(tcp)
}

/// TCP (maybe through a proxy), TLS for wss, and the websocket upgrade; `aws` signs the
/// upgrade (§16.1), `None` dials unsigned (`doctor`'s probe).
async fn dial(url: &str, aws: Option<&Aws>) -> anyhow::Result<Ws> {
    let ep = Endpoint::parse(url)?;
    let proxy = route(&ep)?;
    let mut request = url.into_client_request()?;
    if let Some(aws) = aws {
        // Signed as tungstenite will send it: the URL's authority without user info.
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match aws.sign_upgrade(url, &host).await {
            Ok(headers) => {
                for (k, v) in headers {
                    request.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes())?,
                        http::HeaderValue::from_str(&v)?,
                    );
                }
            }
            // As the official client: an unsigned upgrade, which the service may refuse.
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let tcp = connect_tcp(&ep, proxy.as_ref()).await?;
    let connector = if ep.tls {
        Some(Connector::Rustls(tls_config()?))
    } else {
        None
    };
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, connector).await?;
    Ok(ws)
}

/// Whether the session token may be sent to `url` (§16.1): one line naming the URL and the fix
/// when not. An endpoint override replaces the host, and is trusted as the user's choice
/// unless it is plain `ws://` off this machine.
pub fn check_url(url: &str) -> Result<(), String> {
    let refused = match &net().endpoint_override {
        Some(over) => super::stream_url::refuse_override(over),
        None => super::stream_url::refuse(url),
    };
    refused.map_or(Ok(()), Err)
}

/// Dials the stream URL, signing the upgrade with `aws`'s credentials, and authenticates with
/// `token`. `client_id` stays the same for the life of the process, across reconnects (§10).
/// The caller has checked the URL with [`check_url`].
pub async fn open(url: &str, token: &str, client_id: &str, aws: &Aws) -> anyhow::Result<Ws> {
    let target = effective_url(url)?;
    let dialled = tokio::time::timeout(DIAL_TIMEOUT, dial(&target, Some(aws)))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {} s", DIAL_TIMEOUT.as_secs()))
        .and_then(|r| r);
    let mut ws = match dialled {
        Ok(ws) => ws,
        Err(e) if target != url => {
            let shown = target.split('?').next().unwrap_or_default();
            return Err(e.context(format!("endpoint override {shown}")));
        }
        Err(e) => return Err(e),
    };
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_id: client_id.to_owned(),
        client_version: CLIENT_VERSION.into(),
    };
    ws.send(Message::text(serde_json::to_string(&open)?))
        .await?;
    Ok(ws)
}

/// Whether a failed [`open`] was the gateway refusing the upgrade with HTTP 403.
pub fn forbidden(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
            Some(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 403
        )
    })
}

/// Checks that the data-channel endpoint answers (`ssm-proxy doctor`): proxy, TCP, TLS and an
/// HTTP answer to a websocket upgrade without a session. Returns what was reached.
pub async fn probe(url: &str) -> anyhow::Result<String> {
    let target = effective_url(url)?;
    let ep = Endpoint::parse(&target)?;
    let via = match route(&ep)? {
        Some(p) => format!(" through the proxy {p}"),
        None => String::new(),
    };
    let what = if ep.tls { "TLS and HTTP" } else { "HTTP" };
    match tokio::time::timeout(Duration::from_secs(5), dial(&target, None)).await {
        Err(_) => anyhow::bail!("{} did not answer within 5 s{via}", ep.authority()),
        Ok(Ok(_)) => Ok(format!("{} answered ({what}){via}", ep.authority())),
        Ok(Err(e)) => match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(format!(
                "{} answered ({what}, HTTP {}){via}",
                ep.authority(),
                resp.status().as_u16()
            )),
            _ => Err(e.context(format!("{}{via}", ep.authority()))),
        },
    }
}

/// One rustls configuration per process, on the aws-lc-rs provider the SDK uses too, trusting
/// what the SDK's calls trust: the system's roots plus `AWS_CA_BUNDLE`'s certificates.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(extra) = crate::aws::ca_bundle()? {
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
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
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

    #[test]
    fn override_keeps_path_and_query() {
        let over = Endpoint::parse("https://vpce-1.ssmmessages.eu-west-1.vpce.amazonaws.com")
            .expect("parse");
        let target = Endpoint::parse("wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe&cell-number=A")
            .expect("parse");
        let url = Endpoint {
            rest: target.rest,
            ..over
        }
        .url();
        assert_eq!(
            url,
            "wss://vpce-1.ssmmessages.eu-west-1.vpce.amazonaws.com:443/v1/data-channel/s-1?role=publish_subscribe&cell-number=A"
        );
    }

    #[test]
    fn no_proxy_entries() {
        let list = "localhost, .internal,*.corp.example:8443,10.0.0.1";
        assert!(no_proxy_matches(list, "localhost", 443));
        assert!(no_proxy_matches(list, "db.internal", 443));
        assert!(no_proxy_matches(list, "internal", 443));
        assert!(!no_proxy_matches(list, "xinternal", 443));
        assert!(no_proxy_matches(list, "a.corp.example", 8443));
        assert!(!no_proxy_matches(list, "a.corp.example", 443));
        assert!(no_proxy_matches(list, "10.0.0.1", 443));
        assert!(!no_proxy_matches(
            list,
            "ssmmessages.us-east-1.amazonaws.com",
            443
        ));
        assert!(no_proxy_matches("*", "anything", 1));
        let cidrs = "10.0.0.0/8, 192.168.1.0/24,fd00::/8";
        assert!(no_proxy_matches(cidrs, "10.1.2.3", 443));
        assert!(no_proxy_matches(cidrs, "192.168.1.77", 443));
        assert!(!no_proxy_matches(cidrs, "192.168.2.1", 443));
        assert!(!no_proxy_matches(cidrs, "11.0.0.1", 443));
        assert!(no_proxy_matches(cidrs, "fd12::1", 443));
        assert!(!no_proxy_matches(cidrs, "fe80::1", 443));
        assert!(!no_proxy_matches(
            cidrs,
            "ssmmessages.us-east-1.amazonaws.com",
            443
        ));
        assert!(!no_proxy_matches("10.0.0.0/33", "10.0.0.1", 443));
        assert!(no_proxy_matches("0.0.0.0/0", "8.8.8.8", 443));
    }

    #[test]
    fn proxies_parse_and_hide_credentials() {
        let p = Proxy::parse("http://user:p%40ss@proxy.corp:3128/").expect("parse");
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(
            p.basic.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("user:p@ss")
                    .as_str()
            )
        );
        assert_eq!(p.to_string(), "http://***@proxy.corp:3128");
        assert_eq!(Proxy::parse("proxy:8080").expect("bare").port, 8080);
        assert_eq!(Proxy::parse("http://proxy").expect("default").port, 80);
        assert!(Proxy::parse("https://proxy:443").is_err());
        assert!(Proxy::parse("socks5://proxy:1080").is_err());
    }
}
