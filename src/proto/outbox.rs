//! Sent but unacknowledged sequenced messages (§4.4): kept for retransmission until acked, with
//! the RTO estimator fed by their round trips. Unlike the official client, messages whose timer
//! expired are resent oldest first (acks are per message, so we know exactly which are missing),
//! at most [`MAX_RESEND_BURST`] per [`RESEND_TICK`], with the timer backed off exponentially
//! while nothing new is acknowledged (RFC 6298 §5.5, §5.7): a peer that stopped reading (the
//! agent blocks while it dials or its destination write blocks, §16.3) gets a trickle, not a
//! flood. The caller bounds the queue through [`Outbox::unacked_bytes`] instead of evicting
//! unacked data.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::rto::RttEstimator;

/// Most messages resent in one burst.
pub const MAX_RESEND_BURST: usize = 64;
/// Least time between two bursts.
pub const RESEND_TICK: Duration = Duration::from_millis(10);
/// Largest backed-off retransmission timeout.
pub const MAX_BACKOFF_RTO: Duration = Duration::from_secs(4);

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
    /// Doublings of the RTO since the last fresh RTT sample (RFC 6298 §5.5).
    backoff: u32,
    /// When the last burst was cut short at [`MAX_RESEND_BURST`]: the rest waits a tick.
    truncated_at: Option<Instant>,
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
            // §5.7: a fresh sample ends the backoff.
            self.backoff = 0;
        }
        true
    }

    /// The retransmission timeout with the backoff applied.
    pub fn rto(&self) -> Duration {
        (self.rtt.rto() * 2u32.pow(self.backoff.min(8))).min(MAX_BACKOFF_RTO.max(self.rtt.rto()))
    }

    /// Appends to `out` the oldest messages whose RTO has expired (at most
    /// [`MAX_RESEND_BURST`]), restarts their timers and backs the timer off.
    pub fn resend_due(&mut self, now: Instant, out: &mut VecDeque<Bytes>) {
        if self.truncated_at.is_some_and(|t| now < t + RESEND_TICK) {
            return;
        }
        let rto = self.rto();
        let mut sent = 0;
        for p in self.queue.iter_mut().filter(|p| p.last_sent + rto <= now) {
            if sent == MAX_RESEND_BURST {
                self.truncated_at = Some(now);
                return;
            }
            p.last_sent = now;
            p.retransmitted = true;
            self.retransmissions += 1;
            out.push_back(p.frame.clone());
            sent += 1;
        }
        self.truncated_at = None;
        if sent > 0 {
            self.backoff += 1;
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
        let due = oldest + self.rto();
        Some(match self.truncated_at {
            Some(t) => due.max(t + RESEND_TICK),
            None => due,
        })
    }

    /// Payload bytes sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
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
    #[cfg(test)]
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

    #[test]
    fn timer_backs_off_and_bursts_are_bounded() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        for seq in 0..200 {
            o.push(t0, seq, Bytes::from_static(b"x"), 1);
        }
        let mut out = VecDeque::new();
        let t1 = t0 + Duration::from_millis(200);
        o.resend_due(t1, &mut out);
        assert_eq!(out.len(), MAX_RESEND_BURST);
        o.resend_due(t1, &mut out);
        assert_eq!(out.len(), MAX_RESEND_BURST, "the rest waits a tick");
        assert_eq!(o.next_deadline(), Some(t1 + RESEND_TICK));
        let mut t2 = t1;
        while out.len() < 200 {
            t2 += RESEND_TICK;
            o.resend_due(t2, &mut out);
        }
        // Every message went out once more; the timer doubled (200 ms → 400 ms).
        assert_eq!(o.rto(), Duration::from_millis(400));
        // A fresh sample ends the backoff.
        o.push(t2, 500, Bytes::from_static(b"y"), 1);
        assert!(o.on_ack(t2 + Duration::from_millis(5), 500));
        assert!(o.rto() < Duration::from_millis(200));
    }
}
