//! End to end: ssm-proxy as a drop-in `session-manager-plugin`. The real AWS CLI
//! (`aws ssm start-session`, pointed at the simulator) finds a `session-manager-plugin` symlink to
//! the binary on PATH and serves as ssh's ProxyCommand; plus the plugin's `--version` and
//! no-argument forms, port forwarding through `aws ssm start-session`, the positional argv
//! without the symlink, and clean hand-off failures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ssm_proxy::sim::{Sim, SimConfig};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::{
    Fixture, TARGET, TempDir, apply_env, kill_group, one_line_failure, proxy_bin, proxy_run,
    require, run_ok, run_with_timeout, wait_bounded, wait_until,
};

const BOUND: u64 = 30;

/// A directory holding `session-manager-plugin` → the binary under test.
fn plugin_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new("plugin-bin");
    let link = dir.join("session-manager-plugin");
    symlink(proxy_bin(), &link).expect("symlink");
    (dir, link)
}

/// Whether the AWS CLI runs here (it must in CI: `.ci/run` installs it).
fn aws_cli() -> bool {
    let ok = Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    require(ok, "the AWS CLI (pip install awscli)")
}

/// PATH with `dir` first.
fn path_with(dir: &TempDir) -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", dir.path().display())
}

#[test]
fn aws_start_session_through_the_drop_in_serves_ssh() {
    if !aws_cli() {
        return;
    }
    let fx = Fixture::new();
    let (dir, _) = plugin_dir();
    let mut env = fx.env();
    env.push(("PATH".into(), path_with(&dir)));
    let proxy = format!(
        "aws ssm start-session --target %h --document-name AWS-StartSSHSession \
         --parameters portNumber=%p --endpoint-url {} --region us-east-1",
        fx.sim.endpoint()
    );
    let mut cmd = fx.sshd.ssh_cmd_via(&proxy, TARGET, &env);
    cmd.arg("echo ok; echo err >&2");
    let out = run_ok(&mut cmd, 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // The official end-of-session line may still reach ssh's stderr before ssh exits.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let remote: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Exiting session with sessionId: "))
        .collect();
    assert_eq!(remote, ["err"], "{stderr}");
    assert_eq!(fx.sim.stats().started, 1);
    fx.assert_no_sessions();
}

#[test]
fn version_and_installed_forms() {
    let (_dir, link) = plugin_dir();
    let started = Instant::now();
    let out = run_ok(Command::new(&link).arg("--version"), 5);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "--version is slow"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", ssm_proxy::proto::session::CLIENT_VERSION)
    );
    // At least the oldest release AWS supports (1.2.764.0), in the CLI's `^\d+(\.\d+){0,3}$`.
    let parts: Vec<u32> = ssm_proxy::proto::session::CLIENT_VERSION
        .split('.')
        .map(|p| p.parse().expect("numeric"))
        .collect();
    assert!(parts.len() == 4 && parts >= vec![1, 2, 764, 0], "{parts:?}");
    assert!(out.stderr.is_empty());

    // The official texts, on stdout, status 0 (the ECS CLI probes the first on every call).
    let out = run_ok(&mut Command::new(&link), 5);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a \
         session.\n\n"
    );
    for args in [&["bogus"][..], &["bogus", "more"]] {
        let out = run_ok(Command::new(&link).args(args), 5);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "\nUnknown operation bogus. \nUse session-manager-plugin --version to check the \
             version.\n\n"
        );
        assert!(out.stderr.is_empty());
    }
    // Four or more arguments are a hand-off; an operation other than StartSession fails.
    let out = run_with_timeout(Command::new(&link).args(["{}", "us-east-1", "Bogus"]), 5);
    let line = one_line_failure(&out);
    assert!(line.contains("unknown operation"), "{line}");

    // The normal binary name keeps its own --version.
    let out = run_ok(Command::new(proxy_bin()).arg("--version"), 5);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssm-proxy "));
}

