//! `--wait SECONDS`: a target whose agent is not connected yet (an instance still booting) is
//! asked for again, with jittered backoff, until it is online or the time is up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::AwsError;

/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The waiting budget of one invocation, shared by the target lookup and StartSession.
pub struct Wait {
    limit: Duration,
    deadline: Instant,
    pause: Duration,
    said: bool,
}

impl Wait {
    /// Waits up to `limit` in all (zero: never).
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            deadline: Instant::now() + limit,
            pause: Duration::from_millis(500),
            said: false,
        }
    }

    /// Runs `attempt` until it succeeds, fails with something other than "not connected", or
    /// the budget is spent; says once on stderr that it is waiting for `target`.
    pub async fn retry<T, F, Fut>(&mut self, target: &str, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        loop {
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if not_connected(&e) => e,
                Err(e) => return Err(e),
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err);
            }
            if !self.said {
                self.said = true;
                eprintln!(
                    "ssm-proxy: {target} is not connected to Session Manager yet; waiting up to \
                     {} s for its agent (--wait)",
                    self.limit.as_secs()
                );
            }
            // Half to all of the pause, so that a fleet started at once does not ask in step.
            let jitter = (uuid::Uuid::new_v4().as_u128() % 500) as f64 / 1000.0;
            tokio::time::sleep(self.pause.mul_f64(0.5 + jitter).min(left)).await;
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
    }
}

fn not_connected(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<AwsError>(),
        Some(AwsError::TargetNotConnected { .. } | AwsError::Offline { .. })
    )
}
