//! StreamUrl validation before the token leaves the machine (§16.1, plugin 1.2.889): `wss://`
//! to a Session Manager message endpoint (regional, FIPS, dual-stack, the China, GovCloud and
//! ISO partitions, PrivateLink `vpce-…` names), or `ws://` to a loopback address (the simulator,
//! local test rigs). An explicit `--ssmmessages-endpoint` replaces the host and is trusted as
//! given.

use std::net::IpAddr;

use crate::net::Endpoint;

/// Domains under which a message endpoint lives, per partition; dual-stack ones included.
const DOMAINS: [&str; 9] = [
    "amazonaws.com",
    "api.aws",
    "amazonaws.com.cn",
    "api.amazonwebservices.com.cn",
    "c2s.ic.gov",
    "sc2s.sgov.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
    "amazonaws.eu",
];

/// Why `url` may not receive the session token, as one line with the fix; `None` when it may.
pub fn refuse(url: &str) -> Option<String> {
    let shown = url.split('?').next().unwrap_or_default();
    let fix = "if this endpoint is really yours (a proxy or private gateway), name it with \
               --ssmmessages-endpoint";
    let Ok(ep) = Endpoint::parse(url) else {
        return Some(format!(
            "the service sent an unusable StreamUrl {shown:?}: {fix}"
        ));
    };
    if is_loopback(&ep.host) {
        return None;
    }
    if !ep.tls {
        return Some(format!(
            "refusing to send the session token over plain ws:// to {shown}: only loopback \
             addresses may use ws://; {fix}"
        ));
    }
    if !is_message_endpoint(&ep.host) {
        return Some(format!(
            "refusing to send the session token to {shown}: not a Session Manager message \
             endpoint (ssmmessages.REGION.amazonaws.com); {fix}"
        ));
    }
    None
}

/// Why a data-channel endpoint the user named (`--ssmmessages-endpoint`,
/// `SSM_PROXY_SSMMESSAGES_ENDPOINT`) may not receive the session token, as one line with the
/// fix; `None` when it may. Any `wss://` host is the user's choice; plain `ws://` would carry
/// the token in clear, so only to loopback. An unparsable one is reported where it is read.
pub fn refuse_override(url: &str) -> Option<String> {
    let ep = Endpoint::parse(url).ok()?;
    (!ep.tls && !is_loopback(&ep.host)).then(|| {
        format!(
            "refusing to send the session token over plain ws:// to {}: a data-channel \
             endpoint (--ssmmessages-endpoint, SSM_PROXY_SSMMESSAGES_ENDPOINT) off this machine \
             must use wss://",
            url.split('?').next().unwrap_or_default()
        )
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `ssmmessages[-fips].REGION.DOMAIN`, or a PrivateLink name
/// `vpce-ID[-AZ].ssmmessages[-fips].REGION.vpce.DOMAIN`.
fn is_message_endpoint(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (service_at, vpce) = match labels.first() {
        Some(first) if first.starts_with("vpce-") => (1, true),
        _ => (0, false),
    };
    let Some(service) = labels.get(service_at) else {
        return false;
    };
    if !matches!(*service, "ssmmessages" | "ssmmessages-fips") {
        return false;
    }
    let Some(region) = labels.get(service_at + 1) else {
        return false;
    };
    let region_ok = region.split('-').count() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let mut domain = &labels[service_at + 2..];
    if vpce {
        match domain.split_first() {
            Some((&"vpce", rest)) => domain = rest,
            _ => return false,
        }
    }
    let domain = domain.join(".");
    region_ok && DOMAINS.contains(&domain.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let path = "/v1/data-channel/s-0abc?role=publish_subscribe&cell-number=AAA";
        let table: &[(&str, bool)] = &[
            ("wss://ssmmessages.us-east-1.amazonaws.com", true),
            ("wss://ssmmessages-fips.us-gov-west-1.amazonaws.com", true),
            ("wss://ssmmessages-fips.us-east-1.amazonaws.com", true),
            ("wss://ssmmessages.eu-west-1.api.aws", true),
            ("wss://ssmmessages.cn-north-1.amazonaws.com.cn", true),
            (
                "wss://ssmmessages.cn-north-1.api.amazonwebservices.com.cn",
                true,
            ),
            ("wss://ssmmessages.us-iso-east-1.c2s.ic.gov", true),
            (
                "wss://vpce-0123456789abcdef0-abcdefgh.ssmmessages.eu-west-1.vpce.amazonaws.com",
                true,
            ),
            (
                "wss://vpce-0123456789abcdef0-abcdefgh-eu-west-1a.ssmmessages.eu-west-1.vpce.amazonaws.com",
                true,
            ),
            ("wss://SSMMESSAGES.US-EAST-1.AMAZONAWS.COM.", true),
            ("wss://ssmmessages.us-east-1.amazonaws.com:443", true),
            ("ws://127.0.0.1:8080", true),
            ("ws://[::1]:8080", true),
            ("ws://localhost:8080", true),
            ("wss://127.0.0.5:8443", true),
            // Plain ws to anything but loopback.
            ("ws://ssmmessages.us-east-1.amazonaws.com", false),
            ("ws://10.0.0.1:8080", false),
            // Look-alikes and other services.
            (
                "wss://ssmmessages.us-east-1.amazonaws.com.evil.example",
                false,
            ),
            (
                "wss://evil.example/ssmmessages.us-east-1.amazonaws.com",
                false,
            ),
            (
                "wss://ssmmessages.us-east-1.amazonaws.com@evil.example",
                false,
            ),
            ("wss://ssm.us-east-1.amazonaws.com", false),
            ("wss://x.ssmmessages.us-east-1.amazonaws.com", false),
            ("wss://ssmmessages.amazonaws.com", false),
            ("wss://ssmmessages.us-east-1.vpce.amazonaws.com", false),
            (
                "wss://vpce-1.ssmmessages.us-east-1.amazonaws.com.cn.evil",
                false,
            ),
            ("wss://ssmmessages.us_east_1.amazonaws.com", false),
            ("https://ssmmessages.us-east-1.amazonaws.com", true),
            ("ftp://ssmmessages.us-east-1.amazonaws.com", false),
            ("", false),
        ];
        for (over, ok) in [
            ("ws://127.0.0.1:4000", true),
            ("ws://localhost:4000", true),
            ("wss://gateway.example:8443", true),
            ("ws://gateway.example:8080", false),
            ("ws://10.0.0.1", false),
        ] {
            assert_eq!(refuse_override(over).is_none(), ok, "{over}");
        }
        for (base, ok) in table {
            let url = format!("{base}{path}");
            let verdict = refuse(&url);
            assert_eq!(verdict.is_none(), *ok, "{url}: {verdict:?}");
            if let Some(line) = verdict {
                assert!(!line.contains('\n') && line.contains("--ssmmessages-endpoint"));
                assert!(!line.contains("cell-number"), "query shown: {line}");
            }
        }
    }
}
