//! The ledger: every finished model request's report, the totals since start, and the last
//! `recent_requests` reports for the dashboard's windows and its list of recent decisions.
//! Process state; replicas each keep their own and share a snapshot through the store
//! (`replicas`), and the summary is computed the same way over one ledger or several.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A label: a fixed name here, owned when read back from another replica.
pub type Label = Cow<'static, str>;

/// One finished request, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestReport {
    /// When it finished, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Its id.
    pub id: String,
    /// Endpoint label.
    pub endpoint: Label,
    /// Route (the model id asked for) or `none`.
    pub route: String,
    /// The backend that answered (or failed last), or `none`.
    pub backend: String,
    /// `local`, `cloud`, `cascade`, `speculative`, `cache` or `none`.
    pub mode: Label,
    /// HTTP status.
    pub status: u16,
    /// The edge error's label, for a failure.
    pub error: Option<Label>,
    /// The `x-tandem-route` explanation.
    pub explanation: String,
    /// The first 12 hex digits of the API key's digest.
    pub key: Option<String>,
    /// Moves to a next backend.
    pub fallbacks: u32,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Dollars paid.
    pub paid: f64,
    /// Dollars at the route's reference model.
    pub reference: f64,
    /// Reference less paid.
    pub saved: f64,
    /// Local CPU-seconds.
    pub cpu_seconds: f64,
    /// Local energy estimate, J.
    pub energy_joules: f64,
    /// Time to a stream's first token, s.
    pub first_token_s: Option<f64>,
    /// Time to the end of the answer, s.
    pub total_s: f64,
    /// Tandem's own time (not waiting for a backend) to the response head, s.
    pub overhead_s: f64,
    /// Speculative draft tokens.
    pub spec_drafted: u64,
    /// Of those, accepted.
    pub spec_accepted: u64,
    /// Served from the response cache.
    pub cache_hit: bool,
}

impl RequestReport {
    fn is_model_call(&self) -> bool {
        matches!(&*self.endpoint, "chat" | "completions" | "messages")
    }
}

/// Sums over a set of reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Of those, answered with a 4xx or 5xx.
    pub errors: u64,
    /// Of those, moved to another backend at least once.
    pub fell_back: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Dollars paid.
    pub paid: f64,
    /// Dollars at the reference.
    pub reference: f64,
    /// Reference less paid.
    pub saved: f64,
    /// Local CPU-seconds.
    pub cpu_seconds: f64,
    /// Local energy, J.
    pub energy_joules: f64,
    /// Requests that used local compute.
    pub local_requests: u64,
    /// Output tokens of those.
    pub local_output_tokens: u64,
    /// Cache hits.
    pub cache_hits: u64,
    /// Speculative draft tokens.
    pub spec_drafted: u64,
    /// Of those, accepted (tokens the target did not have to generate).
    pub spec_accepted: u64,
}

impl Totals {
    fn add(&mut self, r: &RequestReport) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.fell_back += u64::from(r.fallbacks > 0);
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.paid += r.paid;
        self.reference += r.reference;
        self.saved += r.saved;
        self.cpu_seconds += r.cpu_seconds;
        self.energy_joules += r.energy_joules;
        if r.cpu_seconds > 0.0 {
            self.local_requests += 1;
            self.local_output_tokens += r.output_tokens;
        }
        self.cache_hits += u64::from(r.cache_hit);
        self.spec_drafted += r.spec_drafted;
        self.spec_accepted += r.spec_accepted;
    }

    /// Adds another replica's totals.
    pub fn merge(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.fell_back += o.fell_back;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.paid += o.paid;
        self.reference += o.reference;
        self.saved += o.saved;
        self.cpu_seconds += o.cpu_seconds;
        self.energy_joules += o.energy_joules;
        self.local_requests += o.local_requests;
        self.local_output_tokens += o.local_output_tokens;
        self.cache_hits += o.cache_hits;
        self.spec_drafted += o.spec_drafted;
        self.spec_accepted += o.spec_accepted;
    }
}

/// A ledger's totals and its latest reports, oldest first: what a replica shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Totals since the replica started.
    pub totals: Totals,
    /// Its latest reports, oldest first.
    pub recent: Vec<RequestReport>,
}

impl Snapshot {
    /// Adds another replica's snapshot (reports kept in time order).
    pub fn merge(&mut self, other: Snapshot) {
        self.totals.merge(&other.totals);
        self.recent.extend(other.recent);
        self.recent.sort_by_key(|r| r.ts_ms);
    }
}

