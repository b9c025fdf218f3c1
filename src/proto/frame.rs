//! The binary message codec of the data channel (protocol.md §3): one websocket message carries
//! one frame. Encoding produces exactly what the official serializers produce; decoding accepts
//! everything they accept (any non-zero HeaderLength: the payload starts at HL + 4, §16.3) and
//! rejects, without panicking, everything else.

use aws_lc_rs::digest::{SHA256, digest};
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use uuid::Uuid;

/// HeaderLength written by both official serializers: the offset of PayloadLength.
pub const HEADER_LEN: u32 = 116;
/// HeaderLength of service-generated `channel_closed` frames, which lack PayloadType (§3.3).
pub const SHORT_HEADER_LEN: u32 = 112;
/// Bytes before the payload in a frame we write.
pub const OVERHEAD: usize = HEADER_LEN as usize + 4;
const TYPE_LEN: usize = 32;

/// Header `Flags` values (§3.6); no receiver reads them but we send what the official code sends.
pub mod flags {
    /// First message of the agent's stream.
    pub const SYN: u64 = 0x1;
    /// Acknowledge and agent_session_state messages.
    pub const ACK: u64 = 0x3;
}

/// The PayloadType field (u32 at offset 112, §3.6): what a sequenced message carries. The
/// known values are in [`ptype`]; others pass through as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PayloadType(pub u32);

/// Payload types, in wire order.
#[allow(missing_docs)]
pub mod ptype {
    use super::PayloadType;
    pub const NONE: PayloadType = PayloadType(0x0);
    pub const OUTPUT: PayloadType = PayloadType(0x1);
    pub const ERROR: PayloadType = PayloadType(0x2);
    pub const SIZE: PayloadType = PayloadType(0x3);
    pub const PARAMETER: PayloadType = PayloadType(0x4);
    pub const HANDSHAKE_REQUEST: PayloadType = PayloadType(0x5);
    pub const HANDSHAKE_RESPONSE: PayloadType = PayloadType(0x6);
    pub const HANDSHAKE_COMPLETE: PayloadType = PayloadType(0x7);
    pub const ENC_CHALLENGE_REQUEST: PayloadType = PayloadType(0x8);
    pub const ENC_CHALLENGE_RESPONSE: PayloadType = PayloadType(0x9);
    pub const FLAG: PayloadType = PayloadType(0xa);
    pub const STDERR: PayloadType = PayloadType(0xb);
    pub const EXIT_CODE: PayloadType = PayloadType(0xc);
}

/// The value a [`ptype::FLAG`] payload carries as a big-endian u32 (§3.6); the known values
/// are in [`flag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flag(pub u32);

/// Flag values.
#[allow(missing_docs)]
pub mod flag {
    use super::Flag;
    pub const DISCONNECT_TO_PORT: Flag = Flag(0x1);
    pub const TERMINATE_SESSION: Flag = Flag(0x2);
    pub const CONNECT_TO_PORT_ERROR: Flag = Flag(0x3);
}

/// The MessageType field, as far as the data channel uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageType {
    /// Sequenced client → agent data and control.
    InputStreamData,
    /// Sequenced agent → client data and control.
    OutputStreamData,
    /// Ack of one sequenced message (§4.2).
    Acknowledge,
    /// The service ends the session (§9.1).
    ChannelClosed,
    /// The peer is active again (§7).
    StartPublication,
    /// The peer is away: stop sending (§7).
    PausePublication,
    /// Agent status towards the service.
    AgentSessionState,
    /// Anything else: ignored by receivers.
    Other(String),
}

impl MessageType {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InputStreamData => "input_stream_data",
            Self::OutputStreamData => "output_stream_data",
            Self::Acknowledge => "acknowledge",
            Self::ChannelClosed => "channel_closed",
            Self::StartPublication => "start_publication",
            Self::PausePublication => "pause_publication",
            Self::AgentSessionState => "agent_session_state",
            Self::Other(s) => s,
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "input_stream_data" => Self::InputStreamData,
            "output_stream_data" => Self::OutputStreamData,
            "acknowledge" => Self::Acknowledge,
            "channel_closed" => Self::ChannelClosed,
            "start_publication" => Self::StartPublication,
            "pause_publication" => Self::PausePublication,
            "agent_session_state" => Self::AgentSessionState,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// Why a received frame was rejected. Rejected frames are dropped without an ack (§3.4).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the fixed header or than HL + 4.
    #[error("frame truncated: {len} bytes")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// HeaderLength of zero or past the end of the frame.
    #[error("bad header length {0}")]
    HeaderLength(u32),
    /// Empty MessageType.
    #[error("message type missing")]
    MissingType,
    /// CreatedDate of zero.
    #[error("created date missing")]
    MissingDate,
    /// SHA-256 of the payload differs from PayloadDigest.
    #[error("payload digest mismatch")]
    Digest,
}

/// One data-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// MessageType.
    pub message_type: MessageType,
    /// Always 1.
    pub schema_version: u32,
    /// Unix epoch milliseconds, never 0.
    pub created_date: u64,
    /// Sequence number (0 for unsequenced types).
    pub sequence: i64,
    /// Header flags.
    pub flags: u64,
    /// Message id (canonical byte order; swapped halves on the wire, §3.2).
    pub message_id: Uuid,
    /// PayloadType ([`ptype::NONE`] when the header has none).
    pub payload_type: PayloadType,
    /// Payload bytes as carried (ciphertext when KMS is on).
    pub payload: Bytes,
}

