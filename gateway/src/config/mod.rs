//! `tandem.toml`: parsed into raw structs, overridden from `TANDEM__SECTION__KEY` variables, then
//! validated into the runtime [`Config`]. Every error names the path it is about.

pub mod controls;
pub mod ide;
pub mod observability;
pub mod privacy;
pub mod raw;
pub mod resilience;
pub mod router;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
// Re-exported so config callers and tests keep one import; the trait lives with the fetcher.
pub use tandem_artifacts::{EnvSource, MapEnv, ProcessEnv};
use tandem_cloud_adapters::providers::presets::{self, Preset};
use tandem_cloud_adapters::tls::{PemIdentity, UpstreamTls};
use tandem_local_model::WeightFormat;
use tandem_router_policy::Placement;
pub use tandem_router_policy::Price;

use crate::speculative::{DelayConfig, ScoringMode, VerifyProtocol};

pub use controls::{AdminConfig, ControlsConfig, OnUnavailable, RouteLimits, StoreConfig};
pub use ide::{IdeCloud, IdeConfig};
pub use observability::{ObservabilityConfig, OtlpConfig};
pub use privacy::{AuditSettings, PrivacyAction, PrivacySettings};
use raw::{RawBackend, RawConfig};
pub use resilience::ResilienceSettings;
pub use router::{BackendProfileConfig, CascadeJudge, PolicyRules, RoutePolicy, RouterSettings};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TANDEM__";
/// Default local model name: the artifact catalogue's default model.
pub const DEFAULT_LOCAL_MODEL: &str = tandem_artifacts::DEFAULT_MODEL;
/// Model id the local model always answers to.
pub const LOCAL_MODEL_ID: &str = "local";

/// A config that cannot be used, with the path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax error.
    #[error("{0}")]
    Syntax(String),
    /// A key has the wrong type, is unknown, or has an invalid value.
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path (`backends.openai.base_url`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// What a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The in-process model.
    Local,
    /// api.openai.com.
    OpenAi,
    /// Any server speaking the OpenAI chat completions API (vLLM, another Tandem, ...).
    OpenAiCompatible,
    /// Azure OpenAI (deployment URLs, `api-key` header).
    Azure,
    /// The Anthropic Messages API.
    Anthropic,
    /// Speculative decoding: a drafter here, a verifying `target` backend upstream.
    Speculative,
}

impl BackendKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "local" => Self::Local,
            "openai" => Self::OpenAi,
            "openai-compatible" => Self::OpenAiCompatible,
            "azure" => Self::Azure,
            "anthropic" => Self::Anthropic,
            "speculative" => Self::Speculative,
            _ => return None,
        })
    }

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::OpenAi => "openai",
            Self::OpenAiCompatible => "openai-compatible",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Speculative => "speculative",
        }
    }
}

/// One validated backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Config name (`[backends.NAME]`).
    pub name: String,
    /// What it is.
    pub kind: BackendKind,
    /// The named OpenAI-format server it is (`kind = "vllm"`), which gives its default address
    /// and what its API honours; such a backend's kind is `openai-compatible`.
    pub preset: Option<&'static Preset>,
    /// Base URL (not for `local`).
    pub base_url: Option<String>,
    /// The env variable named by `api_key_env`.
    pub api_key_env: Option<String>,
    /// Its value, read at load time (absent when unset).
    pub api_key: Option<String>,
    /// Azure API version.
    pub api_version: Option<String>,
    /// Client model id -> upstream model id.
    pub models: BTreeMap<String, String>,
    /// Prices.
    pub price: Price,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Its client certificate and extra CAs.
    pub tls: UpstreamTls,
    /// How it verifies draft tokens (`none`: never a speculative target).
    pub verify: VerifyProtocol,
    /// For `speculative` backends: the target and the drafter.
    pub speculative: Option<SpeculativeBackend>,
    /// What the router policy assumes about it.
    pub profile: BackendProfileConfig,
}

/// Which drafter a speculative backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrafterKind {
    /// The in-process model (across tokenizers when its vocabulary differs from the target's).
    Local,
    /// Prompt lookup: n-grams of the context, no model.
    Ngram,
}

/// A `speculative` backend's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeculativeBackend {
    /// The verifying backend's name.
    pub target: String,
    /// The drafter.
    pub drafter: DrafterKind,
    /// The target's tokenizer (model name or `.gguf` path); the local model's when absent.
    pub tokenizer: Option<String>,
    /// The longest draft per round.
    pub max_draft: usize,
}

/// The target side: this process's model answering `/v1/tandem/verify` and `/generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyEndpoints {
    /// Whether the endpoints are mounted.
    pub enabled: bool,
    /// How a draft block is scored.
    pub scoring: ScoringMode,
    /// Sessions kept at once.
    pub sessions: usize,
    /// Emulated network and large-model timing (test beds only).
    pub delay: Option<DelayConfig>,
}

impl Default for VerifyEndpoints {
    fn default() -> Self {
        Self {
            // Off unless asked for: they run the local model for any caller with a key.
            enabled: false,
            scoring: ScoringMode::default(),
            sessions: 64,
            delay: None,
        }
    }
}

impl BackendConfig {
    /// The upstream's model id for a client model id.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.models.get(model).map(String::as_str).unwrap_or(model)
    }
}

/// One model id and the backends that serve it.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Backend names in order of preference.
    pub backends: Vec<String>,
    /// Move on to the next backend on a retryable error.
    pub fallback: bool,
    /// Config order or the learned policy.
    pub policy: RoutePolicy,
    /// Hard rules and weights for requests on this route.
    pub rules: PolicyRules,
    /// Cascade confidence threshold replacing the router's.
    pub cascade_threshold: Option<f32>,
    /// With `balance = "p2c"`: each backend's weight, in `backends` order.
    pub balance: Option<Vec<f64>>,
    /// With `hedge = true`: the hedge's delay, or `None` for the first backend's p95.
    pub hedge: Option<Option<Duration>>,
    /// The cloud backend the route's savings are measured against: `reference` as configured,
    /// else the route's first cloud backend; none on a route without one.
    pub reference: Option<String>,
    /// The response cache on this route, when on.
    pub cache: Option<CacheRule>,
    /// What happens when the detectors find sensitive data; `[privacy] default` when None.
    pub privacy: Option<PrivacyAction>,
    /// The model's context window as configured (`routes.X.context_length`); `/v1/models`
    /// reports it, or the local model's own on a route of the local model alone.
    pub context_length: Option<u64>,
}

/// How a route caches answers (`[routes."MODEL".cache]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheRule {
    /// How long an answer stays cached.
    pub ttl: Duration,
    /// Whether requests sampled above temperature 0 are cached too.
    pub nondeterministic: bool,
    /// The least cosine similarity of a semantic hit; None when only exact hits answer.
    pub semantic: Option<f32>,
}

impl CacheRule {
    /// An answer stays this long unless the route says otherwise.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    /// A semantic hit needs at least this similarity unless the route says otherwise.
    pub const DEFAULT_SIMILARITY: f32 = 0.95;
}

