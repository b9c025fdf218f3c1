//! End to end: ECS Exec. The real AWS CLI's `aws ecs execute-command` through the drop-in
//! (camelCase hand-off, ECS endpoint in argv[6], KMS context with the `ecs:` target, a resume
//! that must reach the SSM endpoint), `ssm-proxy shell ecs:…` by task id and by service name,
//! `ssm-proxy forward ecs:…` carrying 8 MiB, and the one-line errors users hit.

use std::os::unix::fs::symlink;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ssm_proxy::sim::{DropPlan, Sim, SimConfig, SimTask};

use crate::support::forward::{Forwarder, echo_round_trip, echo_server};
use crate::support::{
    TempDir, apply_env, one_line_failure, proxy_bin, proxy_run, require, run_with_timeout,
    wait_until,
};

const BOUND: u64 = 30;
/// The default simulator's task (cluster `sim`, service `web`, container `app`).
const TASK: &str = "0123456789abcdef0123456789abcdef";

fn sim(tasks: Vec<SimTask>, configure: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut config = SimConfig {
        shell_output_delay: Duration::ZERO,
        shell: Some("/bin/sh".into()),
        ecs_tasks: tasks,
        ..Default::default()
    };
    configure(&mut config);
    Sim::start(config).expect("simulator")
}

fn web_task() -> SimTask {
    SimTask::new("sim", TASK, Some("web"))
}

fn shell(sim: &Sim, args: &[&str]) -> Output {
    let mut all = vec!["shell"];
    all.extend_from_slice(args);
    proxy_run(&sim.env(), &all, BOUND)
}

#[test]
fn aws_ecs_execute_command_through_the_drop_in() {
    let ok = Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(ok, "the AWS CLI (pip install awscli)") {
        return;
    }
    // KMS on (the context must carry the ecs: target) and one websocket drop (ResumeSession
    // must go to the SSM endpoint, not to the ECS one the CLI hands over).
    let sim = sim(vec![web_task()], |c| {
        c.kms_key = Some("alias/ecs-exec".into());
        c.drops = DropPlan::parse("after-bytes=40,max=1").expect("drops");
    });
    let dir = TempDir::new("ecs-plugin-bin");
    symlink(proxy_bin(), dir.join("session-manager-plugin")).expect("symlink");
    let mut env = sim.env();
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".into(), format!("{}:{path}", dir.path().display())));
    env.push(("HOME".into(), dir.path().display().to_string()));
    let aws = |command: &str| {
        let mut cmd = Command::new("aws");
        apply_env(&mut cmd, &env)
            .args(["ecs", "execute-command", "--cluster", "sim", "--task", TASK])
            .args(["--container", "app", "--interactive", "--command", command])
            .args(["--region", "us-east-1"])
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, BOUND)
    };
    let out = aws(r#"sh -c "echo from-ecs-$((6*7)); sleep 1; echo after-resume; exit 5""#);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("from-ecs-42"), "{out:?}");
    assert!(stdout.contains("after-resume"), "{out:?}");
    // The agent sends no ExitCode for InteractiveCommands (the real one neither, checked with
    // ../shared/realagent): the session ends normally, and so do we and the AWS CLI.
    assert!(out.status.success(), "{out:?}");
    assert!(!stderr.contains("tokenValue"), "{stderr}");
    let stats = sim.stats();
    assert_eq!(stats.started, 1);
    assert_eq!(stats.encrypted, 1, "the session was not KMS-encrypted");
    assert!(
        stats.resumed >= 1,
        "no ResumeSession reached SSM: {stats:?}"
    );
    assert_eq!(
        sim.service().misrouted(),
        0,
        "an SSM call went to the ECS endpoint"
    );
    assert!(
        wait_until(10, || sim.active_sessions() == 0),
        "session left on the service"
    );
}

#[test]
fn shell_ecs_by_task_id_and_by_service_name() {
    let second = "fedcba9876543210fedcba9876543210";
    let sim = sim(
        vec![web_task(), SimTask::new("sim", second, Some("web"))],
        |_| {},
    );
    let out = shell(
        &sim,
        &[&format!("ecs:sim/{TASK}/app"), "--", "echo by-id-$((6*7))"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by-id-42"),
        "{out:?}"
    );

    // A service name: its first running task, named at -v.
    let out = shell(&sim, &["-v", "ecs:sim/web", "--", "echo", "by service"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by service"),
        "{out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("first running task")
            && stderr.contains(TASK)
            && stderr.contains("running=2"),
        "{stderr}"
    );
    // An interactive shell fed from a pipe (the default command, /bin/sh).
    let mut cmd = Command::new(proxy_bin());
    let script = TempDir::new("ecs-shell");
    std::fs::write(script.join("in.sh"), "echo piped-$((6*7))\nexit\n").expect("script");
    apply_env(&mut cmd, &sim.env())
        .args(["shell", "ecs:sim/web/app"])
        .stdin(std::fs::File::open(script.join("in.sh")).expect("open"));
    let out = run_with_timeout(&mut cmd, BOUND);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("piped-42"),
        "{out:?}"
    );
    assert_eq!(sim.stats().started, 3);
    assert!(wait_until(10, || sim.active_sessions() == 0));
}

#[test]
fn forward_to_an_ecs_container_carries_8_mib() {
    let sim = sim(vec![web_task()], |_| {});
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &sim.env())
        .args([
            "forward",
            "ecs:sim/web",
            "-L",
            &format!("0:{}", echo_server()),
        ])
        .stdout(Stdio::null());
    let fwd = Forwarder::spawn(&mut cmd);
    let (sent, received) = echo_round_trip(fwd.connect(), 8 << 20, 15);
    assert_eq!(sent, received);
    let target = format!("ecs:sim_{TASK}_{TASK}-1000");
    assert!(fwd.stderr_text().contains(&target), "{}", fwd.stderr_text());
}

