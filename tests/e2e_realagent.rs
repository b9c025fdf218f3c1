//! Conformance against the real amazon-ssm-agent session code (`../shared/realagent`), through
//! the release binary as users run it and a real sshd. Where these and the simulator's tests
//! disagree, the simulator is wrong.

use std::process::Stdio;

use crate::support::realagent::RealAgent;
use crate::support::{Sshd, TempDir, release_bin, run_with_timeout};

#[test]
fn ssh_true_and_exit_status() {
    let agent = RealAgent::start(&[]);
    let sshd = Sshd::start();
    let home = TempDir::new("ra-home");
    let mut env = agent.env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let out = run_with_timeout(
        sshd.ssh_cmd(release_bin(), &env)
            .args(["sh", "-c", "'echo out; echo err >&2; exit 7'"])
            .stdin(Stdio::null()),
        60,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
}
