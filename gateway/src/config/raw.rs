//! `tandem.toml` exactly as written: serde structs with `deny_unknown_fields` and no validation.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[limits]`.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[local]`: the in-process model.
    pub local: Option<RawLocal>,
    /// `[ide]`: the code model for editor plugins.
    pub ide: Option<RawIde>,
    /// `[backends.NAME]`.
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    /// `[routes."MODEL"]`.
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
    /// `[router]`: the learned routing policy.
    #[serde(default)]
    pub router: RawRouter,
    /// `[resilience]`: retries, breakers, local fallback, shutdown grace.
    #[serde(default)]
    pub resilience: RawResilience,
    /// `[privacy]`: sensitive-data detectors and the default action.
    #[serde(default)]
    pub privacy: RawPrivacy,
    /// `[audit]`: the tamper-evident request log.
    #[serde(default)]
    pub audit: RawAudit,
    /// Where models and other artifacts are cached.
    pub cache_dir: Option<String>,
    /// Redis for shared state; the embedded store in the cache directory when absent.
    pub redis_url: Option<String>,
    /// `[observability]`: cost and overhead headers, energy, dashboard memory, trace export.
    #[serde(default)]
    pub observability: super::observability::RawObservability,
    /// `[store]`: the shared state store's settings.
    #[serde(default)]
    pub store: RawStore,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Key prefix in Redis.
    pub prefix: Option<String>,
    /// Bound on each request-path operation, ms.
    pub timeout_ms: Option<u64>,
    /// `open` (the default) or `closed`: what limits and budgets do while the store is down.
    pub on_unavailable: Option<String>,
    /// The embedded store's file (without `redis_url`); `<cache_dir>/state/store.log` when absent.
    pub path: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Listen address, `host:port`.
    pub listen: Option<String>,
    /// sha256 hex digests of the accepted API keys.
    #[serde(default)]
    pub api_key_hashes: Vec<String>,
    /// The admin API's listen address, `host:port`; no admin API when absent.
    pub admin_listen: Option<String>,
    /// sha256 hex digests of the accepted admin keys.
    #[serde(default)]
    pub admin_key_hashes: Vec<String>,
    /// Name of an environment variable holding an admin key in clear.
    pub admin_key_env: Option<String>,
    /// TLS: the certificate chain (PEM) served on `listen`; with `tls_key`.
    pub tls_cert: Option<String>,
    /// TLS: the certificate's private key (PEM); with `tls_cert`.
    pub tls_key: Option<String>,
    /// mTLS: CA certificates (PEM) that clients' certificates must chain to; clients without
    /// one are refused.
    pub tls_client_ca: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted request body.
    pub max_body_bytes: Option<u64>,
    /// Requests handled at once; more are shed.
    pub max_concurrency: Option<u64>,
    /// Total time for one request, stream included.
    pub request_timeout_ms: Option<u64>,
    /// Time to the first streamed event.
    pub first_token_timeout_ms: Option<u64>,
    /// Seconds advertised in `retry-after` when shedding.
    pub retry_after_secs: Option<u64>,
}

/// `[local]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// A known model name (`smollm2-135m`) or a path to a `.gguf` file.
    pub model: Option<String>,
    /// Compute threads.
    pub threads: Option<u64>,
    /// KV cache size in tokens.
    pub kv_cache_tokens: Option<u64>,
    /// How the weights are held: `as_stored`, `q8_0`, `f16` or `f32`.
    pub weights: Option<String>,
    /// Extra model ids this model answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Serve `/v1/tandem/verify` and `/v1/tandem/generate` (this process as a speculative target).
    pub verify_endpoints: Option<bool>,
    /// How verify scores a draft block: `batched` (one pass) or `stepwise` (one pass per token).
    pub verify_scoring: Option<String>,
    /// Verify sessions kept at once (least recently used evicted first).
    pub verify_sessions: Option<u64>,
    /// Test beds: network round trip emulated on the verify endpoints, ms.
    pub emulate_rtt_ms: Option<u64>,
    /// Test beds: large-model step time emulated on the verify endpoints, ms.
    pub emulate_step_ms: Option<u64>,
}

