//! `tandem bench controls`: what the production controls cost a request. The overhead bench's
//! open-loop load, at fixed rates, goes to the mock upstream straight (direct) and through
//! Tandem four ways, in interleaved rounds of one run: with no controls (`tandem`); with a
//! virtual key whose requests- and tokens-per-minute limits, route limits and daily and monthly
//! budgets are checked in a real Redis (`checks`: the budget read and one GCRA script before the
//! upstream call, the spend charge and the token correction after it); and answering a repeated
//! temperature-0 request from the exact cache in Redis, without a key (`cache-hit`) and with the
//! key's checks too (`cache+checks`). The table gives each target's latency percentiles, its
//! difference from direct and the ratio, and the two targets: the checks add under 0.2 ms p99
//! over no controls, and a cache hit answers with p99 under 1 ms.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::controls::keys::KeySpec;
use tandem_gateway::server::{Gateway, GatewayOptions};

use super::http1::LoadClient;
use super::overhead::{Phase, hyper_client, interleave, load, runtimes, start_mock, thread_cpu};
use crate::redis::RedisServer;

/// Options of `tandem bench controls`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlsArgs {
    /// Request rates to test, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u32>,
    /// Seconds of measured load per rate and target, split over the rounds.
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Rounds per rate; each round runs every target in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of unmeasured warm-up per rate and target.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the gateways' runtime.
    #[arg(long, default_value_t = 1)]
    pub gateway_threads: usize,
    /// Redis to keep the shared state in; by default a `redis-server` started on a free
    /// loopback port for the run.
    #[arg(long)]
    pub redis_url: Option<String>,
}

/// The p99 the checks may add over no controls, ms.
const CHECKS_P99_TARGET_MS: f64 = 0.2;
/// The p99 a cache hit must answer within, ms.
const CACHE_HIT_P99_TARGET_MS: f64 = 1.0;

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;
const CACHED_BODY: &str = r#"{"model":"cached","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16,"temperature":0}"#;

/// The width of the target column.
const NAME_WIDTH: usize = 13;

/// One thing the load is sent to.
struct Target {
    name: &'static str,
    url: String,
    body: Bytes,
    /// The virtual key, as an `authorization` header.
    auth: Option<http::HeaderValue>,
    /// Whether its answer comes from the gateway (its CPU time is read) rather than the mock.
    proxied: bool,
}

