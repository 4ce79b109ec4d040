//! Pre-admission on a remote store: a request far from every limit goes on before the store
//! answers. A replica keeps what the store last said of each limiter (units left) and budget
//! (dollars spent); while that is fresh and leaves plenty of room, the request is let through
//! at once and its admission script still runs, charging every limiter exactly, with the
//! answer refreshing the view. Near a limit, or on a stale view, the request waits for the
//! store's decision as before.
//!
//! The bound: a replica pre-admits at most [`UNCONFIRMED_SHARE`] of a limiter's per-minute
//! limit before the store confirms it, and only while its view (at most [`FRESH`] old) shows
//! [`ROOM_SHARE`] of the limit left; so replicas together can pass a limit by at most that
//! share each, and a limiter of fewer than `1 / UNCONFIRMED_SHARE` units per minute is always
//! decided by the store first. A budget is pre-admitted while its view, with this replica's
//! own charges since added, shows under [`BUDGET_SHARE`] of it spent (budgets are checked
//! before an answer's cost is known anyway).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::{BudgetCheck, RateCheck, RateState};

/// How old a view may be and still pre-admit.
pub const FRESH: Duration = Duration::from_millis(250);
/// The most of a limiter's limit a replica lets through before the store confirms it.
pub const UNCONFIRMED_SHARE: f64 = 0.01;
/// The least of a limiter's limit its view must show left, after this request.
pub const ROOM_SHARE: f64 = 0.1;
/// The most of a budget its view may show spent.
pub const BUDGET_SHARE: f64 = 0.9;

/// What the store last said of one limiter.
#[derive(Debug, Clone, Copy)]
struct Limit {
    /// Units left then.
    remaining: f64,
    /// Milliseconds until full then.
    reset_ms: u64,
    /// When the store said it.
    at: Instant,
    /// Units let through here since, not yet confirmed.
    unconfirmed: f64,
}

/// What the store last said of one budget.
#[derive(Debug, Clone, Copy)]
struct Spent {
    dollars: f64,
    at: Instant,
}

/// One replica's views (see the module docs).
#[derive(Debug, Default)]
pub struct Headroom {
    limits: parking_lot::Mutex<HashMap<String, Limit>>,
    budgets: parking_lot::Mutex<HashMap<String, Spent>>,
}

impl Headroom {
    /// Lets a request with `budgets` and `checks` through at once when every view leaves room,
    /// holding its units as unconfirmed; the limiters' states for its headers. None: ask the
    /// store.
    pub fn pre_admit(
        &self,
        budgets: &[BudgetCheck],
        checks: &[RateCheck],
    ) -> Option<Vec<RateState>> {
        let now = Instant::now();
        {
            let spent = self.budgets.lock();
            for b in budgets {
                let view = spent.get(&b.counter)?;
                if now.duration_since(view.at) > FRESH || view.dollars >= b.limit * BUDGET_SHARE {
                    return None;
                }
            }
        }
        let mut limits = self.limits.lock();
        for c in checks {
            let view = limits.get(&c.key)?;
            let limit = c.per_minute.max(1) as f64;
            let cost = c.cost.max(0.0);
            if now.duration_since(view.at) > FRESH
                || view.unconfirmed + cost > limit * UNCONFIRMED_SHARE
                || view.remaining - view.unconfirmed - cost < limit * ROOM_SHARE
            {
                return None;
            }
        }
        // Every view was found above, under the same lock.
        checks
            .iter()
            .map(|c| {
                let view = limits.get_mut(&c.key)?;
                let limit = c.per_minute.max(1);
                let interval_ms = 60_000.0 / limit as f64;
                view.unconfirmed += c.cost.max(0.0);
                let left = (view.remaining - view.unconfirmed).max(0.0);
                Some(RateState {
                    limit,
                    remaining: left.floor() as u64,
                    reset_ms: view.reset_ms + (c.cost.max(0.0) * interval_ms).ceil() as u64,
                    retry_after_ms: 0,
                })
            })
            .collect()
    }