/// `[ide]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIde {
    /// A known code model name (`qwen2.5-coder-0.5b`) or a path to a `.gguf` file.
    pub model: Option<String>,
    /// Compute threads.
    pub threads: Option<u64>,
    /// KV cache size in tokens.
    pub kv_cache_tokens: Option<u64>,
    /// Most tokens of the current file's prefix and suffix in a completion's prompt.
    pub context_tokens: Option<u64>,
    /// Most tokens of repository context (`input_extra`) in a completion's prompt.
    pub extra_tokens: Option<u64>,
    /// `line-in-middle` (the default: the cursor's line starts the middle), `psm` (prefix, suffix,
    /// middle, the typed text ending the prefix) or `spm` (suffix first).
    pub layout: Option<String>,
    /// Shortest cached run reused at a moved position (0 = off).
    pub cache_reuse: Option<u64>,
    /// Shortest cached run reused wherever a jump moved it (0 = off).
    pub jump_reuse: Option<u64>,
    /// Most prompt-lookup draft tokens checked per step (0 = off).
    pub draft_tokens: Option<u64>,
    /// Extra model ids that name the code model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A `[backends.NAME]` (OpenAI-compatible FIM on `/v1/completions`) that multi-line
    /// completions may go to.
    pub cloud: Option<String>,
    /// The model id sent to `cloud` (else the code model's name, through the backend's map).
    pub cloud_model: Option<String>,
    /// The cloud's expected latency before any is measured, ms.
    pub cloud_latency_ms: Option<u64>,
    /// Longest wait for the cloud before the local model answers instead, ms.
    pub cloud_timeout_ms: Option<u64>,
    /// First-token confidence under which a multi-line completion goes to the cloud (0 = off).
    pub cloud_confidence: Option<f64>,
}

/// `[backends.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `local`, `openai`, `openai-compatible`, `azure` or `anthropic`.
    pub kind: String,
    /// Base URL up to and including the version segment (`https://api.openai.com/v1`).
    pub base_url: Option<String>,
    /// Name of the environment variable holding the upstream API key.
    pub api_key_env: Option<String>,
    /// Azure API version (`2024-10-21`).
    pub api_version: Option<String>,
    /// Client model id -> upstream model id (Azure: deployment name).
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Prices in dollars per million tokens.
    #[serde(default)]
    pub price: RawPrice,
    /// Connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout for this backend.
    pub request_timeout_ms: Option<u64>,
    /// Client certificate chain (PEM) presented to this upstream; with `client_key`.
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM); with `client_cert`.
    pub client_key: Option<String>,
    /// CA certificates (PEM) trusted for this upstream besides the system's.
    pub ca_cert: Option<String>,
    /// How this backend verifies draft tokens: `vllm`, `sglang`, `tandem` or `none`
    /// (`openai-compatible` only).
    pub verify: Option<String>,
    /// `speculative`: the backend that verifies (one with `verify` set).
    pub target: Option<String>,
    /// `speculative`: `local` (the in-process model) or `ngram`.
    pub drafter: Option<String>,
    /// `speculative`: the target's tokenizer (model name or `.gguf` path) when it differs from
    /// the local model's.
    pub tokenizer: Option<String>,
    /// `speculative`: the longest draft per round.
    pub max_draft: Option<u64>,
    /// Router profile: where the model sits between weak (0) and strong (1).
    pub strength: Option<f64>,
    /// Router profile: time to first token assumed before any call was measured.
    pub prior_ttft_ms: Option<f64>,
    /// Router profile: inter-token latency assumed before any call was measured.
    pub prior_itl_ms: Option<f64>,
}

