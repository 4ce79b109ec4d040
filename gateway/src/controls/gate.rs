//! [`Controls`]: the virtual keys, the limits and the spend accounting of one gateway, built
//! from its config over its store. [`Controls::admit`] decides a request before any upstream
//! call (the key's models, its budget, every rate limiter at once) and hands out a [`Ticket`]
//! that corrects the token limiters with the real usage when it is known, or gives the
//! reservation back when the request failed. [`Controls::record`] charges an answer's spend.
//! Both post-answer writes go through the [`Settler`], which writes them with other answers'.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::headroom::Headroom;
use super::keys::{KeyRegistry, VirtualKey, spawn_refresh, unix_now};
use super::limits::{Limiter, RateHeaders, Unit, limiters};
use super::settle::Settler;
use super::spend::{self, Charge};
use crate::config::{Config, ControlsConfig, EnvSource, OnUnavailable};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{Admission, BudgetCheck, RateCheck, SharedStore};

/// Everything the controls need at run time.
#[derive(Debug)]
pub struct Controls {
    /// The store.
    pub store: SharedStore,
    /// Virtual keys.
    pub keys: Arc<KeyRegistry>,
    /// The settings.
    pub config: ControlsConfig,
    metrics: Arc<Metrics>,
    settler: Arc<Settler>,
    /// Pre-admission, on a remote store.
    headroom: Option<Arc<Headroom>>,
    refresh: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

/// A request let through: its ticket and the rate-limit headers for its answer.
#[derive(Debug)]
pub struct Admitted {
    /// Settles the token reservation.
    pub ticket: Ticket,
    /// `x-ratelimit-*`.
    pub headers: RateHeaders,
}

/// A request refused: the error and the rate-limit headers for its answer.
#[derive(Debug)]
pub struct Refused {
    /// 403, 429 or (failing closed) 503.
    pub error: Error,
    /// `x-ratelimit-*`, where the limiters were read.
    pub headers: RateHeaders,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self {
            error,
            headers: RateHeaders::default(),
        }
    }
}

impl Controls {
    /// The controls of `config` over `store`; starts re-reading the keys in the background.
    pub fn start(
        config: &Config,
        store: SharedStore,
        metrics: Arc<Metrics>,
        env: &dyn EnvSource,
    ) -> Arc<Self> {
        // With Redis, this replica's copy of the key records sits beside the embedded store's
        // place; the embedded store is durable itself.
        let mirror = config
            .controls
            .store
            .redis_url
            .as_ref()
            .map(|_| crate::store::embedded_path(config, env).with_file_name("keys.json"));
        let keys = Arc::new(KeyRegistry::new(store.clone(), mirror));
        let refresh = spawn_refresh(keys.clone());
        let headroom = store.remote().then(|| Arc::new(Headroom::default()));
        let settler = Settler::new(store.clone(), Some(spend::COUNTER_TTL), headroom.clone());
        Arc::new(Self {
            store,
            settler,
            headroom,
            keys,
            config: config.controls.clone(),
            metrics,
            refresh: parking_lot::Mutex::new(Some(refresh)),
        })
    }

    /// Stops the background work and writes the answers' pending settlements (at shutdown).
    pub async fn stop(&self) {
        if let Some(task) = self.refresh.lock().take() {
            task.abort();
        }
        self.settler.flush().await;
    }

    /// Whether a request without a virtual key needs checking at all (a route has limits).
    pub fn has_route_limits(&self) -> bool {
        !self.config.route_limits.is_empty()
    }

    /// What a store failure means for a request: nothing (failing open) or a 503.
    fn unavailable(&self, e: Error) -> Result<(), Error> {
        match (self.config.store.on_unavailable, e) {
            (OnUnavailable::Open, Error::StoreUnavailable(_)) => Ok(()),
            (_, e) => Err(e),
        }
    }

