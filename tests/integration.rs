//! Every integration test, linked into one binary. The end-to-end tests drive real OpenSSH,
//! tmux and Unix processes, so they are Unix-only; the protocol tests (golden vectors, fuzz,
//! sweeps, session) are portable and also run on Windows (under Wine in CI:
//! scripts/test-windows).

#[cfg(unix)]
mod docs;
#[cfg(unix)]
mod e2e_backpressure;
#[cfg(unix)]
mod e2e_contract;
#[cfg(unix)]
mod e2e_doctor;
#[cfg(unix)]
mod e2e_ecs;
#[cfg(unix)]
mod e2e_eic;
#[cfg(unix)]
mod e2e_errors;
#[cfg(unix)]
mod e2e_faults;
#[cfg(unix)]
mod e2e_fleet;
#[cfg(unix)]
mod e2e_forward;
#[cfg(unix)]
mod e2e_kms;
#[cfg(unix)]
mod e2e_memory;
#[cfg(unix)]
mod e2e_network;
#[cfg(unix)]
mod e2e_plugin;
#[cfg(unix)]
mod e2e_polish;
#[cfg(unix)]
mod e2e_realagent;
#[cfg(unix)]
mod e2e_shell;
#[cfg(unix)]
mod e2e_ssh;
#[cfg(unix)]
mod e2e_targets;
#[cfg(unix)]
mod e2e_wine;
mod fuzz;
mod golden;
#[cfg(unix)]
mod layers;
mod session;
#[cfg(unix)]
mod support;
mod sweep;