/// `[backends.NAME.price]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Per million prompt tokens.
    pub input: Option<f64>,
    /// Per million completion tokens.
    pub output: Option<f64>,
    /// Per million prompt tokens served from the provider's cache.
    pub cached_input: Option<f64>,
}

/// `[routes."MODEL"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Backends in order of preference.
    pub backends: Vec<String>,
    /// Try the next backend when one fails with a retryable error.
    pub fallback: Option<bool>,
    /// `fixed` (config order, the default) or `learned` (the router policy decides).
    pub policy: Option<String>,
    /// `local-only` or `cloud-only` for every request on this route.
    pub placement: Option<String>,
    /// Quality given up per US dollar on this route.
    pub lambda_per_usd: Option<f64>,
    /// Quality given up per second of predicted latency on this route.
    pub mu_per_s: Option<f64>,
    /// Target cloud share on this route (0..=1).
    pub target_cloud_share: Option<f32>,
    /// Latency SLO on this route.
    pub latency_slo_ms: Option<f64>,
    /// Cascade confidence threshold for this route, replacing `router.cascade_threshold`.
    pub cascade_threshold: Option<f32>,
    /// `p2c`: the backends are deployments of one model, picked per request by
    /// power-of-two-choices on peak-EWMA latency (the others follow as fallbacks).
    pub balance: Option<String>,
    /// Relative weights of the deployments under `balance = "p2c"` (default 1 each).
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Send a second try to the next backend when the first is slower than its p95.
    pub hedge: Option<bool>,
    /// The hedge's delay, ms, instead of the first backend's measured p95.
    pub hedge_after_ms: Option<u64>,
    /// The cloud backend whose price the route's savings are measured against (default: the
    /// route's first cloud backend).
    pub reference: Option<String>,
    /// Requests per minute on this route, all keys together.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute on this route, all keys together.
    pub tokens_per_minute: Option<u64>,
    /// `[routes."MODEL".cache]`: the response cache on this route; off when absent.
    pub cache: Option<RawRouteCache>,
    /// `off`, `redact`, `block` or `force-local` when the detectors find sensitive data.
    pub privacy: Option<String>,
    /// The model's context window in tokens, as `/v1/models` reports it (a cloud model's is
    /// the provider's to know).
    pub context_length: Option<u64>,
}

/// `[routes."MODEL".cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// How long an answer stays cached, in seconds.
    pub ttl_s: Option<u64>,
    /// Cache requests sampled above temperature 0 too (the route accepts repeated answers).
    pub nondeterministic: Option<bool>,
    /// Answer from the nearest cached prompt by embedding as well as the exact one.
    pub semantic: Option<bool>,
    /// Least cosine similarity of a semantic hit (0..=1).
    pub similarity: Option<f32>,
}

/// Hard rules and weights, per route or per API key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyRules {
    /// `local-only` or `cloud-only`.
    pub placement: Option<String>,
    /// Quality given up per US dollar.
    pub lambda_per_usd: Option<f64>,
    /// Quality given up per second of predicted latency.
    pub mu_per_s: Option<f64>,
    /// Target share of requests sent to the cloud (0..=1).
    pub target_cloud_share: Option<f32>,
    /// Backends predicted slower than this end to end are excluded.
    pub latency_slo_ms: Option<f64>,
    /// `off`, `redact`, `block` or `force-local` when the detectors find sensitive data (API
    /// keys only; a route has its own `privacy` field).
    pub privacy: Option<String>,
}

