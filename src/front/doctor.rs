//! `ssm-proxy doctor [TARGET]`: checks, in the order a session needs them, everything between
//! the user and a working `ssh` through Session Manager, and prints each result with its fix on
//! stdout (this is not proxy mode). The exit status is 0 only if every check passed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::aws::{Aws, AwsError, AwsOptions};
use crate::cli::{AwsArgs, DoctorArgs};
use crate::front::target::{self, TargetSpec};
use crate::net::{self, Net, ProxyKind};
use crate::transport::websocket;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Skip,
    Info,
}

/// Prints results as they come, counting failures.
struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, status: Status, what: &str, detail: &str) {
        let tag = match status {
            Status::Ok => "ok  ",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
            Status::Info => "info",
        };
        if status == Status::Fail {
            self.failed += 1;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{tag}  {what}: {detail}");
        let _ = out.flush();
    }
}

/// Runs every check; returns 0 if all passed, 1 otherwise.
pub async fn run(args: DoctorArgs, aws_args: AwsArgs) -> anyhow::Result<u8> {
    let mut r = Report { failed: 0 };
    let net = network_settings(&mut r, &aws_args);
    let opts = AwsOptions {
        profile: aws_args.profile.clone(),
        region: aws_args.region.clone(),
        endpoint_url: aws_args.endpoint_url.clone(),
        reason: None,
        net,
    };
    let profile = opts
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    let from = if opts.profile.is_some() {
        "--profile"
    } else if std::env::var("AWS_PROFILE").is_ok_and(|p| !p.is_empty()) {
        "AWS_PROFILE"
    } else {
        "neither --profile nor AWS_PROFILE is set"
    };
    r.line(Status::Info, "profile", &format!("{profile} ({from})"));
    match Aws::load(&opts).await {
        Err(e) => {
            let what = match e {
                AwsError::NoProfile(..) => "profile",
                _ => "region",
            };
            r.line(Status::Fail, what, &e.to_string());
            for what in ["credentials", "SSM endpoint", "target", "data channel"] {
                r.line(Status::Skip, what, "needs a region");
            }
        }
        Ok(aws) => {
            let env_set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
            let source = if opts.region.is_some() {
                "--region".to_owned()
            } else if env_set("AWS_REGION") {
                "AWS_REGION".to_owned()
            } else if env_set("AWS_DEFAULT_REGION") {
                "AWS_DEFAULT_REGION".to_owned()
            } else {
                format!("profile {profile}")
            };
            r.line(
                Status::Ok,
                "region",
                &format!("{} (from {source})", aws.region()),
            );
            aws_checks(&mut r, &aws, &profile, args.target.as_deref(), &aws_args).await;
        }
    }
    ssh_version(&mut r);
    let mut out = std::io::stdout().lock();
    if r.failed == 0 {
        let _ = writeln!(out, "all checks passed");
        Ok(0)
    } else {
        let s = if r.failed == 1 { "" } else { "s" };
        let _ = writeln!(out, "{} check{s} failed", r.failed);
        Ok(1)
    }
}

/// Proxy variables, CA bundle and the data-channel override; returns the settings (the
/// defaults when they are unusable, so that the other checks still run).
fn network_settings(r: &mut Report, aws_args: &AwsArgs) -> Net {
    let net = match Net::from_env(aws_args.ssmmessages_endpoint.clone()) {
        Ok(net) => net,
        Err(e) => {
            r.line(Status::Fail, "network settings", &format!("{e:#}"));
            return Net::default();
        }
    };
    for tls in [true, false] {
        let kind = if tls { "HTTPS proxy" } else { "HTTP proxy" };
        match net.proxy(tls) {
            Some((var, proxy)) => {
                let how = match proxy.kind {
                    ProxyKind::Http => "with CONNECT",
                    ProxyKind::Socks5 { .. } => "with SOCKS5",
                };
                r.line(
                    Status::Info,
                    kind,
                    &format!("{var}={proxy} (used by the AWS SDK and the data channel, {how})"),
                )
            }
            None => r.line(Status::Info, kind, "none"),
        }
    }
    if !net.no_proxy_list().is_empty() {
        r.line(Status::Info, "NO_PROXY", net.no_proxy_list());
    }
    if let Some((path, _)) = net.ca_bundle() {
        r.line(
            Status::Ok,
            "AWS_CA_BUNDLE",
            &format!("{path} (trusted by the AWS SDK and the data channel, with the system roots)"),
        );
    }
    net
}

/// Credentials, identity, the SSM endpoint, the target, the data channel.
async fn aws_checks(
    r: &mut Report,
    aws: &Aws,
    profile: &str,
    target: Option<&str>,
    aws_args: &AwsArgs,
) {
    let creds_ok = check_credentials(r, aws, profile).await;
    let ssm_ok = match creds_ok {
        true => check_ssm_endpoint(r, aws).await,
        false => {
            r.line(Status::Skip, "identity", "needs credentials");
            r.line(Status::Skip, "SSM endpoint", "needs credentials");
            false
        }
    };
    match target {
        None => r.line(
            Status::Skip,
            "target",
            "none given (ssm-proxy doctor TARGET)",
        ),
        Some(_) if !ssm_ok => r.line(Status::Skip, "target", "needs the SSM endpoint"),
        Some(t) => check_target(r, aws, t, aws_args.profile.as_deref()).await,
    }
    check_data_channel(r, aws, aws_args).await;
}

