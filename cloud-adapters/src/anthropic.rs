//! Anthropic Messages wire format: ingress decode, egress encode (JSON and SSE events),
//! upstream request structs, response and stream parsing.

use bytes::Bytes;

use crate::error::WireError;
use crate::types::{ChatEvent, ChatRequest, ChatResponse};

/// Decodes a client's `/v1/messages` body.
pub fn decode_messages_request(body: &[u8]) -> Result<ChatRequest, WireError> {
    let _ = body;
    Err(WireError::new(
        "not_implemented",
        None,
        "messages decoding is not implemented yet",
    ))
}

/// Encodes a complete answer as a Messages `message` object.
pub fn encode_messages_response(response: &ChatResponse) -> serde_json::Value {
    let _ = response;
    serde_json::Value::Null
}

/// Turns [`ChatEvent`]s into Messages SSE events.
#[derive(Debug, Default)]
pub struct EventEncoder {}

impl EventEncoder {
    /// A fresh encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The frames for one event (possibly none).
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let _ = event;
        Bytes::new()
    }

    /// The closing frames (`message_delta` with usage, `message_stop`).
    pub fn finish(&mut self) -> Bytes {
        Bytes::new()
    }
}
