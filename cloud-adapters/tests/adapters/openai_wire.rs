//! OpenAI chat/completions: decoding, upstream bodies, fixture parsing and encoders' bytes.

use serde_json::json;
use tandem_cloud_adapters::openai::{self, ChatCompletionsRequest, ChunkEncoder, Prompt};
use tandem_cloud_adapters::{
    ChatEvent, ChatResponse, ContentPart, FinishReason, ProviderErrorKind, Role, ToolCall,
    ToolChoice, Usage, WireFormat,
};

use crate::{fixture, openai_events, text_of};

fn decode(
    v: serde_json::Value,
) -> Result<tandem_cloud_adapters::ChatRequest, tandem_cloud_adapters::WireError> {
    openai::decode_chat_request(v.to_string().as_bytes())
}

#[test]
fn decodes_a_full_request() {
    let req = decode(json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "max_completion_tokens": 64, "max_tokens": 10, "temperature": 0.5, "top_p": 0.9, "seed": 7,
        "stop": "END", "stream": true, "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"}, "logprobs": true, "top_logprobs": 3,
        "user": "u1", "service_tier": "flex"
    }))
    .unwrap();
    assert_eq!(req.model, "gpt-4o-mini");
    assert_eq!(req.messages.len(), 4);
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.messages[1].content.len(), 2);
    assert!(
        matches!(&req.messages[2].content[0], ContentPart::ToolUse { input, .. } if input["location"] == "Paris")
    );
    assert!(
        matches!(&req.messages[3].content[0], ContentPart::ToolResult { tool_use_id, content, .. } if tool_use_id == "call_1" && content == "sunny")
    );
    assert_eq!(req.max_tokens, Some(64));
    assert_eq!(req.stop, vec!["END".to_owned()]);
    assert!(req.stream && req.include_usage && req.logprobs);
    assert_eq!(req.top_logprobs, Some(3));
    assert_eq!(req.seed, Some(7));
    assert_eq!(
        req.tool_choice,
        Some(ToolChoice::Tool("get_weather".into()))
    );
    assert_eq!(req.response_format, Some(json!({"type": "json_object"})));
    assert_eq!(req.extra.get("service_tier"), Some(&json!("flex")));
    assert_eq!(req.ingress, Some(WireFormat::OpenAi));
}

#[test]
fn stop_accepts_an_array() {
    let req = decode(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"]}),
    )
    .unwrap();
    assert_eq!(req.stop, vec!["a".to_owned(), "b".to_owned()]);
}

#[test]
fn decoding_errors_are_precise() {
    let err = openai::decode_chat_request(b"{\"model\": ").unwrap_err();
    assert_eq!(err.code, "invalid_json");

    let err = decode(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        ("missing_required_parameter", Some("model"))
    );

    let err = decode(json!({"model": "m"})).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages"));

    let err = decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})).unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        ("invalid_type", Some("temperature"))
    );

    let err =
        decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}))
            .unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        ("invalid_value", Some("n"))
    );
    // OpenAI's own ranges.
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("top_p", json!(1.5)),
        ("max_tokens", json!(0)),
        ("max_completion_tokens", json!(0)),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let err = decode(body).unwrap_err();
        assert_eq!(
            (err.code, err.param.as_deref()),
            ("invalid_value", Some(field))
        );
    }
    // Several choices are the backend's to make or refuse.
    let several =
        decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}))
            .unwrap();
    assert_eq!(several.n, 2);

    let err = decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]})).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages[1].role"));
    assert!(err.message.contains("robot"), "{}", err.message);

    let err =
        decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}))
            .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("stop[0]"));

    let err =
        decode(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages[0].tool_call_id"));

    // Names built only on error still point at the exact place.
    for (message, param) in [
        (json!({"role": "user", "content": 7}), "messages[1].content"),
        (
            json!({"role": "user", "content": "x", "name": 1}),
            "messages[1].name",
        ),
        (json!({"role": "user"}), "messages[1].content"),
        (json!("text"), "messages[1]"),
        (json!({"role": 3, "content": "x"}), "messages[1].role"),
        (
            json!({"role": "user", "content": [{"type": "text", "text": 1}]}),
            "messages[1].content[0].text",
        ),
    ] {
        let err =
            decode(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, message]}))
                .unwrap_err();
        assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
    }

    let err = decode(json!({"model": 5, "messages": []})).unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        ("invalid_type", Some("model"))
    );
}

