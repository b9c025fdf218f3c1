//! End to end: targets by name (`ssh web-1`), by `tag:KEY=VALUE` and by host alias
//! (`web-1.PROFILE.REGION`), resolved through the simulator's DescribeInstanceInformation; the
//! on-disk cache and `--no-cache`; and the errors for no match, several matches and offline
//! agents.

use std::fs;

use ssm_proxy::sim::{SimConfig, SimInstance};

use crate::support::{
    Fixture, TARGET, TempDir, one_line_failure, proxy_command, proxy_run, run_ok, run_with_timeout,
};

/// Bound for one ssh run.
const SSH_BOUND: u64 = 30;
/// Bound for one failing ssm-proxy run.
const FAIL_BOUND: u64 = 10;

/// The fixture's environment with `set` added (later entries win).
fn env_with(fx: &Fixture, set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = fx.env();
    env.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn ssh_echo(fx: &Fixture, proxy_args: &str, host: &str) -> String {
    let mut cmd = fx
        .sshd
        .ssh_cmd_via(&proxy_command(proxy_args), host, &fx.env());
    cmd.arg("echo ok");
    let out = run_ok(&mut cmd, SSH_BOUND);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn name_lookup_is_cached_for_a_minute() {
    let fx = Fixture::new();
    assert_eq!(ssh_echo(&fx, "", "web-1"), "ok");
    assert_eq!(
        fx.sim.stats().describes,
        1,
        "one lookup for the first connection"
    );
    let cache = fx.home.join(".cache/ssm-proxy/targets.json");
    let text = fs::read_to_string(&cache).expect("cache file written");
    assert!(text.contains(TARGET), "cache holds the id: {text}");
    // Its owner's alone, and no access key id in clear.
    assert!(!text.contains(ssm_proxy::sim::ACCESS_KEY), "{text}");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    };
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(cache.parent().expect("dir")), 0o700);

    assert_eq!(ssh_echo(&fx, "", "web-1"), "ok");
    assert_eq!(
        fx.sim.stats().describes,
        1,
        "second connection used the cache"
    );

    assert_eq!(ssh_echo(&fx, "--no-cache", "web-1"), "ok");
    assert_eq!(fx.sim.stats().describes, 2, "--no-cache looks up again");

    // An entry older than the TTL is not used.
    let expired = fs::read_to_string(&cache)
        .expect("cache")
        .replace("\"at\":", "\"at\":0,\"was\":");
    fs::write(&cache, expired).expect("age the cache");
    assert_eq!(ssh_echo(&fx, "", "web-1"), "ok");
    assert_eq!(fx.sim.stats().describes, 3, "expired entry looked up again");
    fx.assert_no_sessions();
}

#[test]
fn tag_lookup_and_ids_as_given() {
    let fx = Fixture::new();
    assert_eq!(ssh_echo(&fx, "", "tag:Role=web"), "ok");
    assert_eq!(fx.sim.stats().describes, 1);
    // Ids never cost a lookup.
    assert_eq!(ssh_echo(&fx, "", TARGET), "ok");
    assert_eq!(fx.sim.stats().describes, 1);
    // The other instance of the default fleet resolves too (the agent dials the same sshd).
    assert_eq!(ssh_echo(&fx, "", "tag:Role=db"), "ok");
    assert_eq!(fx.sim.stats().describes, 2);
    fx.assert_no_sessions();
}

#[test]
fn alias_carries_profile_and_region() {
    let fx = Fixture::new();
    // Credentials only in the profile named by the alias: the session works only if the alias
    // picked that profile.
    let aws = TempDir::new("alias-aws");
    let config = aws.join("config");
    let credentials = aws.join("credentials");
    fs::write(&config, "[profile simprof]\nregion = eu-west-3\n").expect("config");
    fs::write(
        &credentials,
        "[simprof]\naws_access_key_id = AKIASIMULATOR000000\naws_secret_access_key = simulator-secret\n",
    )
    .expect("credentials");
    let mut env: Vec<(String, String)> = fx
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .collect();
    env.push(("AWS_CONFIG_FILE".into(), config.display().to_string()));
    env.push((
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        credentials.display().to_string(),
    ));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let mut cmd = fx
        .sshd
        .ssh_cmd_via(&proxy_command("--alias"), "web-1.simprof.us-east-1", &env);
    cmd.arg("echo ok");
    let out = run_ok(&mut cmd, SSH_BOUND);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // The region comes from the alias (the simulator answers any region; the message names it).
    let out = proxy_run(
        &fx.env(),
        &["--alias", "nope.default.ap-south-2", "22"],
        FAIL_BOUND,
    );
    let line = one_line_failure(&out);
    assert!(line.contains("named \"nope\" in ap-south-2"), "{line}");
    assert_eq!(out.status.code(), Some(69), "{line}");

    // A malformed alias is a usage error, before any AWS call.
    let out = proxy_run(&fx.env(), &["--alias", "web-1.prod", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line.contains("TARGET.PROFILE.REGION"), "{line}");
    fx.assert_no_sessions();
}

#[test]
fn ambiguous_unknown_and_offline_names_fail_clearly() {
    let fx = Fixture::with(SimConfig {
        fleet: vec![
            SimInstance::new("i-0aaaaaaaaaaaaaaa1", "web"),
            SimInstance::new("i-0aaaaaaaaaaaaaaa2", "web").offline(),
            SimInstance::new("i-0bbbbbbbbbbbbbbb1", "old").offline(),
            SimInstance::new("i-0ccccccccccccccc1", "api").tag("Team", "x"),
            SimInstance::new("i-0ccccccccccccccc2", "api2").tag("Team", "x"),
        ],
        ..Default::default()
    });
    let env = env_with(&fx, &[]);

    let out = proxy_run(&env, &["web", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(78), "{line}");
    for part in [
        "2 managed instances named \"web\"",
        "i-0aaaaaaaaaaaaaaa1 (web, Online, agent 3.3.1957.0)",
        "i-0aaaaaaaaaaaaaaa2 (web, ConnectionLost, agent 3.3.1957.0)",
        "use the instance id",
    ] {
        assert!(line.contains(part), "missing {part:?} in {line}");
    }

    let out = proxy_run(&env, &["tag:Team=x", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert!(line.contains("2 managed instances tagged Team=x"), "{line}");

    let out = proxy_run(&env, &["old", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(69), "{line}");
    assert!(
        line.contains("i-0bbbbbbbbbbbbbbb1 named \"old\" is ConnectionLost")
            && line.contains("not Online"),
        "{line}"
    );

    let out = proxy_run(&env, &["web-9", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(69), "{line}");
    assert!(
        line.contains("no managed instance named \"web-9\" in us-east-1"),
        "{line}"
    );

    let out = proxy_run(&env, &["tag:Team", "22"], FAIL_BOUND);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line.contains("tag:KEY=VALUE"), "{line}");

    // Failed lookups are not cached, and no session was started for any of them.
    assert!(!fx.home.join(".cache/ssm-proxy/targets.json").exists());
    assert_eq!(fx.sim.stats().started, 0);

    // StartSession to an offline fleet instance by id says so too.
    let out = run_with_timeout(
        fx.sshd
            .ssh_cmd_via(&proxy_command(""), "i-0bbbbbbbbbbbbbbb1", &env)
            .arg("true"),
        SSH_BOUND,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not connected to Session Manager"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
