//! What Tandem decides and saves, end to end: the bill of a fixed mix of local and cloud answers
//! (headers, `/metrics`, the ledger), local CPU and energy, the overhead header, and OpenTelemetry
//! spans reaching an OTLP/HTTP collector (decoded from protobuf) with their names, parents and
//! GenAI attributes for local, cloud, fallback, cascade and speculative requests, the client's
//! `traceparent` continued and passed upstream, and prompt text kept out unless enabled.

// The helpers below are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockHandle, MockUpstream};
use tandem_lab::otlp::{Collector, ReceivedSpan};
use tandem_local_model::Engine;
use tandem_tests::{client, local_engine, parse_sse};

/// Dollars per million tokens of the two cloud backends.
const MINI: (f64, f64) = (0.5, 1.5);
const BIG: (f64, f64) = (5.0, 15.0);
const WATTS_PER_CORE: f64 = 7.0;
const PROMPT: &str = "What is the capital of France?";

fn env() -> MapEnv {
    MapEnv::from_pairs([("MOCK_OPENAI_KEY", "sk-mock")])
}

/// The local model, a cheap and a dear cloud backend on the mock, a route that answers locally
/// (measured against `mini`, its first cloud backend), one that answers on `mini` measured
/// against `big`, and a route that falls back from a dead backend; `extra` goes into the
/// `[observability]` section, `tail` at the end.
fn config(mock: &MockHandle, extra: &str, tail: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[observability]
cost_header = true
rapl = false
watts_per_core = {WATTS_PER_CORE}
{extra}

[backends.local]
kind = "local"

[backends.mini]
kind = "openai-compatible"
base_url = "{base}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt" = "gpt-4o-mini", "mix-cloud" = "gpt-4o-mini" }}
price = {{ input = {mi}, output = {mo} }}

[backends.big]
kind = "openai-compatible"
base_url = "{base}"
api_key_env = "MOCK_OPENAI_KEY"
price = {{ input = {bi}, output = {bo} }}

[backends.down]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
connect_timeout_ms = 500

[routes."mix-local"]
backends = ["local", "mini"]

[routes."mix-cloud"]
backends = ["mini"]
reference = "big"

[routes."with-fallback"]
backends = ["down", "mini"]
fallback = true
{tail}
"#,
        base = mock.base_url(),
        mi = MINI.0,
        mo = MINI.1,
        bi = BIG.0,
        bo = BIG.1,
    );
    Config::from_toml_str(&text, &env()).unwrap()
}

async fn start(config: Config, engine: &Engine) -> Gateway {
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine.clone()),
        quiet: true,
        ..GatewayOptions::default()
    };
    Gateway::start(config, options).await.unwrap()
}

async fn mock() -> MockHandle {
    MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap()
        .1
}

/// One answer: status, headers, the usage it reported.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    usage: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

