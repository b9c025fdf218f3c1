//! The HTTPS client of every SDK call: the SDK's default (hyper, rustls on aws-lc), plus what
//! the default leaves off and the data channel honours too, so that API calls and websocket go
//! the same way: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` with `NO_PROXY` (HTTP CONNECT), and the
//! extra CA certificates of `AWS_CA_BUNDLE`.

use std::sync::OnceLock;

use aws_sdk_ssm::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, Connector};
use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::AwsError;

/// The client to give the SDK configuration and the credential providers.
pub fn client() -> Result<SharedHttpClient, AwsError> {
    let mut trust = TrustStore::default();
    if let Some(extra) = ca_bundle()? {
        trust = trust.with_pem_certificate(pem(extra));
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

/// The certificates of `AWS_CA_BUNDLE` (a PEM file), trusted beside the system's by the SDK's
/// calls and the data channel; `None` when it is unset. Only certificates rustls accepts as
/// roots are kept (the SDK's trust store would panic on the others).
pub fn ca_bundle() -> Result<Option<&'static [CertificateDer<'static>]>, AwsError> {
    static BUNDLE: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    if let Some(certs) = BUNDLE.get() {
        return Ok(Some(certs));
    }
    let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let shown = std::path::Path::new(&path).display().to_string();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            AwsError::Other(format!(
                "AWS_CA_BUNDLE={shown} could not be read ({e}): point it at a PEM file of CA certificates"
            ))
        })?;
    let mut store = rustls::RootCertStore::empty();
    let usable: Vec<_> = certs
        .into_iter()
        .filter(|c| store.add(c.clone()).is_ok())
        .collect();
    if usable.is_empty() {
        return Err(AwsError::Other(format!(
            "AWS_CA_BUNDLE={shown} holds no usable certificate: point it at a PEM file of CA certificates"
        )));
    }
    Ok(Some(BUNDLE.get_or_init(|| usable)))
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
