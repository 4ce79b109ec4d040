//! Production controls end to end, against the mock upstream: virtual keys through the admin API
//! and the `tandem keys` CLI, rate limits (in one process, and across three `tandem serve`
//! processes sharing one Redis), budgets and spend, and Redis faults. Tests that need
//! Redis read `TANDEM_TEST_REDIS_URL` (the test script starts one) and say so when it is unset;
//! the same checks run on the embedded store.

// Skipped tests say so on stderr; helpers outside `#[test]` functions panic like the tests.
#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tandem_gateway::config::{Config, hash_api_key};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockUpstream};
use tandem_lab::redis::RedisServer;
use tandem_tests::{Harness, client, config_text, metrics_of, test_env};

/// What the mock reports for every plain answer (its fixtures): 1117 prompt tokens of which
/// 1024 cached, 10 completion tokens; at the test config's `openai` prices (1, 2 and 0.5 dollars
/// per million input, output and cached input tokens) that is this many dollars.
const ANSWER_COST: f64 = (93.0 * 1.0 + 1024.0 * 0.5 + 10.0 * 2.0) / 1e6;
/// Tokens of one plain answer.
const ANSWER_TOKENS: u64 = 1127;

const ADMIN_KEY: &str = "admin-secret";

/// The `[server]` lines of an admin listener on a free port.
fn admin_server() -> String {
    format!(
        "admin_listen = \"127.0.0.1:0\"\nadmin_key_hashes = [\"{}\"]\n",
        hash_api_key(ADMIN_KEY)
    )
}

fn admin_url(h: &Harness, path: &str) -> String {
    format!("{}{path}", h.gateway.admin_url().expect("admin listener"))
}

