//! The response cache end to end, over the mock upstream: exact hits, misses and bypasses on
//! `/v1/chat/completions` and `/v1/messages`, whole and streamed (the upstream's request count
//! proves a hit never called it), `cache-control`, nondeterministic requests, a restart with the
//! embedded store, a store that is down, the semantic cache with the router's encoder, and a
//! replayed stream read by the official `openai` and `anthropic` Python SDKs. Each case runs on
//! the embedded store and, when `TANDEM_TEST_REDIS_URL` is set, on Redis.

// A test skipped for want of a fetched model, a server or the SDKs says so on stderr.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tandem_lab::mock::{Fixtures, MockConfig, MockHandle, MockUpstream};
use tandem_tests::{Harness, SseEvent, config_text, parse_sse, streamed_text};

/// Where the cache keeps its answers in one run.
#[derive(Debug, Clone)]
enum Store {
    /// The embedded store in the cache directory.
    Embedded,
    /// Redis, under a prefix of this run's own.
    Redis { url: String, prefix: String },
}

/// The embedded store, and Redis when the test script started one.
fn stores() -> Vec<Store> {
    let mut stores = vec![Store::Embedded];
    match std::env::var("TANDEM_TEST_REDIS_URL") {
        Ok(url) => stores.push(Store::Redis {
            url,
            prefix: format!("tandem-test:{}", uuid::Uuid::new_v4()),
        }),
        Err(_) => eprintln!("redis part skipped: TANDEM_TEST_REDIS_URL is not set"),
    }
    stores
}

/// The tests' usual config plus cached routes, the cache directory `dir` and `store`.
fn config(mock: &MockHandle, dir: &Path, store: &Store, routes: &str) -> String {
    let (redis, prefix) = match store {
        Store::Embedded => (String::new(), String::new()),
        Store::Redis { url, prefix } => (
            format!("redis_url = \"{url}\"\n"),
            format!("[store]\nprefix = \"{prefix}\"\n"),
        ),
    };
    format!(
        r#"cache_dir = "{}"
{redis}
{prefix}
{}
[routes."cached-gpt"]
backends = ["openai"]
cache = {{ ttl_s = 60 }}

[routes."cached-claude"]
backends = ["anthropic"]
cache = {{ ttl_s = 60 }}

[routes."cached-any"]
backends = ["openai"]
cache = {{ ttl_s = 60, nondeterministic = true }}
{routes}
"#,
        dir.display(),
        config_text(&mock.base_url(), "")
    )
}

async fn mock() -> MockHandle {
    match MockUpstream::start_with(Fixtures::builtin(), MockConfig::default()).await {
        Ok((_, mock)) => mock,
        Err(e) => panic!("mock upstream: {e}"),
    }
}

async fn start(mock: MockHandle, dir: &Path, store: &Store, routes: &str) -> Harness {
    let text = config(&mock, dir, store, routes);
    let h = match Harness::start_on(mock, &text).await {
        Ok(h) => h,
        Err(e) => panic!("tandem: {e}"),
    };
    // Redis connects in the background; until it answers, the cache is (rightly) bypassed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !h.gateway.state.store.is_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h
}

/// A request body for (model, prompt, stream).
type Body = fn(&str, &str, bool) -> Value;

fn openai_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "temperature": 0, "max_tokens": 64,
           "stream_options": {"include_usage": true},
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": prompt}]})
}

fn anthropic_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "temperature": 0, "max_tokens": 64,
           "system": "Be brief.", "messages": [{"role": "user", "content": prompt}]})
}

/// One answer: status, headers, and the body (JSON) or the events.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    events: Vec<SseEvent>,
}

