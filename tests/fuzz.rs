//! Bounded, dependency-free fuzzing run by every `cargo test`: mutated golden frames, random
//! bytes and random-but-well-framed messages with hostile JSON go through the frame decoder, the
//! client session and the agent model. Nothing may panic, and no allocation may follow a length
//! read from the wire. Inputs that once failed live in `tests/data/fuzz/` (hex, one per line)
//! and are replayed first. `FUZZ_EXECS=N` runs longer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ssm_proxy::proto::frame::{Frame, MessageType, ptype};
use ssm_proxy::proto::session::splitmix;
use ssm_proxy::proto::{Session, SessionConfig};
use ssm_proxy::sim::agent::{Agent, AgentConfig};

fn corpus() -> Vec<Vec<u8>> {
    let golden = include_str!("data/golden_frames.txt");
    let regressions = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fuzz"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>()
        .join("\n");
    golden
        .lines()
        .chain(regressions.lines())
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| unhex(l.rsplit(' ').next().unwrap_or_default()))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

const JSON_BITS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "1e999",
    "-1",
    "9223372036854775808",
    "\"\"",
    "\"AgentVersion\"",
    "\"RequestedClientActions\"",
    "\"ActionType\"",
    "\"SessionType\"",
    "\"KMSEncryption\"",
    "\"ActionParameters\"",
    "\"Properties\"",
    "\"Port\"",
    "\"type\"",
    "\"LocalPortForwarding\"",
    "\"AcknowledgedMessageSequenceNumber\"",
    "\"Output\"",
    "\"HandshakeTimeToComplete\"",
    "\"CustomerMessage\"",
    "\"\\u0000\"",
    "\"é\"",
    "3.0.196.1",
];

fn mutate(rng: &mut u64, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + splitmix(rng) % 4 {
        let r = splitmix(rng);
        match r % 6 {
            0 if !out.is_empty() => {
                let i = (r >> 8) as usize % out.len();
                out[i] ^= 1 << ((r >> 40) % 8);
            }
            1 if !out.is_empty() => {
                let i = (r >> 8) as usize % out.len();
                out[i] = (r >> 32) as u8;
            }
            2 => out.truncate((r >> 8) as usize % (out.len() + 1)),
            3 => out.extend((0..(r >> 8) % 64).map(|_| splitmix(rng) as u8)),
            4 if out.len() >= 4 => {
                // Hostile header lengths: 0, 112..=116, huge.
                let hl = [0u32, 111, 112, 113, 116, 117, u32::MAX][(r >> 8) as usize % 7];
                out[..4].copy_from_slice(&hl.to_be_bytes());
            }
            _ => {
                let i = (r >> 8) as usize % (out.len() + 1);
                out.splice(i..i, (0..1 + (r >> 20) % 32).map(|_| splitmix(rng) as u8));
            }
        }
    }
    out
}

/// A well-framed message (valid digest) whose fields and JSON payload are hostile.
fn framed(rng: &mut u64) -> Bytes {
    let kinds = [
        MessageType::OutputStreamData,
        MessageType::InputStreamData,
        MessageType::Acknowledge,
        MessageType::ChannelClosed,
        MessageType::PausePublication,
        MessageType::StartPublication,
        MessageType::Other("x".into()),
    ];
    let r = splitmix(rng);
    let payload: Vec<u8> = if r.is_multiple_of(3) {
        (0..r % 200).map(|_| splitmix(rng) as u8).collect()
    } else {
        (0..r % 24)
            .map(|_| JSON_BITS[splitmix(rng) as usize % JSON_BITS.len()])
            .collect::<String>()
            .into_bytes()
    };
    Frame {
        message_type: kinds[(r >> 8) as usize % kinds.len()].clone(),
        schema_version: 1,
        created_date: 1 + (r >> 16) % 3,
        sequence: [0, 1, 2, 3, -1, i64::MAX, i64::MIN][(r >> 24) as usize % 7],
        flags: r >> 32,
        message_id: uuid::Uuid::from_u128(u128::from(splitmix(rng))),
        payload_type: ssm_proxy::proto::frame::PayloadType((r >> 40) as u32 % 14),
        payload: payload.into(),
    }
    .encode()
}

#[test]
fn frame_decoder_session_and_agent_survive_hostile_input() {
    let execs: u64 = std::env::var("FUZZ_EXECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let corpus = corpus();
    let t0 = Instant::now();
    let mut rng = 0x5eed_u64;
    let mut session = Session::new(SessionConfig::default(), t0);
    let mut agent = Agent::new(AgentConfig::default(), t0);
    agent.start(t0);
    let mut decoded = 0u64;
    let started = Instant::now();
    for n in 0..execs {
        let input: Bytes = match n % 3 {
            0 => framed(&mut rng),
            _ => {
                let seed = &corpus[splitmix(&mut rng) as usize % corpus.len()];
                mutate(&mut rng, seed).into()
            }
        };
        if Frame::decode(&input).is_ok() {
            decoded += 1;
        }
        let now = t0 + Duration::from_micros(n);
        session.handle_frame(now, input.clone());
        agent.handle_frame(now, &input);
        if n % 64 == 0 {
            session.handle_timeout(now);
            agent.handle_timeout(now);
            session.handle_input(now, Bytes::from_static(b"data"));
            while session.poll_transmit().is_some() {}
            while session.poll_event().is_some() {}
            while session.poll_output(1 << 16).is_some() {}
            while agent.poll_transmit().is_some() {}
            while agent.poll_event().is_some() {}
        }
        // A closed session ignores everything, so start fresh ones to keep exploring.
        if session.is_closed() {
            session = Session::new(
                SessionConfig {
                    seed: n,
                    ..Default::default()
                },
                now,
            );
        }
        if agent.is_done() {
            agent = Agent::new(
                AgentConfig {
                    seed: n,
                    ..Default::default()
                },
                now,
            );
            agent.start(now);
        }
    }
    eprintln!(
        "fuzz: {execs} executions in {:?}, {decoded} decoded as frames",
        started.elapsed()
    );
    assert!(
        decoded > execs / 10,
        "the inputs must reach past the decoder"
    );
}

#[test]
fn handshake_payloads_with_garbage_json_do_not_stall_or_panic() {
    let t0 = Instant::now();
    let mut rng = 7u64;
    for n in 0..5_000u64 {
        let mut s = Session::new(SessionConfig::default(), t0);
        let payload: String = (0..splitmix(&mut rng) % 16)
            .map(|_| JSON_BITS[splitmix(&mut rng) as usize % JSON_BITS.len()])
            .collect();
        let frame = Frame {
            message_type: MessageType::OutputStreamData,
            schema_version: 1,
            created_date: 1,
            sequence: 0,
            flags: 1,
            message_id: uuid::Uuid::from_u128(u128::from(n)),
            payload_type: ptype::HANDSHAKE_REQUEST,
            payload: payload.into(),
        };
        s.handle_frame(t0, frame.encode());
        // Whatever the JSON, the request is acked and answered exactly once.
        let sent: Vec<Frame> = std::iter::from_fn(|| s.poll_transmit())
            .filter_map(|b| Frame::decode(&b).ok())
            .collect();
        assert_eq!(sent.len(), 2, "ack + response for input #{n}");
    }
}
