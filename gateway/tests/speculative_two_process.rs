//! Two `tandem serve` processes on loopback: "cloud" processes serve a target model with the
//! verify endpoints mounted (behind the delay emulation), and an edge process runs SmolLM2-135M
//! Q4_1 as the drafter with speculative routes pointing at them. For chat and code prompts the
//! edge's greedy answer is the target's own, on the same-tokenizer path (SmolLM2 verifies) and
//! the cross-tokenizer path (Gemma 3 270M verifies); the usage extension and the speculative
//! metrics report what happened. A target lost mid-answer ends the stream with the usage of what
//! was served and an error event.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
// Helpers outside `#[test]` functions panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_artifacts::{ProcessEnv, default_cache_root, locate};

/// A `tandem serve` child, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, config: &str) -> Server {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["serve", "--offline", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
        .to_owned();
    Server { child, url }
}

async fn wait_ready(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("{}/readyz", server.url))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became ready: {}",
            server.url,
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cloud_config(model: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [local]\nmodel = \"{model}\"\nthreads = 1\nkv_cache_tokens = 2048\nverify_endpoints = true\n\
         weights = \"q8_0\"\n\
         emulate_rtt_ms = 5\nemulate_step_ms = 5\n\
         [backends.local]\nkind = \"local\"\n"
    )
}

fn edge_config(same: &Server, cross: &Server) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [local]\nmodel = \"smollm2-135m\"\nthreads = 1\nkv_cache_tokens = 2048\nverify_endpoints = false\n\
         [backends.local]\nkind = \"local\"\n\
         [backends.cloud-smol]\nkind = \"openai-compatible\"\nbase_url = \"{}/v1\"\nverify = \"tandem\"\n\
         [backends.cloud-gemma]\nkind = \"openai-compatible\"\nbase_url = \"{}/v1\"\nverify = \"tandem\"\n\
         [backends.spec-smol]\nkind = \"speculative\"\ntarget = \"cloud-smol\"\ndrafter = \"local\"\nmax_draft = 8\n\
         models = {{ \"smol-spec\" = \"local\" }}\n\
         [backends.spec-gemma]\nkind = \"speculative\"\ntarget = \"cloud-gemma\"\ndrafter = \"local\"\n\
         tokenizer = \"gemma3-270m\"\nmax_draft = 8\nmodels = {{ \"gemma-spec\" = \"local\" }}\n",
        same.url, cross.url
    )
}

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "Give me three tips for better sleep.",
    "Write a Python function that reverses a string.",
    "Write a SQL query that selects all rows from a table named users.",
    "Write a JavaScript function that adds two numbers.",
];

const MAX_TOKENS: u64 = 24;

