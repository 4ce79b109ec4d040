//! `tandem bench overhead`: what Tandem adds to a request. A mock upstream answers recorded
//! OpenAI fixtures on loopback; an open-loop generator sends non-streaming chat requests at fixed
//! rates straight to the mock (direct), through a bare hyper proxy (the least any proxy written
//! on hyper does), through nginx where one is installed (the usual reference proxy), through
//! Tandem, and through Tandem exporting an OpenTelemetry trace of every request to a loopback
//! OTLP collector (tracing on vs off, side by side), in one run. The targets take turns in short rounds, so a stall of the machine lands on
//! one round of one target rather than on a whole phase. First it measures how late a sleeping
//! thread wakes on the idle machine, the floor under every hop's tail. The table gives latency
//! percentiles of each target, each proxy's difference from direct (its overhead), the
//! throughput sustained and the proxy's CPU time per request, then any failed requests by cause.
//! The privacy rows send a 2 kB prompt through Tandem three ways: no privacy rule (`tandem2k`),
//! a `redact` route on a clean prompt (`detect2k`: the detectors run, nothing is found) and on a
//! prompt with nine sensitive values (`redact2k`: redaction and restoration too); a
//! micro-benchmark of the detectors against a regex peer follows.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::mock::{Fixtures, MockConfig, MockUpstream};
use crate::otlp::Collector;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::cpu::{stat_cpu_ticks, ticks_to_duration};
use super::http1::{Encoded, LoadClient};
use super::nginx::Nginx;
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::server::{Gateway, GatewayOptions};

/// Options of `tandem bench overhead`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverheadArgs {
    /// Request rates to test, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u32>,
    /// Seconds of measured load per rate and target, split over the rounds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Rounds per rate; each round runs every target in turn.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of unmeasured warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the gateway's runtime.
    #[arg(long, default_value_t = 1)]
    pub gateway_threads: usize,
    /// Seconds spent measuring how late a sleeping thread wakes before any load, at most 60;
    /// 0 skips it.
    #[arg(long, default_value_t = 2.0)]
    pub probe_seconds: f64,
    /// nginx binary for the peer proxy; by default `nginx` on `PATH` or `/usr/sbin/nginx`.
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Leave nginx out even where it is installed.
    #[arg(long, conflicts_with = "nginx")]
    pub no_nginx: bool,
    /// The proxies to measure; direct is always measured, since overheads are taken against it.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bare,nginx,tandem,tandem-traced,privacy"
    )]
    pub proxies: Vec<Proxy>,
}

/// A proxy the overhead bench can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proxy {
    /// The bare hyper proxy: the same libraries with no gateway logic.
    Bare,
    /// nginx, where it is installed.
    Nginx,
    /// Tandem's gateway.
    Tandem,
    /// Tandem with a 2 kB prompt: no privacy rule, detectors on, redaction on.
    Privacy,
    /// Tandem's gateway exporting a trace of every request over OTLP/HTTP.
    TandemTraced,
}

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

/// One measured phase, or several pooled.
#[derive(Default)]
pub(super) struct Phase {
    pub(super) latencies_us: Vec<u64>,
    /// How many requests failed each way ("status 503", "transport: ...").
    pub(super) failures: std::collections::BTreeMap<String, u64>,
    pub(super) sent: u64,
    pub(super) elapsed: Duration,
    pub(super) proxy_cpu: Duration,
}

