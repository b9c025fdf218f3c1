//! The Session Manager data-channel protocol as sans-IO state machines.
//!
//! Nothing here touches sockets, tokio, the wall clock or OS randomness: callers pass bytes, an
//! `Instant` and a seed in, and take frames, output, events and the next deadline out. That makes
//! every behaviour testable with a simulated clock (see `sim::pair`). Section numbers (§N) refer
//! to `docs/protocol.md`.

pub mod frame;
pub(crate) mod gate;
pub mod handshake;
pub(crate) mod inbox;
pub(crate) mod json;
pub(crate) mod outbox;
pub mod pacer;
pub mod payload;
pub mod rto;
pub mod session;

pub use frame::{Frame, FrameError, MessageType};
pub use handshake::SessionKind;
pub use session::{Event, Session, SessionConfig, SessionError};
pub mod crypto;
pub mod documents;
pub mod smux;
