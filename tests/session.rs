//! The client state machine driven by hand-made agent frames on a fake clock: handshake, acks,
//! ordering, duplicates, retransmission, flow control and close (protocol.md §4, §5, §7, §9).

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use ssm_proxy::proto::frame::{Frame, MessageType, PayloadType, ptype};
use ssm_proxy::proto::payload::Acknowledge;
use ssm_proxy::proto::{Event, Session, SessionConfig, SessionKind};

fn agent_frame(seq: i64, pt: PayloadType, payload: impl Into<Bytes>) -> Bytes {
    Frame {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1,
        sequence: seq,
        flags: u64::from(seq == 0),
        message_id: uuid::Uuid::from_u128(seq as u128 + 1),
        payload_type: pt,
        payload: payload.into(),
    }
    .encode()
}

fn ack_of(seq: i64) -> Bytes {
    let body = json!({"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"x",
        "AcknowledgedMessageSequenceNumber": seq, "IsSequentialMessage": true});
    Frame {
        message_type: MessageType::Acknowledge,
        schema_version: 1,
        created_date: 1,
        sequence: 0,
        flags: 3,
        message_id: uuid::Uuid::nil(),
        payload_type: ptype::NONE,
        payload: body.to_string().into(),
    }
    .encode()
}

const REQUEST: &str = r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"22"}}}]}"#;

/// Everything the session wants to send, decoded.
fn sent(s: &mut Session) -> Vec<Frame> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|b| Frame::decode(&b).expect("valid frame"))
        .collect()
}

fn acked(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.message_type == MessageType::Acknowledge)
        .map(|f| {
            serde_json::from_slice::<Acknowledge>(&f.payload)
                .unwrap()
                .acknowledged_message_sequence_number
        })
        .collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn ready_session(t0: Instant) -> Session {
    let mut s = Session::new(SessionConfig::default(), t0);
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    s.handle_frame(
        t0,
        agent_frame(
            1,
            ptype::HANDSHAKE_COMPLETE,
            r#"{"HandshakeTimeToComplete":1,"CustomerMessage":""}"#,
        ),
    );
    s.handle_frame(t0, ack_of(0));
    sent(&mut s);
    events(&mut s);
    s
}

#[test]
fn handshake_is_acked_answered_once_and_gates_input() {
    let t0 = Instant::now();
    let mut s = Session::new(SessionConfig::default(), t0);
    assert!(!s.can_accept_input());
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    let out = sent(&mut s);
    assert_eq!(acked(&out), [0]);
    let resp: Vec<_> = out
        .iter()
        .filter(|f| f.payload_type == ptype::HANDSHAKE_RESPONSE)
        .collect();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].sequence, 0);
    assert!(
        std::str::from_utf8(&resp[0].payload)
            .unwrap()
            .contains(&format!(
                r#""ClientVersion":"{}""#,
                ssm_proxy::proto::session::CLIENT_VERSION
            ))
    );
    assert!(!s.can_accept_input(), "no data before HandshakeComplete");
    // A retransmitted request is re-acked, never answered again.
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    let out = sent(&mut s);
    assert_eq!(acked(&out), [0]);
    assert!(
        out.iter()
            .all(|f| f.payload_type != ptype::HANDSHAKE_RESPONSE)
    );
    s.handle_frame(
        t0,
        agent_frame(
            1,
            ptype::HANDSHAKE_COMPLETE,
            r#"{"HandshakeTimeToComplete":1,"CustomerMessage":"hi"}"#,
        ),
    );
    assert_eq!(acked(&sent(&mut s)), [1]);
    let ev = events(&mut s);
    assert!(ev.contains(&Event::Notice("hi".into())));
    assert!(ev.contains(&Event::Ready {
        kind: SessionKind::Stream,
        agent_version: "3.3.987.0".into()
    }));
    assert!(s.can_accept_input());
}