/// Starts a gateway from `toml` on `runtime`, its embedded store (or key mirror) in `dir`, and
/// waits for its store to answer.
fn start_gateway(
    runtime: &tokio::runtime::Runtime,
    toml: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Gateway> {
    let mut config = Config::from_toml_str(toml, &MapEnv::default())?;
    config.controls.store.path = Some(dir.join("store.log"));
    runtime.block_on(async {
        let gateway = Gateway::start(
            config,
            GatewayOptions {
                quiet: true,
                ..GatewayOptions::default()
            },
        )
        .await?;
        for _ in 0..250 {
            if gateway.state.store.is_up() {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("the gateway's store did not come up")
    })
}

/// Runs the benchmark and returns the table.
pub fn run_controls(args: &ControlsArgs) -> anyhow::Result<String> {
    let (mock_rt, gateway_rt, load_rt) = runtimes(args.gateway_threads)?;

    let own_redis = match &args.redis_url {
        Some(_) => None,
        None => {
            anyhow::ensure!(
                RedisServer::installed(),
                "redis-server is not installed: install it, or pass --redis-url"
            );
            Some(RedisServer::start()?)
        }
    };
    let redis_url = match (&args.redis_url, &own_redis) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url(),
        (None, None) => anyhow::bail!("no Redis"),
    };

    let (mock_addr, _mock) = start_mock(&mock_rt)?;
    // `top`: lines before `[server]`; `limits`: the `bench` route's own.
    let config = |top: &str, limits: &str| {
        format!(
            "{top}[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_concurrency = 100000\n\
             [backends.mock]\nkind = \"openai-compatible\"\nbase_url = \"http://{mock_addr}/v1\"\n\
             price = {{ input = 1.0, output = 2.0, cached_input = 0.5 }}\n\
             [routes.bench]\nbackends = [\"mock\"]\n{limits}\
             [routes.cached]\nbackends = [\"mock\"]\ncache = {{ ttl_s = 3600 }}\n"
        )
    };
    // A prefix of the run's own, so a shared Redis keeps other state apart.
    let prefix = format!("tandem-bench-{}", std::process::id());
    let on_redis = |name: &str| {
        format!("redis_url = \"{redis_url}\"\n[store]\nprefix = \"{prefix}-{name}\"\n")
    };
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let plain = start_gateway(&gateway_rt, &config("", ""), dirs[0].path())?;
    // Route limits on top of the key's: every limiter of a request is one script call anyway.
    let checked = start_gateway(
        &gateway_rt,
        &config(
            &on_redis("checks"),
            "requests_per_minute = 100000000\ntokens_per_minute = 1000000000000\n",
        ),
        dirs[1].path(),
    )?;
    let cache_only = start_gateway(&gateway_rt, &config(&on_redis("cache"), ""), dirs[2].path())?;
    let (_, key) = gateway_rt.block_on(checked.state.controls.keys.create(KeySpec {
        name: Some("bench".into()),
        requests_per_minute: Some(100_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        budget_daily_usd: Some(1e9),
        budget_monthly_usd: Some(1e9),
        ..KeySpec::default()
    }))?;
    let auth = http::HeaderValue::from_str(&format!("Bearer {key}"))?;

    let path = "/v1/chat/completions";
    let small = Bytes::from_static(BODY.as_bytes());
    let cached = Bytes::from_static(CACHED_BODY.as_bytes());
    let targets = [
        Target {
            name: "direct",
            url: format!("http://{mock_addr}{path}"),
            body: small.clone(),
            auth: None,
            proxied: false,
        },
        Target {
            name: "tandem",
            url: format!("{}{path}", plain.url()),
            body: small.clone(),
            auth: None,
            proxied: true,
        },
        Target {
            name: "checks",
            url: format!("{}{path}", checked.url()),
            body: small,
            auth: Some(auth.clone()),
            proxied: true,
        },
        Target {
            name: "cache-hit",
            url: format!("{}{path}", cache_only.url()),
            body: cached.clone(),
            auth: None,
            proxied: true,
        },
        Target {
            name: "cache+checks",
            url: format!("{}{path}", checked.url()),
            body: cached,
            auth: Some(auth),
            proxied: true,
        },
    ];
    // Each target answers as it should before any load: the checks and the cache at work.
    let check_client = hyper_client(&load_rt);
    for target in &targets {
        for attempt in 0..2 {
            let mut request =
                http::Request::post(&target.url).header("content-type", "application/json");
            if let Some(auth) = &target.auth {
                request = request.header(http::header::AUTHORIZATION, auth.clone());
            }
            let request = request.body(Full::new(target.body.clone()))?;
            let response = load_rt.block_on(check_client.request(request))?;
            let (parts, body) = response.into_parts();
            let body = load_rt.block_on(body.collect())?.to_bytes();
            anyhow::ensure!(
                parts.status.is_success(),
                "{}: status {}: {}",
                target.name,
                parts.status,
                String::from_utf8_lossy(&body)
            );
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
            if target.auth.is_some() {
                anyhow::ensure!(
                    header("x-ratelimit-limit-requests").is_some(),
                    "{}: no rate-limit headers, so the limits were not checked",
                    target.name
                );
            }
            if target.name.starts_with("cache") && attempt == 1 {
                anyhow::ensure!(
                    header("x-tandem-cache") == Some("hit"),
                    "{}: the repeated request was not a cache hit ({:?})",
                    target.name,
                    header("x-tandem-cache")
                );
            }
        }
    }

    let client = LoadClient::default();
    let rounds = args.rounds.max(1);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "production controls, non-streaming chat, open-loop load on loopback, Redis at {redis_url} \
         ({} s per target and rate, in {rounds} interleaved rounds)",
        args.seconds
    );
    let _ = writeln!(table, "{}", Phase::header(NAME_WIDTH));
    let mut overheads = String::new();
    let mut verdicts = String::new();
    let mut notes = Vec::new();
    let errors_before =
        checked.state.metrics.store_errors.get() + cache_only.state.metrics.store_errors.get();
    for &rate in &args.rates {
        let run = |target: &Target, seconds: f64| {
            let before = target.proxied.then(|| thread_cpu("gateway"));
            let mut phase = load(
                &load_rt,
                &client,
                &target.url,
                &target.body,
                target.auth.as_ref(),
                rate,
                seconds,
            );
            if let Some(before) = before {
                phase.proxy_cpu = thread_cpu("gateway").saturating_sub(before);
            }
            phase
        };
        for target in &targets {
            run(target, args.warmup);
        }
        // Per round, the checks' p99 over no controls.
        let mut round_check_p99 = Vec::with_capacity(rounds);
        let pooled = interleave(
            &targets,
            rounds,
            |target| run(target, args.seconds / rounds as f64),
            |phases| round_check_p99.push(phases[2].percentile(0.99) - phases[1].percentile(0.99)),
        );
        for (target, phase) in targets.iter().zip(&pooled) {
            notes.extend(phase.failure_notes(rate, target.name, NAME_WIDTH));
            let _ = writeln!(table, "{}", phase.row(rate, target.name, NAME_WIDTH));
        }
        let direct = &pooled[0];
        for (target, phase) in targets.iter().zip(&pooled).skip(1) {
            let (p50, p99) = (phase.percentile(0.5), phase.percentile(0.99));
            let (d50, d99) = (direct.percentile(0.5), direct.percentile(0.99));
            let _ = writeln!(
                overheads,
                "{rate:>7} {:<13} {:>9.3} {:>9.3} {:>10.2} {:>10.2}",
                target.name,
                p50 - d50,
                p99 - d99,
                p50 / d50,
                p99 / d99
            );
        }
        let added = pooled[2].percentile(0.99) - pooled[1].percentile(0.99);
        let added_p50 = pooled[2].percentile(0.5) - pooled[1].percentile(0.5);
        round_check_p99.sort_by(f64::total_cmp);
        let round_median = round_check_p99
            .get(round_check_p99.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        let _ = writeln!(
            verdicts,
            "{rate:>7} RPS: checks add {added_p50:.3} ms p50 and {added:.3} ms p99 over no controls \
             (round median {round_median:.3} ms; target < {CHECKS_P99_TARGET_MS} ms: {}); \
             a cache hit answers in {:.3} ms p99, {:.3} ms with the checks (target < \
             {CACHE_HIT_P99_TARGET_MS} ms: {})",
            verdict(added < CHECKS_P99_TARGET_MS),
            pooled[3].percentile(0.99),
            pooled[4].percentile(0.99),
            verdict(pooled[3].percentile(0.99) < CACHE_HIT_P99_TARGET_MS),
        );
    }
    let _ = writeln!(
        table,
        "\nagainst direct (target - direct, and target / direct)"
    );
    let _ = writeln!(
        table,
        "{:>7} {:<13} {:>9} {:>9} {:>10} {:>10}",
        "rate", "target", "+p50 ms", "+p99 ms", "p50 ratio", "p99 ratio"
    );
    table.push_str(&overheads);
    let _ = writeln!(table, "\ntargets");
    table.push_str(&verdicts);
    let store_errors = checked.state.metrics.store_errors.get()
        + cache_only.state.metrics.store_errors.get()
        - errors_before;
    if store_errors > 0 {
        notes.push(format!(
            "{store_errors} Redis operations failed or passed store.timeout_ms: those requests \
             were let through unchecked or uncached (failing open), so the rows above flatter \
             the checks"
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(table, "\nnotes and failed requests");
        for note in notes {
            let _ = writeln!(table, "{note}");
        }
    }
    for gateway in [plain, checked, cache_only] {
        gateway_rt.block_on(gateway.shutdown())?;
    }
    drop(own_redis);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_answers_without_errors() -> anyhow::Result<()> {
        if !RedisServer::installed() && std::env::var("TANDEM_TEST_REDIS_URL").is_err() {
            return Ok(());
        }
        let table = run_controls(&ControlsArgs {
            rates: vec![200],
            seconds: 0.3,
            rounds: 1,
            warmup: 0.1,
            gateway_threads: 1,
            redis_url: std::env::var("TANDEM_TEST_REDIS_URL").ok(),
        })?;
        super::super::overhead::assert_rows_clean(
            &table,
            &["direct", "tandem", "checks", "cache-hit", "cache+checks"],
            60,
        )?;
        assert!(table.contains("checks add"), "{table}");
        Ok(())
    }
}