/// `[router]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    /// Quality model file (JSON); the shipped model when absent.
    pub model_path: Option<String>,
    /// JSONL file every decision is appended to; none when absent.
    pub decision_log: Option<String>,
    /// Decisions queued for the log writer before new ones are dropped.
    pub decision_log_queue: Option<u64>,
    /// Bandit state file (JSON), restored at start and saved periodically and on shutdown.
    pub bandit_path: Option<String>,
    /// How often the bandit state is saved.
    pub bandit_save_interval_ms: Option<u64>,
    /// Key prefix of the bandit state in Redis (with the top-level `redis_url`).
    pub redis_prefix: Option<String>,
    /// Use the prompt encoder when its files are in the cache.
    pub encoder: Option<bool>,
    /// Default quality given up per US dollar.
    pub lambda_per_usd: Option<f64>,
    /// Default quality given up per second of predicted latency.
    pub mu_per_s: Option<f64>,
    /// Default target cloud share (0..=1).
    pub target_cloud_share: Option<f32>,
    /// Offer cascade when local and cloud utilities are within this margin.
    pub cascade_band: Option<f32>,
    /// Cascade confidence threshold (0..=1).
    pub cascade_threshold: Option<f32>,
    /// Local tokens whose confidence decides a cascade.
    pub cascade_tokens: Option<u32>,
    /// What a cascade judges: `first_tokens` (their confidence) or `answer` (the whole local
    /// answer, by the answer check).
    pub cascade_judge: Option<String>,
    /// Answer-check file for `cascade_judge = "answer"`; the shipped one when absent.
    pub answer_check_path: Option<String>,
    /// Share of local answers the answer check escalates (0..=1), from its held-out table.
    pub cascade_escalate_share: Option<f32>,
    /// Bandit exploration weight.
    pub bandit_alpha: Option<f32>,
    /// Bandit updates at which an arm's estimate gets half the weight.
    pub bandit_half_weight: Option<f32>,
    /// Request ids remembered for feedback: at least this many.
    pub recent_requests: Option<u64>,
    /// Per-API-key rules, keyed by the key's sha256 hex digest.
    #[serde(default)]
    pub keys: BTreeMap<String, RawPolicyRules>,
}

/// `[resilience]`: retries, the circuit breakers and the local fallback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResilience {
    /// Retries of a retryable failure on the same backend before the next one is tried.
    pub retries: Option<u64>,
    /// The first retry's backoff ceiling, ms (full jitter below it, doubling per retry).
    pub retry_backoff_ms: Option<u64>,
    /// The largest backoff ceiling, ms; an upstream asking for a longer wait is not retried.
    pub retry_backoff_max_ms: Option<u64>,
    /// Retries allowed as a share of recent requests.
    pub retry_budget_ratio: Option<f64>,
    /// Retries allowed per second whatever the traffic.
    pub retry_budget_min_per_sec: Option<u64>,
    /// Consecutive failures that open a backend's breaker.
    pub breaker_failures: Option<u64>,
    /// The error rate over the recent window that opens a backend's breaker.
    pub breaker_error_rate: Option<f64>,
    /// The calls in a breaker's error-rate window.
    pub breaker_window: Option<u64>,
    /// How long a breaker first stays open, ms (doubling on each trip in a row).
    pub breaker_open_ms: Option<u64>,
    /// The longest a breaker stays open, ms.
    pub breaker_open_max_ms: Option<u64>,
    /// Whether a route whose cloud backends all failed is answered by the local model.
    pub local_fallback: Option<bool>,
    /// How long in-flight requests may run on after SIGTERM, ms.
    pub shutdown_grace_ms: Option<u64>,
}

/// `[privacy]`: which detectors run and what routes without their own `privacy` do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    /// The action of routes that name none: `off` (the default), `redact`, `block`,
    /// `force-local`.
    pub default: Option<String>,
    /// Built-in detectors to run; all when absent.
    pub detectors: Option<Vec<String>>,
    /// Named regular expressions; the name labels the placeholder (`<EMPLOYEE_ID_1>`).
    #[serde(default)]
    pub patterns: BTreeMap<String, String>,
    /// Words and phrases matched whole, case-insensitively.
    #[serde(default)]
    pub terms: Vec<String>,
}

/// `[audit]`: the tamper-evident request log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The active JSONL file; no audit log when absent.
    pub path: Option<String>,
    /// Size in bytes at which the file is rotated.
    pub max_bytes: Option<u64>,
}
