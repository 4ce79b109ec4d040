//! OpenAI chat/completions wire format: ingress decode, egress encode (JSON and SSE chunks),
//! upstream request structs, response and stream parsing.

use bytes::Bytes;

use crate::error::WireError;
use crate::types::{ChatEvent, ChatRequest, ChatResponse};

/// Decodes a client's `/v1/chat/completions` body.
pub fn decode_chat_request(body: &[u8]) -> Result<ChatRequest, WireError> {
    let _ = body;
    Err(WireError::new(
        "not_implemented",
        None,
        "chat decoding is not implemented yet",
    ))
}

/// Encodes a complete answer as a `chat.completion` object.
pub fn encode_chat_response(response: &ChatResponse) -> serde_json::Value {
    let _ = response;
    serde_json::Value::Null
}

/// Turns [`ChatEvent`]s into `chat.completion.chunk` SSE frames.
#[derive(Debug)]
pub struct ChunkEncoder {
    include_usage: bool,
}

impl ChunkEncoder {
    /// An encoder; `include_usage` sends the final usage chunk (the client asked for it).
    pub fn new(include_usage: bool) -> Self {
        ChunkEncoder { include_usage }
    }

    /// The frames for one event (possibly none).
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let _ = (event, self.include_usage);
        Bytes::new()
    }

    /// The closing frames (usage chunk when asked for, then `data: [DONE]`).
    pub fn finish(&mut self) -> Bytes {
        Bytes::from_static(b"data: [DONE]\n\n")
    }
}
