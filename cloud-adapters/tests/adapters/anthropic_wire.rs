//! Anthropic Messages: decoding, upstream bodies, fixture parsing and encoders' bytes.

use serde_json::json;
use tandem_cloud_adapters::anthropic::{self, EventEncoder, MessagesRequest};
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Role, ToolChoice,
    Usage, WireFormat,
};

use crate::{anthropic_events, fixture, text_of};

#[test]
fn decodes_a_full_request() {
    let body = json!({
        "model": "claude-sonnet-4-20250514", "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}]}
        ],
        "stop_sequences": ["END"], "stream": true, "temperature": 0.2, "top_k": 5,
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "metadata": {"user_id": "u1"}, "thinking": {"type": "disabled"}
    });
    let req = anthropic::decode_messages_request(body.to_string().as_bytes()).unwrap();
    assert_eq!(req.messages[0], Message::text(Role::System, "Be brief."));
    assert_eq!(req.messages.len(), 4);
    assert!(
        matches!(&req.messages[2].content[1], ContentPart::ToolUse { id, .. } if id == "toolu_1")
    );
    assert!(
        matches!(&req.messages[3].content[0], ContentPart::ToolResult { content, .. } if content == "sunny")
    );
    assert_eq!(req.max_tokens, Some(256));
    assert_eq!(req.stop, vec!["END".to_owned()]);
    assert_eq!(req.top_k, Some(5));
    assert_eq!(req.tool_choice, Some(ToolChoice::Required));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.user.as_deref(), Some("u1"));
    assert!(req.stream && req.include_usage);
    assert_eq!(
        req.extra.get("thinking"),
        Some(&json!({"type": "disabled"}))
    );
    assert_eq!(req.ingress, Some(WireFormat::Anthropic));
}

#[test]
fn decoding_errors_are_precise() {
    let err = anthropic::decode_messages_request(b"[").unwrap_err();
    assert_eq!(err.code, "invalid_json");
    let err = anthropic::decode_messages_request(
        br#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages[0].role"));
    let err = anthropic::decode_messages_request(
        br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        ("invalid_type", Some("messages[0].content"))
    );
    let err = anthropic::decode_messages_request(
        br#"{"model":"m","max_tokens":"many","messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("max_tokens"));
    let err =
        anthropic::decode_messages_request(br#"{"messages":[{"role":"user","content":"x"}]}"#)
            .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("model"));
    // Anthropic's own rules: the limit is required, sampling values lie within 0 and 1.
    let cases: [(&[u8], &str, &str); 3] = [
        (
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            "missing_required_parameter",
            "max_tokens",
        ),
        (
            br#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
            "invalid_value",
            "max_tokens",
        ),
        (
            br#"{"model":"m","max_tokens":8,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}"#,
            "invalid_value",
            "temperature",
        ),
    ];
    for (body, code, param) in cases {
        let err = anthropic::decode_messages_request(body).unwrap_err();
        assert_eq!((err.code, err.param.as_deref()), (code, Some(param)));
    }
}

#[test]
fn upstream_body_moves_system_defaults_max_tokens_and_merges_tool_results() {
    // As an OpenAI client would send it: system message, assistant tool calls, two tool messages.
    let req = tandem_cloud_adapters::openai::decode_chat_request(
        json!({"model": "gpt", "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
            {"role": "tool", "tool_call_id": "call_2", "content": "r2"}
        ], "stop": "X", "temperature": 1.5, "tool_choice": "required", "parallel_tool_calls": false,
        "service_tier": "flex"})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let body = serde_json::to_value(MessagesRequest::new(&req, "claude", true, 1024)).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude", "max_tokens": 1024,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "a", "input": {"x": 1}},
                    {"type": "tool_use", "id": "call_2", "name": "b", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "r1"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "r2"}]}
            ],
            "system": [{"type": "text", "text": "S"}],
            "stop_sequences": ["X"], "stream": true, "temperature": 1.0,
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn parses_the_text_and_tool_messages() {
    let r =
        anthropic::parse_messages_response(&fixture("anthropic/messages_text.json"), "a").unwrap();
    assert_eq!(r.text, "Hello! How can I help you today?");
    assert_eq!(
        r.usage,
        Usage {
            prompt_tokens: 21 + 2048,
            completion_tokens: 12,
            cached_prompt_tokens: 2048,
            ..Usage::default()
        }
    );
    let r =
        anthropic::parse_messages_response(&fixture("anthropic/messages_tool.json"), "a").unwrap();
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls[0].id, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(
        r.tool_calls[0].arguments,
        "{\"location\":\"Paris, France\"}"
    );
    assert_eq!(r.usage.cache_creation_tokens, 1536);
    assert_eq!(r.usage.prompt_tokens, 472 + 1536);
}

