//! Prometheus metrics: requests, latency, time to first token, tokens, cost and errors, labelled by
//! endpoint, backend and status class only (low cardinality), rendered as text at `/metrics`.

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat`, `completions`, `messages`, `models`, `feedback`, `health`, `metrics` or `other`.
    pub endpoint: &'static str,
    /// The route: the model id the client asked for, when it named a configured route; else
    /// `none` (so a client cannot add label values).
    pub route: String,
    /// Backend config name, or `none`.
    pub backend: String,
    /// `2xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// As in [`RequestLabels`].
    pub endpoint: &'static str,
    /// As in [`RequestLabels`].
    pub route: String,
    /// As in [`RequestLabels`].
    pub backend: String,
}

/// Labels of a token count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// As in [`RequestLabels`].
    pub route: String,
    /// Backend config name.
    pub backend: String,
    /// `prompt`, `completion` or `cached_prompt`.
    pub kind: &'static str,
}

/// Labels of a cost: the route and the backend.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    /// As in [`RequestLabels`].
    pub route: String,
    /// Backend config name.
    pub backend: String,
}

/// Labels with only a backend.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend config name.
    pub backend: String,
}

/// Labels of a speculative-decoding token count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpeculativeLabels {
    /// The speculative backend's config name.
    pub backend: String,
    /// `drafted`, `accepted`, `plain`, `target_input` or `target_output`.
    pub kind: &'static str,
}

/// Labels of an error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// As in [`RequestLabels`].
    pub endpoint: &'static str,
    /// [`crate::error::Error::metric_label`].
    pub kind: &'static str,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests finished.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to response headers.
    pub latency: Family<LatencyLabels, Histogram>,
    /// Time to a stream's first token.
    pub first_token: Family<BackendLabels, Histogram>,
    /// Tokens counted from backend usage.
    pub tokens: Family<TokenLabels, Counter>,
    /// Dollars spent, from usage and configured prices.
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// Errors answered.
    pub errors: Family<ErrorLabels, Counter>,
    /// Moves to the next backend after a retryable error.
    pub fallbacks: Family<BackendLabels, Counter>,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// Requests shed at the concurrency limit.
    pub shed: Counter,
    /// Speculative decoding: draft, accepted, plainly streamed and target-billed tokens.
    pub speculative_tokens: Family<SpeculativeLabels, Counter>,
    /// Speculative decoding: verify rounds.
    pub speculative_rounds: Family<BackendLabels, Counter>,
    /// Speculative requests that switched to plain streaming from the target.
    pub speculative_fallbacks: Family<BackendLabels, Counter>,
    /// Routing policy decisions by choice (local, cloud, cascade, speculative, reject).
    pub route_decisions: Family<crate::routing::DecisionLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. about 65 s: gateway overhead and long generations on one scale.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00025, 2.0, 19,
    ))
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let first_token = Family::<BackendLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let fallbacks = Family::<BackendLabels, Counter>::default();
        let in_flight = Gauge::default();
        let shed = Counter::default();
        let speculative_tokens = Family::<SpeculativeLabels, Counter>::default();
        let speculative_rounds = Family::<BackendLabels, Counter>::default();
        let speculative_fallbacks = Family::<BackendLabels, Counter>::default();
        registry.register(
            "speculative_tokens",
            "Speculative decoding tokens: drafted, accepted, plain, target_input, target_output",
            speculative_tokens.clone(),
        );
        registry.register(
            "speculative_rounds",
            "Speculative decoding verify rounds",
            speculative_rounds.clone(),
        );
        registry.register(
            "speculative_fallbacks",
            "Speculative requests that switched to plain streaming",
            speculative_fallbacks.clone(),
        );
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to response headers",
            latency.clone(),
        );
        registry.register(
            "first_token_seconds",
            "Time to a stream's first token",
            first_token.clone(),
        );
        registry.register("tokens", "Tokens reported by backends", tokens.clone());
        registry.register(
            "cost_dollars",
            "Spend computed from usage and configured prices",
            cost.clone(),
        );
        registry.register("errors", "Errors answered, by kind", errors.clone());
        registry.register(
            "fallbacks",
            "Retries on the next backend, by the backend that failed",
            fallbacks.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight",
            in_flight.clone(),
        );
        registry.register(
            "shed_requests",
            "Requests refused at the concurrency limit",
            shed.clone(),
        );
        let route_decisions = Family::default();
        registry.register(
            "route_decisions",
            "Routing policy decisions by choice",
            route_decisions.clone(),
        );
        Self {
            route_decisions,
            registry: Mutex::new(registry),
            requests,
            latency,
            first_token,
            tokens,
            cost,
            errors,
            fallbacks,
            in_flight,
            shed,
            speculative_tokens,
            speculative_rounds,
            speculative_fallbacks,
        }
    }

    /// Records one speculative request's figures.
    pub fn record_speculative(&self, backend: &str, report: &crate::speculative::SpecReport) {
        for (kind, n) in [
            ("drafted", report.drafted),
            ("accepted", report.accepted),
            ("plain", report.plain_tokens),
            ("target_input", report.target_input_tokens),
            ("target_output", report.target_output_tokens),
        ] {
            self.speculative_tokens
                .get_or_create(&SpeculativeLabels {
                    backend: backend.to_owned(),
                    kind,
                })
                .inc_by(n);
        }
        let labels = BackendLabels {
            backend: backend.to_owned(),
        };
        self.speculative_rounds
            .get_or_create(&labels)
            .inc_by(report.rounds);
        if report.fell_back {
            self.speculative_fallbacks.get_or_create(&labels).inc();
        }
    }

    /// Records one request's usage and its cost, on the route the client asked for.
    pub fn record_usage(
        &self,
        route: &str,
        backend: &str,
        prompt: u64,
        completion: u64,
        cached_prompt: u64,
        cost: f64,
    ) {
        for (kind, n) in [
            ("prompt", prompt),
            ("completion", completion),
            ("cached_prompt", cached_prompt),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        route: route.to_owned(),
                        backend: backend.to_owned(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        if cost > 0.0 {
            self.cost
                .get_or_create(&CostLabels {
                    route: route.to_owned(),
                    backend: backend.to_owned(),
                })
                .inc_by(cost);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The endpoint label of a path.
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        "/v1/messages" => "messages",
        "/v1/models" => "models",
        "/v1/feedback" => "feedback",
        "/healthz" | "/readyz" => "health",
        "/metrics" => "metrics",
        "/v1/tandem/verify" | "/v1/tandem/generate" => "verify",
        _ => "other",
    }
}

/// The status-class label of a status.
pub fn status_label(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
