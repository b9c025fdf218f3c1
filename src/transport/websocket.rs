//! The data-channel websocket: dial `StreamUrl` (wss through rustls with the system roots plus
//! `AWS_CA_BUNDLE`, or plain ws for the simulator) the way the run's [`Net`] routes it (direct,
//! HTTP CONNECT or SOCKS5 proxy, `NO_PROXY`), with scheme, host and port optionally replaced
//! (`--ssmmessages-endpoint`, for PrivateLink and FIPS), and send the OpenDataChannelInput text
//! frame (§2.1, §2.2).
//!
//! The OpenDataChannelInput carries the session token: it is serialized straight into the frame
//! and never logged.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::aws::Aws;
use crate::net::{Endpoint, Net};
use crate::proto::payload::OpenDataChannelInput;
use crate::proto::session::CLIENT_VERSION;

/// An open data channel.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long dialing (proxy + TCP + TLS + upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// `url` with scheme, host and port replaced by the configured override, if any.
pub fn effective_url(net: &Net, url: &str) -> anyhow::Result<String> {
    match net.endpoint_override() {
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

/// TCP (maybe through a proxy), TLS for wss, and the websocket upgrade; `aws` signs the
/// upgrade (§16.1), `None` dials unsigned (`doctor`'s probe).
async fn dial(net: &Net, url: &str, aws: Option<&Aws>) -> anyhow::Result<Ws> {
    let ep = Endpoint::parse(url)?;
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
    let tcp = net.connect(ep.tls, &ep.host, ep.port).await?;
    let connector = if ep.tls {
        Some(Connector::Rustls(net.tls_config()?))
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
pub fn check_url(net: &Net, url: &str) -> Result<(), String> {
    let refused = match net.endpoint_override() {
        Some(over) => super::stream_url::refuse_override(over),
        None => super::stream_url::refuse(url),
    };
    refused.map_or(Ok(()), Err)
}

/// Dials the stream URL, signing the upgrade with `aws`'s credentials, and authenticates with
/// `token`. `client_id` stays the same for the life of the process, across reconnects (§10).
/// The caller has checked the URL with [`check_url`].
pub async fn open(url: &str, token: &str, client_id: &str, aws: &Aws) -> anyhow::Result<Ws> {
    let target = effective_url(aws.net(), url)?;
    let dialled = tokio::time::timeout(DIAL_TIMEOUT, dial(aws.net(), &target, Some(aws)))
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
pub async fn probe(net: &Net, url: &str) -> anyhow::Result<String> {
    let target = effective_url(net, url)?;
    let ep = Endpoint::parse(&target)?;
    let via = match net.route(ep.tls, &ep.host, ep.port) {
        Some(p) => format!(" through the proxy {p}"),
        None => String::new(),
    };
    let what = if ep.tls { "TLS and HTTP" } else { "HTTP" };
    match tokio::time::timeout(Duration::from_secs(5), dial(net, &target, None)).await {
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
