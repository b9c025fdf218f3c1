//! Sent but unacknowledged sequenced messages (§4.4): kept for retransmission until acked, with
//! the RTO estimator fed by their round trips. Unlike the official client, every message whose
//! timer expired is resent (acks are per message, so we know exactly which are missing), and the
//! caller bounds the queue through [`Outbox::unacked_bytes`] instead of evicting unacked data.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::rto::RttEstimator;

#[derive(Debug)]
struct Pending {
    seq: i64,
    frame: Bytes,
    payload_len: usize,
    last_sent: Instant,
    /// Karn's rule: a retransmitted message gives no RTT sample (its ack is ambiguous).
    retransmitted: bool,
}

/// Unacked outgoing messages in sequence order.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Pending>,
    unacked_bytes: usize,
    rtt: RttEstimator,
    retransmissions: u64,
}

impl Outbox {
    /// Records a message that was just sent for the first time.
    pub fn push(&mut self, now: Instant, seq: i64, frame: Bytes, payload_len: usize) {
        self.unacked_bytes += payload_len;
        self.queue.push_back(Pending {
            seq,
            frame,
            payload_len,
            last_sent: now,
            retransmitted: false,
        });
    }

    /// Removes the message with this sequence number; returns whether it was pending.
    pub fn on_ack(&mut self, now: Instant, seq: i64) -> bool {
        // Acks mostly arrive in order, so the head is the common case.
        let Some(pos) = self.queue.iter().position(|p| p.seq == seq) else {
            return false;
        };
        let Some(p) = self.queue.remove(pos) else {
            return false;
        };
        self.unacked_bytes -= p.payload_len;
        if !p.retransmitted {
            self.rtt
                .on_sample(now.saturating_duration_since(p.last_sent));
        }
        true
    }

    /// Appends to `out` every message whose RTO has expired, and restarts their timers.
    pub fn resend_due(&mut self, now: Instant, out: &mut VecDeque<Bytes>) {
        let rto = self.rtt.rto();
        for p in self.queue.iter_mut().filter(|p| p.last_sent + rto <= now) {
            p.last_sent = now;
            p.retransmitted = true;
            self.retransmissions += 1;
            out.push_back(p.frame.clone());
        }
    }

    /// Appends every unacked message to `out` (after a reconnect nothing in flight survived).
    pub fn resend_all(&mut self, now: Instant, out: &mut VecDeque<Bytes>) {
        for p in &mut self.queue {
            p.last_sent = now;
            p.retransmitted = true;
            self.retransmissions += 1;
            out.push_back(p.frame.clone());
        }
    }

    /// When the earliest retransmission falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.queue.iter().map(|p| p.last_sent).min()?;
        Some(oldest + self.rtt.rto())
    }

    /// Payload bytes sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Number of unacked messages.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether everything sent has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Total retransmissions so far.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// The RTT estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn resends_only_expired_messages_and_samples_first_transmissions() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        o.push(t0, 0, Bytes::from_static(b"a"), 1);
        o.push(
            t0 + Duration::from_millis(150),
            1,
            Bytes::from_static(b"b"),
            1,
        );
        let mut out = VecDeque::new();
        o.resend_due(t0 + Duration::from_millis(199), &mut out);
        assert!(out.is_empty());
        o.resend_due(t0 + Duration::from_millis(200), &mut out);
        assert_eq!(out, [Bytes::from_static(b"a")]);
        assert!(o.on_ack(t0 + Duration::from_millis(290), 1));
        assert_eq!(o.rtt().rtt(), Duration::from_millis(140)); // first sample: 140 ms
        assert!(o.on_ack(t0 + Duration::from_millis(300), 0));
        assert_eq!(o.rtt().rtt(), Duration::from_millis(140)); // retransmitted: no sample
        assert!(!o.on_ack(t0, 0));
        assert_eq!(o.unacked_bytes(), 0);
    }
}