#[test]
fn upstream_body_asks_for_usage_when_streaming_and_borrows_the_request() {
    let mut req = decode(json!({"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        "stream": true, "stop": ["x", "y"], "max_tokens": 5, "metadata_extra": 1})).unwrap();
    let body = serde_json::to_value(ChatCompletionsRequest::new(&req, "up-model", true)).unwrap();
    assert_eq!(body["model"], "up-model");
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["stop"], json!(["x", "y"]));
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(body["metadata_extra"], 1);
    assert!(body.get("temperature").is_none());
    // Extra fields only go to an upstream of the format they came in.
    req.ingress = Some(WireFormat::Anthropic);
    let body = serde_json::to_value(ChatCompletionsRequest::new(&req, "m", false)).unwrap();
    assert!(body.get("metadata_extra").is_none());
    assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
}

#[test]
fn the_token_limit_goes_upstream_under_the_name_the_client_used() {
    let body_for = |limit: serde_json::Value| {
        let mut request = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        request
            .as_object_mut()
            .unwrap()
            .extend(limit.as_object().unwrap().clone());
        let req = decode(request).unwrap();
        serde_json::to_value(ChatCompletionsRequest::new(&req, "o3-mini", false)).unwrap()
    };
    // OpenAI's reasoning models refuse `max_tokens`; a client that knows this must not be undone.
    let body = body_for(json!({"max_completion_tokens": 64}));
    assert_eq!(body["max_completion_tokens"], 64);
    assert!(body.get("max_tokens").is_none(), "{body}");
    let body = body_for(json!({"max_tokens": 32}));
    assert_eq!(body["max_tokens"], 32);
    assert!(body.get("max_completion_tokens").is_none(), "{body}");
    // Given both, OpenAI takes `max_completion_tokens`; so does the gateway, and sends only it.
    let body = body_for(json!({"max_tokens": 32, "max_completion_tokens": 64}));
    assert_eq!(body["max_completion_tokens"], 64);
    assert!(body.get("max_tokens").is_none(), "{body}");
    assert!(body_for(json!({})).get("max_completion_tokens").is_none());
}

#[test]
fn parses_the_text_and_tool_responses() {
    let r = openai::parse_chat_response(&fixture("openai/chat_text.json"), "p").unwrap();
    assert_eq!(r.text, "Hello! How can I help you today?");
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(
        r.usage,
        Usage {
            prompt_tokens: 1117,
            completion_tokens: 10,
            cached_prompt_tokens: 1024,
            ..Usage::default()
        }
    );
    let r = openai::parse_chat_response(&fixture("openai/chat_tool.json"), "p").unwrap();
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls[0].name, "get_weather");
    assert_eq!(
        r.tool_calls[0].arguments,
        "{\"location\":\"Paris, France\"}"
    );
}

#[test]
fn a_passed_on_completion_keeps_every_byte_and_reads_the_usage() {
    let body = bytes::Bytes::from(fixture("openai/chat_text.json"));
    let passed = openai::pass_chat_response(body.clone(), "p").unwrap();
    // Byte for byte, fields the normalized answer has no place for included.
    assert_eq!(passed.body, body);
    assert_eq!(
        passed.usage,
        openai::parse_chat_response(&body, "p").unwrap().usage
    );
    assert_eq!(passed.usage.cached_prompt_tokens, 1024);
    let reasoning = br#"{"choices":[{"message":{"content":"4"}}],
        "usage":{"prompt_tokens":9,"completion_tokens":70,
        "completion_tokens_details":{"reasoning_tokens":64}}}"#;
    let passed = openai::pass_chat_response(bytes::Bytes::from_static(reasoning), "p").unwrap();
    assert_eq!(passed.usage.reasoning_tokens, 64);
    assert_eq!(passed.usage.completion_tokens, 70);
    // No usage reported: counted as none, the body still passed on.
    let bare = br#"{"choices":[{"message":{"content":"hi"}}]}"#;
    let passed = openai::pass_chat_response(bytes::Bytes::from_static(bare), "p").unwrap();
    assert_eq!(passed.usage, Usage::default());
}

