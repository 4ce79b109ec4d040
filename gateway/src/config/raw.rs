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
    /// `[backends.NAME]`.
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    /// `[routes."MODEL"]`.
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
    /// `[router]`: the routing policy section, read by the router policy.
    pub router: Option<toml::Table>,
    /// Where models and other artifacts are cached.
    pub cache_dir: Option<String>,
    /// Redis for shared state; in-memory when absent.
    pub redis_url: Option<String>,
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
    /// Extra model ids this model answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Backends in order of preference.
    pub backends: Vec<String>,
    /// Try the next backend when one fails with a retryable error.
    pub fallback: Option<bool>,
}
