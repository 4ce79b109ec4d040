//! `tandem bench overhead`: what Tandem adds to a request. A mock upstream answers recorded
//! OpenAI fixtures on loopback; an open-loop generator sends non-streaming chat requests at fixed
//! rates, first straight to the mock (the peer), then through Tandem to the same mock, in one
//! run. The table gives latency percentiles of both, their difference (the overhead) and the
//! throughput sustained.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tandem_cloud_adapters::mock::{Fixtures, MockConfig, MockUpstream};

use crate::config::{Config, MapEnv};
use crate::server::{Gateway, GatewayOptions};

/// Options of `tandem bench overhead`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverheadArgs {
    /// Request rates to test, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u32>,
    /// Seconds of measured load per rate and target.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of unmeasured warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the gateway's runtime.
    #[arg(long, default_value_t = 1)]
    pub gateway_threads: usize,
}

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

/// One measured phase.
struct Phase {
    latencies_us: Vec<u64>,
    errors: u64,
    sent: u64,
    elapsed: Duration,
}

impl Phase {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `rate` requests per second for `seconds` to `url`, open loop: requests leave on
/// schedule whether or not earlier ones have answered.
async fn load(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    rate: u32,
    seconds: f64,
) -> Phase {
    let total = (rate as f64 * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut sent = 0u64;
    while sent < total {
        let due = start + interval.mul_f64(sent as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        // Everything due by now leaves now (the timer wakes at most once a millisecond).
        let now = Instant::now();
        while sent < total && start + interval.mul_f64(sent as f64) <= now {
            let client = client.clone();
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(BODY.as_bytes())));
            let latencies = latencies.clone();
            let errors = errors.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(request) = request else { return };
                let t0 = Instant::now();
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.lock().push(t0.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
            sent += 1;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let mut latencies_us = std::mem::take(&mut *latencies.lock());
    latencies_us.sort_unstable();
    Phase {
        latencies_us,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        sent,
        elapsed,
    }
}

/// Runs the benchmark and returns the table.
pub fn run_overhead(args: &OverheadArgs) -> anyhow::Result<String> {
    // Three runtimes, so the mock, the gateway and the load generator do not share workers.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-mock")
        .worker_threads(1)
        .enable_all()
        .build()?;
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("gateway")
        .worker_threads(args.gateway_threads.max(1))
        .enable_all()
        .build()?;
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-load")
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (mock_addr, _mock) = mock_rt.block_on(MockUpstream::start_with(
        Fixtures::builtin(),
        MockConfig {
            record: false,
            ..MockConfig::default()
        },
    ))?;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_concurrency = 100000\n\
         [backends.mock]\nkind = \"openai-compatible\"\nbase_url = \"http://{mock_addr}/v1\"\n\
         [routes.bench]\nbackends = [\"mock\"]\n"
    );
    let config = Config::from_toml_str(&toml, &MapEnv::default())?;
    let gateway = gateway_rt.block_on(Gateway::start(
        config,
        GatewayOptions {
            quiet: true,
            ..GatewayOptions::default()
        },
    ))?;
    let direct_url = format!("http://{mock_addr}/v1/chat/completions");
    let tandem_url = format!("{}/v1/chat/completions", gateway.url());

    let mut table = String::new();
    let _ = writeln!(
        table,
        "gateway overhead, non-streaming chat, open-loop load on loopback ({:.0} s per phase)",
        args.seconds
    );
    let _ = writeln!(
        table,
        "{:>7} {:<8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "rate", "target", "p50 ms", "p90 ms", "p99 ms", "rps", "errors", "sent"
    );
    let mut summary = Vec::new();
    for &rate in &args.rates {
        let client: Client<HttpConnector, Full<Bytes>> = {
            let _guard = load_rt.enter();
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(4096)
                .build(connector)
        };
        let mut phases = Vec::new();
        // The generator runs as a task on its runtime's worker, so the requests it spawns go to
        // that worker's own queue instead of waking it through the scheduler for each one.
        let run = |url: &str, seconds: f64| {
            let client = client.clone();
            let url = url.to_owned();
            load_rt.block_on(load_rt.spawn(async move { load(&client, &url, rate, seconds).await }))
        };
        for (name, url) in [("direct", &direct_url), ("tandem", &tandem_url)] {
            run(url, args.warmup)?;
            let phase = run(url, args.seconds)?;
            let _ = writeln!(
                table,
                "{:>7} {:<8} {:>9.3} {:>9.3} {:>9.3} {:>9.0} {:>8} {:>7}",
                rate,
                name,
                phase.percentile(0.5),
                phase.percentile(0.9),
                phase.percentile(0.99),
                phase.rps(),
                phase.errors,
                phase.sent
            );
            phases.push(phase);
        }
        if let [direct, tandem] = &phases[..] {
            summary.push((
                rate,
                tandem.percentile(0.5) - direct.percentile(0.5),
                tandem.percentile(0.9) - direct.percentile(0.9),
                tandem.percentile(0.99) - direct.percentile(0.99),
                tandem.rps() / direct.rps(),
            ));
        }
    }
    let _ = writeln!(table, "\noverhead (tandem - direct)");
    let _ = writeln!(
        table,
        "{:>7} {:>9} {:>9} {:>9} {:>14}",
        "rate", "p50 ms", "p90 ms", "p99 ms", "rps ratio"
    );
    for (rate, p50, p90, p99, ratio) in summary {
        let _ = writeln!(
            table,
            "{rate:>7} {p50:>9.3} {p90:>9.3} {p99:>9.3} {ratio:>14.3}"
        );
    }
    gateway_rt.block_on(gateway.shutdown())?;
    Ok(table)
}