/// One admin API call with the admin key: status and JSON body.
async fn admin(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = h
        .client
        .request(method, admin_url(h, path))
        .bearer_auth(ADMIN_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A chat request with `key`: status, headers, body.
async fn chat_with(
    h: &Harness,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The `tandem` binary beside this test's own (`target/<profile>/tandem`), or `TANDEM_BIN`.
fn tandem_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TANDEM_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("tandem");
    bin.is_file().then_some(bin)
}

#[tokio::test]
async fn the_admin_api_needs_its_own_key_on_its_own_listener() {
    let h = Harness::start(&admin_server()).await.unwrap();
    // No key, a wrong key: 401.
    let r = h
        .client
        .get(admin_url(&h, "/admin/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client
        .get(admin_url(&h, "/admin/keys"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The admin API is not on the serving port.
    let r = h
        .client
        .get(h.url("/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, body) = admin(&h, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]));
}

#[tokio::test]
async fn a_virtual_key_lives_through_create_use_update_and_revoke() {
    let h = Harness::start(&admin_server()).await.unwrap();
    // Before any key exists, requests need none.
    let (status, _, _) = chat_with(&h, "anything", &hello("gpt")).await;
    assert_eq!(status, 200);

    let (status, created) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "app", "models": ["gpt"], "metadata": {"team": "search", "user": "ana"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["hash"], hash_api_key(&key));
    assert_eq!(created["metadata"]["team"], "search");

    // The key works; no key or an unknown one does not any more.
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 200);
    assert_eq!(chat_with(&h, "anything", &hello("gpt")).await.0, 401);

    // Listed without the key itself; bad fields are named.
    let (_, listed) = admin(&h, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(listed["data"][0]["id"], id);
    assert!(!listed.to_string().contains(&key));
    let (status, body) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"requests_per_minute": "many"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "requests_per_minute");

    let (status, updated) = admin(
        &h,
        reqwest::Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"models": []})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(chat_with(&h, &key, &hello("claude")).await.0, 200);

    let (status, revoked) = admin(
        &h,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_u64());
    let (status, _, body) = chat_with(&h, &key, &hello("gpt")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = admin(&h, reqwest::Method::DELETE, "/admin/keys/vk_nothing", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_lists_and_revokes_keys() {
    let Some(bin) = tandem_bin() else {
        eprintln!("skipped: no tandem binary beside the tests (cargo build -p tandem-gateway)");
        return;
    };
    let h = Harness::start(&admin_server()).await.unwrap();
    let url = h.gateway.admin_url().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .arg("keys")
            .args(args)
            .env("TANDEM_ADMIN_URL", &url)
            .env("TANDEM_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "create", "--name", "cli", "--model", "gpt", "--rpm", "100", "--meta", "team=ops",
        ])
    });
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["requests_per_minute"], 100);
    assert_eq!(created["metadata"]["team"], "ops");
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 200);

    let (ok, stdout, _) = tokio::task::block_in_place(|| run(&["list"]));
    assert!(ok);
    assert!(stdout.contains(&id) && !stdout.contains(&key));

    let (ok, _, stderr) = tokio::task::block_in_place(|| run(&["revoke", &id]));
    assert!(ok, "{stderr}");
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 401);

    // A wrong admin key is an error with the API's answer.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&bin)
            .args(["keys", "list", "--admin-url", &url, "--admin-key", "wrong"])
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

fn redis_url() -> Option<String> {
    match std::env::var("TANDEM_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: TANDEM_TEST_REDIS_URL is not set (scripts/test.sh starts Redis)");
            None
        }
    }
}

/// Top-level config lines for the store: Redis at `url` under a prefix of its own, or nothing
/// (the embedded store).
fn store_lines(redis: Option<&str>) -> String {
    match redis {
        Some(url) => format!(
            "redis_url = \"{url}\"\n[store]\nprefix = \"tandem-test-{}\"\ntimeout_ms = 250\n",
            uuid_like()
        ),
        None => String::new(),
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{n:x}-{}", std::process::id())
}

/// Tandem in front of the mock with `top` (top-level lines and tables before `[server]`) and
/// `server` (lines of `[server]`), its embedded store (when used) in `state_dir`.
async fn start(top: &str, server: &str, state_dir: Option<tempfile::TempDir>) -> Harness {
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let text = format!("{top}\n{}", config_text(&mock.base_url(), server));
    let mut config = Config::from_toml_str(&text, &test_env()).unwrap();
    let state_dir = state_dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    config.controls.store.path = Some(state_dir.path().join("store.log"));
    let options = GatewayOptions {
        local: LocalLoad::Offline,
        quiet: true,
        ..GatewayOptions::default()
    };
    let gateway = Gateway::start(config, options).await.unwrap();
    // A replica with Redis connects in the background: serve once it has.
    for _ in 0..100 {
        if gateway.state.store.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Harness {
        gateway,
        mock,
        client: client(),
        state_dir,
    }
}

/// The `[server]` lines with the admin listener, and a route `limited` on the mock's OpenAI
/// backend with `limits` (TOML lines).
fn limited_route(limits: &str) -> String {
    format!(
        "{}\n[routes.limited]\nbackends = [\"openai\"]\n{limits}\n",
        admin_server()
    )
}

async fn create_key(h: &Harness, spec: Value) -> (String, String) {
    let (status, created) = admin(h, reqwest::Method::POST, "/admin/keys", Some(spec)).await;
    assert_eq!(status, 201, "{created}");
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

/// Today's spend report, once `want` holds of it (charges land in the background).
async fn spend_when(h: &Harness, want: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, report) = admin(h, reqwest::Method::GET, "/admin/spend", None).await;
        assert_eq!(status, 200, "{report}");
        if want(&report) {
            return report;
        }
        last = report;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the spend report never got there: {last}");
}

/// Today's spend report once key `id` has spent `dollars`.
async fn key_spend_reaches(h: &Harness, id: &str, dollars: f64) -> Value {
    spend_when(h, |r| {
        r["spend"]["key"][id]
            .as_f64()
            .is_some_and(|v| close(v, dollars))
    })
    .await
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

async fn limits_hold_with_openai_and_anthropic_shapes(redis: Option<&str>) {
    let h = start(
        &store_lines(redis),
        &limited_route("requests_per_minute = 3\n"),
        None,
    )
    .await;
    let mut accepted = 0;
    for i in 0..5 {
        let (status, headers, body) = h
            .post("/v1/chat/completions", &hello("limited"))
            .await
            .unwrap();
        assert_eq!(headers["x-ratelimit-limit-requests"], "3");
        if status == 200 {
            accepted += 1;
            assert_eq!(
                headers["x-ratelimit-remaining-requests"],
                (2 - i).to_string().as_str()
            );
            assert!(headers.contains_key("x-ratelimit-reset-requests"));
        } else {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            assert_eq!(body["error"]["type"], "requests");
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=20).contains(&wait), "{wait}");
        }
    }
    assert_eq!(accepted, 3);
    // Anthropic's shape on /v1/messages.
    let (status, _, body) = h
        .post(
            "/v1/messages",
            &json!({"model": "limited", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // Other routes are not limited.
    assert_eq!(
        h.post("/v1/chat/completions", &hello("gpt"))
            .await
            .unwrap()
            .0,
        200
    );
}

#[tokio::test]
async fn route_limits_hold_on_the_embedded_store() {
    limits_hold_with_openai_and_anthropic_shapes(None).await;
}

#[tokio::test]
async fn route_limits_hold_on_redis() {
    let Some(url) = redis_url() else { return };
    limits_hold_with_openai_and_anthropic_shapes(Some(&url)).await;
}

/// A key's token limit: the reservation is corrected to the real usage, streams too.
async fn token_limits_follow_real_usage(redis: Option<&str>) {
    let h = start(&store_lines(redis), &admin_server(), None).await;
    // Room for two answers' real usage, not for three.
    let (key, _) = create_key(&h, json!({"tokens_per_minute": 2 * ANSWER_TOKENS + 500})).await;
    let (status, headers, _) = chat_with(&h, &key, &hello("gpt")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-ratelimit-limit-tokens"],
        (2 * ANSWER_TOKENS + 500).to_string().as_str()
    );
    let mut stream = hello("gpt");
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"prompt_tokens\":1117"), "{text}");
    // Both answers' real usage is charged (the corrections land in the background).
    let mut refused = None;
    for _ in 0..50 {
        let (status, headers, body) = chat_with(&h, &key, &hello("gpt")).await;
        if status == 429 {
            assert_eq!(body["error"]["type"], "tokens", "{body}");
            refused = Some(headers);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let headers = refused.expect("the third answer should not fit");
    let remaining: u64 = headers["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 600, "{remaining}");
}

#[tokio::test]
async fn token_limits_follow_real_usage_on_the_embedded_store() {
    token_limits_follow_real_usage(None).await;
}

#[tokio::test]
async fn token_limits_follow_real_usage_on_redis() {
    let Some(url) = redis_url() else { return };
    token_limits_follow_real_usage(Some(&url)).await;
}

/// Budgets charge exactly what the mock reported, whole and streamed, cached tokens at their
/// price; the next request after the budget is spent gets `insufficient_quota`.
async fn budgets_charge_reported_usage(redis: Option<&str>) {
    let h = start(&store_lines(redis), &admin_server(), None).await;
    // Two answers fit under the budget; the third request finds it spent.
    let (key, id) = create_key(&h, json!({"budget_daily_usd": ANSWER_COST * 1.5})).await;
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 200);
    key_spend_reaches(&h, &id, ANSWER_COST).await;
    let mut stream = hello("gpt");
    stream["stream"] = json!(true);
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    let report = key_spend_reaches(&h, &id, 2.0 * ANSWER_COST).await;
    assert!(
        close(
            report["spend"]["route"]["gpt"].as_f64().unwrap(),
            2.0 * ANSWER_COST
        ),
        "{report}"
    );
    assert!(close(
        report["spend"]["backend"]["openai"].as_f64().unwrap(),
        2.0 * ANSWER_COST
    ));
    assert!(close(
        report["total_usd"].as_f64().unwrap(),
        2.0 * ANSWER_COST
    ));
    let before = h.mock.request_count();
    let (status, _, body) = chat_with(&h, &key, &hello("gpt")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(
        h.mock.request_count(),
        before,
        "no upstream call after the budget is spent"
    );
    // The metric has it too.
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(&format!("tandem_key_spend_dollars_total{{key=\"{id}\"}}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn budgets_charge_reported_usage_on_the_embedded_store() {
    budgets_charge_reported_usage(None).await;
}

#[tokio::test]
async fn budgets_charge_reported_usage_on_redis() {
    let Some(url) = redis_url() else { return };
    budgets_charge_reported_usage(Some(&url)).await;
}

/// OpenAI's own Responses API, passed through as it is, is charged like chat: the key's spend is
/// the usage the upstream reported (cached tokens at their price), whole and streamed, and the
/// stream goes on to the client unchanged.
#[tokio::test]
async fn responses_passed_through_to_openai_charge_the_reported_usage() {
    let h = Harness::start_around(MockConfig::default(), |mock| {
        format!(
            r#"{}
[backends.openai-own]
kind = "openai"
base_url = "{}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt-own" = "gpt-4.1" }}
price = {{ input = 1.0, output = 2.0, cached_input = 0.5 }}
"#,
            admin_server(),
            mock.base_url()
        )
    })
    .await
    .unwrap();
    let (key, id) = create_key(&h, json!({})).await;
    let ask = |stream: bool| {
        h.client
            .post(h.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-own", "input": "hi", "stream": stream}))
            .send()
    };
    let r = ask(false).await.unwrap();
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    assert_eq!(
        whole["usage"]["input_tokens_details"]["cached_tokens"],
        1024
    );
    key_spend_reaches(&h, &id, ANSWER_COST).await;
    let r = ask(true).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"cached_tokens\":1024"), "{text}");
    assert_eq!(
        text.as_bytes(),
        &Fixtures::builtin().openai_responses_stream.body()[..],
        "passed on unchanged"
    );
    let report = key_spend_reaches(&h, &id, 2.0 * ANSWER_COST).await;
    assert!(
        close(
            report["spend"]["backend"]["openai-own"].as_f64().unwrap(),
            2.0 * ANSWER_COST
        ),
        "{report}"
    );
    let metrics = h.metrics().await;
    let cached = metrics
        .lines()
        .find(|l| {
            l.starts_with("tandem_tokens_total{")
                && l.contains("backend=\"openai-own\"")
                && l.contains("kind=\"cached")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(cached.ends_with(" 2048"), "{cached}");
}

#[tokio::test]
async fn keys_spend_and_limits_survive_a_restart_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let h = start("", &admin_server(), Some(dir)).await;
    let (key, id) = create_key(&h, json!({"budget_daily_usd": 1.0})).await;
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 200);
    spend_when(&h, |r| r["spend"]["key"][&id].is_f64()).await;
    let Harness {
        gateway, state_dir, ..
    } = h;
    gateway.shutdown().await.unwrap();
    let h = start("", &admin_server(), Some(state_dir)).await;
    // The key works, a stranger is refused, and the day's spend is still there.
    assert_eq!(chat_with(&h, &key, &hello("gpt")).await.0, 200);
    assert_eq!(chat_with(&h, "stranger", &hello("gpt")).await.0, 401);
    key_spend_reaches(&h, &id, 2.0 * ANSWER_COST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_fails_open_and_state_resumes_when_it_returns() {
    if !RedisServer::installed() {
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let mut redis = RedisServer::start().unwrap();
    let h = start(
        &format!("redis_url = \"{}\"\n", redis.url()),
        &limited_route("requests_per_minute = 100000\n"),
        None,
    )
    .await;
    let (key, id) = create_key(
        &h,
        json!({"requests_per_minute": 100000, "budget_daily_usd": 100.0}),
    )
    .await;
    let h = std::sync::Arc::new(h);
    // Bounded load: 8 clients, 400 requests, Redis killed a third of the way in.
    let load = {
        let h = h.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for c in 0..8 {
                let h = h.clone();
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    let mut failures = Vec::new();
                    for i in 0..50 {
                        let model = if (c + i) % 2 == 0 { "limited" } else { "gpt" };
                        let (status, _, body) = chat_with(&h, &key, &hello(model)).await;
                        if status != 200 {
                            failures.push(format!("{status} {body}"));
                        }
                    }
                    failures
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        })
    };
    while h.mock.request_count() < 130 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.down();
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let metrics = h.metrics().await;
    assert!(metrics.contains("tandem_store_up 0"), "{metrics}");
    // Redis returns, empty: the key is written back, limits count again.
    redis.up().unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        let (status, headers, _) = chat_with(&h, &key, &hello("limited")).await;
        assert_eq!(status, 200);
        if headers.contains_key("x-ratelimit-limit-requests") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "limits never resumed");
    let (status, listed) =
        admin(&h, reqwest::Method::GET, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(
        status, 200,
        "the key was not restored into the emptied Redis: {listed}"
    );
    assert!(h.metrics().await.contains("tandem_store_up 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_by_every_replica_within_a_second() {
    let Some(url) = redis_url() else { return };
    let top = store_lines(Some(&url));
    let a = start(&top, &admin_server(), None).await;
    // A second replica: same Redis, same prefix.
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let mut config = Config::from_toml_str(
        &format!("{top}\n{}", config_text(&mock.base_url(), "")),
        &test_env(),
    )
    .unwrap();
    config.controls.store.prefix = a.gateway.state.controls.config.store.prefix.clone();
    let b_dir = tempfile::tempdir().unwrap();
    config.controls.store.path = Some(b_dir.path().join("store.log"));
    let b = Gateway::start(
        config,
        GatewayOptions {
            local: LocalLoad::Offline,
            quiet: true,
            ..GatewayOptions::default()
        },
    )
    .await
    .unwrap();
    let (key, id) = create_key(&a, json!({})).await;
    let on_b = |key: String| {
        let url = format!("{}/v1/chat/completions", b.url());
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&hello("gpt"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The other replica learns of the new key within a second, and of its revocation too.
    let mut works = false;
    for _ in 0..20 {
        if on_b(key.clone()).await == 200 {
            works = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(works);
    admin(
        &a,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    let revoked_at = std::time::Instant::now();
    while on_b(key.clone()).await != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "replica b still accepts the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `tandem serve` process of its own (the built binary), killed when dropped.
struct Replica {
    child: Child,
    url: String,
    /// Its cache directory (the mirror of the key records lives there).
    _cache: tempfile::TempDir,
}

impl Replica {
    /// Starts `bin` with the config file `config` and waits for the address it prints.
    fn start(bin: &std::path::Path, config: &std::path::Path) -> Self {
        use std::io::BufRead as _;
        let cache = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--offline", "--config"])
            .arg(config)
            .env("TANDEM_CACHE_DIR", cache.path())
            .env("MOCK_OPENAI_KEY", "sk-mock")
            .env("MOCK_ANTHROPIC_KEY", "ak-mock")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => {
                    let status = child.wait().unwrap();
                    panic!("tandem serve exited before listening: {status}");
                }
            }
        };
        // Keep reading its stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            _cache: cache,
        }
    }

    /// Waits until its store reports Redis reachable (it connects in the background).
    async fn wait_for_redis(&self) {
        let client = client();
        for _ in 0..250 {
            if metrics_of(&client, &self.url)
                .await
                .contains("tandem_store_up 1")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never reached Redis", self.url);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test Redis and the `tandem` binary, or None (saying which is missing).
fn redis_and_bin() -> Option<(String, PathBuf)> {
    let url = redis_url()?;
    let Some(bin) = tandem_bin() else {
        eprintln!("skipped: no tandem binary beside the tests (cargo build -p tandem-gateway)");
        return None;
    };
    Some((url, bin))
}

/// Three `tandem serve` processes on one Redis under one prefix, in front of one mock, with
/// `routes` (TOML) added to the test config.
async fn three_replicas(
    bin: &std::path::Path,
    redis: &str,
    routes: &str,
) -> (
    Vec<Replica>,
    tandem_lab::mock::MockHandle,
    tempfile::TempDir,
) {
    let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    // A bound far above Redis's answer time even on a busy machine: a call past it would fail
    // open and let a request through unchecked.
    let store = store_lines(Some(redis)).replace("timeout_ms = 250", "timeout_ms = 3000");
    let text = format!(
        "{store}\n{}",
        config_text(
            &mock.base_url(),
            &format!("\n[limits]\nmax_concurrency = 10000\n{routes}")
        )
    );
    std::fs::write(&path, text).unwrap();
    let replicas: Vec<Replica> =
        tokio::task::block_in_place(|| (0..3).map(|_| Replica::start(bin, &path)).collect());
    for r in &replicas {
        r.wait_for_redis().await;
    }
    (replicas, mock, dir)
}

/// Sends `bodies` to `model` on the replicas in turn, all at once; each answer's replica,
/// status, headers and body.
async fn spread(
    replicas: &[Replica],
    bodies: Vec<Value>,
) -> Vec<(usize, u16, reqwest::header::HeaderMap, Value)> {
    let client = client();
    let sends = bodies.into_iter().enumerate().map(|(i, body)| {
        let url = format!("{}/v1/chat/completions", replicas[i % replicas.len()].url);
        let client = client.clone();
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let text = r.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (i % 3, status, headers, body)
        }
    });
    futures::future::join_all(sends).await
}

/// The requests-per-minute limit of a route, shared by three `tandem serve` processes through one
/// Redis: of 3N requests sent at once, spread evenly over the three, N are accepted (GCRA's
/// burst is the whole minute's N), plus at most one more for each 60/N s the load took (the
/// limiter refills one request per interval); every other request gets OpenAI's 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_limits_hold_across_three_processes_sharing_one_redis() {
    const N: u64 = 30;
    let Some((url, bin)) = redis_and_bin() else {
        return;
    };
    let routes = format!("[routes.limited]\nbackends = [\"openai\"]\nrequests_per_minute = {N}\n");
    let (replicas, mock, _dir) = three_replicas(&bin, &url, &routes).await;
    let started = std::time::Instant::now();
    let answers = spread(&replicas, vec![hello("limited"); 3 * N as usize]).await;
    let took = started.elapsed();
    // The stated tolerance: one more request per refill interval the load lasted.
    let interval = Duration::from_secs(60) / N as u32;
    let tolerance = (took.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let mut accepted_by = [0u64; 3];
    for (replica, status, headers, body) in &answers {
        assert_eq!(
            headers["x-ratelimit-limit-requests"],
            N.to_string().as_str(),
            "{body}"
        );
        if *status == 200 {
            accepted_by[*replica] += 1;
            continue;
        }
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert_eq!(body["error"]["type"], "requests", "{body}");
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (1..=interval.as_secs()).contains(&wait),
            "retry-after {wait}"
        );
    }
    let accepted: u64 = accepted_by.iter().sum();
    assert!(
        (N..=N + tolerance).contains(&accepted),
        "{accepted} accepted (per replica {accepted_by:?}), expected {N} to {} (the load took {took:?})",
        N + tolerance
    );
    assert_eq!(
        mock.request_count(),
        accepted,
        "refused requests reached the upstream"
    );
}

/// A limit large enough for pre-admission (1 % of it is six requests): the replicas let
/// requests through before Redis answers while their last answers leave room, and still pass
/// the limit by at most 1 % each (plus the refill tolerance above); Redis counts every request,
/// and near the limit every request waits for its decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_admission_passes_a_large_limit_by_at_most_one_percent_per_replica() {
    const N: u64 = 600;
    const WAVE: usize = 30;
    let Some((url, bin)) = redis_and_bin() else {
        return;
    };
    let routes = format!("[routes.limited]\nbackends = [\"openai\"]\nrequests_per_minute = {N}\n");
    let (replicas, mock, _dir) = three_replicas(&bin, &url, &routes).await;
    let started = std::time::Instant::now();
    // Waves of requests, so each replica's view of the limiter stays fresh between them.
    let mut answers = Vec::new();
    while answers.len() < 2 * N as usize {
        answers.extend(spread(&replicas, vec![hello("limited"); WAVE]).await);
    }
    let took = started.elapsed();
    let interval = Duration::from_secs(60) / N as u32;
    let refill = (took.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let tolerance = refill + 3 * N / 100;
    let mut accepted = 0u64;
    for (_, status, headers, body) in &answers {
        assert_eq!(
            headers["x-ratelimit-limit-requests"],
            N.to_string().as_str()
        );
        match status {
            200 => accepted += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(
        (N..=N + tolerance).contains(&accepted),
        "{accepted} accepted, expected {N} to {} (the load took {took:?})",
        N + tolerance
    );
    assert_eq!(
        mock.request_count(),
        accepted,
        "refused requests reached the upstream"
    );
    let client = client();
    let mut pre_admitted = 0u64;
    for r in &replicas {
        let text = metrics_of(&client, &r.url).await;
        pre_admitted += text
            .lines()
            .find_map(|l| l.strip_prefix("tandem_controls_pre_admitted_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    assert!(pre_admitted > 0, "no request went on before Redis answered");
    assert!(pre_admitted < accepted, "{pre_admitted} of {accepted}");
}

/// The tokens-per-minute limit shared the same way: each request reserves its estimate (more
/// than its real usage here, since `max_tokens` is set high) and is corrected to the usage the
/// upstream reported. The real tokens of the accepted answers stay within the limit plus one
/// answer's tokens (a correction landing while the last reservations are decided), and at least
/// as many answers are accepted as their estimates fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_limits_hold_across_three_processes_sharing_one_redis() {
    const ANSWERS: u64 = 10;
    let Some((url, bin)) = redis_and_bin() else {
        return;
    };
    let tpm = ANSWERS * ANSWER_TOKENS;
    let routes = format!("[routes.limited]\nbackends = [\"openai\"]\ntokens_per_minute = {tpm}\n");
    let (replicas, _mock, _dir) = three_replicas(&bin, &url, &routes).await;
    let mut body = hello("limited");
    // Estimated at about 1220 tokens (prompt bytes / 4 + max_tokens), used 1127.
    body["max_tokens"] = json!(1200);
    let estimate = tandem_gateway::controls::limits::estimate_tokens(
        serde_json::to_vec(&body).unwrap().len(),
        Some(1200),
    );
    assert!(estimate > ANSWER_TOKENS);
    let answers = spread(&replicas, vec![body; 3 * ANSWERS as usize]).await;
    let mut accepted = 0u64;
    for (_, status, headers, body) in &answers {
        assert_eq!(
            headers["x-ratelimit-limit-tokens"],
            tpm.to_string().as_str(),
            "{body}"
        );
        if *status == 200 {
            accepted += 1;
            assert_eq!(body["usage"]["total_tokens"], ANSWER_TOKENS, "{body}");
            continue;
        }
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert_eq!(body["error"]["type"], "tokens", "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    assert!(
        accepted * ANSWER_TOKENS <= tpm + ANSWER_TOKENS,
        "{accepted} answers of {ANSWER_TOKENS} tokens under a limit of {tpm}"
    );
    assert!(
        accepted >= tpm / estimate,
        "only {accepted} accepted; {} estimates fit",
        tpm / estimate
    );
}
