//! The `[router]` section, the routing fields of `[routes."MODEL"]` and `[backends.NAME]`,
//! validated into the settings the learned routing policy runs with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tandem_router_policy::{Placement, RouterConfig, Weights};

use super::raw::{RawPolicyRules, RawRouter};
use super::{BackendKind, ConfigError, PrivacyAction, invalid};

/// How a route picks its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutePolicy {
    /// Backends in config order, the next on a retryable error.
    #[default]
    Fixed,
    /// The router policy decides per request (hard rules, predicted quality, cost, latency).
    Learned,
}

impl RoutePolicy {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Learned => "learned",
        }
    }
}

/// Hard rules and weights from a route or an API key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRules {
    /// Forced placement.
    pub placement: Option<Placement>,
    /// Cost and latency weights replacing the router's defaults.
    pub weights: Option<Weights>,
    /// Target cloud share replacing the router's default.
    pub target_cloud_share: Option<f32>,
    /// Backends predicted slower than this end to end are excluded, ms.
    pub latency_slo_ms: Option<f64>,
    /// What happens when the detectors find sensitive data (API keys; a route's is in
    /// [`super::RouteConfig::privacy`]).
    pub privacy: Option<PrivacyAction>,
}

/// What the router needs to know about a backend beyond its kind and prices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendProfileConfig {
    /// Between the weak (0) and strong (1) reference models.
    pub strength: f32,
    /// Time to first token before any call was measured, ms.
    pub prior_ttft_ms: f64,
    /// Inter-token latency before any call was measured, ms.
    pub prior_itl_ms: f64,
}

impl BackendProfileConfig {
    /// The defaults for a kind: the local model weak and slow to start, clouds strong.
    pub fn default_for(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Local => Self {
                strength: 0.0,
                prior_ttft_ms: 150.0,
                prior_itl_ms: 25.0,
            },
            _ => Self {
                strength: 1.0,
                prior_ttft_ms: 500.0,
                prior_itl_ms: 15.0,
            },
        }
    }
}

/// What a cascade judges before it keeps the local answer or escalates.
#[derive(Debug, Clone, PartialEq)]
pub enum CascadeJudge {
    /// The confidence of the first `cascade_tokens` tokens: a kept answer streams on at once.
    FirstTokens,
    /// The whole local answer, by the answer check: slower to first token, but it reads what
    /// the answer says (a final result, arithmetic that adds up, no hedging). The shipped check
    /// is trained on worked arithmetic answers; prose answers mostly escalate under it.
    Answer {
        /// Answer-check file; the shipped one when None.
        path: Option<PathBuf>,
        /// Share of local answers to escalate, set from the check's held-out table.
        escalate_share: f32,
    },
}

/// The validated `[router]` section.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// The policy's own settings (weights, cascade, bandit).
    pub policy: RouterConfig,
    /// Quality model file; the shipped model when None.
    pub model_path: Option<PathBuf>,
    /// JSONL decision log.
    pub decision_log: Option<PathBuf>,
    /// Decisions queued for the log writer before new ones are dropped.
    pub decision_log_queue: usize,
    /// Bandit state file.
    pub bandit_path: Option<PathBuf>,
    /// How often the bandit state is saved.
    pub bandit_save_interval: Duration,
    /// Key prefix of the bandit state in Redis.
    pub redis_prefix: String,
    /// Use the prompt encoder when its files are present.
    pub encoder: bool,
    /// Local tokens whose confidence decides a cascade.
    pub cascade_tokens: u32,
    /// What a cascade judges.
    pub cascade_judge: CascadeJudge,
    /// Rules per API key, by the key's sha256 hex digest.
    pub keys: BTreeMap<String, PolicyRules>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            policy: RouterConfig::default(),
            model_path: None,
            decision_log: None,
            decision_log_queue: 4096,
            bandit_path: None,
            bandit_save_interval: Duration::from_secs(30),
            redis_prefix: "tandem".into(),
            encoder: true,
            cascade_tokens: 8,
            cascade_judge: CascadeJudge::FirstTokens,
            keys: BTreeMap::new(),
        }
    }
}

/// Share of local answers an answer-judged cascade escalates by default: about the share of
/// GSM8K answers the weak model gets wrong where the strong one gets them right, plus margin.
const DEFAULT_ESCALATE_SHARE: f32 = 0.3;