async fn chat(client: &reqwest::Client, url: &str, model: &str, prompt: &str) -> Value {
    let body = json!({"model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
                      "messages": [{"role": "user", "content": prompt}]});
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{model} at {url}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The content of a streamed answer and its final usage.
async fn chat_streamed(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    prompt: &str,
) -> (String, Value) {
    let body = json!({"model": model, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": prompt}]});
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let (mut content, mut usage) = (String::new(), Value::Null);
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v.get("error").is_none(), "stream error: {v}");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    (content, usage)
}

/// The `/metrics` page of a server.
async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    let url = format!("{}/metrics", server.url);
    client.get(url).send().await.unwrap().text().await.unwrap()
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_route_between_two_processes_answers_as_the_target() {
    let root = default_cache_root(&ProcessEnv);
    for artifact in ["smollm2-135m", "gemma3-270m"] {
        assert!(
            locate(&root, artifact).is_some(),
            "{artifact} is not in the cache at {}; run `tandem models fetch {artifact}`",
            root.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    tandem_cloud_adapters::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let cloud_smol = start(dir.path(), "cloud-smol", &cloud_config("smollm2-135m"));
    let cloud_gemma = start(dir.path(), "cloud-gemma", &cloud_config("gemma3-270m"));
    let edge = start(dir.path(), "edge", &edge_config(&cloud_smol, &cloud_gemma));
    for s in [&cloud_smol, &cloud_gemma, &edge] {
        wait_ready(&client, s).await;
    }

    for (route, cloud) in [("smol-spec", &cloud_smol), ("gemma-spec", &cloud_gemma)] {
        let (mut drafted, mut accepted) = (0, 0);
        for prompt in PROMPTS {
            let direct = chat(&client, &cloud.url, "local", prompt).await;
            let spec = chat(&client, &edge.url, route, prompt).await;
            let text = |v: &Value| {
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(text(&spec), text(&direct), "{route}: {prompt:?}");
            assert_eq!(
                spec["usage"]["completion_tokens"], direct["usage"]["completion_tokens"],
                "{route}: {prompt:?} in the target's tokens"
            );
            assert_eq!(
                spec["usage"]["prompt_tokens"],
                direct["usage"]["prompt_tokens"]
            );
            assert_eq!(
                spec["choices"][0]["finish_reason"],
                direct["choices"][0]["finish_reason"]
            );
            let ext = &spec["usage"]["speculative"];
            assert!(ext["rounds"].as_u64().unwrap() >= 1, "{spec}");
            drafted += ext["drafted"].as_u64().unwrap();
            accepted += ext["accepted"].as_u64().unwrap();
            assert!(ext["target_output_tokens"].as_u64().is_some());
            assert!(ext["acceptance_rate"].as_f64().is_some());
        }
        eprintln!("{route}: {accepted}/{drafted} draft tokens accepted");
        assert!(accepted > 0, "{route}: nothing accepted");
    }

    // Streaming: the same answer, with the extension in the final usage chunk.
    let direct = chat(&client, &cloud_smol.url, "local", PROMPTS[2]).await;
    let (content, usage) = chat_streamed(&client, &edge.url, "smol-spec", PROMPTS[2]).await;
    assert_eq!(
        content,
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        usage["speculative"]["rounds"].as_u64().unwrap() >= 1,
        "{usage}"
    );

    // Metrics moved on the edge, and the cloud served verify calls.
    let edge_metrics = metrics(&client, &edge).await;
    for backend in ["spec-smol", "spec-gemma"] {
        let labels = format!("backend=\"{backend}\"");
        assert!(
            metric(&edge_metrics, "tandem_speculative_rounds_total", &labels) > 0.0,
            "{edge_metrics}"
        );
        assert!(
            metric(
                &edge_metrics,
                "tandem_speculative_tokens_total",
                &format!("{labels},kind=\"accepted\"")
            ) > 0.0
        );
    }
    let cloud_metrics = metrics(&client, &cloud_smol).await;
    assert!(
        metric(
            &cloud_metrics,
            "tandem_requests_total",
            "endpoint=\"verify\""
        ) > 0.0,
        "{cloud_metrics}"
    );
}

/// A target that goes away mid-answer: the edge's stream ends with the usage of what it served
/// and an error event, never silently and never with `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_lost_mid_stream_ends_it_with_its_usage_and_an_error() {
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    tandem_cloud_adapters::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let mut cloud = start(dir.path(), "cloud-smol", &cloud_config("smollm2-135m"));
    let edge_cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [local]\nmodel = \"smollm2-135m\"\nthreads = 1\nkv_cache_tokens = 2048\n\
         [backends.local]\nkind = \"local\"\n\
         [backends.cloud-smol]\nkind = \"openai-compatible\"\nbase_url = \"{}/v1\"\nverify = \"tandem\"\n\
         [backends.spec-smol]\nkind = \"speculative\"\ntarget = \"cloud-smol\"\ndrafter = \"local\"\n\
         max_draft = 4\nmodels = {{ \"smol-spec\" = \"local\" }}\n",
        cloud.url
    );
    let edge = start(dir.path(), "edge", &edge_cfg);
    for s in [&cloud, &edge] {
        wait_ready(&client, s).await;
    }
    let body = json!({"model": "smol-spec", "temperature": 0, "max_tokens": 400, "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]});
    let r = client
        .post(format!("{}/v1/chat/completions", edge.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut frames = r.bytes_stream();
    let mut text = String::new();
    // The first content, then the target goes away.
    while !text.contains("\"content\"") {
        let chunk = frames
            .next()
            .await
            .expect("stream ended before any content")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let _ = cloud.child.kill();
    let _ = cloud.child.wait();
    while let Some(chunk) = frames.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        !text.contains("[DONE]"),
        "a failed stream ends without [DONE]: {text}"
    );
    let last = events.last().unwrap();
    assert!(
        last.get("error").is_some(),
        "ends with an error event: {text}"
    );
    let usage = events
        .iter()
        .find(|v| !v["usage"].is_null())
        .unwrap_or_else(|| panic!("no usage before the error: {text}"));
    let served = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(served > 0 && served < 400, "{usage}");
    // What speculation did before the failure, the target's billed tokens included.
    let ext = &usage["usage"]["speculative"];
    assert!(ext["rounds"].as_u64().unwrap() >= 1, "{usage}");
    assert!(ext["target_input_tokens"].as_u64().unwrap() > 0, "{usage}");
    // The edge counted the tokens it served.
    let edge_metrics = metrics(&client, &edge).await;
    let counted = metric(
        &edge_metrics,
        "tandem_tokens_total",
        "backend=\"spec-smol\",kind=\"completion\"",
    );
    assert!(
        counted >= served as f64,
        "{counted} < {served}: {edge_metrics}"
    );
}
