//! Request rates per key (a caller, a client address, a tenant), with
//! governor's GCRA: one limiter type for the API and the bridge, so both
//! refuse the same way and say when to come back.
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

/// A sustained rate and the burst allowed on top; zero rate is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Rate { per_second, burst }
    }
}

/// Requests per key over time; keys unseen for a while are forgotten.
pub struct KeyedRate<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedRate<K> {
    /// Needs a Tokio runtime: a task of its own forgets idle keys.
    pub fn new(rate: Rate) -> Arc<Self> {
        let limiter = NonZeroU32::new(rate.per_second).map(|per_second| {
            // A burst below the rate would refuse what the rate allows.
            let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second).max(per_second);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        let rate = Arc::new(KeyedRate { limiter });
        if rate.limiter.is_some() {
            tokio::spawn(forget_idle_keys(Arc::downgrade(&rate)));
        }
        rate
    }

    /// Ok, or how long the key must wait before its next request.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => {
                limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
            }
        }
    }

    /// Keys whose state is held.
    pub fn keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// Whole seconds to wait, at least one: the value of a Retry-After header.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Keys whose allowance is full again carry no state: dropped every few
/// seconds so a flood of distinct keys (addresses, forged user ids) holds
/// memory only for as long as it lasts.
async fn forget_idle_keys<K: Hash + Eq + Clone + Send + Sync + 'static>(rate: std::sync::Weak<KeyedRate<K>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Some(rate) = rate.upgrade() else { return };
        if let Some(limiter) = &rate.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_gets_its_burst_then_waits_and_others_are_unaffected() {
        let rate = KeyedRate::new(Rate::new(1, 3));
        for _ in 0..3 {
            assert!(rate.check(&"a").is_ok());
        }
        let wait = rate.check(&"a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(rate.check(&"b").is_ok(), "another key has its own allowance");
        assert_eq!(retry_after_secs(wait), 1);
    }

    #[tokio::test]
    async fn zero_is_no_limit() {
        let rate = KeyedRate::new(Rate::new(0, 0));
        for _ in 0..10_000 {
            assert!(rate.check(&1u32).is_ok());
        }
        assert_eq!(rate.keys(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
