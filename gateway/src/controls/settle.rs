//! Writing requests' state after the fact: answers' spend charges and token corrections, and
//! the limiter charges of requests let through before the store answered (pre-admission,
//! `headroom`), are gathered for a few milliseconds and written in one store call
//! ([`Store::settle`]), so a busy gateway writes once per window instead of once or twice per
//! request. Counters are sums and forced limiter charges add up, so gathering them changes only
//! when they land: budgets and spend reports see an answer at most [`SETTLE_WINDOW`] (plus a
//! round trip) later. The store's answer refreshes the pre-admission views. Whatever is pending
//! is written at shutdown.
//!
//! [`Store::settle`]: crate::store::Store::settle

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::headroom::Headroom;
use crate::store::{Admission, BudgetCheck, RateCheck, SharedStore};

/// How long requests' writes are gathered before they go to the store.
pub const SETTLE_WINDOW: Duration = Duration::from_millis(5);

/// One limiter's gathered charge.
#[derive(Debug, Clone, Copy, Default)]
struct Charge {
    per_minute: u64,
    /// Every unit to charge (negative: give back).
    units: f64,
    /// Of those, units pre-admitted requests hold unconfirmed.
    unconfirmed: f64,
}

/// What requests left to write.
#[derive(Debug, Default)]
struct Pending {
    /// Counter deltas, summed per counter.
    deltas: HashMap<String, f64>,
    /// Limiter charges, summed per limiter.
    charges: HashMap<String, Charge>,
    /// Budgets whose spend pre-admitted requests want read back, by counter: their limits.
    budgets: HashMap<String, f64>,
    /// Whether a write is already scheduled for them.
    armed: bool,
}

/// Gathers and writes (see the module docs).
#[derive(Debug)]
pub struct Settler {
    store: SharedStore,
    ttl: Option<Duration>,
    headroom: Option<Arc<Headroom>>,
    pending: parking_lot::Mutex<Pending>,
}