/// SigV4 headers for a StartSession with `body` to the simulator at `addr`, signed with the
/// key it prints (the API refuses anything else).
fn signed_start_session(addr: &str, body: &str) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let creds = aws_credential_types::Credentials::new(
        ssm_proxy::sim::ACCESS_KEY,
        ssm_proxy::sim::SECRET_KEY,
        None,
        None,
        "test",
    );
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(ssm_proxy::sim::sigv4::REGION)
        .name("ssm")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let headers = [
        ("host", addr),
        ("x-amz-target", "AmazonSSM.StartSession"),
        ("content-type", "application/x-amz-json-1.1"),
    ];
    let url = format!("http://{addr}/");
    let body = SignableBody::Bytes(body.as_bytes());
    let request = SignableRequest::new("POST", &url, headers.into_iter(), body).expect("request");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let signed = instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    signed.collect()
}

/// StartSession straight to the simulator's API, as the AWS CLI does before it hands over;
/// returns the response JSON.
fn start_session_raw(endpoint: &str, request: &str) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to the simulator");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let signature: String = signed_start_session(addr, request)
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: AmazonSSM.StartSession\r\n\
         Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n{signature}\
         Connection: close\r\n\r\n{request}",
        request.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The plugin's positional argv as the AWS CLI passes it, the response in the environment.
fn run_handed_over(env: &[(String, String)], request: &str, endpoint: &str) -> Output {
    let args = [
        "AWS_SSM_START_SESSION_RESPONSE",
        "us-east-1",
        "StartSession",
        "",
        request,
        endpoint,
    ];
    proxy_run(env, &args, BOUND)
}

#[test]
fn positional_argv_without_the_symlink() {
    let fx = Fixture::new();
    let request = format!(
        "{{\"Target\": \"{TARGET}\", \"DocumentName\": \"AWS-StartSSHSession\", \
         \"Parameters\": {{\"portNumber\": [\"{}\"]}}}}",
        fx.sshd.port()
    );
    let response = start_session_raw(&fx.sim.endpoint(), &request);
    let mut env = fx.env();
    env.push(("AWS_SSM_START_SESSION_RESPONSE".into(), response));
    let out = run_handed_over(&env, &request, &fx.sim.endpoint());
    // Local EOF at once: sshd's banner arrives, then the session ends cleanly.
    assert!(
        out.stdout.starts_with(b"SSH-2.0-"),
        "stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.assert_no_sessions();
}

#[test]
fn bad_hand_offs_fail_cleanly() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let home = TempDir::new("plugin-home");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let endpoint = sim.endpoint();
    let request =
        format!("{{\"Target\": \"{TARGET}\", \"DocumentName\": \"AWS-StartSSHSession\"}}");

    let out = proxy_run(
        &env,
        &[
            "{\"SessionId\": \"s-1\"}",
            "us-east-1",
            "StartSession",
            "",
            &request,
            &endpoint,
        ],
        10,
    );
    let line = one_line_failure(&out);
    assert!(
        line.contains("lacks SessionId, TokenValue or StreamUrl"),
        "{line}"
    );

    let response = start_session_raw(&endpoint, &request);
    let out = proxy_run(
        &env,
        &[&response, "us-east-1", "StartSession", "", "{}", &endpoint],
        10,
    );
    let line = one_line_failure(&out);
    assert!(line.contains("has no Target"), "{line}");
}

/// `SSM_PROXY_RESUME_TIMEOUT=abc` is the same usage error (exit 2, one line naming the
/// variable) in proxy mode, forward and the drop-in, whose flags and variables are parsed by
/// different code; the drop-in ends the session the AWS CLI started for it.
#[test]
fn a_bad_resume_timeout_is_a_usage_error_in_every_mode() {
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let home = TempDir::new("plugin-home");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    env.push(("SSM_PROXY_RESUME_TIMEOUT".into(), "abc".into()));
    let request =
        format!("{{\"Target\": \"{TARGET}\", \"DocumentName\": \"AWS-StartSSHSession\"}}");
    let response = start_session_raw(&sim.endpoint(), &request);
    let mut plugin_env = env.clone();
    plugin_env.push(("AWS_SSM_START_SESSION_RESPONSE".into(), response));
    let runs = [
        ("proxy", proxy_run(&env, &[TARGET, "22"], BOUND)),
        (
            "forward",
            proxy_run(&env, &["forward", TARGET, "-L", "0:22"], BOUND),
        ),
        (
            "drop-in",
            run_handed_over(&plugin_env, &request, &sim.endpoint()),
        ),
    ];
    for (mode, out) in &runs {
        let line = one_line_failure(out);
        assert_eq!(out.status.code(), Some(2), "{mode}: {line}");
        assert!(
            line.contains("SSM_PROXY_RESUME_TIMEOUT") || line.contains("--resume-timeout"),
            "{mode}: {line}"
        );
        assert!(line.contains("abc"), "{mode}: {line}");
    }
    assert!(wait_until(10, || sim.active_sessions() == 0));
}

