//! Prometheus metrics: requests, latency, time to first token, tokens, cost and errors, labelled by
//! endpoint, backend and status class only (low cardinality), rendered as text at `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use ahash::RandomState;
use parking_lot::{Mutex, RwLock};
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

/// Labels with only a route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// As in [`RequestLabels`].
    pub route: String,
}

/// Labels of the routing mix: how a route's requests were served.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// As in [`RequestLabels`].
    pub route: String,
    /// `local`, `cloud`, `cascade`, `speculative`, `cache` or `none` (no backend answered).
    pub mode: &'static str,
}

/// Labels with only an endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// As in [`RequestLabels`].
    pub endpoint: &'static str,
}

/// Labels of a virtual key's spend.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The key's id (`vk_...`): bounded by the keys an admin made.
    pub key: String,
}

/// Labels of the decisions counter: the choice's kind only (low cardinality).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `local`, `cloud`, `cascade`, `speculative` or `reject`.
    pub choice: &'static str,
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

/// Labels of a response-cache outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The route (a configured model id with a cache).
    pub route: String,
    /// `exact_hit`, `semantic_hit`, `miss` or `bypass`.
    pub result: &'static str,
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
    /// Dollars the same tokens would have cost on each route's reference cloud backend.
    pub reference_cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// CPU-seconds of local model compute.
    pub local_cpu: Family<BackendLabels, Counter<f64, AtomicU64>>,
    /// Estimated joules of local model compute.
    pub local_energy: Family<BackendLabels, Counter<f64, AtomicU64>>,
    /// Answers served from the response cache.
    pub cache_hits: Family<RouteLabels, Counter>,
    /// Model requests by how they were served.
    pub modes: Family<ModeLabels, Counter>,
    /// Tandem's own time per request (to the response head, less the backend waits).
    pub overhead: Family<EndpointLabels, Histogram>,
    /// Errors answered.
    pub errors: Family<ErrorLabels, Counter>,
    /// Moves to the next backend after a retryable error.
    pub fallbacks: Family<BackendLabels, Counter>,
    /// Retries of a try on the same backend.
    pub retries: Family<BackendLabels, Counter>,
    /// Hedges sent, by the backend that got the second try.
    pub hedges: Family<BackendLabels, Counter>,
    /// Times a backend's circuit breaker opened.
    pub breaker_opens: Family<BackendLabels, Counter>,
    /// A backend's circuit breaker: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<BackendLabels, Gauge>,
    /// Requests the local model answered because every cloud backend of their route failed.
    pub local_fallbacks: Counter,
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
    pub route_decisions: Family<DecisionLabels, Counter>,
    /// Dollars spent by virtual key.
    pub key_spend: Family<KeyLabels, Counter<f64, AtomicU64>>,
    /// Dollars local answers saved against their route's cloud price.
    pub savings: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// Response-cache lookups by route and outcome.
    pub cache: Family<CacheLabels, Counter>,
    /// 1 while the shared state store answers, 0 while it is unreachable.
    pub store_up: Gauge,
    /// Shared state store operations that failed or timed out.
    pub store_errors: Counter,
    /// Requests let through before the shared store answered (far from every limit).
    pub pre_admitted: Counter,
    /// The handles of each route and backend pair seen so far, by route, then backend.
    pairs: RwLock<PairMap<PairMap<Arc<PairMetrics>>>>,
}

type PairMap<V> = HashMap<Arc<str>, V, RandomState>;

/// The endpoint labels, in the order of [`endpoint_index`].
pub const ENDPOINTS: [&str; 12] = [
    "chat",
    "completions",
    "messages",
    "models",
    "feedback",
    "health",
    "metrics",
    "verify",
    "embeddings",
    "count_tokens",
    "responses",
    "other",
];

/// The status-class labels, in the order of [`status_index`].
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The token kinds a usage report counts.
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached_prompt"];

