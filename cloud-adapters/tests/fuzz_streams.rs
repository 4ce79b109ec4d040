//! Structured fuzzing of the upstream stream readers: the SSE parser (`sse::SseParser`) and the
//! two stream decoders (OpenAI `ChunkDecoder`, Anthropic `EventDecoder`) behind `decode_sse`,
//! fed arbitrary bytes and SSE built from odd lines and odd JSON, split at arbitrary points.
//! Properties: no panic; the same events however the bytes are split; a stream always ends, with
//! at most one error and nothing after it, and never silently (an end marker or an error).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use bytes::Bytes;
use futures::StreamExt;
use fuzz_support::{json_lit, number_lit, split_at, string_lit};
use proptest::prelude::*;
use tandem_cloud_adapters::http::{StreamDecode, decode_sse};
use tandem_cloud_adapters::sse::{SseEvent, SseParser};
use tandem_cloud_adapters::{ChatEvent, ProviderError, ProviderErrorKind, anthropic, openai};

/// Every event of `chunks` fed in order, and whether a partial event is left.
fn parse(chunks: &[Vec<u8>]) -> (Vec<SseEvent>, bool) {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
    }
    (events, parser.has_partial())
}

/// The events `decoder` makes of `chunks`, read to the end through `decode_sse`.
fn decode<D: StreamDecode>(decoder: D, chunks: &[Vec<u8>]) -> Vec<ChatEvent> {
    let body = futures::stream::iter(
        chunks
            .iter()
            .map(|c| Ok::<_, ProviderError>(Bytes::from(c.clone())))
            .collect::<Vec<_>>(),
    )
    .boxed();
    futures::executor::block_on(decode_sse(body, decoder, "fuzz").collect::<Vec<_>>())
}

/// The stream invariants, and the same events when the bytes come whole.
fn check_decoded<D: StreamDecode>(make: impl Fn() -> D, bytes: &[u8], chunks: &[Vec<u8>]) {
    let split = decode(make(), chunks);
    let whole = decode(make(), &[bytes.to_vec()]);
    assert_eq!(
        split,
        whole,
        "split at {:?}",
        chunks.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let errors = split
        .iter()
        .filter(|e| matches!(e, ChatEvent::Error(_)))
        .count();
    assert!(errors <= 1, "{split:?}");
    if errors == 1 {
        assert!(
            matches!(split.last(), Some(ChatEvent::Error(_))),
            "{split:?}"
        );
    }
    // Ended by its marker (the decoder says complete) or by an error, never just stopped.
    let mut decoder = make();
    let mut out = Vec::new();
    for event in parse(&[bytes.to_vec()]).0 {
        decoder.decode(&event, &mut out);
    }
    assert!(
        decoder.is_complete() || errors == 1,
        "the stream ended silently: {split:?}"
    );
}

/// One SSE line: a field (data, event, id, retry, unknown), a comment, or a blank line.
fn line(
    data: BoxedStrategy<String>,
    events: &'static [&'static str],
) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => data.prop_map(|d| format!("data: {d}")),
        2 => prop::sample::select(events).prop_map(|e| format!("event: {e}")),
        3 => Just(String::new()),
        1 => Just("data: [DONE]".to_owned()),
        1 => Just(": ping".to_owned()),
        1 => "[a-z]{0,6}(: ?[ -~]{0,12})?",
        1 => Just("id: 7".to_owned()),
        1 => Just("data:".to_owned()),
    ]
}

/// SSE text: lines with `\n`, `\r\n` or `\r` ends, sometimes a byte-order mark first.
fn sse_text(
    data: BoxedStrategy<String>,
    events: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec(
            (
                line(data, events),
                prop::sample::select(&["\n", "\r\n", "\r"][..]),
            ),
            0..24,
        ),
    )
        .prop_map(|(bom, lines)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end) in lines {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(end.as_bytes());
            }
            out
        })
}

/// SSE bytes: structured, arbitrary, or structured with a byte changed.
fn sse_bytes(
    data: BoxedStrategy<String>,
    events: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => sse_text(data.clone(), events),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (sse_text(data, events), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, at, byte)| {
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = byte;
            }
            b
        }),
    ]
}

fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..12)
}

/// A `chat.completion.chunk`, mostly right: a delta of text or a tool call, a finish reason,
/// usage, an error, or any JSON.
fn openai_chunk() -> BoxedStrategy<String> {
    let finish = prop_oneof![
        3 => Just("null".to_owned()),
        2 => prop::sample::select(&["\"stop\"", "\"length\"", "\"tool_calls\"", "\"content_filter\"", "\"odd\""][..]).prop_map(str::to_owned),
        1 => json_lit(),
    ];
    let delta = prop_oneof![
        4 => string_lit().prop_map(|t| format!(r#"{{"content":{t}}}"#)),
        2 => (number_lit(), string_lit(), string_lit()).prop_map(|(i, name, args)| format!(
            r#"{{"tool_calls":[{{"index":{i},"id":"call_1","type":"function","function":{{"name":{name},"arguments":{args}}}}}]}}"#
        )),
        1 => Just(r#"{"role":"assistant"}"#.to_owned()),
        1 => json_lit(),
    ];
    prop_oneof![
        6 => (delta, finish).prop_map(|(d, f)| format!(
            r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{d},"finish_reason":{f}}}]}}"#
        )),
        1 => (number_lit(), number_lit()).prop_map(|(p, c)| format!(
            r#"{{"id":"c","choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":3}}}}"#
        )),
        1 => string_lit().prop_map(|m| format!(r#"{{"error":{{"message":{m},"type":"server_error"}}}}"#)),
        1 => json_lit(),
    ]
    .boxed()
}

