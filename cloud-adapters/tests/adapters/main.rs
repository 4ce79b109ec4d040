//! Wire formats, SSE and translation against recorded fixtures.

// Helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anthropic_wire;
mod openai_wire;
mod sse;
mod translation;

use tandem_cloud_adapters::sse::SseParser;
use tandem_cloud_adapters::{ChatEvent, anthropic, openai};

/// A fixture file's bytes.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Feeds `bytes` to a parser in pieces of `step` bytes and decodes with the OpenAI decoder.
pub fn openai_events(bytes: &[u8], step: usize) -> (Vec<ChatEvent>, bool) {
    let mut parser = SseParser::new();
    let mut decoder = openai::ChunkDecoder::new("test");
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        parser.push(piece);
        while let Some(ev) = parser.next_event() {
            decoder.decode(&ev, &mut out);
        }
    }
    (out, decoder.is_complete())
}

/// Like [`openai_events`] for Anthropic streams.
pub fn anthropic_events(bytes: &[u8], step: usize) -> (Vec<ChatEvent>, bool) {
    let mut parser = SseParser::new();
    let mut decoder = anthropic::EventDecoder::new("test");
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        parser.push(piece);
        while let Some(ev) = parser.next_event() {
            decoder.decode(&ev, &mut out);
        }
    }
    (out, decoder.is_complete())
}

/// The concatenated text deltas.
pub fn text_of(events: &[ChatEvent]) -> String {
    tandem_cloud_adapters::events_text(events)
}
