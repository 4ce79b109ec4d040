//! The learned routing policy end to end: Tandem with the real local model in front of the mock
//! cloud upstream. Decisions and their `x-tandem-route` explanation, placement headers and
//! rules, the JSONL decision log, feedback reaching the bandit, the bandit surviving a restart,
//! and cascades (kept local and escalated, whole and streamed).

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
// The helpers below are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockHandle, MockUpstream};
use tandem_local_model::Engine;
use tandem_tests::{client, parse_sse, streamed_text};

async fn engine() -> Engine {
    tandem_tests::local_engine().await
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tandem-routing-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env() -> MapEnv {
    MapEnv::from_pairs([("MOCK_OPENAI_KEY", "sk-mock")])
}

/// Backends: the local model and an OpenAI-compatible cloud on the mock.
fn config(mock: &MockHandle, extra: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[backends.local]
kind = "local"

[backends.openai]
kind = "openai-compatible"
base_url = "{}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt" = "gpt-4o-mini" }}
price = {{ input = 1.0, output = 2.0 }}
{extra}
"#,
        mock.base_url()
    );
    Config::from_toml_str(&text, &env()).unwrap()
}

async fn try_start(config: Config, engine: &Engine) -> anyhow::Result<Gateway> {
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine.clone()),
        quiet: true,
        ..GatewayOptions::default()
    };
    Ok(Gateway::start(config, options).await?)
}

async fn start(config: Config, engine: &Engine) -> Gateway {
    try_start(config, engine).await.unwrap()
}

struct Answer {
    status: u16,
    route: String,
    request_id: String,
    body: Value,
    text: String,
}

