//! The shared state store's contract: byte values with a time to live, listing by prefix, atomic
//! float counters (spend), atomic GCRA rate checks (limits), a request's admission (its
//! budgets and its limiters at once) and answers' settlement (their spend and their token
//! corrections at once), and the GCRA arithmetic both
//! backends share. A leaf: the backends and every user of the store name this file only.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Error;

/// One limit to check or charge: `cost` units against `per_minute` under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCheck {
    /// The limiter's key (`rl:key:<id>:rpm`).
    pub key: String,
    /// Units allowed per minute, the burst included (at least 1).
    pub per_minute: u64,
    /// Units this request takes; negative gives units back (a correction after the fact).
    pub cost: f64,
}

/// One limiter's state after a check, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Units allowed per minute.
    pub limit: u64,
    /// Units left now.
    pub remaining: u64,
    /// Milliseconds until the limiter is full again.
    pub reset_ms: u64,
    /// Milliseconds until this request's cost would fit (0 when it fit).
    pub retry_after_ms: u64,
}

/// What a rate check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateOutcome {
    /// Every limiter had room, and all were charged; none was charged otherwise.
    pub allowed: bool,
    /// Each limiter's state, in the order of the checks.
    pub states: Vec<RateState>,
}

/// A spend counter a request may not reach: refused once the counter holds `limit` or more.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetCheck {
    /// The counter's key (`spend:<period>:key:<id>`).
    pub counter: String,
    /// The most it may hold before requests are refused.
    pub limit: f64,
}

/// What [`Store::admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// A budget is spent: the index of its check and what its counter holds. No limiter was
    /// charged.
    OverBudget {
        /// Which of the budget checks.
        index: usize,
        /// Dollars its counter holds.
        spent: f64,
    },
    /// Every budget has room (or was only read): the rate check's outcome and the dollars each
    /// budget's counter holds, in the order of the budgets.
    Rated {
        /// The rate check.
        outcome: RateOutcome,
        /// Each budget counter's dollars.
        spent: Vec<f64>,
    },
}

/// Shared state: one replica's view of what every replica sees. Keys are plain strings; the
/// Redis backend puts its prefix in front. Every operation is bounded in time and fails with
/// [`Error::StoreUnavailable`] rather than wait; callers decide whether that fails open.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// `redis` or `embedded`, for logs and the admin API.
    fn backend(&self) -> &'static str;
    /// Whether the last operations reached the store.
    fn is_up(&self) -> bool;
    /// Whether the store is across a network (each operation a round trip), not in this
    /// process.
    fn remote(&self) -> bool {
        false
    }
    /// Makes what was written durable now, where the backend buffers.
    fn flush(&self) {}
    /// Makes everything durable and lets another process open the store (at shutdown).
    fn close(&self) {
        self.flush();
    }
    /// A receiver that sees every change of [`Store::is_up`] (for re-syncing when it comes back).
    fn watch_up(&self) -> tokio::sync::watch::Receiver<bool>;
    /// [`Store::list`] without waiting, for a store in this process (None for Redis): what a
    /// replica reads at start, before serving.
    fn list_now(&self, _prefix: &str) -> Option<Vec<(String, Bytes)>> {
        None
    }
    /// The value at `key`.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error>;
    /// The values at `keys`, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error>;
    /// Sets `key`, expiring after `ttl` when given.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error>;
    /// Sets `key` only when it holds nothing; whether it did.
    async fn set_if_absent(&self, key: &str, value: Bytes) -> Result<bool, Error>;
    /// Removes `key`; whether it was there.
    async fn delete(&self, key: &str) -> Result<bool, Error>;
    /// Every key starting with `prefix`, with its value (not time-bounded like the request-path
    /// operations: for admin and background work).
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, Error>;
    /// Adds each delta to its counter at once (all or none), each counter expiring `ttl` after
    /// its last change when given; the new values.
    async fn incr_many(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
    ) -> Result<Vec<f64>, Error>;
    /// Checks every limiter at once and charges them all only when all have room; with `force`,
    /// charges (or refunds) whatever the state.
    async fn rate(&self, checks: &[RateCheck], force: bool) -> Result<RateOutcome, Error>;
    /// Settles requests after the fact, all at once: adds `deltas` to their counters as
    /// [`Store::incr_many`] does, then charges (or refunds) `charges` whatever the state and
    /// reads `budgets`, as [`Store::admit`] with `force` does, answering the same. A remote
    /// store does it in one round trip.
    async fn settle(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
        budgets: &[BudgetCheck],
        charges: &[RateCheck],
    ) -> Result<Admission, Error> {
        if !deltas.is_empty() {
            self.incr_many(deltas, ttl).await?;
        }
        self.admit(budgets, charges, true).await
    }
    /// A request's admission: refused when any of `budgets` is spent (no limiter charged), else
    /// [`Store::rate`] over `checks`. With `force` (a request already let through), the budgets
    /// are only read and the limiters charged whatever their state. A remote store does it in
    /// one round trip.
    async fn admit(
        &self,
        budgets: &[BudgetCheck],
        checks: &[RateCheck],
        force: bool,
    ) -> Result<Admission, Error> {
        let mut spent = Vec::with_capacity(budgets.len());
        if !budgets.is_empty() {
            let counters: Vec<String> = budgets.iter().map(|b| b.counter.clone()).collect();
            let values = self.get_many(&counters).await?;
            for (index, (budget, value)) in budgets.iter().zip(&values).enumerate() {
                let dollars = counter_value(value.as_ref());
                if dollars >= budget.limit && !force {
                    return Ok(Admission::OverBudget {
                        index,
                        spent: dollars,
                    });
                }
                spent.push(dollars);
            }
        }
        let outcome = self.rate(checks, force).await?;
        Ok(Admission::Rated { outcome, spent })
    }
}