#[test]
fn the_text_stream_keeps_usage_from_start_and_delta() {
    let bytes = fixture("anthropic/messages_text_stream.sse");
    let (events, complete) = anthropic_events(&bytes, bytes.len());
    assert!(complete);
    assert_eq!(text_of(&events), "Hello! How can I help you today?");
    assert!(events.contains(&ChatEvent::Finish {
        reason: FinishReason::Stop
    }));
    let last_usage = events
        .iter()
        .rev()
        .find_map(|e| match e {
            ChatEvent::Usage(u) => Some(*u),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        last_usage,
        Usage {
            prompt_tokens: 2069,
            completion_tokens: 12,
            cached_prompt_tokens: 2048,
            ..Usage::default()
        }
    );
    for step in [1, 4, 13, 100] {
        let (again, _) = anthropic_events(&bytes, step);
        assert_eq!(again.len(), events.len());
        assert_eq!(text_of(&again), text_of(&events));
    }
}

#[test]
fn the_tool_stream_maps_blocks_to_tool_indices() {
    let (events, complete) = anthropic_events(&fixture("anthropic/messages_tool_stream.sse"), 9);
    assert!(complete);
    assert_eq!(text_of(&events), "I'll check the weather in Paris for you.");
    let args: String = events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::ToolCallDelta {
                index: 0,
                arguments,
                ..
            } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"location\": \"Paris, France\"}");
    assert!(events.iter().any(|e| matches!(e, ChatEvent::ToolCallDelta { index: 0, id: Some(id), .. } if id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6")));
    assert!(events.contains(&ChatEvent::Finish {
        reason: FinishReason::ToolCalls
    }));
}

#[test]
fn a_cut_stream_is_not_complete_but_keeps_start_usage() {
    let (events, complete) = anthropic_events(&fixture("anthropic/messages_cut_stream.sse"), 3);
    assert!(!complete);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ChatEvent::Usage(u) if u.cached_prompt_tokens == 2048))
    );
}

#[test]
fn overloaded_is_retryable_and_invalid_is_not() {
    let e = anthropic::parse_error_body(529, &fixture("anthropic/error_overloaded.json"), "a");
    assert!(e.retryable);
    assert_eq!(e.message, "Overloaded");
    assert_eq!(
        e.upstream_body.unwrap()["error"]["type"],
        "overloaded_error"
    );
    let e = anthropic::parse_error_body(400, &fixture("anthropic/error_invalid.json"), "a");
    assert!(!e.retryable);
    assert_eq!(e.message, "max_tokens: Field required");
}

#[test]
fn event_encoder_writes_exact_bytes() {
    let events = [
        ChatEvent::Start {
            id: "msg_1".into(),
            model: "m".into(),
            created: 1,
        },
        ChatEvent::TextDelta {
            index: 0,
            text: "Hi".into(),
            logprobs: None,
        },
        ChatEvent::ToolCallDelta {
            index: 0,
            id: Some("toolu_1".into()),
            name: Some("f".into()),
            arguments: String::new(),
        },
        ChatEvent::ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "{}".into(),
        },
        ChatEvent::Finish {
            reason: FinishReason::ToolCalls,
        },
        ChatEvent::Usage(Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_prompt_tokens: 4,
            ..Usage::default()
        }),
    ];
    let mut enc = EventEncoder::new();
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let expected = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":6,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":4,\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn event_encoder_writes_an_error_event() {
    let mut enc = EventEncoder::new();
    let mut err = tandem_cloud_adapters::ProviderError::status(529, "up", "Overloaded");
    err.retryable = true;
    let bytes = enc.encode(&ChatEvent::Error(err));
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
    );
    assert!(enc.finish().is_empty());
}

/// A whole answer as the Messages JSON a client receives.
fn encoded(r: &ChatResponse) -> serde_json::Value {
    serde_json::from_slice(&anthropic::encode_messages_response(r)).unwrap()
}

#[test]
fn encodes_a_message_response() {
    let r =
        anthropic::parse_messages_response(&fixture("anthropic/messages_tool.json"), "a").unwrap();
    let v = encoded(&r);
    assert_eq!(
        v["content"][1],
        json!({"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {"location": "Paris, France"}})
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 472, "cache_creation_input_tokens": 1536, "cache_read_input_tokens": 0, "output_tokens": 89})
    );
    let _ = ChatRequest::default();
}

#[test]
fn answers_from_openai_style_backends_get_anthropic_message_ids() {
    let r = ChatResponse {
        id: "chatcmpl-abc123".into(),
        model: "m".into(),
        created: 0,
        text: "Hi".into(),
        tool_calls: Vec::new(),
        finish_reason: FinishReason::Stop,
        logprobs: None,
        usage: Usage::default(),
    };
    assert_eq!(encoded(&r)["id"], "msg_abc123");

    let mut enc = EventEncoder::new();
    let start = enc.encode(&ChatEvent::Start {
        id: "chatcmpl-abc123".into(),
        model: "m".into(),
        created: 0,
    });
    let mut out = start.to_vec();
    out.extend_from_slice(&enc.encode(&ChatEvent::TextDelta {
        index: 0,
        text: "Hi".into(),
        logprobs: None,
    }));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\"id\":\"msg_abc123\""), "{text}");

    // An id that is already Anthropic's stays as it is.
    let native = ChatResponse {
        id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
        ..r
    };
    assert_eq!(encoded(&native)["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
}
