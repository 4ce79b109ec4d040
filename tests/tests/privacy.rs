//! Data residency end to end, through the gateway to the recording mock upstream: the labelled
//! corpus (`tests/fixtures/privacy/`) on a `redact` route, in both APIs, streamed and whole (no
//! sensitive value reaches the upstream, and every answer comes back with the values restored);
//! `block` (a 400 naming the kinds, never the values); `force-local` without a local model; and
//! the tamper-evident audit log of those requests, checked intact and then broken four ways.

// The corpus test reports its false-positive rate on stderr.
#![allow(clippy::print_stderr)]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tandem_gateway::audit::verify;
use tandem_lab::mock::MockConfig;
use tandem_tests::{Harness, parse_sse, streamed_text};

/// Echo backends in both formats, and routes with each privacy action.
fn privacy_config(base: &str, extra: &str) -> String {
    format!(
        r#"
[backends.echo]
kind = "openai-compatible"
base_url = "{base}"
models = {{ "gpt-echo" = "echo", "gpt-block" = "echo", "gpt-local" = "echo" }}

[backends.aecho]
kind = "anthropic"
base_url = "{base}"
models = {{ "claude-echo" = "echo", "claude-block" = "echo" }}

[routes."gpt-echo"]
backends = ["echo"]
privacy = "redact"

[routes."claude-echo"]
backends = ["aecho"]
privacy = "redact"

[routes."gpt-block"]
backends = ["echo"]
privacy = "block"

[routes."claude-block"]
backends = ["aecho"]
privacy = "block"

[routes."gpt-local"]
backends = ["echo"]
privacy = "force-local"
{extra}
"#
    )
}

async fn start(extra: &str) -> Harness {
    let extra = extra.to_owned();
    Harness::start_around(MockConfig::default(), move |mock| {
        privacy_config(&mock.base_url(), &extra)
    })
    .await
    .unwrap()
}

struct Row {
    prompt: String,
    sensitive: bool,
    values: Vec<String>,
}

fn corpus() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/privacy/corpus.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Row {
                prompt: v["prompt"].as_str().unwrap().to_owned(),
                sensitive: v["sensitive"].as_bool().unwrap(),
                values: v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect()
}

