//! SigV4 checks, as the service makes them: of the gateway's websocket upgrade (§16.1) and of
//! every API request. The `Authorization` header must name a key the simulator knows, a
//! service the endpoint serves (`ssmmessages` and the simulator's region for the upgrade), a
//! date within 5 minutes, and carry the signature that key gives the request's signed headers
//! and body. The signature is recomputed with the SDK's `aws-sigv4` from what the request
//! carries; the scope, key and clock checks are the service's own.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

/// Region the simulator's printed environment names.
pub const REGION: &str = "us-east-1";

/// The signing names of the APIs the simulator serves (SSM, KMS, EC2 Instance Connect, STS,
/// ECS); any region, since clients may name any.
pub const API_SERVICES: [&str; 5] = ["ssm", "kms", "ec2-instance-connect", "sts", "ecs"];

/// Most clock skew the service accepts.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// A request as it arrived.
struct Signed<'a> {
    method: &'a str,
    uri: &'a str,
    headers: &'a http::HeaderMap,
    body: &'a [u8],
}

/// The access key that signed the upgrade, or why it is refused.
pub fn verify(
    method: &str,
    uri: &str,
    headers: &http::HeaderMap,
    keys: &[(String, String)],
    now: SystemTime,
) -> Result<String, String> {
    let req = Signed {
        method,
        uri,
        headers,
        body: &[],
    };
    check(&req, &["ssmmessages"], Some(REGION), keys, now)
}

/// The access key that signed an API request (`body` as received), or why it is refused.
pub fn verify_api(
    method: &str,
    uri: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    keys: &[(String, String)],
    now: SystemTime,
) -> Result<String, String> {
    let req = Signed {
        method,
        uri,
        headers,
        body,
    };
    check(&req, &API_SERVICES, None, keys, now)
}

/// The key that signed `req` for one of `services` (in `region`, when given).
fn check(
    req: &Signed<'_>,
    services: &[&str],
    region_wanted: Option<&str>,
    keys: &[(String, String)],
    now: SystemTime,
) -> Result<String, String> {
    let headers = req.headers;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("missing Authorization (unsigned upgrade)")?;
    let (credential, signed, signature) = parse_authorization(auth)?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, day, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if !services.contains(&service) {
        return Err(format!(
            "signed for service {service:?}, not {}",
            services.join(" or ")
        ));
    }
    if let Some(wanted) = region_wanted.filter(|w| *w != region) {
        return Err(format!("signed for region {region:?}, not {wanted}"));
    }
    let secret = keys
        .iter()
        .find(|(k, _)| k == key_id)
        .map(|(_, s)| s)
        .ok_or_else(|| format!("unknown access key {key_id}"))?;
    let date = header("x-amz-date").ok_or("missing X-Amz-Date")?;
    let time = parse_amz_date(date).ok_or_else(|| format!("bad X-Amz-Date {date:?}"))?;
    if !date.starts_with(day) {
        return Err("X-Amz-Date and the credential scope disagree".into());
    }
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(format!("signature date {date} is {} s off", skew.as_secs()));
    }
    if !signed.split(';').any(|h| h == "host") {
        return Err("the Host header is not signed".into());
    }
    // What the client signed, as it arrived; the signer adds the date and token itself.
    let mut pairs = Vec::new();
    for name in signed.split(';') {
        if matches!(name, "x-amz-date" | "x-amz-security-token") {
            continue;
        }
        let value = header(name).ok_or_else(|| format!("signed header {name} is missing"))?;
        pairs.push((name, value));
    }
    let token = header("x-amz-security-token").map(str::to_owned);
    if signed.contains("x-amz-security-token") != token.is_some() {
        return Err("X-Amz-Security-Token and SignedHeaders disagree".into());
    }
    let identity = Credentials::new(key_id, secret, token, None, "simulator").into();
    let scope = Scope {
        region,
        service,
        time,
    };
    if signature_of(req, &identity, &scope, pairs)? != signature {
        return Err("signature mismatch".into());
    }
    Ok(key_id.to_owned())
}

/// (Credential, SignedHeaders, Signature) of an `Authorization` header.
fn parse_authorization(auth: &str) -> Result<(&str, &str, &str), String> {
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not an AWS4-HMAC-SHA256 signature")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    match (credential, signed, signature) {
        (Some(c), Some(h), Some(s)) => Ok((c, h, s)),
        _ => Err("Authorization lacks Credential, SignedHeaders or Signature".into()),
    }
}

/// Where and when a request was signed.
struct Scope<'a> {
    region: &'a str,
    service: &'a str,
    time: SystemTime,
}

/// The signature the request's signed headers (`pairs`) give with `identity`'s key.
fn signature_of(
    req: &Signed<'_>,
    identity: &aws_smithy_runtime_api::client::identity::Identity,
    scope: &Scope<'_>,
    pairs: Vec<(&str, &str)>,
) -> Result<String, String> {
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = aws_sigv4::http_request::SignableRequest::new(
        req.method,
        req.uri,
        pairs.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(req.body),
    )
    .map_err(|e| e.to_string())?;
    let expected = aws_sigv4::http_request::sign(request, &params).map_err(|e| e.to_string())?;
    Ok(expected.signature().to_owned())
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), H. Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::upgrade_headers;

    const URL: &str = "ws://127.0.0.1:4000/v1/data-channel/s-1?role=publish_subscribe";

    fn keys() -> Vec<(String, String)> {
        vec![("AKIDSIM".into(), "sim-secret".into())]
    }

    fn signed(creds: &Credentials, region: &str, at: SystemTime) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert("host", "127.0.0.1:4000".parse().expect("host"));
        for (k, v) in upgrade_headers(creds, region, URL, "127.0.0.1:4000", at).expect("sign") {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn dates_parse() {
        let t = parse_amz_date("20251205T020000Z").expect("date");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after")
                .as_secs(),
            1_764_900_000
        );
        assert!(parse_amz_date("2025-12-05T02:00:00Z").is_none());
    }

    #[test]
    fn signatures_checked() {
        let now = SystemTime::now();
        let good = Credentials::new("AKIDSIM", "sim-secret", Some("tok".into()), None, "t");
        let ok = verify("GET", URL, &signed(&good, REGION, now), &keys(), now);
        assert_eq!(ok, Ok("AKIDSIM".to_owned()));
        let no_token = Credentials::new("AKIDSIM", "sim-secret", None, None, "t");
        assert!(verify("GET", URL, &signed(&no_token, REGION, now), &keys(), now).is_ok());

        let wrong_secret = Credentials::new("AKIDSIM", "other", None, None, "t");
        let bad = [
            (signed(&wrong_secret, REGION, now), "mismatch"),
            (signed(&good, "eu-west-1", now), "region"),
            (signed(&good, REGION, now - Duration::from_secs(600)), "off"),
            (http::HeaderMap::new(), "unsigned"),
        ];
        for (headers, why) in bad {
            let e = verify("GET", URL, &headers, &keys(), now).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
        let other_url = URL.replace("s-1", "s-2");
        let e = verify("GET", &other_url, &signed(&good, REGION, now), &keys(), now);
        assert!(e.is_err());
    }
}
