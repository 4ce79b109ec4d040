//! Verify protocols against recorded wire fixtures and a loopback server speaking their format.
// Helpers outside `#[test]` functions panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tandem_gateway::speculative::verify::{
    RemoteVerifier, Verifier, VerifyProtocol, VerifyRequest, sglang, vllm,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PREFIX: [u32; 4] = [1, 9690, 198, 19556];
const DRAFT: [u32; 2] = [314, 260];

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/verify/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The upstream client with default settings (plain HTTP on loopback).
fn client() -> HttpClient {
    HttpClient::new(&HttpConfig::default()).unwrap()
}

fn request() -> VerifyRequest<'static> {
    VerifyRequest {
        model: "smollm2",
        session: None,
        prefix: &PREFIX,
        draft: &DRAFT,
        top_k: 3,
        greedy: false,
    }
}

#[test]
fn vllm_fixture_parses_draft_positions_and_bonus() {
    let r = vllm::parse_response("vllm", &fixture("vllm_completions.json"), 4, 2).unwrap();
    assert_eq!(r.positions.len(), 3);
    // The target agrees with ` is`, prefers ` 2` to ` the`, and its bonus argmax is 260.
    assert_eq!(r.argmax(), vec![314, 2447, 260]);
    assert_eq!(r.positions[1][1], (260, -1.6875));
    assert_eq!(r.usage.prompt_tokens, 6);
    assert_eq!(r.usage.completion_tokens, 1);
    assert_eq!(r.usage.cached_prompt_tokens, 4);
}

#[test]
fn vllm_fixture_with_wrong_lengths_is_a_decode_error() {
    let err = vllm::parse_response("vllm", &fixture("vllm_completions.json"), 5, 2).unwrap_err();
    assert!(err.message.contains("prompt_logprobs"), "{err}");
    let mut no_bonus = fixture("vllm_completions.json");
    no_bonus["choices"][0]["logprobs"] = Value::Null;
    assert!(vllm::parse_response("vllm", &no_bonus, 4, 2).is_err());
    let mut text_keys = fixture("vllm_completions.json");
    text_keys["choices"][0]["logprobs"]["top_logprobs"] = json!([{" the": -0.04}]);
    let err = vllm::parse_response("vllm", &text_keys, 4, 2).unwrap_err();
    assert!(err.message.contains("return_tokens_as_token_ids"), "{err}");
}

#[test]
fn vllm_request_body_has_the_scoring_fields() {
    let body = serde_json::to_value(vllm::request_body(&request())).unwrap();
    assert_eq!(body["prompt"], json!([1, 9690, 198, 19556, 314, 260]));
    assert_eq!(body["prompt_logprobs"], 3);
    assert_eq!(body["logprobs"], 3);
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["return_tokens_as_token_ids"], true);
}

#[test]
fn sglang_fixture_parses_draft_positions_and_bonus() {
    let r = sglang::parse_response("sglang", &fixture("sglang_generate.json"), &DRAFT).unwrap();
    assert_eq!(r.argmax(), vec![314, 2447, 260]);
    assert_eq!(r.usage.cached_prompt_tokens, 4);
    // The same round through both servers gives the same scores.
    let v = vllm::parse_response("vllm", &fixture("vllm_completions.json"), 4, 2).unwrap();
    assert_eq!(r.positions, v.positions);
    // A draft the server did not see is caught.
    assert!(sglang::parse_response("sglang", &fixture("sglang_generate.json"), &[314, 5]).is_err());
    let batch = json!([fixture("sglang_generate.json")]);
    assert!(sglang::parse_response("sglang", &batch, &DRAFT).is_ok());
}

#[test]
fn sglang_request_body_starts_logprobs_before_the_draft() {
    let body = serde_json::to_value(sglang::request_body(&request())).unwrap();
    assert_eq!(body["input_ids"], json!([1, 9690, 198, 19556, 314, 260]));
    assert_eq!(body["logprob_start_len"], 3);
    assert_eq!(body["top_logprobs_num"], 3);
    assert_eq!(body["return_logprob"], true);
    assert_eq!(body["sampling_params"]["max_new_tokens"], 1);
}