/// Which provider gave the credentials, and (when it did) who they are.
async fn check_credentials(r: &mut Report, aws: &Aws, profile: &str) -> bool {
    let id = match aws.identity().await {
        Ok(id) => id,
        Err(e) => {
            r.line(Status::Fail, "credentials", &e.to_string());
            return false;
        }
    };
    let of_profile = match id.source.contains("Profile") {
        true => format!(" (profile {profile})"),
        false => String::new(),
    };
    r.line(
        Status::Ok,
        "credentials",
        &format!(
            "from the {} provider{of_profile}, key {}",
            id.source, id.access_key
        ),
    );
    match aws.caller_arn().await {
        Ok(arn) => r.line(
            Status::Ok,
            "identity",
            &format!("{arn} (STS GetCallerIdentity)"),
        ),
        Err(e) => r.line(Status::Fail, "identity", &e.to_string()),
    }
    true
}

/// DescribeInstanceInformation on the SSM endpoint: reachable, and these credentials work.
async fn check_ssm_endpoint(r: &mut Report, aws: &Aws) -> bool {
    let online = ["Online".to_owned()];
    match aws.describe_nodes("PingStatus", &online).await {
        Ok(nodes) => {
            let s = if nodes.len() == 1 { "" } else { "s" };
            let detail = format!(
                "{} answered DescribeInstanceInformation: {} managed node{s} online",
                aws.endpoint(),
                nodes.len(),
            );
            r.line(Status::Ok, "SSM endpoint", &detail);
            true
        }
        Err(e) => {
            r.line(Status::Fail, "SSM endpoint", &e.to_string());
            false
        }
    }
}

/// Dials the data-channel endpoint (the override, or the region's) as a session would.
async fn check_data_channel(r: &mut Report, aws: &Aws, aws_args: &AwsArgs) {
    let url = aws_args
        .ssmmessages_endpoint
        .clone()
        .or_else(|| std::env::var(net::ENDPOINT_ENV).ok())
        .unwrap_or_else(|| {
            let suffix = if aws.region().starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            format!("wss://ssmmessages.{}.{suffix}", aws.region())
        });
    match websocket::probe(aws.net(), &url).await {
        Ok(what) => r.line(Status::Ok, "data channel", &what),
        Err(e) => r.line(
            Status::Fail,
            "data channel",
            &format!(
                "could not reach {url}: {e:#}: check the network, HTTPS_PROXY/NO_PROXY, \
                 AWS_CA_BUNDLE, and --ssmmessages-endpoint for PrivateLink"
            ),
        ),
    }
}

/// Resolves the target and shows its agent.
async fn check_target(r: &mut Report, aws: &Aws, given: &str, profile: Option<&str>) {
    let spec = match TargetSpec::parse(given) {
        Ok(s) => s,
        Err(e) => return r.line(Status::Fail, "target", &e.to_string()),
    };
    let id = match target::resolve(aws, &spec, profile, false).await {
        Ok(id) => id,
        Err(e) => return r.line(Status::Fail, "target", &e.to_string()),
    };
    match aws
        .describe_nodes("InstanceIds", std::slice::from_ref(&id))
        .await
    {
        Ok(nodes) => match nodes.first() {
            Some(n) if n.online() => r.line(
                Status::Ok,
                "target",
                &format!(
                    "{given} is {} ({}), Online, agent {}, {}",
                    n.id, n.name, n.agent_version, n.platform
                ),
            ),
            Some(n) => r.line(
                Status::Fail,
                "target",
                &AwsError::Offline {
                    id: n.id.clone(),
                    what: format!("({})", n.name),
                    status: n.ping_status.clone(),
                    region: aws.region().to_owned(),
                }
                .to_string(),
            ),
            None => r.line(
                Status::Fail,
                "target",
                &format!(
                    "{id} is not a managed node in {}: check the id and region, that the \
                     instance has an instance profile with AmazonSSMManagedInstanceCore, and \
                     that its agent can reach SSM",
                    aws.region()
                ),
            ),
        },
        Err(e) => r.line(Status::Fail, "target", &e.to_string()),
    }
}

/// `ssh -V`, bounded.
fn ssh_version(r: &mut Report) {
    let child = Command::new("ssh")
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return r.line(
                Status::Fail,
                "ssh",
                &format!("cannot run ssh ({e}): install the OpenSSH client"),
            );
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                return r.line(Status::Fail, "ssh", "ssh -V did not answer within 5 s");
            }
        }
    }
    let out = child.wait_with_output();
    let text = out
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stderr).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stdout));
            t
        })
        .unwrap_or_default();
    match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
        Some(v) => r.line(Status::Ok, "ssh", v),
        None => r.line(
            Status::Fail,
            "ssh",
            "ssh -V printed nothing: reinstall the OpenSSH client",
        ),
    }
}