#[test]
fn ecs_failures_are_one_line_each() {
    let id = |n: u8| format!("{n:032x}");
    let tasks = vec![
        web_task(),
        SimTask::new("sim", &id(1), None).exec_disabled(),
        SimTask::new("sim", &id(2), None).agent_stopped(),
        SimTask::new("sim", &id(3), None).status("STOPPED"),
        SimTask::new("sim", &id(4), None).container("sidecar"),
        SimTask::new("sim", &id(5), None),
    ];
    let web_target = format!("ecs:sim_{TASK}_{TASK}-1000");
    let sim = sim(tasks, |c| c.denied = vec![id(5), web_target.clone()]);
    let cases = [
        (
            format!("ecs:sim/{}", id(1)),
            "execute-command is not enabled on ECS task",
            78,
        ),
        (
            format!("ecs:sim/{}", id(2)),
            "ExecuteCommandAgent of container app",
            69,
        ),
        (format!("ecs:sim/{}", id(3)), "is STOPPED, not RUNNING", 69),
        (
            format!("ecs:sim/{}", id(4)),
            "has several containers (app, sidecar)",
            78,
        ),
        (format!("ecs:sim/{}/db", id(4)), "has no container db", 78),
        (format!("ecs:sim/{}", id(5)), "allow ecs:ExecuteCommand", 77),
        (
            "ecs:sim/nosuch".to_owned(),
            "no ECS task or service nosuch",
            69,
        ),
        (
            "ecs:nocluster/web".to_owned(),
            "no ECS cluster nocluster",
            69,
        ),
        (
            "ecs:sim/".to_owned(),
            "is not ecs:CLUSTER/TASK[/CONTAINER]",
            2,
        ),
    ];
    for (target, expected, code) in cases {
        let out = shell(&sim, &[&target, "--", "true"]);
        let line = one_line_failure(&out);
        eprintln!("{target}: {line}");
        assert!(line.contains(expected), "{target}: {line}");
        assert_eq!(out.status.code(), Some(code), "{target}: {line}");
    }
    // ssm:StartSession denied on the container (port forwarding uses SSM, not ECS).
    let out = proxy_run(&sim.env(), &["forward", "ecs:sim/web", "-L", "0:9"], BOUND);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("forward: {stderr}");
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("allow ssm:StartSession"), "{stderr}");
    assert_eq!(sim.stats().started, 0);
}

/// Why `aws ecs execute-command --command 'sh -c "exit 5"'` cannot exit 5: ECS Exec runs the
/// InteractiveCommands plugin, and the real agent code (realagent's default is container mode,
/// as in an ECS task: the command is exec'd without a shell) never sends an exit status for it.
/// It logs the status and reports success; only NonInteractiveCommands sends `EXIT_CODE`.
/// docs/ecs.md has the source references. If an agent ever starts sending one, this fails and
/// the drop-in and `shell ecs:` can pass it on.
#[test]
fn the_real_agent_sends_no_exit_status_for_interactive_commands() {
    let agent = crate::support::realagent::RealAgent::start(&[]);
    let home = TempDir::new("ecs-realagent");
    let mut env = agent.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = proxy_run(
        &env,
        &[
            "shell",
            "-t",
            "i-0123456789abcdef0",
            "--",
            "sh",
            "-c",
            "echo from-pty; exit 5",
        ],
        BOUND,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-pty"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let sessions = agent.sessions();
    let session = &sessions[0];
    assert_eq!(session["Plugin"], "InteractiveCommands", "{sessions:#}");
    let by_type = session["Agent"]["by_type"].to_string();
    assert!(!by_type.contains("ExitCode"), "{by_type}");
    assert!(
        wait_until(10, || {
            agent.sessions()[0]["AgentWarnErrorLines"]
                .to_string()
                .contains("exit status 5")
        }),
        "the agent did not see the status: {:#}",
        agent.sessions()
    );
}