impl Phase {
    pub(super) fn percentile(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    pub(super) fn errors(&self) -> u64 {
        self.failures.values().sum()
    }

    pub(super) fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(super) fn cpu_us_per_request(&self) -> f64 {
        self.proxy_cpu.as_secs_f64() * 1e6 / self.sent.max(1) as f64
    }

    /// The latency table's header, target names `width` wide.
    pub(super) fn header(width: usize) -> String {
        format!(
            "{:>7} {:<width$} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>12}",
            "rate", "target", "p50 ms", "p90 ms", "p99 ms", "rps", "errors", "sent", "proxy µs/req"
        )
    }

    /// Its row of the latency table at `rate`, as target `name`.
    pub(super) fn row(&self, rate: u32, name: &str, width: usize) -> String {
        format!(
            "{:>7} {:<width$} {:>9.3} {:>9.3} {:>9.3} {:>9.0} {:>8} {:>7} {:>12.1}",
            rate,
            name,
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.rps(),
            self.errors(),
            self.sent,
            self.cpu_us_per_request()
        )
    }

    /// A note per kind of failed request, for the notes under the table.
    pub(super) fn failure_notes(&self, rate: u32, name: &str, width: usize) -> Vec<String> {
        self.failures
            .iter()
            .map(|(kind, n)| format!("{rate:>7} {name:<width$} {n} × {kind}"))
            .collect()
    }

    /// Adds `other`'s samples and counts.
    pub(super) fn pool(&mut self, other: Phase) {
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
        self.sent += other.sent;
        self.elapsed += other.elapsed;
        self.proxy_cpu += other.proxy_cpu;
    }
}

/// Runs every target in turn with `run`, `rounds` times (so a stall of the machine lands on one
/// round of one target rather than on a whole phase), hands each round's phases to `round`, and
/// returns each target's phases pooled.
pub(super) fn interleave<T>(
    targets: &[T],
    rounds: usize,
    run: impl Fn(&T) -> Phase,
    mut round: impl FnMut(&[Phase]),
) -> Vec<Phase> {
    let mut pooled: Vec<Phase> = targets.iter().map(|_| Phase::default()).collect();
    for _ in 0..rounds {
        let phases: Vec<Phase> = targets.iter().map(&run).collect();
        round(&phases);
        for (total, phase) in pooled.iter_mut().zip(phases) {
            total.pool(phase);
        }
    }
    pooled
}

/// The `p` quantile (0 to 1) of microseconds sorted ascending, in milliseconds; NaN when empty.
pub(super) fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us.get(i).map_or(f64::NAN, |&us| us as f64 / 1000.0)
}

/// The middle value (upper middle for an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How long the load generator waits for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `rate` requests per second for `seconds` to `url` (with `auth` as its `authorization`
/// header when given), open loop: requests leave on
/// schedule whether or not earlier ones have answered. Pacing and requests share one thread
/// (`runtime` is a current-thread runtime), so sending a request wakes no other thread: on a
/// 2-core machine a pacing thread handing each request to a worker cost more CPU than the mock
/// upstream, CPU the proxies under test then lacked. Requests leave evenly spaced (200 µs apart
/// at 5k RPS) rather than in the batches a millisecond timer would give.
pub(super) fn load(
    runtime: &tokio::runtime::Runtime,
    client: &LoadClient,
    url: &str,
    body: &Bytes,
    auth: Option<&http::HeaderValue>,
    rate: u32,
    seconds: f64,
) -> Phase {
    let total = (rate as f64 * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let request = Encoded::post(url, body, auth).map_err(|e| format!("request: {e}"));
    runtime.block_on(async {
        let mut pacer = Pacer::new();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for sent in 0..total {
            pacer
                .wait_until(start + interval.mul_f64(sent as f64))
                .await;
            let request = request.clone();
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let request = request?;
                let t0 = Instant::now();
                let exchange = async {
                    let status = client.send(&request).await?;
                    if !(200..300).contains(&status) {
                        return Err(format!("status {status}"));
                    }
                    Ok(t0.elapsed().as_micros() as u64)
                };
                // A saturated target fails its requests rather than hold the run forever.
                tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
            }));
        }
        let mut latencies_us = Vec::with_capacity(tasks.len());
        let mut failures = std::collections::BTreeMap::new();
        for task in tasks {
            let failure = match task.await {
                Ok(Ok(latency)) => {
                    latencies_us.push(latency);
                    continue;
                }
                Ok(Err(kind)) => kind,
                Err(e) => format!("task: {e}"),
            };
            *failures.entry(failure).or_default() += 1;
        }
        let elapsed = start.elapsed();
        latencies_us.sort_unstable();
        Phase {
            latencies_us,
            failures,
            sent: total,
            elapsed,
            proxy_cpu: Duration::ZERO,
        }
    })
}

