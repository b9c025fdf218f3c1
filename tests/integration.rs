//! Every integration test, linked into one binary. They drive real OpenSSH, tmux and Unix
//! processes, so they are Unix-only; on Windows `cargo test` runs the unit tests.
#![cfg(unix)]

mod docs;
mod e2e_doctor;
mod e2e_ecs;
mod e2e_eic;
mod e2e_errors;
mod e2e_faults;
mod e2e_forward;
mod e2e_kms;
mod e2e_memory;
mod e2e_network;
mod e2e_plugin;
mod e2e_polish;
mod e2e_realagent;
mod e2e_shell;
mod e2e_ssh;
mod e2e_targets;
mod fuzz;
mod golden;
mod session;
mod support;
mod sweep;
