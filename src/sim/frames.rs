//! Frames the service itself sends to the client, written byte by byte as the service writes
//! them (not with our codec where it differs): `channel_closed`, publication pauses, and frames
//! with the longer header some gateways send.

use aws_lc_rs::digest::{SHA256, digest};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;

use crate::proto::frame::{Frame, MessageType, ptype};

/// The same frame with a HeaderLength of 124 (8 bytes of padding before PayloadLength): the
/// official parsers take the payload from HL + 4, so clients must too (§16.3).
pub fn widen_header(frame: &Bytes) -> Bytes {
    const HL: usize = crate::proto::frame::HEADER_LEN as usize;
    if frame.len() < HL + 4 || frame.get(..4) != Some(&(HL as u32).to_be_bytes()[..]) {
        return frame.clone();
    }
    let mut b = BytesMut::with_capacity(frame.len() + 8);
    b.put_u32(HL as u32 + 8);
    b.put_slice(&frame[4..HL]);
    b.put_bytes(0, 8);
    b.put_slice(&frame[HL..]);
    b.freeze()
}

/// A service `pause_publication` / `start_publication` (no payload, not sequenced, §7).
pub fn publication(kind: MessageType) -> Bytes {
    Frame {
        message_type: kind,
        schema_version: 1,
        created_date: 1_700_000_000_000,
        sequence: 0,
        flags: 0,
        message_id: uuid::Uuid::new_v4(),
        payload_type: ptype::NONE,
        payload: Bytes::new(),
    }
    .encode()
}

/// A service-style `channel_closed`: HL 112, NUL-padded type, no PayloadType (§3.3, §13.2 V8).
pub fn channel_closed(target: &str, session_id: &str, output: &str) -> Bytes {
    let id = uuid::Uuid::new_v4();
    let payload = json!({
        "MessageType": "channel_closed",
        "MessageId": id.to_string(),
        "CreatedDate": "2026-01-01T00:00:00.000Z",
        "DestinationId": target,
        "SessionId": session_id,
        "SchemaVersion": 1,
        "Output": output,
    })
    .to_string();
    let mut b = BytesMut::with_capacity(116 + payload.len());
    b.put_u32(112);
    b.put_slice(b"channel_closed");
    b.put_bytes(0, 32 - "channel_closed".len());
    b.put_u32(1);
    b.put_u64(1_700_000_000_000);
    b.put_i64(0);
    b.put_u64(0);
    b.put_slice(&id.as_bytes()[8..]);
    b.put_slice(&id.as_bytes()[..8]);
    b.put_slice(digest(&SHA256, payload.as_bytes()).as_ref());
    b.put_u32(payload.len() as u32);
    b.put_slice(payload.as_bytes());
    b.freeze()
}
