//! The retry policy: a pure function from (attempt, provider hint, randomness) to a decision,
//! so it can be tested exhaustively. Exponential backoff with "equal jitter" (a random point in
//! the upper half of the window) spreads out a herd of retries after an outage while keeping a
//! floor, and a provider's `Retry-After` is honoured up to a ceiling.

use std::time::Duration;

/// A provider asking us to wait longer than this is treated as asking for this long: a bogus
/// or hostile `Retry-After` must not park a message for days.
pub const RETRY_AFTER_CEILING: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Attempts are exhausted.
    GiveUp,
}

impl RetryPolicy {
    /// The backoff after attempt number `attempt` (1 = the first attempt failed).
    /// `jitter` is a uniform sample from `[0, 1)`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let window = self.base.saturating_mul(1u32 << exp).min(self.max);
        let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        window.mul_f64(factor)
    }

    /// What to do after transient failure number `attempt`.
    pub fn decide(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Decision {
        if attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        let backoff = self.backoff(attempt, jitter);
        let delay = match retry_after {
            Some(hint) => backoff.max(hint.min(RETRY_AFTER_CEILING)),
            None => backoff,
        };
        Decision::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(10), max_attempts: 5 }
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let p = policy();
        // jitter 1.0 (clamped) shows the full window.
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(800));
        assert_eq!(p.backoff(20, 1.0), Duration::from_secs(10));
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn gives_up_at_max_attempts() {
        let p = policy();
        assert!(matches!(p.decide(4, None, 0.5), Decision::Retry(_)));
        assert_eq!(p.decide(5, None, 0.5), Decision::GiveUp);
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let p = policy();
        assert_eq!(p.decide(1, Some(Duration::from_secs(30)), 0.0), Decision::Retry(Duration::from_secs(30)));
        assert_eq!(p.decide(1, Some(Duration::from_secs(86_400)), 0.0), Decision::Retry(RETRY_AFTER_CEILING));
        // A hint shorter than our backoff does not make us hammer the provider.
        assert_eq!(p.decide(3, Some(Duration::from_millis(1)), 1.0), Decision::Retry(Duration::from_millis(400)));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_window_and_cap(
            base_ms in 1u64..10_000, max_ms in 1u64..3_600_000, attempt in 1u32..100, jitter in 0.0f64..1.0
        ) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms), max_attempts: 10 };
            let d = p.backoff(attempt, jitter);
            let window = Duration::from_millis(base_ms).saturating_mul(1 << (attempt - 1).min(30)).min(Duration::from_millis(max_ms));
            prop_assert!(d <= window);
            prop_assert!(d >= window / 2);
        }

        #[test]
        fn the_window_never_shrinks_as_attempts_grow(base_ms in 1u64..10_000, max_ms in 1u64..3_600_000, attempt in 1u32..60) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms), max_attempts: 100 };
            prop_assert!(p.backoff(attempt + 1, 1.0) >= p.backoff(attempt, 1.0));
        }

        #[test]
        fn retry_after_is_a_floor(hint_ms in 0u64..10_000_000, attempt in 1u32..5, jitter in 0.0f64..1.0) {
            let p = policy();
            match p.decide(attempt, Some(Duration::from_millis(hint_ms)), jitter) {
                Decision::Retry(d) => prop_assert!(d >= Duration::from_millis(hint_ms).min(RETRY_AFTER_CEILING)),
                Decision::GiveUp => prop_assert!(false, "attempt {attempt} < max should retry"),
            }
        }
    }
}