impl RouteConfig {
    /// A fixed-order route without fallback.
    pub fn fixed(backends: Vec<String>) -> Self {
        Self {
            backends,
            fallback: false,
            policy: RoutePolicy::Fixed,
            rules: PolicyRules::default(),
            cascade_threshold: None,
            balance: None,
            hedge: None,
            reference: None,
            cache: None,
            privacy: None,
            context_length: None,
        }
    }
}

impl BackendKind {
    /// Whether a backend of this kind is a cloud API (what savings are measured against).
    pub fn is_cloud(self) -> bool {
        !matches!(self, Self::Local | Self::Speculative)
    }
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Total time per request.
    pub request_timeout: Duration,
    /// Time to a stream's first event.
    pub first_token_timeout: Duration,
    /// Seconds advertised in `retry-after` when shedding load.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrency: 512,
            request_timeout: Duration::from_secs(600),
            first_token_timeout: Duration::from_secs(60),
            retry_after_secs: 1,
        }
    }
}

/// The in-process model.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Model name or `.gguf` path.
    pub model: String,
    /// Compute threads.
    pub threads: usize,
    /// KV cache size in tokens.
    pub kv_cache_tokens: usize,
    /// How the weights are held in memory (a higher precision than the file's costs memory).
    pub weights: WeightFormat,
    /// Model ids it answers to besides `local`.
    pub aliases: Vec<String>,
    /// The verify endpoints over this model.
    pub verify: VerifyEndpoints,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model: DEFAULT_LOCAL_MODEL.into(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            kv_cache_tokens: 4096,
            weights: WeightFormat::AsStored,
            aliases: vec![DEFAULT_LOCAL_MODEL.into()],
            verify: VerifyEndpoints::default(),
        }
    }
}

/// TLS on a listener: PEM files, read at start and again whenever they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The served certificate chain and its key.
    pub identity: PemIdentity,
    /// mTLS: the CAs a client certificate must chain to (clients without one are refused).
    pub client_ca: Option<PathBuf>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS on `listen`; plain HTTP when absent.
    pub tls: Option<TlsSettings>,
    /// sha256 digests of accepted API keys; empty means no auth.
    pub api_key_hashes: Vec<[u8; 32]>,
    /// Limits.
    pub limits: Limits,
    /// The local model, when a `local` backend exists.
    pub local: Option<LocalConfig>,
    /// The code model for editor plugins (`[ide]`), served next to the chat model.
    pub ide: Option<IdeConfig>,
    /// Backends by name.
    pub backends: BTreeMap<String, BackendConfig>,
    /// Routes by model id.
    pub routes: BTreeMap<String, RouteConfig>,
    /// The `[router]` section.
    pub router: RouterSettings,
    /// Artifact cache directory override.
    pub cache_dir: Option<PathBuf>,
    /// Redis URL for shared state.
    pub redis_url: Option<String>,
    /// The `[resilience]` section.
    pub resilience: ResilienceSettings,
    /// The `[observability]` section.
    pub observability: ObservabilityConfig,
    /// The store, the admin listener and per-route rate limits.
    pub controls: ControlsConfig,
    /// The `[privacy]` section.
    pub privacy: PrivacySettings,
    /// The `[audit]` section.
    pub audit: AuditSettings,
}

impl Config {
    /// The embedded default: the local model only, on 127.0.0.1:8080, as `local` and `smollm2-135m`.
    pub fn default_local() -> Self {
        // An empty file validates to exactly the default.
        match Self::from_raw(RawConfig::default(), &MapEnv::default()) {
            Ok(c) => c,
            Err(_) => unreachable_default(),
        }
    }

    /// The embedded default with `TANDEM__...` overrides from `env`: `tandem serve` with no file.
    pub fn default_local_with(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        Self::from_toml_str("", env)
    }