    /// Notes what the store answered for `checks` (their states) and `budgets` (their spend);
    /// `released` gives, per check, the pre-admitted units the answer confirmed (none for a
    /// decision the request waited for).
    pub fn note(
        &self,
        budgets: &[BudgetCheck],
        spent: &[f64],
        checks: &[RateCheck],
        states: &[RateState],
        released: &[f64],
    ) {
        let now = Instant::now();
        {
            let mut views = self.budgets.lock();
            for (b, dollars) in budgets.iter().zip(spent) {
                refresh(&mut views, &b.counter, |_| Spent {
                    dollars: *dollars,
                    at: now,
                });
            }
        }
        let mut limits = self.limits.lock();
        for (i, (c, s)) in checks.iter().zip(states).enumerate() {
            let released = released.get(i).copied().unwrap_or(0.0);
            refresh(&mut limits, &c.key, |old| Limit {
                remaining: s.remaining as f64,
                reset_ms: s.reset_ms,
                at: now,
                unconfirmed: (old.map_or(0.0, |v| v.unconfirmed) - released).max(0.0),
            });
        }
        // Limiters idle for a minute are full again: forget them.
        if limits.len() > 100_000 {
            limits.retain(|_, v| now.duration_since(v.at) < Duration::from_secs(60));
        }
    }

    /// Adds this replica's own charges (`deltas` to spend counters) to the budgets' views at
    /// once, so a budget this replica spends is never pre-admitted past on an older view.
    pub fn charged(&self, deltas: &[(String, f64)]) {
        let mut views = self.budgets.lock();
        for (counter, dollars) in deltas {
            if let Some(view) = views.get_mut(counter) {
                view.dollars += dollars;
            }
        }
    }

    /// Forgets `checks`' views after the store failed to take their charges: the next requests
    /// ask the store (and follow `store.on_unavailable`).
    pub fn forget(&self, checks: &[RateCheck]) {
        let mut limits = self.limits.lock();
        for c in checks {
            limits.remove(&c.key);
        }
    }
}

/// Sets the view under `key` to `view` of the one it replaces; most answers refresh a known
/// view, so the key is copied only for a new one.
fn refresh<V>(views: &mut HashMap<String, V>, key: &str, view: impl FnOnce(Option<&V>) -> V) {
    match views.get_mut(key) {
        Some(v) => *v = view(Some(v)),
        None => {
            views.insert(key.to_owned(), view(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(per_minute: u64, cost: f64) -> RateCheck {
        RateCheck {
            key: "rl:k".into(),
            per_minute,
            cost,
        }
    }

    fn state(limit: u64, remaining: u64) -> RateState {
        RateState {
            limit,
            remaining,
            reset_ms: 0,
            retry_after_ms: 0,
        }
    }

    #[test]
    fn a_request_far_from_the_limit_goes_on_and_one_near_it_asks_the_store() {
        let h = Headroom::default();
        let c = [check(10_000, 1.0)];
        assert!(h.pre_admit(&[], &c).is_none(), "no view yet");
        h.note(&[], &[], &c, &[state(10_000, 9_000)], &[]);
        // 1 % of 10,000 is 100 unconfirmed requests at most.
        for i in 0..100 {
            let states = h.pre_admit(&[], &c).expect("room");
            assert_eq!(states[0].remaining, 8_999 - i);
        }
        assert!(
            h.pre_admit(&[], &c).is_none(),
            "the unconfirmed share is used"
        );
        // The store confirms one: one more may go.
        h.note(&[], &[], &c, &[state(10_000, 8_900)], &[1.0]);
        assert!(h.pre_admit(&[], &c).is_some());
        // Under 10 % left: every request asks the store.
        let h = Headroom::default();
        h.note(&[], &[], &c, &[state(10_000, 1_000)], &[]);
        assert!(h.pre_admit(&[], &c).is_none());
    }

    #[test]
    fn small_limits_stale_views_and_spent_budgets_ask_the_store() {
        let h = Headroom::default();
        let small = [check(30, 1.0)];
        h.note(&[], &[], &small, &[state(30, 30)], &[]);
        assert!(
            h.pre_admit(&[], &small).is_none(),
            "1 % of 30 is under one request"
        );
        let budget = [BudgetCheck {
            counter: "spend:d:key:a".into(),
            limit: 10.0,
        }];
        let c = [check(10_000, 1.0)];
        h.note(&budget, &[9.5], &c, &[state(10_000, 9_000)], &[]);
        assert!(h.pre_admit(&budget, &c).is_none(), "95 % spent");
        h.note(&budget, &[1.0], &c, &[state(10_000, 9_000)], &[]);
        assert!(h.pre_admit(&budget, &c).is_some());
        // This replica's own charge counts at once.
        h.charged(&[(budget[0].counter.clone(), 8.5)]);
        assert!(h.pre_admit(&budget, &c).is_none(), "95 % spent");
        h.note(&budget, &[1.0], &c, &[state(10_000, 9_000)], &[]);
        std::thread::sleep(FRESH + Duration::from_millis(20));
        assert!(h.pre_admit(&budget, &c).is_none(), "stale");
    }
}