/// The answer's text from an OpenAI or Anthropic answer, whole or streamed.
async fn ask(h: &Harness, anthropic: bool, stream: bool, prompt: &str) -> (u16, String, String) {
    let (path, body) = if anthropic {
        (
            "/v1/messages",
            json!({"model": "claude-echo", "max_tokens": 64, "stream": stream,
                   "messages": [{"role": "user", "content": prompt}]}),
        )
    } else {
        (
            "/v1/chat/completions",
            json!({"model": "gpt-echo", "stream": stream,
                   "messages": [{"role": "user", "content": prompt}]}),
        )
    };
    let route = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("x-tandem-route")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if stream {
        let (status, headers, text) = h.post_stream_text(path, &body).await.unwrap();
        let events = parse_sse(&text);
        let answer = if anthropic {
            events
                .iter()
                .filter_map(|e| e.json()["delta"]["text"].as_str().map(str::to_owned))
                .collect()
        } else {
            streamed_text(&events)
        };
        (status, route(&headers), answer)
    } else {
        let (status, headers, v) = h.post(path, &body).await.unwrap();
        let answer = if anthropic {
            v["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        (status, route(&headers), answer)
    }
}

/// How a value looks inside a JSON body.
fn json_escaped(v: &str) -> String {
    let quoted = serde_json::to_string(v).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

#[tokio::test]
async fn no_sensitive_value_of_the_corpus_reaches_the_upstream_and_answers_come_back_restored() {
    let h = start("").await;
    let rows = corpus();
    let mut clean = 0;
    let mut clean_changed = 0;
    for (i, row) in rows.iter().enumerate() {
        // Each prompt through one of the four paths, in turn.
        let (anthropic, stream) = (i % 2 == 1, (i / 2) % 2 == 1);
        let (status, route, answer) = ask(&h, anthropic, stream, &row.prompt).await;
        assert_eq!(status, 200, "prompt {i}: {route}");
        assert_eq!(
            answer, row.prompt,
            "prompt {i} (anthropic {anthropic}, stream {stream}) came back changed"
        );
        let sent = h.mock.requests().pop().unwrap();
        let sent_text = String::from_utf8_lossy(&sent.body).into_owned();
        for v in &row.values {
            assert!(
                !sent_text.contains(v.as_str()) && !sent_text.contains(&json_escaped(v)),
                "prompt {i}: a sensitive value reached the upstream"
            );
            assert!(
                !route.contains(v.as_str()),
                "prompt {i}: a value in the header"
            );
        }
        if row.sensitive {
            assert!(route.contains("privacy=redact ("), "prompt {i}: {route}");
        } else {
            clean += 1;
            if route.contains("privacy=") {
                clean_changed += 1;
            }
        }
    }
    let rate = clean_changed as f64 / clean as f64;
    eprintln!(
        "privacy corpus through the gateway: {} prompts, {} sensitive, 0 values reached the upstream, all answers restored; {clean_changed} of {clean} clean prompts redacted (false-positive rate {:.1}%)",
        rows.len(),
        rows.len() - clean,
        rate * 100.0
    );
    assert!(rate <= 0.05);
}

#[tokio::test]
async fn block_answers_400_naming_the_kinds_and_the_message_never_the_value() {
    let h = start("").await;
    let card = "4111 1111 1111 1111";
    let (status, headers, body) = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-block", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": format!("charge {card} and mail a@b.io")}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let e = &body["error"];
    assert_eq!(e["code"], "sensitive_data");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], "messages[1].content");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("email, payment_card"), "{message}");
    assert!(!body.to_string().contains(card) && !body.to_string().contains("a@b.io"));
    let route = headers["x-tandem-route"].to_str().unwrap();
    assert_eq!(route, "no backend; privacy=block (email, payment_card)");

    let (status, _, body) = h
        .post(
            "/v1/messages",
            &json!({"model": "claude-block", "max_tokens": 16, "system": "be brief",
                    "messages": [{"role": "user", "content": "my SSN is 123-45-6789"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("us_ssn") && message.contains("messages[0].content"),
        "{message}"
    );
    assert!(!message.contains("123-45-6789"));

    // A clean request on the same route goes through.
    let (status, _, _) = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-block", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        h.mock.request_count(),
        1,
        "only the clean request went upstream"
    );
}

/// The Responses API passes the same privacy step as chat: blocked with a 400 naming the input,
/// redacted (OpenAI's own Responses API then gets the redacted copy as chat, never the client's
/// body as it came) with the answer restored, whole and streamed, and kept local.
#[tokio::test]
async fn the_responses_api_passes_the_privacy_step() {
    let dir = tempfile_dir();
    let log = dir.join("audit.jsonl");
    let h = Harness::start_around(MockConfig::default(), |mock| {
        let own = format!(
            r#"
[backends.own]
kind = "openai"
base_url = "{}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "own-echo" = "echo" }}

[routes."own-echo"]
backends = ["own"]
privacy = "redact"

[audit]
path = "{}"
"#,
            mock.base_url(),
            log.display()
        );
        privacy_config(&mock.base_url(), &own)
    })
    .await
    .unwrap();
    let card = "4111 1111 1111 1111";
    let (status, _, body) = h
        .post(
            "/v1/responses",
            &json!({"model": "gpt-block", "input": format!("charge {card}")}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "sensitive_data", "{body}");
    assert_eq!(body["error"]["param"], "input", "{body}");
    assert!(!body.to_string().contains(card), "{body}");
    let (status, _, body) = h
        .post(
            "/v1/responses",
            &json!({"model": "gpt-local", "input": "IBAN DE89 3704 0044 0532 0130 00"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "no_backend_allowed", "{body}");
    assert_eq!(h.mock.request_count(), 0, "nothing went upstream");

    let email = "jane.doe@example.com";
    for model in ["gpt-echo", "own-echo"] {
        for stream in [false, true] {
            let ask =
                json!({"model": model, "input": format!("write to {email}"), "stream": stream});
            let answer = if stream {
                let (status, _, text) = h.post_stream_text("/v1/responses", &ask).await.unwrap();
                assert_eq!(status, 200, "{text}");
                parse_sse(&text)
                    .iter()
                    .filter(|e| e.json()["type"] == "response.output_text.delta")
                    .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
                    .collect::<String>()
            } else {
                let (status, _, v) = h.post("/v1/responses", &ask).await.unwrap();
                assert_eq!(status, 200, "{v}");
                v["output"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert!(answer.contains(email), "{model} {stream}: {answer}");
            let sent = h.mock.requests().last().unwrap().clone();
            assert!(
                sent.path.ends_with("/chat/completions"),
                "{model}: {}",
                sent.path
            );
            let upstream = String::from_utf8_lossy(&sent.body).into_owned();
            assert!(!upstream.contains(email), "{model}: {upstream}");
        }
    }

    // Every request is audited: the refusals, and the answers with their tokens.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(h);
    let (all, records) = audit_log(&dir, 6);
    assert!(
        !all.contains(email) && !all.contains(card),
        "a value in the audit log"
    );
    assert!(records.iter().all(|r| r["endpoint"] == "/v1/responses"));
    let refused: Vec<&Value> = records.iter().filter(|r| r["status"] == 400).collect();
    assert_eq!(refused.len(), 2, "{records:?}");
    assert_eq!(refused[0]["privacy"]["action"], "block", "{records:?}");
    for r in records.iter().filter(|r| r["status"] == 200) {
        assert_eq!(r["privacy"]["action"], "redact", "{r}");
        assert!(r["tokens"]["output"].as_u64().unwrap() > 0, "{r}");
    }
}

/// Embeddings and token counts pass the privacy step too: their bodies go upstream as written,
/// so `block` refuses, and `redact` and `force-local` keep them here (a 400 without a local
/// model); a clean request goes through.
#[tokio::test]
async fn embeddings_and_token_counts_pass_the_privacy_step() {
    let dir = tempfile_dir();
    let h = start(&format!(
        "[audit]\npath = \"{}\"\n",
        dir.join("audit.jsonl").display()
    ))
    .await;
    let card = "4111 1111 1111 1111";
    let embed = |model: &str, text: &str| json!({"model": model, "input": ["hello", text]});
    let (status, headers, body) = h
        .post(
            "/v1/embeddings",
            &embed("gpt-block", &format!("card {card}")),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "sensitive_data", "{body}");
    assert_eq!(body["error"]["param"], "input", "{body}");
    assert!(!body.to_string().contains(card), "{body}");
    assert_eq!(
        headers["x-tandem-route"].to_str().unwrap(),
        "no backend; privacy=block (payment_card)"
    );
    for model in ["gpt-local", "gpt-echo"] {
        let (status, _, body) = h
            .post("/v1/embeddings", &embed(model, "mail jane.doe@example.com"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{model}: {body}");
        assert_eq!(
            body["error"]["code"], "no_backend_allowed",
            "{model}: {body}"
        );
    }
    let (status, _, body) = h
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "claude-block",
                    "messages": [{"role": "user", "content": "my SSN is 123-45-6789"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert!(!body.to_string().contains("123-45-6789"), "{body}");
    assert_eq!(h.mock.request_count(), 0, "nothing went upstream");

    // Clean requests on the same routes go through.
    let (status, _, body) = h
        .post("/v1/embeddings", &embed("gpt-block", "world"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = h
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "claude-block", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.mock.request_count(), 2);

    // Each is audited, the embeddings with their tokens, and no value is written.
    drop(h);
    let (all, records) = audit_log(&dir, 6);
    assert!(!all.contains(card) && !all.contains("123-45-6789"));
    let at = |endpoint: &str, status: u64| {
        records
            .iter()
            .filter(|r| r["endpoint"] == endpoint && r["status"] == status)
            .count()
    };
    assert_eq!(at("/v1/embeddings", 400), 3, "{records:?}");
    assert_eq!(at("/v1/embeddings", 200), 1, "{records:?}");
    assert_eq!(at("/v1/messages/count_tokens", 400), 1, "{records:?}");
    assert_eq!(at("/v1/messages/count_tokens", 200), 1, "{records:?}");
    let embedded = records
        .iter()
        .find(|r| r["endpoint"] == "/v1/embeddings" && r["status"] == 200)
        .unwrap();
    assert!(
        embedded["tokens"]["input"].as_u64().unwrap() > 0,
        "{embedded}"
    );
    assert_eq!(embedded["backends"], json!(["echo"]), "{embedded}");
}

#[tokio::test]
async fn force_local_never_sends_upstream_and_says_so_without_a_local_model() {
    let h = start("").await;
    let (status, _, body) = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-local", "messages": [{"role": "user", "content": "IBAN DE89 3704 0044 0532 0130 00"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "no_backend_allowed");
    assert_eq!(h.mock.request_count(), 0);
    // Nothing found: the route's cloud backend serves it.
    let (status, headers, _) = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-local", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        !headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .contains("privacy")
    );
}

#[tokio::test]
async fn a_key_rule_applies_to_every_route_the_key_uses() {
    let key = "sk-tandem-test-key";
    let hash = tandem_gateway::config::hash_api_key(key);
    let h = Harness::start_around(MockConfig::default(), move |mock| {
        format!(
            "api_key_hashes = [\"{hash}\"]\n[router.keys.{hash}]\nprivacy = \"block\"\n{}",
            privacy_config(&mock.base_url(), "")
        )
    })
    .await
    .unwrap();
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({"model": "gpt-echo", "messages": [{"role": "user", "content": "mail a@b.io"}]}),
        )
        .send()
        .await
        .unwrap();
    // The route redacts; the key blocks; the stricter wins.
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(h.mock.request_count(), 0);
}

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".head"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_audit_log_of_real_requests_verifies_and_names_each_kind_of_tampering() {
    let dir = tempfile_dir();
    let log = dir.join("audit.jsonl");
    let h = start(&format!(
        "[audit]\npath = \"{}\"\nmax_bytes = 4096\n",
        log.display()
    ))
    .await;
    let secret_mail = "carol.secret@example.com";
    for i in 0..12 {
        let prompt = format!("request {i}: write to {secret_mail}");
        let (status, _, answer) = ask(&h, i % 2 == 1, i % 3 == 0, &prompt).await;
        assert_eq!((status, answer.as_str()), (200, prompt.as_str()));
    }
    let (status, _, _) = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-block", "messages": [{"role": "user", "content": secret_mail}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    // A stream's record is written when its body is dropped, just after the client read it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(h);
    let files = audit_files(&dir);
    assert!(files.len() >= 2, "the log rotated: {files:?}");
    let ok = verify(&files).unwrap();
    assert_eq!(ok.records, 13);
    assert!(ok.head_checked);
    // What the records say, and what they never say.
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!all.contains(secret_mail), "a value in the audit log");
    let mut records: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| r["seq"].as_u64());
    let first = &records[0];
    assert_eq!(first["privacy"]["action"], "redact");
    assert_eq!(first["privacy"]["kinds"], json!(["email"]));
    assert_eq!(first["backends"], json!(["echo"]));
    assert!(first["tokens"]["output"].as_u64().unwrap() > 0);
    let blocked = records.last().unwrap();
    assert_eq!(blocked["status"], 400);
    assert_eq!(blocked["privacy"]["action"], "block");
    assert_eq!(blocked["backends"], json!([]));

    // Each kind of tampering, on a copy, is named by file and line.
    let active = log.clone();
    assert!(std::fs::read_to_string(&active).unwrap().lines().count() >= 3);
    let tamper = |name: &str, change: &dyn Fn(Vec<String>) -> Vec<String>, cut: Option<usize>| {
        let copy_dir = dir.join(name);
        std::fs::create_dir_all(&copy_dir).unwrap();
        let mut copies = Vec::new();
        for f in &files {
            let to = copy_dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            copies.push(to);
        }
        let head = dir.join("audit.jsonl.head");
        std::fs::copy(&head, copy_dir.join("audit.jsonl.head")).unwrap();
        let target = copy_dir.join(active.file_name().unwrap());
        let text = std::fs::read_to_string(&target).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut out = change(lines).join("\n");
        out.push('\n');
        if let Some(cut) = cut {
            out.truncate(out.len() - cut);
        }
        std::fs::write(&target, out).unwrap();
        let broken = verify(&copies).unwrap_err();
        assert_eq!(broken.file, target, "{name}: {broken}");
        eprintln!("{name}: {broken}");
        broken
    };
    let edited = tamper(
        "edit",
        &|mut l| {
            l[1] = l[1].replace("\"status\":200", "\"status\":201");
            l
        },
        None,
    );
    assert_eq!(edited.line, 2);
    assert!(edited.reason.contains("edited"));
    let deleted = tamper(
        "delete",
        &|mut l| {
            l.remove(1);
            l
        },
        None,
    );
    assert_eq!(deleted.line, 2);
    let reordered = tamper(
        "reorder",
        &|mut l| {
            l.swap(1, 2);
            l
        },
        None,
    );
    assert_eq!(reordered.line, 2);
    let cut_mid = tamper("truncate", &|l| l, Some(40));
    assert!(cut_mid.reason.contains("cut"), "{cut_mid}");
    let cut_whole = tamper(
        "truncate-line",
        &|mut l| {
            l.pop();
            l
        },
        None,
    );
    assert!(cut_whole.reason.contains("cut off"), "{cut_whole}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system temp dir.
/// The audit log under `dir`, checked intact with `count` records: its text, and its records in
/// order.
fn audit_log(dir: &Path, count: u64) -> (String, Vec<Value>) {
    let files = audit_files(dir);
    assert_eq!(verify(&files).unwrap().records, count);
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut records: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| r["seq"].as_u64());
    (all, records)
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tandem-audit-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
