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
async fn start_local(extra: &str) -> Option<(Gateway, tandem_lab::mock::MockHandle)> {
    let engine = engine().await?;
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let text = config_text(&mock.base_url(), &format!("{LOCAL_ROUTES}\n{extra}"));
    let config = Config::from_toml_str(&text, &test_env()).unwrap();
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine),
        quiet: true,
        ..GatewayOptions::default()
    };
    Some((Gateway::start(config, options).await.unwrap(), mock))
}

async fn post(url: String, body: &Value) -> (u16, String, Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let route = r
        .headers()
        .get("x-tandem-route")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
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
    let h = Harness::start(LOCAL_ROUTES).await.unwrap();
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
    let Some((gw, _mock)) = start_local("").await else {
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
    gw.shutdown().await.unwrap();
}
