//! Today's AWS contract (issue 12): the data-channel upgrade is SigV4-signed and the simulator,
//! like the service, refuses one that is not; credentials refreshed between a first open and a
//! resume sign the resume.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde_json::json;
use ssm_proxy::sim::{DropPlan, Sim, SimConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{self, TARGET, TempDir, apply_env, echo::echo_server, proxy_bin};

/// A fresh StreamUrl from the simulator (StartSession called in-process, its session task on
/// `rt`).
fn stream_url(sim: &Sim, rt: &tokio::runtime::Runtime) -> String {
    let _in_rt = rt.enter();
    let out = sim
        .service()
        .start_session(&json!({
            "Target": TARGET,
            "DocumentName": "AWS-StartSSHSession",
            "Parameters": {"portNumber": ["22"]},
        }))
        .expect("StartSession");
    out["StreamUrl"].as_str().expect("StreamUrl").to_owned()
}

/// The HTTP status of a websocket upgrade to `url`, signed with `key` when given.
fn upgrade_status(rt: &tokio::runtime::Runtime, url: &str, key: Option<(&str, &str)>) -> u16 {
    rt.block_on(async {
        let mut req = url.into_client_request().expect("request");
        if let Some((id, secret)) = key {
            let host = req.headers()["host"].to_str().expect("host").to_owned();
            let creds = aws_credential_types::Credentials::new(id, secret, None, None, "test");
            let headers =
                ssm_proxy::aws::upgrade_headers(&creds, "us-east-1", url, &host, SystemTime::now())
                    .expect("sign");
            for (k, v) in headers {
                req.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
        }
    })
}

#[test]
fn unsigned_upgrade_refused_signed_accepted() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let url = stream_url(&sim, &rt);
    assert_eq!(upgrade_status(&rt, &url, None), 403, "unsigned");
    assert_eq!(
        upgrade_status(&rt, &url, Some(("AKIASIMULATOR000000", "wrong-secret"))),
        403,
        "wrongly signed"
    );
    assert_eq!(
        upgrade_status(&rt, &url, Some(("AKIAUNKNOWN", "simulator-secret"))),
        403,
        "unknown key"
    );
    assert_eq!(
        upgrade_status(&rt, &url, Some(("AKIASIMULATOR000000", "simulator-secret"))),
        101,
        "signed"
    );
    let old_clients = Sim::start(SimConfig {
        allow_unsigned: true,
        ..Default::default()
    })
    .expect("sim");
    assert_eq!(
        upgrade_status(&rt, &stream_url(&old_clients, &rt), None),
        101,
        "--allow-unsigned"
    );
}

#[test]
fn wrongly_signed_client_fails_in_one_line() {
    // Credentials the API accepts and the gateway refuses (a policy without
    // ssmmessages:OpenDataChannel): the signed upgrade gets HTTP 403.
    let sim = Sim::start(SimConfig {
        api_only_keys: vec![("AKIANODATACHANNEL".into(), "api-only".into())],
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("sig-home");
    let mut env = sim.env();
    env.retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"));
    env.push(("AWS_ACCESS_KEY_ID".into(), "AKIANODATACHANNEL".into()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "api-only".into()));
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = support::proxy_run(&env, &[TARGET, "22"], 10);
    let line = support::one_line_failure(&out);
    assert!(line.contains("403"), "{line}");
    assert_eq!(out.status.code(), Some(77), "{line}");
    assert!(support::wait_until(5, || sim.active_sessions() == 0));
}

#[test]
fn the_api_answers_only_signed_requests() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("sig-home");
    let mut env = sim.env();
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = support::proxy_run(&env, &[TARGET, "22"], 10);
    let line = support::one_line_failure(&out);
    assert!(line.contains("InvalidSignatureException"), "{line}");
    assert_eq!(out.status.code(), Some(77), "{line}");
    assert_eq!(
        sim.stats().start_calls,
        0,
        "a wrongly signed StartSession was counted"
    );
    let unsigned = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-X",
            "POST",
        ])
        .args(["-H", "X-Amz-Target: AmazonSSM.StartSession"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args([
            "-d",
            &format!("{{\"Target\":\"{TARGET}\"}}"),
            &sim.endpoint(),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&unsigned.stdout), "403");
    assert_eq!(sim.stats().started, 0);
}

/// A `credential_process` that hands out a new key on every call (AKIAROTATE1, 2, …), valid
/// for a minute: each dial then signs with credentials fetched for it.
fn rotating_credentials(dir: &TempDir) -> std::path::PathBuf {
    let script = dir.join("creds.sh");
    let counter = dir.join("n");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'\n\
             exp=$(date -u -d '+60 seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\":1,\"AccessKeyId\":\"AKIAROTATE%s\",\"SecretAccessKey\":\"secret-%s\",\
             \"SessionToken\":\"token-%s\",\"Expiration\":\"%s\"}}' $n $n $n $exp\n",
            c = counter.display()
        ),
    )
    .expect("script");
    let mut perm = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).expect("chmod");
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = us-east-1\ncredential_process = {}\n",
            script.display()
        ),
    )
    .expect("config");
    config
}