/// One route and backend pair's handles into the families, each looked up once, when first
/// used: a family lookup allocates its labels and hashes them, and a request records several.
/// A handle shares its value with the family, which renders it.
pub struct PairMetrics {
    route: Arc<str>,
    backend: Arc<str>,
    latency: [OnceLock<Histogram>; ENDPOINTS.len()],
    requests: [[OnceLock<Counter>; STATUSES.len()]; ENDPOINTS.len()],
    tokens: [OnceLock<Counter>; TOKEN_KINDS.len()],
    cost: OnceLock<Counter<f64, AtomicU64>>,
    reference_cost: OnceLock<Counter<f64, AtomicU64>>,
}

impl PairMetrics {
    fn new(route: Arc<str>, backend: Arc<str>) -> Self {
        Self {
            route,
            backend,
            latency: Default::default(),
            requests: Default::default(),
            tokens: Default::default(),
            cost: OnceLock::new(),
            reference_cost: OnceLock::new(),
        }
    }

    /// Records a finished request at `endpoint` ([`endpoint_index`]) with `status` and the time
    /// to its response headers.
    pub fn record_request(
        &self,
        metrics: &Metrics,
        endpoint: usize,
        status: http::StatusCode,
        seconds: f64,
    ) {
        let endpoint = endpoint.min(ENDPOINTS.len() - 1);
        let status = status_index(status);
        self.latency[endpoint]
            .get_or_init(|| {
                metrics.latency.get_or_create_owned(&LatencyLabels {
                    endpoint: ENDPOINTS[endpoint],
                    route: self.route.to_string(),
                    backend: self.backend.to_string(),
                })
            })
            .observe(seconds);
        self.requests[endpoint][status]
            .get_or_init(|| {
                metrics.requests.get_or_create_owned(&RequestLabels {
                    endpoint: ENDPOINTS[endpoint],
                    route: self.route.to_string(),
                    backend: self.backend.to_string(),
                    status: STATUSES[status],
                })
            })
            .inc();
    }