    /// Decides a request on `route` with `key`, estimated at `tokens` tokens, before any
    /// upstream call: the key's models, its budget, then every rate limiter at once.
    pub async fn admit(
        self: &Arc<Self>,
        key: Option<&Arc<VirtualKey>>,
        route: &str,
        tokens: u64,
    ) -> Result<Admitted, Refused> {
        let now = unix_now();
        let mut budgets = Vec::new();
        if let Some(k) = key {
            if !k.allows_model(route) {
                return Err(Error::ModelNotAllowed(route.to_owned()).into());
            }
            budgets = spend::budgets(k, now);
        }
        let limiters = limiters(
            key.map(|k| &**k),
            route,
            self.config.route_limits.get(route),
            tokens,
        );
        if limiters.is_empty() && budgets.is_empty() {
            return Ok(self.admitted(key, tokens, Vec::new(), RateHeaders::default()));
        }
        // The budgets and every limiter in one store call: one round trip to Redis.
        let spent: Vec<BudgetCheck> = budgets.iter().map(|b| b.check.clone()).collect();
        let checks: Vec<RateCheck> = limiters.iter().map(|l| l.check.clone()).collect();
        if let Some(headroom) = &self.headroom
            && self.store.is_up()
            && let Some(states) = headroom.pre_admit(&spent, &checks)
        {
            // Far from every limit: on at once; the script charges it all the same.
            self.metrics.pre_admitted.inc();
            self.settler.confirm(spent, checks);
            let headers = RateHeaders::from_states(&limiters, &states);
            return Ok(self.admitted(key, tokens, token_checks(&limiters), headers));
        }
        match self.store.admit(&spent, &checks, false).await {
            Ok(Admission::OverBudget { index, spent }) => {
                Err(spend::Budget::refused(&budgets, index, spent).into())
            }
            Ok(Admission::Rated {
                outcome,
                spent: dollars,
            }) => {
                if let Some(headroom) = &self.headroom {
                    headroom.note(&spent, &dollars, &checks, &outcome.states, &[]);
                }
                let headers = RateHeaders::from_states(&limiters, &outcome.states);
                if !outcome.allowed {
                    return Err(Refused {
                        error: rate_limited(&limiters, &outcome.states),
                        headers,
                    });
                }
                Ok(self.admitted(key, tokens, token_checks(&limiters), headers))
            }
            Err(e) => {
                // Failing open: let through unchecked, nothing reserved.
                self.unavailable(e)?;
                Ok(self.admitted(key, tokens, Vec::new(), RateHeaders::default()))
            }
        }
    }

    /// A request let through, holding `reserved` token limiters at its estimate of `tokens`.
    fn admitted(
        self: &Arc<Self>,
        key: Option<&Arc<VirtualKey>>,
        tokens: u64,
        reserved: Vec<RateCheck>,
        headers: RateHeaders,
    ) -> Admitted {
        Admitted {
            ticket: Ticket(Arc::new(TicketInner {
                controls: self.clone(),
                key: key.map(|k| k.id.clone()),
                estimate: tokens,
                reserved,
                settled: AtomicBool::new(false),
            })),
            headers,
        }
    }

    /// Charges an answer's spend (in the background, with other answers': the answer does not
    /// wait for the store).
    pub fn record(self: &Arc<Self>, charge: Charge) {
        if let Some(key) = &charge.key
            && charge.cost > 0.0
        {
            self.metrics.record_key_spend(key, charge.cost);
        }
        if charge.savings > 0.0 {
            self.metrics
                .record_savings(&charge.route, &charge.backend, charge.savings);
        }
        let deltas = spend::deltas(&charge, unix_now());
        if let Some(headroom) = &self.headroom {
            headroom.charged(&deltas);
        }
        self.settler.push(deltas, Vec::new());
    }
}

/// The token limiters' checks: what a ticket corrects once the usage is known.
fn token_checks(limiters: &[Limiter]) -> Vec<RateCheck> {
    limiters
        .iter()
        .filter(|l| l.unit == Unit::Tokens)
        .map(|l| l.check.clone())
        .collect()
}

/// The 429 for the limiter that refused, with the longest wait of those that did.
fn rate_limited(limiters: &[Limiter], states: &[crate::store::RateState]) -> Error {
    let worst = limiters
        .iter()
        .zip(states)
        .filter(|(_, s)| s.retry_after_ms > 0)
        .max_by_key(|(_, s)| s.retry_after_ms);
    match worst {
        Some((l, s)) => Error::RateLimited {
            message: format!(
                "Rate limit reached for {} on {}: limit {} per minute; retry in {} ms",
                l.unit.as_str(),
                l.owner,
                s.limit,
                s.retry_after_ms
            ),
            limit: l.unit.as_str(),
            retry_after_secs: s.retry_after_ms.div_ceil(1000).max(1),
        },
        None => Error::RateLimited {
            message: "Rate limit reached".into(),
            limit: "requests",
            retry_after_secs: 1,
        },
    }
}

/// A request's hold on its token limiters until its usage is known.
#[derive(Debug, Clone)]
pub struct Ticket(Arc<TicketInner>);

#[derive(Debug)]
struct TicketInner {
    controls: Arc<Controls>,
    key: Option<String>,
    estimate: u64,
    /// The token limiters charged `estimate`.
    reserved: Vec<RateCheck>,
    settled: AtomicBool,
}

impl Ticket {
    /// The virtual key's id, when the request carried one.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// Corrects the token limiters from the estimate to the `used` tokens (once).
    pub fn settle(&self, used: u64) {
        self.0.settle(used);
    }
}

impl TicketInner {
    fn settle(&self, used: u64) {
        if self.settled.swap(true, Ordering::AcqRel) || self.reserved.is_empty() {
            return;
        }
        let delta = used as f64 - self.estimate as f64;
        if delta == 0.0 {
            return;
        }
        let checks: Vec<RateCheck> = self
            .reserved
            .iter()
            .map(|c| RateCheck {
                cost: delta,
                ..c.clone()
            })
            .collect();
        self.controls.settler.push(Vec::new(), checks);
    }
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        // No usage came (the request failed, or the client left first): give the tokens back.
        self.settle(0);
    }
}
