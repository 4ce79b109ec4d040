//! Live per-backend state: EWMAs of time to first token and inter-token latency, error rate, queue
//! depth, and the price table. The gateway updates a [`BackendState`] after each call and hands
//! the policy a [`BackendCandidate`] snapshot per request.

use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Price per million tokens, in US dollars: the policy weighs it, the gateway bills with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input_per_mtok: f64,
    /// Output tokens.
    pub output_per_mtok: f64,
    /// Cached input tokens.
    pub cached_input_per_mtok: f64,
}

impl Price {
    /// Dollar cost of one call.
    pub fn cost(&self, input_tokens: u64, cached_input_tokens: u64, output_tokens: u64) -> f64 {
        let cached = cached_input_tokens.min(input_tokens);
        ((input_tokens - cached) as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// Where a backend runs: all the policy needs of a backend's kind (the gateway's config kinds
/// map onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// The in-process model.
    Local,
    /// A cloud API.
    Cloud,
}

/// Static facts about a backend, from config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendProfile {
    /// Backend name (as in config and the decision log).
    pub name: String,
    /// Local or cloud.
    pub kind: Site,
    /// Where the model sits between the weak (0) and strong (1) reference models the predictor
    /// was trained on.
    pub strength: f32,
    /// Prices.
    #[serde(default)]
    pub price: Price,
    /// Requests are served one at a time (the local engine), so queued work adds latency.
    #[serde(default)]
    pub serial: bool,
    /// Can verify draft tokens (a speculative-decoding target).
    #[serde(default)]
    pub verifies_drafts: bool,
    /// Can draft tokens (a speculative-decoding drafter).
    #[serde(default)]
    pub drafts: bool,
    /// TTFT assumed before any call was measured, ms.
    pub prior_ttft_ms: f64,
    /// Inter-token latency assumed before any call was measured, ms.
    pub prior_itl_ms: f64,
}

/// What the policy sees of one backend for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendCandidate {
    /// Static facts.
    pub profile: BackendProfile,
    /// EWMA of time to first token, ms.
    pub ttft_ms: f64,
    /// EWMA of inter-token latency, ms.
    pub itl_ms: f64,
    /// EWMA of the error rate (0..1).
    pub error_rate: f64,
    /// Requests waiting or running now.
    pub queue_depth: u32,
    /// Circuit closed (the gateway's health check says usable).
    pub healthy: bool,
}

impl BackendCandidate {
    /// A candidate with no measurements yet (priors only).
    pub fn from_profile(profile: BackendProfile) -> Self {
        Self {
            ttft_ms: profile.prior_ttft_ms,
            itl_ms: profile.prior_itl_ms,
            error_rate: 0.0,
            queue_depth: 0,
            healthy: true,
            profile,
        }
    }

    /// Backend name.
    pub fn name(&self) -> &str {
        &self.profile.name
    }

    /// Predicted end-to-end latency for `output_tokens`, ms: queue wait (serial backends), first
    /// token, the rest of the tokens, inflated by the retries errors cause.
    pub fn predicted_latency_ms(&self, output_tokens: u32) -> f64 {
        let (service, wait) = self.service_and_wait_ms(output_tokens);
        (wait + service) / (1.0 - self.error_rate.clamp(0.0, 0.9))
    }

    /// Predicted time to first token, ms (what a latency SLO on TTFT checks).
    pub fn predicted_ttft_ms(&self, output_tokens: u32) -> f64 {
        let (_, wait) = self.service_and_wait_ms(output_tokens);
        wait + self.ttft_ms
    }

    /// One request's service time for `output_tokens`, and the wait behind the queue (serial
    /// backends serve the queued requests first), ms.
    fn service_and_wait_ms(&self, output_tokens: u32) -> (f64, f64) {
        let service = self.ttft_ms + self.itl_ms * f64::from(output_tokens.saturating_sub(1));
        let wait = if self.profile.serial {
            f64::from(self.queue_depth) * service
        } else {
            0.0
        };
        (service, wait)
    }
}

