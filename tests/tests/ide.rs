//! The IDE code-completion backend end to end on the real Qwen2.5-Coder-0.5B (skipped, with a
//! message, when it is not in the cache): `/infill` and `/v1/completions` with `suffix` against
//! llama.cpp's greedy answer, keystroke reuse of the prefix cache (counted, and equal to a cold
//! run), supersede, `n_predict: 0` warm-up and the `t_max_predict_ms` budget; and the routing of
//! multi-line completions to a cloud FIM backend (the mock upstream), with its fallbacks.

// A test skipped for want of a fetched model says so on stderr.
#![allow(clippy::print_stderr)]
// The helpers below are test code too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockHandle, MockUpstream};
use tandem_local_model::{Engine, EngineConfig};
use tandem_tests::client;

/// A gateway with `[ide]` serving the code model (it is the chat model too, to load it once).
async fn start() -> Option<(Gateway, Engine)> {
    start_with(0).await
}

/// The same, its engine reusing cached runs of at least `cache_reuse` tokens where they moved;
/// both draft as `[ide]` does by default, so every greedy answer here is checked with drafts on.
/// They lay prompts out as llama.cpp's server does (`layout = "psm"`).
async fn start_with(cache_reuse: usize) -> Option<(Gateway, Engine)> {
    start_config(&format!("layout = \"psm\"\ncache_reuse = {cache_reuse}\n")).await
}

/// The same with `extra` config after `[ide] threads = 2` (more `[ide]` keys, then sections);
/// the engine is tuned as `[ide]` says.
async fn start_config(extra: &str) -> Option<(Gateway, Engine)> {
    let root = default_cache_root(&ProcessEnv);
    let Some(paths) = locate(&root, "qwen2.5-coder-0.5b") else {
        eprintln!(
            "skipping: qwen2.5-coder-0.5b is not in the cache at {} (run `tandem models fetch qwen2.5-coder-0.5b`)",
            root.display()
        );
        return None;
    };
    let config = Config::from_toml_str(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[ide]\nthreads = 2\n{extra}"),
        &MapEnv::default(),
    )
    .unwrap();
    let cfg = config.ide.as_ref().unwrap().tune(
        EngineConfig::new(paths.primary())
            .threads(2)
            .kv_cache_tokens(8192),
    );
    let engine = tokio::task::spawn_blocking(move || Engine::start(cfg))
        .await
        .unwrap()
        .unwrap();
    let options = GatewayOptions {
        local: LocalLoad::Engine(engine.clone()),
        ide: Some(engine.clone()),
        quiet: true,
        ..GatewayOptions::default()
    };
    Some((Gateway::start(config, options).await.unwrap(), engine))
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    post_with(c, url, body, None).await
}

async fn post_with(
    c: &reqwest::Client,
    url: String,
    body: Value,
    session: Option<&str>,
) -> (u16, Value) {
    let mut r = c.post(url).json(&body);
    if let Some(s) = session {
        r = r.header("x-tandem-editor-session", s);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ide/fim_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Waits until the engine runs nothing (a warm-up finished).
async fn idle(engine: &Engine) {
    for _ in 0..600 {
        let s = engine.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the engine stayed busy");
}

/// The prompt tokens `/infill` lays out (default `[ide]` budget, no repository context).
fn fim_tokens(engine: &Engine, prefix: &str, suffix: &str) -> Vec<u32> {
    let tok = engine.tokenizer();
    let input = tandem_local_model::FimInput {
        prefix,
        suffix,
        max_prefix_tokens: 1536,
        max_suffix_tokens: 512,
        max_extra_tokens: 2048,
        ..Default::default()
    };
    let built = tok
        .fim_template()
        .unwrap()
        .build(&input, None, |t| tok.encode_with(t, false, false));
    built.tokens
}

/// A body of `n` lines of distinct code, as context that takes a while to compute.
fn long_prefix(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "def helper_{i}(x):\n    return x * {i} + {}\n\n",
                i * 7 % 13
            )
        })
        .collect()
}