async fn ask(gw: &Gateway, model: &str, stream: bool, headers: &[(&str, &str)]) -> Answer {
    let mut body = json!({"model": model, "stream": stream, "max_tokens": 8, "temperature": 0,
                          "messages": [{"role": "user", "content": PROMPT}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let mut r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let usage = if stream {
        parse_sse(&text)
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| e.json())
            .find(|v| v["usage"].is_object())
            .map(|v| v["usage"].clone())
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)["usage"].clone()
    };
    assert_eq!(status, 200, "{model}: {text}");
    Answer {
        status,
        headers,
        usage,
    }
}

fn cost((input, output): (f64, f64), usage: &Value) -> f64 {
    (usage["prompt_tokens"].as_u64().unwrap() as f64 * input
        + usage["completion_tokens"].as_u64().unwrap() as f64 * output)
        / 1e6
}

/// The sum of a metric's series whose labels include every pair of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// `paid=..; reference=..; saved=..` as numbers.
fn cost_header(value: &str) -> BTreeMap<String, f64> {
    value
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

async fn metrics(gw: &Gateway) -> String {
    client()
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fixed_mix_of_local_and_cloud_answers_saves_exactly_the_expected_dollars() {
    let engine = local_engine().await;
    let mock = mock().await;
    let gw = start(config(&mock, "", ""), &engine).await;

    let mut paid = 0.0;
    let mut reference = 0.0;
    let mut local_tokens = 0;
    // Three local answers measured against `mini`, three on `mini` measured against `big`
    // (one of them streamed: its cost is known only at the end, so it has no header).
    for (model, stream) in [
        ("mix-local", false),
        ("mix-local", false),
        ("mix-local", true),
        ("mix-cloud", false),
        ("mix-cloud", false),
        ("mix-cloud", true),
    ] {
        let a = ask(&gw, model, stream, &[]).await;
        assert_eq!(a.status, 200);
        let (p, r) = if model == "mix-local" {
            local_tokens += a.usage["completion_tokens"].as_u64().unwrap();
            (0.0, cost(MINI, &a.usage))
        } else {
            (cost(MINI, &a.usage), cost(BIG, &a.usage))
        };
        paid += p;
        reference += r;
        let overhead: f64 = a.header("x-tandem-overhead-ms").parse().unwrap();
        assert!(
            (0.0..5_000.0).contains(&overhead),
            "{model}: overhead {overhead}"
        );
        if stream {
            assert_eq!(
                a.header("x-tandem-cost"),
                "",
                "{model}: a stream's head has no cost"
            );
        } else {
            let h = cost_header(a.header("x-tandem-cost"));
            assert!((h["paid"] - p).abs() < 1e-8, "{model}: {h:?} vs paid {p}");
            assert!((h["reference"] - r).abs() < 1e-8, "{model}: {h:?} vs {r}");
            assert!((h["saved"] - (r - p)).abs() < 1e-8, "{model}: {h:?}");
        }
    }
    assert!(local_tokens > 0);
    assert!(reference > paid && paid > 0.0);

    // The streamed answers settle when their bodies end: wait for the ledger to hold all six.
    let ledger = &gw.state.observer.ledger;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.totals().requests < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let totals = ledger.totals();
    assert_eq!(totals.requests, 6);
    assert_eq!(totals.errors, 0);
    assert!(
        (totals.paid - paid).abs() < 1e-12,
        "{totals:?} vs paid {paid}"
    );
    assert!((totals.reference - reference).abs() < 1e-12, "{totals:?}");
    assert!(
        (totals.saved - (reference - paid)).abs() < 1e-12,
        "{totals:?}"
    );
    assert_eq!(totals.local_requests, 3);
    assert_eq!(totals.local_output_tokens, local_tokens);
    assert!(totals.cpu_seconds > 0.0, "{totals:?}");
    assert!((totals.energy_joules - totals.cpu_seconds * WATTS_PER_CORE).abs() < 1e-9);

    let text = metrics(&gw).await;
    let m_paid = metric_sum(&text, "tandem_cost_dollars_total", &[]);
    let m_ref = metric_sum(&text, "tandem_reference_cost_dollars_total", &[]);
    assert!((m_paid - paid).abs() < 1e-12, "{m_paid} vs {paid}\n{text}");
    assert!((m_ref - reference).abs() < 1e-12, "{m_ref} vs {reference}");
    let cpu = metric_sum(
        &text,
        "tandem_local_cpu_seconds_total",
        &[("backend", "local")],
    );
    assert!(
        (cpu - totals.cpu_seconds).abs() < 1e-9,
        "{cpu} vs {totals:?}"
    );
    let joules = metric_sum(&text, "tandem_local_energy_joules_total", &[]);
    assert!((joules - cpu * WATTS_PER_CORE).abs() < 1e-9);
    for (route, mode) in [("mix-local", "local"), ("mix-cloud", "cloud")] {
        let n = metric_sum(
            &text,
            "tandem_request_modes_total",
            &[("route", route), ("mode", mode)],
        );
        assert_eq!(n, 3.0, "{route} {mode}\n{text}");
    }
    assert!(
        metric_sum(
            &text,
            "tandem_overhead_seconds_count",
            &[("endpoint", "chat")]
        ) >= 6.0
    );

    // The dashboard's summary agrees with both.
    let summary = ledger.summary(&Default::default(), now_ms());
    assert_eq!(summary["window"]["totals"]["requests"], 6);
    let mix = &summary["window"]["series"];
    let count = |mode: &str| -> u64 {
        mix.as_array()
            .unwrap()
            .iter()
            .map(|p| p[mode].as_u64().unwrap())
            .sum()
    };
    assert_eq!((count("local"), count("cloud")), (3, 3));
    let per_token = summary["window"]["energy_per_output_token"]
        .as_f64()
        .unwrap();
    assert!((per_token - totals.energy_joules / local_tokens as f64).abs() < 1e-12);
    gw.shutdown().await.unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Spans of one trace by name.
fn by_name<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect()
}

/// The root span (kind SERVER) of the request with `request_id`.
fn root<'a>(spans: &'a [ReceivedSpan], request_id: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.kind == 2 && s.str("tandem.request_id") == Some(request_id))
}

async fn wait_root(c: &Collector, request_id: &str) -> Vec<ReceivedSpan> {
    let spans = c
        .wait_for(Duration::from_secs(10), |s| root(s, request_id).is_some())
        .await;
    assert!(
        root(&spans, request_id).is_some(),
        "no root span for {request_id}: {spans:#?}"
    );
    // Children are queued before the root; give a late batch a moment anyway.
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.spans()
}

const CASCADE_ROUTES: &str = r#"
[routes."cascade-escalate"]
backends = ["local", "mini"]
policy = "learned"
lambda_per_usd = 0.0
mu_per_s = 0.0
cascade_threshold = 1.0

[router]
cascade_band = 1.0
cascade_tokens = 4
"#;

#[tokio::test]
async fn spans_reach_the_collector_with_their_parents_and_genai_attributes() {
    let engine = local_engine().await;
    let collector = Collector::start().await.unwrap();
    let mock = mock().await;
    let otlp = format!(
        "[observability.otlp]\nendpoint = \"{}\"\nservice_name = \"tandem-test\"\nflush_interval_ms = 50\n",
        collector.endpoint()
    );
    // The speculative target: a second Tandem whose local model verifies drafts.
    let target_text = "[server]\nlisten = \"127.0.0.1:0\"\n[local]\nverify_endpoints = true\n[backends.local]\nkind = \"local\"\n";
    let target = start(Config::from_toml_str(target_text, &env()).unwrap(), &engine).await;
    let spec = format!(
        "[backends.target]\nkind = \"openai-compatible\"\nbase_url = \"{}/v1\"\nverify = \"tandem\"\n[backends.spec]\nkind = \"speculative\"\ntarget = \"target\"\ndrafter = \"local\"\nmax_draft = 4\nmodels = {{ \"spec\" = \"local\" }}\n",
        target.url()
    );
    let gw = start(
        config(&mock, &otlp, &format!("{spec}{CASCADE_ROUTES}")),
        &engine,
    )
    .await;

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{client_trace}-{client_span}-01");

    // Local, with the client's trace context.
    let a = ask(&gw, "mix-local", false, &[("traceparent", &traceparent)]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert_eq!(r.trace_id, client_trace, "the client's trace continues");
    assert_eq!(r.parent.as_deref(), Some(client_span));
    assert_eq!(r.name, "chat mix-local");
    assert_eq!(r.service, "tandem-test");
    assert_eq!(r.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(r.str("gen_ai.request.model"), Some("mix-local"));
    assert_eq!(r.str("gen_ai.response.model"), Some("smollm2-135m"));
    assert_eq!(
        r.int("gen_ai.usage.input_tokens"),
        a.usage["prompt_tokens"].as_i64()
    );
    assert_eq!(
        r.int("gen_ai.usage.output_tokens"),
        a.usage["completion_tokens"].as_i64()
    );
    assert_eq!(r.str("tandem.decision"), Some("local"));
    assert!(r.str("tandem.reasons").unwrap().contains("route mix-local"));
    assert!(r.attrs["tandem.local.cpu_seconds"].as_f64().unwrap() > 0.0);
    let attempts = by_name(&spans, client_trace, "chat smollm2-135m");
    assert_eq!(attempts.len(), 1, "{spans:#?}");
    let attempt = attempts[0];
    assert_eq!(attempt.parent.as_deref(), Some(r.span_id.as_str()));
    assert_eq!(attempt.str("tandem.outcome"), Some("ok"));
    for name in ["local.prefill", "local.decode"] {
        let s = by_name(&spans, client_trace, name);
        assert_eq!(s.len(), 1, "{name}: {spans:#?}");
        assert_eq!(s[0].parent.as_deref(), Some(attempt.span_id.as_str()));
    }
    // Prompt text never leaves in a span unless configured.
    for s in &spans {
        for v in s.attrs.values() {
            assert!(!v.to_string().contains("capital of France"), "{s:#?}");
        }
    }

    // Cloud: a CLIENT span, and the upstream sees its trace context.
    let a = ask(&gw, "gpt", false, &[]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert_eq!(r.str("tandem.decision"), Some("cloud"));
    assert_eq!(r.str("gen_ai.response.model"), Some("gpt-4o-mini"));
    let attempt = by_name(&spans, &r.trace_id, "chat gpt-4o-mini")[0];
    assert_eq!(attempt.kind, 3);
    assert_eq!(
        attempt.str("gen_ai.provider.name"),
        Some("openai-compatible")
    );
    assert_eq!(attempt.str("tandem.backend"), Some("mini"));
    let upstream = mock.requests();
    let sent = upstream.last().unwrap().header("traceparent").unwrap();
    assert_eq!(
        sent,
        format!("00-{}-{}-01", r.trace_id, attempt.span_id),
        "the upstream call's parent is its attempt span"
    );

    // Fallback: two tries, the first failed and marked so.
    let a = ask(&gw, "with-fallback", false, &[]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert_eq!(r.int("tandem.fallbacks"), Some(1));
    let mut tries: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == r.trace_id && s.attrs.contains_key("tandem.attempt"))
        .collect();
    tries.sort_by_key(|s| s.int("tandem.attempt"));
    assert_eq!(tries.len(), 2, "{spans:#?}");
    assert_eq!(tries[0].str("tandem.backend"), Some("down"));
    assert_eq!(tries[0].str("tandem.outcome"), Some("fallback"));
    assert_eq!(tries[0].status, 2, "a failed try has status ERROR");
    assert_eq!(tries[1].str("tandem.backend"), Some("mini"));
    assert_eq!(tries[1].str("tandem.outcome"), Some("ok"));
    assert!(
        tries
            .iter()
            .all(|t| t.parent.as_deref() == Some(r.span_id.as_str()))
    );

    // Cascade: the policy's decision is a span, the local try escalates to the cloud within
    // the one try (its upstream call carries the trace).
    let a = ask(&gw, "cascade-escalate", false, &[]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert_eq!(r.str("tandem.decision"), Some("cascade"), "{r:#?}");
    let policy = by_name(&spans, &r.trace_id, "tandem.policy");
    assert_eq!(policy.len(), 1);
    assert_eq!(policy[0].str("tandem.decision"), Some("cascade"));
    assert_eq!(policy[0].parent.as_deref(), Some(r.span_id.as_str()));
    assert!(
        mock.requests()
            .last()
            .unwrap()
            .header("traceparent")
            .unwrap()
            .contains(&r.trace_id)
    );

    // Speculative: rounds with what was drafted and accepted.
    let a = ask(&gw, "spec", false, &[]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert_eq!(r.str("tandem.decision"), Some("speculative"));
    let rounds = by_name(&spans, &r.trace_id, "speculative.round");
    assert!(!rounds.is_empty(), "{spans:#?}");
    let attempt = spans
        .iter()
        .find(|s| s.trace_id == r.trace_id && s.str("tandem.backend") == Some("spec"))
        .unwrap();
    for round in &rounds {
        assert_eq!(round.parent.as_deref(), Some(attempt.span_id.as_str()));
        let drafted = round.int("tandem.speculative.drafted").unwrap();
        let accepted = round.int("tandem.speculative.accepted").unwrap();
        assert!((0..=drafted).contains(&accepted));
    }
    let accepted: i64 = rounds
        .iter()
        .map(|s| s.int("tandem.speculative.accepted").unwrap())
        .sum();
    assert_eq!(
        accepted,
        a.usage["speculative"]["accepted"].as_i64().unwrap(),
        "{}",
        a.usage
    );
    assert!(collector.spans().iter().filter(|s| s.kind == 2).count() >= 5);
    gw.shutdown().await.unwrap();
    target.shutdown().await.unwrap();
}

#[tokio::test]
async fn prompt_and_answer_text_reach_spans_only_when_enabled() {
    let engine = local_engine().await;
    let collector = Collector::start().await.unwrap();
    let mock = mock().await;
    let otlp = format!(
        "[observability.otlp]\nendpoint = \"{}\"\nflush_interval_ms = 50\ncapture_content = true\n",
        collector.endpoint()
    );
    let gw = start(config(&mock, &otlp, ""), &engine).await;
    let a = ask(&gw, "gpt", false, &[]).await;
    let id = a.header("x-request-id").to_owned();
    let spans = wait_root(&collector, &id).await;
    let r = root(&spans, &id).unwrap();
    assert!(
        r.str("gen_ai.input.messages").unwrap().contains(PROMPT),
        "{r:#?}"
    );
    assert!(!r.str("gen_ai.output.messages").unwrap().is_empty());
    gw.shutdown().await.unwrap();
}

/// Redis for the tests, when the test script started one.
fn test_redis() -> Option<String> {
    let url = std::env::var("TANDEM_TEST_REDIS_URL").ok();
    if url.is_none() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipped: TANDEM_TEST_REDIS_URL is not set (scripts/test.sh starts Redis)");
        }
    }
    url
}

#[tokio::test]
async fn the_dashboard_sums_every_replica_sharing_redis() {
    let Some(redis) = test_redis() else { return };
    let mock = mock().await;
    let prefix = format!("tandem-ui-test-{}", std::process::id());
    let text = |admin: bool| {
        format!(
            "redis_url = \"{redis}\"\n[server]\nlisten = \"127.0.0.1:0\"\n{}\n[store]\nprefix = \"{prefix}\"\n\
             [backends.mini]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key_env = \"MOCK_OPENAI_KEY\"\n\
             models = {{ \"gpt\" = \"gpt-4o-mini\" }}\nprice = {{ input = 1.0, output = 2.0 }}\n",
            if admin {
                "admin_listen = \"127.0.0.1:0\"\nadmin_key_env = \"ADMIN_KEY\""
            } else {
                ""
            },
            mock.base_url()
        )
    };
    let env = MapEnv::from_pairs([("MOCK_OPENAI_KEY", "sk-mock"), ("ADMIN_KEY", "adm")]);
    let options = || GatewayOptions {
        local: LocalLoad::Offline,
        quiet: true,
        ..GatewayOptions::default()
    };
    let a = Gateway::start(Config::from_toml_str(&text(true), &env).unwrap(), options())
        .await
        .unwrap();
    let b = Gateway::start(
        Config::from_toml_str(&text(false), &env).unwrap(),
        options(),
    )
    .await
    .unwrap();
    for (gw, n) in [(&a, 2), (&b, 3)] {
        for _ in 0..n {
            let r = client()
                .post(format!("{}/v1/chat/completions", gw.url()))
                .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let want_paid = a.state.observer.ledger.totals().paid + b.state.observer.ledger.totals().paid;
    // Each replica shares its snapshot every 2 s; wait for b's to reach a's dashboard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let summary = loop {
        let s: Value = client()
            .get(format!("{}/ui/api/summary", a.admin_url().unwrap()))
            .bearer_auth("adm")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["totals"]["requests"] == 5 || tokio::time::Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(summary["totals"]["requests"], 5, "{summary}");
    assert_eq!(summary["replicas"], 2, "{summary}");
    assert_eq!(summary["window"]["totals"]["requests"], 5);
    assert_eq!(summary["recent"].as_array().unwrap().len(), 5);
    let paid = summary["totals"]["paid"].as_f64().unwrap();
    assert!((paid - want_paid).abs() < 1e-12, "{paid} vs {want_paid}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
