//! Resilience end to end against the fault-injecting mock: each try's own first-token budget,
//! a whole JSON answer to a stream request, rate limits and timeouts that say what they are,
//! bodies that are not JSON, the circuit breaker, retries with backoff, and a bounded chaos run
//! in which every request ends in a complete answer or a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tandem_lab::mock::MockConfig;
use tandem_tests::{Harness, parse_sse, streamed_text};

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "Hello there"}]})
}

fn message(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 64,
           "messages": [{"role": "user", "content": "Hello there"}]})
}

/// Backends on the mock whose model names pick a fault, and routes over them. Route names avoid
/// the words the mock reads as faults.
fn faults(extra: &str) -> impl FnOnce(&tandem_lab::mock::MockHandle) -> String {
    let extra = extra.to_owned();
    move |mock| {
        let base = mock.base_url();
        format!(
            r#"
{extra}

[backends.hanging]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "primary" = "hang", "primary-msg" = "hang", "all-hang" = "hang" }}

[backends.silent]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "primary" = "delay-5000", "secondary" = "delay-5000" }}

[backends.jsonish]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "jsonish" = "whole", "jsonish-fn" = "whole-tool", "jsonish-msg" = "whole" }}

[backends.limited]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "limited" = "ratelimit-bare", "limited-msg" = "ratelimit-bare" }}

[backends.sluggish]
kind = "openai-compatible"
base_url = "{base}"
request_timeout_ms = 200
models = {{ "sluggish" = "delay-3000", "sluggish-msg" = "delay-3000" }}

[backends.failing]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "breaking" = "status-503", "breaking-only" = "status-503" }}

[backends.wobbly]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "wobbly" = "flaky" }}

[backends.east]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "spread" = "delay-300", "hedged" = "delay-1500" }}

[backends.west]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "spread" = "gpt-4o-mini", "hedged" = "gpt-4o-mini" }}

[routes."spread"]
backends = ["east", "west"]
balance = "p2c"

[routes."hedged"]
backends = ["east", "west"]
hedge = true
hedge_after_ms = 150

[routes."primary"]
backends = ["hanging", "openai"]

[routes."primary-msg"]
backends = ["hanging", "anthropic"]

[routes."secondary"]
backends = ["silent", "openai"]

[routes."all-hang"]
backends = ["hanging"]

[routes."breaking"]
backends = ["failing", "openai"]

[routes."breaking-only"]
backends = ["failing"]
"#
        )
    }
}

async fn start(extra: &str) -> Harness {
    Harness::start_around(
        MockConfig {
            record: true,
            ..MockConfig::default()
        },
        faults(extra),
    )
    .await
    .unwrap()
}