/// Reads a counter written by [`Store::incr_many`] (0 when absent or unreadable).
pub fn counter_value(value: Option<&Bytes>) -> f64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Milliseconds since the Unix epoch, as a float (the clock GCRA runs on in-process).
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One GCRA step for one limiter: from its theoretical arrival time `tat` (ms, none when fresh)
/// at `now`, the new time and its state. The Redis script does exactly this.
pub fn gcra_step(tat: Option<f64>, now: f64, check: &RateCheck, force: bool) -> (f64, RateState) {
    let limit = check.per_minute.max(1);
    let interval = 60_000.0 / limit as f64;
    let tolerance = 60_000.0;
    // A single request larger than the whole minute would never fit: it takes the whole minute.
    let cost = check.cost.min(limit as f64);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = (tat + cost * interval).max(now);
    let fits = new_tat - now <= tolerance + 1e-6;
    let (kept, retry) = if fits || force {
        (new_tat, 0.0)
    } else {
        (tat, new_tat - tolerance - now)
    };
    let used = kept - now;
    let state = RateState {
        limit,
        remaining: ((tolerance - used) / interval).floor().max(0.0) as u64,
        reset_ms: used.ceil().max(0.0) as u64,
        retry_after_ms: retry.ceil().max(0.0) as u64,
    };
    (kept, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(per_minute: u64, cost: f64) -> RateCheck {
        RateCheck {
            key: "k".into(),
            per_minute,
            cost,
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let mut tat = None;
        let now = 1_000_000.0;
        for i in 0..10 {
            let (t, s) = gcra_step(tat, now, &check(10, 1.0), false);
            assert!(t - now <= 60_000.0, "request {i}");
            assert_eq!(s.remaining, 9 - i);
            tat = Some(t);
        }
        let (t, s) = gcra_step(tat, now, &check(10, 1.0), false);
        assert_eq!(Some(t), tat, "a refused request charges nothing");
        assert_eq!(s.retry_after_ms, 6_000);
        // One interval later one more fits.
        let (_, s) = gcra_step(tat, now + 6_000.0, &check(10, 1.0), false);
        assert_eq!(s.retry_after_ms, 0);
        assert_eq!(s.remaining, 0);
    }

    #[test]
    fn a_refund_gives_units_back_and_force_charges_past_the_limit() {
        let now = 0.0;
        let (t, s) = gcra_step(None, now, &check(1000, 800.0), false);
        assert_eq!(s.remaining, 200);
        let (t, s) = gcra_step(Some(t), now, &check(1000, -300.0), true);
        assert_eq!(s.remaining, 500);
        let (_, s) = gcra_step(Some(t), now, &check(1000, 900.0), true);
        assert_eq!(s.remaining, 0);
        assert_eq!(s.retry_after_ms, 0);
    }
}
