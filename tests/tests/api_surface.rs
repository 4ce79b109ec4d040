//! The API surface clients call beyond chat: content a backend cannot read (images on the
//! text-only local model, prompts over its context), embeddings, token counting, model details
//! and the Responses API, over the mock upstream and the real local model, and through the
//! official `openai` and `anthropic` Python SDKs where `TANDEM_TEST_PYTHON` names a Python that
//! has them (scripts/test.sh makes one).

// A test skipped for want of a fetched model or a Python says so on stderr.
#![allow(clippy::print_stderr)]
// The helpers below are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_gateway::config::Config;
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockUpstream};
use tandem_local_model::{Engine, EngineConfig};
use tandem_tests::{Harness, client, config_text, test_env};

/// A local backend beside the mock's, and routes over both.
const LOCAL_ROUTES: &str = r#"
[backends.local]
kind = "local"

[routes."vision"]
backends = ["local", "openai"]

[routes."vision-learned"]
backends = ["local", "openai"]
policy = "learned"
lambda_per_usd = 1000000.0
mu_per_s = 0.0

[router]
encoder = false
"#;

/// `extra` with a state store of the test's own (tests run side by side in separate processes,
/// and the store in the shared cache directory is one process's).
fn with_store(extra: &str) -> String {
    if extra.contains("[store]") {
        return extra.to_owned();
    }
    let path = scratch("store").join("store.log");
    format!("{extra}\n[store]\npath = \"{}\"\n", path.display())
}

/// The real local model, or None (with a note) when it is not in the cache.
async fn engine() -> Option<Engine> {
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
    Some(engine)
}

/// Tandem with the real local model (when cached) and the mock's backends, plus `extra`.
async fn start_local(extra: &str) -> Option<(Gateway, tandem_lab::mock::MockHandle, Engine)> {
    let engine = engine().await?;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let text = config_text(
        &mock.base_url(),
        &with_store(&format!("{LOCAL_ROUTES}\n{extra}")),
    );
    let config = Config::from_toml_str(&text, &test_env()).unwrap();
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine.clone()),
        quiet: true,
        ..GatewayOptions::default()
    };
    Some((Gateway::start(config, options).await.unwrap(), mock, engine))
}

async fn post(url: String, body: &Value) -> (u16, String, Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let route = tandem_tests::route_of(&r);
    let text = r.text().await.unwrap();
    (
        status,
        route,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn image_chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]})
}

fn image_message(model: &str) -> Value {
    json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    ]}]})
}