#[tokio::test]
async fn infill_and_fim_completions_match_llama_cpp_greedy() {
    let Some((gw, engine)) = start().await else {
        return;
    };
    let c = client();
    let f = fixture();
    let n = f["n_predict"].as_u64().unwrap();

    // The same prompt tokens as llama.cpp's layout.
    let ours: Vec<u64> = fim_tokens(
        &engine,
        f["input_prefix"].as_str().unwrap(),
        f["input_suffix"].as_str().unwrap(),
    )
    .into_iter()
    .map(u64::from)
    .collect();
    let theirs: Vec<u64> = f["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        ours, theirs,
        "prompt layout or tokenization differs from llama.cpp's"
    );

    let (status, v) = post(
        &c,
        gw.url() + "/infill",
        json!({"input_prefix": f["input_prefix"], "input_suffix": f["input_suffix"],
               "n_predict": n, "temperature": 0, "cache_prompt": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"], f["content"], "{v}");
    assert_eq!(
        v["tokens_evaluated"].as_u64().unwrap() as usize,
        theirs.len()
    );
    assert_eq!(
        v["tokens_predicted"].as_u64().unwrap() as usize,
        f["completion_tokens"].as_array().unwrap().len() + usize::from(v["stop_type"] == "eos"),
        "{v}"
    );
    for key in [
        "prompt_n",
        "prompt_ms",
        "predicted_n",
        "predicted_ms",
        "cache_n",
    ] {
        assert!(v["timings"][key].is_number(), "{key}: {v}");
    }

    // OpenAI-style clients: prompt + suffix on /v1/completions, the same FIM path.
    let (status, v) = post(
        &c,
        gw.url() + "/v1/completions",
        json!({"model": "qwen2.5-coder-0.5b", "prompt": f["input_prefix"],
               "suffix": f["input_suffix"], "max_tokens": n, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], f["content"], "{v}");

    // A bad field is a 400 that names it.
    let (status, v) = post(&c, gw.url() + "/infill", json!({"input_prefix": 1})).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "input_prefix", "{v}");
}

#[tokio::test]
async fn a_keystroke_computes_only_its_new_tokens_and_matches_a_cold_run() {
    let Some((gw, engine)) = start().await else {
        return;
    };
    let c = client();
    let prefix = format!(
        "{}def total(items):\n    s = 0\n    for it",
        long_prefix(12)
    );
    let suffix = "\n    return s\n";
    let body = |prefix: &str| {
        json!({"input_prefix": prefix, "input_suffix": suffix, "n_predict": 8,
               "temperature": 0, "id_slot": 0})
    };
    let (_, first) = post(&c, gw.url() + "/infill", body(&prefix)).await;
    let prompt_first = first["tokens_evaluated"].as_u64().unwrap();
    assert_eq!(first["timings"]["prompt_n"].as_u64().unwrap(), prompt_first);

    // The next keystroke: the prompt up to the cursor is the same; only what follows is new.
    let typed = format!("{prefix}em");
    let (_, second) = post(&c, gw.url() + "/infill", body(&typed)).await;
    let (a, b) = (
        fim_tokens(&engine, &prefix, suffix),
        fim_tokens(&engine, &typed, suffix),
    );
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let computed = second["timings"]["prompt_n"].as_u64().unwrap() as usize;
    assert_eq!(
        second["tokens_evaluated"].as_u64().unwrap() as usize,
        b.len()
    );
    assert_eq!(computed, b.len() - common, "{second}");
    assert_eq!(
        second["timings"]["cache_n"].as_u64().unwrap() as usize,
        common
    );
    assert!(computed < b.len() / 4, "{computed} of {}", b.len());

    // The warm answer's log-probabilities equal a cold run's, bit for bit.
    let logprobs = |v: &Value| v["choices"][0]["logprobs"]["token_logprobs"].clone();
    let req = json!({"model": "ide", "prompt": typed, "suffix": suffix, "max_tokens": 8,
                     "temperature": 0, "logprobs": 1});
    let (_, warm) = post(&c, gw.url() + "/v1/completions", req.clone()).await;
    assert!(
        warm["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{warm}"
    );
    engine.clear_cache().await.unwrap();
    let (_, cold) = post(&c, gw.url() + "/v1/completions", req).await;
    assert!(cold["usage"]["prompt_tokens_details"].is_null(), "{cold}");
    assert_eq!(logprobs(&warm), logprobs(&cold));
    assert_eq!(warm["choices"][0]["text"], cold["choices"][0]["text"]);
    assert_eq!(warm["choices"][0]["text"], second["content"]);
}

#[tokio::test]
async fn a_keystroke_moves_the_cached_suffix_and_computes_only_its_typed_tokens() {
    let Some((gw, engine)) = start_with(32).await else {
        return;
    };
    let c = client();
    let prefix = format!(
        "{}def total(items):\n    s = 0\n    for it",
        long_prefix(12)
    );
    // A suffix long enough to be a reused run (at least 32 tokens).
    let suffix = format!("\n    return s\n\n{}", long_prefix(6));
    let body = |prefix: &str| {
        json!({"input_prefix": prefix, "input_suffix": suffix, "n_predict": 8,
               "temperature": 0, "id_slot": 0})
    };
    let (_, first) = post(&c, gw.url() + "/infill", body(&prefix)).await;
    assert_eq!(
        first["timings"]["prompt_n"], first["tokens_evaluated"],
        "{first}"
    );

    // Two characters typed: in the model's order they come before the suffix, which moves.
    let typed = format!("{prefix}em");
    let (_, second) = post(&c, gw.url() + "/infill", body(&typed)).await;
    let (a, b) = (
        fim_tokens(&engine, &prefix, &suffix),
        fim_tokens(&engine, &typed, &suffix),
    );
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let fim_suffix = engine.tokenizer().token_id("<|fim_suffix|>").unwrap();
    let suffix_at = b.iter().position(|&t| t == fim_suffix).unwrap();
    // Computed: the typed tokens, and the last token again for its logits.
    let computed = second["timings"]["prompt_n"].as_u64().unwrap() as usize;
    assert_eq!(computed, suffix_at - common + 1, "{second}");
    assert_eq!(
        second["timings"]["cache_n"].as_u64().unwrap() as usize,
        b.len() - computed
    );
    assert!(b.len() - suffix_at > 32, "the suffix is a long run");

    // The moved suffix attended to the text before the keystroke; here the answer is still a
    // cold run's.
    engine.clear_cache().await.unwrap();
    let (_, cold) = post(&c, gw.url() + "/infill", body(&typed)).await;
    assert_eq!(cold["timings"]["prompt_n"], cold["tokens_evaluated"]);
    assert_eq!(second["content"], cold["content"], "{second} {cold}");
}

/// The `/infill` body of a keystroke on a loop's line, `typed` being the line so far.
fn loop_line(typed: &str, n_predict: u32, stop: &[&str]) -> Value {
    json!({"input_prefix": format!("{}def total(items):\n    s = 0\n", long_prefix(12)),
           "prompt": typed,
           "input_suffix": format!("\n    return s\n\n{}", long_prefix(6)),
           "n_predict": n_predict, "stop": stop, "temperature": 0, "id_slot": 0})
}

/// Posts `body` on a warm cache and checks that at most `most` prompt tokens were computed (the
/// rest came from the cache), then again on an empty cache: the same answer. The warm answer.
async fn warm_as_cold(gw: &Gateway, engine: &Engine, body: Value, most: u64) -> Value {
    let c = client();
    let (_, warm) = post(&c, gw.url() + "/infill", body.clone()).await;
    let n = warm["tokens_evaluated"].as_u64().unwrap();
    let computed = warm["timings"]["prompt_n"].as_u64().unwrap();
    assert!(computed <= most, "{computed} of {n}: {warm}");
    assert_eq!(warm["timings"]["cache_n"].as_u64().unwrap(), n - computed);
    engine.clear_cache().await.unwrap();
    let (_, cold) = post(&c, gw.url() + "/infill", body).await;
    assert_eq!(cold["timings"]["prompt_n"].as_u64().unwrap(), n);
    assert_eq!(warm["content"], cold["content"], "{warm} {cold}");
    warm
}

#[tokio::test]
async fn typing_on_a_line_computes_only_the_typed_tokens_and_answers_as_a_cold_run() {
    // The cursor's line starts the middle.
    let Some((gw, engine)) = start_config("layout = \"line-in-middle\"\n").await else {
        return;
    };
    let c = client();
    let (_, first) = post(&c, gw.url() + "/infill", loop_line("    for it", 8, &[])).await;
    let n_first = first["tokens_evaluated"].as_u64().unwrap();
    assert_eq!(first["timings"]["prompt_n"].as_u64().unwrap(), n_first);
    for typed in ["    for item", "    for item in", "    for item in it"] {
        // Only the line's last tokens: everything before the middle token stays cached.
        warm_as_cold(&gw, &engine, loop_line(typed, 8, &[]), 4).await;
    }
}

#[tokio::test]
async fn typing_the_suggestion_answers_its_rest_from_the_cache_as_a_cold_run_does() {
    // `[ide]`'s defaults: the cursor's line starts the middle, its last token left for the
    // model to spell, drafts on.
    let Some((gw, engine)) = start_config("").await else {
        return;
    };
    let c = client();
    let first_line = || loop_line("    for it", 32, &["\n"]);
    let (_, first) = post(&c, gw.url() + "/infill", first_line()).await;
    let suggestion = first["content"].as_str().unwrap().to_owned();
    assert!(suggestion.len() >= 4, "{first}");
    assert_eq!(first["stop_type"], "word", "{first}");
    for n in [1, 3] {
        // The user types the suggestion's first characters: its rest is the answer, and only
        // the prompt's last token is computed again (the cut word is the model's to spell).
        let typed = format!("    for it{}", &suggestion[..n]);
        let warm = warm_as_cold(&gw, &engine, loop_line(&typed, 32, &["\n"]), 2).await;
        assert_eq!(warm["content"], suggestion[n..], "{typed:?}: {warm}");
        // The first suggestion again, for the next round.
        post(&c, gw.url() + "/infill", first_line()).await;
    }
}

/// The `/infill` body of a completion on line `at` of `file`, after `typed` on that line, with
/// `after` lines of suffix.
fn at_line(file: &str, at: usize, typed: &str, after: usize) -> Value {
    let lines: Vec<&str> = file.lines().collect();
    json!({"input_prefix": format!("{}\n", lines[..at].join("\n")), "prompt": typed,
           "input_suffix": format!("\n{}", lines[at + 1..(at + 1 + after).min(lines.len())].join("\n")),
           "n_predict": 8, "stop": ["\n"], "temperature": 0, "id_slot": 0})
}

#[tokio::test]
async fn after_a_jump_jump_reuse_moves_the_lines_both_windows_show() {
    let file = long_prefix(40);
    // Line 91 returns from helper_30, line 61 from helper_20: both windows show lines 62..100.
    let (from, to) = (91, 61);
    let jump = || at_line(&file, to, "    return x", 40);
    for (extra, moved) in [("", false), ("jump_reuse = 32\n", true)] {
        let Some((gw, engine)) = start_config(extra).await else {
            return;
        };
        let c = client();
        let (_, first) = post(
            &c,
            gw.url() + "/infill",
            at_line(&file, from, "    return x", 40),
        )
        .await;
        assert_eq!(
            first["timings"]["prompt_n"], first["tokens_evaluated"],
            "{first}"
        );
        let (status, warm) = post(&c, gw.url() + "/infill", jump()).await;
        assert_eq!(status, 200, "{warm}");
        let n = warm["tokens_evaluated"].as_u64().unwrap();
        let computed = warm["timings"]["prompt_n"].as_u64().unwrap();
        assert_eq!(warm["timings"]["cache_n"].as_u64().unwrap(), n - computed);
        engine.clear_cache().await.unwrap();
        let (_, cold) = post(&c, gw.url() + "/infill", jump()).await;
        if moved {
            // The shared lines are moved, not computed: the jump computes its cursor's line,
            // the line the earlier cursor was on, and the markers.
            assert!(computed * 10 < n, "{computed} of {n}: {warm}");
            // The moved lines attended to the earlier window, so the answer may differ from a
            // cold run's (`tandem bench ide` measures by how much); it still completes the line
            // as the cold run does.
            let head = |v: &Value| {
                v["content"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .take(3)
                    .collect::<String>()
            };
            assert_eq!(head(&warm), " * ", "{warm}");
            assert_eq!(head(&warm), head(&cold), "{warm} {cold}");
        } else {
            // Without it, everything after the lines before the new cursor is computed.
            assert!(computed * 3 > n, "{computed} of {n}: {warm}");
            assert_eq!(warm["content"], cold["content"], "{warm} {cold}");
        }
    }
}

#[tokio::test]
async fn a_newer_request_of_an_editor_session_supersedes_the_older() {
    let Some((gw, _engine)) = start().await else {
        return;
    };
    let c = client();
    let older = {
        let (c, url) = (c.clone(), gw.url() + "/infill");
        tokio::spawn(async move {
            let started = Instant::now();
            let r = post_with(
                &c,
                url,
                json!({"input_prefix": long_prefix(40), "input_suffix": "", "n_predict": 256,
                       "temperature": 0}),
                Some("editor-1"),
            )
            .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer_sent = Instant::now();
    let (status, newer) = post_with(
        &c,
        gw.url() + "/infill",
        json!({"input_prefix": "x = ", "input_suffix": "\n", "n_predict": 4, "temperature": 0}),
        Some("editor-1"),
    )
    .await;
    assert_eq!(status, 200, "{newer}");
    assert!(newer.get("superseded").is_none(), "{newer}");
    let ((status, old), _) = older.await.unwrap();
    assert_eq!(status, 200, "{old}");
    assert_eq!(old["superseded"], true, "{old}");
    assert_eq!(old["stop_type"], "none");
    // It stopped when the newer one came, not after its 256 tokens.
    assert!(old["tokens_predicted"].as_u64().unwrap() < 256, "{old}");
    assert!(newer_sent.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn n_predict_0_answers_at_once_and_warms_the_cache() {
    let Some((gw, engine)) = start().await else {
        return;
    };
    let c = client();
    let body = |n: u32| {
        json!({"input_prefix": long_prefix(30), "input_suffix": "\nprint(helper_3(2))\n",
               "n_predict": n, "temperature": 0})
    };
    let started = Instant::now();
    let (status, warm) = post(&c, gw.url() + "/infill", body(0)).await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{warm}");
    assert_eq!(warm["content"], "");
    assert_eq!(warm["tokens_predicted"], 0);
    idle(&engine).await;
    let computing = started.elapsed();
    // The answer came well before the prompt was computed.
    assert!(
        answered * 3 < computing,
        "answered after {answered:?}, computed after {computing:?}"
    );
    let (_, next) = post(&c, gw.url() + "/infill", body(4)).await;
    assert_eq!(next["timings"]["prompt_n"], 1, "{next}");
}

#[tokio::test]
async fn t_max_predict_ms_returns_what_is_ready() {
    let Some((gw, _engine)) = start().await else {
        return;
    };
    let c = client();
    let (status, v) = post(
        &c,
        gw.url() + "/infill",
        json!({"input_prefix": format!("{}def helper_40(x):\n", long_prefix(4)),
               "input_suffix": "", "n_predict": 400, "temperature": 0,
               "t_max_predict_ms": 150}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let predicted_ms = v["timings"]["predicted_ms"].as_f64().unwrap();
    assert!(predicted_ms < 150.0 + 200.0, "{v}");
    if v["stop_type"] == "limit" {
        assert!(v["tokens_predicted"].as_u64().unwrap() < 400, "{v}");
    }
}

/// A gateway whose `[ide] cloud` is the mock upstream answering as `cloud_model` (the mock's
/// faults are named in the model), expected at 1 ms, so that multi-line work goes there;
/// `sections` is more config.
async fn start_cloud(cloud_model: &str, sections: &str) -> Option<(Gateway, Engine, MockHandle)> {
    start_cloud_keys(cloud_model, "cloud_latency_ms = 1\n", sections).await
}

/// The same with more `[ide]` keys (`keys`) in place of the expected latency.
async fn start_cloud_keys(
    cloud_model: &str,
    keys: &str,
    sections: &str,
) -> Option<(Gateway, Engine, MockHandle)> {
    let (addr, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let extra = format!(
        "cloud = \"fim\"\ncloud_model = \"{cloud_model}\"\n{keys}cloud_timeout_ms = 2000\n\
         [backends.fim]\nkind = \"openai-compatible\"\nbase_url = \"http://{addr}/v1\"\n{sections}"
    );
    let (gw, engine) = start_config(&extra).await?;
    Some((gw, engine, mock))
}

/// Posts `body` to `/infill`.
async fn post_infill(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url() + "/infill")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Posts to `/infill`; the status, the route header and the body.
async fn infill_routed(gw: &Gateway, body: Value) -> (u16, String, Value) {
    let r = post_infill(gw, &body).await;
    let status = r.status().as_u16();
    let route = tandem_tests::route_of(&r);
    (status, route, r.json().await.unwrap())
}

/// A multi-line request, as llama.vim sends one: indentation known, 64 tokens.
fn multi_line(prefix: &str) -> Value {
    json!({"input_prefix": prefix, "input_suffix": "\n", "n_predict": 64, "n_indent": 4,
           "temperature": 0, "stop": ["\n\n\n"]})
}

#[tokio::test]
async fn multi_line_completions_go_to_the_cloud_fim_backend_when_it_is_faster() {
    let Some((gw, _engine, mock)) = start_cloud("codestral-latest", "").await else {
        return;
    };
    let prefix = "def add(a, b):\n";
    let (status, route, v) = infill_routed(&gw, multi_line(prefix)).await;
    assert_eq!(status, 200, "{v}");
    assert!(route.starts_with("ide-cloud; fim: multi-line"), "{route}");
    // The editor's n_indent rule cut the line back at the outer level.
    assert_eq!(
        v["content"], "    total = a + b\n    return total\n\n",
        "{v}"
    );
    assert_eq!(v["stop_type"], "limit", "{v}");
    assert_eq!(v["tokens_predicted"], 17, "{v}");
    assert!(v["timings"]["prompt_ms"].as_f64().unwrap() > 0.0, "{v}");
    // The cloud got OpenAI's FIM request.
    let sent = mock.requests().into_iter().last().unwrap();
    assert_eq!(sent.path, "/v1/completions");
    let body = sent.json().unwrap();
    assert_eq!(
        (
            &body["model"],
            &body["prompt"],
            &body["suffix"],
            &body["max_tokens"]
        ),
        (
            &json!("codestral-latest"),
            &json!(prefix),
            &json!("\n"),
            &json!(64)
        )
    );
    // The editor's other files go before the prefix, each under a comment naming its path.
    let mut with_extra = multi_line(prefix);
    with_extra["input_extra"] = json!([{"filename": "util.py", "text": "TOTAL = 0\n"}]);
    let (status, route, v) = infill_routed(&gw, with_extra).await;
    assert_eq!(status, 200, "{v}");
    assert!(route.starts_with("ide-cloud"), "{route}");
    let body = mock.requests().into_iter().last().unwrap().json().unwrap();
    assert_eq!(
        body["prompt"],
        json!(format!("# Path: util.py\nTOTAL = 0\n\n{prefix}"))
    );

    // Streamed: the same text in the same shape, the route in the header.
    let (route, streamed, last) = infill_streamed(&gw, multi_line(prefix)).await;
    assert!(route.starts_with("ide-cloud"), "{route}");
    assert_eq!(last["content"], "    total = a + b\n    return total\n\n");
    assert_eq!(streamed, last["content"].as_str().unwrap());

    // `/v1/completions` with `suffix` on the code model goes the same way, in OpenAI's shape.
    let r = client()
        .post(gw.url() + "/v1/completions")
        .json(
            &json!({"model": "ide", "prompt": prefix, "suffix": "\n", "max_tokens": 64,
                      "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    let route = tandem_tests::route_of(&r);
    assert!(route.starts_with("ide-cloud; fim: multi-line"), "{route}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], tandem_lab::mock::FIM_TEXT, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 17, "{v}");
    let sent = mock.requests().into_iter().last().unwrap().json().unwrap();
    assert_eq!(
        (&sent["model"], &sent["suffix"]),
        (&json!("codestral-latest"), &json!("\n"))
    );

    // The cloud's tokens are counted as every cloud call's are: 17 for each of the 4 answers.
    let metrics = tandem_tests::metrics_of(&client(), &gw.url()).await;
    let completion: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tandem_tokens_total{")
                && l.contains(r#"backend="fim",kind="completion"}"#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(completion, 68, "{metrics}");
}

#[tokio::test]
async fn the_cloud_policy_counts_only_the_prompt_tokens_the_cache_lacks() {
    // The cloud is expected in 3 s: sooner than the code model computing a prompt of about
    // 1,000 tokens, later than its answer of 16 from the prefix cache on an idle machine.
    let Some((gw, engine, _mock)) =
        start_cloud_keys("codestral-latest", "cloud_latency_ms = 3000\n", "").await
    else {
        return;
    };
    let prefix = format!("{}def helper_99(x):\n", long_prefix(60));
    let body = || {
        let mut b = multi_line(&prefix);
        b["n_predict"] = json!(16);
        b
    };
    let (status, cold, v) = infill_routed(&gw, body()).await;
    assert_eq!(status, 200, "{v}");
    assert!(cold.starts_with("ide-cloud; fim: multi-line"), "{cold}");
    // The editor warms the same context (`n_predict: 0`): then only the code model's answer
    // is left to predict.
    let mut warm = body();
    warm["n_predict"] = json!(0);
    assert_eq!(infill_routed(&gw, warm).await.0, 200);
    idle(&engine).await;
    let (status, warm, v) = infill_routed(&gw, body()).await;
    assert_eq!(status, 200, "{v}");
    assert_cached_estimate(&cold, &warm);
    let (n, cached) = (
        v["tokens_evaluated"].as_u64().unwrap(),
        v["timings"]["cache_n"].as_u64().unwrap(),
    );
    assert!(n > 800 && cached + 2 >= n, "{v}");

    // The same on `/v1/completions` with `suffix` (another file, so nothing is cached): cold,
    // multi-line work goes to the cloud; after a single-line completion of the same prompt
    // (local, so now cached), only the answer is predicted.
    let other = prefix.replace("helper", "step");
    let completion = |stop: Value| {
        let c = client();
        let url = gw.url() + "/v1/completions";
        let body = json!({"model": "ide", "prompt": other, "suffix": "\n", "max_tokens": 16,
                          "temperature": 0, "stop": stop});
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), tandem_tests::route_of(&r))
        }
    };
    let (status, cold) = completion(json!([])).await;
    assert_eq!(status, 200);
    assert!(cold.starts_with("ide-cloud; fim: multi-line"), "{cold}");
    let (status, route) = completion(json!(["\n"])).await;
    assert_eq!(status, 200);
    assert!(route.contains("single line"), "{route}");
    let (status, warm) = completion(json!([])).await;
    assert_eq!(status, 200);
    assert_cached_estimate(&cold, &warm);
}

#[tokio::test]
async fn a_prompt_longer_than_the_code_models_context_goes_to_the_cloud() {
    // The cloud is expected in a minute, later than any completion the code model can do.
    let Some((gw, _engine, mock)) =
        start_cloud_keys("codestral-latest", "cloud_latency_ms = 60000\n", "").await
    else {
        return;
    };
    let r = client()
        .post(gw.url() + "/v1/completions")
        .json(
            &json!({"model": "ide", "prompt": long_prefix(700), "suffix": "\n",
                      "max_tokens": 64, "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    let route = tandem_tests::route_of(&r);
    assert_eq!(r.status(), 200);
    assert!(route.starts_with("ide-cloud; fim: multi-line"), "{route}");
    assert_eq!(mock.requests().len(), 1);
}

/// The code model's predicted time in a route (`local ~N ms`).
fn local_estimate(route: &str) -> f64 {
    let at = route.find("local ~").unwrap() + "local ~".len();
    let digits: String = route[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// The warm request's prediction no longer counts the cached prompt, and it stays local where
/// that puts the code model before the cloud (the rates follow the machine's load).
fn assert_cached_estimate(cold: &str, warm: &str) {
    let (c, w) = (local_estimate(cold), local_estimate(warm));
    assert!(w * 3.0 < c, "{cold} / {warm}");
    if warm.contains("<= cloud") {
        assert!(warm.starts_with("ide; "), "{warm}");
    }
}

#[tokio::test]
async fn single_line_completions_stay_on_the_code_model() {
    let Some((gw, _engine, mock)) = start_cloud("codestral-latest", "").await else {
        return;
    };
    let (status, route, v) = infill_routed(
        &gw,
        json!({"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n",
               "n_predict": 64, "temperature": 0, "stop": ["\n"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(route, "ide; infill (qwen2.5-coder-0.5b); single line");
    assert!(!v["content"].as_str().unwrap().contains('\n'), "{v}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn an_unsure_multi_line_completion_goes_to_the_cloud_and_a_sure_one_stays_local() {
    // The cloud is expected at 60 s, so the code model is predicted sooner and starts; the
    // confidence of its first tokens against `cloud_confidence` decides.
    let keys = |c: f64| format!("cloud_latency_ms = 60000\ncloud_confidence = {c}\n");
    let prefix = "def add(a, b):\n";

    // Every answer is less than certain of itself: the cloud answers.
    let Some((gw, _engine, mock)) = start_cloud_keys("codestral-latest", &keys(1.0), "").await
    else {
        return;
    };
    let (status, route, v) = infill_routed(&gw, multi_line(prefix)).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        route.starts_with("ide-cloud; fim: local unsure (confidence 0."),
        "{route}"
    );
    assert!(route.ends_with("< 1.00)"), "{route}");
    assert_eq!(
        v["content"], "    total = a + b\n    return total\n\n",
        "{v}"
    );
    assert_eq!(mock.requests().len(), 1);
    // Streamed: the first tokens are judged before any is sent, so the stream is the cloud's.
    let (route, streamed, last) = infill_streamed(&gw, multi_line(prefix)).await;
    assert!(route.starts_with("ide-cloud; fim: local unsure"), "{route}");
    assert_eq!(streamed, v["content"].as_str().unwrap(), "{last}");
    assert_eq!(mock.requests().len(), 2);
    drop(gw);

    // A threshold no answer is under: the code model's answer stands, the cloud never asked.
    let Some((gw, _engine, mock)) =
        start_cloud_keys("codestral-latest", &keys(0.000_001), "").await
    else {
        return;
    };
    let (status, route, local) = infill_routed(&gw, multi_line(prefix)).await;
    assert_eq!(status, 200, "{local}");
    assert!(
        route.starts_with("ide; infill (qwen2.5-coder-0.5b); multi-line, local ~"),
        "{route}"
    );
    assert!(local["tokens_predicted"].as_u64().unwrap() > 0, "{local}");
    // Streamed, judged sure: the code model's whole answer streams, the same as unstreamed.
    let (route, streamed, _) = infill_streamed(&gw, multi_line(prefix)).await;
    assert!(route.starts_with("ide; infill"), "{route}");
    assert_eq!(streamed, local["content"].as_str().unwrap());
    assert!(mock.requests().is_empty());
    drop(gw);

    // Unsure, and the cloud fails: the code model answers as it would have.
    let Some((gw, _engine, mock)) = start_cloud_keys("codestral-status-503", &keys(1.0), "").await
    else {
        return;
    };
    let (status, route, v) = infill_routed(&gw, multi_line(prefix)).await;
    assert_eq!(status, 200, "{v}");
    assert!(route.ends_with("fell back to the code model"), "{route}");
    assert_eq!(v["content"], local["content"], "{v}");
    assert_eq!(mock.requests().len(), 1);
    let (route, streamed, _) = infill_streamed(&gw, multi_line(prefix)).await;
    assert!(route.ends_with("fell back to the code model"), "{route}");
    assert_eq!(streamed, local["content"].as_str().unwrap());
    assert_eq!(mock.requests().len(), 2);
}

/// Streams `/infill`: the route header, the text of the chunks before the last event, and the
/// last event (the whole answer, `stop: true`).
async fn infill_streamed(gw: &Gateway, mut body: Value) -> (String, String, Value) {
    body["stream"] = json!(true);
    let r = post_infill(gw, &body).await;
    assert_eq!(r.status(), 200);
    let route = tandem_tests::route_of(&r);
    let text = r.text().await.unwrap();
    let events: Vec<Value> = tandem_tests::parse_sse(&text)
        .iter()
        .map(tandem_tests::SseEvent::json)
        .collect();
    let last = events.last().cloned().unwrap();
    assert_eq!(last["stop"], true, "{text}");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, last["content"].as_str().unwrap(), "{text}");
    (route, streamed, last)
}

#[tokio::test]
async fn a_failing_cloud_falls_back_to_the_code_model() {
    let Some((gw, _engine, mock)) = start_cloud("codestral-status-503", "").await else {
        return;
    };
    let (status, route, v) = infill_routed(&gw, multi_line("def add(a, b):\n")).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        route.starts_with("ide; infill (qwen2.5-coder-0.5b); ide-cloud fim failed ("),
        "{route}"
    );
    assert!(route.ends_with("fell back to the code model"), "{route}");
    assert!(v["tokens_predicted"].as_u64().unwrap() > 0, "{v}");
    assert!(v["timings"]["predicted_n"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn a_cloud_past_its_budget_or_behind_an_open_breaker_leaves_completions_local() {
    let Some((gw, _engine, mock)) = start_cloud(
        "codestral-status-500",
        "[resilience]\nbreaker_failures = 2\nbreaker_open_ms = 60000\n",
    )
    .await
    else {
        return;
    };
    for _ in 0..2 {
        let (status, route, _) = infill_routed(&gw, multi_line("def add(a, b):\n")).await;
        assert_eq!(status, 200);
        assert!(route.contains("ide-cloud fim failed"), "{route}");
    }
    let (status, route, v) = infill_routed(&gw, multi_line("def add(a, b):\n")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        route,
        "ide; infill (qwen2.5-coder-0.5b); cloud breaker open"
    );
    assert_eq!(mock.requests().len(), 2);
    drop(gw);

    // A cloud that does not answer within the request's budget: the code model answers.
    let Some((gw, _engine, _mock)) = start_cloud("codestral-hang", "").await else {
        return;
    };
    let started = Instant::now();
    let mut body = multi_line("def add(a, b):\n");
    body["t_max_predict_ms"] = json!(300);
    let (status, route, v) = infill_routed(&gw, body).await;
    assert_eq!(status, 200, "{v}");
    assert!(route.contains("ide-cloud fim failed ("), "{route}");
    assert!(started.elapsed() < Duration::from_secs(3), "{route}");
}

#[tokio::test]
async fn a_force_local_privacy_rule_keeps_completions_local() {
    let Some((gw, _engine, mock)) =
        start_cloud("codestral-latest", "[privacy]\ndefault = \"force-local\"\n").await
    else {
        return;
    };
    let (status, route, v) = infill_routed(
        &gw,
        multi_line("# maintainer: jane.doe@example.com\ndef add(a, b):\n"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        route,
        "ide; infill (qwen2.5-coder-0.5b); privacy keeps it local"
    );
    assert!(mock.requests().is_empty());
    // Text without anything sensitive may still go.
    let (_, route, _) = infill_routed(&gw, multi_line("def add(a, b):\n")).await;
    assert!(route.starts_with("ide-cloud"), "{route}");
}
