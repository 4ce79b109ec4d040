//! Resilience state shared by every request: a circuit breaker per cloud backend, the retry
//! budget and the jitter's random source. Dispatch asks it before each try and tells it how each
//! try went (`dispatch.rs` holds the loop).

pub mod breaker;
pub mod retry;

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tandem_kernels::rng::SplitMix64;
use tokio::time::Instant;

pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState, Transition};
pub use retry::RetryBudget;

use crate::config::ResilienceSettings;
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
    budget: RetryBudget,
    rng: Mutex<SplitMix64>,
}

impl Resilience {
    /// A breaker for each of `backends` (the cloud ones: the local model has no upstream to
    /// rest), and an unspent budget.
    pub fn new<'a>(
        settings: ResilienceSettings,
        backends: impl IntoIterator<Item = &'a str>,
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
        Self {
            budget: RetryBudget::new(
                settings.retry_budget_ratio,
                settings.retry_budget_min_per_sec,
            ),
            breakers: backends
                .into_iter()
                .map(|b| (b.to_owned(), Breaker::new(config)))
                .collect(),
            settings,
            rng: Mutex::new(SplitMix64::new(seed)),
        }
    }

    /// The breaker of `backend`, if it has one.
    pub fn breaker(&self, backend: &str) -> Option<&Breaker> {
        self.breakers.get(backend)
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
