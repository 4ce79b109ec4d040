//! Production controls end to end, against the mock upstream: virtual keys through the admin API
//! and the `tandem keys` CLI, rate limits, budgets and spend, and Redis faults. Tests that need
//! Redis read `TANDEM_TEST_REDIS_URL` (the test script starts one) and say so when it is unset;
//! the same checks run on the embedded store.

// Skipped tests say so on stderr; helpers outside `#[test]` functions panic like the tests.
#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};
use tandem_gateway::config::hash_api_key;
use tandem_tests::Harness;

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
