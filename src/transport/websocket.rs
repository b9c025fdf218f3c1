//! The data-channel websocket: dial `StreamUrl` (wss through rustls with the system roots, or
//! plain ws for the simulator) and send the OpenDataChannelInput text frame (§2.1, §2.2).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::proto::payload::OpenDataChannelInput;
use crate::proto::session::CLIENT_VERSION;

/// An open data channel.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long dialing (TCP + TLS + upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Dials the stream URL and authenticates with `token`. `client_id` stays the same for the life
/// of the process, across reconnects (§10).
pub async fn open(url: &str, token: &str, client_id: &str) -> anyhow::Result<Ws> {
    let connector = if url.starts_with("wss:") {
        Some(Connector::Rustls(tls_config()?))
    } else {
        None
    };
    let dial = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector);
    let (mut ws, _) = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {} s", DIAL_TIMEOUT.as_secs()))??;
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

/// One rustls configuration per process, on the aws-lc-rs provider the SDK uses too.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        anyhow::bail!("no trusted CA certificates found on this system: install ca-certificates");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}