async fn ask(gw: &Gateway, model: &str, headers: &[(&str, &str)], stream: bool) -> Answer {
    let body = json!({"model": model, "stream": stream, "max_tokens": 12, "temperature": 0,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let mut r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (route, request_id) = (header("x-tandem-route"), header("x-request-id"));
    let raw = r.text().await.unwrap();
    let (body, text) = if stream {
        let events = parse_sse(&raw);
        assert_eq!(
            events.last().map(|e| e.data.as_str()),
            Some("[DONE]"),
            "{raw}"
        );
        let text = streamed_text(&events);
        (Value::String(raw), text)
    } else {
        let body: Value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        let text = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (body, text)
    };
    Answer {
        status,
        route,
        request_id,
        body,
        text,
    }
}

/// The `q=` field of an `x-tandem-route` header.
fn predicted_quality(route: &str) -> f64 {
    route
        .split("; ")
        .find_map(|p| p.strip_prefix("q="))
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no q= in {route}"))
}

async fn post_feedback(gw: &Gateway, body: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/feedback", gw.url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the decision log {} never reached {n} lines",
        path.display()
    );
}

/// Routes whose weights make the policy's choice certain: `prefer-cloud` ignores cost and
/// latency (the stronger cloud wins), `prefer-local` prices the cloud out.
const POLICY_ROUTES: &str = r#"
[routes."prefer-cloud"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 0.0
mu_per_s = 0.0

[routes."prefer-local"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 1000000.0
mu_per_s = 0.0
"#;

#[tokio::test]
async fn learned_routes_rules_log_feedback_and_restart() {
    let engine = engine().await;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let dir = scratch_dir("policy");
    let log_path = dir.join("decisions.jsonl");
    let bandit_path = dir.join("bandit.json");
    let extra = format!(
        "{POLICY_ROUTES}\n[router]\nencoder = false\nbandit_half_weight = 1.0\ndecision_log = \"{}\"\nbandit_path = \"{}\"\n",
        log_path.display(),
        bandit_path.display()
    );
    let gw = start(config(&mock, &extra), &engine).await;

    // The policy's own choices, explained.
    let cloud = ask(&gw, "prefer-cloud", &[], false).await;
    assert_eq!(cloud.status, 200, "{}", cloud.body);
    assert!(
        cloud.route.starts_with("cloud:openai; p="),
        "{}",
        cloud.route
    );
    assert!(cloud.route.contains("reason=utility"), "{}", cloud.route);
    assert!(!cloud.text.is_empty());
    let local = ask(&gw, "prefer-local", &[], false).await;
    assert_eq!(local.status, 200, "{}", local.body);
    assert!(local.route.starts_with("local:local; "), "{}", local.route);
    assert!(!local.text.is_empty());

    // Placement headers override the learned choice; a bad value is an OpenAI-shaped 400.
    let forced = ask(
        &gw,
        "prefer-cloud",
        &[("x-tandem-placement", "local-only")],
        false,
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert!(
        forced.route.starts_with("local:local; "),
        "{}",
        forced.route
    );
    assert!(
        forced.route.contains("rule:local-only(header)"),
        "{}",
        forced.route
    );
    let forced = ask(
        &gw,
        "prefer-local",
        &[("x-tandem-placement", "cloud-only")],
        true,
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert!(
        forced.route.starts_with("cloud:openai; "),
        "{}",
        forced.route
    );
    assert!(!forced.text.is_empty());
    let bad = ask(
        &gw,
        "prefer-cloud",
        &[("x-tandem-placement", "moon")],
        false,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body["error"]["type"], "invalid_request_error",
        "{}",
        bad.body
    );
    assert_eq!(bad.body["error"]["param"], "x-tandem-placement");
    let bad = ask(
        &gw,
        "prefer-cloud",
        &[("x-tandem-latency-slo-ms", "-3")],
        false,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Placement holds on fixed routes and on /v1/completions too: `gpt` is the cloud backend's
    // own model, so local-only leaves nothing to serve it.
    let kept = ask(&gw, "gpt", &[("x-tandem-placement", "local-only")], false).await;
    assert_eq!(kept.status, 400, "{}", kept.body);
    assert_eq!(
        kept.body["error"]["code"], "no_backend_allowed",
        "{}",
        kept.body
    );
    let r = client()
        .post(format!("{}/v1/completions", gw.url()))
        .header("x-tandem-placement", "local-only")
        .json(&json!({"model": "gpt", "prompt": "Hello", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_backend_allowed", "{body}");
    let local_fixed = ask(&gw, "local", &[("x-tandem-placement", "local-only")], false).await;
    assert_eq!(local_fixed.status, 200, "{}", local_fixed.body);

    // One JSON line per decided request, naming its request id.
    let lines = wait_for_lines(&log_path, 4).await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["request_id"], cloud.request_id.as_str());
    assert_eq!(lines[0]["choice"]["kind"], "cloud");
    assert_eq!(lines[0]["answered_by"], "openai");
    assert_eq!(lines[1]["choice"]["kind"], "local");
    assert!(lines[0]["explanation"]["predicted_quality"].is_number());

    // Feedback reaches the bandit: a zero reward lowers the cloud's predicted quality for the
    // same prompt.
    let q_before = predicted_quality(&cloud.route);
    let (status, body) = post_feedback(
        &gw,
        &format!(r#"{{"request_id":"{}","score":0.0}}"#, cloud.request_id),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "openai");
    // One update per answer: a repeat is refused, not piled onto the arm.
    let (status, body) = post_feedback(
        &gw,
        &format!(r#"{{"request_id":"{}","score":0.0}}"#, cloud.request_id),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already applied")),
        "{body}"
    );
    let again = ask(&gw, "prefer-cloud", &[], false).await;
    let q_after = predicted_quality(&again.route);
    assert!(q_after < q_before - 0.05, "{q_before} -> {q_after}");
    let (status, body) = post_feedback(&gw, r#"{"request_id":"nope","thumbs":"up"}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].is_string());
    let (status, body) = post_feedback(&gw, "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // The bandit is saved on shutdown and restored by the next start.
    gw.shutdown().await.unwrap();
    assert!(bandit_path.exists());
    let gw = start(config(&mock, &extra), &engine).await;
    let restored = ask(&gw, "prefer-cloud", &[], false).await;
    let q_restored = predicted_quality(&restored.route);
    assert!(
        (q_restored - q_after).abs() < 1e-3,
        "{q_after} before the restart, {q_restored} after"
    );
    gw.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every decision on these routes is a cascade (weights 0, a band wider than any utility gap);
/// a threshold of 0 always keeps the local answer and 1 always escalates.
const CASCADE_ROUTES: &str = r#"
[routes."cascade-keep"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 0.0
mu_per_s = 0.0
cascade_threshold = 0.0

[routes."cascade-escalate"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 0.0
mu_per_s = 0.0
cascade_threshold = 1.0

[router]
cascade_band = 1.0
cascade_tokens = 4
"#;

#[tokio::test]
async fn completions_follow_the_learned_policy_and_are_logged() {
    let engine = engine().await;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let dir = scratch_dir("completions");
    let log_path = dir.join("decisions.jsonl");
    let extra = format!(
        "{POLICY_ROUTES}\n[router]\nencoder = false\ndecision_log = \"{}\"\n",
        log_path.display()
    );
    let gw = start(config(&mock, &extra), &engine).await;
    // A legacy completion is planned like a chat request: the policy's choice, explained.
    for (model, route_starts, stream) in [
        ("prefer-cloud", "cloud:openai; p=", false),
        ("prefer-local", "local:local; ", false),
        ("prefer-local", "local:local; ", true),
    ] {
        let r = client()
            .post(format!("{}/v1/completions", gw.url()))
            .json(
                &json!({"model": model, "prompt": "The capital of France is", "max_tokens": 4,
                          "temperature": 0, "stream": stream}),
            )
            .send()
            .await
            .unwrap();
        let route = r.headers()["x-tandem-route"].to_str().unwrap().to_owned();
        assert_eq!(r.status(), 200, "{route}");
        assert!(route.starts_with(route_starts), "{route}");
        let raw = r.text().await.unwrap();
        if stream {
            let events = parse_sse(&raw);
            assert_eq!(
                events.last().map(|e| e.data.as_str()),
                Some("[DONE]"),
                "{raw}"
            );
        } else {
            let body: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(body["object"], "text_completion", "{body}");
        }
    }
    // Each decision is in the log with who answered.
    let lines = wait_for_lines(&log_path, 3).await;
    let answered: Vec<&str> = lines
        .iter()
        .map(|l| l["answered_by"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(answered, ["openai", "local", "local"], "{lines:?}");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn cascade_keeps_or_escalates_and_streams_no_retracted_tokens() {
    let engine = engine().await;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let gw = start(config(&mock, CASCADE_ROUTES), &engine).await;
    let upstream_calls = || mock.requests().len();

    // The cloud's answer and the local model's own greedy answer, for comparison.
    let cloud_text = ask(&gw, "gpt", &[], false).await.text;
    let local_text = ask(&gw, "local", &[], false).await.text;
    assert!(!cloud_text.is_empty() && !local_text.is_empty());
    assert_ne!(cloud_text, local_text);

    let calls = upstream_calls();
    let kept = ask(&gw, "cascade-keep", &[], false).await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert!(
        kept.route.starts_with("cascade:local>openai@0.00"),
        "{}",
        kept.route
    );
    assert!(kept.route.contains("escalated=false"), "{}", kept.route);
    assert_eq!(kept.text, local_text);
    assert_eq!(
        upstream_calls(),
        calls,
        "a kept cascade never calls the cloud"
    );

    let escalated = ask(&gw, "cascade-escalate", &[], false).await;
    assert_eq!(escalated.status, 200, "{}", escalated.body);
    assert!(
        escalated.route.contains("escalated=true"),
        "{}",
        escalated.route
    );
    assert_eq!(escalated.text, cloud_text);
    assert_eq!(upstream_calls(), calls + 1);

    // Streamed: the client sees only the answer that stands, never the held-back local tokens.
    let streamed = ask(&gw, "cascade-escalate", &[], true).await;
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.route.contains("escalated=true"),
        "{}",
        streamed.route
    );
    assert_eq!(streamed.text, cloud_text);
    // Every content delta came from the cloud: nothing of the local start was sent.
    let streamed = ask(&gw, "cascade-keep", &[], true).await;
    assert!(
        streamed.route.contains("escalated=false"),
        "{}",
        streamed.route
    );
    assert_eq!(streamed.text, local_text);
    assert!(!streamed.body.as_str().unwrap().contains("logprobs\":{"));

    // Each cascade decision is counted by choice.
    let metrics = client()
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tandem_route_decisions_total{choice="cascade"} 4"#),
        "{metrics}"
    );
    gw.shutdown().await.unwrap();
}

/// Cascade routes judged on the whole local answer by the answer check.
const ANSWER_ROUTES: &str = r#"
[routes."cascade-answer"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 0.0
mu_per_s = 0.0
"#;

/// An answer check whose score is the same for every answer: σ(bias).
fn constant_answer_check(dir: &Path, bias: f32) -> PathBuf {
    let n = tandem_router_policy::ANSWER_FEATURES.len();
    let check = json!({
        "version": 1,
        "trained_on": "test",
        "features": tandem_router_policy::ANSWER_FEATURES,
        "share_thresholds": [[0.0, 1.0], [1.0, 0.0]],
        "model": {"kind": "logistic", "norm": {"mean": vec![0.0; n], "std": vec![1.0; n]},
                  "w": vec![0.0; n], "b": bias},
    });
    let path = dir.join(format!("answer-check-{bias}.json"));
    std::fs::write(&path, check.to_string()).unwrap();
    path
}

#[tokio::test]
async fn cascade_judged_on_the_whole_answer_keeps_or_escalates() {
    let engine = engine().await;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let dir = scratch_dir("answer-check");

    // The shipped check with nothing to escalate keeps the real local answer, and says its score.
    let keep = format!(
        "{ANSWER_ROUTES}[router]\ncascade_band = 1.0\ncascade_judge = \"answer\"\ncascade_escalate_share = 0.0\n"
    );
    let gw = start(config(&mock, &keep), &engine).await;
    let local_text = ask(&gw, "local", &[], false).await.text;
    let calls = mock.requests().len();
    for stream in [false, true] {
        let kept = ask(&gw, "cascade-answer", &[], stream).await;
        assert_eq!(kept.status, 200, "{}", kept.body);
        assert!(kept.route.contains("escalated=false"), "{}", kept.route);
        assert!(kept.route.contains("; answer_check=0."), "{}", kept.route);
        assert_eq!(kept.text, local_text);
    }
    assert_eq!(
        mock.requests().len(),
        calls,
        "a kept answer never calls the cloud"
    );
    gw.shutdown().await.unwrap();

    // A check that scores every answer high escalates, and the client sees only the cloud's.
    let path = constant_answer_check(&dir, 10.0);
    let escalate = format!(
        "{ANSWER_ROUTES}[router]\ncascade_band = 1.0\ncascade_judge = \"answer\"\nanswer_check_path = \"{}\"\ncascade_escalate_share = 0.5\n",
        path.display()
    );
    let gw = start(config(&mock, &escalate), &engine).await;
    let cloud_text = ask(&gw, "gpt", &[], false).await.text;
    for stream in [false, true] {
        let escalated = ask(&gw, "cascade-answer", &[], stream).await;
        assert_eq!(escalated.status, 200, "{}", escalated.body);
        assert!(
            escalated.route.contains("escalated=true"),
            "{}",
            escalated.route
        );
        assert!(
            escalated.route.contains("; answer_check=1.000"),
            "{}",
            escalated.route
        );
        assert_eq!(escalated.text, cloud_text);
    }
    gw.shutdown().await.unwrap();

    // A file that does not match this build's features refuses to start.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"version":1}"#).unwrap();
    let text = escalate.replace(&path.display().to_string(), &bad.display().to_string());
    let err = try_start(config(&mock, &text), &engine).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("answer check")),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_gateway_stopped_at_once_waits_for_its_encoder_to_load() {
    let root = tandem_router_policy::encoder::default_cache_root();
    let files = tandem_router_policy::encoder::EncoderConfig::from_cache_root(&root).check_files();
    if let Err(e) = files {
        eprintln!("skipping: {e}");
        return;
    }
    let engine = engine().await;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let gw = start(config(&mock, POLICY_ROUTES), &engine).await;
    let policy = gw.state.policy.clone().unwrap();
    // The encoder loads on its own thread (well over the microseconds this takes); a process that
    // exited with that thread inside ONNX Runtime could crash in its exit handlers.
    gw.shutdown().await.unwrap();
    assert!(
        policy.has_encoder(),
        "shutdown returned with the encoder still loading"
    );
}