#[derive(Debug, Clone, Copy)]
struct Ewmas {
    ttft_ms: f64,
    itl_ms: f64,
    error_rate: f64,
}

/// Thread-safe live tracker for one backend.
#[derive(Debug)]
pub struct BackendState {
    profile: BackendProfile,
    alpha: f64,
    ewmas: Mutex<Ewmas>,
    queue: AtomicU32,
    healthy: std::sync::atomic::AtomicBool,
}

/// Decrements the queue depth when dropped (a request finished, failed or was cancelled).
#[derive(Debug)]
pub struct QueueGuard<'a> {
    state: &'a BackendState,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.state.queue.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BackendState {
    /// A tracker starting from the profile's priors; `alpha` is the EWMA weight of a new sample.
    pub fn new(profile: BackendProfile, alpha: f64) -> Self {
        Self {
            ewmas: Mutex::new(Ewmas {
                ttft_ms: profile.prior_ttft_ms,
                itl_ms: profile.prior_itl_ms,
                error_rate: 0.0,
            }),
            profile,
            alpha: alpha.clamp(0.001, 1.0),
            queue: AtomicU32::new(0),
            healthy: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The static profile.
    pub fn profile(&self) -> &BackendProfile {
        &self.profile
    }

    /// Counts a request in the queue until the guard drops.
    pub fn enter(&self) -> QueueGuard<'_> {
        self.queue.fetch_add(1, Ordering::Relaxed);
        QueueGuard { state: self }
    }

    /// A call succeeded with these timings (`itl_ms` None when only one token came).
    pub fn record_success(&self, ttft_ms: f64, itl_ms: Option<f64>) {
        let a = self.alpha;
        let mut e = self.ewmas.lock();
        if ttft_ms.is_finite() && ttft_ms >= 0.0 {
            e.ttft_ms += a * (ttft_ms - e.ttft_ms);
        }
        if let Some(itl) = itl_ms.filter(|x| x.is_finite() && *x >= 0.0) {
            e.itl_ms += a * (itl - e.itl_ms);
        }
        e.error_rate += a * (0.0 - e.error_rate);
    }

    /// A call failed.
    pub fn record_error(&self) {
        let mut e = self.ewmas.lock();
        e.error_rate += self.alpha * (1.0 - e.error_rate);
    }

    /// Marks the backend usable or not (circuit breaker state).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The snapshot the policy decides on.
    pub fn snapshot(&self) -> BackendCandidate {
        let e = *self.ewmas.lock();
        BackendCandidate {
            profile: self.profile.clone(),
            ttft_ms: e.ttft_ms,
            itl_ms: e.itl_ms,
            error_rate: e.error_rate,
            queue_depth: self.queue.load(Ordering::Relaxed),
            healthy: self.healthy.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> BackendProfile {
        BackendProfile {
            name: "local".into(),
            kind: Site::Local,
            strength: 0.0,
            price: Price::default(),
            serial: true,
            verifies_drafts: false,
            drafts: true,
            prior_ttft_ms: 100.0,
            prior_itl_ms: 10.0,
        }
    }

    #[test]
    fn ewma_queue_and_errors() {
        let s = BackendState::new(profile(), 0.5);
        s.record_success(200.0, Some(20.0));
        let snap = s.snapshot();
        assert!((snap.ttft_ms - 150.0).abs() < 1e-9);
        assert!((snap.itl_ms - 15.0).abs() < 1e-9);
        let g = s.enter();
        assert_eq!(s.snapshot().queue_depth, 1);
        let one = s.snapshot().predicted_latency_ms(11);
        drop(g);
        let none = s.snapshot().predicted_latency_ms(11);
        assert!(one > 1.9 * none);
        s.record_error();
        assert!((s.snapshot().error_rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn price_counts_cached_tokens() {
        let p = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: 0.5,
        };
        let c = p.cost(1_000_000, 500_000, 1_000_000);
        assert!((c - (1.0 + 0.25 + 8.0)).abs() < 1e-9);
    }
}
