//! End to end: what a new user meets besides the byte stream. Reconnect notices at default
//! verbosity, a host named like a subcommand, profile messages, `--reason` in the audit trail,
//! completions in a real bash, the man page and help text, and `ssh-config` naming the command
//! as the user typed it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use ssm_proxy::sim::{DropPlan, Sim, SimConfig, SimInstance};

use crate::support::echo::echo_server;
use crate::support::{
    self, TARGET, TempDir, apply_env, proxy_bin, random_bytes, require, run_with_timeout, sha256,
};

/// Runs the binary with `env` and `args`, feeding `input` on stdin; bounded to `secs`.
fn run(env: &[(String, String)], args: &[&str], input: &[u8], secs: u64) -> Output {
    let dir = TempDir::new("polish-in");
    let path = dir.join("stdin");
    std::fs::write(&path, input).expect("write stdin");
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, env)
        .args(args)
        .stdin(std::fs::File::open(&path).expect("open stdin"));
    run_with_timeout(&mut cmd, secs)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Environment with an empty HOME, so no real `~/.aws` interferes.
fn sim_env(sim: &Sim, home: &TempDir) -> Vec<(String, String)> {
    let mut env = sim.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    env
}

/// Echoes 512 KiB through `ssm-proxy FLAGS TARGET PORT` while the simulator drops the websocket
/// once; checks the bytes and the drop, returns stderr.
fn echo_across_a_drop(flags: &[&str]) -> String {
    let sim = Sim::start(SimConfig {
        drops: DropPlan::parse("after-bytes=300000,max=1").expect("plan"),
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("polish-home");
    let port = echo_server().to_string();
    let input = random_bytes(512 << 10, 16);
    let args: Vec<&str> = flags.iter().copied().chain([TARGET, &port]).collect();
    let out = run(&sim_env(&sim, &home), &args, &input, 60);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    // stdout is the byte stream and nothing else.
    assert_eq!(sha256(&out.stdout), sha256(&input), "stderr: {stderr}");
    assert_eq!(sim.stats().drops, 1);
    stderr
}

#[test]
fn reconnect_notices_go_to_stderr_at_default_verbosity() {
    let stderr = echo_across_a_drop(&[]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "only the two notices: {stderr}");
    assert!(
        lines[0].starts_with("ssm-proxy: reconnecting to Session Manager (connection lost "),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("ssm-proxy: reconnected after "),
        "{stderr}"
    );
}

#[test]
fn quiet_hides_reconnect_notices() {
    let stderr = echo_across_a_drop(&["-q"]);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_host_named_like_a_subcommand_is_a_target_in_proxycommand_position() {
    let mut fleet = ssm_proxy::sim::fleet::default_fleet();
    for name in ["doctor", "ssh-config", "shell"] {
        let n = fleet.len();
        fleet.push(SimInstance::parse(&format!("i-00000000000000{n:03},name={name}")).unwrap());
    }
    let sim = Sim::start(SimConfig {
        fleet,
        ..Default::default()
    })
    .expect("sim");
    let home = TempDir::new("polish-home");
    let port = echo_server().to_string();
    for name in ["doctor", "ssh-config", "shell"] {
        // What ssh runs for `ssh NAME` with `ProxyCommand ssm-proxy %h %p`.
        let out = run(
            &sim_env(&sim, &home),
            &[name, &port],
            b"through the session\n",
            20,
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "through the session\n", "{name}");
    }
    // Options before the host keep working.
    let out = run(
        &sim_env(&sim, &home),
        &["--no-cache", "doctor", &port],
        b"x",
        20,
    );
    assert_eq!(text(&out.stdout), "x", "{}", text(&out.stderr));
    // A target before a subcommand is a mistake, not silently dropped.
    let out = run(&sim_env(&sim, &home), &["web-1", "doctor"], b"", 5);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("ssm-proxy doctor"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_profile_that_does_not_exist_says_so() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("polish-home");
    let out = run(
        &sim_env(&sim, &home),
        &["--profile", "nosuch", TARGET, "22"],
        b"",
        5,
    );
    let line = support::one_line_failure(&out);
    assert!(
        line.contains("AWS profile \"nosuch\" does not exist"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(sim.stats().started, 0);
    // The same through AWS_PROFILE, and in doctor.
    let mut env = sim_env(&sim, &home);
    env.push(("AWS_PROFILE".into(), "nosuch".into()));
    let out = run(&env, &["doctor"], b"", 10);
    let report = text(&out.stdout);
    assert!(
        report.contains("info  profile: nosuch (AWS_PROFILE)"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  profile: AWS profile \"nosuch\""),
        "{report}"
    );
}

#[test]
fn an_sso_profile_without_a_login_names_the_profile_in_the_fix() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("polish-home");
    let config = home.join("config");
    std::fs::write(
        &config,
        "[profile work]\nsso_session = corp\nsso_account_id = 123456789012\n\
         sso_role_name = Admin\nregion = us-east-1\n\n[sso-session corp]\n\
         sso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n",
    )
    .unwrap();
    let mut env: Vec<(String, String)> = sim_env(&sim, &home)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"))
        .filter(|(k, _)| k != "AWS_CONFIG_FILE")
        .collect();
    env.push(("AWS_CONFIG_FILE".into(), config.display().to_string()));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let out = run(&env, &["--profile", "work", TARGET, "22"], b"", 10);
    let line = support::one_line_failure(&out);
    assert!(line.contains("aws sso login --profile work"), "{line}");
    assert_eq!(out.status.code(), Some(77));
    // doctor shows the profile, the region's source and the credential source.
    let out = run(&sim_env(&sim, &home), &["doctor"], b"", 10);
    let report = text(&out.stdout);
    assert!(
        report.contains("info  profile: default (neither"),
        "{report}"
    );
    assert!(
        report.contains("region: us-east-1 (from AWS_REGION)"),
        "{report}"
    );
    assert!(
        report.contains("credentials: from the Environment"),
        "{report}"
    );
}

#[test]
fn reason_reaches_start_session_and_the_simulator_records_it() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("polish-home");
    let port = echo_server().to_string();
    let out = run(
        &sim_env(&sim, &home),
        &["--reason", "ec2-user@web-1 (OPS-42)", TARGET, &port],
        b"hi",
        20,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hi");
    let reasons = sim.service().reasons();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0].1, "ec2-user@web-1 (OPS-42)");
    // Over 256 characters: refused before any call, like the API would.
    let long = "x".repeat(257);
    let out = run(
        &sim_env(&sim, &home),
        &["--reason", &long, TARGET, "22"],
        b"",
        5,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(sim.stats().started, 1);
    // ssh-config writes a pattern ssh fills in.
    let out = run(&sim_env(&sim, &home), &["ssh-config", "--reason"], b"", 5);
    assert!(
        text(&out.stdout).contains(" --reason %r@%h %h %p\n"),
        "{}",
        text(&out.stdout)
    );
}

/// Completion candidates bash offers for `words` (the last one being completed).
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <({bin:?} completions bash) || exit 3\n\
         complete -p ssm-proxy >/dev/null || exit 4\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         _ssm__proxy ssm-proxy \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        bin = proxy_bin().display().to_string(),
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
    );
    let out = run_with_timeout(Command::new("bash").arg("-c").arg(script), 10);
    assert!(out.status.success(), "bash: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_subcommand_options_without_hidden_ones() {
    let forward = bash_complete(&["ssm-proxy", "forward", "--"]);
    for want in [
        "--local",
        "--resume-timeout",
        "--reason",
        "--profile",
        "--verbose",
    ] {
        assert!(forward.iter().any(|w| w == want), "{want} in {forward:?}");
    }
    assert!(!forward.iter().any(|w| w == "--offline"), "{forward:?}");
    let top = bash_complete(&["ssm-proxy", "--"]);
    assert!(top.iter().any(|w| w == "--document"), "{top:?}");
    assert!(
        !top.iter()
            .any(|w| w == "--max-payload" || w == "--dead-after"),
        "hidden options offered: {top:?}"
    );
    let sim = bash_complete(&["ssm-proxy", "sim", "--"]);
    assert!(sim.iter().any(|w| w == "--offline"), "{sim:?}");
    assert!(
        !sim.iter().any(|w| w == "--profile"),
        "AWS options in sim: {sim:?}"
    );
    let subcommands = bash_complete(&["ssm-proxy", "ss"]);
    assert!(
        subcommands.iter().any(|w| w == "ssh-config"),
        "{subcommands:?}"
    );
}

#[test]
fn zsh_and_fish_load_their_completions() {
    for shell in ["zsh", "fish"] {
        let found = Command::new(shell)
            .arg("-c")
            .arg("exit 0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !require(found, shell) {
            continue;
        }
        let script = match shell {
            "zsh" => format!(
                "autoload -U compinit && compinit -u; source <({:?} completions zsh) && \
                 (( $+functions[_ssm-proxy] ))",
                proxy_bin().display().to_string()
            ),
            _ => format!(
                "{:?} completions fish | source; complete -C 'ssm-proxy forward --' ",
                proxy_bin().display().to_string()
            ),
        };
        let out = run_with_timeout(Command::new(shell).arg("-c").arg(script), 20);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        if shell == "fish" {
            let offered = text(&out.stdout);
            assert!(offered.contains("--local"), "{offered}");
            assert!(!offered.contains("--max-payload"), "{offered}");
        }
    }
}

#[test]
fn man_page_has_environment_exit_status_and_no_missing_pages() {
    let out = run(&[], &["man"], b"", 5);
    assert!(out.status.success());
    let page = text(&out.stdout);
    for section in [
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH COMMANDS",
        ".SH EXAMPLES",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    assert!(!page.contains("(1)"), "refers to pages that do not exist");
    // Examples keep their lines: no filling.
    let examples = page.split(".SH EXAMPLES").nth(1).unwrap();
    assert!(examples.starts_with("\n.PP\n.nf\n"), "{examples}");
    assert!(examples.contains("\n  Host i\\-* mi\\-*\n"), "{examples}");
    assert!(page.contains("\\fB77\\fR"));
}

#[test]
fn help_text_matches_behaviour() {
    let help = |args: &[&str]| text(&run(&[], args, b"", 5).stdout);
    let top = help(&["--help"]);
    assert!(
        !top.contains("[TARGET] [PORT] <COMMAND>"),
        "confusing usage line: {top}"
    );
    assert!(top.contains("ssm-proxy [OPTIONS] TARGET [PORT]"), "{top}");
    for sub in ["sim", "man", "completions"] {
        let h = help(&[sub, "--help"]);
        assert!(!h.contains("--profile"), "{sub} offers AWS options: {h}");
    }
    assert!(
        !help(&["shell", "--help"]).contains("docs/"),
        "refers to a repo file"
    );
    assert!(help(&["forward", "--help"]).contains("a Name tag value"));
    assert!(
        !top.contains("protocol trace"),
        "-vvv promises a protocol trace"
    );
    // Options given before a subcommand still count for it.
    let out = run(&[], &["--profile", "nosuch", "doctor"], b"", 10);
    assert!(
        text(&out.stdout).contains("profile: nosuch (--profile)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn ssh_config_names_the_command_as_invoked() {
    let dir = TempDir::new("polish-path");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(proxy_bin(), bin.join("ssm-proxy")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    // The bare name, found on PATH.
    let out = run_with_timeout(
        Command::new("ssm-proxy")
            .env("PATH", &path)
            .arg("ssh-config")
            .stdin(Stdio::null()),
        5,
    );
    let block = text(&out.stdout);
    assert!(
        block.contains("\n    ProxyCommand ssm-proxy %h %p\n"),
        "{block}"
    );
    // The symlink by its path: not resolved to the build directory.
    let out = run_with_timeout(
        Command::new(bin.join("ssm-proxy"))
            .arg("ssh-config")
            .stdin(Stdio::null()),
        5,
    );
    let block = text(&out.stdout);
    let want = format!("ProxyCommand {} %h %p", bin.join("ssm-proxy").display());
    assert!(block.contains(&want), "{block}");
}

#[test]
fn simulator_environment_works_for_aws_cli_v1_and_v2() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let env = sim.env();
    assert!(
        env.iter()
            .any(|(k, v)| k == "AWS_DEFAULT_REGION" && v == "us-east-1")
    );
    let has_aws = Command::new("aws")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !require(has_aws, "the AWS CLI") {
        return;
    }
    // Only what the sim prints: no AWS_REGION for CLI v1 (it reads AWS_DEFAULT_REGION).
    let home = TempDir::new("polish-home");
    let mut cmd = Command::new("aws");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path());
    apply_env(&mut cmd, &env)
        .args([
            "ssm",
            "describe-instance-information",
            "--query",
            "InstanceInformationList[].InstanceId",
            "--output",
            "text",
        ])
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, 60);
    assert!(out.status.success(), "aws: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(TARGET), "{}", text(&out.stdout));
    let _ = std::io::stderr().flush();
}

#[test]
fn a_closed_stdout_ends_the_session_without_waiting_for_stdin() {
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("polish-home");
    let port = echo_server().to_string();
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim_env(&sim, &home))
        .args([TARGET, &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = support::spawn_group(&mut cmd);
    // stdin stays open (held here) while the reader of stdout goes away once a session is up.
    let stdin = child.stdin.take();
    assert!(support::wait_until(10, || sim.active_sessions() == 1));
    drop(child.stdout.take());
    let status = support::wait_bounded(&mut child, 5);
    drop(stdin);
    let status = status.expect("still running 5 s after its stdout closed");
    assert!(status.success(), "{status}");
    assert!(support::wait_until(5, || sim.active_sessions() == 0));
}

#[test]
fn the_log_file_is_owner_only_and_never_written_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let sim = Sim::start(SimConfig::default()).expect("sim");
    let home = TempDir::new("polish-home");
    let log = home.join("proxy.log");
    let env = sim_env(&sim, &home);
    let out = run(
        &env,
        &["-v", "--log-file", &log.display().to_string(), TARGET, "1"],
        b"",
        10,
    );
    assert!(!out.status.success());
    let mode = std::fs::metadata(&log)
        .expect("log written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let victim = home.join("victim");
    std::fs::write(&victim, "untouched").expect("victim");
    let link = home.join("link.log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let out = run(
        &env,
        &["--log-file", &link.display().to_string(), TARGET, "1"],
        b"",
        10,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot write the log file"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "untouched"
    );
}