impl Answer {
    fn cache(&self) -> &str {
        self.headers
            .get("x-tandem-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
    }

    fn route(&self) -> &str {
        self.headers
            .get("x-tandem-route")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The answer's text in either API, whole or streamed.
    fn text(&self) -> String {
        if self.events.is_empty() {
            match self.body["content"][0]["text"].as_str() {
                Some(t) => t.to_owned(),
                None => self.body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }
        } else if self.events.iter().any(|e| e.event.is_some()) {
            self.events
                .iter()
                .filter_map(|e| e.json()["delta"]["text"].as_str().map(str::to_owned))
                .collect()
        } else {
            streamed_text(&self.events)
        }
    }

    /// Whether a stream ended as its API ends one.
    fn stream_complete(&self) -> bool {
        match self.events.last() {
            Some(last) if last.data == "[DONE]" => true,
            Some(last) => last.event.as_deref() == Some("message_stop"),
            None => false,
        }
    }
}

async fn send(h: &Harness, path: &str, body: &Value, cache_control: Option<&str>) -> Answer {
    let mut request = h.client.post(h.url(path)).json(body);
    if let Some(cc) = cache_control {
        request = request.header("cache-control", cc);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => panic!("{path}: {e}"),
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let streamed = body["stream"] == true && status == 200;
    Answer {
        status,
        headers,
        body: if streamed {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
        },
        events: if streamed {
            parse_sse(&text)
        } else {
            Vec::new()
        },
    }
}

/// Miss then hit, whole and streamed, on both APIs: a hit answers without calling the upstream,
/// with the same text, a complete stream in the client's own event shapes, the route marked and
/// nothing billed.
#[tokio::test]
async fn hits_misses_whole_and_streamed_on_both_apis() {
    for store in stores() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(mock().await, dir.path(), &store, "").await;
        let cases: [(&str, &str, Body); 2] = [
            ("/v1/chat/completions", "cached-gpt", openai_body),
            ("/v1/messages", "cached-claude", anthropic_body),
        ];
        for (path, model, body) in cases {
            // Whole first: the upstream answers and the answer is stored.
            let calls = h.mock.request_count();
            let first = send(&h, path, &body(model, "Hello there", false), None).await;
            assert_eq!(first.status, 200, "{store:?} {path}: {}", first.body);
            assert_eq!(first.cache(), "miss", "{store:?} {path}");
            assert_eq!(h.mock.request_count(), calls + 1);
            let text = first.text();
            assert!(!text.is_empty());

            let again = send(&h, path, &body(model, "Hello there", false), None).await;
            assert_eq!(again.status, 200);
            assert_eq!(again.cache(), "hit", "{store:?} {path}");
            assert_eq!(again.route(), format!("cache; route {model}; exact hit"));
            assert_eq!(again.text(), text);
            assert_eq!(h.mock.request_count(), calls + 1, "a hit calls no upstream");

            // The whole answer serves a stream, in the client's event shapes.
            let streamed = send(&h, path, &body(model, "Hello there", true), None).await;
            assert_eq!(streamed.cache(), "hit", "{store:?} {path}");
            assert!(streamed.stream_complete(), "{:?}", streamed.events);
            assert_eq!(streamed.text(), text);
            assert_eq!(h.mock.request_count(), calls + 1);

            // A streamed answer is stored once it ends, and serves a whole answer.
            let s_first = send(&h, path, &body(model, "Stream this", true), None).await;
            assert_eq!(s_first.cache(), "miss");
            assert!(s_first.stream_complete());
            assert_eq!(h.mock.request_count(), calls + 2);
            let s_again = send(&h, path, &body(model, "Stream this", true), None).await;
            assert_eq!(s_again.cache(), "hit");
            assert_eq!(s_again.text(), s_first.text());
            let s_whole = send(&h, path, &body(model, "Stream this", false), None).await;
            assert_eq!(s_whole.cache(), "hit");
            assert_eq!(s_whole.text(), s_first.text());
            assert_eq!(h.mock.request_count(), calls + 2);
        }
        // The same question over the other API is the same normalized request: a hit.
        let across = send(
            &h,
            "/v1/messages",
            &anthropic_body("cached-gpt", "Hello there", false),
            None,
        )
        .await;
        assert_eq!(across.status, 200, "{}", across.body);
        assert_eq!(across.cache(), "hit", "{store:?}");
        assert_eq!(across.body["type"], "message");
        let metrics = h.metrics().await;
        assert!(
            metrics
                .contains(r#"tandem_cache_requests_total{route="cached-gpt",result="exact_hit"}"#),
            "{metrics}"
        );
        assert!(
            !metrics.contains(r#"backend="cache",kind="#),
            "hits are not billed: {metrics}"
        );
    }
}

/// `cache-control: no-store` and `no-cache`, and a request sampled above temperature 0, bypass
/// the cache (the upstream answers each time); a route that opts in caches them anyway; a
/// route without a cache sends no cache header.
#[tokio::test]
async fn no_store_no_cache_and_nondeterministic_requests_bypass() {
    for store in stores() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(mock().await, dir.path(), &store, "").await;
        let path = "/v1/chat/completions";
        let body = openai_body("cached-gpt", "Hi", false);
        assert_eq!(send(&h, path, &body, None).await.cache(), "miss");
        let calls = h.mock.request_count();
        for cc in ["no-store", "no-cache", "max-age=0, no-store"] {
            let a = send(&h, path, &body, Some(cc)).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.cache(), "bypass", "{cc}");
        }
        assert_eq!(h.mock.request_count(), calls + 3);
        assert_eq!(send(&h, path, &body, None).await.cache(), "hit");

        let mut warm = body.clone();
        warm["temperature"] = json!(0.7);
        for _ in 0..2 {
            assert_eq!(send(&h, path, &warm, None).await.cache(), "bypass");
        }
        let mut unset = body.clone();
        unset.as_object_mut().unwrap().remove("temperature");
        assert_eq!(send(&h, path, &unset, None).await.cache(), "bypass");
        assert_eq!(h.mock.request_count(), calls + 6);

        warm["model"] = json!("cached-any");
        assert_eq!(send(&h, path, &warm, None).await.cache(), "miss");
        assert_eq!(send(&h, path, &warm, None).await.cache(), "hit");

        let plain = send(&h, path, &openai_body("gpt", "Hi", false), None).await;
        assert_eq!(plain.status, 200);
        assert_eq!(plain.cache(), "none");
    }
}

/// An answer stored before a restart answers after it (the embedded store's files, or Redis).
#[tokio::test]
async fn the_cache_survives_a_restart() {
    for store in stores() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(mock().await, dir.path(), &store, "").await;
        let body = anthropic_body("cached-claude", "Remember me", false);
        assert_eq!(send(&h, "/v1/messages", &body, None).await.cache(), "miss");
        let calls = h.mock.request_count();
        let Harness { gateway, mock, .. } = h;
        gateway.shutdown().await.unwrap();

        let h = start(mock, dir.path(), &store, "").await;
        let a = send(&h, "/v1/messages", &body, None).await;
        assert_eq!(a.cache(), "hit", "{store:?}");
        assert_eq!(h.mock.request_count(), calls);
    }
}

/// A store that cannot be reached makes the cache a bypass: every request is answered.
#[tokio::test]
async fn an_unreachable_store_is_a_bypass_never_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Redis {
        url: "redis://127.0.0.1:9/".into(),
        prefix: "tandem-test:down".into(),
    };
    let h = start(mock().await, dir.path(), &store, "").await;
    for stream in [false, true, false] {
        let a = send(
            &h,
            "/v1/chat/completions",
            &openai_body("cached-gpt", "Hi", stream),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.cache(), "bypass");
        assert!(a.route().starts_with("openai; route cached-gpt"));
    }
    assert_eq!(h.mock.request_count(), 3);
    let metrics = h.metrics().await;
    assert!(metrics.contains("tandem_store_up 0"), "{metrics}");
}