/// A Messages stream event, mostly right.
fn anthropic_event() -> BoxedStrategy<String> {
    let index = prop_oneof![4 => (0u32..3).prop_map(|i| i.to_string()), 1 => number_lit()];
    prop_oneof![
        2 => (number_lit(), number_lit()).prop_map(|(i, o)| format!(
            r#"{{"type":"message_start","message":{{"id":"m1","type":"message","role":"assistant","model":"c","content":[],"usage":{{"input_tokens":{i},"output_tokens":{o}}}}}}}"#
        )),
        2 => (index.clone(), prop::sample::select(&["text", "tool_use", "thinking", "odd"][..])).prop_map(|(i, kind)| format!(
            r#"{{"type":"content_block_start","index":{i},"content_block":{{"type":"{kind}","text":"","id":"t1","name":"f","input":{{}}}}}}"#
        )),
        4 => (index.clone(), string_lit()).prop_map(|(i, t)| format!(
            r#"{{"type":"content_block_delta","index":{i},"delta":{{"type":"text_delta","text":{t}}}}}"#
        )),
        2 => (index.clone(), string_lit()).prop_map(|(i, t)| format!(
            r#"{{"type":"content_block_delta","index":{i},"delta":{{"type":"input_json_delta","partial_json":{t}}}}}"#
        )),
        1 => index.prop_map(|i| format!(r#"{{"type":"content_block_stop","index":{i}}}"#)),
        2 => (prop::sample::select(&["\"end_turn\"", "\"max_tokens\"", "\"tool_use\"", "\"stop_sequence\"", "null", "\"odd\""][..]), number_lit()).prop_map(|(r, o)| format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":{r}}},"usage":{{"output_tokens":{o}}}}}"#
        )),
        1 => Just(r#"{"type":"message_stop"}"#.to_owned()),
        1 => Just(r#"{"type":"ping"}"#.to_owned()),
        1 => string_lit().prop_map(|m| format!(r#"{{"type":"error","error":{{"type":"overloaded_error","message":{m}}}}}"#)),
        1 => json_lit(),
    ]
    .boxed()
}

const OPENAI_EVENTS: &[&str] = &["message", "error", "x"];
const ANTHROPIC_EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

proptest! {
    // Cases from PROPTEST_CASES (256 by default); what a run finds becomes a named test below.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sse_parser_gives_the_same_events_however_the_bytes_are_split(
        bytes in sse_bytes(json_lit().boxed(), OPENAI_EVENTS),
        cuts in cuts(),
    ) {
        let chunks = split_at(&bytes, &cuts);
        let split = parse(&chunks);
        let whole = parse(std::slice::from_ref(&bytes));
        prop_assert_eq!(split, whole);
        // One byte at a time too.
        let bytewise: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(parse(&bytewise), parse(&[bytes]));
    }

    #[test]
    fn sse_parser_round_trips_what_the_encoder_writes(
        events in prop::collection::vec((prop::option::of("[a-z_]{1,12}"), any::<String>()), 0..8),
        cuts in cuts(),
    ) {
        let mut bytes = Vec::new();
        for (name, data) in &events {
            // A data line cannot hold a line break other than the `\n` that splits it.
            let data = data.replace('\r', "");
            bytes.extend_from_slice(&tandem_cloud_adapters::sse::encode_event(name.as_deref(), &data));
        }
        let (parsed, partial) = parse(&split_at(&bytes, &cuts));
        prop_assert!(!partial);
        prop_assert_eq!(parsed.len(), events.len());
        for (got, (name, data)) in parsed.iter().zip(&events) {
            prop_assert_eq!(&got.event, name);
            prop_assert_eq!(&got.data, &data.replace('\r', ""));
        }
    }

    #[test]
    fn openai_chunk_decoder(bytes in sse_bytes(openai_chunk(), OPENAI_EVENTS), cuts in cuts()) {
        check_decoded(|| openai::ChunkDecoder::new("fuzz"), &bytes, &split_at(&bytes, &cuts));
    }

    #[test]
    fn anthropic_event_decoder(bytes in sse_bytes(anthropic_event(), ANTHROPIC_EVENTS), cuts in cuts()) {
        check_decoded(|| anthropic::EventDecoder::new("fuzz"), &bytes, &split_at(&bytes, &cuts));
    }
}

#[test]
fn a_stream_cut_is_reported_as_such() {
    let events = decode(
        openai::ChunkDecoder::new("fuzz"),
        &[b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec()],
    );
    match events.last() {
        Some(ChatEvent::Error(e)) => assert_eq!(e.kind, ProviderErrorKind::StreamCut),
        other => panic!("{other:?}"),
    }
}

/// A long `data:` line arriving a few bytes at a time was searched for its end from its start
/// on every chunk (quadratic: a 256 kB line byte by byte took seconds); each byte is now looked
/// at once.
#[test]
fn found_a_long_line_in_small_chunks_was_rescanned_on_every_chunk() {
    let text = "x".repeat(256 * 1024);
    let bytes = format!("data: {text}\r\n\r\ndata: [DONE]\n\n").into_bytes();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for byte in &bytes {
        parser.push(std::slice::from_ref(byte));
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
    }
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data, text);
    assert_eq!(events[1].data, "[DONE]");
    assert!(!parser.has_partial());
}
