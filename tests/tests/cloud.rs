//! End to end through Tandem to the mock upstream: both wire formats and the translations between
//! them, tools, streamed usage, every error path, auth, limits, timeouts and cancellation.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_lab::mock::{Fixtures, MockConfig};
use tandem_tests::{Harness, parse_sse, read_first_chunk_and_drop, streamed_text};

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]})
}

fn message(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 64, "system": "Be brief.",
           "messages": [{"role": "user", "content": "Hello there"}]})
}

#[tokio::test]
async fn openai_chat_to_openai_backend() {
    let h = Harness::start("").await.unwrap();
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("gpt", false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The upstream's answer comes as it was sent, with the fields Tandem does not model.
    assert_eq!(body["system_fingerprint"], "fp_34a54ae93c");
    assert_eq!(body["service_tier"], "default");
    assert_eq!(body["choices"][0]["message"]["annotations"], json!([]));
    assert_eq!(
        body["usage"]["completion_tokens_details"]["accepted_prediction_tokens"],
        0
    );
    assert_eq!(body["usage"]["prompt_tokens_details"]["audio_tokens"], 0);
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("openai; route gpt")
    );
    assert!(headers.contains_key("x-request-id"));
    // The upstream got the mapped model and the key from the env source.
    let upstream = h.mock.requests().into_iter().last().unwrap();
    assert_eq!(upstream.json().unwrap()["model"], "gpt-4o-mini");
    assert_eq!(upstream.header("authorization"), Some("Bearer sk-mock"));
}

/// An Azure-style backend is called on its deployment's path with the `api-version` query and
/// the `api-key` header (no bearer token), and its answer reaches the client, whole or streamed.
#[tokio::test]
async fn azure_backend_is_called_on_its_deployment_path_with_api_key() {
    // Azure's base URL is the resource's root; the deployment path goes under it.
    let h = Harness::start_around(MockConfig::default(), tandem_tests::azure_backend)
        .await
        .unwrap();
    let expected_path = "/openai/deployments/prod-4o-mini/chat/completions?api-version=2024-10-21";

    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("gpt-azure", false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("azure; route gpt-azure"),
        "{headers:?}"
    );
    // The mock's answer, as it sent it.
    assert_eq!(body["id"], "chatcmpl-BjQ0cV3aXhQpT7kLmN2oR8sUvW4yZ");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello! How can I help you today?"
    );
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        1024
    );
    let sent = h.mock.requests();
    assert_eq!(sent.len(), 1);
    let upstream = &sent[0];
    assert_eq!(upstream.method, "POST");
    assert_eq!(upstream.path, expected_path);
    assert_eq!(upstream.header("api-key"), Some("sk-mock"));
    assert_eq!(upstream.header("authorization"), None);
    let json = upstream.json().unwrap();
    assert_eq!(json["messages"][1]["content"], "Hello there");

    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("gpt-azure", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text = streamed_text(&events);
    assert_eq!(text, "Hello! How can I help you today?");
    let upstream = h.mock.requests().into_iter().last().unwrap();
    assert_eq!(upstream.path, expected_path);
    assert_eq!(upstream.header("api-key"), Some("sk-mock"));
    assert_eq!(upstream.json().unwrap()["stream"], true);
}