/// A pooled hyper client on `runtime` (no Nagle delay on its connections), for looking at
/// single answers' headers before the load.
pub(super) fn hyper_client(
    runtime: &tokio::runtime::Runtime,
) -> Client<HttpConnector, Full<Bytes>> {
    let _guard = runtime.enter();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Waits for instants finer than the runtime's millisecond timer: a `timerfd` on Linux, which
/// the runtime's event loop watches like a socket. Elsewhere, or if the timer cannot be made,
/// the runtime's own timer.
struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Pacer {
    fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            // SAFETY: the `OwnedFd` is a valid descriptor, kept open and unreplaced for as long
            // as the `AsyncFd` owns it.
            timer: timerfd().and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok()),
        }
    }

    async fn wait_until(&mut self, due: Instant) {
        let now = Instant::now();
        if due <= now {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(timer) = &self.timer
            && arm(timer.get_ref(), due - now)
        {
            while let Ok(mut ready) = timer.readable().await {
                match ready.try_io(|fd| read_expirations(fd.get_ref())) {
                    Ok(Ok(())) => {
                        // The expiration is read, so the next wait goes straight to the event
                        // loop rather than first reading again to learn the timer is not due.
                        ready.clear_ready();
                        return;
                    }
                    // Anything but "not yet" leaves the wait to the runtime's clock.
                    Ok(Err(_)) => break,
                    Err(_would_block) => {}
                }
            }
        }
        tokio::time::sleep_until(due.into()).await;
    }
}

/// A non-blocking monotonic `timerfd`.
#[cfg(target_os = "linux")]
fn timerfd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscall; a non-negative result is a new descriptor this process owns.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Consumes a fired timer's expiration count.
#[cfg(target_os = "linux")]
fn read_expirations(timer: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut count = 0u64;
    // SAFETY: reads at most 8 bytes into a live, aligned u64.
    let read = unsafe { libc::read(timer.as_raw_fd(), (&raw mut count).cast(), 8) };
    if read == 8 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Arms `timer` to fire once after `after`; false if the kernel refused.
#[cfg(target_os = "linux")]
fn arm(timer: &std::os::fd::OwnedFd, after: Duration) -> bool {
    use std::os::fd::AsRawFd as _;
    let value = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            // A zero value would disarm the timer rather than fire it.
            tv_nsec: after.subsec_nanos().max(1) as libc::c_long,
        },
    };
    // SAFETY: `value` is a valid itimerspec and the old value is not asked for.
    unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &value, std::ptr::null_mut()) == 0 }
}

/// The floor any proxy pays here: a bare hyper server that forwards each request's bytes to the
/// mock with a pooled hyper client and returns the answer's bytes, with no parsing, routing,
/// middleware or accounting. Returns its address.
async fn start_bare_proxy(upstream: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    // The same accept queue as the gateway, so a burst treats both proxies alike.
    let listener = tandem_gateway::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let client = client.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let uri = format!("http://{upstream}{}", parts.uri.path());
                        let mut forward = http::Request::post(uri).body(Full::new(body))?;
                        *forward.headers_mut() = parts.headers;
                        let (parts, body) = client.request(forward).await?.into_parts();
                        let body = body.collect().await?.to_bytes();
                        Ok::<_, anyhow::Error>(http::Response::from_parts(parts, Full::new(body)))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// CPU time used so far by this process's threads named `name`, so a phase can report what
/// each request cost the proxy. Zero where procfs is absent.
pub(super) fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ticks = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            stat_cpu_ticks(&stat).and_then(|(comm, ticks)| (comm == name).then_some(ticks))
        })
        .sum();
    ticks_to_duration(ticks)
}

/// How late a thread wakes from a short sleep on this machine while nothing else runs.
struct Lateness {
    /// Each sleep's lateness past its due time, sorted.
    late_us: Vec<u64>,
}

/// The sleep the probe repeats: the gap between requests at 5k RPS.
const PROBE_SLEEP: Duration = Duration::from_micros(200);

/// Tandem's budget for its p99 overhead at 5k RPS. A wake-up this late spends it alone.
const P99_BUDGET: Duration = Duration::from_micros(500);

