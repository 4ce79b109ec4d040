//! The SSE parser and encoder.

use tandem_cloud_adapters::sse::{SseEvent, SseParser, encode_event};

fn parse_all(bytes: &[u8], step: usize) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        parser.push(piece);
        while let Some(ev) = parser.next_event() {
            out.push(ev);
        }
    }
    out
}

const STREAM: &[u8] = b": ping\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: line one\ndata: line two\n\nid: 7\ndata:no-space\n\n: comment only\n\ndata: [DONE]\n\n";

#[test]
fn frames_split_at_every_byte_parse_the_same() {
    let whole = parse_all(STREAM, STREAM.len());
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[0].event.as_deref(), Some("message_start"));
    assert_eq!(whole[0].data, "{\"a\":1}");
    assert_eq!(whole[1].data, "line one\nline two");
    assert_eq!(whole[1].event, None);
    assert_eq!(whole[2].data, "no-space");
    assert_eq!(whole[2].id.as_deref(), Some("7"));
    assert_eq!(whole[3].data, "[DONE]");
    for step in 1..STREAM.len() {
        assert_eq!(parse_all(STREAM, step), whole, "split every {step} bytes");
    }
}

#[test]
fn cr_only_line_ends_and_bom_are_accepted() {
    let events = parse_all(b"\xEF\xBB\xBFdata: x\r\rdata: y\r\n\r\n", 1);
    assert_eq!(
        events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["x", "y"]
    );
}

#[test]
fn an_unfinished_frame_is_reported_as_partial() {
    let mut parser = SseParser::new();
    parser.push(b"data: {\"half\":");
    assert!(parser.next_event().is_none());
    assert!(parser.has_partial());
}

#[test]
fn encoder_writes_event_and_multi_line_data() {
    assert_eq!(
        &encode_event(Some("ping"), "{}")[..],
        b"event: ping\ndata: {}\n\n"
    );
    assert_eq!(&encode_event(None, "a\nb")[..], b"data: a\ndata: b\n\n");
    let round = parse_all(&encode_event(Some("x"), "a\nb"), 3);
    assert_eq!(round[0].data, "a\nb");
}