    /// Reads, overrides from `env` and validates a file.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, env)
    }

    /// Parses, overrides from `env` and validates TOML text.
    pub fn from_toml_str(text: &str, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        apply_env_overrides(&mut table, env)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                invalid(
                    if path == "." { "(root)".into() } else { path },
                    e.into_inner().to_string(),
                )
            })?;
        Self::from_raw(raw, env)
    }

    /// Validates raw structs into the runtime config.
    pub fn from_raw(raw: RawConfig, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("`{listen_text}` is not host:port ({e})"),
            )
        })?;

        let mut controls = controls::validate(&raw, env)?;
        let tls = validate_server_tls(&raw.server)?;

        let mut api_key_hashes = Vec::new();
        for (i, h) in raw.server.api_key_hashes.iter().enumerate() {
            let bytes = hex::decode(h.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                invalid(
                    format!("server.api_key_hashes[{i}]"),
                    "expected 64 hex characters (a sha256 digest; `tandem config hash-key KEY` prints one)",
                )
            })?;
            api_key_hashes.push(bytes);
        }

        let defaults = Limits::default();
        let positive = |v: Option<u64>, path: &str, default: u64| -> Result<u64, ConfigError> {
            match v {
                Some(0) => Err(invalid(path, "must be greater than 0")),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let limits = Limits {
            max_body_bytes: positive(
                raw.limits.max_body_bytes,
                "limits.max_body_bytes",
                defaults.max_body_bytes as u64,
            )? as usize,
            max_concurrency: positive(
                raw.limits.max_concurrency,
                "limits.max_concurrency",
                defaults.max_concurrency as u64,
            )? as usize,
            request_timeout: Duration::from_millis(positive(
                raw.limits.request_timeout_ms,
                "limits.request_timeout_ms",
                defaults.request_timeout.as_millis() as u64,
            )?),
            first_token_timeout: Duration::from_millis(positive(
                raw.limits.first_token_timeout_ms,
                "limits.first_token_timeout_ms",
                defaults.first_token_timeout.as_millis() as u64,
            )?),
            retry_after_secs: raw
                .limits
                .retry_after_secs
                .unwrap_or(defaults.retry_after_secs),
        };

        let mut backends = BTreeMap::new();
        let no_backends = raw.backends.is_empty();
        for (name, b) in raw.backends {
            let backend = validate_backend(&name, b, env)?;
            backends.insert(name, backend);
        }
        // With no backends at all the gateway serves the local model alone.
        if no_backends {
            backends.insert(LOCAL_MODEL_ID.into(), local_backend(LOCAL_MODEL_ID));
        }

        let has_local = backends.values().any(|b| b.kind == BackendKind::Local);
        if backends
            .values()
            .filter(|b| b.kind == BackendKind::Local)
            .count()
            > 1
        {
            return Err(invalid(
                "backends",
                "at most one backend may have kind = \"local\"",
            ));
        }
        let local = match (raw.local, has_local) {
            (Some(l), _) => Some(validate_local(l)?),
            (None, true) => Some(LocalConfig::default()),
            (None, false) => None,
        };
        check_speculative_targets(&backends, local.is_some())?;

        let router_settings = router::validate_router(raw.router)?;
        let resilience = resilience::validate_resilience(raw.resilience)?;
        let privacy = privacy::validate_privacy(raw.privacy)?;
        let audit = privacy::validate_audit(raw.audit)?;
        let mut routes = BTreeMap::new();
        for (model, r) in raw.routes {
            if r.backends.is_empty() {
                return Err(invalid(
                    format!("routes.{model}.backends"),
                    "must name at least one backend",
                ));
            }
            for (i, b) in r.backends.iter().enumerate() {
                let Some(backend) = backends.get(b) else {
                    return Err(invalid(
                        format!("routes.{model}.backends[{i}]"),
                        format!("no backend named `{b}` (declared: {})", names(&backends)),
                    ));
                };
                // Azure serves a model only from a deployment named for it; without one, every
                // request on the route would fail there.
                if backend.kind == BackendKind::Azure
                    && !backend.models.contains_key(&model)
                    && !backend.models.values().any(|d| *d == model)
                {
                    return Err(invalid(
                        format!("routes.{model}.backends[{i}]"),
                        format!(
                            "the azure backend `{b}` has no deployment for `{model}` (add \"{model}\" = \"<deployment>\" to backends.{b}.models, or name the route after a deployment)"
                        ),
                    ));
                }
            }
            let policy = match r.policy.as_deref() {
                None | Some("fixed") => RoutePolicy::Fixed,
                Some("learned") => RoutePolicy::Learned,
                Some(other) => {
                    return Err(invalid(
                        format!("routes.{model}.policy"),
                        format!("unknown policy `{other}` (expected fixed or learned)"),
                    ));
                }
            };
            let balance = resilience::validate_balance(&model, &r, policy)?;
            let hedge = resilience::validate_hedge(&model, &r)?;
            let rules = router::validate_rules(
                &format!("routes.{model}"),
                raw::RawPolicyRules {
                    placement: r.placement,
                    lambda_per_usd: r.lambda_per_usd,
                    mu_per_s: r.mu_per_s,
                    target_cloud_share: r.target_cloud_share,
                    latency_slo_ms: r.latency_slo_ms,
                    privacy: None,
                },
                router_settings.policy.weights,
            )?;
            let cascade_threshold = match r.cascade_threshold {
                Some(t) if !(t.is_finite() && (0.0..=1.0).contains(&t)) => {
                    return Err(invalid(
                        format!("routes.{model}.cascade_threshold"),
                        "must be within 0..=1",
                    ));
                }
                t => t,
            };
            if policy == RoutePolicy::Fixed
                && (rules != PolicyRules::default() || cascade_threshold.is_some())
            {
                return Err(invalid(
                    format!("routes.{model}"),
                    "placement, weights, target_cloud_share, latency_slo_ms and cascade_threshold need policy = \"learned\"",
                ));
            }
            if cascade_threshold.is_some() && router_settings.policy.cascade_band.is_none() {
                return Err(invalid(
                    format!("routes.{model}.cascade_threshold"),
                    "has no effect without router.cascade_band (the policy never picks a cascade)",
                ));
            }
            if cascade_threshold.is_some()
                && router_settings.cascade_judge != router::CascadeJudge::FirstTokens
            {
                return Err(invalid(
                    format!("routes.{model}.cascade_threshold"),
                    "has no effect with router.cascade_judge = \"answer\" (set router.cascade_escalate_share)",
                ));
            }
            if let Some(p) = rules.placement
                && !r
                    .backends
                    .iter()
                    .any(|b| backends.get(b).is_some_and(|b| placement_allows(p, b.kind)))
            {
                return Err(invalid(
                    format!("routes.{model}.placement"),
                    format!(
                        "{} leaves none of the route's backends to serve it",
                        p.as_str()
                    ),
                ));
            }
            let reference = match r.reference {
                Some(name) => match backends.get(&name) {
                    Some(b) if b.kind.is_cloud() => Some(name),
                    Some(b) => {
                        return Err(invalid(
                            format!("routes.{model}.reference"),
                            format!(
                                "`{name}` is a {} backend; the reference must be a cloud backend",
                                b.kind.as_str()
                            ),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            format!("routes.{model}.reference"),
                            format!("no backend named `{name}` (declared: {})", names(&backends)),
                        ));
                    }
                },
                None => None,
            };
            let cache = r
                .cache
                .map(|c| validate_cache(&format!("routes.{model}.cache"), c))
                .transpose()?;
            let privacy = r
                .privacy
                .as_deref()
                .map(|p| PrivacyAction::parse(p, &format!("routes.{model}.privacy")))
                .transpose()?;
            if r.context_length == Some(0) {
                return Err(invalid(
                    format!("routes.{model}.context_length"),
                    "must be at least 1 token",
                ));
            }
            routes.insert(
                model,
                RouteConfig {
                    backends: r.backends,
                    fallback: r.fallback.unwrap_or(true),
                    policy,
                    rules,
                    cascade_threshold,
                    balance,
                    hedge,
                    reference,
                    cache,
                    privacy,
                    context_length: r.context_length,
                },
            );
        }
        // Implicit routes: the local model's ids, and every model a backend maps.
        if let Some(local_name) = backends
            .values()
            .find(|b| b.kind == BackendKind::Local)
            .map(|b| b.name.clone())
        {
            let mut ids = vec![LOCAL_MODEL_ID.to_owned()];
            ids.extend(local.iter().flat_map(|l| l.aliases.iter().cloned()));
            for id in ids {
                routes
                    .entry(id)
                    .or_insert_with(|| RouteConfig::fixed(vec![local_name.clone()]));
            }
        }
        for b in backends.values() {
            for model in b.models.keys() {
                routes
                    .entry(model.clone())
                    .or_insert_with(|| RouteConfig::fixed(vec![b.name.clone()]));
            }
        }

        if !api_key_hashes.is_empty() {
            for hash in router_settings.keys.keys() {
                if !api_key_hashes.iter().any(|h| hex::encode(h) == *hash) {
                    return Err(invalid(
                        format!("router.keys.{hash}"),
                        "is not one of server.api_key_hashes, so no request can carry that key",
                    ));
                }
            }
        }

        let redis_url = match raw.redis_url {
            Some(u)
                if !(u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("unix://")) =>
            {
                return Err(invalid(
                    "redis_url",
                    format!("`{u}` is not a redis:// or rediss:// URL"),
                ));
            }
            other => other,
        };
        controls.store.redis_url = redis_url.clone();

        // A route's savings are measured against its first cloud backend unless it names one.
        for route in routes.values_mut() {
            if route.reference.is_none() {
                route.reference = route
                    .backends
                    .iter()
                    .find(|b| backends.get(*b).is_some_and(|b| b.kind.is_cloud()))
                    .cloned();
            }
        }
        let observability = observability::validate_observability(raw.observability)?;
        let ide = raw.ide.map(ide::validate_ide).transpose()?;
        if let Some(cloud) = ide.as_ref().and_then(|i| i.cloud.as_ref()) {
            match backends.get(&cloud.backend).map(|b| b.kind) {
                Some(BackendKind::OpenAi | BackendKind::OpenAiCompatible | BackendKind::Azure) => {}
                Some(_) => {
                    return Err(invalid(
                        "ide.cloud",
                        format!(
                            "backend `{}` does not speak OpenAI's /v1/completions (use kind openai-compatible, openai or azure)",
                            cloud.backend
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        "ide.cloud",
                        format!("no backend named `{}` in [backends]", cloud.backend),
                    ));
                }
            }
        }

        Ok(Self {
            listen,
            tls,
            api_key_hashes,
            limits,
            local,
            ide,
            backends,
            routes,
            router: router_settings,
            cache_dir: raw.cache_dir.map(PathBuf::from),
            redis_url,
            resilience,
            observability,
            controls,
            privacy,
            audit,
        })
    }

    /// A human summary, printed by `tandem config check`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "listen: {}", self.listen);
        if let Some(tls) = &self.tls {
            let _ = writeln!(
                s,
                "tls: {}{}",
                tls.identity.cert.display(),
                tls.client_ca.as_ref().map_or(String::new(), |ca| format!(
                    ", client certificates required (CA {})",
                    ca.display()
                ))
            );
        }
        let _ = writeln!(
            s,
            "auth: {}",
            if self.api_key_hashes.is_empty() {
                "off".to_owned()
            } else {
                format!("{} key(s)", self.api_key_hashes.len())
            }
        );
        let l = &self.limits;
        let _ = writeln!(
            s,
            "limits: body {} B, concurrency {}, timeout {} ms, first token {} ms",
            l.max_body_bytes,
            l.max_concurrency,
            l.request_timeout.as_millis(),
            l.first_token_timeout.as_millis()
        );
        if let Some(local) = &self.local {
            let _ = writeln!(
                s,
                "local model: {} ({} threads, kv cache {} tokens, weights {})",
                local.model,
                local.threads,
                local.kv_cache_tokens,
                local.weights.as_str()
            );
        }
        if let Some(ide) = &self.ide {
            let _ = writeln!(
                s,
                "ide code model: {} ({} threads, kv cache {} tokens, context {} + extra {} tokens)",
                ide.model, ide.threads, ide.kv_cache_tokens, ide.context_tokens, ide.extra_tokens
            );
        }
        let _ = writeln!(s, "backends:");
        for b in self.backends.values() {
            let key = match (&b.api_key_env, &b.api_key) {
                (Some(var), Some(_)) => format!(", key from ${var}"),
                (Some(var), None) => format!(", key from ${var} (NOT SET)"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "  {} [{}] {}{}",
                b.name,
                b.preset.map_or(b.kind.as_str(), |p| p.kind),
                b.base_url.as_deref().unwrap_or("in-process"),
                key
            );
        }
        let _ = writeln!(s, "routes:");
        for (model, r) in &self.routes {
            let mut how = Vec::new();
            if r.fallback && r.backends.len() > 1 {
                how.push("fallback");
            }
            if r.balance.is_some() {
                how.push("p2c");
            }
            if r.hedge.is_some() {
                how.push("hedged");
            }
            let how = if how.is_empty() {
                String::new()
            } else {
                format!(" ({})", how.join(", "))
            };
            let _ = writeln!(s, "  {model} -> {}{how}", r.backends.join(", "));
        }
        if let Some(u) = &self.redis_url {
            let _ = writeln!(s, "redis: {u}");
        }
        s
    }
}

#[cold]
fn unreachable_default() -> Config {
    // The empty config always validates; this keeps `default_local` free of panics anyway.
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        tls: None,
        api_key_hashes: Vec::new(),
        limits: Limits::default(),
        local: Some(LocalConfig::default()),
        ide: None,
        backends: BTreeMap::from([(LOCAL_MODEL_ID.to_owned(), local_backend(LOCAL_MODEL_ID))]),
        routes: BTreeMap::new(),
        router: RouterSettings::default(),
        cache_dir: None,
        redis_url: None,
        resilience: ResilienceSettings::default(),
        observability: ObservabilityConfig::default(),
        controls: ControlsConfig::default(),
        privacy: PrivacySettings::default(),
        audit: AuditSettings::default(),
    }
}

