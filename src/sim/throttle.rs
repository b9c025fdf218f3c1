//! The service's API rate limit: one token bucket per operation (N requests a second, bursts of
//! B), answering `ThrottlingException` / "Rate exceeded" as AWS does once a bucket is empty.
//! AWS limits each API action per account and region; a throttled call costs no token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ApiError;

/// `--api-tps N` with `--api-burst B`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiLimit {
    /// Sustained requests per second, per operation.
    pub tps: f64,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: u32,
}

impl ApiLimit {
    /// `tps` a second, `burst` at once (at least 1).
    pub fn new(tps: f64, burst: u32) -> Self {
        Self {
            tps: tps.max(0.001),
            burst: burst.max(1),
        }
    }
}

/// Token buckets keyed by operation name.
#[derive(Debug, Default)]
pub struct Throttle {
    limit: Option<ApiLimit>,
    buckets: Mutex<HashMap<&'static str, (f64, Instant)>>,
}

impl Throttle {
    /// No limit when `limit` is None.
    pub fn new(limit: Option<ApiLimit>) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `op`, or answers what AWS answers when there is none.
    pub fn check(&self, op: &'static str) -> Result<(), ApiError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(op).or_insert((f64::from(limit.burst), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit.tps)
            .min(f64::from(limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::client("ThrottlingException", "Rate exceeded"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t = Throttle::new(Some(ApiLimit::new(5.0, 3)));
        assert!((0..3).all(|_| t.check("StartSession").is_ok()));
        let e = t.check("StartSession").expect_err("bucket empty");
        assert_eq!((e.status.as_u16(), e.code), (400, "ThrottlingException"));
        // Other operations have their own bucket.
        assert!(t.check("TerminateSession").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(t.check("StartSession").is_ok());
        assert!(Throttle::new(None).check("StartSession").is_ok());
    }
}
