//! The production controls' settings, validated: the shared state store (`[store]`), the admin
//! listener (`server.admin_listen` and its key) and the per-route rate limits
//! (`routes."MODEL".requests_per_minute` / `tokens_per_minute`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::raw::{RawConfig, RawStore};
use super::{ConfigError, EnvSource, invalid};

/// What limits and budgets do while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Let requests through unchecked (the default: an outage of Redis is not one of the API).
    Open,
    /// Refuse requests that a limit or budget applies to, with 503.
    Closed,
}

/// `[store]`: where shared state lives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Redis for shared state (the top-level `redis_url`); the embedded store when absent.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub prefix: String,
    /// The bound on each request-path operation.
    pub timeout: Duration,
    /// Fail open or closed while the store is down.
    pub on_unavailable: OnUnavailable,
    /// The embedded store's log file; `<cache_dir>/state/store.log` when absent.
    pub path: Option<PathBuf>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// sha256 digests of the accepted admin keys.
    pub key_hashes: Vec<[u8; 32]>,
}

/// Per-route rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// Requests per minute on the route, all keys together.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute on the route, all keys together.
    pub tokens_per_minute: Option<u64>,
}

/// Everything above.
#[derive(Debug, Clone)]
pub struct ControlsConfig {
    /// The store.
    pub store: StoreConfig,
    /// The admin listener, when `server.admin_listen` is set.
    pub admin: Option<AdminConfig>,
    /// Rate limits by route (routes without any are absent).
    pub route_limits: BTreeMap<String, RouteLimits>,
}

impl Default for ControlsConfig {
    fn default() -> Self {
        Self {
            store: StoreConfig {
                redis_url: None,
                prefix: "tandem".into(),
                timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
                on_unavailable: OnUnavailable::Open,
                path: None,
            },
            admin: None,
            route_limits: BTreeMap::new(),
        }
    }
}

/// The default bound on a store operation: a few round trips to a nearby Redis.
const DEFAULT_TIMEOUT_MS: u64 = 10;

/// Parses a list of sha256 hex digests at `path`.
pub(super) fn parse_hashes(hashes: &[String], path: &str) -> Result<Vec<[u8; 32]>, ConfigError> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(
                        format!("{path}[{i}]"),
                        "is not a sha256 hex digest (64 hex characters)",
                    )
                })
        })
        .collect()
}

/// Validates the controls' settings of `raw`.
pub(super) fn validate(
    raw: &RawConfig,
    env: &dyn EnvSource,
) -> Result<ControlsConfig, ConfigError> {
    let store = validate_store(&raw.store, raw.redis_url.clone())?;
    let admin = match &raw.server.admin_listen {
        None => {
            if !raw.server.admin_key_hashes.is_empty() || raw.server.admin_key_env.is_some() {
                return Err(invalid(
                    "server.admin_key_hashes",
                    "has no effect without server.admin_listen",
                ));
            }
            None
        }
        Some(text) => {
            let listen: SocketAddr = text.parse().map_err(|e| {
                invalid(
                    "server.admin_listen",
                    format!("`{text}` is not host:port ({e})"),
                )
            })?;
            let mut key_hashes =
                parse_hashes(&raw.server.admin_key_hashes, "server.admin_key_hashes")?;
            if let Some(var) = &raw.server.admin_key_env {
                match env.var(var).filter(|k| !k.trim().is_empty()) {
                    Some(key) => key_hashes.push(Sha256::digest(key.trim().as_bytes()).into()),
                    None => {
                        return Err(invalid(
                            "server.admin_key_env",
                            format!("the environment variable `{var}` is not set"),
                        ));
                    }
                }
            }
            if key_hashes.is_empty() {
                return Err(invalid(
                    "server.admin_listen",
                    "needs an admin key: set server.admin_key_hashes or server.admin_key_env",
                ));
            }
            Some(AdminConfig { listen, key_hashes })
        }
    };
    let mut route_limits = BTreeMap::new();
    for (model, r) in &raw.routes {
        for (name, v) in [
            ("requests_per_minute", r.requests_per_minute),
            ("tokens_per_minute", r.tokens_per_minute),
        ] {
            if v == Some(0) {
                return Err(invalid(
                    format!("routes.{model}.{name}"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        let limits = RouteLimits {
            requests_per_minute: r.requests_per_minute,
            tokens_per_minute: r.tokens_per_minute,
        };
        if limits != RouteLimits::default() {
            route_limits.insert(model.clone(), limits);
        }
    }
    Ok(ControlsConfig {
        store,
        admin,
        route_limits,
    })
}

fn validate_store(raw: &RawStore, redis_url: Option<String>) -> Result<StoreConfig, ConfigError> {
    let defaults = ControlsConfig::default().store;
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        return Err(invalid("store.timeout_ms", "must be at least 1"));
    }
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("open") => OnUnavailable::Open,
        Some("closed") => OnUnavailable::Closed,
        Some(other) => {
            return Err(invalid(
                "store.on_unavailable",
                format!("`{other}` is not `open` or `closed`"),
            ));
        }
    };
    let prefix = match &raw.prefix {
        Some(p) if p.is_empty() || p.contains(char::is_whitespace) => {
            return Err(invalid(
                "store.prefix",
                "must be non-empty and without spaces",
            ));
        }
        Some(p) => p.clone(),
        None => defaults.prefix,
    };
    Ok(StoreConfig {
        redis_url,
        prefix,
        timeout: Duration::from_millis(timeout_ms),
        on_unavailable,
        path: raw.path.as_ref().map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::config_error as err;

    #[test]
    fn admin_listen_needs_a_key_and_a_key_needs_the_listener() {
        let e = err("[server]\nadmin_listen = \"127.0.0.1:9090\"\n");
        assert!(
            e.starts_with("server.admin_listen: needs an admin key"),
            "{e}"
        );
        let e = err("[server]\nadmin_key_hashes = [\"ab\"]\n");
        assert!(e.starts_with("server.admin_key_hashes: "), "{e}");
        let e = err("[server]\nadmin_listen = \"127.0.0.1:9090\"\nadmin_key_hashes = [\"ab\"]\n");
        assert!(e.starts_with("server.admin_key_hashes[0]: "), "{e}");
        let e = err("[server]\nadmin_listen = \"nowhere\"\n");
        assert!(e.starts_with("server.admin_listen: `nowhere`"), "{e}");
        let e = err(
            "[server]\nadmin_listen = \"127.0.0.1:9090\"\nadmin_key_env = \"TANDEM_TEST_UNSET_ADMIN_KEY\"\n",
        );
        assert!(e.starts_with("server.admin_key_env: "), "{e}");
    }

    #[test]
    fn store_settings_are_checked() {
        assert!(err("[store]\non_unavailable = \"maybe\"\n").starts_with("store.on_unavailable: "));
        assert!(err("[store]\ntimeout_ms = 0\n").starts_with("store.timeout_ms: "));
        assert!(err("[store]\nprefix = \"\"\n").starts_with("store.prefix: "));
        assert_eq!(
            err("[store]\non_unavailable = \"closed\"\ntimeout_ms = 5\n"),
            ""
        );
    }
}