#[test]
fn a_completion_that_cannot_be_passed_on_is_a_decode_error() {
    let cases: [(&[u8], &str); 7] = [
        (b"{\"choices\":[]}", "chat.completion has no choices"),
        (b"{\"choices\":[null]}", "bad chat.completion"),
        (b"{\"choices\":[1]}", "bad chat.completion"),
        (b"{\"id\":\"x\"}", "chat.completion has no choices"),
        (b"{\"choices\":[{}]", "bad chat.completion"),
        (b"<html>502 Bad Gateway</html>", "bad chat.completion"),
        (b"{\"choices\":[{\"x\":\"\xff\"}]}", "bad chat.completion"),
    ];
    for (body, message) in cases {
        let err = openai::pass_chat_response(bytes::Bytes::from_static(body), "p").unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Decode, "{body:?}");
        assert!(
            err.message.starts_with(message),
            "{body:?}: {}",
            err.message
        );
        assert!(!err.retryable);
    }
}

#[test]
fn the_text_stream_parses_the_same_at_any_split() {
    let bytes = fixture("openai/chat_text_stream.sse");
    let (whole, complete) = openai_events(&bytes, bytes.len());
    assert!(complete);
    assert!(
        matches!(&whole[0], ChatEvent::Start { id, .. } if id == "chatcmpl-BjQ0cV3aXhQpT7kLmN2oR8sUvW4yZ")
    );
    assert_eq!(text_of(&whole), "Hello! How can I help you today?");
    assert_eq!(
        whole[whole.len() - 2],
        ChatEvent::Finish {
            reason: FinishReason::Stop
        }
    );
    assert_eq!(
        whole[whole.len() - 1],
        ChatEvent::Usage(Usage {
            prompt_tokens: 1117,
            completion_tokens: 10,
            cached_prompt_tokens: 1024,
            ..Usage::default()
        })
    );
    for step in [1, 2, 3, 7, 64, 333] {
        assert_eq!(
            openai_events(&bytes, step).0,
            whole,
            "split every {step} bytes"
        );
    }
}

#[test]
fn the_tool_stream_gives_incremental_arguments() {
    let (events, complete) = openai_events(&fixture("openai/chat_tool_stream.sse"), 5);
    assert!(complete);
    let mut args = String::new();
    for e in &events {
        if let ChatEvent::ToolCallDelta {
            index, arguments, ..
        } = e
        {
            assert_eq!(*index, 0);
            args.push_str(arguments);
        }
    }
    assert_eq!(args, "{\"location\":\"Paris, France\"}");
    assert!(events.iter().any(|e| matches!(e, ChatEvent::ToolCallDelta { id: Some(id), name: Some(n), .. } if id == "call_Qx7mVb2KdLr9sT4wYz1Nc8Pe" && n == "get_weather")));
    assert!(events.contains(&ChatEvent::Finish {
        reason: FinishReason::ToolCalls
    }));
}

#[test]
fn a_cut_stream_is_not_complete() {
    let (events, complete) = openai_events(&fixture("openai/chat_cut_stream.sse"), 11);
    assert!(!complete);
    assert_eq!(text_of(&events), "Hello! How can");
}

