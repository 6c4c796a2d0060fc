//! How long to wait before trying again: one policy type for the control
//! plane streams (the command session and sync) and the gateway supervisor.
use std::time::Duration;

/// Capped exponential backoff: `base * 2^attempt` up to `cap`, optionally
/// with full jitter (uniform in [0, that]).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Doublings stop here (the cap usually stops them first).
    max_doublings: u32,
    jitter: bool,
}

impl Backoff {
    /// The control plane's streams: full jitter, so hosts that lost the
    /// control plane together do not all come back at the same moment.
    pub const RECONNECT: Backoff = Backoff {
        base: crate::config::RECONNECT_BACKOFF_BASE,
        cap: crate::config::RECONNECT_BACKOFF_CAP,
        max_doublings: 16,
        jitter: true,
    };

    /// A tenant's gateway that died: 1, 2, 4, 8, then 16 s between starts,
    /// no jitter (one host, one gateway).
    pub const GATEWAY_RESTART: Backoff =
        Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(30), max_doublings: 4, jitter: false };

    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(self.max_doublings)).min(self.cap);
        if self.jitter {
            ceiling.mul_f64(rand::random::<f64>())
        } else {
            ceiling
        }
    }
}

/// Counts consecutive failures; an attempt that lasted `stable` starts
/// the count over.
#[derive(Debug)]
pub struct Retries {
    policy: Backoff,
    stable: Duration,
    attempt: u32,
}

impl Retries {
    pub fn new(policy: Backoff, stable: Duration) -> Self {
        Retries { policy, stable, attempt: 0 }
    }

    /// The delay after an attempt that ran for `lasted` and failed.
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > self.stable {
            self.attempt = 0;
        }
        self.next_delay()
    }

    /// Failures counted so far.
    pub fn count(&self) -> u32 {
        self.attempt
    }

    /// The delay after an attempt that failed at once.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP};

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let delay = Backoff::RECONNECT.delay(attempt);
            assert!(delay <= RECONNECT_BACKOFF_CAP, "{attempt}: {delay:?}");
            assert!(delay <= RECONNECT_BACKOFF_BASE * 2u32.pow(attempt.min(16)), "{attempt}: {delay:?}");
        }
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| Backoff::RECONNECT.delay(10).as_micros()).collect();
        assert!(samples.len() > 10, "full jitter spreads retries");
    }

    #[test]
    fn backoff_grows_and_caps() {
        // The supervisor's n-th failure in a row waits delay(n - 1).
        assert_eq!(Backoff::GATEWAY_RESTART.delay(0), Duration::from_secs(1));
        assert_eq!(Backoff::GATEWAY_RESTART.delay(1), Duration::from_secs(2));
        assert!(Backoff::GATEWAY_RESTART.delay(49) <= Duration::from_secs(30));
    }

    #[test]
    fn a_stable_attempt_starts_the_count_over() {
        let mut retries = Retries::new(Backoff::GATEWAY_RESTART, Duration::from_secs(60));
        assert_eq!(retries.next_delay(), Duration::from_secs(1));
        assert_eq!(retries.next_delay(), Duration::from_secs(2));
        assert_eq!(retries.after(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(retries.after(Duration::from_secs(61)), Duration::from_secs(1));
    }
}