impl Settler {
    /// A settler writing to `store`, counters expiring `ttl` after their last change; the
    /// store's answers go to `headroom`.
    pub fn new(
        store: SharedStore,
        ttl: Option<Duration>,
        headroom: Option<Arc<Headroom>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            ttl,
            headroom,
            pending: parking_lot::Mutex::new(Pending::default()),
        })
    }

    /// Adds answers' `deltas` and token `corrections` to the next write.
    pub fn push(self: &Arc<Self>, deltas: Vec<(String, f64)>, corrections: Vec<RateCheck>) {
        if deltas.is_empty() && corrections.is_empty() {
            return;
        }
        self.gather(|p| {
            for (counter, delta) in deltas {
                *p.deltas.entry(counter).or_insert(0.0) += delta;
            }
            for c in corrections {
                let charge = p.charges.entry(c.key).or_default();
                charge.per_minute = c.per_minute;
                charge.units += c.cost;
            }
        });
    }

    /// Adds a pre-admitted request's limiter `checks` (charged whatever their state) and the
    /// `budgets` to read back to the next write.
    pub fn confirm(self: &Arc<Self>, budgets: Vec<BudgetCheck>, checks: Vec<RateCheck>) {
        self.gather(|p| {
            for b in budgets {
                p.budgets.insert(b.counter, b.limit);
            }
            for c in checks {
                let charge = p.charges.entry(c.key).or_default();
                charge.per_minute = c.per_minute;
                charge.units += c.cost;
                charge.unconfirmed += c.cost.max(0.0);
            }
        });
    }

    /// Applies `add` to what is pending, scheduling a write when none is.
    fn gather(self: &Arc<Self>, add: impl FnOnce(&mut Pending)) {
        let arm = {
            let mut p = self.pending.lock();
            add(&mut p);
            !std::mem::replace(&mut p.armed, true)
        };
        if !arm {
            return;
        }
        let this = self.clone();
        let write = async move {
            tokio::time::sleep(SETTLE_WINDOW).await;
            this.flush().await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(write);
            }
            // No runtime to wait on (a shutdown in progress): leave it to the last flush.
            Err(_) => self.pending.lock().armed = false,
        }
    }

    /// Writes whatever is pending now.
    pub async fn flush(&self) {
        let pending = {
            let mut p = self.pending.lock();
            std::mem::take(&mut *p)
        };
        if pending.deltas.is_empty() && pending.charges.is_empty() && pending.budgets.is_empty() {
            return;
        }
        let deltas: Vec<(String, f64)> = pending.deltas.into_iter().collect();
        let budgets: Vec<BudgetCheck> = pending
            .budgets
            .into_iter()
            .map(|(counter, limit)| BudgetCheck { counter, limit })
            .collect();
        let (checks, released): (Vec<RateCheck>, Vec<f64>) = pending
            .charges
            .into_iter()
            .map(|(key, c)| {
                let check = RateCheck {
                    key,
                    per_minute: c.per_minute,
                    cost: c.units,
                };
                (check, c.unconfirmed)
            })
            .unzip();
        let answer = self
            .store
            .settle(&deltas, self.ttl, &budgets, &checks)
            .await;
        if let Err(e) = &answer {
            tracing::debug!(error = %e, "requests' spend and limiter charges did not reach the store");
        }
        let Some(headroom) = &self.headroom else {
            return;
        };
        match answer {
            Ok(Admission::Rated { outcome, spent }) => {
                headroom.note(&budgets, &spent, &checks, &outcome.states, &released);
            }
            // Not taken as asked: the next requests ask the store.
            _ => headroom.forget(&checks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::embedded::EmbeddedStore;

    fn tokens(cost: f64) -> RateCheck {
        RateCheck {
            key: "rl:t".into(),
            per_minute: 600,
            cost,
        }
    }

    #[tokio::test]
    async fn writes_in_one_window_land_together_summed() {
        let store = EmbeddedStore::in_memory();
        let settler = Settler::new(store.clone(), None, None);
        for _ in 0..3 {
            settler.push(vec![("spend:a".into(), 0.25)], Vec::new());
        }
        settler.push(Vec::new(), vec![tokens(100.0)]);
        settler.confirm(Vec::new(), vec![tokens(-40.0)]);
        assert_eq!(store.get("spend:a").await.unwrap(), None, "not written yet");
        tokio::time::sleep(SETTLE_WINDOW * 4).await;
        let spent = crate::store::counter_value(store.get("spend:a").await.unwrap().as_ref());
        assert!((spent - 0.75).abs() < 1e-12, "{spent}");
        // 100 - 40 of 600 tokens taken.
        let left = store.rate(&[tokens(0.0)], false).await.unwrap().states[0].remaining;
        assert_eq!(left, 540);
    }

    #[tokio::test]
    async fn a_flush_writes_what_is_pending_at_once_and_refreshes_the_views() {
        let store = EmbeddedStore::in_memory();
        let headroom = Arc::new(Headroom::default());
        let settler = Settler::new(store.clone(), None, Some(headroom.clone()));
        settler.push(vec![("spend:b".into(), 1.5)], Vec::new());
        let big = RateCheck {
            key: "rl:big".into(),
            per_minute: 100_000,
            cost: 1.0,
        };
        assert!(
            headroom
                .pre_admit(&[], std::slice::from_ref(&big))
                .is_none(),
            "no view yet"
        );
        settler.confirm(Vec::new(), vec![big.clone()]);
        settler.flush().await;
        let spent = crate::store::counter_value(store.get("spend:b").await.unwrap().as_ref());
        assert_eq!(spent, 1.5);
        let states = headroom
            .pre_admit(&[], &[big])
            .expect("a fresh view with room");
        // The charge and this request's unit taken (floats round the GCRA state down).
        assert!(
            (99_997..=99_998).contains(&states[0].remaining),
            "{:?}",
            states[0]
        );
    }
}
