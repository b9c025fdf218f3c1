//! Retransmission timeout estimator, the same on both official sides (§4.4, constants §4.5).

use std::time::Duration;

/// RTO before any sample.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
const INITIAL_RTT: Duration = Duration::from_millis(100);
const GRANULARITY: Duration = Duration::from_millis(10);
/// Upper bound of the RTO.
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// Smoothed RTT, its variation and the resulting RTO.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    rtt: Duration,
    rttvar: Duration,
    rto: Duration,
    samples: u64,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            rtt: INITIAL_RTT,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            samples: 0,
        }
    }
}

impl RttEstimator {
    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Feeds one round-trip sample. Later samples follow §4.4 exactly (RTTVAR uses the old RTT);
    /// the first one replaces the 100 ms guess, as in RFC 6298 §2.2. The official code blends it
    /// in at 1/8, which keeps the RTO near 200 ms for the first seconds of a session: exactly when
    /// the agent leaves our first data unacked until its TCP dial is done (§5.6), so every new
    /// ssh connection would wait that long.
    pub fn on_sample(&mut self, sample: Duration) {
        if self.samples == 0 {
            self.rtt = sample;
            self.rttvar = sample / 2;
        } else {
            let diff = self.rtt.abs_diff(sample);
            self.rttvar = self.rttvar * 3 / 4 + diff / 4;
            self.rtt = self.rtt * 7 / 8 + sample / 8;
        }
        self.samples += 1;
        self.rto = (self.rtt + GRANULARITY.max(self.rttvar * 4)).min(MAX_RTO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_of_the_official_test() {
        // The official test starts from RTT 100 ms / RTTVAR 0 as the state before the sample.
        let mut e = RttEstimator {
            samples: 1,
            ..Default::default()
        };
        e.on_sample(Duration::from_millis(140));
        assert_eq!(e.rttvar, Duration::from_millis(10));
        assert_eq!(e.rtt, Duration::from_millis(105));
        assert_eq!(e.rto(), Duration::from_millis(145));
    }

    #[test]
    fn first_sample_replaces_the_initial_guess() {
        let mut e = RttEstimator::default();
        e.on_sample(Duration::from_millis(2));
        assert_eq!(e.rtt(), Duration::from_millis(2));
        assert_eq!(e.rto(), Duration::from_millis(12));
    }

    #[test]
    fn rto_is_capped_at_one_second() {
        let mut e = RttEstimator::default();
        for _ in 0..20 {
            e.on_sample(Duration::from_secs(5));
        }
        assert_eq!(e.rto(), MAX_RTO);
    }
}
