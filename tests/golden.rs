//! Every golden frame of protocol.md §13.2 (produced by the official serializer) decodes to the
//! documented fields and, for the HL-116 frames, re-encodes byte for byte.

use bytes::Bytes;
use ssm_proxy::proto::frame::{Frame, FrameError, MessageType, flag, flags, ptype};
use ssm_proxy::proto::handshake;
use ssm_proxy::proto::payload::{Acknowledge, ChannelClosed, HandshakeComplete, HandshakeRequest};

fn vectors() -> Vec<(String, Bytes)> {
    include_str!("data/golden_frames.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, hex) = l.split_once(' ').expect("NAME HEX");
            (name.to_owned(), Bytes::from(unhex(hex)))
        })
        .collect()
}

fn vector(name: &str) -> Bytes {
    vectors()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .expect(name)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const CREATED: u64 = 1_503_434_274_948;

#[test]
fn all_vectors_are_present() {
    let names: Vec<String> = vectors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["V1", "V2", "V3", "V4", "V6", "V7", "V8", "V9"]);
}

#[test]
fn hl116_vectors_round_trip_byte_for_byte() {
    for (name, wire) in vectors().into_iter().filter(|(n, _)| n != "V8") {
        let frame = Frame::decode(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame.created_date, CREATED, "{name}");
        assert_eq!(frame.schema_version, 1, "{name}");
        assert_eq!(frame.encode(), wire, "{name} re-encoded differently");
    }
}

#[test]
fn v1_input_stream_data() {
    let f = Frame::decode(&vector("V1")).unwrap();
    assert_eq!(f.message_type, MessageType::InputStreamData);
    assert_eq!((f.sequence, f.flags, f.payload_type), (0, 0, ptype::OUTPUT));
    assert_eq!(
        f.message_id.to_string(),
        "dd01e56b-ff48-483e-a508-b5f073f31b16"
    );
    assert_eq!(&f.payload[..], b"hello");
}

#[test]
fn v2_ack_payload_is_what_we_serialize() {
    let f = Frame::decode(&vector("V2")).unwrap();
    assert_eq!(
        (f.message_type.clone(), f.flags, f.payload_type),
        (MessageType::Acknowledge, flags::ACK, ptype::NONE)
    );
    let ours = Acknowledge {
        acknowledged_message_type: "output_stream_data".into(),
        acknowledged_message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".into(),
        acknowledged_message_sequence_number: 7,
        is_sequential_message: true,
    };
    assert_eq!(serde_json::to_vec(&ours).unwrap(), f.payload.to_vec());
}

#[test]
fn v3_terminate_flag_and_v4_size() {
    let f = Frame::decode(&vector("V3")).unwrap();
    assert_eq!(
        (f.sequence, f.payload_type, f.flag_value()),
        (3, ptype::FLAG, flag::TERMINATE_SESSION)
    );
    let f = Frame::decode(&vector("V4")).unwrap();
    assert_eq!((f.sequence, f.payload_type), (1, ptype::SIZE));
    assert_eq!(&f.payload[..], br#"{"cols":80,"rows":24}"#);
}

#[test]
fn v6_handshake_request_gets_the_official_response() {
    let f = Frame::decode(&vector("V6")).unwrap();
    assert_eq!(
        (f.message_type.clone(), f.flags, f.payload_type),
        (
            MessageType::OutputStreamData,
            flags::SYN,
            ptype::HANDSHAKE_REQUEST
        )
    );
    let req: HandshakeRequest = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(req.agent_version, "3.3.987.0");
    let eval = handshake::evaluate(&req, "1.2.0.0", None);
    assert_eq!(eval.kind, Some(handshake::SessionKind::Stream));
    assert_eq!(
        serde_json::to_string(&eval.response).unwrap(),
        r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
    );
}

#[test]
fn v7_handshake_complete() {
    let f = Frame::decode(&vector("V7")).unwrap();
    let done: HandshakeComplete = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(
        (f.sequence, done.handshake_time_to_complete),
        (1, 1_000_000)
    );
}

#[test]
fn v8_service_channel_closed_with_hl_112() {
    let f = Frame::decode(&vector("V8")).unwrap();
    assert_eq!(f.message_type, MessageType::ChannelClosed);
    assert_eq!(f.payload_type, ptype::NONE);
    assert_eq!(f.payload.len(), 229);
    let closed: ChannelClosed = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(closed.session_id, "user-0123456789abcdef0");
    assert_eq!(closed.output, "");
}

#[test]
fn v9_agent_ack_and_its_corrupted_twin() {
    let f = Frame::decode(&vector("V9")).unwrap();
    let ack: Acknowledge = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(ack.acknowledged_message_type, "input_stream_data");
    assert_eq!(ack.acknowledged_message_sequence_number, 0);
    // §13.2 negative vector: HL 372 > frame length; the official parser panics here.
    let mut bad = vector("V9").to_vec();
    bad[2] = 0x01;
    assert_eq!(
        Frame::decode(&Bytes::from(bad)),
        Err(FrameError::HeaderLength(372))
    );
}

#[test]
fn every_single_byte_corruption_is_rejected_or_harmless() {
    for (name, wire) in vectors() {
        for i in 0..wire.len() {
            let mut bad = wire.to_vec();
            bad[i] ^= 0xff;
            // Must not panic; payload corruption must be caught by the digest.
            if let Ok(f) = Frame::decode(&Bytes::from(bad)) {
                let payload_start = wire.len() - f.payload.len();
                assert!(
                    i < payload_start,
                    "{name}: corrupted payload byte {i} accepted"
                );
            }
        }
    }
}
