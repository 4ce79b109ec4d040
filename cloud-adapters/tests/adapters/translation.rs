//! Both directions of translation: an OpenAI stream re-encoded as Anthropic SSE and back, and
//! an Anthropic stream re-encoded as OpenAI chunks and back.

use tandem_cloud_adapters::anthropic::EventEncoder;
use tandem_cloud_adapters::openai::ChunkEncoder;
use tandem_cloud_adapters::{ChatEvent, FinishReason, ResponseBuilder, Usage};

use crate::{anthropic_events, fixture, openai_events, text_of};

fn encode_all(
    events: &[ChatEvent],
    mut encode: impl FnMut(&ChatEvent) -> bytes::Bytes,
    finish: bytes::Bytes,
) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(&encode(e));
    }
    out.extend_from_slice(&finish);
    out
}

fn last_usage(events: &[ChatEvent]) -> Usage {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            ChatEvent::Usage(u) => Some(*u),
            _ => None,
        })
        .unwrap()
}

fn tool_arguments(events: &[ChatEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn openai_stream_to_anthropic_sse_and_back() {
    let (events, _) = openai_events(&fixture("openai/chat_text_stream.sse"), 17);
    let mut enc = EventEncoder::new();
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let sse = String::from_utf8(out.clone()).unwrap();
    let order: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(order.first(), Some(&"message_start"));
    assert_eq!(
        &order[order.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    // Usage with cached tokens survives: 1117 prompt of which 1024 cached -> 93 uncached + 1024 read.
    assert!(sse.contains(r#""usage":{"input_tokens":93,"cache_creation_input_tokens":0,"cache_read_input_tokens":1024,"output_tokens":10}"#), "{sse}");

    let (back, complete) = anthropic_events(&out, 7);
    assert!(complete);
    assert_eq!(text_of(&back), text_of(&events));
    assert!(back.contains(&ChatEvent::Finish {
        reason: FinishReason::Stop
    }));
    assert_eq!(last_usage(&back), last_usage(&events));
}

#[test]
fn openai_tool_stream_to_anthropic_sse_and_back() {
    let (events, _) = openai_events(&fixture("openai/chat_tool_stream.sse"), 64);
    let mut enc = EventEncoder::new();
    let out = encode_all(&events, |e| enc.encode(e), bytes::Bytes::new());
    let mut enc_finish = enc;
    let mut out = out;
    out.extend_from_slice(&enc_finish.finish());
    let (back, complete) = anthropic_events(&out, 5);
    assert!(complete);
    assert_eq!(tool_arguments(&back), tool_arguments(&events));
    assert!(back.iter().any(|e| matches!(e, ChatEvent::ToolCallDelta { id: Some(id), name: Some(n), .. } if id == "call_Qx7mVb2KdLr9sT4wYz1Nc8Pe" && n == "get_weather")));
    assert!(back.contains(&ChatEvent::Finish {
        reason: FinishReason::ToolCalls
    }));
}

#[test]
fn anthropic_tool_stream_to_openai_chunks_and_back() {
    let (events, _) = anthropic_events(&fixture("anthropic/messages_tool_stream.sse"), 23);
    let mut enc = ChunkEncoder::new(true);
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    // The usage chunk is the last before [DONE], with no choices.
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert!(
        frames[frames.len() - 2]
            .contains(r#""choices":[],"usage":{"prompt_tokens":2008,"completion_tokens":89"#),
        "{}",
        frames[frames.len() - 2]
    );

    let (back, complete) = openai_events(&out, 3);
    assert!(complete);
    assert_eq!(text_of(&back), "I'll check the weather in Paris for you.");
    assert_eq!(tool_arguments(&back), "{\"location\": \"Paris, France\"}");
    assert!(back.contains(&ChatEvent::Finish {
        reason: FinishReason::ToolCalls
    }));
    let u = last_usage(&back);
    assert_eq!((u.prompt_tokens, u.completion_tokens), (2008, 89));

    let mut folded = ResponseBuilder::new();
    for e in back {
        folded.push(e);
    }
    let r = folded.finish().unwrap();
    assert_eq!(r.tool_calls[0].id, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
}

#[test]
fn anthropic_text_stream_to_openai_chunks_without_usage_when_not_asked() {
    let (events, _) = anthropic_events(&fixture("anthropic/messages_text_stream.sse"), 1);
    let mut enc = ChunkEncoder::new(false);
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(&enc.encode(e));
    }
    out.extend_from_slice(&enc.finish());
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(!text.contains("\"usage\""));
    let (back, complete) = openai_events(&out, 10);
    assert!(complete);
    assert_eq!(text_of(&back), "Hello! How can I help you today?");
}

#[test]
fn a_folded_stream_without_finish_is_a_cut() {
    let (events, _) = openai_events(&fixture("openai/chat_cut_stream.sse"), 50);
    let mut b = ResponseBuilder::new();
    for e in events {
        b.push(e);
    }
    let err = b.finish().unwrap_err();
    assert_eq!(
        err.kind,
        tandem_cloud_adapters::ProviderErrorKind::StreamCut
    );
}
