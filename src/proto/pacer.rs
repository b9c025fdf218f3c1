//! Upload pacing (§16.4): a token bucket over input messages and bytes. Limits come from the
//! user (`--max-rate`, for a known service limit) and from the service itself: a
//! pause_publication says we sent too fast, so the rate we had in the last second is halved (at
//! most once a second, like TCP's one decrease per window: a burst of pauses is one signal) and
//! then recovers by half per quiet second, instead of being tripped again at once.

use std::time::{Duration, Instant};

/// A fixed rate limit: messages per second or bytes per second (either may be absent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Input messages per second.
    pub messages: Option<f64>,
    /// Input payload bytes per second.
    pub bytes: Option<f64>,
}

impl Rate {
    /// Parses `N` or `Nmsg` (messages per second) or `NB`, `NK`, `NM` (bytes per second, KiB,
    /// MiB).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}`: expected a number, e.g. 500 or 512K"))?;
        if n <= 0.0 {
            return Err(format!("`{s}`: the rate must be positive"));
        }
        let bytes = |mult: f64| Self {
            messages: None,
            bytes: Some(n * mult),
        };
        match unit.to_ascii_lowercase().as_str() {
            "" | "msg" | "m/s" => Ok(Self {
                messages: Some(n),
                bytes: None,
            }),
            "b" => Ok(bytes(1.0)),
            "k" | "kb" | "kib" => Ok(bytes(1024.0)),
            "m" | "mb" | "mib" => Ok(bytes(1024.0 * 1024.0)),
            other => Err(format!(
                "`{s}`: unknown unit `{other}` (use msg, B, K or M)"
            )),
        }
    }
}

/// How much the service's own limit (learned from pause_publication) recovers per second.
const RECOVERY: f64 = 1.5;
/// The learned limit never goes below this many messages per second (a fifth of the ~1000/s the
/// service is reported to allow, §16.4).
const FLOOR: f64 = 200.0;
/// Least time between two decreases.
const CUT_INTERVAL: Duration = Duration::from_secs(1);

/// Token buckets for messages and bytes.
#[derive(Debug)]
pub struct Pacer {
    fixed: Rate,
    /// Messages per second learned from pause_publication.
    learned: Option<f64>,
    learned_at: Instant,
    /// When the learned limit was last lowered.
    cut_at: Option<Instant>,
    msg_tokens: f64,
    byte_tokens: f64,
    last: Instant,
    /// Messages sent in the current and the previous second (rate estimate).
    window: (Instant, u64, u64),
}

impl Pacer {
    /// A pacer with the user's fixed limit (if any).
    pub fn new(fixed: Rate, now: Instant) -> Self {
        Self {
            fixed,
            learned: None,
            learned_at: now,
            cut_at: None,
            msg_tokens: 1.0,
            byte_tokens: 0.0,
            last: now,
            window: (now, 0, 0),
        }
    }

    fn msg_rate(&self) -> Option<f64> {
        match (self.fixed.messages, self.learned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Refills the buckets up to `now`.
    pub fn tick(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        if let Some(learned) = self.learned {
            let quiet = now.saturating_duration_since(self.learned_at).as_secs_f64();
            if quiet >= 1.0 {
                let next = learned * RECOVERY;
                self.learned_at = now;
                // Far above the fixed limit or what we ever sent: forget it.
                self.learned = (next < 100_000.0).then_some(next);
            }
        }
        if let Some(r) = self.msg_rate() {
            self.msg_tokens = (self.msg_tokens + r * dt).min((r / 10.0).max(1.0));
        }
        if let Some(r) = self.fixed.bytes {
            self.byte_tokens = (self.byte_tokens + r * dt).min((r / 10.0).max(1024.0));
        }
        let (start, _, _) = self.window;
        if now.saturating_duration_since(start) >= Duration::from_secs(1) {
            self.window = (now, 0, self.window.1);
        }
    }

    /// Whether one more message may go now.
    pub fn ready(&self) -> bool {
        (self.msg_rate().is_none() || self.msg_tokens >= 1.0)
            && (self.fixed.bytes.is_none() || self.byte_tokens > 0.0)
    }

    /// When [`Pacer::ready`] becomes true again (None: it is, or nothing limits).
    pub fn next_ready(&self) -> Option<Instant> {
        if self.ready() {
            return None;
        }
        let wait_msg = self
            .msg_rate()
            .filter(|_| self.msg_tokens < 1.0)
            .map(|r| (1.0 - self.msg_tokens) / r)
            .unwrap_or(0.0);
        let wait_bytes = self
            .fixed
            .bytes
            .filter(|_| self.byte_tokens <= 0.0)
            .map(|r| (1.0 - self.byte_tokens) / r)
            .unwrap_or(0.0);
        let wait = wait_msg.max(wait_bytes).clamp(0.001, 10.0);
        Some(self.last + Duration::from_secs_f64(wait))
    }

    /// One input message of `len` payload bytes went out.
    pub fn on_sent(&mut self, len: usize) {
        if self.msg_rate().is_some() {
            self.msg_tokens -= 1.0;
        }
        if self.fixed.bytes.is_some() {
            self.byte_tokens -= len as f64;
        }
        self.window.1 += 1;
    }

    /// The service paused publication: we were too fast for it. Halve the recent rate.
    pub fn on_pause(&mut self, now: Instant) {
        // Any pause delays the recovery; only the first in a second lowers the limit.
        self.learned_at = now;
        if self
            .cut_at
            .is_some_and(|t| now.saturating_duration_since(t) < CUT_INTERVAL)
        {
            return;
        }
        self.cut_at = Some(now);
        let recent = self.window.1.max(self.window.2) as f64;
        let base = self.learned.map_or(recent, |l| l.min(recent.max(FLOOR)));
        self.learned = Some((base / 2.0).max(FLOOR));
        self.msg_tokens = self.msg_tokens.min(1.0);
    }

    /// The learned limit, for logs and tests.
    pub fn learned(&self) -> Option<f64> {
        self.learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("500").unwrap().messages, Some(500.0));
        assert_eq!(Rate::parse("512K").unwrap().bytes, Some(512.0 * 1024.0));
        assert_eq!(Rate::parse("2MiB").unwrap().bytes, Some(2.0 * 1048576.0));
        assert!(Rate::parse("fast").is_err());
        assert!(Rate::parse("0").is_err());
    }

    #[test]
    fn a_fixed_message_rate_is_kept_on_average() {
        let t0 = Instant::now();
        let rate = Rate::parse("100").unwrap();
        let mut p = Pacer::new(rate, t0);
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(2) {
            p.tick(now);
            if p.ready() {
                p.on_sent(1024);
                sent += 1;
            } else {
                now = p.next_ready().unwrap();
            }
        }
        assert!((195..=215).contains(&sent), "{sent} in 2 s");
    }

    #[test]
    fn pause_publication_halves_the_recent_rate_then_it_recovers() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Rate::default(), t0);
        for _ in 0..2000 {
            p.on_sent(1024);
        }
        p.on_pause(t0);
        assert_eq!(p.learned(), Some(1000.0));
        // A burst of pauses is one signal.
        p.on_pause(t0 + Duration::from_millis(100));
        assert_eq!(p.learned(), Some(1000.0));
        p.tick(t0 + Duration::from_millis(1100));
        assert_eq!(p.learned(), Some(1500.0));
    }
}
