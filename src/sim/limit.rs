//! The service's per-session message-rate limit (§16.4, UNCONFIRMED: ~1000 messages/s, then
//! pause_publication, then a closed websocket if the client keeps sending). Off by default;
//! `ssm-proxy sim --max-msg-rate N` turns it on.

use std::time::Duration;

use tokio::time::Instant;

/// How long a pause lasts before start_publication.
const PAUSE: Duration = Duration::from_secs(1);

/// What the gateway must do after a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Pass,
    /// Send pause_publication.
    Pause,
    /// The client kept sending data while paused: close its websocket.
    Close,
}

/// Counts one session's client messages per second.
#[derive(Debug)]
pub struct RateLimit {
    limit: u32,
    window: (Instant, u32),
    paused: Option<(Instant, u32)>,
    /// Pauses sent, for tests.
    pub pauses: u32,
}

impl RateLimit {
    /// A limit of `limit` messages per second.
    pub fn new(limit: u32, now: Instant) -> Self {
        Self {
            limit: limit.max(1),
            window: (now, 0),
            paused: None,
            pauses: 0,
        }
    }

    /// One client message arrived; `data` is whether it is input_stream_data.
    pub fn on_message(&mut self, now: Instant, data: bool) -> Verdict {
        if now >= self.window.0 + Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        if let Some((_, sent)) = self.paused.as_mut() {
            *sent += u32::from(data);
            // A few in flight when the pause was sent are fine; a client that keeps going is not.
            return match *sent > self.limit / 10 + 16 {
                true => Verdict::Close,
                false => Verdict::Pass,
            };
        }
        if self.window.1 > self.limit {
            self.paused = Some((now, 0));
            self.pauses += 1;
            return Verdict::Pause;
        }
        Verdict::Pass
    }

    /// When the current pause ends (start_publication due).
    pub fn resume_at(&self) -> Option<Instant> {
        self.paused.map(|(t, _)| t + PAUSE)
    }

    /// The pause is over.
    pub fn resumed(&mut self, now: Instant) {
        self.paused = None;
        self.window = (now, 0);
    }
}