/// What the dashboard asks for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Query {
    /// The window, seconds back from now (default 900).
    pub window: Option<u64>,
    /// Only this API key (digest prefix).
    pub key: Option<String>,
    /// Only this route.
    pub route: Option<String>,
    /// Only this decision (`local`, `cloud`, ...).
    pub decision: Option<String>,
    /// Recent decisions listed (default 50, at most 500).
    pub limit: Option<usize>,
}

/// Reports and totals.
#[derive(Debug)]
pub struct Ledger {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    totals: Totals,
    recent: VecDeque<RequestReport>,
}

/// The decision kinds of the routing mix, in the order charts draw them.
pub const MODES: [&str; 6] = ["local", "cloud", "cascade", "speculative", "cache", "none"];

impl Ledger {
    /// A ledger keeping the last `capacity` reports.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Records a finished request (model endpoints only).
    pub fn record(&self, report: RequestReport) {
        if !report.is_model_call() {
            return;
        }
        let mut inner = self.inner.lock();
        inner.totals.add(&report);
        if inner.recent.len() == self.capacity {
            inner.recent.pop_front();
        }
        inner.recent.push_back(report);
    }

    /// The totals since start.
    pub fn totals(&self) -> Totals {
        self.inner.lock().totals.clone()
    }

    /// The totals and the latest `limit` reports.
    pub fn snapshot(&self, limit: usize) -> Snapshot {
        let inner = self.inner.lock();
        let skip = inner.recent.len().saturating_sub(limit);
        Snapshot {
            totals: inner.totals.clone(),
            recent: inner.recent.iter().skip(skip).cloned().collect(),
        }
    }

    /// The dashboard's data at `now_ms` for `query`, over this ledger alone.
    pub fn summary(&self, query: &Query, now_ms: u64) -> Value {
        summarize(&self.snapshot(self.capacity), query, now_ms)
    }
}

/// The dashboard's data at `now_ms` for `query` over `snapshot` (one replica's or several).
pub fn summarize(snapshot: &Snapshot, query: &Query, now_ms: u64) -> Value {
    {
        let window_s = query.window.unwrap_or(900).clamp(10, 7 * 24 * 3600);
        let since = now_ms.saturating_sub(window_s * 1000);
        let totals = &snapshot.totals;
        let reports: Vec<&RequestReport> = snapshot
            .recent
            .iter()
            .filter(|r| r.ts_ms >= since)
            .filter(|r| {
                query
                    .key
                    .as_deref()
                    .is_none_or(|k| r.key.as_deref() == Some(k))
            })
            .filter(|r| query.route.as_deref().is_none_or(|x| r.route == x))
            .filter(|r| query.decision.as_deref().is_none_or(|x| r.mode == x))
            .collect();
        let mut window = Totals::default();
        for r in &reports {
            window.add(r);
        }
        // Requests and tokens by route and backend.
        let mut pairs: BTreeMap<(&str, &str), (u64, u64, u64, f64)> = BTreeMap::new();
        for r in &reports {
            let e = pairs.entry((&r.route, &r.backend)).or_default();
            e.0 += 1;
            e.1 += r.input_tokens;
            e.2 += r.output_tokens;
            e.3 += r.paid;
        }
        let by_pair: Vec<Value> = pairs
            .iter()
            .map(|((route, backend), (n, i, o, paid))| {
                json!({"route": route, "backend": backend, "requests": n, "input_tokens": i, "output_tokens": o, "paid": paid})
            })
            .collect();
        // The mix and cost over time, in 30 buckets across the window.
        let buckets = 30u64;
        let bucket_ms = (window_s * 1000).div_ceil(buckets).max(1);
        let mut mix = vec![[0u64; MODES.len()]; buckets as usize];
        let mut paid = vec![0f64; buckets as usize];
        let mut reference = vec![0f64; buckets as usize];
        for r in &reports {
            let b = (((r.ts_ms - since) / bucket_ms) as usize).min(buckets as usize - 1);
            let m = MODES
                .iter()
                .position(|m| *m == r.mode)
                .unwrap_or(MODES.len() - 1);
            mix[b][m] += 1;
            paid[b] += r.paid;
            reference[b] += r.reference;
        }
        let series: Vec<Value> = (0..buckets as usize)
            .map(|b| {
                let mut point = json!({"t": since + b as u64 * bucket_ms, "paid": paid[b], "reference": reference[b]});
                for (i, m) in MODES.iter().enumerate() {
                    point[*m] = mix[b][i].into();
                }
                point
            })
            .collect();
        // Latency percentiles per backend.
        // Per backend: first-token times, total times, requests, errors.
        type Timings = (Vec<f64>, Vec<f64>, u64, u64);
        let mut by_backend: BTreeMap<&str, Timings> = BTreeMap::new();
        for r in &reports {
            let e = by_backend.entry(&r.backend).or_default();
            e.1.push(r.total_s);
            if let Some(t) = r.first_token_s {
                e.0.push(t);
            }
            e.2 += 1;
            e.3 += u64::from(r.status >= 400);
        }
        let latency: Vec<Value> = by_backend
            .into_iter()
            .map(|(backend, (mut ttft, mut total, n, errors))| {
                json!({
                    "backend": backend,
                    "requests": n,
                    "errors": errors,
                    "first_token": percentiles(&mut ttft),
                    "total": percentiles(&mut total),
                })
            })
            .collect();
        let limit = query.limit.unwrap_or(50).min(500);
        let recent: Vec<&RequestReport> = reports.iter().rev().take(limit).copied().collect();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        json!({
            "now_ms": now_ms,
            "window_s": window_s,
            "totals": totals,
            "window": {
                "totals": window,
                "error_rate": ratio(window.errors as f64, window.requests as f64),
                "fallback_rate": ratio(window.fell_back as f64, window.requests as f64),
                "spec_acceptance": ratio(window.spec_accepted as f64, window.spec_drafted as f64),
                "cpu_per_local_request": ratio(window.cpu_seconds, window.local_requests as f64),
                "energy_per_local_request": ratio(window.energy_joules, window.local_requests as f64),
                "energy_per_output_token": ratio(window.energy_joules, window.local_output_tokens as f64),
                "by_pair": by_pair,
                "bucket_ms": bucket_ms,
                "series": series,
                "latency": latency,
            },
            "modes": MODES,
            "recent": recent,
        })
    }
}