#[test]
fn out_of_order_output_is_acked_buffered_and_delivered_in_order_once() {
    let t0 = Instant::now();
    let mut s = ready_session(t0);
    s.handle_frame(t0, agent_frame(4, ptype::OUTPUT, "d"));
    s.handle_frame(t0, agent_frame(3, ptype::OUTPUT, "c"));
    assert_eq!(s.poll_output(1 << 16), None);
    s.handle_frame(t0, agent_frame(2, ptype::OUTPUT, "b"));
    s.handle_frame(t0, agent_frame(3, ptype::OUTPUT, "c")); // duplicate
    assert_eq!(acked(&sent(&mut s)), [4, 3, 2, 3]);
    assert_eq!(s.poll_output(1 << 16).as_deref(), Some(&b"bcd"[..]));
    assert_eq!(s.stats().duplicates, 1);
}

#[test]
fn unacked_input_is_retransmitted_after_the_rto_and_not_after_the_ack() {
    let t0 = Instant::now();
    let mut s = ready_session(t0);
    s.handle_input(t0, Bytes::from(vec![7u8; 2500]));
    let first = sent(&mut s);
    assert_eq!(
        first.iter().map(|f| f.payload.len()).collect::<Vec<_>>(),
        [1024, 1024, 452]
    );
    assert_eq!(
        first.iter().map(|f| f.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let due = s.poll_timeout().expect("retransmission timer");
    s.handle_frame(t0, ack_of(2));
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(sent(&mut s).is_empty());
    s.handle_timeout(due);
    assert_eq!(
        sent(&mut s).iter().map(|f| f.sequence).collect::<Vec<_>>(),
        [1, 3]
    );
    s.handle_frame(due, ack_of(1));
    s.handle_frame(due, ack_of(3));
    assert!(s.all_acked());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_slow_reader_stops_reading_then_leaves_output_unacked_instead_of_growing() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        output_limit: 1024,
        output_hard_limit: 2048,
        ..Default::default()
    };
    let mut s = Session::new(cfg, t0);
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    s.handle_frame(t0, agent_frame(1, ptype::HANDSHAKE_COMPLETE, "{}"));
    sent(&mut s);
    assert!(s.wants_frames());
    s.handle_frame(t0, agent_frame(2, ptype::OUTPUT, vec![1u8; 1024]));
    // Backpressure: the caller stops reading the websocket here.
    assert!(!s.wants_frames());
    // A caller that feeds frames anyway meets the hard limit.
    for seq in 3..6 {
        s.handle_frame(t0, agent_frame(seq, ptype::OUTPUT, vec![1u8; 1024]));
    }
    // 4 is refused (left unacked); 5 is ahead of order, so it is buffered within the reorder limit.
    assert_eq!(acked(&sent(&mut s)), [2, 3, 5]);
    assert_eq!(s.pending_output(), 2048);
    assert_eq!(s.stats().refused, 1);
    assert_eq!(s.poll_output(1 << 16).map(|b| b.len()), Some(2048));
    s.handle_frame(t0, agent_frame(4, ptype::OUTPUT, vec![1u8; 1024])); // the agent resends
    assert_eq!(acked(&sent(&mut s)), [4]);
    assert_eq!(s.pending_output(), 2048);
}

#[test]
fn a_refused_message_is_taken_as_soon_as_the_reader_catches_up() {
    // The agent may not resend it for a second, or ever once it drains after its destination
    // closed: the session keeps it and acks it when there is room.
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            output_limit: 1024,
            output_hard_limit: 2048,
            ..Default::default()
        },
        t0,
    );
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    s.handle_frame(t0, agent_frame(1, ptype::HANDSHAKE_COMPLETE, "{}"));
    sent(&mut s);
    for seq in 2..5 {
        s.handle_frame(t0, agent_frame(seq, ptype::OUTPUT, vec![seq as u8; 1024]));
    }
    assert_eq!(acked(&sent(&mut s)), [2, 3]);
    let later = t0 + Duration::from_millis(5);
    assert!(
        s.poll_timeout().is_none_or(|t| t > later),
        "nothing to do while full"
    );
    assert_eq!(s.poll_output(1 << 16).map(|b| b.len()), Some(2048));
    // Room again: the timer is due at once, and the held message is delivered and acked.
    assert!(s.poll_timeout().is_some_and(|t| t <= later));
    s.handle_timeout(later);
    assert_eq!(acked(&sent(&mut s)), [4]);
    assert_eq!(s.poll_output(1 << 16), Some(Bytes::from(vec![4u8; 1024])));
    // A late retransmission of it is a duplicate: acked again, not delivered twice.
    s.handle_frame(later, agent_frame(4, ptype::OUTPUT, vec![4u8; 1024]));
    assert_eq!(acked(&sent(&mut s)), [4]);
    assert_eq!(s.pending_output(), 0);
}