impl Lateness {
    /// Sleeps [`PROBE_SLEEP`] again and again for `seconds` (at most 60) on this thread.
    fn measure(seconds: f64) -> Self {
        let end = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 60.0));
        let mut late_us = Vec::new();
        while Instant::now() < end {
            let due = Instant::now() + PROBE_SLEEP;
            std::thread::sleep(PROBE_SLEEP);
            late_us.push(Instant::now().saturating_duration_since(due).as_micros() as u64);
        }
        late_us.sort_unstable();
        Self { late_us }
    }

    /// The share of wake-ups later than [`P99_BUDGET`], in percent.
    fn share_over_budget(&self) -> f64 {
        let budget_us = P99_BUDGET.as_micros() as u64;
        let over = self.late_us.iter().filter(|&&us| us > budget_us).count();
        100.0 * over as f64 / self.late_us.len().max(1) as f64
    }
}

/// Three runtimes, so the mock (`bench-mock` threads), the gateway (`gateway` threads,
/// `gateway_threads` of them) and the load generator (this thread) do not share workers.
pub(super) fn runtimes(
    gateway_threads: usize,
) -> std::io::Result<(
    tokio::runtime::Runtime,
    tokio::runtime::Runtime,
    tokio::runtime::Runtime,
)> {
    let mock = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-mock")
        .worker_threads(1)
        .enable_all()
        .build()?;
    let gateway = tokio::runtime::Builder::new_multi_thread()
        .thread_name("gateway")
        .worker_threads(gateway_threads.max(1))
        .enable_all()
        .build()?;
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((mock, gateway, load))
}

/// The mock upstream on `runtime`, answering the built-in fixtures without recording requests.
pub(super) fn start_mock(
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(std::net::SocketAddr, crate::mock::MockHandle)> {
    Ok(runtime.block_on(MockUpstream::start_with(
        Fixtures::builtin(),
        MockConfig {
            record: false,
            ..MockConfig::default()
        },
    ))?)
}

/// One thing the load is sent to, and where its CPU time is read.
struct Target<'a> {
    name: &'static str,
    url: String,
    /// The request body it is sent.
    body: Bytes,
    /// CPU time its proxy has used so far; None for direct, which has no proxy.
    cpu: Option<Box<dyn Fn() -> Duration + 'a>>,
}

