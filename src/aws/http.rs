//! The HTTPS client of every SDK call: the SDK's default (hyper, rustls on aws-lc), plus what
//! the default leaves off and the data channel honours too, so that API calls and websocket go
//! the same way: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` with `NO_PROXY` (HTTP CONNECT), and the
//! extra CA certificates of `AWS_CA_BUNDLE`.

use aws_sdk_ssm::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, Connector};

use super::AwsError;

/// The client to give the SDK configuration and the credential providers.
pub fn client() -> Result<SharedHttpClient, AwsError> {
    let mut trust = TrustStore::default();
    if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path).map_err(|e| {
            AwsError::Other(format!(
                "AWS_CA_BUNDLE={} could not be read ({e}): point it at a PEM file of CA certificates",
                std::path::Path::new(&path).display()
            ))
        })?;
        trust = trust.with_pem_certificate(pem);
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| AwsError::Other(format!("TLS set-up failed: {e}")))?;
    let proxy = ProxyConfig::from_env();
    Ok(
        Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = Connector::builder()
                .proxy_config(proxy.clone())
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