fn route(headers: &reqwest::header::HeaderMap) -> String {
    headers["x-tandem-route"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stalled_first_backend_falls_back_within_its_own_first_token_budget() {
    let h = start("[limits]\nfirst_token_timeout_ms = 400").await;
    // Headers and then nothing: the stall costs the first try's budget, and the second backend
    // answers with a budget of its own.
    let (status, headers, events) = h
        .post_stream("/v1/chat/completions", &chat("primary", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!streamed_text(&events).is_empty(), "{events:?}");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let r = route(&headers);
    assert!(
        r.starts_with("openai; route primary; fallback after hanging failed (first token timeout)"),
        "{r}"
    );
    // No headers at all in time: the same.
    let (status, headers, events) = h
        .post_stream("/v1/chat/completions", &chat("secondary", true))
        .await
        .unwrap();
    assert_eq!(status, 200, "{events:?}");
    assert!(route(&headers).contains("fallback after silent failed (first token timeout)"));
    // And on the Anthropic API.
    let (status, headers, events) = h
        .post_stream("/v1/messages", &message("primary-msg", true))
        .await
        .unwrap();
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop"),
        "{events:?}"
    );
    assert!(route(&headers).starts_with("anthropic;"));
    // With nowhere to go, the stall is a 504 that says so.
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("all-hang", true))
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "first_token_timeout");
    assert!(route(&headers).ends_with("failed (first token timeout)"));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_fallbacks_total{backend="hanging"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_whole_json_answer_to_a_stream_request_becomes_the_stream() {
    let h = start("").await;
    let (status, _, whole) = h
        .post("/v1/chat/completions", &chat("gpt", false))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("jsonish", true))
        .await
        .unwrap();
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(
        streamed_text(&events),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let finish = events.iter().find_map(|e| {
        e.json()["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(finish.as_deref(), Some("stop"));
    // A tool call comes through as streamed tool-call deltas.
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("jsonish-fn", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let call = events
        .iter()
        .find(|e| e.json()["choices"][0]["delta"]["tool_calls"].is_array())
        .expect("a tool call delta");
    assert!(call.json()["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].is_string());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // An Anthropic client gets its own event shapes from it.
    let (status, _, events) = h
        .post_stream("/v1/messages", &message("jsonish-msg", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        events.first().unwrap().event.as_deref(),
        Some("message_start")
    );
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
}

#[tokio::test]
async fn a_rate_limit_without_retry_after_is_typed_and_gets_one() {
    let h = start("").await;
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("limited", false))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    // OpenAI's own 429 names what ran out; that type is kept (any other becomes
    // `rate_limit_error`, see the gateway's error tests).
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 1);
    assert!(route(&headers).ends_with("failed (status 429)"));
    let (status, headers, body) = h
        .post("/v1/messages", &message("limited-msg", false))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn an_upstream_timeout_reads_the_same_on_both_apis() {
    let h = start("").await;
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("sluggish", false))
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["type"], "timeout_error", "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert!(
        route(&headers).ends_with("failed (timed out)"),
        "{headers:?}"
    );
    let (status, _, body) = h
        .post("/v1/messages", &message("sluggish-msg", false))
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["type"], "timeout_error", "{body}");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_in_the_apis_shape() {
    let h = start("").await;
    let send = |path: &'static str, content_type: Option<&'static str>| {
        let mut r = h
            .client
            .post(h.url(path))
            .body(chat("gpt", false).to_string());
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = send("/v1/chat/completions", Some("text/plain")).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text/plain"),
        "{body}"
    );
    let (status, body) = send("/v1/messages", Some("application/x-www-form-urlencoded")).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // JSON with a charset, and no content type at all, are read as JSON.
    let (status, body) = send(
        "/v1/chat/completions",
        Some("application/json; charset=utf-8"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send("/v1/chat/completions", None).await;
    assert_eq!(status, 200, "{body}");
}

fn sent_to(h: &Harness, upstream_model: &str) -> usize {
    h.mock
        .requests()
        .iter()
        .filter(|r| r.json().is_some_and(|b| b["model"] == upstream_model))
        .count()
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_skips_the_backend() {
    let h = start("[resilience]\nbreaker_failures = 3\nbreaker_open_ms = 600").await;
    for _ in 0..3 {
        let (status, headers, _) = h
            .post("/v1/chat/completions", &chat("breaking", false))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(route(&headers).contains("fallback after failing failed (status 503)"));
    }
    assert_eq!(sent_to(&h, "status-503"), 3);
    // Open: the backend is skipped at once, without a call.
    let (status, headers, _) = h
        .post("/v1/chat/completions", &chat("breaking", false))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        route(&headers).contains("skipped failing (circuit open)"),
        "{headers:?}"
    );
    assert_eq!(sent_to(&h, "status-503"), 3);
    // Alone on its route, an open breaker is a 503 with the wait.
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("breaking-only", false))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "circuit_open");
    assert_eq!(headers["retry-after"], "1");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_breaker_opens_total{backend="failing"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tandem_breaker_state{backend="failing"} 1"#));
    // After the open period one probe goes; it fails, and the breaker opens again for longer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, _) = h
        .post("/v1/chat/completions", &chat("breaking", false))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(sent_to(&h, "status-503"), 4);
    let metrics = h.metrics().await;
    assert!(metrics.contains(r#"tandem_breaker_opens_total{backend="failing"} 2"#));
}

#[tokio::test]
async fn retries_with_backoff_recover_a_flaky_backend() {
    let h = start("[resilience]\nretries = 2\nretry_backoff_ms = 20").await;
    let mut retried = 0;
    for _ in 0..4 {
        let (status, headers, body) = h
            .post("/v1/chat/completions", &chat("wobbly", false))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        if route(&headers).contains("retried wobbly (status 503)") {
            retried += 1;
        }
    }
    // Every other upstream call fails: each request needs at most one retry.
    assert!(retried >= 2, "{retried}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"tandem_retries_total{{backend="wobbly"}} {retried}"#
        )),
        "{metrics}"
    );
    // A stream is retried the same way before its first byte.
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("wobbly", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

/// Requests over every fault at once, a few at a time: each ends in a complete answer or a clear
/// error, none outlives its timeout, none is answered twice, and the counters add up.
#[tokio::test]
async fn chaos_every_request_gets_a_complete_answer_or_a_clear_error() {
    let h = start(
        "[limits]\nrequest_timeout_ms = 3000\nfirst_token_timeout_ms = 300\n[resilience]\nretries = 1\nretry_backoff_ms = 10",
    )
    .await;
    let models = [
        "gpt",
        "gpt-cut",
        "gpt-error",
        "gpt-ratelimit",
        "gpt-stall",
        "gpt-flaky",
        "primary",
        "secondary",
        "jsonish",
        "limited",
        "sluggish",
        "breaking",
        "with-fallback",
        "down-only",
        "claude",
        "claude-cut",
        "claude-overloaded",
    ];
    let mut tasks = Vec::new();
    for i in 0..68 {
        let model = models[i % models.len()];
        let stream = i % 2 == 1;
        let client = h.client.clone();
        let url = h.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = client
                .post(url)
                .json(&chat(model, stream))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let route = tandem_tests::route_of(&r);
            let is_sse = r
                .headers()
                .get("content-type")
                .is_some_and(|t| t.to_str().unwrap().starts_with("text/event-stream"));
            let text = r.text().await.unwrap();
            (
                model,
                stream,
                status,
                route,
                is_sse,
                text,
                started.elapsed(),
            )
        }));
        if tasks.len() % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut answered = 0;
    let (mut fallbacks, mut retries) = (0, 0);
    for task in tasks {
        let (model, stream, status, route, is_sse, text, took) = task.await.unwrap();
        fallbacks += route.matches("; fallback after ").count();
        retries += route.matches("; retried ").count();
        assert!(took < Duration::from_millis(4500), "{model} took {took:?}");
        if status == 200 && is_sse {
            let events = parse_sse(&text);
            let last = events.last().expect("a stream is never empty");
            // Complete ([DONE]) or ended by an error event: never a silent end.
            assert!(
                last.data == "[DONE]" || last.json()["error"].is_object(),
                "{model}: {text}"
            );
            assert_eq!(
                events.iter().filter(|e| e.data == "[DONE]").count(),
                usize::from(last.data == "[DONE]"),
                "{model}: answered once"
            );
        } else if status == 200 {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert!(body["choices"][0]["message"].is_object(), "{model}: {text}");
            assert!(!stream, "{model}: a stream request answered with JSON");
        } else {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(status >= 400, "{model}: {status}");
            assert!(
                body["error"]["message"].is_string(),
                "{model}: {status} {text}"
            );
            assert!(body["error"]["type"].is_string(), "{model}: {text}");
        }
        answered += 1;
    }
    assert_eq!(answered, 68);
    let metrics = h.metrics().await;
    let total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tandem_requests_total{endpoint=\"chat\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 68, "{metrics}");
    // Every fallback and retry a client was told of is counted, and nothing else.
    let sum = |name: &str| -> usize {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    assert_eq!(sum("tandem_fallbacks_total{"), fallbacks, "{metrics}");
    assert_eq!(sum("tandem_retries_total{"), retries, "{metrics}");
    assert!(retries > 0 && fallbacks > 0, "the run exercised both");
}

/// On shutdown, streams in flight run to their end within the grace period, one that would run
/// on holds shutdown no longer than that (the `tandem serve` process then exits, which closes
/// it), and the listener takes no new request.
#[tokio::test]
async fn shutdown_finishes_streams_in_flight_within_the_grace_period() {
    let h = Harness::start_with(
        "[resilience]\nshutdown_grace_ms = 1500",
        MockConfig {
            record: false,
            slow_delay: Duration::from_millis(50),
        },
    )
    .await
    .unwrap();
    let url = h.url("/v1/chat/completions");
    let send = |model: &'static str| {
        let request = h.client.post(url.clone()).json(&chat(model, true));
        tokio::spawn(async move {
            match request.send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => format!("error: {e}"),
            }
        })
    };
    let slow = send("gpt-slow");
    let stalled = send("gpt-stall");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Harness {
        gateway, client, ..
    } = h;
    let started = std::time::Instant::now();
    gateway.shutdown().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_millis(3000),
        "the stalled stream held shutdown to the grace period, no longer: {took:?}"
    );
    let slow = slow.await.unwrap();
    assert!(slow.trim_end().ends_with("data: [DONE]"), "{slow}");
    assert!(!stalled.is_finished(), "the stalled stream never completed");
    stalled.abort();
    assert!(
        client
            .post(url)
            .json(&chat("gpt", false))
            .send()
            .await
            .is_err()
    );
}

/// Two deployments of one model, one slow: power-of-two-choices on peak-EWMA latency sends
/// almost everything to the fast one after the first calls.
#[tokio::test]
async fn p2c_on_peak_ewma_prefers_the_faster_deployment() {
    let h = start("").await;
    let mut by_backend = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let (status, headers, _) = h
            .post("/v1/chat/completions", &chat("spread", false))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let r = route(&headers);
        assert!(r.contains("route spread; balanced (p2c)"), "{r}");
        *by_backend
            .entry(r.split(';').next().unwrap().to_owned())
            .or_default() += 1;
    }
    let slow = by_backend.get("east").copied().unwrap_or(0);
    assert!(slow <= 3, "{by_backend:?}");
    assert_eq!(by_backend.get("west").copied().unwrap_or(0), 30 - slow);
}

/// A hedged route sends a second try when the first is slower than its delay; the first answer
/// wins, the slow try is dropped, and only the winner is accounted.
#[tokio::test]
async fn a_slow_first_try_is_hedged_and_only_the_winner_is_accounted() {
    let h = start("").await;
    for stream in [false, true] {
        let started = std::time::Instant::now();
        let (status, headers, body) = h
            .post_stream_text(
                "/v1/chat/completions",
                &json!({"model": "hedged", "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "Hello there"}]}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "{:?}",
            started.elapsed()
        );
        let r = route(&headers);
        assert!(r.starts_with("west; route hedged; hedged on west"), "{r}");
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_hedges_total{backend="west"} 2"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"backend="east",kind="prompt""#),
        "the dropped try is never accounted: {metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_tokens_total{route="hedged",backend="west",kind="prompt"}"#),
        "{metrics}"
    );
    // Both tries reached their upstreams; the slow one was dropped before it answered.
    assert_eq!(sent_to(&h, "delay-1500"), 2);
}