fn names(backends: &BTreeMap<String, BackendConfig>) -> String {
    backends.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn local_backend(name: &str) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        kind: BackendKind::Local,
        preset: None,
        base_url: None,
        api_key_env: None,
        api_key: None,
        api_version: None,
        models: BTreeMap::new(),
        price: Price::default(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(600),
        tls: UpstreamTls::default(),
        verify: VerifyProtocol::None,
        speculative: None,
        profile: BackendProfileConfig::default_for(BackendKind::Local),
    }
}

/// A route's `cache` table: a TTL over 0, a similarity within 0..=1 and only with `semantic`.
fn validate_cache(path: &str, c: raw::RawRouteCache) -> Result<CacheRule, ConfigError> {
    let ttl = match c.ttl_s {
        Some(0) => return Err(invalid(format!("{path}.ttl_s"), "must be greater than 0")),
        Some(s) => Duration::from_secs(s),
        None => CacheRule::DEFAULT_TTL,
    };
    let semantic = c.semantic.unwrap_or(false);
    let similarity = match c.similarity {
        Some(s) if !(s.is_finite() && (0.0..=1.0).contains(&s)) => {
            return Err(invalid(
                format!("{path}.similarity"),
                "must be within 0..=1",
            ));
        }
        Some(_) if !semantic => {
            return Err(invalid(
                format!("{path}.similarity"),
                "has no effect without semantic = true",
            ));
        }
        s => s.unwrap_or(CacheRule::DEFAULT_SIMILARITY),
    };
    Ok(CacheRule {
        ttl,
        nondeterministic: c.nondeterministic.unwrap_or(false),
        semantic: semantic.then_some(similarity),
    })
}

fn validate_local(l: raw::RawLocal) -> Result<LocalConfig, ConfigError> {
    let d = LocalConfig::default();
    let model = l.model.unwrap_or(d.model);
    if model.trim().is_empty() {
        return Err(invalid(
            "local.model",
            "must be a model name or a .gguf path",
        ));
    }
    let threads = match l.threads {
        Some(0) => return Err(invalid("local.threads", "must be greater than 0")),
        Some(t) => t as usize,
        None => d.threads,
    };
    let kv_cache_tokens = match l.kv_cache_tokens {
        Some(t) if t < 64 => return Err(invalid("local.kv_cache_tokens", "must be at least 64")),
        Some(t) => t as usize,
        None => d.kv_cache_tokens,
    };
    let weights = match l.weights {
        Some(w) => WeightFormat::parse(&w).map_err(|_| {
            invalid(
                "local.weights",
                format!("{w:?} is not one of {}", WeightFormat::NAMES.join(", ")),
            )
        })?,
        None => d.weights,
    };
    let mut aliases: BTreeSet<String> = l.aliases.into_iter().collect();
    if !model.ends_with(".gguf") {
        aliases.insert(model.clone());
    }
    let verify = validate_verify_endpoints(
        l.verify_endpoints,
        l.verify_scoring,
        l.verify_sessions,
        l.emulate_rtt_ms,
        l.emulate_step_ms,
    )?;
    Ok(LocalConfig {
        model,
        threads,
        kv_cache_tokens,
        weights,
        aliases: aliases.into_iter().collect(),
        verify,
    })
}