fn unit(v: Option<f32>, path: &str) -> Result<Option<f32>, ConfigError> {
    match v {
        Some(x) if !(x.is_finite() && (0.0..=1.0).contains(&x)) => {
            Err(invalid(path, "must be within 0..=1"))
        }
        v => Ok(v),
    }
}

fn non_negative(v: Option<f64>, path: &str) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => Err(invalid(path, "must be >= 0")),
        v => Ok(v),
    }
}

fn positive_ms(v: Option<u64>, path: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        Some(0) => Err(invalid(path, "must be greater than 0")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    }
}

fn path_of(v: Option<String>, path: &str) -> Result<Option<PathBuf>, ConfigError> {
    match v {
        Some(p) if p.trim().is_empty() => Err(invalid(path, "must not be empty")),
        v => Ok(v.map(PathBuf::from)),
    }
}

/// Parses a placement value from config.
pub fn parse_placement(v: Option<&str>, path: &str) -> Result<Option<Placement>, ConfigError> {
    match v {
        None => Ok(None),
        Some("local-only") => Ok(Some(Placement::LocalOnly)),
        Some("cloud-only") => Ok(Some(Placement::CloudOnly)),
        Some(other) => Err(invalid(
            path,
            format!("unknown placement `{other}` (expected local-only or cloud-only)"),
        )),
    }
}

/// Validates rules; `prefix` is the dotted path of the table holding them, `defaults` the
/// router's weights (filling a weight that is not given).
pub fn validate_rules(
    prefix: &str,
    rules: RawPolicyRules,
    defaults: Weights,
) -> Result<PolicyRules, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let lambda = non_negative(rules.lambda_per_usd, &key("lambda_per_usd"))?;
    let mu = non_negative(rules.mu_per_s, &key("mu_per_s"))?;
    let weights = (lambda.is_some() || mu.is_some()).then(|| Weights {
        lambda_per_usd: lambda.unwrap_or(defaults.lambda_per_usd),
        mu_per_s: mu.unwrap_or(defaults.mu_per_s),
    });
    let latency_slo_ms = match rules.latency_slo_ms {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            return Err(invalid(key("latency_slo_ms"), "must be greater than 0"));
        }
        v => v,
    };
    Ok(PolicyRules {
        placement: parse_placement(rules.placement.as_deref(), &key("placement"))?,
        weights,
        target_cloud_share: unit(rules.target_cloud_share, &key("target_cloud_share"))?,
        latency_slo_ms,
        privacy: rules
            .privacy
            .as_deref()
            .map(|p| PrivacyAction::parse(p, &key("privacy")))
            .transpose()?,
    })
}

