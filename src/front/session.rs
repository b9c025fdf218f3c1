//! One way to open a session, whatever the mode: connect the data channel with the agent's
//! output held back (unacked), run it until the handshake (or a shell's first output, §5.1)
//! says what the session is, and hand the open session back with that kind. Each mode then
//! serves the kinds it can and refuses the others, before any of the session's bytes reaches
//! the local side: a shell's prompt never lands in ssh's byte stream, and port forwarding takes
//! output only once a local connection exists.

use tokio::sync::mpsc;

use crate::aws::{Aws, SessionGrant};
use crate::front::settings::{Mode, SessionSettings};
use crate::proto::SessionKind;
use crate::proto::payload::SessionTypeParams;
use crate::transport::{DriveError, Driver, Local, Outcome};

/// A session whose kind the handshake has reported; its output is still held.
pub struct Opened {
    /// The open session.
    pub driver: Driver,
    /// What the handshake said the session is.
    pub kind: SessionKind,
}

impl Opened {
    /// The agent's SessionType action (session type and document properties), or the empty one
    /// when it sent none (a shell without a handshake).
    pub fn session_type(&self) -> SessionTypeParams {
        self.driver.session_type().cloned().unwrap_or_default()
    }

    /// The driver, with output let through to the local side (every kind but port
    /// forwarding, which opens it per connection).
    pub fn into_output(mut self) -> Driver {
        self.driver.open_output();
        self.driver
    }
}

/// How opening went, short of a failure.
#[allow(clippy::large_enum_variant)] // made once per session and moved, never stored
pub enum Opening {
    /// The handshake is over.
    Opened(Opened),
    /// The session ended first: a signal, or the service closed it.
    Ended(Outcome),
}

/// Opens the data channel of the session `grant` (to `target`) with the driver configuration
/// `settings` give `mode`, and runs it until its kind is known. `signals` may end it meanwhile.
pub async fn open(
    aws: &Aws,
    grant: SessionGrant,
    target: &str,
    settings: &SessionSettings,
    mode: Mode,
    signals: &mut mpsc::Receiver<i32>,
) -> Result<Opening, DriveError> {
    let mut config = settings.driver_config(mode, target, "");
    // Whether the output may go anywhere is known only once the kind is.
    config.session.hold_output = true;
    let mut driver = Driver::connect(aws.clone(), grant, config).await?;
    // Both ends stay alive and unused: no input, and a reader that is never gone.
    let (_input_tx, input) = mpsc::channel(1);
    let (output, _output_rx) = mpsc::channel(1);
    let run = driver.run_kind(Local { input, output }, signals, |_| false);
    let kind = match run.await {
        Err(kind) => kind,
        Ok(Ok(outcome)) => return Ok(Opening::Ended(outcome)),
        Ok(Err(e)) => return Err(e),
    };
    let opened = Opened { driver, kind };
    let session_type = opened.session_type();
    tracing::info!(?kind, session_type = %session_type.session_type, properties = %session_type.properties, "the handshake decides the mode");
    Ok(Opening::Opened(opened))
}