fn validate_verify_endpoints(
    enabled: Option<bool>,
    scoring: Option<String>,
    sessions: Option<u64>,
    rtt_ms: Option<u64>,
    step_ms: Option<u64>,
) -> Result<VerifyEndpoints, ConfigError> {
    let d = VerifyEndpoints::default();
    let scoring = match scoring.as_deref() {
        None => d.scoring,
        Some("batched") => ScoringMode::Batched,
        Some("stepwise") => ScoringMode::Stepwise,
        Some(other) => {
            return Err(invalid(
                "local.verify_scoring",
                format!("unknown scoring `{other}` (expected batched or stepwise)"),
            ));
        }
    };
    let sessions = match sessions {
        Some(0) => return Err(invalid("local.verify_sessions", "must be greater than 0")),
        Some(n) => n as usize,
        None => d.sessions,
    };
    let delay = (rtt_ms.is_some() || step_ms.is_some()).then(|| DelayConfig {
        rtt: Duration::from_millis(rtt_ms.unwrap_or(0)),
        step: Duration::from_millis(step_ms.unwrap_or(0)),
    });
    Ok(VerifyEndpoints {
        enabled: enabled.unwrap_or(d.enabled),
        scoring,
        sessions,
        delay,
    })
}

fn validate_backend(
    name: &str,
    b: RawBackend,
    env: &dyn EnvSource,
) -> Result<BackendConfig, ConfigError> {
    let path = |key: &str| format!("backends.{name}.{key}");
    let preset = presets::preset(&b.kind);
    let kind = match (BackendKind::parse(&b.kind), preset) {
        (Some(kind), _) => kind,
        (None, Some(_)) => BackendKind::OpenAiCompatible,
        (None, None) => {
            let named: Vec<&str> = presets::PRESETS.iter().map(|p| p.kind).collect();
            return Err(invalid(
                path("kind"),
                format!(
                    "unknown kind `{}` (expected local, openai, openai-compatible, azure, anthropic, speculative or one of {})",
                    b.kind,
                    named.join(", ")
                ),
            ));
        }
    };
    let speculative = validate_speculative(name, kind, &b)?;
    let tls = validate_upstream_tls(name, kind, &b)?;
    let base_url = match (kind, b.base_url) {
        (BackendKind::Local, Some(_)) => {
            return Err(invalid(path("base_url"), "a local backend has no base_url"));
        }
        (BackendKind::Local, None) => None,
        (BackendKind::Speculative, Some(_)) => {
            return Err(invalid(
                path("base_url"),
                "a speculative backend has no base_url (its target has one)",
            ));
        }
        (BackendKind::Speculative, None) => None,
        (BackendKind::OpenAi, None) => Some("https://api.openai.com/v1".to_owned()),
        (BackendKind::Anthropic, None) => Some("https://api.anthropic.com/v1".to_owned()),
        (_, None) if preset.is_some() => preset.map(|p| p.base_url.to_owned()),
        (_, None) => return Err(invalid(path("base_url"), "required for this kind")),
        (_, Some(u)) => {
            let uri: http::Uri = u
                .parse()
                .map_err(|e| invalid(path("base_url"), format!("`{u}` is not a URL ({e})")))?;
            match uri.scheme_str() {
                Some("http" | "https") if uri.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        path("base_url"),
                        format!("`{u}` must be an http:// or https:// URL"),
                    ));
                }
            }
            Some(u.trim_end_matches('/').to_owned())
        }
    };
    if kind == BackendKind::Azure && b.api_version.is_none() {
        return Err(invalid(path("api_version"), "required for azure backends"));
    }
    let api_key_env = b.api_key_env;
    if let Some(var) = &api_key_env
        && (var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(invalid(
            path("api_key_env"),
            format!("`{var}` is not an environment variable name"),
        ));
    }
    let api_key = api_key_env.as_deref().and_then(|v| env.var(v));
    let price_field = |v: Option<f64>, key: &str| -> Result<f64, ConfigError> {
        match v {
            Some(p) if !(p.is_finite() && p >= 0.0) => {
                Err(invalid(path(&format!("price.{key}")), "must be >= 0"))
            }
            Some(p) => Ok(p),
            None => Ok(0.0),
        }
    };
    let profile_defaults = BackendProfileConfig::default_for(kind);
    let strength = match b.strength {
        Some(s) if !(s.is_finite() && (0.0..=1.0).contains(&s)) => {
            return Err(invalid(path("strength"), "must be within 0..=1"));
        }
        Some(s) => s as f32,
        None => profile_defaults.strength,
    };
    let prior = |v: Option<f64>, key: &str, default: f64| -> Result<f64, ConfigError> {
        match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(invalid(path(key), "must be >= 0")),
            v => Ok(v.unwrap_or(default)),
        }
    };
    let profile = BackendProfileConfig {
        strength,
        prior_ttft_ms: prior(
            b.prior_ttft_ms,
            "prior_ttft_ms",
            profile_defaults.prior_ttft_ms,
        )?,
        prior_itl_ms: prior(
            b.prior_itl_ms,
            "prior_itl_ms",
            profile_defaults.prior_itl_ms,
        )?,
    };
    let input = price_field(b.price.input, "input")?;
    let price = Price {
        input_per_mtok: input,
        output_per_mtok: price_field(b.price.output, "output")?,
        cached_input_per_mtok: match b.price.cached_input {
            None => input,
            v => price_field(v, "cached_input")?,
        },
    };
    let ms = |v: Option<u64>, key: &str, default: u64| -> Result<Duration, ConfigError> {
        match v {
            Some(0) => Err(invalid(path(key), "must be greater than 0")),
            v => Ok(Duration::from_millis(v.unwrap_or(default))),
        }
    };
    let verify = match b.verify.as_deref() {
        None => VerifyProtocol::None,
        Some(v) => {
            let protocol: VerifyProtocol = v.parse().map_err(|_| {
                invalid(
                    path("verify"),
                    format!("unknown protocol `{v}` (expected vllm, sglang, tandem or none)"),
                )
            })?;
            if protocol.can_verify() && kind != BackendKind::OpenAiCompatible {
                return Err(invalid(
                    path("verify"),
                    format!(
                        "a {} backend cannot verify draft tokens (hosted chat APIs return no prompt log probabilities); only openai-compatible backends take `verify`",
                        kind.as_str()
                    ),
                ));
            }
            protocol
        }
    };
    Ok(BackendConfig {
        name: name.to_owned(),
        kind,
        preset,
        base_url,
        api_key_env,
        api_key,
        api_version: b.api_version,
        models: b.models,
        price,
        connect_timeout: ms(b.connect_timeout_ms, "connect_timeout_ms", 10_000)?,
        request_timeout: ms(b.request_timeout_ms, "request_timeout_ms", 600_000)?,
        tls,
        verify,
        speculative,
        profile,
    })
}

