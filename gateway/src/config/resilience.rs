//! The `[resilience]` section: retries with backoff under a budget, per-backend circuit breakers,
//! the local fallback and the shutdown grace period.

use std::time::Duration;

use super::raw::{RawResilience, RawRoute};
use super::{ConfigError, RoutePolicy, invalid};

/// Validated `[resilience]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceSettings {
    /// Retries on the same backend after a retryable failure (0: move to the next at once).
    pub retries: u32,
    /// The first retry's backoff ceiling.
    pub retry_backoff: Duration,
    /// The largest backoff ceiling, and the longest upstream `retry-after` waited for.
    pub retry_backoff_max: Duration,
    /// Retries allowed as a share of the requests of the last ten seconds.
    pub retry_budget_ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub retry_budget_min_per_sec: u32,
    /// Consecutive failures that open a breaker.
    pub breaker_failures: u32,
    /// Error rate over the window that opens a breaker.
    pub breaker_error_rate: f64,
    /// Calls in the error-rate window (the rate counts once the window is full).
    pub breaker_window: u32,
    /// How long a breaker first stays open.
    pub breaker_open: Duration,
    /// The longest a breaker stays open.
    pub breaker_open_max: Duration,
    /// Whether the local model answers when every cloud backend of a route failed.
    pub local_fallback: bool,
    /// How long in-flight requests may run on after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        Self {
            // Clients' SDKs retry already (OpenAI's and Anthropic's twice): by default the
            // gateway moves on to the next backend instead of multiplying attempts.
            retries: 0,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            breaker_failures: 5,
            breaker_error_rate: 0.5,
            breaker_window: 20,
            breaker_open: Duration::from_secs(5),
            breaker_open_max: Duration::from_secs(60),
            local_fallback: false,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Validates `[resilience]`; every error names its path.