/// Validates the `[router]` section.
pub fn validate_router(raw: RawRouter) -> Result<RouterSettings, ConfigError> {
    let d = RouterSettings::default();
    let dp = RouterConfig::default();
    let weights = Weights {
        lambda_per_usd: non_negative(raw.lambda_per_usd, "router.lambda_per_usd")?
            .unwrap_or(dp.weights.lambda_per_usd),
        mu_per_s: non_negative(raw.mu_per_s, "router.mu_per_s")?.unwrap_or(dp.weights.mu_per_s),
    };
    let cascade_band = match raw.cascade_band {
        Some(b) if !(b.is_finite() && b >= 0.0) => {
            return Err(invalid("router.cascade_band", "must be >= 0"));
        }
        v => v,
    };
    let bandit_alpha = match raw.bandit_alpha {
        Some(a) if !(a.is_finite() && a >= 0.0) => {
            return Err(invalid("router.bandit_alpha", "must be >= 0"));
        }
        v => v.unwrap_or(dp.bandit_alpha),
    };
    let bandit_half_weight = match raw.bandit_half_weight {
        Some(h) if !(h.is_finite() && h > 0.0) => {
            return Err(invalid(
                "router.bandit_half_weight",
                "must be greater than 0",
            ));
        }
        v => v.unwrap_or(dp.bandit_half_weight),
    };
    let recent_requests = match raw.recent_requests {
        Some(0) => return Err(invalid("router.recent_requests", "must be greater than 0")),
        Some(n) => n as usize,
        None => dp.recent_requests,
    };
    let policy = RouterConfig {
        weights,
        target_cloud_share: unit(raw.target_cloud_share, "router.target_cloud_share")?,
        cascade_band,
        cascade_threshold: unit(raw.cascade_threshold, "router.cascade_threshold")?
            .unwrap_or(dp.cascade_threshold),
        speculative: false,
        bandit_alpha,
        bandit_half_weight,
        recent_requests,
        policy: dp.policy,
    };
    let cascade_tokens = match raw.cascade_tokens {
        Some(0) => return Err(invalid("router.cascade_tokens", "must be greater than 0")),
        Some(n) => n,
        None => d.cascade_tokens,
    };
    let escalate_share = unit(raw.cascade_escalate_share, "router.cascade_escalate_share")?;
    let answer_check_path = path_of(raw.answer_check_path, "router.answer_check_path")?;
    let cascade_judge = match raw.cascade_judge.as_deref() {
        None | Some("first_tokens") => {
            if escalate_share.is_some() || answer_check_path.is_some() {
                return Err(invalid(
                    "router.cascade_judge",
                    "answer_check_path and cascade_escalate_share need cascade_judge = \"answer\"",
                ));
            }
            CascadeJudge::FirstTokens
        }
        Some("answer") => {
            if raw.cascade_tokens.is_some() || raw.cascade_threshold.is_some() {
                return Err(invalid(
                    "router.cascade_judge",
                    "cascade_tokens and cascade_threshold apply to cascade_judge = \"first_tokens\"; the answer check escalates by cascade_escalate_share",
                ));
            }
            CascadeJudge::Answer {
                path: answer_check_path,
                escalate_share: escalate_share.unwrap_or(DEFAULT_ESCALATE_SHARE),
            }
        }
        Some(other) => {
            return Err(invalid(
                "router.cascade_judge",
                format!("expected \"first_tokens\" or \"answer\", got {other:?}"),
            ));
        }
    };
    // Lines wait in memory while the writer catches up: a bound keeps a stalled disk from
    // growing the process without limit.
    const MAX_LOG_QUEUE: u64 = 1 << 20;
    let decision_log_queue = match raw.decision_log_queue {
        Some(n) if n == 0 || n > MAX_LOG_QUEUE => {
            return Err(invalid(
                "router.decision_log_queue",
                format!("must be within 1..={MAX_LOG_QUEUE}"),
            ));
        }
        Some(n) => n as usize,
        None => d.decision_log_queue,
    };
    let redis_prefix = match raw.redis_prefix {
        Some(p) if p.is_empty() || p.chars().any(char::is_whitespace) => {
            return Err(invalid(
                "router.redis_prefix",
                "must be non-empty without spaces",
            ));
        }
        Some(p) => p,
        None => d.redis_prefix,
    };
    let mut keys = BTreeMap::new();
    for (hash, rules) in raw.keys {
        let prefix = format!("router.keys.{hash}");
        let normalized = hash.trim().to_ascii_lowercase();
        if normalized.len() != 64 || !normalized.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(
                prefix,
                "expected a key's sha256 hex digest (`tandem config hash-key KEY` prints one)",
            ));
        }
        keys.insert(normalized, validate_rules(&prefix, rules, weights)?);
    }
    Ok(RouterSettings {
        policy,
        model_path: path_of(raw.model_path, "router.model_path")?,
        decision_log: path_of(raw.decision_log, "router.decision_log")?,
        decision_log_queue,
        bandit_path: path_of(raw.bandit_path, "router.bandit_path")?,
        bandit_save_interval: positive_ms(
            raw.bandit_save_interval_ms,
            "router.bandit_save_interval_ms",
            d.bandit_save_interval,
        )?,
        redis_prefix,
        encoder: raw.encoder.unwrap_or(d.encoder),
        cascade_tokens,
        cascade_judge,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::config_error as err;
    use crate::config::{Config, MapEnv, RoutePolicy};

    const BACKENDS: &str = "[backends.local]\nkind = \"local\"\n[backends.oai]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\nstrength = 0.9\n";

    #[test]
    fn learned_route_and_router_section() {
        let text = format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\", \"oai\"]\npolicy = \"learned\"\nplacement = \"local-only\"\nmu_per_s = 0.5\n[router]\ncascade_band = 0.1\ndecision_log = \"/tmp/d.jsonl\"\n[router.keys.{}]\nplacement = \"cloud-only\"\n",
            "a".repeat(64)
        );
        let c = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
        let r = &c.routes["auto"];
        assert_eq!(r.policy, RoutePolicy::Learned);
        assert_eq!(
            r.rules.placement,
            Some(tandem_router_policy::Placement::LocalOnly)
        );
        let w = r.rules.weights.unwrap();
        assert_eq!((w.lambda_per_usd, w.mu_per_s), (20.0, 0.5));
        assert_eq!(c.router.policy.cascade_band, Some(0.1));
        assert_eq!(c.router.keys.len(), 1);
        assert_eq!(c.backends["oai"].profile.strength, 0.9);
        assert_eq!(c.backends["local"].profile.strength, 0.0);
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = err("[router]\ncascade_treshold = 0.5\n");
        assert!(
            e.starts_with("router.cascade_treshold: unknown field"),
            "{e}"
        );
        let e = err("[router]\ntarget_cloud_share = 2.0\n");
        assert!(e.starts_with("router.target_cloud_share: "), "{e}");
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\"]\npolicy = \"smart\"\n"
        ));
        assert!(e.starts_with("routes.auto.policy: unknown policy"), "{e}");
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\"]\npolicy = \"learned\"\nplacement = \"moon\"\n"
        ));
        assert!(
            e.starts_with("routes.auto.placement: unknown placement"),
            "{e}"
        );
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\"]\nplacement = \"local-only\"\n"
        ));
        assert!(e.starts_with("routes.auto: "), "{e}");
        let e = err("[router.keys.abc]\nplacement = \"local-only\"\n");
        assert!(e.starts_with("router.keys.abc: "), "{e}");
        let e = err(&BACKENDS.replace("strength = 0.9", "strength = 3"));
        assert!(e.starts_with("backends.oai.strength: "), "{e}");
        // Settings that could never take effect are refused, not silently ignored.
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\", \"oai\"]\npolicy = \"learned\"\ncascade_threshold = 0.5\n"
        ));
        assert!(e.starts_with("routes.auto.cascade_threshold: "), "{e}");
        let e = err("[router]\ncascade_judge = \"vibes\"\n");
        assert!(
            e.starts_with("router.cascade_judge: expected \"first_tokens\" or \"answer\""),
            "{e}"
        );
        let e = err("[router]\ncascade_escalate_share = 0.2\n");
        assert!(e.starts_with("router.cascade_judge: "), "{e}");
        let e = err("[router]\ncascade_judge = \"answer\"\ncascade_tokens = 4\n");
        assert!(e.starts_with("router.cascade_judge: "), "{e}");
        let e = err("[router]\ncascade_judge = \"answer\"\ncascade_escalate_share = 1.5\n");
        assert!(e.starts_with("router.cascade_escalate_share: "), "{e}");
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"local\", \"oai\"]\npolicy = \"learned\"\ncascade_threshold = 0.5\n[router]\ncascade_band = 0.1\ncascade_judge = \"answer\"\n"
        ));
        assert!(e.starts_with("routes.auto.cascade_threshold: "), "{e}");
        let e = err(&format!(
            "{BACKENDS}[routes.auto]\nbackends = [\"oai\"]\npolicy = \"learned\"\nplacement = \"local-only\"\n"
        ));
        assert!(e.starts_with("routes.auto.placement: local-only"), "{e}");
        let e = err(&format!(
            "[server]\napi_key_hashes = [\"{}\"]\n[router.keys.{}]\nplacement = \"local-only\"\n",
            "b".repeat(64),
            "a".repeat(64)
        ));
        assert!(
            e.starts_with(&format!("router.keys.{}: ", "a".repeat(64))),
            "{e}"
        );
    }

    #[test]
    fn cascade_judge_answer_with_its_defaults() {
        let c = Config::from_toml_str("[router]\ncascade_judge = \"answer\"\n", &MapEnv::default())
            .unwrap();
        assert_eq!(
            c.router.cascade_judge,
            super::CascadeJudge::Answer {
                path: None,
                escalate_share: super::DEFAULT_ESCALATE_SHARE
            }
        );
        let c = Config::from_toml_str("", &MapEnv::default()).unwrap();
        assert_eq!(c.router.cascade_judge, super::CascadeJudge::FirstTokens);
    }

    #[test]
    fn env_overrides_reach_the_router() {
        let env = MapEnv::from_pairs([
            ("TANDEM__ROUTER__CASCADE_THRESHOLD", "0.75"),
            ("TANDEM__ROUTER__DECISION_LOG", "/tmp/x.jsonl"),
        ]);
        let c = Config::from_toml_str("", &env).unwrap();
        assert_eq!(c.router.policy.cascade_threshold, 0.75);
        assert_eq!(
            c.router.decision_log.as_deref(),
            Some(std::path::Path::new("/tmp/x.jsonl"))
        );
    }
}