/// A path key: absent, or a non-empty path.
fn path_key(value: Option<&String>, path: &str) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(path, "must be a file path")),
        v => Ok(v.map(PathBuf::from)),
    }
}

/// A certificate and its key: both or neither.
fn pem_identity(
    cert: Option<&String>,
    key: Option<&String>,
    cert_path: &str,
    key_path: &str,
) -> Result<Option<PemIdentity>, ConfigError> {
    match (path_key(cert, cert_path)?, path_key(key, key_path)?) {
        (Some(cert), Some(key)) => Ok(Some(PemIdentity { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(key_path, format!("required with {cert_path}"))),
        (None, Some(_)) => Err(invalid(cert_path, format!("required with {key_path}"))),
    }
}

/// `server.tls_cert`, `tls_key` and `tls_client_ca`. The files are read when the server starts.
fn validate_server_tls(server: &raw::RawServer) -> Result<Option<TlsSettings>, ConfigError> {
    let identity = pem_identity(
        server.tls_cert.as_ref(),
        server.tls_key.as_ref(),
        "server.tls_cert",
        "server.tls_key",
    )?;
    let client_ca = path_key(server.tls_client_ca.as_ref(), "server.tls_client_ca")?;
    match identity {
        Some(identity) => Ok(Some(TlsSettings {
            identity,
            client_ca,
        })),
        None if client_ca.is_some() => Err(invalid(
            "server.tls_client_ca",
            "client certificates need TLS: set server.tls_cert and server.tls_key too",
        )),
        None => Ok(None),
    }
}

/// A backend's `client_cert`, `client_key` and `ca_cert`: for backends reached over HTTP only.
fn validate_upstream_tls(
    name: &str,
    kind: BackendKind,
    b: &RawBackend,
) -> Result<UpstreamTls, ConfigError> {
    let path = |key: &str| format!("backends.{name}.{key}");
    let tls = UpstreamTls {
        client_identity: pem_identity(
            b.client_cert.as_ref(),
            b.client_key.as_ref(),
            &path("client_cert"),
            &path("client_key"),
        )?,
        extra_roots: path_key(b.ca_cert.as_ref(), &path("ca_cert"))?,
    };
    if matches!(kind, BackendKind::Local | BackendKind::Speculative)
        && tls != UpstreamTls::default()
    {
        let key = if b.client_cert.is_some() {
            "client_cert"
        } else {
            "ca_cert"
        };
        return Err(invalid(
            path(key),
            format!(
                "a {} backend makes no connection of its own (set it on the backend it reaches)",
                kind.as_str()
            ),
        ));
    }
    Ok(tls)
}

/// The speculative keys of one backend: required on `speculative`, refused elsewhere.
fn validate_speculative(
    name: &str,
    kind: BackendKind,
    b: &RawBackend,
) -> Result<Option<SpeculativeBackend>, ConfigError> {
    let path = |key: &str| format!("backends.{name}.{key}");
    if kind != BackendKind::Speculative {
        for (key, set) in [
            ("target", b.target.is_some()),
            ("drafter", b.drafter.is_some()),
            ("tokenizer", b.tokenizer.is_some()),
            ("max_draft", b.max_draft.is_some()),
        ] {
            if set {
                return Err(invalid(
                    path(key),
                    "only speculative backends take this key",
                ));
            }
        }
        return Ok(None);
    }
    if b.verify.is_some() {
        return Err(invalid(
            path("verify"),
            "a speculative backend does not verify; set it on its target",
        ));
    }
    let target = b
        .target
        .clone()
        .ok_or_else(|| invalid(path("target"), "required for speculative backends"))?;
    let drafter = match b.drafter.as_deref().unwrap_or("local") {
        "local" => DrafterKind::Local,
        "ngram" => DrafterKind::Ngram,
        other => {
            return Err(invalid(
                path("drafter"),
                format!("unknown drafter `{other}` (expected local or ngram)"),
            ));
        }
    };
    let max_draft = match b.max_draft {
        Some(0) => return Err(invalid(path("max_draft"), "must be greater than 0")),
        Some(n) if n > 64 => return Err(invalid(path("max_draft"), "must be at most 64")),
        Some(n) => n as usize,
        None => 12,
    };
    if let Some(t) = &b.tokenizer
        && t.trim().is_empty()
    {
        return Err(invalid(
            path("tokenizer"),
            "must be a model name or a .gguf path",
        ));
    }
    Ok(Some(SpeculativeBackend {
        target,
        drafter,
        tokenizer: b.tokenizer.clone(),
        max_draft,
    }))
}

/// Cross-backend checks of speculative backends: the target exists and can verify, and a local
/// drafter has a local model.
fn check_speculative_targets(
    backends: &BTreeMap<String, BackendConfig>,
    has_local_model: bool,
) -> Result<(), ConfigError> {
    for b in backends.values() {
        let Some(spec) = &b.speculative else { continue };
        let path = |key: &str| format!("backends.{}.{key}", b.name);
        let target = backends.get(&spec.target).ok_or_else(|| {
            invalid(
                path("target"),
                format!(
                    "no backend named `{}` (declared: {})",
                    spec.target,
                    names(backends)
                ),
            )
        })?;
        match target.kind {
            BackendKind::OpenAi | BackendKind::Anthropic | BackendKind::Azure => {
                return Err(invalid(
                    path("target"),
                    format!(
                        "`{}` is a hosted {} backend, which cannot verify draft tokens; point it at an openai-compatible backend with `verify` set",
                        target.name,
                        target.kind.as_str()
                    ),
                ));
            }
            BackendKind::OpenAiCompatible if target.verify.can_verify() => {}
            _ => {
                return Err(invalid(
                    path("target"),
                    format!(
                        "`{}` cannot verify: set backends.{}.verify to vllm, sglang or tandem",
                        target.name, target.name
                    ),
                ));
            }
        }
        if spec.drafter == DrafterKind::Local && !has_local_model {
            return Err(invalid(
                path("drafter"),
                "`local` needs the local model (a [local] section or a local backend)",
            ));
        }
    }
    Ok(())
}

/// Applies `TANDEM__A__B=value` as `a.b = value`. Values that parse as TOML (numbers, booleans,
/// arrays, quoted strings) keep their type; anything else is a string.
fn apply_env_overrides(table: &mut toml::Table, env: &dyn EnvSource) -> Result<(), ConfigError> {
    for (name, value) in env.vars_with_prefix(ENV_PREFIX) {
        let keys: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            return Err(invalid(name, "empty key segment"));
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut cursor = &mut *table;
        let (last, parents) = match keys.split_last() {
            Some(x) => x,
            None => continue,
        };
        for (i, k) in parents.iter().enumerate() {
            let entry = cursor
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(invalid(
                        keys[..=i].join("."),
                        format!("{name} overrides a key inside a non-table value"),
                    ));
                }
            };
        }
        cursor.insert(last.clone(), parsed);
    }
    Ok(())
}