pub fn validate_resilience(raw: RawResilience) -> Result<ResilienceSettings, ConfigError> {
    let d = ResilienceSettings::default();
    let positive = |v: Option<u64>, path: &str, default: u64| match v {
        Some(0) => Err(invalid(path, "must be greater than 0")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let fraction = |v: Option<f64>, path: &str, default: f64| match v {
        Some(v) if !(v > 0.0 && v <= 1.0) => Err(invalid(path, "must be in (0, 1]")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let millis = |v: Option<u64>, path: &str, default: Duration| {
        positive(v, path, default.as_millis() as u64).map(Duration::from_millis)
    };
    // A ceiling below its floor would make the floor meaningless.
    let at_least = |ceiling: Duration, floor: Duration, ceiling_path: &str, floor_path: &str| {
        if ceiling < floor {
            Err(invalid(
                ceiling_path,
                format!("must be at least {floor_path}"),
            ))
        } else {
            Ok(())
        }
    };
    let small = |v: u64, path: &str| u32::try_from(v).map_err(|_| invalid(path, "is too large"));
    let retries = small(raw.retries.unwrap_or(0), "resilience.retries")?;
    if retries > 10 {
        return Err(invalid("resilience.retries", "must be at most 10"));
    }
    let retry_backoff = millis(
        raw.retry_backoff_ms,
        "resilience.retry_backoff_ms",
        d.retry_backoff,
    )?;
    let retry_backoff_max = millis(
        raw.retry_backoff_max_ms,
        "resilience.retry_backoff_max_ms",
        d.retry_backoff_max,
    )?;
    at_least(
        retry_backoff_max,
        retry_backoff,
        "resilience.retry_backoff_max_ms",
        "resilience.retry_backoff_ms",
    )?;
    let breaker_open = millis(
        raw.breaker_open_ms,
        "resilience.breaker_open_ms",
        d.breaker_open,
    )?;
    let breaker_open_max = millis(
        raw.breaker_open_max_ms,
        "resilience.breaker_open_max_ms",
        d.breaker_open_max,
    )?;
    at_least(
        breaker_open_max,
        breaker_open,
        "resilience.breaker_open_max_ms",
        "resilience.breaker_open_ms",
    )?;
    Ok(ResilienceSettings {
        retries,
        retry_backoff,
        retry_backoff_max,
        retry_budget_ratio: match raw.retry_budget_ratio {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                return Err(invalid(
                    "resilience.retry_budget_ratio",
                    "must be in [0, 1]",
                ));
            }
            Some(v) => v,
            None => d.retry_budget_ratio,
        },
        retry_budget_min_per_sec: small(
            raw.retry_budget_min_per_sec
                .unwrap_or(u64::from(d.retry_budget_min_per_sec)),
            "resilience.retry_budget_min_per_sec",
        )?,
        breaker_failures: small(
            positive(
                raw.breaker_failures,
                "resilience.breaker_failures",
                u64::from(d.breaker_failures),
            )?,
            "resilience.breaker_failures",
        )?,
        breaker_error_rate: fraction(
            raw.breaker_error_rate,
            "resilience.breaker_error_rate",
            d.breaker_error_rate,
        )?,
        breaker_window: small(
            positive(
                raw.breaker_window,
                "resilience.breaker_window",
                u64::from(d.breaker_window),
            )?,
            "resilience.breaker_window",
        )?,
        breaker_open,
        breaker_open_max,
        local_fallback: raw.local_fallback.unwrap_or(d.local_fallback),
        shutdown_grace: Duration::from_millis(positive(
            raw.shutdown_grace_ms,
            "resilience.shutdown_grace_ms",
            d.shutdown_grace.as_millis() as u64,
        )?),
    })
}

/// A route's `balance` and `weights`: the weights in `backends` order, or `None` when the route
/// keeps config order.
pub fn validate_balance(
    model: &str,
    route: &RawRoute,
    policy: RoutePolicy,
) -> Result<Option<Vec<f64>>, ConfigError> {
    match route.balance.as_deref() {
        None | Some("order") => {
            if !route.weights.is_empty() {
                return Err(invalid(
                    format!("routes.{model}.weights"),
                    "needs balance = \"p2c\"",
                ));
            }
            Ok(None)
        }
        Some("p2c") => {
            if policy == RoutePolicy::Learned {
                return Err(invalid(
                    format!("routes.{model}.balance"),
                    "a learned route is ordered by the policy; balance needs policy = \"fixed\"",
                ));
            }
            for (name, w) in &route.weights {
                if !route.backends.contains(name) {
                    return Err(invalid(
                        format!("routes.{model}.weights.{name}"),
                        "is not one of the route's backends",
                    ));
                }
                if !(w.is_finite() && *w > 0.0) {
                    return Err(invalid(
                        format!("routes.{model}.weights.{name}"),
                        "must be a positive number",
                    ));
                }
            }
            Ok(Some(
                route
                    .backends
                    .iter()
                    .map(|b| route.weights.get(b).copied().unwrap_or(1.0))
                    .collect(),
            ))
        }
        Some(other) => Err(invalid(
            format!("routes.{model}.balance"),
            format!("unknown balance `{other}` (expected order or p2c)"),
        )),
    }
}

/// A route's `hedge` and `hedge_after_ms`.
pub fn validate_hedge(
    model: &str,
    route: &RawRoute,
) -> Result<Option<Option<Duration>>, ConfigError> {
    match (route.hedge, route.hedge_after_ms) {
        (Some(true), after) => {
            if route.backends.len() < 2 {
                return Err(invalid(
                    format!("routes.{model}.hedge"),
                    "needs at least two backends to hedge between",
                ));
            }
            if after == Some(0) {
                return Err(invalid(
                    format!("routes.{model}.hedge_after_ms"),
                    "must be greater than 0",
                ));
            }
            Ok(Some(after.map(Duration::from_millis)))
        }
        (_, Some(_)) => Err(invalid(
            format!("routes.{model}.hedge_after_ms"),
            "needs hedge = true",
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_their_path() {
        let s = validate_resilience(RawResilience::default()).unwrap();
        assert_eq!(s, ResilienceSettings::default());
        let e = validate_resilience(RawResilience {
            breaker_error_rate: Some(1.5),
            ..RawResilience::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("resilience.breaker_error_rate"),
            "{e}"
        );
        let e = validate_resilience(RawResilience {
            retry_backoff_ms: Some(500),
            retry_backoff_max_ms: Some(100),
            ..RawResilience::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("resilience.retry_backoff_max_ms"),
            "{e}"
        );
    }
}