#[test]
fn a_stream_cut_between_its_finish_reason_and_its_usage_is_not_complete() {
    let whole = fixture("openai/chat_text_stream.sse");
    let text = String::from_utf8(whole).unwrap();
    let frames: Vec<&str> = text.split_inclusive("\n\n").collect();
    let finish = frames
        .iter()
        .position(|f| f.contains("\"finish_reason\":\"stop\""))
        .unwrap();
    let usage = frames
        .iter()
        .position(|f| f.contains("\"usage\":{"))
        .unwrap();
    assert!(
        finish < usage,
        "the fixture sends usage after the finish reason"
    );
    let upto = |n: usize| frames[..n].concat().into_bytes();
    // Ended after the finish reason: the usage never came, so the stream was cut.
    let (events, complete) = openai_events(&upto(finish + 1), 7);
    assert!(!complete);
    assert!(!events.iter().any(|e| matches!(e, ChatEvent::Usage(_))));
    // With the usage chunk, or with `[DONE]` alone (a server that sends no usage), it is whole.
    assert!(openai_events(&upto(usage + 1), 7).1);
    let mut done_only = upto(finish + 1);
    done_only.extend_from_slice(b"data: [DONE]\n\n");
    assert!(openai_events(&done_only, 7).1);
}

#[test]
fn error_bodies_say_whether_to_retry() {
    let e = openai::parse_error_body(429, &fixture("openai/error_rate_limit.json"), "oa");
    assert!(e.retryable);
    assert_eq!(e.status, Some(429));
    assert!(e.message.starts_with("Rate limit reached"));
    assert_eq!(
        e.upstream_body.as_ref().unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
    let e = openai::parse_error_body(500, &fixture("openai/error_server.json"), "oa");
    assert!(e.retryable);
    for status in [400, 401, 403, 404, 422] {
        assert!(
            !openai::parse_error_body(status, b"{\"error\":{\"message\":\"no\"}}", "oa").retryable
        );
    }
    for status in [502, 503, 504, 529] {
        assert!(openai::parse_error_body(status, b"<html>bad gateway</html>", "oa").retryable);
    }
    assert_eq!(e.kind, ProviderErrorKind::Status);
}

fn sample_response() -> ChatResponse {
    ChatResponse {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        created: 1700000000,
        text: "Hi".into(),
        tool_calls: vec![],
        finish_reason: FinishReason::Stop,
        logprobs: None,
        usage: Usage {
            prompt_tokens: 5,
            completion_tokens: 1,
            cached_prompt_tokens: 2,
            ..Usage::default()
        },
    }
}

#[test]
fn encodes_a_response_with_exact_bytes() {
    let bytes = openai::encode_chat_response(&sample_response());
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}}"#
    );
    let mut r = sample_response();
    r.text.clear();
    r.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: "{}".into(),
    }];
    r.finish_reason = FinishReason::ToolCalls;
    let v: serde_json::Value = serde_json::from_slice(&openai::encode_chat_response(&r)).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        serde_json::Value::Null
    );
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "f"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn chunk_encoder_writes_exact_bytes_and_usage_only_when_asked() {
    let events = [
        ChatEvent::Start {
            id: "c1".into(),
            model: "m".into(),
            created: 1,
        },
        ChatEvent::TextDelta {
            index: 0,
            text: "Hi".into(),
            logprobs: None,
        },
        ChatEvent::Finish {
            reason: FinishReason::Stop,
        },
        ChatEvent::Usage(Usage {
            prompt_tokens: 3,
            completion_tokens: 1,
            ..Usage::default()
        }),
    ];
    let mut enc = ChunkEncoder::new(true);
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let expected = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);

    let mut enc = ChunkEncoder::new(false);
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn chunk_encoder_turns_an_error_into_an_error_event_without_done() {
    let mut enc = ChunkEncoder::new(false);
    let _ = enc.encode(&ChatEvent::Start {
        id: "c".into(),
        model: "m".into(),
        created: 1,
    });
    let err = tandem_cloud_adapters::ProviderError::stream_cut("up");
    let bytes = enc.encode(&ChatEvent::Error(err));
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with("data: {\"error\":{"), "{text}");
    assert!(text.contains("\"code\":\"stream_cut\""));
    assert!(enc.finish().is_empty());
}

