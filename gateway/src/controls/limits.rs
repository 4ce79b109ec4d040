//! Rate limits: requests and tokens per minute, per virtual key and per route, as GCRA limiters
//! in the store (one atomic check for all of a request's limiters), and OpenAI's
//! `x-ratelimit-*` headers from their state.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::keys::VirtualKey;
use crate::config::RouteLimits;
use crate::store::{RateCheck, RateState};

/// What a limiter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests.
    Requests,
    /// Tokens, prompt and completion.
    Tokens,
}

impl Unit {
    /// `requests` or `tokens`, as OpenAI names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// One limiter of a request: what it counts, whose it is (for messages) and its check.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// What it counts.
    pub unit: Unit,
    /// `key vk_...` or `route gpt-4o`.
    pub owner: String,
    /// The store check, costed for this request.
    pub check: RateCheck,
}

/// The limiters that apply to a request on `route` with `key`, costing `tokens` estimated
/// tokens.
pub fn limiters(
    key: Option<&VirtualKey>,
    route: &str,
    route_limits: Option<&RouteLimits>,
    tokens: u64,
) -> Vec<Limiter> {
    let mut out = Vec::new();
    let mut add = |unit: Unit, owner: String, store_key: String, per_minute: Option<u64>| {
        if let Some(per_minute) = per_minute {
            let cost = match unit {
                Unit::Requests => 1.0,
                Unit::Tokens => tokens as f64,
            };
            out.push(Limiter {
                unit,
                owner,
                check: RateCheck {
                    key: store_key,
                    per_minute,
                    cost,
                },
            });
        }
    };
    if let Some(k) = key {
        add(
            Unit::Requests,
            format!("key {}", k.id),
            format!("rl:key:{}:req", k.id),
            k.spec.requests_per_minute,
        );
        add(
            Unit::Tokens,
            format!("key {}", k.id),
            format!("rl:key:{}:tok", k.id),
            k.spec.tokens_per_minute,
        );
    }
    if let Some(r) = route_limits {
        add(
            Unit::Requests,
            format!("route {route}"),
            format!("rl:route:{route}:req"),
            r.requests_per_minute,
        );
        add(
            Unit::Tokens,
            format!("route {route}"),
            format!("rl:route:{route}:tok"),
            r.tokens_per_minute,
        );
    }
    out
}

/// The tokens a request is charged before its usage is known: its prompt (about 4 bytes a
/// token of the body) and the completion it allows.
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>) -> u64 {
    const DEFAULT_COMPLETION: u64 = 256;
    (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(DEFAULT_COMPLETION).min(32_768)
}

/// The `x-ratelimit-*` headers: for requests and for tokens, the limiter with the least room.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    requests: Option<RateState>,
    tokens: Option<RateState>,
}

impl RateHeaders {
    /// From each limiter's state after the check.
    pub fn from_states(limiters: &[Limiter], states: &[RateState]) -> Self {
        let mut out = Self::default();
        for (l, s) in limiters.iter().zip(states) {
            let slot = match l.unit {
                Unit::Requests => &mut out.requests,
                Unit::Tokens => &mut out.tokens,
            };
            if slot.is_none_or(|cur| s.remaining < cur.remaining) {
                *slot = Some(*s);
            }
        }
        out
    }

    /// Writes them into `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        static NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        for (state, names) in [self.requests, self.tokens].iter().zip(&NAMES) {
            if let Some(s) = state {
                headers.insert(names[0].clone(), HeaderValue::from(s.limit));
                headers.insert(names[1].clone(), HeaderValue::from(s.remaining));
                if let Ok(v) = HeaderValue::from_str(&duration_text(s.reset_ms)) {
                    headers.insert(names[2].clone(), v);
                }
            }
        }
    }
}

/// A duration as OpenAI writes its reset headers: `120ms`, `1.5s`, `6m0s`.
pub fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_read_like_openai_s() {
        assert_eq!(duration_text(120), "120ms");
        assert_eq!(duration_text(1500), "1.5s");
        assert_eq!(duration_text(6000), "6s");
        assert_eq!(duration_text(360_000), "6m0s");
    }

    #[test]
    fn headers_name_the_tightest_limiter_of_each_unit() {
        let route = RouteLimits {
            requests_per_minute: Some(100),
            tokens_per_minute: Some(1000),
        };
        let ls = limiters(None, "gpt", Some(&route), 40);
        assert_eq!(ls.len(), 2);
        assert_eq!(ls[1].check.cost, 40.0);
        let state = |limit, remaining| RateState {
            limit,
            remaining,
            reset_ms: 600,
            retry_after_ms: 0,
        };
        let h = RateHeaders::from_states(&ls, &[state(100, 99), state(1000, 960)]);
        let mut headers = HeaderMap::new();
        h.apply(&mut headers);
        assert_eq!(headers["x-ratelimit-limit-requests"], "100");
        assert_eq!(headers["x-ratelimit-remaining-tokens"], "960");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "600ms");
    }
}