/// `aws ssm start-session --document-name AWS-StartPortForwardingSession` through the drop-in:
/// it listens where `localPortNumber` says (0: any port), prints where like the official plugin,
/// moves bytes intact, and a signal leaves no session on the service.
#[test]
fn aws_start_session_through_the_drop_in_forwards_ports() {
    if !aws_cli() {
        return;
    }
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let (dir, _) = plugin_dir();
    let out_dir = TempDir::new("plugin-pf");
    let stdout = out_dir.join("stdout");
    let parameters = format!("portNumber={},localPortNumber=0", echo_server());
    let mut cmd = aws_start_session(
        &sim.env(),
        &dir,
        &sim.endpoint(),
        &[
            "--document-name",
            "AWS-StartPortForwardingSession",
            "--parameters",
            &parameters,
        ],
    );
    cmd.stdout(std::fs::File::create(&stdout).expect("stdout file"));
    let mut fwd = Forwarder::spawn(&mut cmd);
    for seed in 0..2 {
        let (sent, received) = echo_round_trip(fwd.connect(), 1 << 20, seed);
        assert_eq!(sent, received);
    }
    let printed = std::fs::read_to_string(&stdout).expect("stdout");
    assert!(
        printed.contains(&format!("Port {} opened for sessionId", fwd.local_port))
            && printed.contains("Waiting for connections..."),
        "{printed}"
    );
    assert_eq!(sim.stats().started, 1);
    // Ctrl-C on a terminal: the whole foreground group gets SIGINT; the AWS CLI ignores it.
    kill_group(fwd.pid(), "INT");
    assert!(
        wait_bounded(&mut fwd.child.0, 10).is_some(),
        "still running"
    );
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
}

#[test]
fn tokens_stay_out_of_trace_logs() {
    let fx = Fixture::new();
    let mut env = fx.env();
    env.push(("SSM_PROXY_LOG".into(), "trace".into()));
    let port = fx.sshd.port().to_string();
    let out = proxy_run(&env, &["-vvv", TARGET, &port], BOUND);
    assert!(out.stdout.starts_with(b"SSH-2.0-"), "no banner");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().count() > 50, "trace logging is not on: {log}");
    assert!(!log.contains("sim-token"), "a token reached the log");

    // The plugin entry, whose response (token included) comes in through the environment.
    let request = format!(
        "{{\"Target\": \"{TARGET}\", \"DocumentName\": \"AWS-StartSSHSession\", \
         \"Parameters\": {{\"portNumber\": [\"{port}\"]}}}}"
    );
    let response = start_session_raw(&fx.sim.endpoint(), &request);
    assert!(response.contains("sim-token"));
    env.push(("AWS_SSM_START_SESSION_RESPONSE".into(), response));
    let out = run_handed_over(&env, &request, &fx.sim.endpoint());
    assert!(out.stdout.starts_with(b"SSH-2.0-"), "no banner");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("sim-token"), "a token reached the log");
    fx.assert_no_sessions();
}

