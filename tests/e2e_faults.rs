//! Real scp/ssh through the simulator while it misbehaves: every fault kind, websocket resets,
//! clean 1000 "Bye" closes, dead paths and lost handshake messages. Every transfer is checked
//! with SHA-256 and every recovery is counted in the simulator's statistics (protocol.md §4,
//! §7, §10).

use ssm_proxy::sim::{DropPlan, FaultPlan, PausePlan, SimConfig};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    ChildGuard, Fixture, TARGET, TempDir, apply_env, kill_pid, proxy_bin, run_ok, sha256_file,
    spawn_group, wait_bounded, wait_until, write_random_file,
};

const BULK: u64 = 300;

// The agent is the faithful one (the default): a frame lost to a fault comes back only when it
// is the agent's oldest unacked message, one per 100 ms tick, as with the real agent.
fn both_ways(plan: &str) -> SimConfig {
    let plan = FaultPlan::parse(plan).expect("fault plan");
    SimConfig {
        up: plan.clone(),
        down: plan,
        seed: 7,
        ..Default::default()
    }
}

fn drops(spec: &str) -> SimConfig {
    SimConfig {
        drops: DropPlan::parse(spec).expect("drop plan"),
        ..Default::default()
    }
}

#[test]
fn loss_8mib_both_ways() {
    Fixture::with(both_ways("loss=0.03")).scp_round_trip(8, 1);
}

#[test]
fn duplication_8mib_both_ways() {
    Fixture::with(both_ways("dup=0.05")).scp_round_trip(8, 2);
}

#[test]
fn reordering_8mib_both_ways() {
    Fixture::with(both_ways("reorder=0.05")).scp_round_trip(8, 3);
}

#[test]
fn corrupted_digests_8mib_both_ways() {
    Fixture::with(both_ways("corrupt=0.02")).scp_round_trip(8, 4);
}

#[test]
fn delay_and_jitter_8mib_both_ways() {
    Fixture::with(both_ways("delay=2ms,jitter=3ms")).scp_round_trip(8, 5);
}

#[test]
fn everything_at_once_8mib_both_ways() {
    let fx = Fixture::with(both_ways(
        "loss=0.02,dup=0.02,reorder=0.03,corrupt=0.01,jitter=1ms",
    ));
    fx.scp_round_trip(8, 6);
}

#[test]
fn publication_pause_bursts_8mib_both_ways() {
    let pauses = PausePlan::parse("every=100ms,for=60ms").expect("pause plan");
    let fx = Fixture::with(SimConfig {
        pauses,
        ..Default::default()
    });
    fx.scp_round_trip(8, 7);
    assert!(fx.sim.stats().pauses >= 2, "{:?}", fx.sim.stats());
}

#[test]
fn three_abrupt_drops_during_a_32mib_download() {
    let fx = Fixture::with(drops("after-bytes=6000000,max=3"));
    let env = fx.env();
    let remote = fx.sshd.dir().join("big.bin");
    let digest = write_random_file(&remote, 32 << 20, 8);
    let local = TempDir::new("drops");
    let down = local.join("down.bin");
    run_ok(
        fx.sshd
            .scp_cmd(proxy_bin(), &env)
            .arg(fx.sshd.remote(&remote))
            .arg(&down),
        BULK,
    );
    assert_eq!(sha256_file(&down), digest);
    let stats = fx.sim.stats();
    assert_eq!(stats.drops, 3, "{stats:?}");
    assert!(stats.resumed >= 3, "resumes: {stats:?}");
    fx.assert_no_sessions();
}

#[test]
fn abrupt_drop_while_uploading() {
    let fx = Fixture::with(drops("after-bytes=3000000,max=1"));
    let env = fx.env();
    let local = TempDir::new("updrop");
    let src = local.join("src.bin");
    let digest = write_random_file(&src, 16 << 20, 9);
    let remote = fx.sshd.dir().join("up.bin");
    run_ok(
        fx.sshd
            .scp_cmd(proxy_bin(), &env)
            .arg(&src)
            .arg(fx.sshd.remote(&remote)),
        BULK,
    );
    assert_eq!(sha256_file(&remote), digest);
    assert_eq!(fx.sim.stats().drops, 1);
    assert!(fx.sim.stats().resumed >= 1);
    fx.assert_no_sessions();
}

#[test]
fn clean_close_1000_bye_mid_transfer() {
    let fx = Fixture::with(drops("after-bytes=10000000,clean,max=2"));
    fx.scp_round_trip(16, 10);
    assert_eq!(
        fx.sim.stats().drops,
        4,
        "two per session (upload and download)"
    );
}

