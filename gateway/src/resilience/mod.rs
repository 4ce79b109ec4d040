//! Resilience state shared by every request: a circuit breaker per cloud backend, each backend's
//! load (peak-EWMA latency, requests in flight, recent latencies), the retry budget and the
//! random source of jitter and balancing. Dispatch asks it before each try and tells it how each
//! try went (`dispatch.rs` holds the loop).

pub mod balance;
pub mod breaker;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tandem_kernels::rng::SplitMix64;
use tokio::time::Instant;

pub use balance::{Load, Pending};
pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState, Transition};
pub use retry::RetryBudget;

use crate::config::{BackendKind, ResilienceSettings};
use crate::error::Error;
use crate::metrics::{BackendLabels, Metrics};

/// How a try went, as far as the backend's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (an error status about the request included, and a 429: it is up, and the
    /// limit may be the model's or the key's, not the backend's).
    Healthy,
    /// It failed in a way that says it is unwell: connect, timeout, 5xx, a stall or cut before
    /// the first token.
    Unwell,
    /// It was never asked (the request could not be sent there).
    Untried,
}

impl Outcome {
    /// The health reading of a try's result.
    pub fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Self::Healthy,
            Err(Error::Upstream(e)) if e.retryable && e.status != Some(429) => Self::Unwell,
            Err(Error::Upstream(_)) => Self::Healthy,
            Err(Error::FirstTokenTimeout(_)) => Self::Unwell,
            Err(_) => Self::Untried,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Resilience {
    /// The `[resilience]` settings.
    pub settings: ResilienceSettings,
    breakers: BTreeMap<String, Breaker>,
    loads: BTreeMap<String, Arc<Load>>,
    budget: RetryBudget,
    rng: Mutex<SplitMix64>,
}

impl Resilience {
    /// A load for each of `backends`, a breaker for each cloud one (the local model has no
    /// upstream to rest), and an unspent budget.
    pub fn new<'a>(
        settings: ResilienceSettings,
        backends: impl IntoIterator<Item = (&'a str, BackendKind)>,
    ) -> Self {
        let config = BreakerConfig {
            failures: settings.breaker_failures,
            error_rate: settings.breaker_error_rate,
            window: settings.breaker_window,
            open: settings.breaker_open,
            open_max: settings.breaker_open_max,
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let backends: Vec<(&str, BackendKind)> = backends.into_iter().collect();
        Self {
            budget: RetryBudget::new(
                settings.retry_budget_ratio,
                settings.retry_budget_min_per_sec,
            ),
            breakers: backends
                .iter()
                .filter(|(_, kind)| *kind != BackendKind::Local)
                .map(|(b, _)| ((*b).to_owned(), Breaker::new(config)))
                .collect(),
            loads: backends
                .iter()
                .map(|(b, _)| ((*b).to_owned(), Arc::new(Load::default())))
                .collect(),
            settings,
            rng: Mutex::new(SplitMix64::new(seed)),
        }
    }

    /// The breaker of `backend`, if it has one.
    pub fn breaker(&self, backend: &str) -> Option<&Breaker> {
        self.breakers.get(backend)
    }

    /// The load of `backend`.
    pub fn load(&self, backend: &str) -> Option<&Arc<Load>> {
        self.loads.get(backend)
    }

    /// The index, among `backends` weighted by `weights`, of the deployment to try first:
    /// power-of-two-choices on load, skipping those whose breaker is open while others are not.
    pub fn pick_first(&self, backends: &[&str], weights: &[f64]) -> usize {
        let now = Instant::now();
        let open = |b: &str| {
            self.breaker(b)
                .is_some_and(|br| br.wait(now) > Duration::ZERO)
        };
        let candidates: Vec<usize> = (0..backends.len())
            .filter(|&i| !open(backends[i]))
            .collect();
        let candidates = if candidates.is_empty() {
            (0..backends.len()).collect()
        } else {
            candidates
        };
        let costs: Vec<f64> = candidates
            .iter()
            .map(|&i| self.load(backends[i]).map_or(0.0, |l| l.cost()))
            .collect();
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&i| weights.get(i).copied().unwrap_or(1.0))
            .collect();
        candidates[balance::pick_of_two(&costs, &weights, &self.rng)]
    }

    /// When to send a hedge after a try on `backend` started: `configured`, else its recent p95
    /// (none until enough calls were measured).
    pub fn hedge_delay(&self, backend: &str, configured: Option<Duration>) -> Option<Duration> {
        configured.or_else(|| self.load(backend).and_then(|l| l.p95()))
    }

    /// Whether `backend` may be called now (always, for one without a breaker).
    pub fn admit(&self, backend: &str) -> Admission {
        self.breaker(backend)
            .map_or(Admission::Allowed, |b| b.admit(Instant::now()))
    }

    /// Records how a try on `backend` went: breaker state, its metrics and one log line per
    /// change.
    pub fn record(&self, backend: &str, outcome: Outcome, metrics: &Metrics) {
        let Some(breaker) = self.breaker(backend) else {
            return;
        };
        let now = Instant::now();
        let transition = match outcome {
            Outcome::Healthy => breaker.record(false, now),
            Outcome::Unwell => breaker.record(true, now),
            Outcome::Untried => {
                breaker.release_probe();
                None
            }
        };
        let labels = BackendLabels {
            backend: backend.to_owned(),
        };
        match transition {
            Some(Transition::Opened) => {
                tracing::warn!(
                    backend,
                    wait_ms = breaker.wait(now).as_millis() as u64,
                    "circuit breaker opened"
                );
                metrics.breaker_opens.get_or_create(&labels).inc();
            }
            Some(Transition::Closed) => tracing::info!(backend, "circuit breaker closed"),
            None => {}
        }
        let state = match breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        metrics.breaker_state.get_or_create(&labels).set(state);
    }

    /// How long until `backend` may be called, in whole seconds, at least 1: the `retry-after`
    /// for a client when it was the backend that failed.
    pub fn retry_after_secs(&self, backend: &str) -> u64 {
        self.breaker(backend)
            .map_or(1, |b| b.wait(Instant::now()).as_secs_f64().ceil() as u64)
            .max(1)
    }

    /// Counts a request for the retry budget.
    pub fn deposit(&self) {
        self.budget.deposit(Instant::now());
    }

    /// The wait before retry number `retry` on a backend, if the settings and the budget allow
    /// one; `asked` is the upstream's `retry-after`, honoured when it is not longer than the
    /// largest backoff.
    pub fn retry_wait(&self, retry: u32, asked: Option<Duration>) -> Option<Duration> {
        let s = &self.settings;
        if retry >= s.retries || asked.is_some_and(|a| a > s.retry_backoff_max) {
            return None;
        }
        if !self.budget.withdraw(Instant::now()) {
            return None;
        }
        let jitter = retry::backoff(retry, s.retry_backoff, s.retry_backoff_max, &self.rng);
        Some(asked.map_or(jitter, |a| a.max(jitter)))
    }
}
