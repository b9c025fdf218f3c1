//! The HTTPS client of every SDK call, following the run's [`Net`] like the data channel does.
//!
//! Without a proxy it is the SDK's default (hyper, rustls on aws-lc) trusting `AWS_CA_BUNDLE`
//! beside the system's roots. With one, the SDK's own connector would know only HTTP proxies
//! and a `NO_PROXY` without ports, so the connection is made by [`Net::connect`] (direct, HTTP
//! CONNECT or SOCKS5, `NO_PROXY` with CIDR blocks and ports) and then carried by hyper with
//! rustls, as the SDK's is: one routing decision for API calls and websocket alike.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_ssm::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, Connector};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use base64::Engine;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;

use super::AwsError;
use crate::net::Net;

/// The client to give the SDK configuration and the credential providers.
pub fn client(net: &Net) -> Result<SharedHttpClient, AwsError> {
    if net.has_proxy() {
        let tls = net
            .tls_config()
            .map_err(|e| AwsError::Other(format!("{e:#}")))?;
        return Ok(SharedHttpClient::new(Proxied {
            net: net.clone(),
            tls: (*tls).clone(),
        }));
    }
    let mut trust = TrustStore::default();
    if let Some((_, extra)) = net.ca_bundle() {
        trust = trust.with_pem_certificate(pem(extra));
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| AwsError::Other(format!("TLS set-up failed: {e}")))?;
    Ok(
        Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = Connector::builder()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(tls.clone());
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.build()
        }),
    )
}

/// The SDK's HTTP client when a proxy is configured.
#[derive(Debug, Clone)]
struct Proxied {
    net: Net,
    tls: rustls::ClientConfig,
}

impl HttpClient for Proxied {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let dialer = Dialer {
            net: self.net.clone(),
            connect_timeout: settings.connect_timeout(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(dialer);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        SharedHttpConnector::new(ProxiedConnector { client })
    }
}

#[derive(Clone)]
struct ProxiedConnector {
    client: Client<hyper_rustls::HttpsConnector<Dialer>, SdkBody>,
}

impl std::fmt::Debug for ProxiedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxiedConnector")
    }
}

impl HttpConnector for ProxiedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let call = self.client.request(request);
        HttpConnectorFuture::new(async move {
            match call.await {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                // Connecting (proxy included) and I/O failures are retried like the SDK's own.
                Err(e) if e.is_connect() => Err(ConnectorError::io(e.into())),
                Err(e) => match std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<hyper::Error>())
                {
                    Some(h) if h.is_timeout() => Err(ConnectorError::timeout(e.into())),
                    Some(h) if h.is_closed() || h.is_canceled() || h.is_incomplete_message() => {
                        Err(ConnectorError::io(e.into()))
                    }
                    _ => Err(ConnectorError::other(e.into(), None)),
                },
            }
        })
    }
}

/// Opens the TCP connection of a request through [`Net::connect`].
#[derive(Clone)]
struct Dialer {
    net: Net,
    connect_timeout: Option<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (net, limit) = (self.net.clone(), self.connect_timeout);
        Box::pin(async move {
            let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = uri.host().ok_or("request URI without a host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let connect = net.connect(tls, host, port);
            let tcp = match limit {
                Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                    format!("connecting to {host}:{port} timed out after {limit:?}")
                })?,
                None => connect.await,
            };
            // One part, causes in parentheses: the SDK's error line shows only what follows
            // the last ": " of the chain, which would drop the proxy's name.
            let tcp = tcp.map_err(|e| {
                let mut text = e.to_string();
                for cause in e.chain().skip(1) {
                    text.push_str(&format!(" ({cause})"));
                }
                std::io::Error::other(text.replace(": ", " "))
            })?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Certificates as one PEM text, the form the SDK's trust store takes.
fn pem(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_round_trips() {
        let certs = [
            CertificateDer::from(vec![1u8; 100]),
            CertificateDer::from(vec![2u8; 3]),
        ];
        let back: Vec<_> = CertificateDer::pem_slice_iter(&pem(&certs))
            .collect::<Result<_, _>>()
            .expect("parse");
        assert_eq!(back, certs);
    }
}
