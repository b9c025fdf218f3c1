//! The user-facing modes. Each only decides where the session's bytes come from and go to.

pub mod doctor;
pub mod forward;
pub mod manual;
pub mod plugin;
pub mod proxy;
pub mod shell;
pub mod sim;
pub mod ssh_config;
pub mod target;