#[test]
fn drop_every_half_second_through_64mib() {
    // The "every 5 s" scaled to this machine: a local 64 MiB scp takes a few seconds.
    let fx = Fixture::with(drops("after=500ms"));
    fx.scp_round_trip(64, 11);
    assert!(fx.sim.stats().drops >= 2, "{:?}", fx.sim.stats());
}

#[test]
fn idle_websocket_drop_then_more_traffic() {
    let fx = Fixture::with(drops("after=700ms,max=1"));
    let out = run_ok(fx.ssh().arg("echo before; sleep 2; echo after"), 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nafter\n");
    assert_eq!(fx.sim.stats().drops, 1);
    assert!(fx.sim.stats().resumed >= 1);
    fx.assert_no_sessions();
}

#[test]
fn dead_path_is_detected_and_resumed() {
    // The gateway stops relaying (and answering pings); the client notices the silence.
    let fx = Fixture::with(drops("after=500ms,blackhole,max=1"));
    let mut env = fx.env();
    env.push(("SSM_PROXY_DEAD_AFTER".into(), "2".into()));
    let out = run_ok(
        fx.sshd
            .ssh_cmd(proxy_bin(), &env)
            .arg("echo before; sleep 1; echo after"),
        60,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nafter\n");
    assert!(fx.sim.stats().resumed >= 1);
    fx.assert_no_sessions();
}

#[test]
fn lost_handshake_messages_are_recovered() {
    // Down: the HandshakeRequest itself. Up: message 2 is the HandshakeResponse (1 is the ack).
    let config = SimConfig {
        down: FaultPlan::parse("drop-at=1").expect("plan"),
        up: FaultPlan::parse("drop-at=2").expect("plan"),
        ..Default::default()
    };
    let fx = Fixture::with(config);
    let out = run_ok(fx.ssh().arg("echo ok"), 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    fx.assert_no_sessions();
}

#[test]
fn websocket_reset_during_the_handshake() {
    let fx = Fixture::with(drops("handshake,max=1"));
    let out = run_ok(fx.ssh().arg("echo ok"), 60);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert_eq!(fx.sim.stats().drops, 1);
    fx.assert_no_sessions();
}

#[test]
fn repeated_drops_with_loss_stay_byte_exact() {
    let mut config = both_ways("loss=0.01,reorder=0.02");
    config.drops = DropPlan::parse("after-bytes=2000000").expect("plan");
    let fx = Fixture::with(config);
    fx.scp_round_trip(8, 12);
    assert!(fx.sim.stats().drops >= 4);
}

#[test]
fn a_twelve_second_outage_mid_download_is_survived() {
    // The websocket dies and every reconnect fails for 12 s; ResumeSession keeps the session.
    let fx = Fixture::with(drops("after-bytes=4000000,max=1,outage=12000"));
    let env = fx.env();
    let remote = fx.sshd.dir().join("outage.bin");
    let digest = write_random_file(&remote, 16 << 20, 13);
    let local = TempDir::new("outage");
    let down = local.join("down.bin");
    let started = Instant::now();
    run_ok(
        fx.sshd
            .scp_cmd(proxy_bin(), &env)
            .arg(fx.sshd.remote(&remote))
            .arg(&down),
        BULK,
    );
    assert_eq!(sha256_file(&down), digest);
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "the outage must really have happened"
    );
    assert!(
        fx.sim.stats().resumed >= 3,
        "reconnects were refused and retried: {:?}",
        fx.sim.stats()
    );
    fx.assert_no_sessions();
}

#[test]
fn a_signal_during_an_outage_ends_the_session_at_once() {
    // The websocket dies right after the handshake and reconnects fail for a minute: SIGTERM
    // must not wait for the outage (or --resume-timeout) to end.
    let fx = Fixture::with(drops("after-bytes=100,max=1,outage=60000"));
    let mut cmd = Command::new(proxy_bin());
    apply_env(&mut cmd, &fx.env())
        .args([TARGET, &fx.sshd.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard(spawn_group(&mut cmd));
    // The simulator accepts each websocket and resets it at once: the client must back off
    // between such resumes rather than spin.
    assert!(
        wait_until(20, || fx.sim.stats().resumed >= 3),
        "not resuming: {:?}",
        fx.sim.stats()
    );
    let started = Instant::now();
    kill_pid(child.0.id(), "TERM");
    let status = wait_bounded(&mut child.0, 10).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(143));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        fx.sim.stats().resumed < 10,
        "resume storm: {:?}",
        fx.sim.stats()
    );
    fx.assert_no_sessions();
}