#[tokio::test]
async fn openai_stream_with_usage_and_cached_tokens() {
    let h = Harness::start("").await.unwrap();
    let (status, headers, events) = h
        .post_stream("/v1/chat/completions", &chat("gpt", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text = streamed_text(&events);
    assert!(!text.is_empty());
    let usage = events
        .iter()
        .map(|e| e.json())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{usage}"
    );
    // Usage and cost were counted from the stream.
    let metrics = h.metrics().await;
    assert!(
        metrics
            .contains(r#"tandem_tokens_total{route="gpt",backend="openai",kind="cached_prompt"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_cost_dollars_total{route="gpt",backend="openai"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn openai_client_to_anthropic_backend() {
    let h = Harness::start("").await.unwrap();
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("claude", false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("anthropic")
    );
    let upstream = h.mock.requests().into_iter().last().unwrap();
    assert!(upstream.path.ends_with("/messages"), "{}", upstream.path);
    assert_eq!(upstream.header("x-api-key"), Some("ak-mock"));
    let sent = upstream.json().unwrap();
    assert_eq!(sent["model"], "claude-3-5-haiku");
    assert!(sent["system"].to_string().contains("Be brief."), "{sent}");

    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("claude", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        events
            .iter()
            .any(|e| e.json()["choices"][0]["delta"]["content"].is_string())
    );
}

#[tokio::test]
async fn anthropic_client_to_openai_backend() {
    let h = Harness::start("").await.unwrap();
    let (status, _, body) = h
        .post("/v1/messages", &message("gpt", false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["type"], "text");
    assert!(body["usage"]["input_tokens"].as_u64().is_some());
    let upstream = h.mock.requests().into_iter().last().unwrap();
    assert!(upstream.path.ends_with("/chat/completions"));
    assert_eq!(upstream.json().unwrap()["messages"][0]["role"], "system");

    let (status, _, events) = h
        .post_stream("/v1/messages", &message("gpt", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let names: Vec<_> = events.iter().filter_map(|e| e.event.clone()).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    for expected in [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

#[tokio::test]
async fn anthropic_to_anthropic_stream() {
    let h = Harness::start("").await.unwrap();
    let (status, _, events) = h
        .post_stream("/v1/messages", &message("claude", true))
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

/// The usage the mock's Anthropic text stream reports: `message_start`'s and `message_delta`'s.
fn mock_anthropic_stream_usage() -> (Value, Value) {
    let body = Fixtures::builtin().anthropic_text_stream.body();
    let events = parse_sse(&String::from_utf8_lossy(&body));
    // A missing event reads as null, which the callers' exact checks then refuse.
    let data = |name: &str| {
        events
            .iter()
            .find(|e| e.event.as_deref() == Some(name))
            .map_or(Value::Null, tandem_tests::SseEvent::json)
    };
    (
        data("message_start")["message"]["usage"].clone(),
        data("message_delta")["usage"].clone(),
    )
}

/// Polls `/metrics` until it has `line` (stream usage is recorded as the stream ends).
async fn wait_for_metric(h: &Harness, line: &str) -> String {
    let mut text = String::new();
    for _ in 0..40 {
        text = h.metrics().await;
        if text.contains(line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    text
}

/// An OpenAI client streaming from an Anthropic backend gets one final usage chunk whose
/// counts are the upstream's: cache reads and writes added into `prompt_tokens`, the reads as
/// `cached_tokens`, and `message_delta`'s output tokens.
#[tokio::test]
async fn anthropic_stream_usage_reaches_an_openai_client_with_cached_tokens() {
    let (start, end) = mock_anthropic_stream_usage();
    // What the mock reports, so the numbers below can be followed.
    assert_eq!(
        (
            &start["input_tokens"],
            &start["cache_read_input_tokens"],
            &start["cache_creation_input_tokens"],
            &end["output_tokens"]
        ),
        (&json!(21), &json!(2048), &json!(0), &json!(12))
    );
    let h = Harness::start("").await.unwrap();
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("claude", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let with_usage: Vec<Value> = events
        .iter()
        .map(|e| e.json())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(with_usage.len(), 1, "{events:?}");
    // It is the last chunk before `[DONE]`, with no choices, as OpenAI sends it.
    let chunk = &with_usage[0];
    assert_eq!(events[events.len() - 2].json(), *chunk);
    assert_eq!(chunk["object"], "chat.completion.chunk");
    assert_eq!(chunk["choices"], json!([]));
    let usage = &chunk["usage"];
    assert_eq!(usage["prompt_tokens"], 21 + 2048, "{usage}");
    assert_eq!(usage["completion_tokens"], 12, "{usage}");
    assert_eq!(usage["total_tokens"], 21 + 2048 + 12, "{usage}");
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 2048,
        "{usage}"
    );
    // The content chunks before it carry `usage: null`, as asked for with include_usage.
    assert!(
        events[..events.len() - 2]
            .iter()
            .all(|e| e.json()["usage"].is_null()),
        "{events:?}"
    );
    // The same counts were recorded for the backend.
    let line =
        r#"tandem_tokens_total{route="claude",backend="anthropic",kind="cached_prompt"} 2048"#;
    let metrics = wait_for_metric(&h, line).await;
    assert!(metrics.contains(line), "{metrics}");
    assert!(
        metrics.contains(
            r#"tandem_tokens_total{route="claude",backend="anthropic",kind="prompt"} 2069"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"tandem_tokens_total{route="claude",backend="anthropic",kind="completion"} 12"#
        ),
        "{metrics}"
    );
}

/// An Anthropic client streaming from an Anthropic backend sees the upstream's cache counts in
/// `message_start`'s usage, and the final output tokens with the same cache counts in
/// `message_delta`'s.
#[tokio::test]
async fn anthropic_stream_usage_reaches_an_anthropic_client_with_cache_fields() {
    let (start, end) = mock_anthropic_stream_usage();
    let h = Harness::start("").await.unwrap();
    let (status, _, events) = h
        .post_stream("/v1/messages", &message("claude", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let data = |name: &str| {
        let found: Vec<Value> = events
            .iter()
            .filter(|e| e.event.as_deref() == Some(name))
            .map(|e| e.json())
            .collect();
        assert_eq!(found.len(), 1, "one {name}: {events:?}");
        found[0].clone()
    };
    let started = data("message_start")["message"]["usage"].clone();
    for key in [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens",
    ] {
        assert_eq!(started[key], start[key], "{key}: {started}");
    }
    assert_eq!(
        (
            &started["input_tokens"],
            &started["cache_read_input_tokens"],
            &started["cache_creation_input_tokens"],
            &started["output_tokens"]
        ),
        (&json!(21), &json!(2048), &json!(0), &json!(1))
    );
    let delta = data("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let ended = &delta["usage"];
    assert_eq!(ended["output_tokens"], end["output_tokens"], "{ended}");
    assert_eq!(ended["output_tokens"], 12, "{ended}");
    // The input counts are repeated here (newer Anthropic API versions send them too), unchanged.
    assert_eq!(ended["input_tokens"], 21, "{ended}");
    assert_eq!(ended["cache_read_input_tokens"], 2048, "{ended}");
    assert_eq!(ended["cache_creation_input_tokens"], 0, "{ended}");
}

#[tokio::test]
async fn tool_calls_both_ways() {
    let h = Harness::start("").await.unwrap();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut req = chat("gpt-tool", false);
    req["tools"] = tools.clone();
    req["tool_choice"] = json!("auto");
    let (status, _, body) = h.post("/v1/chat/completions", &req).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["function"]["name"].is_string());
    let upstream = h
        .mock
        .requests()
        .into_iter()
        .last()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(upstream["tools"][0]["function"]["name"], "get_weather");

    // OpenAI client, Anthropic backend: tool_use comes back as tool_calls.
    let mut req = chat("claude-tool", true);
    req["tools"] = tools;
    let (status, _, events) = h.post_stream("/v1/chat/completions", &req).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        events
            .iter()
            .any(|e| e.json()["choices"][0]["delta"]["tool_calls"].is_array()),
        "{events:?}"
    );
    let upstream = h
        .mock
        .requests()
        .into_iter()
        .last()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(upstream["tools"][0]["name"], "get_weather");

    // Anthropic client, OpenAI backend: tool_calls come back as tool_use blocks.
    let mut req = message("gpt-tool", false);
    req["tools"] = json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]);
    let (status, _, body) = h.post("/v1/messages", &req).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "tool_use");
    assert!(
        body["content"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "tool_use")
    );
}

/// A tool call streamed by an OpenAI-format backend reaches an Anthropic client as Anthropic's
/// events, each framed `event: X\ndata: {...}\n\n`: a `tool_use` block start with the call's id
/// and name, `input_json_delta`s that join into the arguments, the block's stop, and a
/// `message_delta` with stop reason `tool_use`.
#[tokio::test]
async fn streamed_openai_tool_call_reaches_an_anthropic_client_as_tool_use_events() {
    let h = Harness::start("").await.unwrap();
    let mut req = message("gpt-tool", true);
    req["tools"] = json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]);
    let (status, headers, text) = h.post_stream_text("/v1/messages", &req).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The upstream was asked to stream, with the tool in OpenAI's shape.
    let sent = h.mock.requests().into_iter().last().unwrap();
    assert!(sent.path.ends_with("/chat/completions"), "{}", sent.path);
    let sent = sent.json().unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    // Every event is one `event:` line naming its data's type, one `data:` line, a blank line.
    assert!(text.ends_with("\n\n"), "{text:?}");
    let mut events = Vec::new();
    for block in text.strip_suffix("\n\n").unwrap().split("\n\n") {
        let lines: Vec<&str> = block.split('\n').collect();
        assert_eq!(lines.len(), 2, "{block:?}");
        let name = lines[0].strip_prefix("event: ").expect(block);
        let data: Value =
            serde_json::from_str(lines[1].strip_prefix("data: ").expect(block)).expect(block);
        assert_eq!(data["type"], name, "{block:?}");
        events.push((name.to_owned(), data));
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    // The mock streams the arguments in seven pieces, each passed on as one delta.
    let pieces = [
        r#"{""#, "location", r#"":""#, "Paris", ",", " France", r#""}"#,
    ];
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", pieces.len()));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected, "{text}");

    let start = &events[0].1["message"];
    assert_eq!(
        (&start["type"], &start["role"], &start["content"]),
        (&json!("message"), &json!("assistant"), &json!([]))
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "call_Qx7mVb2KdLr9sT4wYz1Nc8Pe", "name": "get_weather", "input": {}}})
    );
    let deltas = &events[2..2 + pieces.len()];
    for ((_, d), piece) in deltas.iter().zip(pieces) {
        assert_eq!(
            *d,
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": piece}})
        );
    }
    let joined: String = deltas
        .iter()
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&joined).unwrap(),
        json!({"location": "Paris, France"})
    );
    assert_eq!(
        events[2 + pieces.len()].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    let delta = &events[3 + pieces.len()].1;
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "tool_use", "stop_sequence": null})
    );
    // The usage the backend reported at the end of its stream.
    assert_eq!(
        (
            &delta["usage"]["input_tokens"],
            &delta["usage"]["output_tokens"]
        ),
        (&json!(82), &json!(17)),
        "{delta}"
    );
    assert_eq!(events.last().unwrap().1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn client_errors_are_shaped_and_never_panic() {
    let h = Harness::start("").await.unwrap();
    let (status, body) = h
        .post_raw("/v1/chat/completions", "{not json")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = h
        .post_raw("/v1/chat/completions", r#"{"model":"gpt","messages":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("messages"),
        "{body}"
    );
    let (status, _, body) = h
        .post("/v1/chat/completions", &chat("no-such-model", false))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    let mut n0 = chat("gpt", false);
    n0["n"] = json!(0);
    let (status, _, body) = h.post("/v1/chat/completions", &n0).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "n");
    // Anthropic-shaped on /v1/messages.
    let (status, _, body) = h
        .post("/v1/messages", &message("no-such-model", false))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
    let (status, body) = h.post_raw("/v1/messages", "[]").await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["type"], "error");
    // Unknown path.
    let r = h.client.get(h.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The gateway still serves.
    let (status, _, _) = h
        .post("/v1/chat/completions", &chat("gpt", false))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// Answers made before any routing (decode errors, auth, body limit, unknown paths, wrong
/// methods) and the operational endpoints carry `x-tandem-route` too, saying no backend answered
/// and why.
#[tokio::test]
async fn answers_no_backend_gave_say_so_in_the_route_header() {
    let hash = tandem_gateway::config::hash_api_key("secret-key");
    let h = Harness::start(&format!(
        "api_key_hashes = [\"{hash}\"]\n[limits]\nmax_body_bytes = 1024"
    ))
    .await
    .unwrap();
    let route = |r: &reqwest::Response| {
        r.headers()
            .get("x-tandem-route")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let post = |path: &str| h.client.post(h.url(path)).bearer_auth("secret-key");

    // 401 from auth.
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        route(&r).as_deref(),
        Some("gateway; no backend (unauthorized)")
    );
    // Refused before routing: not JSON, the wrong type on the Anthropic endpoint, over the body
    // limit, and an unknown path.
    let mut big = chat("gpt", false);
    big["messages"][1]["content"] = json!("x".repeat(4096));
    let cases = [
        (
            "/v1/chat/completions",
            "{not json".to_owned(),
            400,
            "invalid_request",
        ),
        ("/v1/messages", "[]".to_owned(), 400, "invalid_request"),
        (
            "/v1/chat/completions",
            big.to_string(),
            413,
            "payload_too_large",
        ),
        ("/v1/nothing", "{}".to_owned(), 404, "endpoint_not_found"),
    ];
    let mut r = None;
    for (path, body, status, why) in cases {
        let answer = post(path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{path}");
        let expected = format!("gateway; no backend ({why})");
        assert_eq!(route(&answer).as_deref(), Some(expected.as_str()), "{path}");
        r = Some(answer);
    }
    // The unknown path's 404 is OpenAI-shaped.
    let r = r.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "unknown_url", "{body}");
    // 405 for a known path's wrong method: OpenAI-shaped, with `allow`.
    let r = h
        .client
        .get(h.url("/v1/chat/completions"))
        .bearer_auth("secret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(
        route(&r).as_deref(),
        Some("gateway; no backend (method_not_allowed)")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "method GET is not allowed on /v1/chat/completions",
            "type": "invalid_request_error",
            "param": null,
            "code": "method_not_allowed",
        }})
    );
    // Anthropic-shaped on /v1/messages.
    let r = h
        .client
        .get(h.url("/v1/messages"))
        .header("x-api-key", "secret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    // A model no route serves keeps its own header.
    let r = post("/v1/chat/completions")
        .json(&chat("no-such-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(route(&r).as_deref(), Some("no route"));
    // The operational endpoints.
    for (path, expected) in [
        ("/healthz", "gateway; no backend (health)"),
        ("/readyz", "gateway; no backend (health)"),
        ("/metrics", "gateway; no backend (metrics)"),
        ("/v1/models", "gateway; no backend (models)"),
    ] {
        let r = h
            .client
            .get(h.url(path))
            .bearer_auth("secret-key")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(route(&r).as_deref(), Some(expected), "{path}");
    }
    // A routed answer keeps the header its route set.
    let r = post("/v1/chat/completions")
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        route(&r).unwrap().starts_with("openai; route gpt"),
        "{:?}",
        route(&r)
    );
}

/// An Anthropic upstream's 429 carries no `code`; an OpenAI client still gets one it can act on.
#[tokio::test]
async fn an_anthropic_rate_limit_reaches_an_openai_client_with_a_meaningful_code() {
    let h = Harness::start_around(MockConfig::default(), |mock| {
        format!(
            r#"
[backends.anthropic-limited]
kind = "anthropic"
base_url = "{}"
api_key_env = "MOCK_ANTHROPIC_KEY"
models = {{ "claude-ratelimit" = "ratelimit" }}
"#,
            mock.base_url()
        )
    })
    .await
    .unwrap();
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("claude-ratelimit", false))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(headers["retry-after"], "3");
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert!(
        route.starts_with("anthropic-limited; route claude-ratelimit; failed (status 429)"),
        "{route}"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_errors_total{endpoint="chat",kind="upstream"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_backend_that_cannot_honour_a_parameter_is_refused_or_skipped() {
    let extra = r#"
[routes."claude-then-gpt"]
backends = ["anthropic", "openai"]
fallback = false
[routes."ratelimit-then-claude"]
backends = ["openai", "anthropic"]
"#;
    let h = Harness::start(extra).await.unwrap();
    let with = |model: &str, key: &str, value: Value| {
        let mut body = chat(model, false);
        body[key] = value;
        body
    };
    // Anthropic's API has neither; silently dropping them would hand back a different answer.
    for (key, value) in [
        ("response_format", json!({"type": "json_object"})),
        ("logprobs", json!(true)),
    ] {
        let (status, headers, body) = h
            .post("/v1/chat/completions", &with("claude", key, value))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], key, "{body}");
        assert_eq!(body["error"]["code"], "unsupported_parameter", "{body}");
        let route = headers["x-tandem-route"].to_str().unwrap();
        assert!(route.starts_with("anthropic;"), "{route}");
    }
    let calls = h.mock.requests().len();
    // A route with a backend that can goes on to it, fallback or not.
    let (status, headers, body) = h
        .post(
            "/v1/chat/completions",
            &with(
                "claude-then-gpt",
                "response_format",
                json!({"type": "json_object"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert!(
        route.starts_with("openai;")
            && route.contains("skipped anthropic (response_format unsupported)"),
        "{route}"
    );
    let sent = h.mock.requests();
    assert_eq!(
        sent.len(),
        calls + 1,
        "only the backend that can was called"
    );
    assert_eq!(
        sent.last().unwrap().json().unwrap()["response_format"],
        json!({"type": "json_object"})
    );
    // When the backend that could has failed for a passing reason, that failure is the answer,
    // not the later backend's refusal.
    let (status, headers, body) = h
        .post(
            "/v1/chat/completions",
            &with(
                "ratelimit-then-claude",
                "response_format",
                json!({"type": "json_object"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "3");
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert!(
        route.starts_with("openai; route ratelimit-then-claude; failed (status 429)"),
        "{route}"
    );
}

#[tokio::test]
async fn upstream_errors_pass_on_and_fallback() {
    let h = Harness::start("").await.unwrap();
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("gpt-ratelimit", false))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .contains("failed")
    );
    // The upstream's own code and its wait reach the client.
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(headers["retry-after"], "3");
    let (status, _, body) = h
        .post("/v1/chat/completions", &chat("gpt-400", false))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("gpt-long", false))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (
            &body["error"]["type"],
            &body["error"]["param"],
            &body["error"]["code"]
        ),
        (
            &json!("invalid_request_error"),
            &json!("messages"),
            &json!("context_length_exceeded")
        ),
        "{body}"
    );
    let text = body["error"]["message"].as_str().unwrap();
    assert!(
        text.starts_with("upstream `openai` failed: This model's maximum context length"),
        "{text}"
    );
    assert!(headers.get("retry-after").is_none());
    let (status, headers, body) = h
        .post("/v1/messages", &message("claude-overloaded", false))
        .await
        .unwrap();
    assert_eq!(status, 529, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    assert_eq!(headers["retry-after"], "3");

    // Connect refused on the first backend: the second answers.
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("with-fallback", false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert!(
        route.starts_with("openai;")
            && route.contains("fallback after down failed (connect failed)"),
        "{route}"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_fallbacks_total{backend="down"} 1"#),
        "{metrics}"
    );

    // A route without fallback passes the connect error on.
    let (status, _, body) = h
        .post("/v1/chat/completions", &chat("down-only", false))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn cut_stream_ends_with_error_event() {
    let h = Harness::start("").await.unwrap();
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("gpt-cut", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let last = events.last().unwrap().json();
    assert!(last["error"].is_object(), "{events:?}");
    let (status, _, events) = h
        .post_stream("/v1/messages", &message("claude-cut", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("error"),
        "{events:?}"
    );
}

#[tokio::test]
async fn auth_with_hashed_keys() {
    let hash = tandem_gateway::config::hash_api_key("secret-key");
    let h = Harness::start(&format!("api_key_hashes = [\"{hash}\"]"))
        .await
        .unwrap();
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth("secret-key")
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", "secret-key")
        .json(&message("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .client
        .post(h.url("/v1/messages"))
        .json(&message("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "error");
    assert_eq!(
        h.client
            .get(h.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn body_limit_is_413() {
    let h = Harness::start("[limits]\nmax_body_bytes = 1024")
        .await
        .unwrap();
    let mut req = chat("gpt", false);
    req["messages"][1]["content"] = json!("x".repeat(4096));
    let (status, _, body) = h.post("/v1/chat/completions", &req).await.unwrap();
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    // Chunked (no content-length) is caught while reading.
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        req.to_string(),
    ))]);
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// An oversized body on `/v1/messages` gets 413 in Anthropic's error shape, whether its length
/// is declared or it comes chunked, where `/v1/chat/completions` answers in OpenAI's.
#[tokio::test]
async fn body_limit_on_messages_is_413_in_anthropic_shape() {
    let h = Harness::start("[limits]\nmax_body_bytes = 1024")
        .await
        .unwrap();
    let mut req = message("claude", false);
    req["messages"][0]["content"] = json!("x".repeat(4096));
    let check = |body: &Value| {
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "request_too_large", "{body}");
        assert_eq!(
            body["error"]["message"], "request body is larger than the limit of 1024 bytes",
            "{body}"
        );
        // Only Anthropic's two keys, on both levels.
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        assert_eq!(body["error"].as_object().unwrap().len(), 2, "{body}");
    };
    let (status, headers, body) = h.post("/v1/messages", &req).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    check(&body);
    // Chunked (no content-length) is caught while reading, with the same answer.
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        req.to_string(),
    ))]);
    let r = h
        .client
        .post(h.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    check(&r.json().await.unwrap());
    // Nothing reached the upstream.
    assert_eq!(h.mock.request_count(), 0);
}

#[tokio::test]
async fn concurrency_limit_sheds_with_retry_after() {
    let h = Harness::start("[limits]\nmax_concurrency = 1\nretry_after_secs = 2")
        .await
        .unwrap();
    let slow = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("gpt-delay", false))
        .send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(
        r.headers()["x-tandem-route"],
        "gateway; no backend (overloaded)"
    );
    // Probes are not shed.
    assert_eq!(
        h.client
            .get(h.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn total_timeout_is_504() {
    let h = Harness::start("[limits]\nrequest_timeout_ms = 300")
        .await
        .unwrap();
    let (status, headers, body) = h
        .post("/v1/chat/completions", &chat("gpt-delay", false))
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    // The answer still says which backend it was waiting on.
    assert_eq!(
        headers["x-tandem-route"],
        "openai; route gpt-delay; timed out"
    );
    let (status, headers, body) = h
        .post("/v1/messages", &message("gpt-delay", false))
        .await
        .unwrap();
    assert_eq!(status, 504);
    assert_eq!(body["type"], "error");
    assert_eq!(
        headers["x-tandem-route"],
        "openai; route gpt-delay; timed out"
    );
    let (status, headers, _) = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-delay", "prompt": "Hi"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 504);
    assert_eq!(
        headers["x-tandem-route"],
        "openai; route gpt-delay; timed out"
    );
    let text = h.metrics().await;
    assert!(
        text.contains(
            r#"tandem_requests_total{endpoint="chat",route="gpt-delay",backend="openai",status="5xx"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn first_token_timeout() {
    let h = Harness::start("[limits]\nfirst_token_timeout_ms = 300")
        .await
        .unwrap();
    // No headers from the upstream in time.
    let (status, _, body) = h
        .post("/v1/chat/completions", &chat("gpt-delay", true))
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "first_token_timeout");
    // The same for a streamed legacy completion (it waited for the upstream's headers before).
    let (status, _, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-delay", "prompt": "def add(a, b):", "stream": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "first_token_timeout");
    // Non-streaming requests are not bound by it.
    let h = Harness::start("[limits]\nfirst_token_timeout_ms = 100")
        .await
        .unwrap();
    let (status, _, _) = h
        .post("/v1/chat/completions", &chat("gpt-slow", false))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn stalled_stream_is_cut_by_total_timeout_with_error_event() {
    let h = Harness::start("[limits]\nrequest_timeout_ms = 1000")
        .await
        .unwrap();
    let (status, _, events) = h
        .post_stream("/v1/chat/completions", &chat("gpt-stall", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let last = events.last().unwrap().json();
    assert!(last["error"].is_object(), "{events:?}");
}

#[tokio::test]
async fn client_disconnect_cancels_upstream() {
    let h = Harness::start_with(
        "",
        MockConfig {
            record: true,
            slow_delay: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("gpt-slow", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    read_first_chunk_and_drop(r).await.unwrap();
    assert!(
        h.upstream_dropped_within(Duration::from_secs(5)).await,
        "the upstream stream was not dropped"
    );
    assert_eq!(h.mock.completed_count(), 0);
}

/// A client that goes away while a non-streamed answer is still on its way cancels the upstream
/// request: the mock's response is dropped before its end.
#[tokio::test]
async fn client_disconnect_during_a_whole_answer_cancels_upstream() {
    // The mock sends its headers at once and the one-frame JSON body after the delay.
    let h = Harness::start_with(
        "",
        MockConfig {
            record: true,
            slow_delay: Duration::from_secs(4),
        },
    )
    .await
    .unwrap();
    let request = tokio::spawn(
        h.client
            .post(h.url("/v1/chat/completions"))
            .json(&chat("gpt-slow", false))
            .send(),
    );
    for _ in 0..50 {
        if h.mock.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.mock.request_count(),
        1,
        "the request never reached the upstream"
    );
    // Let the mock's headers reach the gateway, so its body is the part left to wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    // Well inside the mock's delay: a request left running would end with a completed body.
    assert!(
        h.upstream_dropped_within(Duration::from_millis(2500)).await,
        "the upstream request was not dropped"
    );
    assert_eq!(h.mock.completed_count(), 0);
}

#[tokio::test]
async fn models_health_ready_metrics() {
    let h = Harness::start("").await.unwrap();
    let models: Value = h
        .client
        .get(h.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"gpt".to_owned())
            && ids.contains(&"claude".to_owned())
            && ids.contains(&"with-fallback".to_owned())
    );
    assert_eq!(
        h.client
            .get(h.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // No local backend configured: ready at once.
    assert_eq!(
        h.client
            .get(h.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = h
        .post("/v1/chat/completions", &chat("gpt", false))
        .await
        .unwrap();
    let _ = h
        .post("/v1/chat/completions", &chat("nope", false))
        .await
        .unwrap();
    let text = h.metrics().await;
    assert!(
        text.contains(
            r#"tandem_requests_total{endpoint="chat",route="gpt",backend="openai",status="2xx"} 1"#
        ),
        "{text}"
    );
    // A model no route serves adds no label value: its request counts under `none`.
    assert!(
        text.contains(
            r#"tandem_requests_total{endpoint="chat",route="none",backend="none",status="4xx"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("nope"), "{text}");
    assert!(
        text.contains(r#"tandem_errors_total{endpoint="chat",kind="model_not_found"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("tandem_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn request_ids_and_feedback() {
    let h = Harness::start("").await.unwrap();
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .header("x-request-id", "req-123")
        .json(&chat("gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let (status, _, body) = h
        .post(
            "/v1/feedback",
            &json!({"request_id": "req-123", "thumbs": "up", "correct": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "openai");
    let (status, _, body) = h
        .post(
            "/v1/feedback",
            &json!({"request_id": "unknown", "score": 1}),
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _) = h.post_raw("/v1/feedback", "{oops").await.unwrap();
    assert_eq!(status, 400);
    let (status, _, _) = h
        .post(
            "/v1/feedback",
            &json!({"request_id": "req-123", "score": "high"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn legacy_completions_go_to_openai_backends() {
    let extra = r#"
[routes."claude-then-gpt"]
backends = ["anthropic", "openai"]
[routes."instruct-fallback"]
backends = ["down", "openai"]
fallback = true
"#;
    let h = Harness::start(extra).await.unwrap();
    let (status, headers, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt", "prompt": "Say this is a test", "max_tokens": 7, "user": "u-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "\n\nThis is indeed a test");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["total_tokens"], 12);
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("openai; route gpt")
    );
    // The upstream got the client's body as it was, with the model mapped.
    let upstream = h.mock.requests().into_iter().last().unwrap();
    assert_eq!(upstream.path, "/v1/completions");
    let sent = upstream.json().unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        (sent["max_tokens"].clone(), sent["user"].clone()),
        (json!(7), json!("u-1"))
    );

    let (status, _, events) = h
        .post_stream(
            "/v1/completions",
            &json!({"model": "gpt", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| e.json()["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "\n\nThis is indeed a test");
    assert!(
        events
            .iter()
            .all(|e| e.data == "[DONE]" || e.json()["object"] == "text_completion")
    );
    assert!(
        events
            .iter()
            .any(|e| e.data != "[DONE]" && e.json()["usage"]["total_tokens"].is_u64())
    );

    // Anthropic has no legacy API: the route moves on to the next backend.
    let (status, headers, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "claude-then-gpt", "prompt": "Hi"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("openai;")
    );
    // A connect failure falls back.
    let (status, headers, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "instruct-fallback", "prompt": "Hi"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .contains("fallback after down")
    );
    // Only Anthropic: a clear 400 naming the model.
    let (status, _, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "claude", "prompt": "Hi"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model");
    // Upstream errors keep their status and shape, and say which backend failed.
    let (status, headers, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-400", "prompt": "Hi"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string());
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert!(
        route.starts_with("openai; route gpt-400; failed (status 400)"),
        "{route}"
    );
}

/// Several choices go to an OpenAI-format upstream in a whole answer, passed on as it came; a
/// stream, or a backend that makes one choice, is a 400 naming `n`.
#[tokio::test]
async fn several_choices_reach_a_backend_that_makes_them_or_are_refused() {
    let h = Harness::start("").await.unwrap();
    let mut whole = chat("gpt", false);
    whole["n"] = json!(2);
    let (status, _, body) = h.post("/v1/chat/completions", &whole).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let sent = h.mock.requests();
    assert_eq!(sent.last().unwrap().json().unwrap()["n"], 2);

    let mut streamed = chat("gpt", true);
    streamed["n"] = json!(2);
    let (status, _, body) = h.post("/v1/chat/completions", &streamed).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");

    let mut anthropic = chat("claude", false);
    anthropic["n"] = json!(2);
    let (status, _, body) = h.post("/v1/chat/completions", &anthropic).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
    assert_eq!(h.mock.requests().len(), 1, "nothing more went upstream");
}

/// Fields a backend has no place for are refused, naming them, rather than silently dropped:
/// OpenAI-only fields on an Anthropic backend, and Anthropic-only ones on an OpenAI backend.
/// Fields left at neutral values, and inert ones, pass.
#[tokio::test]
async fn fields_a_backend_would_drop_are_refused() {
    let h = Harness::start("").await.unwrap();
    let refused = [
        ("claude", json!({"seed": 7}), "seed"),
        (
            "claude",
            json!({"presence_penalty": 0.5}),
            "presence_penalty",
        ),
        (
            "claude",
            json!({"logit_bias": {"50256": -100}}),
            "logit_bias",
        ),
    ];
    for (model, fields, param) in refused {
        let mut request = chat(model, false);
        for (k, v) in fields.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, _, body) = h.post("/v1/chat/completions", &request).await.unwrap();
        assert_eq!(status, 400, "{param}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    assert!(
        h.mock.requests().is_empty(),
        "a refused request went upstream"
    );

    // Neutral values and inert fields change nothing, so they pass.
    let mut neutral = chat("claude", false);
    neutral["presence_penalty"] = json!(0);
    neutral["logit_bias"] = json!({});
    neutral["store"] = json!(true);
    let (status, _, body) = h.post("/v1/chat/completions", &neutral).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // In the client's own format they go upstream as they came.
    let mut own = chat("gpt", false);
    own["presence_penalty"] = json!(0.5);
    let (status, _, body) = h.post("/v1/chat/completions", &own).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let sent = h.mock.requests();
    assert_eq!(
        sent.last().unwrap().json().unwrap()["presence_penalty"],
        0.5
    );

    // An Anthropic client's own fields have no place in OpenAI's format.
    let mut thinking = message("gpt", false);
    thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let (status, _, body) = h.post("/v1/messages", &thinking).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("thinking"),
        "{body}"
    );
}
