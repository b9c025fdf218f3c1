//! Fleets at once: many parallel ssh runs against a rate-limited simulator (the SDK's retries
//! must absorb every ThrottlingException, and every session must still be terminated), `--wait`
//! for an instance that is still booting, and ssh's connection sharing (one StartSession for
//! many ssh runs).

use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ssm_proxy::sim::{ApiLimit, Sim, SimConfig};

use crate::support::{
    ChildGuard, Fixture, Sshd, TARGET, TempDir, one_line_failure, proxy_command, proxy_run, run_ok,
    run_with_timeout, spawn_group, wait_bounded, wait_until,
};

/// sshd drops unauthenticated connections beyond MaxStartups (default 10): a fleet run must
/// not measure that.
const SSHD_FOR_FLEETS: &str = "MaxStartups 200\nMaxSessions 200\n";

fn fixture(config: SimConfig) -> Fixture {
    Fixture {
        sim: Sim::start(config).expect("start simulator"),
        sshd: Sshd::start_with(SSHD_FOR_FLEETS),
        home: TempDir::new("home"),
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sixty_parallel_sessions_under_five_tps_all_succeed_and_end() {
    const N: usize = 60;
    let fx = fixture(SimConfig {
        api_limit: Some(ApiLimit::new(5.0, 10)),
        ..SimConfig::default()
    });
    let began = Instant::now();
    let outs: Vec<Output> = thread::scope(|s| {
        let runs: Vec<_> = (0..N)
            .map(|_| s.spawn(|| run_with_timeout(fx.ssh().arg("true"), 85)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("ssh thread"))
            .collect()
    });
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| format!("{}: {}", o.status, stderr_of(o).trim()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} failed: {failed:#?}",
        failed.len()
    );
    // TerminateSession is throttled too; the proxies retry it after letting go of ssh.
    let sim = &fx.sim;
    let ended = wait_until(60, || sim.active_sessions() == 0);
    let stats = sim.stats();
    eprintln!("{N} sessions in {:?}: {stats:?}", began.elapsed());
    assert!(
        ended,
        "{} sessions left open: {stats:?}",
        sim.active_sessions()
    );
    assert_eq!(stats.started, N as u64, "{stats:?}");
    // Ended, not necessarily by TerminateSession: an SSH session ends with the agent's
    // channel_closed when sshd closes, as with the official client.
    assert!(stats.throttled > 0, "the limit never bit: {stats:?}");
}

#[test]
fn wait_rides_out_a_booting_instance() {
    // Before the simulator: it counts the boot from its own start.
    let started = Instant::now();
    let fx = fixture(SimConfig {
        online_after: vec![(TARGET.to_owned(), Duration::from_secs(3))],
        ..SimConfig::default()
    });
    // Without --wait a booting instance fails at once, in one line.
    let out = proxy_run(&fx.env(), &[TARGET, "22"], 20);
    let line = one_line_failure(&out);
    assert_eq!(out.status.code(), Some(69), "{line}");
    assert!(line.contains("not connected"), "{line}");
    let out = run_ok(
        fx.sshd
            .ssh_cmd_via(&proxy_command("--wait 30"), TARGET, &fx.env())
            .arg("echo up"),
        60,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up\n");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let stderr = stderr_of(&out);
    assert_eq!(
        stderr.matches("waiting up to 30 s").count(),
        1,
        "one line saying so: {stderr:?}"
    );
    let stats = fx.sim.stats();
    assert!(stats.start_calls > 2 && stats.started == 1, "{stats:?}");
    fx.assert_no_sessions();
}

#[test]
fn control_master_shares_one_session() {
    let fx = fixture(SimConfig::default());
    let sockets = TempDir::new("cm");
    let path = format!("ControlPath={}/%C", sockets.path().display());
    let shared = |mode: &str| {
        let mut cmd = fx.ssh();
        // The destination comes last: put the options in front of it.
        let mut args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        let host = args.pop().expect("destination");
        let mut shared = std::process::Command::new(cmd.get_program());
        crate::support::apply_env(&mut shared, &fx.env())
            .args(args)
            .args(["-o", &format!("ControlMaster={mode}"), "-o", &path])
            .arg(host)
            .stdin(Stdio::null());
        cmd = shared;
        cmd
    };
    // The master, in the foreground (ControlPersist would detach it from the test).
    let mut master = shared("yes");
    master.arg("-N").stdout(Stdio::null()).stderr(Stdio::null());
    let mut master = ChildGuard(spawn_group(&mut master));
    let ready = wait_until(30, || {
        run_with_timeout(shared("no").args(["-O", "check"]), 10)
            .status
            .success()
    });
    assert!(ready, "the master never listened");
    for i in 0..5 {
        let out = run_ok(shared("auto").arg(format!("echo {i}")), 60);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    assert_eq!(fx.sim.stats().started, 1, "{:?}", fx.sim.stats());
    // `-O exit` ends the master; its ProxyCommand then terminates the session.
    run_ok(shared("no").args(["-O", "exit"]), 30);
    assert!(
        wait_bounded(&mut master.0, 30).is_some(),
        "master still running"
    );
    fx.assert_no_sessions();
}

/// The ProxyCommand of ssh process `ssh` (ssh execs it through `sh -c exec …`: its only child).
fn proxy_of(ssh: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{ssh}/task/{ssh}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Twenty proxies told to stop at once (SIGTERM: they end their sessions with TerminateSession,
/// where ssh hanging up would let the agent end them) against an API allowing bursts of 10 and
/// 1 call a second after them: at least 8 calls cannot go through in a proxy's first 2 s, so
/// they are retried after the proxy let go of ssh's pipes, and every session ends.
#[test]
fn terminations_throttled_at_the_end_are_retried_without_holding_ssh() {
    const N: usize = 20;
    let fx = fixture(SimConfig {
        api_limit: Some(ApiLimit::new(1.0, 10)),
        ..SimConfig::default()
    });
    let logs = TempDir::new("fleet-log");
    let log = logs.join("proxy.log");
    let mut env = fx.env();
    env.push(("SSM_PROXY_LOG_FILE".into(), log.display().to_string()));
    env.push(("SSM_PROXY_LOG".into(), "ssm_proxy=info".into()));
    let mut runs: Vec<_> = (0..N)
        .map(|_| {
            let mut ssh = fx.sshd.ssh_cmd(crate::support::proxy_bin(), &env);
            ssh.arg("sleep 60")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = spawn_group(&mut ssh);
            let mut stderr = child.stderr.take().expect("stderr");
            let drained = thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            });
            (ChildGuard(child), drained)
        })
        .collect();
    let sim = &fx.sim;
    assert!(
        wait_until(60, || sim.active_sessions() == N),
        "{:?}",
        sim.stats()
    );
    // All end at once: twice the TerminateSession burst.
    let proxies: Vec<u32> = runs
        .iter()
        .map(|(child, _)| proxy_of(child.0.id()).expect("ssh's ProxyCommand"))
        .collect();
    // In one kill(1), so that the calls arrive together (no refill between them).
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .args(proxies.iter().map(u32::to_string))
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM {proxies:?}");
    let released = Instant::now();
    for (child, drained) in &mut runs {
        assert!(wait_bounded(&mut child.0, 10).is_some(), "ssh did not exit");
        // The proxy lets go of ssh's stderr even while its TerminateSession is still pending.
        assert!(
            wait_until(10, || drained.is_finished()),
            "a proxy kept ssh's stderr open for {:?}",
            released.elapsed()
        );
    }
    let ended = wait_until(60, || sim.active_sessions() == 0);
    let stats = sim.stats();
    eprintln!(
        "all ended {:?} after the kill: {stats:?}",
        released.elapsed()
    );
    assert!(
        ended,
        "{} sessions left open: {stats:?}",
        sim.active_sessions()
    );
    // Some TerminateSession calls were throttled past their 2 s and went the long way.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let late = log.matches("session terminated on retry").count();
    assert!(
        late > 0 && late == log.matches("stdio released").count(),
        "{log}"
    );
}