#[tokio::test]
async fn an_image_is_refused_by_the_text_only_model_and_skips_to_a_backend_that_sees_it() {
    // The local model never loads here: the refusal comes before it is needed.
    let h = Harness::start(&with_store(LOCAL_ROUTES)).await.unwrap();
    let (status, _, body) = post(h.url("/v1/chat/completions"), &image_chat("local")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages[0].content[1]", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (status, _, body) = post(h.url("/v1/messages"), &image_message("local")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("messages[0].content[1]"), "{message}");

    // A route with a backend that reads images moves on to it, and says so.
    let (status, route, body) = post(h.url("/v1/chat/completions"), &image_chat("vision")).await;
    assert_eq!(status, 200, "{body}");
    assert!(route.starts_with("openai;"), "{route}");
    assert!(route.contains("skipped local"), "{route}");
    let sent = h.mock.requests().last().unwrap().json().unwrap();
    assert_eq!(
        sent["messages"][0]["content"][1]["type"], "image_url",
        "the image reaches the backend that reads it: {sent}"
    );
    let (status, route, body) = post(h.url("/v1/messages"), &image_message("vision")).await;
    assert_eq!(status, 200, "{body}");
    assert!(route.contains("skipped local"), "{route}");
}

#[tokio::test]
async fn learned_routes_skip_to_vision_and_long_prompts_are_context_length_exceeded() {
    let Some((gw, _mock, engine)) = start_local("").await else {
        return;
    };
    let url = |p: &str| format!("{}{p}", gw.url());
    // The policy prefers the local model (the cloud is priced out), but it cannot see images.
    let (status, route, body) =
        post(url("/v1/chat/completions"), &image_chat("vision-learned")).await;
    assert_eq!(status, 200, "{body}");
    assert!(route.starts_with("local:local;"), "{route}");
    assert!(route.contains("skipped local"), "{route}");
    assert!(route.contains("backend=openai"), "{route}");

    // A prompt over the local model's context: OpenAI's code, Anthropic's words.
    let long = "lorem ipsum dolor sit amet ".repeat(4000);
    let (status, _, body) = post(
        url("/v1/chat/completions"),
        &json!({"model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (status, _, body) = post(
        url("/v1/messages"),
        &json!({"model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long"),
        "{body}"
    );
    let (status, _, body) = post(
        url("/v1/completions"),
        &json!({"model": "local", "max_tokens": 4, "prompt": long}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");

    // Counting on the local model is exact: its chat template and tokenizer.
    let r = client()
        .post(url("/v1/messages/count_tokens"))
        .json(&json!({"model": "local", "system": "Be brief.",
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tandem-token-count"], "exact");
    let body: Value = r.json().await.unwrap();
    let prompt = engine
        .chat_prompt(
            &[
                tandem_local_model::ChatMessage::new("system", "Be brief."),
                tandem_local_model::ChatMessage::new("user", "What is the capital of France?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(body["input_tokens"], prompt.len(), "{body}");
    let (_, _, local) = get(url("/v1/models/local")).await;
    assert_eq!(
        local["context_length"],
        engine.info().context_length,
        "{local}"
    );
    assert_eq!(local["capabilities"]["fim"], true, "{local}");

    // The Responses API on the local model: typed events in order, usage at the end; tools it
    // cannot call are a 400 naming them.
    let r = client()
        .post(url("/v1/responses"))
        .json(
            &json!({"model": "local", "input": "Say hello.", "max_output_tokens": 8,
                      "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = tandem_tests::parse_sse(&r.text().await.unwrap());
    let events = response_events(&raw);
    let k = kinds(&events);
    assert!(k.contains(&"response.output_text.delta"), "{k:?}");
    let last = &events[events.len() - 1];
    assert!(
        ["response.completed", "response.incomplete"].contains(&last["type"].as_str().unwrap()),
        "{k:?}"
    );
    assert!(
        last["response"]["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(
        last["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
    let (status, _, body) = post(
        url("/v1/responses"),
        &json!({"model": "local", "input": "x",
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tools", "{body}");
    gw.shutdown().await.unwrap();
}

/// Standard base64 decoded, for the vectors an embeddings answer writes that way.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

fn floats(value: &Value) -> Vec<f32> {
    match value {
        Value::String(b64) => base64_decode(b64)
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        v => v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test]
async fn local_embeddings_are_the_encoders_vectors_in_every_encoding() {
    use tandem_gateway::executor::embeddings::embedder_config;
    use tandem_router_policy::Encoder;
    let root = tandem_router_policy::encoder::default_cache_root();
    let config = embedder_config(&root);
    if config.check_files().is_err() {
        eprintln!(
            "skipping: the MiniLM encoder is not in the cache at {} (run `tandem models fetch minilm-l6-v2-int8`)",
            root.display()
        );
        return;
    }
    let encoder = tokio::task::spawn_blocking(move || Encoder::with_config(config))
        .await
        .unwrap()
        .unwrap();
    let h = Harness::start(&with_store("")).await.unwrap();
    let texts: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "Sentence number {i} is about {}.",
                ["cats", "taxes", "rust", "rain"][i % 4]
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = encoder.embed_uncached(&refs).unwrap();

    // A batch of 64, as floats: the encoder's own vectors, unit length, in input order.
    let (status, route, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "minilm", "input": texts}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(route, "minilm; local embeddings model");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 64);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        let v = floats(&item["embedding"]);
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let c = cosine(&v, &expected[i]);
        assert!(c > 0.9999, "input {i}: cosine {c}");
    }
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 64 * 3,
        "{body}"
    );

    // Base64 is the same little-endian floats; token ids embed like their text.
    let (status, _, b64) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "minilm", "input": texts[0], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{b64}");
    let v = floats(&b64["data"][0]["embedding"]);
    assert_eq!(v.len(), 384);
    assert!(cosine(&v, &expected[0]) > 0.9999);
    let ids = encoder.token_ids(&texts[1]).unwrap();
    let (status, _, by_ids) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "minilm", "input": [ids]}),
    )
    .await;
    assert_eq!(status, 200, "{by_ids}");
    assert!(cosine(&floats(&by_ids["data"][0]["embedding"]), &expected[1]) > 0.9999);

    // What the model cannot do is a 400 naming the field.
    let (status, _, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "minilm", "input": "a", "dimensions": 128}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "dimensions", "{body}");
    let (status, _, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "minilm", "input": [[1, 2], [99999999]]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input[1]"),
        "{body}"
    );
}

#[tokio::test]
async fn cloud_embeddings_pass_through_with_the_backends_key_and_usage() {
    let h = Harness::start(&with_store("")).await.unwrap();
    let (status, route, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "gpt", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(route.starts_with("openai;"), "{route}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(
        floats(&body["data"][1]["embedding"]),
        [2.0, 0.5, 1.0 / 3.0, 0.25]
    );
    let sent = h.mock.requests().last().unwrap().clone();
    assert!(sent.path.ends_with("/v1/embeddings"), "{}", sent.path);
    assert_eq!(sent.header("authorization"), Some("Bearer sk-mock"));
    let sent = sent.json().unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini", "the model is mapped: {sent}");
    assert_eq!(sent["dimensions"], 4, "{sent}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"tandem_tokens_total{route="gpt",backend="openai",kind="prompt"} 6"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_requests_total{endpoint="embeddings",route="gpt",backend="openai",status="2xx"} 1"#),
        "{metrics}"
    );
    // An Anthropic backend has no embeddings: a clear 400.
    let (status, _, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "claude", "input": "a"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings"),
        "{body}"
    );
    let (status, _, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "nope", "input": "a"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn count_tokens_asks_anthropic_and_estimates_elsewhere_and_models_say_what_they_can() {
    let h = Harness::start(&with_store(
        "[routes.\"gpt-128k\"]\nbackends = [\"openai\", \"anthropic\"]\ncontext_length = 128000\n\
         [ide]\nmodel = \"/nonexistent/code-model.gguf\"\nthreads = 1\naliases = [\"code\"]\n",
    ))
    .await
    .unwrap();
    let ask = json!({"model": "claude", "messages": [{"role": "user", "content": "Hello there"}]});
    let r = client()
        .post(h.url("/v1/messages/count_tokens"))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tandem-token-count"], "upstream");
    let body: Value = r.json().await.unwrap();
    let sent = h.mock.requests().last().unwrap().clone();
    assert!(
        sent.path.ends_with("/v1/messages/count_tokens"),
        "{}",
        sent.path
    );
    assert_eq!(sent.header("x-api-key"), Some("ak-mock"));
    assert_eq!(sent.json().unwrap()["model"], "claude-3-5-haiku");
    assert!(
        sent.json().unwrap().get("max_tokens").is_none(),
        "nothing is added"
    );
    assert_eq!(body["input_tokens"], sent.body.len().div_ceil(4), "{body}");
    assert!(body.get("estimate").is_none(), "{body}");

    let r = client()
        .post(h.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tandem-token-count"], "estimate");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["estimate"], true, "{body}");
    assert!(body["input_tokens"].as_u64().unwrap() > 5, "{body}");
    // Bad input in Anthropic's error shape.
    let (status, _, body) = post(
        h.url("/v1/messages/count_tokens"),
        &json!({"model": "claude", "messages": "hi"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "{body}");

    // Model details.
    let (status, _, gpt) = get(h.url("/v1/models/gpt")).await;
    assert_eq!(status, 200, "{gpt}");
    assert_eq!(gpt["id"], "gpt");
    assert_eq!(gpt["owned_by"], "openai");
    assert_eq!(gpt["capabilities"]["tools"], true, "{gpt}");
    assert_eq!(gpt["capabilities"]["embeddings"], true, "{gpt}");
    let (status, _, claude) = get(h.url("/v1/models/claude")).await;
    assert_eq!(status, 200);
    assert_eq!(claude["capabilities"]["embeddings"], false, "{claude}");
    let (status, _, missing) = get(h.url("/v1/models/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "model_not_found", "{missing}");
    let (_, _, list) = get(h.url("/v1/models")).await;
    let minilm = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "minilm")
        .cloned()
        .unwrap();
    assert_eq!(minilm["capabilities"]["embeddings"], true, "{minilm}");
    assert_eq!(minilm["dimensions"], 384, "{minilm}");
    // Every model says who owns it, its context length (null where only the provider knows it)
    // and what it can do.
    for m in list["data"].as_array().unwrap() {
        assert!(m["owned_by"].is_string(), "{m}");
        assert!(m.get("context_length").is_some(), "{m}");
        for c in ["chat", "tools", "vision", "fim", "embeddings"] {
            assert!(m["capabilities"][c].is_boolean(), "{c}: {m}");
        }
    }
    assert_eq!(gpt["context_length"], Value::Null, "{gpt}");
    let (_, _, long) = get(h.url("/v1/models/gpt-128k")).await;
    assert_eq!(long["context_length"], 128000, "{long}");
    assert_eq!(long["owned_by"], "openai", "{long}");
    assert_eq!(long["backends"], json!(["openai", "anthropic"]), "{long}");
    assert_eq!(long["capabilities"]["tools"], true, "{long}");
    assert_eq!(long["capabilities"]["fim"], false, "{long}");
    // The code model's names (`[ide]`): fill in the middle, no chat.
    for id in ["code", "ide"] {
        let entry = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is not listed: {list}"));
        assert_eq!(entry["owned_by"], "tandem", "{entry}");
        assert_eq!(entry["backends"], json!(["ide"]), "{entry}");
        assert_eq!(entry["capabilities"]["fim"], true, "{entry}");
        assert_eq!(entry["capabilities"]["chat"], false, "{entry}");
        let (status, _, one) = get(h.url(&format!("/v1/models/{id}"))).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["capabilities"], entry["capabilities"]);
    }
}

async fn get(url: String) -> (u16, String, Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        String::new(),
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// OpenAI's own API on the mock (its Responses API passes through), and a store of this test's
/// own, so stored responses do not meet another test's.
fn responses_extra(mock: &tandem_lab::mock::MockHandle, store: &std::path::Path) -> String {
    format!(
        r#"
[backends.openai-own]
kind = "openai"
base_url = "{}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt-own" = "gpt-4.1", "gpt-own-cut" = "cut" }}

[store]
path = "{}"
"#,
        mock.base_url(),
        store.display()
    )
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("tandem-api-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn responses_harness(tag: &str) -> (Harness, std::path::PathBuf) {
    let store = scratch(tag).join("store.log");
    let path = store.clone();
    let h = Harness::start_around(MockConfig::default(), move |mock| {
        responses_extra(mock, &path)
    })
    .await
    .unwrap();
    (h, store)
}

/// The typed events of a streamed response, checked for order: created and in_progress first,
/// sequence numbers 0, 1, 2, ... and each event named like its type.
fn response_events(raw: &[tandem_tests::SseEvent]) -> Vec<Value> {
    let events: Vec<Value> = raw.iter().map(|e| e.json()).collect();
    for (i, (e, sse)) in events.iter().zip(raw).enumerate() {
        assert_eq!(e["sequence_number"], i, "{events:?}");
        assert_eq!(sse.event.as_deref(), e["type"].as_str(), "{e}");
    }
    assert_eq!(events[0]["type"], "response.created", "{events:?}");
    assert_eq!(events[1]["type"], "response.in_progress", "{events:?}");
    events
}

/// Whether `GET path` answers 200 within a second (what a stream's end stores lands in the
/// background).
async fn answers_within_a_second(h: &Harness, path: &str) -> bool {
    for _ in 0..50 {
        if get(h.url(path)).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn responses_stream_typed_events_over_every_backend_kind_and_a_cut_fails() {
    let (h, _store) = responses_harness("kinds").await;
    for model in ["gpt", "claude", "gpt-own"] {
        let body = json!({"model": model, "input": "Say hello", "stream": true});
        let (status, headers, raw) = h.post_stream("/v1/responses", &body).await.unwrap();
        assert_eq!(status, 200, "{model}: {raw:?}");
        assert_eq!(headers["content-type"], "text/event-stream");
        let events = response_events(&raw);
        let k = kinds(&events);
        let first_delta = k
            .iter()
            .position(|t| *t == "response.output_text.delta")
            .unwrap();
        assert_eq!(
            &k[2..first_delta],
            ["response.output_item.added", "response.content_part.added"],
            "{model}: {k:?}"
        );
        assert_eq!(
            &k[k.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{model}: {k:?}"
        );
        let done = &events[events.len() - 1]["response"];
        assert_eq!(done["status"], "completed", "{model}");
        assert!(
            done["usage"]["input_tokens"].as_u64().unwrap() > 0,
            "{model}: {done}"
        );
        assert!(
            done["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}: {done}"
        );
        assert!(
            done["usage"]["input_tokens_details"]["cached_tokens"].is_u64(),
            "{done}"
        );
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            done["output"][0]["content"][0]["text"],
            text.as_str(),
            "{model}"
        );

        // The whole answer too.
        let (status, route, whole) = post(
            h.url("/v1/responses"),
            &json!({"model": model, "input": "Say hello", "instructions": "Be brief."}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {whole}");
        assert_eq!(whole["object"], "response");
        assert_eq!(whole["status"], "completed");
        assert!(
            !whole["output"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(
            whole["usage"]["total_tokens"].as_u64().unwrap() > 0,
            "{whole}"
        );
        if model == "gpt-own" {
            assert!(route.starts_with("openai-own;"), "{route}");
            let sent = h.mock.requests().last().unwrap().clone();
            assert!(
                sent.path.ends_with("/v1/responses"),
                "passed through: {}",
                sent.path
            );
            let sent = sent.json().unwrap();
            assert_eq!(sent["model"], "gpt-4.1");
            assert_eq!(
                sent["instructions"], "Be brief.",
                "as the client sent it: {sent}"
            );
        } else {
            assert_eq!(whole["instructions"], "Be brief.");
            let sent = h.mock.requests().last().unwrap().clone();
            assert!(
                !sent.path.ends_with("/v1/responses"),
                "translated: {}",
                sent.path
            );
        }
    }
    // A cut upstream ends with an error event and response.failed (or the upstream's cut
    // passed on, with an error event after it): never a silent end.
    for model in ["gpt-cut", "claude-cut"] {
        let body = json!({"model": model, "input": "Say hello", "stream": true});
        let (status, _, raw) = h.post_stream("/v1/responses", &body).await.unwrap();
        assert_eq!(status, 200, "{model}");
        let events = response_events(&raw);
        let k = kinds(&events);
        assert_eq!(
            &k[k.len() - 2..],
            ["error", "response.failed"],
            "{model}: {k:?}"
        );
        assert_eq!(events[events.len() - 1]["response"]["status"], "failed");
    }
    let body = json!({"model": "gpt-own-cut", "input": "Say hello", "stream": true});
    let (status, _, raw) = h.post_stream("/v1/responses", &body).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        raw.last().unwrap().event.as_deref(),
        Some("error"),
        "{raw:?}"
    );
}

#[tokio::test]
async fn stored_responses_continue_a_function_call_round_trip_and_survive_a_restart() {
    let (h, store) = responses_harness("stored").await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather in a city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let (status, _, first) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt-tool", "input": "What is the weather in Paris?", "tools": tools,
                "metadata": {"session": "s1"}}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap_or_else(|| panic!("no function call: {first}"));
    assert!(
        call["arguments"].as_str().unwrap().starts_with('{'),
        "{call}"
    );
    assert_eq!(first["metadata"]["session"], "s1");
    assert_eq!(first["store"], true);
    let first_id = first["id"].as_str().unwrap().to_owned();

    // The function's output continues the stored conversation.
    let (status, _, second) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt", "previous_response_id": first_id, "tools": tools,
                "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21C"}]}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], first_id.as_str());
    let sent = h.mock.requests().last().unwrap().json().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{sent}");
    assert_eq!(messages[0]["content"], "What is the weather in Paris?");
    assert_eq!(
        messages[1]["tool_calls"][0]["id"], call["call_id"],
        "{sent}"
    );
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], call["call_id"]);
    assert_eq!(messages[2]["content"], "sunny, 21C");

    // Stored: read back, its input items listed, deleted.
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (status, _, got) = get(h.url(&format!("/v1/responses/{first_id}"))).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, first);
    let (status, _, items) = get(h.url(&format!("/v1/responses/{second_id}/input_items"))).await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["type"], "function_call_output", "{items}");
    assert!(items["data"][0]["id"].is_string(), "{items}");
    let r = client()
        .delete(h.url(&format!("/v1/responses/{second_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, gone) = get(h.url(&format!("/v1/responses/{second_id}"))).await;
    assert_eq!(status, 404, "{gone}");
    let (status, _, body) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt", "previous_response_id": second_id, "input": "and then?"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id", "{body}");
    // Not stored when the client says so.
    let (_, _, unstored) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt", "input": "hi", "store": false}),
    )
    .await;
    let (status, _, _) = get(h.url(&format!(
        "/v1/responses/{}",
        unstored["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(status, 404);

    // A streamed response is stored once it ends, and everything survives a restart.
    let (_, _, raw) = h
        .post_stream(
            "/v1/responses",
            &json!({"model": "claude", "input": "hi", "stream": true}),
        )
        .await
        .unwrap();
    let streamed_id = raw[0].json()["response"]["id"].as_str().unwrap().to_owned();
    assert!(
        answers_within_a_second(&h, &format!("/v1/responses/{streamed_id}")).await,
        "the streamed response is stored"
    );
    let Harness { gateway, mock, .. } = h;
    gateway.shutdown().await.unwrap();
    let text = config_text(&mock.base_url(), &responses_extra(&mock, &store));
    let config = Config::from_toml_str(&text, &test_env()).unwrap();
    let options = GatewayOptions {
        local: LocalLoad::Offline,
        quiet: true,
        ..GatewayOptions::default()
    };
    let again = Gateway::start(config, options).await.unwrap();
    let (status, _, got) = get(format!("{}/v1/responses/{first_id}", again.url())).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], first_id.as_str());
    let (status, _, got) = get(format!("{}/v1/responses/{streamed_id}", again.url())).await;
    assert_eq!(status, 200, "{got}");
    again.shutdown().await.unwrap();
}

/// The input items of a response that continues others are those of the whole conversation:
/// each earlier turn's input and output, then its own; newest first unless `order=asc`, paged
/// with `limit` and `after`.
#[tokio::test]
async fn input_items_list_the_whole_conversation_over_a_three_turn_chain() {
    let (h, _store) = responses_harness("items").await;
    let mut previous: Option<String> = None;
    let mut turns = Vec::new();
    for text in ["one", "two", "three"] {
        let mut body = json!({"model": "gpt", "input": text});
        if let Some(p) = &previous {
            body["previous_response_id"] = json!(p);
        }
        let (status, _, r) = post(h.url("/v1/responses"), &body).await;
        assert_eq!(status, 200, "{r}");
        previous = Some(r["id"].as_str().unwrap().to_owned());
        turns.push(r);
    }
    let last = previous.unwrap();
    let list = |query: &str| get(h.url(&format!("/v1/responses/{last}/input_items{query}")));
    // Oldest first: one, its answer, two, its answer, three.
    let (status, _, asc) = list("?order=asc").await;
    assert_eq!(status, 200, "{asc}");
    let data = asc["data"].as_array().unwrap();
    assert_eq!(data.len(), 5, "{asc}");
    let user_text = |item: &Value| -> String {
        let content = &item["content"];
        content
            .as_str()
            .map(str::to_owned)
            .or_else(|| content[0]["text"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{item}"))
    };
    for (i, text) in [(0, "one"), (2, "two"), (4, "three")] {
        assert_eq!(data[i]["role"], "user", "{asc}");
        assert_eq!(user_text(&data[i]), text, "{asc}");
    }
    assert_eq!(data[1], turns[0]["output"][0], "{asc}");
    assert_eq!(data[3], turns[1]["output"][0], "{asc}");
    let ids: Vec<&str> = data.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 5, "every item has its own id: {ids:?}");
    assert_eq!(asc["first_id"], ids[0]);
    assert_eq!(asc["last_id"], ids[4]);
    assert_eq!(asc["has_more"], false);

    // Newest first by default, in pages of two.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let (status, _, page) = list(&query).await;
        assert_eq!(status, 200, "{page}");
        let items = page["data"].as_array().unwrap();
        assert!(!items.is_empty() && items.len() <= 2, "{page}");
        assert_eq!(page["first_id"], items[0]["id"], "{page}");
        assert_eq!(page["last_id"], items[items.len() - 1]["id"], "{page}");
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            break;
        }
        query = format!("?limit=2&after={}", page["last_id"].as_str().unwrap());
    }
    let newest_first: Vec<&str> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    let (_, _, desc) = list("?order=desc&limit=1").await;
    assert_eq!(user_text(&desc["data"][0]), "three", "{desc}");
    assert_eq!(desc["has_more"], true);

    // The first turn's own list is its own input alone; bad paging is a 400 naming the field.
    let first = turns[0]["id"].as_str().unwrap();
    let (_, _, own) = get(h.url(&format!("/v1/responses/{first}/input_items"))).await;
    assert_eq!(own["data"].as_array().unwrap().len(), 1, "{own}");
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?order=up", "order"),
        ("?after=nope", "after"),
    ] {
        let (status, _, body) = list(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
}

/// A response OpenAI's own Responses API answered (and keeps) is read, listed and deleted
/// through Tandem: the calls reach that API with the backend's key; one not stored there, or
/// unknown, is a 404 that asks nobody.
#[tokio::test]
async fn responses_kept_by_openai_are_read_listed_and_deleted_through_it() {
    let (h, _store) = responses_harness("held").await;
    let (status, _, whole) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt-own", "input": "Say hello"}),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    let id = whole["id"].as_str().unwrap().to_owned();
    let (status, _, got) = get(h.url(&format!("/v1/responses/{id}"))).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], id.as_str());
    let sent = h.mock.requests().last().unwrap().clone();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", format!("/v1/responses/{id}").as_str())
    );
    assert_eq!(sent.header("authorization"), Some("Bearer sk-mock"));
    let (status, _, items) =
        get(h.url(&format!("/v1/responses/{id}/input_items?order=asc&limit=5"))).await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["data"][0]["id"], "msg_mock_input", "{items}");
    assert_eq!(
        h.mock.requests().last().unwrap().path,
        format!("/v1/responses/{id}/input_items?order=asc&limit=5")
    );
    let r = client()
        .delete(h.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted: Value = r.json().await.unwrap();
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(h.mock.requests().last().unwrap().method, "DELETE");
    let before = h.mock.request_count();
    let (status, _, _) = get(h.url(&format!("/v1/responses/{id}"))).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(h.url("/v1/responses/resp_unknown")).await;
    assert_eq!(status, 404);
    assert_eq!(h.mock.request_count(), before, "nobody else is asked");

    // A streamed one, once response.created named it.
    let (_, _, raw) = h
        .post_stream(
            "/v1/responses",
            &json!({"model": "gpt-own", "input": "Say hello", "stream": true}),
        )
        .await
        .unwrap();
    let streamed = raw[0].json()["response"]["id"].as_str().unwrap().to_owned();
    assert!(
        answers_within_a_second(&h, &format!("/v1/responses/{streamed}")).await,
        "the streamed response is found upstream"
    );
    // One the client asked OpenAI not to store is not looked for there.
    let (_, _, unstored) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt-own", "input": "Say hello", "store": false}),
    )
    .await;
    assert_eq!(unstored["id"], id.as_str(), "the mock's fixture");
    let before = h.mock.request_count();
    let (status, _, _) = get(h.url(&format!("/v1/responses/{id}"))).await;
    assert_eq!(status, 404);
    assert_eq!(h.mock.request_count(), before);
}

/// An Azure backend takes the Responses API on Azure's v1 path (`/openai/v1/responses`, no
/// deployment in the path and no `api-version`), the deployment named as the body's `model`,
/// with its `api-key` header; whole and streamed.
#[tokio::test]
async fn azure_takes_responses_on_its_v1_path_with_the_deployment_as_model() {
    let store = scratch("azure").join("store.log");
    let h = Harness::start_around(MockConfig::default(), |mock| {
        format!(
            "{}\n[store]\npath = \"{}\"\n",
            tandem_tests::azure_backend(mock),
            store.display()
        )
    })
    .await
    .unwrap();
    for stream in [false, true] {
        let body = json!({"model": "gpt-azure", "input": "Say hello", "stream": stream});
        let r = client()
            .post(h.url("/v1/responses"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("Hello! How can I help you today?"), "{text}");
        let sent = h.mock.requests().last().unwrap().clone();
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.path, "/openai/v1/responses", "stream {stream}");
        assert_eq!(sent.header("api-key"), Some("sk-mock"));
        assert_eq!(sent.header("authorization"), None);
        let json = sent.json().unwrap();
        assert_eq!(json["model"], "prod-4o-mini", "{json}");
        assert_eq!(json["stream"], stream, "{json}");
    }
    // Embeddings stay on the deployment's path with the api-version.
    let (status, _, body) = post(
        h.url("/v1/embeddings"),
        &json!({"model": "gpt-azure", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.mock.requests().last().unwrap().path,
        "/openai/deployments/prod-4o-mini/embeddings?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn what_only_openai_runs_passes_through_to_it_and_is_a_400_elsewhere() {
    let (h, _store) = responses_harness("builtin").await;
    let body = |model: &str| {
        json!({"model": model, "input": "news today?",
               "tools": [{"type": "function", "name": "f"}, {"type": "web_search_preview"}]})
    };
    let (status, _, refused) = post(h.url("/v1/responses"), &body("gpt")).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "tools[1]", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web_search_preview"),
        "{refused}"
    );
    let (status, _, passed) = post(h.url("/v1/responses"), &body("gpt-own")).await;
    assert_eq!(status, 200, "{passed}");
    let sent = h.mock.requests().last().unwrap().json().unwrap();
    assert_eq!(sent["tools"][1]["type"], "web_search_preview", "{sent}");

    // Structured output where the backend cannot honour it: a 400 naming text.format.
    let (status, _, body) = post(
        h.url("/v1/responses"),
        &json!({"model": "claude", "input": "x",
                "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "text.format", "{body}");
    // ... and where it can, it goes upstream as chat's response_format.
    let (status, _, body) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt", "input": "x",
                "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = h.mock.requests().last().unwrap().json().unwrap();
    assert_eq!(
        sent["response_format"]["json_schema"]["name"], "a",
        "{sent}"
    );
    assert_eq!(body["text"]["format"]["type"], "json_schema", "{body}");
    // A field no backend here has a place for is refused, not dropped.
    let (status, _, body) = post(
        h.url("/v1/responses"),
        &json!({"model": "gpt", "input": "x", "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "reasoning", "{body}");
}

/// Runs `tests/py/<script>` with `spec` on the Python that `TANDEM_TEST_PYTHON` names (one with
/// the official SDKs: scripts/test.sh makes it); its output, or None (with a note) without one.
async fn python(script: &str, spec: &Value) -> Option<String> {
    use tandem_artifacts::EnvSource;
    let Some(python) = ProcessEnv.var("TANDEM_TEST_PYTHON") else {
        eprintln!(
            "skipping {script}: TANDEM_TEST_PYTHON is not set (scripts/test.sh makes a venv with the openai and anthropic SDKs)"
        );
        return None;
    };
    let path = format!("{}/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(&python)
        .arg(&path)
        .arg(spec.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {spec}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

#[tokio::test]
async fn the_official_sdks_against_the_mock_in_each_wire_format() {
    let (h, _store) = responses_harness("sdk").await;
    let base = format!("{}/v1", h.gateway.url());
    // Chat completions upstream (translated), with a tool round trip and embeddings.
    let spec = json!({"base_url": base, "model": "gpt", "tool_model": "gpt-tool",
                      "embedding_model": "gpt", "embedding_dims": 8});
    if python("openai_sdk.py", &spec).await.is_none() {
        return;
    }
    // Anthropic upstream (translated), with a tool round trip.
    python(
        "openai_sdk.py",
        &json!({"base_url": base, "model": "claude", "tool_model": "claude-tool"}),
    )
    .await;
    // OpenAI's own Responses API (passed through; it keeps its own responses).
    python(
        "openai_sdk.py",
        &json!({"base_url": base, "model": "gpt-own", "stored": false, "kept_upstream": true}),
    )
    .await;
    // Token counting: Anthropic's own, an estimate elsewhere.
    let url = h.gateway.url();
    python(
        "anthropic_sdk.py",
        &json!({"base_url": url, "model": "claude"}),
    )
    .await;
    python(
        "anthropic_sdk.py",
        &json!({"base_url": url, "model": "gpt"}),
    )
    .await;
}

#[tokio::test]
async fn the_official_sdks_against_the_local_model() {
    let store = scratch("sdk-local").join("store.log");
    let extra = format!("[store]\npath = \"{}\"\n", store.display());
    let Some((gw, _mock, engine)) = start_local(&extra).await else {
        return;
    };
    let base = format!("{}/v1", gw.url());
    let spec = json!({"base_url": base, "model": "local", "embedding_model": "minilm",
                      "embedding_dims": 384});
    if python("openai_sdk.py", &spec).await.is_none() {
        return;
    }
    let exact = engine
        .chat_prompt(
            &[
                tandem_local_model::ChatMessage::new("system", "Answer briefly."),
                tandem_local_model::ChatMessage::new("user", "What is the capital of France?"),
            ],
            true,
        )
        .unwrap()
        .len();
    python(
        "anthropic_sdk.py",
        &json!({"base_url": gw.url(), "model": "local", "expect": exact}),
    )
    .await;
    gw.shutdown().await.unwrap();
}