#[test]
fn chunk_encoder_writes_tool_call_deltas_like_openai() {
    let mut enc = ChunkEncoder::new(false);
    let _ = enc.encode(&ChatEvent::Start {
        id: "c".into(),
        model: "m".into(),
        created: 1,
    });
    let first = enc.encode(&ChatEvent::ToolCallDelta {
        index: 0,
        id: Some("call_1".into()),
        name: Some("f".into()),
        arguments: String::new(),
    });
    assert!(std::str::from_utf8(&first).unwrap().contains(r#""delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}"#));
    let next = enc.encode(&ChatEvent::ToolCallDelta {
        index: 0,
        id: None,
        name: None,
        arguments: "{}".into(),
    });
    assert!(
        std::str::from_utf8(&next)
            .unwrap()
            .contains(r#""delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#)
    );
}

#[test]
fn legacy_completions_decode_and_encode() {
    let req = openai::decode_completion_request(br#"{"model":"m","prompt":[1,2,3],"max_tokens":4,"echo":true,"logprobs":2,"prompt_logprobs":1,"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
    assert_eq!(req.prompt, Prompt::Tokens(vec![1, 2, 3]));
    assert!(req.echo && req.include_usage);
    assert_eq!((req.logprobs, req.prompt_logprobs), (Some(2), Some(1)));
    let req = openai::decode_completion_request(br#"{"model":"m","prompt":["only one"]}"#).unwrap();
    assert_eq!(req.prompt, Prompt::Text("only one".into()));
    let err =
        openai::decode_completion_request(br#"{"model":"m","prompt":["a","b"]}"#).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("prompt"));
    let err = openai::decode_completion_request(br#"{"model":"m"}"#).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("prompt"));
    let body = openai::encode_completion_response(&sample_response(), Some("Say: "));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Say: Hi");
    let mut enc = openai::CompletionChunkEncoder::new(false);
    let _ = enc.encode(&ChatEvent::Start {
        id: "cmpl-1".into(),
        model: "m".into(),
        created: 1,
    });
    let bytes = enc.encode(&ChatEvent::TextDelta {
        index: 0,
        text: "x".into(),
        logprobs: None,
    });
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"text\":\"x\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    );
}

#[test]
fn an_error_inside_a_stream_becomes_an_error_event() {
    let stream = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    );
    let (events, complete) = openai_events(stream.as_bytes(), 9);
    assert!(complete);
    match events.last() {
        Some(ChatEvent::Error(e)) => {
            assert!(e.retryable);
            assert!(e.message.starts_with("The server had an error"));
        }
        other => panic!("expected an error event, got {other:?}"),
    }
}

/// Both stream encoders end a failed stream alike: the usage reported before the failure (when
/// the client asked for usage), then the error event, and no `[DONE]`.
#[test]
fn both_stream_encoders_send_the_usage_before_an_error() {
    let usage = Usage {
        prompt_tokens: 3,
        completion_tokens: 2,
        ..Usage::default()
    };
    let failure = ChatEvent::Error(tandem_cloud_adapters::ProviderError::stream_cut("up"));
    let mut chat = ChunkEncoder::new(true);
    let mut legacy = openai::CompletionChunkEncoder::new(true);
    for (object, frames) in [
        (
            "chat.completion.chunk",
            [
                chat.encode(&ChatEvent::Usage(usage)),
                chat.encode(&failure),
                chat.finish(),
            ],
        ),
        (
            "text_completion",
            [
                legacy.encode(&ChatEvent::Usage(usage)),
                legacy.encode(&failure),
                legacy.finish(),
            ],
        ),
    ] {
        let text = frames
            .iter()
            .map(|f| std::str::from_utf8(f).unwrap())
            .collect::<String>();
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(events[0]["object"], object, "{text}");
        assert_eq!(events[0]["usage"]["total_tokens"], 5, "{text}");
        assert!(events[1]["error"].is_object(), "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
    }
}