impl Frame {
    /// Serializes with HL 116, space padding and the SHA-256 digest, like the official code.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(OVERHEAD + self.payload.len());
        buf.put_u32(HEADER_LEN);
        let name = self.message_type.as_str().as_bytes();
        let name = &name[..name.len().min(TYPE_LEN)];
        buf.put_slice(name);
        buf.put_bytes(b' ', TYPE_LEN - name.len());
        buf.put_u32(self.schema_version);
        buf.put_u64(self.created_date);
        buf.put_i64(self.sequence);
        buf.put_u64(self.flags);
        let id = self.message_id.as_bytes();
        buf.put_slice(&id[8..]);
        buf.put_slice(&id[..8]);
        buf.put_slice(digest(&SHA256, &self.payload).as_ref());
        buf.put_u32(self.payload_type.0);
        buf.put_u32(self.payload.len() as u32);
        buf.put_slice(&self.payload);
        buf.freeze()
    }

    /// Parses and validates a received frame (§3.3, §3.4). `start_publication` and
    /// `pause_publication` skip validation as in the official client.
    pub fn decode(raw: &Bytes) -> Result<Self, FrameError> {
        let b = raw.as_ref();
        let truncated = || FrameError::Truncated { len: b.len() };
        let hl = be_u32(b, 0).ok_or_else(truncated)?;
        // The official parsers take the payload from HL + 4 whatever HL is (only 0 is refused);
        // the fixed fields up to the digest must be there in any case.
        let payload_start = hl as usize + 4;
        if hl == 0 || payload_start > b.len() {
            return Err(FrameError::HeaderLength(hl));
        }
        if b.len() < SHORT_HEADER_LEN as usize {
            return Err(truncated());
        }
        let name = b.get(4..4 + TYPE_LEN).ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name);
        let message_type = MessageType::parse(name.trim_matches('\0').trim());
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(b.get(64..72).ok_or_else(truncated)?);
        id[..8].copy_from_slice(b.get(72..80).ok_or_else(truncated)?);
        let frame = Self {
            schema_version: be_u32(b, 36).ok_or_else(truncated)?,
            created_date: be_u64(b, 40).ok_or_else(truncated)?,
            sequence: be_u64(b, 48).ok_or_else(truncated)? as i64,
            flags: be_u64(b, 56).ok_or_else(truncated)?,
            message_id: Uuid::from_bytes(id),
            payload_type: if hl >= HEADER_LEN {
                PayloadType(be_u32(b, 112).ok_or_else(truncated)?)
            } else {
                ptype::NONE
            },
            payload: raw.slice(payload_start..),
            message_type,
        };
        if matches!(
            frame.message_type,
            MessageType::StartPublication | MessageType::PausePublication
        ) {
            return Ok(frame);
        }
        if frame.message_type.as_str().is_empty() {
            return Err(FrameError::MissingType);
        }
        if frame.created_date == 0 {
            return Err(FrameError::MissingDate);
        }
        let declared = be_u32(b, hl as usize).ok_or_else(truncated)?;
        let want = b.get(80..112).ok_or_else(truncated)?;
        if declared != 0 && digest(&SHA256, &frame.payload).as_ref() != want {
            return Err(FrameError::Digest);
        }
        Ok(frame)
    }

    /// The Flag value of a [`ptype::FLAG`] payload; short payloads read as 0 (§3.6).
    pub fn flag_value(&self) -> Flag {
        Flag(be_u32(&self.payload, 0).unwrap_or(0))
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_halves_are_swapped_on_the_wire() {
        let f = Frame {
            message_type: MessageType::InputStreamData,
            schema_version: 1,
            created_date: 1,
            sequence: 0,
            flags: 0,
            message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".parse().unwrap(),
            payload_type: ptype::OUTPUT,
            payload: Bytes::from_static(b"x"),
        };
        let wire = f.encode();
        assert_eq!(&wire[64..80], &hex("a508b5f073f31b16dd01e56bff48483e")[..]);
        assert_eq!(Frame::decode(&wire).unwrap(), f);
    }

    #[test]
    fn rejects_bad_digest_and_short_frames_without_panicking() {
        let f = Frame {
            message_type: MessageType::OutputStreamData,
            schema_version: 1,
            created_date: 5,
            sequence: 9,
            flags: 0,
            message_id: Uuid::nil(),
            payload_type: ptype::OUTPUT,
            payload: Bytes::from_static(b"payload"),
        };
        let mut wire = f.encode().to_vec();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(
            Frame::decode(&Bytes::from(wire.clone())),
            Err(FrameError::Digest)
        );
        for n in 0..wire.len() {
            let _ = Frame::decode(&Bytes::copy_from_slice(&wire[..n]));
        }
    }

    #[test]
    fn any_header_length_the_official_parsers_accept() {
        let f = Frame {
            message_type: MessageType::OutputStreamData,
            schema_version: 1,
            created_date: 5,
            sequence: 3,
            flags: 0,
            message_id: Uuid::nil(),
            payload_type: ptype::OUTPUT,
            payload: Bytes::from_static(b"payload"),
        };
        let wire = f.encode();
        // A longer header: 8 extra bytes before PayloadLength.
        let mut long = wire[..HEADER_LEN as usize].to_vec();
        long[..4].copy_from_slice(&(HEADER_LEN + 8).to_be_bytes());
        long.extend_from_slice(&[0xee; 8]);
        long.extend_from_slice(&wire[HEADER_LEN as usize..]);
        assert_eq!(Frame::decode(&Bytes::from(long)), Ok(f.clone()));
        let mut zero = wire.to_vec();
        zero[..4].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            Frame::decode(&Bytes::from(zero)),
            Err(FrameError::HeaderLength(0))
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