/// `aws ssm start-session` with a command document, and with no document (a shell fed from a
/// pipe), through the drop-in.
#[test]
fn aws_start_session_through_the_drop_in_runs_commands_and_shells() {
    if !aws_cli() {
        return;
    }
    let sim = Sim::start(SimConfig {
        shell_output_delay: Duration::ZERO,
        shell: Some("/bin/sh".into()),
        ..Default::default()
    })
    .expect("simulator");
    let (dir, _) = plugin_dir();
    let home = TempDir::new("plugin-shell");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let aws = |extra: &[&str], stdin: Stdio| aws_session(&env, &dir, &sim.endpoint(), extra, stdin);

    let out = aws(
        &[
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            // Without separateOutputStream the agent merges stderr into the output.
            r#"{"command": ["echo from-command; echo to-stderr >&2"], "separateOutputStream": ["true"]}"#,
        ],
        Stdio::null(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("from-command"), "{stdout}");
    assert!(
        !stdout.contains("to-stderr"),
        "stderr mixed into stdout: {stdout}"
    );

    let script = TempDir::new("plugin-script");
    let input = script.join("in.sh");
    std::fs::write(&input, "echo from-shell-$((6*7))\nexit\n").expect("script");
    let out = aws(&[], Stdio::from(std::fs::File::open(&input).expect("open")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from-shell-42"), "{out:?}");
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
}

/// `aws ssm start-session --target TARGET EXTRA… --endpoint-url ENDPOINT --region us-east-1`
/// in `env`, with the drop-in in `plugin` first on PATH.
fn aws_start_session(
    env: &[(String, String)],
    plugin: &TempDir,
    endpoint: &str,
    extra: &[&str],
) -> Command {
    let mut env = env.to_vec();
    env.push(("PATH".into(), path_with(plugin)));
    let mut cmd = Command::new("aws");
    apply_env(&mut cmd, &env);
    cmd.args(["ssm", "start-session", "--target", TARGET])
        .args(extra)
        .args(["--endpoint-url", endpoint, "--region", "us-east-1"]);
    cmd
}

/// [`aws_start_session`] run to its end, stdin from `stdin`.
fn aws_session(
    env: &[(String, String)],
    plugin: &TempDir,
    endpoint: &str,
    extra: &[&str],
    stdin: Stdio,
) -> Output {
    let mut cmd = aws_start_session(env, plugin, endpoint, extra);
    run_with_timeout(cmd.stdin(stdin), BOUND)
}

/// A simulator whose target serves its port 22 with a real sshd (on another local port), and
/// that knows `documents`.
fn ssh_fixture(documents: Vec<(String, serde_json::Value)>) -> Fixture {
    let sshd = crate::support::Sshd::start();
    let sim = Sim::start(SimConfig {
        target_ports: vec![(22, sshd.port())],
        documents,
        ..Default::default()
    })
    .expect("simulator");
    Fixture {
        sim,
        sshd,
        home: TempDir::new("plugin-home"),
    }
}

/// `aws ssm start-session --document-name AWS-StartSSHSession` without `--parameters`: the
/// service fills in the document's default port (22), and only the agent's handshake (Port,
/// no `type`) says that this is an SSH byte stream. Also a custom SSH document whose request
/// has no `portNumber` at all.
#[test]
fn ssh_documents_without_parameters_follow_the_handshake() {
    if !aws_cli() {
        return;
    }
    let corp_ssh = serde_json::json!({
        "schemaVersion": "1.0",
        "sessionType": "Port",
        "parameters": {"portNumber": {"type": "String", "default": "22"}},
        "properties": {"portNumber": "{{ portNumber }}"}
    });
    let fx = ssh_fixture(vec![("Corp-SSH".into(), corp_ssh)]);
    let (dir, _) = plugin_dir();
    let mut env = fx.env();
    env.push(("PATH".into(), path_with(&dir)));
    for document in ["AWS-StartSSHSession", "Corp-SSH"] {
        let proxy = format!(
            "aws ssm start-session --target %h --document-name {document} --endpoint-url {} \
             --region us-east-1",
            fx.sim.endpoint()
        );
        let mut cmd = fx.sshd.ssh_cmd_via(&proxy, TARGET, &env);
        cmd.arg("echo ok");
        let out = run_ok(&mut cmd, 60);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{document}"
        );
    }
    assert_eq!(fx.sim.stats().started, 2);
    fx.assert_no_sessions();
}

/// Custom port-forwarding document: `localPortNumber` comes from the handshake's Properties
/// (the document's default here; the request carries no parameters).
#[test]
fn custom_forwarding_document_listens_where_its_properties_say() {
    if !aws_cli() {
        return;
    }
    let echo = echo_server();
    let local = crate::support::sshd::free_port();
    let doc = serde_json::json!({
        "schemaVersion": "1.0",
        "sessionType": "Port",
        "parameters": {
            "portNumber": {"type": "String", "default": echo.to_string()},
            "localPortNumber": {"type": "String", "default": local.to_string()}
        },
        "properties": {
            "portNumber": "{{ portNumber }}",
            "type": "LocalPortForwarding",
            "localPortNumber": "{{ localPortNumber }}"
        }
    });
    let sim = Sim::start(SimConfig {
        documents: vec![("Corp-Forward".into(), doc)],
        ..Default::default()
    })
    .expect("simulator");
    let (dir, _) = plugin_dir();
    let mut cmd = aws_start_session(
        &sim.env(),
        &dir,
        &sim.endpoint(),
        &["--document-name", "Corp-Forward"],
    );
    let mut fwd = Forwarder::spawn(cmd.stdout(Stdio::null()));
    assert_eq!(fwd.local_port, local, "{}", fwd.stderr_text());
    let (sent, received) = echo_round_trip(fwd.connect(), 1 << 20, 7);
    assert_eq!(sent, received);
    kill_group(fwd.pid(), "INT");
    assert!(wait_bounded(&mut fwd.child.0, 10).is_some());
    assert!(wait_until(10, || sim.active_sessions() == 0));
}

/// Custom shell and command documents of each session type run as what the agent says they
/// are: Standard_Stream and InteractiveCommands on the terminal handling, NonInteractiveCommands
/// on pipes with stderr apart.
#[test]
fn custom_shell_and_command_documents_run_as_their_session_type() {
    if !aws_cli() {
        return;
    }
    let command = |session_type: &str| {
        serde_json::json!({
            "schemaVersion": "1.0",
            "sessionType": session_type,
            "parameters": {"command": {"type": "String", "default": "echo from-$((6*7)); echo to-stderr >&2"}},
            "properties": {"linux": {"commands": "{{ command }}", "separateOutputStream": "true"}}
        })
    };
    let sim = Sim::start(SimConfig {
        shell_output_delay: Duration::ZERO,
        shell: Some("/bin/sh".into()),
        documents: vec![
            (
                "Corp-Shell".into(),
                serde_json::json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream"}),
            ),
            ("Corp-Interactive".into(), command("InteractiveCommands")),
            ("Corp-Command".into(), command("NonInteractiveCommands")),
        ],
        ..Default::default()
    })
    .expect("simulator");
    let (dir, _) = plugin_dir();
    let home = TempDir::new("plugin-custom");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let script = home.join("in.sh");
    std::fs::write(&script, "echo from-shell-$((6*7))\nexit\n").expect("script");
    let stdin = || Stdio::from(std::fs::File::open(&script).expect("open"));
    let endpoint = sim.endpoint();

    let out = aws_session(
        &env,
        &dir,
        &endpoint,
        &["--document-name", "Corp-Shell"],
        stdin(),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-shell-42"),
        "{out:?}"
    );

    // On the remote pty, stderr is merged into the output.
    let out = aws_session(
        &env,
        &dir,
        &endpoint,
        &["--document-name", "Corp-Interactive"],
        Stdio::null(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("from-42") && stdout.contains("to-stderr"),
        "{out:?}"
    );

    let out = aws_session(
        &env,
        &dir,
        &endpoint,
        &["--document-name", "Corp-Command"],
        Stdio::null(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("from-42"), "{out:?}");
    assert!(
        !stdout.contains("to-stderr"),
        "stderr mixed into stdout: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to-stderr"),
        "{out:?}"
    );
    assert!(wait_until(10, || sim.active_sessions() == 0));
}

/// The drop-in's port forwarding ends when the service ends the session (idle timeout): status
/// 0 and the official line, and no new session started behind the administrator's back.
#[test]
fn idle_timeout_ends_the_drop_ins_forward_without_a_new_session() {
    if !aws_cli() {
        return;
    }
    let sim = Sim::start(SimConfig {
        idle_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .expect("simulator");
    let (dir, _) = plugin_dir();
    let parameters = format!("portNumber={},localPortNumber=0", echo_server());
    let mut cmd = aws_start_session(
        &sim.env(),
        &dir,
        &sim.endpoint(),
        &[
            "--document-name",
            "AWS-StartPortForwardingSession",
            "--parameters",
            &parameters,
        ],
    );
    let mut fwd = Forwarder::spawn(cmd.stdout(Stdio::null()));
    let (sent, received) = echo_round_trip(fwd.connect(), 64 << 10, 3);
    assert_eq!(sent, received);
    let status =
        wait_bounded(&mut fwd.child.0, 20).expect("still forwarding after the idle timeout");
    assert_eq!(status.code(), Some(0), "{}", fwd.stderr_text());
    assert!(
        fwd.stderr_text()
            .contains("Exiting session with sessionId: "),
        "{}",
        fwd.stderr_text()
    );
    // Nothing listens any more, and the service saw one session only.
    assert!(TcpStream::connect(("127.0.0.1", fwd.local_port)).is_err());
    assert_eq!(sim.stats().started, 1, "{:?}", sim.stats());
    assert_eq!(sim.active_sessions(), 0);
}

/// A `channel_closed` with a reason, as the official plugin shows it: `SessionId: ID : REASON`
/// (on stderr: stdout is ssh's), status 0.
#[test]
fn channel_closed_with_a_reason_is_shown_and_ends_with_status_0() {
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = placeholder.local_addr().expect("addr").port();
    drop(placeholder);
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let home = TempDir::new("plugin-closed");
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let request = format!(
        "{{\"Target\": \"{TARGET}\", \"DocumentName\": \"AWS-StartSSHSession\", \
         \"Parameters\": {{\"portNumber\": [\"{closed}\"]}}}}"
    );
    let response = start_session_raw(&sim.endpoint(), &request);
    let id = serde_json::from_str::<serde_json::Value>(&response).expect("json")["SessionId"]
        .as_str()
        .expect("id")
        .to_owned();
    env.push(("AWS_SSM_START_SESSION_RESPONSE".into(), response));
    let out = run_handed_over(&env, &request, &sim.endpoint());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "SessionId: {id} : Unable to connect to specified port"
        )),
        "{stderr}"
    );
    assert!(wait_until(10, || sim.active_sessions() == 0));
}

/// Against the real agent code: what it sends for AWS-StartSSHSession without parameters (Port,
/// Properties `{"portNumber": "22"}`, no `type`) makes the drop-in relay a byte stream. Port 22
/// of this machine is served by the test (or by whatever SSH server already listens there).
#[test]
fn realagent_ssh_document_without_parameters_is_a_byte_stream() {
    if !aws_cli() {
        return;
    }
    let own = match std::net::TcpListener::bind("127.0.0.1:22") {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => {
            require(false, &format!("binding 127.0.0.1:22 ({e}): run as root"));
            return;
        }
    };
    if let Some(l) = own {
        std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                let _ = conn.write_all(b"SSH-2.0-ssm-proxy-test\r\n");
                let _ = conn.read_to_end(&mut Vec::new());
            }
        });
    }
    let agent = crate::support::realagent::RealAgent::start(&[]);
    let (dir, _) = plugin_dir();
    let home = TempDir::new("plugin-realagent");
    let mut env = agent.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = aws_session(
        &env,
        &dir,
        &agent.endpoint,
        &["--document-name", "AWS-StartSSHSession"],
        Stdio::null(),
    );
    assert!(
        out.stdout.starts_with(b"SSH-2.0-"),
        "no SSH banner on stdout: {out:?}"
    );
    assert!(out.status.success(), "{out:?}");
    let sessions = agent.sessions();
    let session = &sessions[0];
    assert_eq!(session["Plugin"], "Port", "{sessions}");
    assert_eq!(
        session["Properties"],
        serde_json::json!({"portNumber": "22"}),
        "{sessions}"
    );
}