#[test]
fn pause_publication_holds_input_until_start_or_watchdog() {
    let t0 = Instant::now();
    let mut s = ready_session(t0);
    let pause = Frame {
        message_type: MessageType::PausePublication,
        schema_version: 0,
        created_date: 0,
        sequence: 0,
        flags: 0,
        message_id: uuid::Uuid::nil(),
        payload_type: ptype::NONE,
        payload: Bytes::new(),
    };
    s.handle_frame(t0, pause.encode());
    assert!(!s.can_accept_input());
    s.handle_frame(
        t0,
        Frame {
            message_type: MessageType::StartPublication,
            ..pause.clone()
        }
        .encode(),
    );
    assert!(s.can_accept_input());
    s.handle_frame(t0, pause.encode());
    let watchdog = s.poll_timeout().expect("watchdog");
    s.handle_timeout(watchdog);
    assert!(s.can_accept_input());
}

#[test]
fn channel_closed_with_a_gap_in_the_output_is_a_failure_not_a_quiet_end() {
    let t0 = Instant::now();
    let mut s = ready_session(t0);
    s.handle_frame(t0, agent_frame(2, ptype::OUTPUT, "b"));
    s.handle_frame(t0, agent_frame(4, ptype::OUTPUT, "d"));
    s.handle_frame(t0, channel_closed("").encode());
    assert_eq!(s.poll_output(1 << 16).as_deref(), Some(&b"b"[..]));
    match events(&mut s).as_slice() {
        [Event::Failed(why)] => assert_eq!(*why, ssm_proxy::proto::SessionError::OutputMissing(3)),
        other => panic!("{other:?}"),
    }
}

fn channel_closed(output: &str) -> Frame {
    Frame {
        message_type: MessageType::ChannelClosed,
        schema_version: 1,
        created_date: 1,
        sequence: 0,
        flags: 0,
        message_id: uuid::Uuid::nil(),
        payload_type: ptype::NONE,
        payload: Bytes::from(format!(r#"{{"Output":"{output}"}}"#)),
    }
}

#[test]
fn corrupted_frames_are_dropped_without_ack_and_channel_closed_ends_it() {
    let t0 = Instant::now();
    let mut s = ready_session(t0);
    let mut bad = agent_frame(2, ptype::OUTPUT, "x").to_vec();
    *bad.last_mut().unwrap() ^= 1;
    s.handle_frame(t0, Bytes::from(bad));
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.stats().bad_frames, 1);
    s.handle_frame(t0, channel_closed("Session terminated by admin").encode());
    assert!(sent(&mut s).is_empty(), "channel_closed is never acked");
    assert_eq!(
        events(&mut s),
        [Event::Closed {
            output: "Session terminated by admin".into()
        }]
    );
}

#[test]
fn no_handshake_within_the_deadline_fails() {
    let t0 = Instant::now();
    let mut s = Session::new(SessionConfig::default(), t0);
    let deadline = s.poll_timeout().expect("ready deadline");
    s.handle_timeout(deadline);
    assert!(matches!(events(&mut s).as_slice(), [Event::Failed(_)]));
}

#[test]
fn a_shell_session_takes_input_without_a_handshake_and_waits_for_output_indefinitely() {
    let t0 = Instant::now();
    let config = SessionConfig {
        no_handshake: true,
        ..Default::default()
    };
    let mut s = Session::new(config, t0);
    assert!(
        !s.can_accept_input(),
        "a HandshakeRequest (KMS) may still come"
    );
    let mut now = t0;
    // Ten quiet minutes, the timers run whenever they ask to.
    while now < t0 + Duration::from_secs(600) {
        now = s
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now + Duration::from_millis(1));
        s.handle_timeout(now);
        assert!(
            !events(&mut s)
                .iter()
                .any(|e| matches!(e, Event::Failed(_) | Event::Closed { .. })),
            "ended after {:?}",
            now - t0
        );
    }
    assert!(s.can_accept_input());
    s.handle_frame(now, agent_frame(0, ptype::OUTPUT, "late"));
    assert_eq!(s.poll_output(1 << 16).as_deref(), Some(&b"late"[..]));
}

