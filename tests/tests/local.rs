//! End to end on the real local model: chat, messages, completions (text, logprobs, echo, fill in
//! the middle) and the vLLM scoring form over `Engine::score`. Skipped, with a message, when the
//! model is not in the cache.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
// The helpers below are test code too.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_local_model::{Engine, EngineConfig};
use tandem_tests::{client, parse_sse, streamed_text};

async fn start() -> Option<(Gateway, Engine)> {
    start_with("[server]\nlisten = \"127.0.0.1:0\"\n").await
}

/// The local model under `config` (TOML), or `None` when it is not in the cache.
async fn start_with(config: &str) -> Option<(Gateway, Engine)> {
    let root = default_cache_root(&ProcessEnv);
    let Some(paths) = locate(&root, "smollm2-135m") else {
        eprintln!(
            "skipping: smollm2-135m is not in the cache at {} (run `tandem models fetch smollm2-135m`)",
            root.display()
        );
        return None;
    };
    let path = paths.primary().to_path_buf();
    let engine = tokio::task::spawn_blocking(move || {
        Engine::start(EngineConfig::new(path).threads(2).kv_cache_tokens(4096))
    })
    .await
    .unwrap()
    .unwrap();
    let config = Config::from_toml_str(config, &MapEnv::default()).unwrap();
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine.clone()),
        quiet: true,
        ..GatewayOptions::default()
    };
    Some((Gateway::start(config, options).await.unwrap(), engine))
}