    fn record_usage(
        &self,
        metrics: &Metrics,
        counts: [u64; TOKEN_KINDS.len()],
        cost: f64,
        reference: f64,
    ) {
        for (kind, n) in counts.into_iter().enumerate() {
            if n > 0 {
                self.tokens[kind]
                    .get_or_init(|| {
                        metrics.tokens.get_or_create_owned(&TokenLabels {
                            route: self.route.to_string(),
                            backend: self.backend.to_string(),
                            kind: TOKEN_KINDS[kind],
                        })
                    })
                    .inc_by(n);
            }
        }
        if cost > 0.0 {
            self.cost
                .get_or_init(|| {
                    metrics.cost.get_or_create_owned(&CostLabels {
                        route: self.route.to_string(),
                        backend: self.backend.to_string(),
                    })
                })
                .inc_by(cost);
        }
        if reference > 0.0 {
            self.reference_cost
                .get_or_init(|| {
                    metrics.reference_cost.get_or_create_owned(&CostLabels {
                        route: self.route.to_string(),
                        backend: self.backend.to_string(),
                    })
                })
                .inc_by(reference);
        }
    }
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
        let retries = Family::<BackendLabels, Counter>::default();
        registry.register(
            "retries",
            "Retries on the same backend, by backend",
            retries.clone(),
        );
        let hedges = Family::<BackendLabels, Counter>::default();
        registry.register(
            "hedges",
            "Hedged second tries sent, by the backend that got them",
            hedges.clone(),
        );
        let breaker_opens = Family::<BackendLabels, Counter>::default();
        registry.register(
            "breaker_opens",
            "Times a backend's circuit breaker opened",
            breaker_opens.clone(),
        );
        let breaker_state = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "A backend's circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let local_fallbacks = Counter::default();
        registry.register(
            "local_fallbacks",
            "Requests the local model answered because every cloud backend failed",
            local_fallbacks.clone(),
        );
        let reference_cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "reference_cost_dollars",
            "What the same tokens would have cost on each route's reference cloud backend",
            reference_cost.clone(),
        );
        let local_cpu = Family::<BackendLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "local_cpu_seconds",
            "CPU time of local model compute (engine thread and kernel workers)",
            local_cpu.clone(),
        );
        let local_energy = Family::<BackendLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "local_energy_joules",
            "Estimated energy of local model compute",
            local_energy.clone(),
        );
        let cache_hits = Family::<RouteLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Answers served from the response cache",
            cache_hits.clone(),
        );
        let modes = Family::<ModeLabels, Counter>::default();
        registry.register(
            "request_modes",
            "Model requests by how they were served (local, cloud, cascade, speculative, cache)",
            modes.clone(),
        );
        let overhead = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "overhead_seconds",
            "Tandem's own time per request: to the response head, less the backend waits",
            overhead.clone(),
        );
        let route_decisions = Family::default();
        registry.register(
            "route_decisions",
            "Routing policy decisions by choice",
            route_decisions.clone(),
        );
        let key_spend = Family::<KeyLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "key_spend_dollars",
            "Spend by virtual key, from usage and configured prices",
            key_spend.clone(),
        );
        let savings = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "savings_dollars",
            "Cloud cost avoided by local answers, at the route's cloud price",
            savings.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Response-cache lookups by route and result (exact_hit, semantic_hit, miss, bypass)",
            cache.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the shared state store answers",
            store_up.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Shared state store operations that failed or timed out",
            store_errors.clone(),
        );
        let pre_admitted = Counter::default();
        registry.register(
            "controls_pre_admitted",
            "Requests let through before the shared store answered, far from every limit",
            pre_admitted.clone(),
        );
        Self {
            key_spend,
            savings,
            store_up,
            store_errors,
            pre_admitted,
            route_decisions,
            reference_cost,
            local_cpu,
            local_energy,
            cache_hits,
            modes,
            overhead,
            cache,
            pairs: RwLock::default(),
            registry: Mutex::new(registry),
            requests,
            latency,
            first_token,
            tokens,
            cost,
            errors,
            fallbacks,
            retries,
            hedges,
            breaker_opens,
            breaker_state,
            local_fallbacks,
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

    /// The handles of `route` and `backend`, made on first use.
    pub fn pair(&self, route: &str, backend: &str) -> Arc<PairMetrics> {
        if let Some(pair) = self.pairs.read().get(route).and_then(|b| b.get(backend)) {
            return pair.clone();
        }
        let mut pairs = self.pairs.write();
        let backends = pairs.entry(Arc::from(route)).or_default();
        backends
            .entry(Arc::from(backend))
            .or_insert_with_key(|backend| {
                Arc::new(PairMetrics::new(Arc::from(route), backend.clone()))
            })
            .clone()
    }

    /// Records one request's usage, its cost and its reference cost (dollars paid, dollars at
    /// the route's reference), on the route the client asked for.
    pub fn record_usage(
        &self,
        route: &str,
        backend: &str,
        prompt: u64,
        completion: u64,
        cached_prompt: u64,
        (paid, reference): (f64, f64),
    ) {
        self.pair(route, backend).record_usage(
            self,
            [prompt, completion, cached_prompt],
            paid,
            reference,
        );
    }

    /// Records local model compute.
    pub fn record_local_compute(&self, backend: &str, cpu_seconds: f64, joules: f64) {
        let labels = BackendLabels {
            backend: backend.to_owned(),
        };
        self.local_cpu.get_or_create(&labels).inc_by(cpu_seconds);
        self.local_energy.get_or_create(&labels).inc_by(joules);
    }

    /// Records an answer served from the response cache.
    pub fn record_cache_hit(&self, route: &str) {
        self.cache_hits
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }

    /// Adds to a virtual key's spend.
    pub fn record_key_spend(&self, key: &str, dollars: f64) {
        self.key_spend
            .get_or_create(&KeyLabels {
                key: key.to_owned(),
            })
            .inc_by(dollars);
    }

    /// Adds what a local answer on `route` saved.
    pub fn record_savings(&self, route: &str, backend: &str, dollars: f64) {
        self.savings
            .get_or_create(&CostLabels {
                route: route.to_owned(),
                backend: backend.to_owned(),
            })
            .inc_by(dollars);
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
    ENDPOINTS[endpoint_index(path)]
}

/// The endpoint of a path, as an index into the endpoint labels.
pub fn endpoint_index(path: &str) -> usize {
    match path {
        "/v1/chat/completions" => 0,
        "/v1/completions" => 1,
        "/v1/messages" => 2,
        "/v1/models" => 3,
        "/v1/feedback" => 4,
        "/healthz" | "/readyz" => 5,
        "/metrics" => 6,
        "/v1/tandem/verify" | "/v1/tandem/generate" => 7,
        "/v1/embeddings" => 8,
        "/v1/messages/count_tokens" => 9,
        "/v1/responses" => 10,
        // Paths with an id in them, one label each.
        _ if path.starts_with("/v1/models/") => 3,
        _ if path.starts_with("/v1/responses/") => 10,
        _ => 11,
    }
}

/// The status-class label of a status.
pub fn status_label(status: http::StatusCode) -> &'static str {
    STATUSES[status_index(status)]
}