/// A one-route HTTP/1.1 server: each request's path and JSON body go to `seen`; `answer`
/// chooses the status and body.
async fn serve(
    answer: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let seen = seen2.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, len) = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            break (pos + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap().to_owned();
                    let body: Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    let (status, reply) = answer(&path, &body);
                    seen.lock().push((path, body));
                    let text = reply.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    sock.write_all(resp.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn vllm_and_sglang_verifiers_round_trip_over_loopback() {
    let (base, seen) = serve(|path, _| match path {
        "/v1/completions" => (200, fixture("vllm_completions.json")),
        "/generate" => (200, fixture("sglang_generate.json")),
        _ => (404, json!({"error": {"message": "no route"}})),
    })
    .await;
    let client = client();
    let v = RemoteVerifier::new(
        VerifyProtocol::Vllm,
        "vllm",
        format!("{base}/v1"),
        None,
        client.clone(),
    )
    .unwrap();
    let s =
        RemoteVerifier::new(VerifyProtocol::Sglang, "sglang", base.clone(), None, client).unwrap();
    let a = v.verify(&request()).await.unwrap();
    let b = s.verify(&request()).await.unwrap();
    assert_eq!(a.argmax(), vec![314, 2447, 260]);
    assert_eq!(a.positions, b.positions);
    let seen = seen.lock();
    assert_eq!(seen[0].0, "/v1/completions");
    assert_eq!(seen[0].1["prompt_logprobs"], 3);
    assert_eq!(seen[1].0, "/generate");
}

#[tokio::test]
async fn upstream_error_status_keeps_message_and_retryability() {
    let (base, _) = serve(|_, _| {
        (
            503,
            json!({"error": {"message": "overloaded", "type": "server_error"}}),
        )
    })
    .await;
    let v = RemoteVerifier::new(
        VerifyProtocol::Vllm,
        "vllm",
        format!("{base}/v1"),
        None,
        client(),
    )
    .unwrap();
    let err = v.verify(&request()).await.unwrap_err();
    assert_eq!(err.status, Some(503));
    assert!(err.retryable);
    assert_eq!(err.message, "overloaded");
}

#[tokio::test]
async fn tandem_session_sends_only_new_tokens_and_recovers_from_a_mismatch() {
    let reply = |body: &Value| {
        let draft_len = body["draft_len"].as_u64().unwrap() as usize;
        let positions: Vec<Value> = (0..=draft_len)
            .map(|i| json!([[i as u32 + 7, -0.5]]))
            .collect();
        json!({"session_id": body["session_id"], "positions": positions,
               "usage": {"prompt_tokens": body["tokens"].as_array().unwrap().len(), "completion_tokens": 1, "cached_tokens": body["base_len"]}})
    };
    let forget_once = Arc::new(Mutex::new(true));
    let (base, seen) = serve(move |_, body| {
        if body["base_len"].as_u64().unwrap() > 0 && *forget_once.lock() {
            *forget_once.lock() = false;
            return (409, json!({"error": {"message": "session restarted", "type": "invalid_request_error", "code": "session_mismatch"}}));
        }
        (200, reply(body))
    })
    .await;
    let t =
        RemoteVerifier::new(VerifyProtocol::Tandem, "edge-cloud", base, None, client()).unwrap();
    let mut req = request();
    req.session = Some("s1");
    let first = t.verify(&req).await.unwrap();
    assert_eq!(first.argmax(), vec![7, 8, 9]);
    // Next round: one more committed token and a new draft.
    let prefix2 = [1, 9690, 198, 19556, 314, 2447];
    let draft2 = [11, 12, 13];
    let req2 = VerifyRequest {
        prefix: &prefix2,
        draft: &draft2,
        ..req
    };
    let second = t.verify(&req2).await.unwrap();
    assert_eq!(second.positions.len(), 4);
    let third = t.verify(&req2).await.unwrap();
    assert_eq!(third.usage.cached_prompt_tokens, 6);
    t.end_session("s1").await;
    let seen = seen.lock();
    assert_eq!(seen[0].1["base_len"], 0);
    assert_eq!(seen[0].1["tokens"].as_array().unwrap().len(), 6);
    // The second round kept the common 5 tokens, was refused, and resent everything.
    assert_eq!(seen[1].1["base_len"], 5);
    assert_eq!(seen[1].1["tokens"], json!([2447, 11, 12, 13]));
    assert_eq!(seen[2].1["base_len"], 0);
    assert_eq!(seen[2].1["tokens"].as_array().unwrap().len(), 9);
    // The same sequence again sends only the draft.
    assert_eq!(seen[3].1["base_len"], 6);
    assert_eq!(seen[4].1["close"], true);
}