async fn post(
    c: &reqwest::Client,
    url: String,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

#[tokio::test]
async fn local_model_end_to_end() {
    let Some((gw, engine)) = start().await else {
        return;
    };
    let c = client();
    let url = |p: &str| format!("{}{p}", gw.url());
    assert_eq!(c.get(url("/readyz")).send().await.unwrap().status(), 200);

    // Chat, non-streaming, greedy.
    let req = json!({"model": "local", "temperature": 0, "max_tokens": 8,
                     "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (status, headers, body) = post(&c, url("/v1/chat/completions"), req.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("local;")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    // The same, streamed: same text (greedy, both from a cold prefix cache), usage chunk, [DONE].
    engine.clear_cache().await.unwrap();
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (status, _, body) = post(&c, url("/v1/chat/completions"), sreq).await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let streamed = streamed_text(&events);
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage = events
        .iter()
        .map(|e| e.json())
        .find(|e| e["usage"].is_object())
        .unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Anthropic Messages under the alias.
    let (status, _, body) = post(
        &c,
        url("/v1/messages"),
        json!({"model": "smollm2-135m", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");

    // Tools are refused on the local model with a clear 400.
    let (status, _, body) = post(&c, url("/v1/chat/completions"), json!({"model": "local", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})).await;
    assert_eq!(status, 400, "{body}");
    // So is structured output, which it cannot guarantee; plain text format is fine.
    let (status, _, body) = post(&c, url("/v1/chat/completions"), json!({"model": "local", "max_tokens": 2,
        "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "response_format", "{body}");
    let (status, _, body) = post(
        &c,
        url("/v1/chat/completions"),
        json!({"model": "local", "max_tokens": 2,
        "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Completions: text prompt with logprobs.
    let (status, _, body) = post(
        &c,
        url("/v1/completions"),
        json!({"model": "local", "prompt": "The sky is", "max_tokens": 4,
        "temperature": 0, "logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        n
    );

    // Fill in the middle: served when the vocabulary has the FIM tokens, a clear 400 otherwise.
    let (status, _, body) = post(
        &c,
        url("/v1/completions"),
        json!({"model": "local", "prompt": "def add(a, b):\n    return ",
        "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    let has_fim = engine.tokenizer().fim_template().is_some();
    assert_eq!(status, if has_fim { 200 } else { 400 }, "{body}");

    // Streamed completion.
    let (status, _, body) = post(
        &c,
        url("/v1/completions"),
        json!({"model": "local", "prompt": "One, two,", "max_tokens": 3, "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parse_sse(&body).last().unwrap().data, "[DONE]");

    // The vLLM scoring form: token ids, prompt_logprobs, echo, max_tokens 1, token ids as names.
    let prompt = engine
        .tokenizer()
        .encode("The quick brown fox jumps over the lazy dog", false);
    let (status, _, body) = post(&c, url("/v1/completions"), json!({"model": "local", "prompt": prompt, "prompt_logprobs": 3,
        "echo": true, "max_tokens": 1, "temperature": 0, "logprobs": 3, "return_tokens_as_token_ids": true})).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let plp = v["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(plp.len(), prompt.len());
    assert!(plp[0].is_null());
    for (i, entry) in plp.iter().enumerate().skip(1) {
        let key = prompt[i].to_string();
        assert!(entry[&key]["logprob"].as_f64().unwrap() <= 0.0, "{entry}");
        assert!(entry.as_object().unwrap().len() >= 3);
    }
    // Agrees with the engine's own scores.
    let scores = engine.score(&prompt[..1], &prompt[1..], 3).await.unwrap();
    let first = plp[1][&prompt[1].to_string()]["logprob"].as_f64().unwrap();
    assert!((first - scores.positions[0].logprob as f64).abs() < 1e-3);
    // With echo the logprobs list the prompt first, then the generated (bonus) token.
    let tokens = v["choices"][0]["logprobs"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), prompt.len() + 1);
    assert_eq!(tokens[1], format!("token_id:{}", prompt[1]));
    let bonus = tokens.last().unwrap().as_str().unwrap();
    assert_eq!(bonus, format!("token_id:{}", scores.next_top[0].0));

    // Score only (max_tokens 0), and a bad token id.
    let (status, _, body) = post(
        &c,
        url("/v1/completions"),
        json!({"model": "local", "prompt": prompt, "prompt_logprobs": 1, "max_tokens": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(
        &c,
        url("/v1/completions"),
        json!({"model": "local", "prompt": [1, 99999999], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    gw.shutdown().await.unwrap();
}

/// Every cloud backend of a route down: with `resilience.local_fallback` the local model answers
/// every request, whole or streamed, and the answer says so; the dead backend's breaker opens
/// and it is skipped at once after that.
#[tokio::test]
async fn with_the_cloud_down_every_request_is_served_locally_and_marked() {
    let config = r#"
[server]
listen = "127.0.0.1:0"

[resilience]
local_fallback = true
breaker_failures = 3

[backends.local]
kind = "local"

[backends.cloud]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
connect_timeout_ms = 300

[routes."gpt-4o"]
backends = ["cloud"]
"#;
    let Some((gw, _engine)) = start_with(config).await else {
        return;
    };
    let c = client();
    let url = |p: &str| format!("{}{p}", gw.url());
    for i in 0..8 {
        let stream = i % 2 == 1;
        let req = json!({"model": "gpt-4o", "max_tokens": 4, "stream": stream,
                         "messages": [{"role": "user", "content": "Hi"}]});
        let (status, headers, body) = post(&c, url("/v1/chat/completions"), req).await;
        assert_eq!(status, 200, "{body}");
        let route = headers["x-tandem-route"].to_str().unwrap();
        assert!(route.starts_with("local; route gpt-4o;"), "{route}");
        assert!(
            route.ends_with("local fallback (every cloud backend failed)"),
            "{route}"
        );
        let why = if i < 3 {
            "fallback after cloud failed (connect failed)"
        } else {
            "skipped cloud (circuit open)"
        };
        assert!(route.contains(why), "{i}: {route}");
        if stream {
            assert_eq!(parse_sse(&body).last().unwrap().data, "[DONE]");
        }
    }
    let metrics = c
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_local_fallbacks_total 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_breaker_opens_total{backend="cloud"} 1"#),
        "{metrics}"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn force_local_serves_sensitive_requests_on_the_local_model_and_clean_ones_in_the_cloud() {
    use tandem_lab::mock::{Fixtures, MockUpstream};
    let (_, mock) = MockUpstream::start(Fixtures::builtin()).await.unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[backends.local]
kind = "local"

[backends.cloud]
kind = "openai-compatible"
base_url = "{}"

[routes."gpt-4o"]
backends = ["cloud"]
privacy = "force-local"
"#,
        mock.base_url()
    );
    let Some((gw, _engine)) = start_with(&config).await else {
        return;
    };
    let c = client();
    let url = |p: &str| format!("{}{p}", gw.url());
    for stream in [false, true] {
        let req = json!({"model": "gpt-4o", "max_tokens": 4, "stream": stream,
                         "messages": [{"role": "user", "content": "My card is 4111 1111 1111 1111, is it valid?"}]});
        let (status, headers, body) = post(&c, url("/v1/chat/completions"), req).await;
        assert_eq!(status, 200, "{body}");
        let route = headers["x-tandem-route"].to_str().unwrap();
        assert_eq!(
            route, "local; route gpt-4o; privacy=force-local (payment_card)",
            "{route}"
        );
    }
    assert_eq!(mock.request_count(), 0, "nothing left the host");
    let req = json!({"model": "gpt-4o", "max_tokens": 4,
                     "messages": [{"role": "user", "content": "Hi"}]});
    let (status, headers, _) = post(&c, url("/v1/chat/completions"), req).await;
    assert_eq!(status, 200);
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("cloud;")
    );
    assert_eq!(mock.request_count(), 1);
    gw.shutdown().await.unwrap();
}