/// The status class of a status, as an index into the status-class labels.
fn status_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_counts_into_the_families_that_render_it() {
        let metrics = Metrics::new();
        metrics.record_usage("gpt", "openai", 10, 2, 0, (0.5, 1.0));
        metrics.record_usage("gpt", "openai", 5, 1, 0, (0.25, 0.5));
        let pair = metrics.pair("gpt", "openai");
        assert!(Arc::ptr_eq(&pair, &metrics.pair("gpt", "openai")));
        let chat = endpoint_index("/v1/chat/completions");
        pair.record_request(&metrics, chat, http::StatusCode::OK, 0.001);
        pair.record_request(&metrics, chat, http::StatusCode::BAD_GATEWAY, 0.002);
        metrics
            .pair("gpt", "azure")
            .record_request(&metrics, chat, http::StatusCode::OK, 0.001);
        let text = metrics.render();
        for line in [
            r#"tandem_tokens_total{route="gpt",backend="openai",kind="prompt"} 15"#,
            r#"tandem_tokens_total{route="gpt",backend="openai",kind="completion"} 3"#,
            r#"tandem_cost_dollars_total{route="gpt",backend="openai"} 0.75"#,
            r#"tandem_reference_cost_dollars_total{route="gpt",backend="openai"} 1.5"#,
            r#"tandem_requests_total{endpoint="chat",route="gpt",backend="openai",status="2xx"} 1"#,
            r#"tandem_requests_total{endpoint="chat",route="gpt",backend="openai",status="5xx"} 1"#,
            r#"tandem_requests_total{endpoint="chat",route="gpt",backend="azure",status="2xx"} 1"#,
            r#"tandem_request_duration_seconds_count{endpoint="chat",route="gpt",backend="openai"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // Series appear once they count something, as a family lookup would make them.
        assert!(!text.contains("cached_prompt"), "{text}");
        assert!(!text.contains(r#"status="4xx""#), "{text}");
    }

    #[test]
    fn labels_of_endpoints_and_statuses() {
        assert_eq!(endpoint_label("/v1/messages"), "messages");
        assert_eq!(endpoint_label("/readyz"), "health");
        assert_eq!(endpoint_label("/nowhere"), "other");
        assert_eq!(status_label(http::StatusCode::TOO_MANY_REQUESTS), "4xx");
        assert_eq!(status_label(http::StatusCode::SWITCHING_PROTOCOLS), "1xx");
    }
}
