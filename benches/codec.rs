//! Micro-benchmarks of the data-channel hot path: the frame codec and the receive/ack path of a
//! session, through the public API only. `cargo bench --bench codec`; results and what they mean
//! are in docs/performance.md.
//!
//! * `frame/encode_1k`, `frame/decode_1k`: one 1 KiB `output_stream_data` frame, SHA-256 digest
//!   included (encode computes it, decode verifies it); `frame/sha256_1k` is the digest alone.
//! * `session/ack_path/N`: a session past its handshake receives N in-order 1 KiB output frames
//!   (pre-encoded, as they come off the websocket), and the caller drains the N acks with
//!   `poll_transmit` and the output with `poll_output(64 KiB)`, as the driver does. Throughput is
//!   reported in payload bytes, so MiB/s compares directly with scp numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use ssm_proxy::proto::frame::{Frame, MessageType, PayloadType, flags, ptype};
use ssm_proxy::proto::{Session, SessionConfig};
use uuid::Uuid;

const PAYLOAD: usize = 1024;

fn agent_frame(sequence: i64, payload_type: PayloadType, payload: Bytes) -> Frame {
    Frame {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1_700_000_000_000 + sequence as u64,
        sequence,
        flags: if sequence == 0 { flags::SYN } else { 0 },
        message_id: Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | sequence as u128),
        payload_type,
        payload,
    }
}

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 + 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn codec(c: &mut Criterion) {
    let frame = agent_frame(42, ptype::OUTPUT, payload(PAYLOAD));
    let wire = frame.encode();
    assert_eq!(Frame::decode(&wire).as_ref(), Ok(&frame));

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    // The floor of both: the payload digest alone.
    g.bench_function("sha256_1k", |b| {
        b.iter(|| digest(&SHA256, black_box(&frame.payload)))
    });
    g.bench_function("encode_1k", |b| b.iter(|| black_box(&frame).encode()));
    g.bench_function("decode_1k", |b| {
        b.iter(|| Frame::decode(black_box(&wire)).expect("valid frame"))
    });
    g.finish();
}

/// A Port session (AWS-StartSSHSession) after its handshake, at `now`, with the handshake
/// request sitting at sequence 0 and HandshakeComplete at 1; data starts at sequence 2.
fn ready_session(now: Instant) -> Session {
    let mut s = Session::new(SessionConfig::default(), now);
    let request = json!({
        "AgentVersion": "3.3.1957.0",
        "RequestedClientActions": [{
            "ActionType": "SessionType",
            "ActionParameters": {"SessionType": "Port", "Properties": {"portNumber": "22"}},
        }],
    });
    let complete = json!({"HandshakeTimeToComplete": 1_000_000, "CustomerMessage": ""});
    for (seq, ptype, body) in [
        (0, ptype::HANDSHAKE_REQUEST, request),
        (1, ptype::HANDSHAKE_COMPLETE, complete),
    ] {
        let body = Bytes::from(serde_json::to_vec(&body).unwrap());
        s.handle_frame(now, agent_frame(seq, ptype, body).encode());
    }
    while s.poll_transmit().is_some() {}
    while s.poll_event().is_some() {}
    assert!(s.can_accept_input(), "handshake did not complete");
    s
}

fn ack_path(c: &mut Criterion) {
    let data = payload(PAYLOAD);
    let mut g = c.benchmark_group("session/ack_path");
    for n in [1usize, 64, 256] {
        let frames: Vec<Bytes> = (0..n)
            .map(|i| agent_frame(2 + i as i64, ptype::OUTPUT, data.clone()).encode())
            .collect();
        g.throughput(Throughput::Bytes((n * PAYLOAD) as u64));
        g.bench_function(n.to_string(), |b| {
            let start = Instant::now();
            b.iter_batched(
                || (ready_session(start), frames.clone()),
                |(mut s, frames)| {
                    let now = start + Duration::from_millis(5);
                    let (mut acks, mut out) = (0, 0);
                    for raw in frames {
                        s.handle_frame(now, raw);
                        while let Some(ack) = s.poll_transmit() {
                            acks += 1;
                            black_box(ack);
                        }
                    }
                    while let Some(bytes) = s.poll_output(64 * 1024) {
                        out += bytes.len();
                    }
                    assert_eq!((acks, out), (n, n * PAYLOAD));
                    s
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, codec, ack_path);
criterion_main!(benches);
