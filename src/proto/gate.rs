//! Who may take agent output in a port-forwarding session (§8.1, §8.3, §16.3).
//!
//! Output that no local connection can take must not be acked: the agent resends it, as it does
//! for the official client, which drops it unacked until its handler is installed. In basic
//! mode the agent dials the destination at once, so a server's greeting (sshd's banner, MySQL's
//! handshake) arrives before the first local connection: it is held unacked until one exists.
//! After a basic-mode connection ends (DisconnectToPort) whatever still arrives belongs to the
//! closed destination connection and is acked and dropped, so no byte reaches the next one; the
//! agent re-dials only on the next Output message, which the session sends (empty) once the
//! agent has acked everything before it.

/// The state of the output gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Output goes to the local side (shells, SSH streams, a connected forward).
    Open,
    /// No local connection yet: output is left unacked.
    Hold,
    /// The local connection closed: output is acked and dropped.
    Discard,
    /// A new local connection waits for the agent to ack everything before it (its
    /// DisconnectToPort above all); output is still from the old connection and dropped.
    Reopen,
}

/// What to do with an in-order Output payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Queue it for the local side and ack it.
    Deliver,
    /// Leave it unacked for the agent to resend.
    Refuse,
    /// Ack it and drop it.
    Drop,
}

impl Gate {
    /// The gate a session starts with.
    pub fn initial(hold: bool) -> Self {
        if hold { Self::Hold } else { Self::Open }
    }

    /// What to do with output; `must_take` is for messages already acked (buffered ahead of
    /// order), which can only be delivered or dropped.
    pub fn take(self, must_take: bool) -> Take {
        match self {
            Self::Open => Take::Deliver,
            Self::Hold if must_take => Take::Deliver,
            Self::Hold => Take::Refuse,
            Self::Discard | Self::Reopen => Take::Drop,
        }
    }

    /// A local connection can take output now. Returns the new gate; `Reopen` means: send an
    /// empty Output once everything is acked, then open.
    pub fn connected(self) -> Self {
        match self {
            Self::Open | Self::Hold => Self::Open,
            Self::Discard | Self::Reopen => Self::Reopen,
        }
    }
}