/// p50, p95 and p99 of `values` (nearest rank), seconds; nulls when empty.
fn percentiles(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!({"p50": null, "p95": null, "p99": null});
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        ts_ms: u64,
        mode: &'static str,
        backend: &str,
        paid: f64,
        reference: f64,
    ) -> RequestReport {
        RequestReport {
            ts_ms,
            id: format!("r{ts_ms}"),
            endpoint: "chat".into(),
            route: "auto".into(),
            backend: backend.into(),
            mode: mode.into(),
            status: 200,
            error: None,
            explanation: format!("{backend}; route auto"),
            key: Some("abc".into()),
            fallbacks: 0,
            input_tokens: 10,
            output_tokens: 5,
            paid,
            reference,
            saved: reference - paid,
            cpu_seconds: if mode == "local" { 0.5 } else { 0.0 },
            energy_joules: if mode == "local" { 5.0 } else { 0.0 },
            first_token_s: Some(0.1),
            total_s: 0.2,
            overhead_s: 0.001,
            spec_drafted: 0,
            spec_accepted: 0,
            cache_hit: false,
        }
    }

    #[test]
    fn totals_and_windows_add_up_and_filters_apply() {
        let ledger = Ledger::new(3);
        ledger.record(report(1_000, "local", "local", 0.0, 0.01));
        ledger.record(report(2_000, "cloud", "openai", 0.01, 0.01));
        let mut health = report(2_500, "none", "none", 0.0, 0.0);
        health.endpoint = "health".into();
        ledger.record(health);
        ledger.record(report(900_000, "local", "local", 0.0, 0.01));
        ledger.record(report(901_000, "cloud", "openai", 0.02, 0.02));
        let t = ledger.totals();
        assert_eq!(t.requests, 4, "probes are not model calls");
        assert!((t.saved - 0.02).abs() < 1e-12);
        assert_eq!(t.local_requests, 2);
        let s = ledger.summary(&Query::default(), 1_000_000);
        // The window is the last 900 s: the first two fell out (and only the last 3 are kept).
        assert_eq!(s["window"]["totals"]["requests"], 2);
        assert_eq!(s["totals"]["requests"], 4);
        assert_eq!(s["window"]["energy_per_output_token"], 1.0);
        assert_eq!(s["recent"][0]["backend"], "openai");
        let local_only = ledger.summary(
            &Query {
                decision: Some("local".into()),
                ..Query::default()
            },
            1_000_000,
        );
        assert_eq!(local_only["window"]["totals"]["requests"], 1);
        let series = s["window"]["series"].as_array().unwrap();
        let mixed: u64 = series
            .iter()
            .map(|p| p["local"].as_u64().unwrap() + p["cloud"].as_u64().unwrap())
            .sum();
        assert_eq!(mixed, 2);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!(p["p50"], 50.0);
        assert_eq!(p["p95"], 95.0);
        assert_eq!(p["p99"], 99.0);
        assert_eq!(percentiles(&mut [])["p50"], Value::Null);
    }
}
