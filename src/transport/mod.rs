//! Moving a session's frames: the websocket, the driver that owns a session across reconnects,
//! and stdio as a local byte stream.

pub mod driver;
pub mod service;
pub mod stdio;
pub mod stream_url;
pub mod websocket;

pub use driver::{DriveError, Driver, DriverConfig, End, Input, Local, Notice, Outcome};
pub use service::Service;