#[test]
fn a_held_session_leaves_output_unacked_until_a_connection_and_drops_a_closed_ones() {
    // Port forwarding (§8.1, §16.3): a greeting before any local connection is left for the
    // agent to resend; after DisconnectToPort what still comes is acked and dropped; the next
    // connection waits for the agent's acks, then sends an empty Output so the agent re-dials.
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            hold_output: true,
            ..Default::default()
        },
        t0,
    );
    s.handle_frame(t0, agent_frame(0, ptype::HANDSHAKE_REQUEST, REQUEST));
    s.handle_frame(t0, agent_frame(1, ptype::HANDSHAKE_COMPLETE, "{}"));
    sent(&mut s);
    s.handle_frame(t0, agent_frame(2, ptype::OUTPUT, "SSH-2.0-greeting\r\n"));
    assert_eq!(acked(&sent(&mut s)), Vec::<i64>::new(), "held, not acked");
    assert_eq!(s.pending_output(), 0);
    s.connected(t0);
    s.handle_frame(t0, agent_frame(2, ptype::OUTPUT, "SSH-2.0-greeting\r\n")); // resent
    assert_eq!(acked(&sent(&mut s)), [2]);
    assert_eq!(
        s.poll_output(1 << 16).as_deref(),
        Some(&b"SSH-2.0-greeting\r\n"[..])
    );
    // The connection closes: DisconnectToPort (our seq 1 after the HandshakeResponse at 0).
    s.handle_frame(t0, ack_of(0));
    s.handle_frame(t0, agent_frame(3, ptype::OUTPUT, "late")); // queued, then dropped
    s.disconnect_to_port(t0);
    s.handle_frame(t0, agent_frame(4, ptype::OUTPUT, "later"));
    assert_eq!(
        s.pending_output(),
        0,
        "nothing of the old connection is delivered"
    );
    let frames = sent(&mut s);
    assert_eq!(acked(&frames), [3, 4]);
    let flag = frames
        .iter()
        .find(|f| f.message_type == MessageType::InputStreamData)
        .expect("DisconnectToPort sent");
    assert_eq!(flag.payload_type, ptype::FLAG);
    // The next connection: no input until the flag is acked, then an empty Output.
    s.connected(t0);
    assert!(!s.can_accept_input());
    assert!(sent(&mut s).is_empty());
    s.handle_frame(t0, ack_of(flag.sequence));
    let frames = sent(&mut s);
    let trigger = frames
        .iter()
        .find(|f| f.message_type == MessageType::InputStreamData)
        .expect("empty Output");
    assert_eq!(
        (trigger.payload_type, trigger.payload.len()),
        (ptype::OUTPUT, 0)
    );
    assert!(s.can_accept_input());
    s.handle_frame(t0, agent_frame(5, ptype::OUTPUT, "HELLO 2\n"));
    assert_eq!(s.poll_output(1 << 16).as_deref(), Some(&b"HELLO 2\n"[..]));
}