/// Runs the benchmark and returns the table.
pub fn run_overhead(args: &OverheadArgs) -> anyhow::Result<String> {
    let (mock_rt, gateway_rt, load_rt) = runtimes(args.gateway_threads)?;

    let (mock_addr, _mock) = start_mock(&mock_rt)?;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_concurrency = 100000\n\
         [backends.mock]\nkind = \"openai-compatible\"\nbase_url = \"http://{mock_addr}/v1\"\n\
         [routes.bench]\nbackends = [\"mock\"]\n\
         [routes.bench-2k]\nbackends = [\"mock\"]\n\
         [routes.bench-detect]\nbackends = [\"mock\"]\nprivacy = \"redact\"\n\
         [routes.bench-redact]\nbackends = [\"mock\"]\nprivacy = \"redact\"\n"
    );
    let config = Config::from_toml_str(&toml, &MapEnv::default())?;
    let gateway = gateway_rt.block_on(Gateway::start(
        config,
        GatewayOptions {
            quiet: true,
            ..GatewayOptions::default()
        },
    ))?;
    // The same gateway with tracing on, exporting to a collector on the mock's runtime (its
    // decoding is not Tandem's cost; the batching and export are, on the gateway's threads).
    let collector = mock_rt.block_on(Collector::start())?;
    let traced_toml = format!(
        "{toml}[observability.otlp]\nendpoint = \"{}\"\nflush_interval_ms = 200\n",
        collector.endpoint()
    );
    let traced = gateway_rt.block_on(Gateway::start(
        Config::from_toml_str(&traced_toml, &MapEnv::default())?,
        GatewayOptions {
            quiet: true,
            ..GatewayOptions::default()
        },
    ))?;
    let bare_addr = gateway_rt.block_on(start_bare_proxy(mock_addr))?;
    let path = "/v1/chat/completions";
    let mut notes = Vec::new();
    let no_nginx = args.no_nginx || !args.proxies.contains(&Proxy::Nginx);
    let nginx = match Nginx::find(args.nginx.as_deref()).filter(|_| !no_nginx) {
        None if no_nginx => None,
        None => {
            notes.push("nginx: not installed, so not measured".to_owned());
            None
        }
        Some(binary) => match Nginx::start(&binary, mock_addr) {
            Ok(nginx) => Some(nginx),
            Err(e) => {
                notes.push(format!("nginx: could not start, so not measured: {e:#}"));
                None
            }
        },
    };
    let gateway_cpu = || thread_cpu("gateway");
    let small = Bytes::from_static(BODY.as_bytes());
    let mut targets = vec![
        Target {
            name: "direct",
            url: format!("http://{mock_addr}{path}"),
            body: small.clone(),
            cpu: None,
        },
        Target {
            name: "bare",
            url: format!("http://{bare_addr}{path}"),
            body: small.clone(),
            cpu: Some(Box::new(gateway_cpu)),
        },
    ];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx",
            url: format!("http://{}{path}", nginx.addr()),
            body: small.clone(),
            cpu: Some(Box::new(|| nginx.cpu())),
        });
    }
    targets.push(Target {
        name: "tandem",
        url: format!("{}{path}", gateway.url()),
        body: small.clone(),
        cpu: Some(Box::new(gateway_cpu)),
    });
    if args.proxies.contains(&Proxy::Privacy) {
        let big = |model: &str, prompt: String| {
            Bytes::from(
                serde_json::json!({"model": model, "max_tokens": 16,
                                   "messages": [{"role": "user", "content": prompt}]})
                .to_string(),
            )
        };
        for (name, model, prompt) in [
            ("tandem2k", "bench-2k", super::privacy::clean_prompt()),
            ("detect2k", "bench-detect", super::privacy::clean_prompt()),
            (
                "redact2k",
                "bench-redact",
                super::privacy::sensitive_prompt(),
            ),
        ] {
            targets.push(Target {
                name,
                url: format!("{}{path}", gateway.url()),
                body: big(model, prompt),
                cpu: Some(Box::new(gateway_cpu)),
            });
        }
    }
    targets.push(Target {
        name: "tandem-traced",
        url: format!("{}{path}", traced.url()),
        body: small,
        cpu: Some(Box::new(gateway_cpu)),
    });

    if !args.proxies.contains(&Proxy::Bare) {
        targets.retain(|t| t.name != "bare");
    }
    if !args.proxies.contains(&Proxy::Tandem) {
        targets.retain(|t| t.name != "tandem");
    }
    if !args.proxies.contains(&Proxy::TandemTraced) {
        targets.retain(|t| t.name != "tandem-traced");
    }
    let budget_ms = P99_BUDGET.as_secs_f64() * 1000.0;
    let mut table = String::new();
    if args.probe_seconds > 0.0 {
        let probe = Lateness::measure(args.probe_seconds);
        let _ = writeln!(
            table,
            "machine floor: of {} sleeps of {} µs with nothing else running, {:.2} % woke more \
             than {:.1} ms late (lateness p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms); every \
             proxy hop adds at least two wake-ups to a request\n",
            probe.late_us.len(),
            PROBE_SLEEP.as_micros(),
            probe.share_over_budget(),
            budget_ms,
            percentile_ms(&probe.late_us, 0.99),
            percentile_ms(&probe.late_us, 0.999),
            percentile_ms(&probe.late_us, 1.0),
        );
    }
    let rounds = args.rounds.max(1);
    let _ = writeln!(
        table,
        "gateway overhead, non-streaming chat, open-loop load on loopback \
         ({} s per target and rate, in {rounds} interleaved rounds)",
        args.seconds
    );
    let _ = writeln!(table, "{}", Phase::header(8));
    let mut summary = Vec::new();
    let mut cpu_ratios = Vec::new();
    // Per rate: tracing's CPU per request and p99 against the untraced gateway.
    let mut tracing_costs = Vec::new();
    for &rate in &args.rates {
        let client = LoadClient::default();
        let run = |target: &Target, seconds: f64| {
            let cpu_before = target.cpu.as_ref().map(|cpu| cpu());
            let mut phase = load(
                &load_rt,
                &client,
                &target.url,
                &target.body,
                None,
                rate,
                seconds,
            );
            if let (Some(cpu), Some(before)) = (&target.cpu, cpu_before) {
                phase.proxy_cpu = cpu().saturating_sub(before);
            }
            phase
        };
        for target in &targets {
            run(target, args.warmup);
        }
        // Per proxy (every target after direct), the p99 overhead of each round.
        let mut round_p99_overhead = vec![Vec::with_capacity(rounds); targets.len()];
        let pooled = interleave(
            &targets,
            rounds,
            |target| run(target, args.seconds / rounds as f64),
            |phases| {
                for (i, phase) in phases.iter().enumerate().skip(1) {
                    round_p99_overhead[i].push(phase.percentile(0.99) - phases[0].percentile(0.99));
                }
            },
        );
        for (target, phase) in targets.iter().zip(&pooled) {
            notes.extend(phase.failure_notes(rate, target.name, 8));
            let _ = writeln!(table, "{}", phase.row(rate, target.name, 8));
        }
        let direct = &pooled[0];
        for ((target, phase), rounds) in targets.iter().zip(&pooled).zip(round_p99_overhead) {
            if target.cpu.is_none() {
                continue;
            }
            summary.push(OverheadRow {
                rate,
                proxy: target.name,
                p50: phase.percentile(0.5) - direct.percentile(0.5),
                p90: phase.percentile(0.9) - direct.percentile(0.9),
                p99: phase.percentile(0.99) - direct.percentile(0.99),
                round_p99: rounds,
                rps_ratio: phase.rps() / direct.rps(),
            });
        }
        let cpu_of = |name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .map(|i| pooled[i].cpu_us_per_request())
        };
        // procfs counts 10 ms ticks: a short run may show nginx none, and no ratio then.
        if let (Some(tandem), Some(nginx)) = (cpu_of("tandem"), cpu_of("nginx"))
            && nginx > 0.0
        {
            cpu_ratios.push((rate, tandem / nginx));
        }
        let p99_of = |name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .map(|i| pooled[i].percentile(0.99) - direct.percentile(0.99))
        };
        if let (Some(plain), Some(traced), Some(p99_plain), Some(p99_traced)) = (
            cpu_of("tandem"),
            cpu_of("tandem-traced"),
            p99_of("tandem"),
            p99_of("tandem-traced"),
        ) {
            tracing_costs.push((rate, plain, traced, p99_plain, p99_traced));
        }
    }
    let _ = writeln!(table, "\noverhead (proxy - direct)");
    let _ = writeln!(
        table,
        "{:>7} {:<8} {:>9} {:>9} {:>9} {:>17} {:>17} {:>15} {:>10}",
        "rate",
        "proxy",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99, round median",
        "p99, round range",
        format!("rounds < {budget_ms} ms"),
        "rps ratio"
    );
    for row in summary {
        let lo = row.round_p99.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = row
            .round_p99
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let within = row.round_p99.iter().filter(|&&p99| p99 < budget_ms).count();
        let rounds = row.round_p99.len();
        let _ = writeln!(
            table,
            "{:>7} {:<8} {:>9.3} {:>9.3} {:>9.3} {:>17.3} {:>17} {:>15} {:>10.3}",
            row.rate,
            row.proxy,
            row.p50,
            row.p90,
            row.p99,
            median(row.round_p99),
            format!("{lo:.3}..{hi:.3}"),
            format!("{within}/{rounds}"),
            row.rps_ratio
        );
    }
    if !cpu_ratios.is_empty() {
        let ratios: Vec<String> = cpu_ratios
            .iter()
            .map(|(rate, ratio)| format!("{ratio:.2} at {rate} RPS"))
            .collect();
        let _ = writeln!(
            table,
            "\nproxy CPU per request, tandem / nginx: {}",
            ratios.join(", ")
        );
    }
    if args.proxies.contains(&Proxy::Privacy) {
        let _ = writeln!(table, "\n{}", super::privacy::detector_table(20_000));
    }
    if !tracing_costs.is_empty() {
        let _ = writeln!(
            table,
            "\ntracing on vs off (every request traced, OTLP/HTTP export to a loopback collector; {} spans received)",
            collector.spans().len()
        );
        let _ = writeln!(
            table,
            "{:>7} {:>16} {:>15} {:>10} {:>16} {:>15}",
            "rate", "µs/req tracing", "µs/req off", "CPU ratio", "p99 ovh tracing", "p99 ovh off"
        );
        for (rate, plain, traced, p99_plain, p99_traced) in tracing_costs {
            let ratio = if plain > 0.0 {
                traced / plain
            } else {
                f64::NAN
            };
            let _ = writeln!(
                table,
                "{rate:>7} {traced:>16.1} {plain:>15.1} {ratio:>10.3} {p99_traced:>16.3} {p99_plain:>15.3}"
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(table, "\nnotes and failed requests");
        for note in notes {
            let _ = writeln!(table, "{note}");
        }
    }
    gateway_rt.block_on(gateway.shutdown())?;
    gateway_rt.block_on(traced.shutdown())?;
    Ok(table)
}

/// One proxy's overhead over direct at one rate.
struct OverheadRow {
    rate: u32,
    proxy: &'static str,
    p50: f64,
    p90: f64,
    p99: f64,
    round_p99: Vec<f64>,
    rps_ratio: f64,
}

/// Checks that the latency table has a row for each of `targets`, each without errors and with
/// `sent` requests sent.
#[cfg(test)]
pub(super) fn assert_rows_clean(table: &str, targets: &[&str], sent: u64) -> anyhow::Result<()> {
    for &target in targets {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(target))
            .ok_or_else(|| anyhow::anyhow!("no {target} row in\n{table}"))?;
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[6], "0", "{target} had errors:\n{table}");
        assert_eq!(
            columns[7],
            sent.to_string(),
            "{target} sent a wrong count:\n{table}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_never_lets_a_request_leave_early() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut pacer = Pacer::new();
            let start = Instant::now();
            for step in 1..=20u32 {
                let due = start + Duration::from_micros(250) * step;
                pacer.wait_until(due).await;
                assert!(Instant::now() >= due, "step {step} left before its time");
            }
            // An instant already past returns at once.
            pacer.wait_until(start).await;
        });
        Ok(())
    }

    #[test]
    fn only_the_chosen_proxies_are_measured() -> anyhow::Result<()> {
        let table = run_overhead(&OverheadArgs {
            rates: vec![200],
            seconds: 0.2,
            rounds: 1,
            warmup: 0.0,
            gateway_threads: 1,
            probe_seconds: 0.0,
            nginx: None,
            no_nginx: false,
            proxies: vec![Proxy::Tandem],
        })?;
        let measured: Vec<&str> = table
            .lines()
            .filter(|l| l.split_whitespace().next() == Some("200"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        // Direct and Tandem in the latency table, Tandem in the overhead table.
        assert_eq!(measured, ["direct", "tandem", "tandem"], "{table}");
        Ok(())
    }

    #[test]
    fn the_benchmark_measures_every_target_without_errors() -> anyhow::Result<()> {
        let table = run_overhead(&OverheadArgs {
            rates: vec![200],
            seconds: 0.5,
            rounds: 1,
            warmup: 0.1,
            gateway_threads: 1,
            probe_seconds: 0.1,
            nginx: None,
            no_nginx: false,
            proxies: vec![Proxy::Bare, Proxy::Nginx, Proxy::Tandem, Proxy::Privacy],
        })?;
        let nginx_measured = table
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("nginx"));
        if !nginx_measured {
            let why = if Nginx::find(None).is_some() {
                "nginx: could not start"
            } else {
                "nginx: not installed"
            };
            assert!(table.contains(why), "no nginx row and no reason:\n{table}");
        }
        let targets: &[&str] = if nginx_measured {
            &[
                "direct", "bare", "nginx", "tandem", "tandem2k", "detect2k", "redact2k",
            ]
        } else {
            &[
                "direct", "bare", "tandem", "tandem2k", "detect2k", "redact2k",
            ]
        };
        assert_rows_clean(&table, targets, 100)?;
        assert!(table.contains("overhead (proxy - direct)"), "{table}");
        assert!(table.starts_with("machine floor: of "), "{table}");
        assert!(table.contains("scan, clean prompt"), "{table}");
        Ok(())
    }
}
