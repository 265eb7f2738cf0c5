//! The retry policy: which failures are retried, how long to wait, and when to give up.
//!
//! Retries resend the very same body. With `enable_duplicate_check` WeCom drops a body equal to
//! one it delivered within `duplicate_check_interval`, so a retry after an ambiguous failure (a
//! timeout: did it arrive?) cannot deliver twice, *as long as it is made inside that interval*.
//! The policy therefore stops retrying ambiguous failures well before the interval ends.

use std::time::Duration;

use rand::Rng;

/// Bounds and pacing of retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per send, the first included.
    pub max_attempts: u32,
    /// Total time a send may spend retrying.
    pub max_elapsed: Duration,
    /// First back-off; doubles on each retry.
    pub base_delay: Duration,
    /// Back-off ceiling.
    pub max_delay: Duration,
    /// How long an app pauses after 45009 (WeCom counts its frequency limit per minute).
    pub rate_limit_pause: Duration,
    /// Safety margin before the end of the duplicate-check interval for ambiguous retries.
    pub duplicate_margin: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(300),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            rate_limit_pause: Duration::from_secs(60),
            duplicate_margin: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Exponential back-off with "equal jitter": half fixed, half random, so that many sends
    /// failing together do not come back together.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(16);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// The back-off after a frequency-limit answer: a full pause plus up to 10 % jitter.
    pub fn rate_limit_backoff(&self) -> Duration {
        let jitter = rand::rng().random_range(0..=self.rate_limit_pause.as_millis() as u64 / 10);
        self.rate_limit_pause + Duration::from_millis(jitter)
    }

    /// How long after the first possibly-delivered attempt a resend is still safely deduplicated:
    /// never, without a duplicate check.
    pub fn ambiguous_window(&self, duplicate_check: Option<Duration>) -> Duration {
        duplicate_check.map_or(Duration::ZERO, |window| {
            window.saturating_sub(self.duplicate_margin)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let late = policy.backoff(10);
            assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
        }
        let pause = policy.rate_limit_backoff();
        assert!(pause >= Duration::from_secs(60) && pause <= Duration::from_secs(66));
        assert_eq!(
            policy.ambiguous_window(Some(Duration::from_secs(1800))),
            Duration::from_secs(1790)
        );
        assert_eq!(
            policy.ambiguous_window(Some(Duration::from_secs(5))),
            Duration::ZERO
        );
    }
}