/// The Python that has the official SDKs (`TANDEM_TEST_PYTHON`, set by scripts/test.sh).
fn sdk_python() -> Option<String> {
    let python = std::env::var("TANDEM_TEST_PYTHON").ok().or_else(|| {
        let venv = std::env::var("TANDEM_TEST_VENV").unwrap_or_else(|_| "target/py".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(venv);
        let p = root.join("bin").join("python");
        p.exists().then(|| p.display().to_string())
    });
    let ok = python.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .args(["-c", "import openai, anthropic"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!(
            "skipped: no python with the openai and anthropic SDKs (set TANDEM_TEST_PYTHON; scripts/test.sh makes one)"
        );
    }
    ok.then_some(python).flatten()
}

/// A replayed stream is read by the official SDKs as they read the real APIs' streams: the
/// script streams each question twice (a miss, then a hit) and checks the events and the text.
#[tokio::test]
async fn a_replayed_stream_parses_with_the_official_sdks() {
    let Some(python) = sdk_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let h = start(mock().await, dir.path(), &Store::Embedded, "").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/cache_replay.py");
    let url = h.gateway.url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("openai ok") && stdout.contains("anthropic ok"),
        "{stdout}"
    );
    // Two streams per API went upstream; the replays did not.
    assert_eq!(h.mock.request_count(), 2, "{stdout}");
}

/// The semantic cache: a paraphrase above the route's similarity is answered from the cache; a
/// different question is not. Needs the router's encoder in the model cache.
#[tokio::test]
async fn a_paraphrase_is_a_semantic_hit_and_another_question_a_miss() {
    let models = tandem_router_policy::encoder::default_cache_root();
    if !models.exists() {
        eprintln!("skipped: no model cache at {}", models.display());
        return;
    }
    for store in stores() {
        // The models are linked into a cache directory of the test's own, so the answers it
        // stores (and the embedded store's state) stay there.
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&models).unwrap().flatten() {
            if entry.file_name() != "response-cache" && entry.file_name() != "state" {
                std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))
                    .unwrap();
            }
        }
        let routes = r#"
[routes."semantic"]
backends = ["openai"]
cache = { ttl_s = 60, semantic = true, similarity = 0.8 }
"#;
        let h = start(mock().await, dir.path(), &store, routes).await;
        let policy = h.gateway.state.policy.clone().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !policy.has_encoder() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !policy.has_encoder() {
            eprintln!("skipped: the router encoder is not fetched (tandem models fetch --all)");
            return;
        }
        let path = "/v1/chat/completions";
        let first = send(
            &h,
            path,
            &openai_body("semantic", "What is the capital of France?", false),
            None,
        )
        .await;
        assert_eq!(first.cache(), "miss", "{store:?}");
        let calls = h.mock.request_count();
        let near = send(
            &h,
            path,
            &openai_body("semantic", "What's the capital city of France?", true),
            None,
        )
        .await;
        assert_eq!(near.cache(), "hit", "{store:?}: {}", near.route());
        assert!(
            near.route()
                .starts_with("cache; route semantic; semantic hit (similarity 0."),
            "{}",
            near.route()
        );
        assert_eq!(near.text(), first.text());
        assert_eq!(h.mock.request_count(), calls);

        let far = send(
            &h,
            path,
            &openai_body("semantic", "How long should sourdough bread rise?", false),
            None,
        )
        .await;
        assert_eq!(far.cache(), "miss", "{}", far.route());
        assert_eq!(h.mock.request_count(), calls + 1);
        // The same paraphrase with another system prompt is another context: a miss.
        let mut other = openai_body("semantic", "What's the capital city of France?", false);
        other["messages"][0]["content"] = json!("Answer in French.");
        assert_eq!(send(&h, path, &other, None).await.cache(), "miss");
    }
}
