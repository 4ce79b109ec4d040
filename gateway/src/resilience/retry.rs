//! Retries: the backoff before each (exponential, full jitter) and the budget that bounds them
//! to a share of recent traffic, so an outage never turns into a retry storm.

use std::time::Duration;

use parking_lot::Mutex;
use tandem_kernels::rng::SplitMix64;
use tokio::time::Instant;

/// Seconds of traffic the budget looks back over.
const WINDOW_SECS: usize = 10;

/// Requests and retries per second over the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
struct Buckets {
    /// The second each slot counts, since the budget's start.
    seconds: [u64; WINDOW_SECS],
    requests: [u32; WINDOW_SECS],
    retries: [u32; WINDOW_SECS],
}

/// A retry budget in the manner of Finagle's and Envoy's: retries may be at most `ratio` of the
/// requests of the last ten seconds, plus `min_per_sec` a second whatever the traffic.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    start: Instant,
    buckets: Mutex<Buckets>,
}

impl RetryBudget {
    /// A budget with nothing spent.
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio,
            min_per_sec,
            start: Instant::now(),
            buckets: Mutex::new(Buckets {
                seconds: [u64::MAX; WINDOW_SECS],
                requests: [0; WINDOW_SECS],
                retries: [0; WINDOW_SECS],
            }),
        }
    }

    /// Counts a request.
    pub fn deposit(&self, now: Instant) {
        let mut b = self.buckets.lock();
        let slot = self.slot(&mut b, now);
        b.requests[slot] += 1;
    }

    /// Takes one retry from the budget if it has one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut b = self.buckets.lock();
        let slot = self.slot(&mut b, now);
        let second = b.seconds[slot];
        let live =
            |i: usize| b.seconds[i] != u64::MAX && second - b.seconds[i] < WINDOW_SECS as u64;
        let (mut requests, mut retries) = (0u64, 0u64);
        for i in 0..WINDOW_SECS {
            if live(i) {
                requests += u64::from(b.requests[i]);
                retries += u64::from(b.retries[i]);
            }
        }
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_sec) * WINDOW_SECS as f64;
        // A whole retry must be in the budget: 0.2 of one request is not one.
        if (retries + 1) as f64 <= allowed {
            b.retries[slot] += 1;
            true
        } else {
            false
        }
    }

    /// The slot of `now`'s second, emptied when it last counted an older second.
    fn slot(&self, b: &mut Buckets, now: Instant) -> usize {
        let second = now.saturating_duration_since(self.start).as_secs();
        let slot = (second % WINDOW_SECS as u64) as usize;
        if b.seconds[slot] != second {
            b.seconds[slot] = second;
            b.requests[slot] = 0;
            b.retries[slot] = 0;
        }
        slot
    }
}

/// The wait before retry number `retry` (0 for the first): uniform in [0, ceiling), the
/// ceiling `base` doubled per retry up to `max` ("full jitter").
pub fn backoff(retry: u32, base: Duration, max: Duration, rng: &Mutex<SplitMix64>) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(16)).min(max);
    ceiling.mul_f64(rng.lock().next_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_recent_requests() {
        let budget = RetryBudget::new(0.2, 0);
        let t = Instant::now();
        assert!(!budget.withdraw(t), "no traffic, no minimum: no retry");
        for _ in 0..10 {
            budget.deposit(t);
        }
        assert!(budget.withdraw(t));
        assert!(budget.withdraw(t));
        assert!(!budget.withdraw(t), "20% of 10 requests is 2 retries");
        // Ten seconds on, the old traffic no longer counts.
        let later = t + Duration::from_secs(11);
        budget.deposit(later);
        assert!(!budget.withdraw(later));
    }

    #[test]
    fn the_minimum_allows_retries_on_little_traffic() {
        let budget = RetryBudget::new(0.0, 1);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(budget.withdraw(t));
        }
        assert!(!budget.withdraw(t));
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let rng = Mutex::new(SplitMix64::new(7));
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(250);
        for retry in 0..6 {
            let ceiling = (base * (1 << retry)).min(max);
            for _ in 0..50 {
                assert!(backoff(retry, base, max, &rng) < ceiling);
            }
        }
    }
}
