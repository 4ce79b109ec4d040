//! Structured fuzzing of the client request decoders (`openai::decode_chat_request`,
//! `anthropic::decode_messages_request`, `openai::decode_completion_request`): arbitrary bytes,
//! broken JSON and valid-but-odd requests. Properties: no panic; an object refused for its shape
//! names the parameter at fault; a decoded chat request encoded for an upstream of the same format
//! decodes again and encodes to the same bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use fuzz_support::{bytes_or_broken, json_lit, messages_request_lit, request_lit};
use proptest::prelude::*;
use tandem_cloud_adapters::{ChatRequest, WireError, anthropic, openai};

/// An error about a JSON object's contents names the parameter; only a body that is not a JSON
/// object at all is refused without one.
fn check_error(body: &[u8], e: &WireError) {
    let is_object = matches!(
        serde_json::from_slice::<serde_json::Value>(body),
        Ok(serde_json::Value::Object(_))
    );
    if is_object {
        assert!(
            e.param.is_some(),
            "no param for {e:?} on {}",
            String::from_utf8_lossy(body)
        );
        assert_ne!(e.code, "invalid_json", "{e:?}");
    } else {
        assert_eq!(e.code, "invalid_json", "{e:?}");
        assert_eq!(e.param, None, "{e:?}");
    }
    assert!(!e.message.is_empty());
}

/// The body an OpenAI-format upstream would get for `req`.
fn openai_upstream(req: &ChatRequest) -> Vec<u8> {
    serde_json::to_vec(&openai::ChatCompletionsRequest::new(
        req, &req.model, req.stream,
    ))
    .unwrap()
}

/// The body an Anthropic upstream would get for `req`.
fn anthropic_upstream(req: &ChatRequest) -> Vec<u8> {
    serde_json::to_vec(&anthropic::MessagesRequest::new(
        req, &req.model, req.stream, 1024,
    ))
    .unwrap()
}

fn chat(body: &[u8]) {
    match openai::decode_chat_request(body) {
        Err(e) => check_error(body, &e),
        Ok(req) => {
            let sent = openai_upstream(&req);
            let again = openai::decode_chat_request(&sent).unwrap_or_else(|e| {
                panic!(
                    "the upstream body of an accepted request does not decode: {e:?}\n{}",
                    String::from_utf8_lossy(&sent)
                )
            });
            assert_eq!(
                String::from_utf8_lossy(&openai_upstream(&again)),
                String::from_utf8_lossy(&sent)
            );
        }
    }
}

fn messages(body: &[u8]) {
    match anthropic::decode_messages_request(body) {
        Err(e) => check_error(body, &e),
        Ok(req) => {
            let sent = anthropic_upstream(&req);
            let again = anthropic::decode_messages_request(&sent).unwrap_or_else(|e| {
                panic!(
                    "the upstream body of an accepted request does not decode: {e:?}\n{}",
                    String::from_utf8_lossy(&sent)
                )
            });
            assert_eq!(
                String::from_utf8_lossy(&anthropic_upstream(&again)),
                String::from_utf8_lossy(&sent)
            );
        }
    }
}

fn completion(body: &[u8]) {
    // The legacy body goes upstream as the client sent it, so there is no encoder to round
    // trip through; decoding is checked for panics, error shape and determinism.
    match openai::decode_completion_request(body) {
        Err(e) => check_error(body, &e),
        Ok(req) => assert_eq!(openai::decode_completion_request(body).unwrap(), req),
    }
}

/// A legacy completion body: `model` and `prompt` mostly present, anything else as it comes.
fn completion_lit() -> impl Strategy<Value = String> {
    (
        json_lit(),
        prop::collection::vec(
            (
                fuzz_support::key(),
                prop_oneof![2 => fuzz_support::scalar_lit(), 1 => json_lit()],
            ),
            0..6,
        ),
    )
        .prop_map(|(prompt, extra)| {
            let mut fields = vec![
                ("model".to_owned(), "\"m\"".to_owned()),
                ("prompt".to_owned(), prompt),
            ];
            fields.extend(extra);
            fuzz_support::object(&fields)
        })
}

proptest! {
    // Cases from PROPTEST_CASES (256 by default); what a run finds becomes a named test below.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn openai_chat_requests(body in bytes_or_broken(request_lit().boxed())) {
        chat(&body);
    }

    #[test]
    fn openai_chat_requests_valid_json(body in request_lit()) {
        chat(body.as_bytes());
    }

    #[test]
    fn anthropic_messages_requests(body in bytes_or_broken(messages_request_lit().boxed())) {
        messages(&body);
    }

    #[test]
    fn anthropic_messages_requests_valid_json(body in messages_request_lit()) {
        messages(body.as_bytes());
    }

    #[test]
    fn openai_completion_requests(body in bytes_or_broken(completion_lit().boxed())) {
        completion(&body);
    }

    #[test]
    fn openai_completion_requests_valid_json(body in completion_lit()) {
        completion(body.as_bytes());
    }

    #[test]
    fn any_json_to_every_decoder(body in json_lit()) {
        chat(body.as_bytes());
        messages(body.as_bytes());
        completion(body.as_bytes());
    }
}

// Regressions: inputs the suites above found, kept as they were found.

/// `{"role":"user","content":[]}` was accepted and then left out of the upstream body, which for
/// a one-message conversation meant `"messages":[]` upstream (a 400 from the API).
#[test]
fn found_anthropic_empty_content_was_dropped_upstream() {
    for content in [r#"[]"#, r#""""#, r#"[{"type":"text","text":""}]"#] {
        let body = format!(
            r#"{{"model":"m","max_tokens":256,"messages":[{{"role":"user","content":{content}}}]}}"#
        );
        let e = anthropic::decode_messages_request(body.as_bytes()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        assert_eq!(e.code, "invalid_value");
        messages(body.as_bytes());
    }
    // A final assistant turn may be empty (a prefill of nothing), as in the API.
    let body = r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":""}]}"#;
    anthropic::decode_messages_request(body.as_bytes()).unwrap();
    messages(body.as_bytes());
    // Thinking blocks are not sent on: a conversation of nothing else is refused as a whole.
    let body = r#"{"model":"m","max_tokens":9,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"s"}]}]}"#;
    let e = anthropic::decode_messages_request(body.as_bytes()).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"), "{e:?}");
}

/// A long number in a field passed on untouched (`extra`) moved by one unit in the last place
/// on each trip through the decoder (serde_json's fast float parsing); each trip must give the
/// same bytes.
#[test]
fn found_a_passed_on_number_drifted_on_each_trip() {
    for number in [
        "8294520068901613000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "-200061018367657600000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0.30000000000000004",
        "2.2250738585072011e-308",
    ] {
        let body = format!(
            r#"{{"model":"m","max_tokens":9,"messages":[{{"role":"user","content":"hi"}}],"custom":[{{"x":{number}}}]}}"#
        );
        chat(body.as_bytes());
        messages(body.as_bytes());
        let req = openai::decode_chat_request(body.as_bytes()).unwrap();
        let expected: f64 = number.parse().unwrap();
        assert_eq!(
            req.extra["custom"][0]["x"].as_f64(),
            Some(expected),
            "{number}"
        );
    }
}