#[test]
fn resume_signs_with_fresh_credentials() {
    let echo = echo_server();
    let sim = Sim::start(SimConfig {
        drops: DropPlan::parse("after-bytes=200000,max=1").expect("plan"),
        keys: (1..=50)
            .map(|n| (format!("AKIAROTATE{n}"), format!("secret-{n}")))
            .collect(),
        ..Default::default()
    })
    .expect("sim");
    let dir = TempDir::new("sig-rotate");
    let config = rotating_credentials(&dir);
    let mut env: Vec<(String, String)> = sim
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"))
        .filter(|(k, _)| k != "AWS_CONFIG_FILE")
        .collect();
    env.push(("AWS_CONFIG_FILE".into(), config.display().to_string()));
    env.push(("HOME".into(), dir.path().display().to_string()));
    let data = support::random_bytes(1 << 20, 12);
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &env)
        .args([TARGET, &echo.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = support::ChildGuard(support::spawn_group(&mut cmd));
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stdout = child.0.stdout.take().expect("stdout");
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
            // Keep stdin open until the echo is complete; closing it ends the session.
            stdin
        })
    };
    let mut echoed = vec![0u8; data.len()];
    let read = std::thread::spawn(move || stdout.read_exact(&mut echoed).map(|_| echoed));
    let ok = support::wait_until(60, || read.is_finished());
    assert!(ok, "echo not complete within 60 s");
    let echoed = read.join().expect("reader").expect("echo");
    drop(writer.join().expect("writer"));
    assert_eq!(support::sha256(&echoed), support::sha256(&data));
    assert!(
        support::wait_bounded(&mut child.0, 10).is_some(),
        "proxy did not exit"
    );
    let stats = sim.stats();
    assert!(stats.drops >= 1 && stats.resumed >= 1, "{stats:?}");
    let signers = sim.service().signers();
    assert!(signers.len() >= 2, "{signers:?}");
    assert!(
        signers.windows(2).all(|w| w[0] != w[1]),
        "a resume reused the first credentials: {signers:?}"
    );
}

#[test]
fn idle_timeout_ends_a_forward_without_a_new_session() {
    use crate::support::forward::{Forwarder, echo_round_trip};
    let sim = Sim::start(SimConfig {
        idle_timeout: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    })
    .expect("sim");
    let mut fwd = Forwarder::start(&sim, &format!("0:{}", echo_server()));
    let (sent, got) = echo_round_trip(fwd.connect(), 64 << 10, 5);
    assert_eq!(sent, got);
    let status = support::wait_bounded(&mut fwd.child.0, 20).expect("forward still running");
    assert_eq!(status.code(), Some(0), "{}", fwd.stderr_text());
    let stats = sim.stats();
    assert_eq!(stats.started, 1, "a new session was started: {stats:?}");
    assert!(
        fwd.stderr_text()
            .contains("Exiting session with sessionId: "),
        "{}",
        fwd.stderr_text()
    );
    assert_eq!(sim.active_sessions(), 0);
}

/// `ssm-proxy sim` as shipped: loopback only unless told otherwise, a fresh secret each run,
/// and no commands run for a target that was not allowed to.
#[test]
fn the_shipped_simulator_is_loopback_only_keyed_and_runs_no_commands_unless_told() {
    let out = support::proxy_run(&[], &["sim", "--listen", "0.0.0.0:0"], 10);
    let line = support::one_line_failure(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line.contains("--unsafe-non-loopback"), "{line}");

    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &[])
        .args(["sim", "--allow-commands", "i-00000000000000001"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sim = support::ChildGuard(support::spawn_group(&mut cmd));
    let stdout = sim.0.stdout.take().expect("stdout");
    let mut env = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("sim output");
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            env.push((k.to_owned(), v.to_owned()));
            if k == "SSM_PROXY_SSMMESSAGES_ENDPOINT" {
                break;
            }
        }
    }
    let secret = env.iter().find(|(k, _)| k == "AWS_SECRET_ACCESS_KEY");
    let secret = secret.map(|(_, v)| v.as_str()).expect("secret printed");
    assert_ne!(
        secret,
        ssm_proxy::sim::SECRET_KEY,
        "the secret is the public one"
    );
    let home = TempDir::new("sim-home");
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = support::proxy_run(&env, &["shell", TARGET, "--", "true"], 10);
    let line = support::one_line_failure(&out);
    assert_eq!(out.status.code(), Some(77), "{line}");
    assert!(line.contains("--allow-commands"), "{line}");
    let out = support::proxy_run(&env, &["shell", "i-00000000000000001", "--", "exit 3"], 10);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}
