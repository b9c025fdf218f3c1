//! ssm-proxy: AWS Systems Manager Session Manager as an ssh ProxyCommand, port forwarder and
//! shell, in one small binary.
//!
//! Layers (see `docs/architecture.md`): `proto` is the data-channel protocol as sans-IO state
//! machines; `transport` drives one session over a websocket across reconnects; `aws` is the
//! control plane (StartSession, ResumeSession, TerminateSession); `net` holds the network
//! settings (proxies, trust roots) both use; `front` holds the user-facing modes; `sim` is the
//! simulator used by the tests and by `ssm-proxy sim`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod front;
pub mod logging;
pub mod net;
pub mod os;
pub mod proto;
#[cfg(feature = "sim")]
pub mod sim;
pub mod transport;