/// Whether a backend of `kind` may serve a request placed `placement`: local-only keeps the
/// prompt on this machine (a speculative backend sends it to its target), cloud-only leaves the
/// local model out.
pub fn placement_allows(placement: Placement, kind: BackendKind) -> bool {
    match placement {
        Placement::LocalOnly => kind == BackendKind::Local,
        Placement::CloudOnly => kind != BackendKind::Local,
    }
}

/// The sha256 hex digest of an API key, as stored in `server.api_key_hashes`.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The error a config text gives, as text (empty when it parses); for this module's tests.
#[cfg(test)]
pub(crate) fn config_error(text: &str) -> String {
    Config::from_toml_str(text, &MapEnv::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::config_error as err;

    #[test]
    fn empty_file_is_the_local_default() {
        let c = Config::from_toml_str("", &MapEnv::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.local.is_some());
        assert_eq!(c.routes["local"].backends, ["local"]);
        assert_eq!(c.routes["smollm2-135m"].backends, ["local"]);
        assert_eq!(Config::default_local().routes.len(), 2);
    }

    #[test]
    fn the_default_without_a_file_takes_env_overrides() {
        let env = MapEnv::from_pairs([
            ("TANDEM__SERVER__LISTEN", "0.0.0.0:9090"),
            ("TANDEM__LIMITS__MAX_CONCURRENCY", "3"),
        ]);
        let c = Config::default_local_with(&env).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.limits.max_concurrency, 3);
        assert_eq!(c.routes["local"].backends, ["local"]);
        let e = Config::default_local_with(&MapEnv::from_pairs([("TANDEM__SERVER__LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listn"), "{e}");
    }

    #[test]
    fn a_preset_kind_is_an_openai_compatible_backend_with_its_address() {
        let c = Config::from_toml_str(
            "[backends.fast]\nkind = \"vllm\"\nmodels = { m = \"Qwen/Qwen2.5-7B\" }\n[backends.own]\nkind = \"groq\"\nbase_url = \"http://10.0.0.2:9000/v1/\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        let fast = &c.backends["fast"];
        assert_eq!(fast.kind, BackendKind::OpenAiCompatible);
        assert_eq!(fast.preset.map(|p| p.kind), Some("vllm"));
        assert_eq!(fast.base_url.as_deref(), Some("http://127.0.0.1:8000/v1"));
        // A base_url given in the file wins over the preset's.
        assert_eq!(
            c.backends["own"].base_url.as_deref(),
            Some("http://10.0.0.2:9000/v1")
        );
        assert!(c.summary().contains("fast [vllm] http://127.0.0.1:8000/v1"));
        let e = err("[backends.x]\nkind = \"vlm\"\n");
        assert!(e.contains("or one of vllm, sglang, llama-cpp"), "{e}");
    }

    #[test]
    fn errors_name_the_path() {
        let e = err("[backends.openai]\nkind = \"openai\"\nbase_url = \"ftp://x\"\n");
        assert!(e.starts_with("backends.openai.base_url: "), "{e}");
        let e = err("[backends.openai]\nkind = \"openai\"\nbsae_url = \"http://x\"\n");
        assert!(
            e.starts_with("backends.openai.bsae_url: unknown field `bsae_url`"),
            "{e}"
        );
        let e = err("[limits]\nmax_body_bytes = \"big\"\n");
        assert!(e.starts_with("limits.max_body_bytes: invalid type"), "{e}");
        let e = err(
            "[backends.az]\nkind = \"azure\"\nbase_url = \"https://r.openai.azure.com\"\napi_version = \"2024-10-21\"\nmodels = { \"a\" = \"dep-a\" }\n[routes.m]\nbackends = [\"az\"]\n",
        );
        assert!(
            e.starts_with("routes.m.backends[0]: the azure backend `az` has no deployment for `m`"),
            "{e}"
        );
        // A route named after the deployment itself is served by it.
        Config::from_toml_str(
            "[backends.az]\nkind = \"azure\"\nbase_url = \"https://r.openai.azure.com\"\napi_version = \"2024-10-21\"\nmodels = { \"a\" = \"dep-a\" }\n[routes.dep-a]\nbackends = [\"az\"]\n",
            &MapEnv::default(),
        )
        .unwrap();
        let e = err("[routes.m]\nbackends = [\"nope\"]\n");
        assert!(
            e.starts_with("routes.m.backends[0]: no backend named `nope`"),
            "{e}"
        );
        let e = err("[server]\napi_key_hashes = [\"abc\"]\n");
        assert!(e.starts_with("server.api_key_hashes[0]: "), "{e}");
        let e = err("[backends.x]\nkind = \"grpc\"\nbase_url = \"http://x\"\n");
        assert!(e.starts_with("backends.x.kind: unknown kind"), "{e}");
        let e = err("[local]\nweights = \"q3\"\n");
        assert!(
            e.starts_with("local.weights: \"q3\" is not one of as_stored, q8_0"),
            "{e}"
        );
        let c = Config::from_toml_str("[local]\nweights = \"Q8_0\"\n", &MapEnv::default()).unwrap();
        assert_eq!(c.local.map(|l| l.weights), Some(WeightFormat::Q8_0));
    }

    #[test]
    fn env_overrides_with_types() {
        let env = MapEnv::from_pairs([
            ("TANDEM__SERVER__LISTEN", "127.0.0.1:9999"),
            ("TANDEM__LIMITS__MAX_CONCURRENCY", "7"),
            ("TANDEM__BACKENDS__OAI__BASE_URL", "http://127.0.0.1:1/v1"),
            ("OAI_KEY", "sk-test"),
        ]);
        let text = "[backends.oai]\nkind = \"openai-compatible\"\nbase_url = \"http://example.com/v1\"\napi_key_env = \"OAI_KEY\"\nmodels = { gpt = \"gpt-4o\" }\n";
        let c = Config::from_toml_str(text, &env).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.limits.max_concurrency, 7);
        assert_eq!(
            c.backends["oai"].base_url.as_deref(),
            Some("http://127.0.0.1:1/v1")
        );
        assert_eq!(c.backends["oai"].api_key.as_deref(), Some("sk-test"));
        assert_eq!(c.routes["gpt"].backends, ["oai"]);
        assert_eq!(c.backends["oai"].upstream_model("gpt"), "gpt-4o");
        assert!(c.local.is_none());
    }

    #[test]
    fn tls_keys_come_in_pairs_and_name_their_path() {
        let c = Config::from_toml_str(
            "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.identity.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(
            c.summary()
                .contains("tls: c.pem, client certificates required")
        );
        assert!(Config::default_local().tls.is_none());
        let e = err("[server]\ntls_cert = \"c.pem\"\n");
        assert_eq!(e, "server.tls_key: required with server.tls_cert");
        let e = err("[server]\ntls_key = \"k.pem\"\n");
        assert_eq!(e, "server.tls_cert: required with server.tls_key");
        let e = err("[server]\ntls_client_ca = \"ca.pem\"\n");
        assert!(
            e.starts_with("server.tls_client_ca: client certificates need TLS"),
            "{e}"
        );
        let e = err("[server]\ntls_cert = \" \"\ntls_key = \"k.pem\"\n");
        assert_eq!(e, "server.tls_cert: must be a file path");
        // Through the environment too.
        let env = MapEnv::from_pairs([
            ("TANDEM__SERVER__TLS_CERT", "/etc/tandem/c.pem"),
            ("TANDEM__SERVER__TLS_KEY", "/etc/tandem/k.pem"),
        ]);
        let c = Config::default_local_with(&env).unwrap();
        assert_eq!(
            c.tls.map(|t| t.identity.key),
            Some(PathBuf::from("/etc/tandem/k.pem"))
        );
    }

    #[test]
    fn upstream_client_certificates_belong_to_backends_that_connect() {
        let c = Config::from_toml_str(
            "[backends.up]\nkind = \"openai-compatible\"\nbase_url = \"https://up.internal/v1\"\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\nca_cert = \"ca.pem\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        let tls = &c.backends["up"].tls;
        assert_eq!(
            tls.client_identity.as_ref().map(|i| i.key.clone()),
            Some(PathBuf::from("k.pem"))
        );
        assert_eq!(tls.extra_roots.as_deref(), Some(Path::new("ca.pem")));
        let e = err("[backends.up]\nkind = \"anthropic\"\nclient_cert = \"c.pem\"\n");
        assert_eq!(
            e,
            "backends.up.client_key: required with backends.up.client_cert"
        );
        let e = err("[backends.me]\nkind = \"local\"\nca_cert = \"ca.pem\"\n");
        assert!(
            e.starts_with("backends.me.ca_cert: a local backend makes no connection"),
            "{e}"
        );
    }

    #[test]
    fn hash_matches_sha256() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn price_cost() {
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            cached_input_per_mtok: 0.5,
        };
        // 1M prompt tokens of which 500k cached, 1M completion tokens.
        assert!((p.cost(1_000_000, 500_000, 1_000_000) - 2.75).abs() < 1e-9);
    }

    #[test]
    fn example_file_validates() {
        let text = include_str!("../../../tandem.example.toml");
        let env = MapEnv::default();
        let c = Config::from_toml_str(text, &env).unwrap();
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn a_route_is_measured_against_its_first_cloud_backend_or_the_one_it_names() {
        let base = r#"
            [backends.local]
            kind = "local"
            [backends.mini]
            kind = "openai"
            api_key_env = "K"
            [backends.big]
            kind = "anthropic"
            api_key_env = "K"
        "#;
        let cfg = Config::from_toml_str(
            &format!(
                "{base}\n[routes.a]\nbackends = [\"local\", \"mini\", \"big\"]\n[routes.b]\nbackends = [\"local\", \"mini\"]\nreference = \"big\"\n[routes.c]\nbackends = [\"local\"]\n"
            ),
            &MapEnv::default(),
        )
        .unwrap();
        assert_eq!(cfg.routes["a"].reference.as_deref(), Some("mini"));
        assert_eq!(cfg.routes["b"].reference.as_deref(), Some("big"));
        assert_eq!(cfg.routes["c"].reference, None);
        let e = err(&format!(
            "{base}\n[routes.a]\nbackends = [\"local\"]\nreference = \"local\"\n"
        ));
        assert!(e.starts_with("routes.a.reference: "), "{e}");
        let e = err(&format!(
            "{base}\n[routes.a]\nbackends = [\"local\"]\nreference = \"nope\"\n"
        ));
        assert!(
            e.contains("routes.a.reference: no backend named `nope`"),
            "{e}"
        );
    }

    #[test]
    fn the_observability_section_has_defaults_and_path_named_errors() {
        let cfg = Config::default_local();
        assert!(!cfg.observability.cost_header);
        assert!(cfg.observability.overhead_header);
        assert_eq!(cfg.observability.otlp, None);
        let cfg = Config::from_toml_str(
            "[observability]\ncost_header = true\nwatts_per_core = 6.5\n[observability.otlp]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        assert!(cfg.observability.cost_header);
        assert_eq!(cfg.observability.watts_per_core, 6.5);
        let otlp = cfg.observability.otlp.unwrap();
        assert_eq!(otlp.service_name, "tandem");
        assert!(!otlp.capture_content);
        let e = err("[observability]\nwatts_per_core = -1\n");
        assert!(e.starts_with("observability.watts_per_core: "), "{e}");
        let e = err("[observability.otlp]\nendpoint = \"collector:4318\"\n");
        assert!(e.starts_with("observability.otlp.endpoint: "), "{e}");
        let e = err("[observability]\ncolour = true\n");
        assert!(e.contains("observability"), "{e}");
        let env = MapEnv::from_pairs([("TANDEM__OBSERVABILITY__COST_HEADER", "true")]);
        let cfg = Config::default_local_with(&env).unwrap();
        assert!(cfg.observability.cost_header);
    }

    #[test]
    fn a_route_context_length_is_read_and_checked() {
        let route = |line: &str| {
            format!(
                "[backends.o]\nkind = \"openai\"\napi_key_env = \"K\"\n[routes.m]\nbackends = [\"o\"]\n{line}\n"
            )
        };
        let env = MapEnv::from_pairs([("K", "k")]);
        let c = Config::from_toml_str(&route("context_length = 128000"), &env).unwrap();
        assert_eq!(c.routes["m"].context_length, Some(128000));
        assert_eq!(
            Config::from_toml_str(&route(""), &env).unwrap().routes["m"].context_length,
            None
        );
        let e = Config::from_toml_str(&route("context_length = 0"), &env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("routes.m.context_length:"), "{e}");
    }

    #[test]
    fn a_route_cache_is_validated_with_paths() {
        let route = |cache: &str| {
            format!(
                "[backends.o]\nkind = \"openai\"\napi_key_env = \"K\"\n[routes.m]\nbackends = [\"o\"]\ncache = {{ {cache} }}\n"
            )
        };
        let env = MapEnv::from_pairs([("K", "k")]);
        let c = Config::from_toml_str(&route("semantic = true"), &env).unwrap();
        let rule = c.routes["m"].cache.unwrap();
        assert_eq!(rule.ttl, CacheRule::DEFAULT_TTL);
        assert_eq!(rule.semantic, Some(CacheRule::DEFAULT_SIMILARITY));
        assert!(!rule.nondeterministic);
        let e = |text: &str| {
            Config::from_toml_str(&route(text), &env)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e("ttl_s = 0").starts_with("routes.m.cache.ttl_s:"));
        assert!(e("similarity = 0.9").starts_with("routes.m.cache.similarity:"));
        assert!(e("semantic = true, similarity = 2.0").contains("within 0..=1"));
        assert!(
            e("ttl = 5").contains("unknown field `ttl`"),
            "{}",
            e("ttl = 5")
        );
    }
}
