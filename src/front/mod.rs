//! The user-facing modes. Each only decides where the session's bytes come from and go to.

pub mod proxy;
pub mod sim;
