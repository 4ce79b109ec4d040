//! Egress: a normalized answer encoded for an Anthropic client, as a Messages `message` JSON
//! body or as Messages SSE events; and the usage shape both directions share.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::error_out;
use crate::types::{ChatEvent, ChatResponse, FinishReason, Usage};
use crate::wire::json::{self, arguments_value};
use crate::wire::sse;

/// The Anthropic spelling of a finish reason.
pub fn stop_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Usage in Anthropic's shape: `input_tokens` excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireUsage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Input tokens written to the cache.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the cache.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_read_input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

impl From<&Usage> for WireUsage {
    fn from(u: &Usage) -> Self {
        WireUsage {
            input_tokens: u
                .prompt_tokens
                .saturating_sub(u.cached_prompt_tokens)
                .saturating_sub(u.cache_creation_tokens),
            cache_creation_input_tokens: u.cache_creation_tokens,
            cache_read_input_tokens: u.cached_prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        Usage {
            prompt_tokens: w.input_tokens
                + w.cache_creation_input_tokens
                + w.cache_read_input_tokens,
            completion_tokens: w.output_tokens,
            cached_prompt_tokens: w.cache_read_input_tokens,
            cache_creation_tokens: w.cache_creation_input_tokens,
            reasoning_tokens: 0,
            speculative: None,
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: WireUsage,
}

fn message_out(r: &ChatResponse) -> MessageOut<'_> {
    let mut content = Vec::with_capacity(1 + r.tool_calls.len());
    if !r.text.is_empty() {
        content.push(BlockOut::Text { text: &r.text });
    }
    for call in &r.tool_calls {
        content.push(BlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input: tool_input(&call.arguments),
        });
    }
    MessageOut {
        id: message_id(&r.id),
        kind: "message",
        role: "assistant",
        model: &r.model,
        content,
        stop_reason: Some(stop_reason_str(r.finish_reason)),
        stop_sequence: None,
        usage: WireUsage::from(&r.usage),
    }
}

/// The id as Anthropic clients expect it (`msg_…`), whichever backend answered: an OpenAI-style
/// `chatcmpl-` id keeps its unique part.
fn message_id(id: &str) -> std::borrow::Cow<'_, str> {
    if id.starts_with("msg_") {
        std::borrow::Cow::Borrowed(id)
    } else {
        std::borrow::Cow::Owned(format!(
            "msg_{}",
            id.strip_prefix("chatcmpl-").unwrap_or(id)
        ))
    }
}

/// Tool arguments text as the JSON object Anthropic expects.
fn tool_input(arguments: &str) -> Value {
    match arguments_value(arguments) {
        v @ Value::Object(_) => v,
        other => serde_json::json!({ "arguments": other }),
    }
}

/// Encodes a complete answer as Messages `message` JSON bytes, fields in Anthropic's order.
pub fn encode_messages_response(response: &ChatResponse) -> Bytes {
    Bytes::from(serde_json::to_vec(&message_out(response)).unwrap_or_default())
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenBlock {
    Text,
    Tool(u32),
}

/// Turns [`ChatEvent`]s into Messages SSE events.
///
/// `message_start` waits for the first content so that usage known early (Anthropic upstreams
/// report input tokens at the start) goes into it; the stop reason and the final usage go into
/// `message_delta`, written by [`EventEncoder::finish`].
#[derive(Debug)]
pub struct EventEncoder {
    id: String,
    model: String,
    started: bool,
    open: Option<(u32, OpenBlock)>,
    next_block: u32,
    stop_reason: Option<FinishReason>,
    usage: Usage,
    failed: bool,
}

impl Default for EventEncoder {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct MessageStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

impl EventEncoder {
    /// A fresh encoder.
    pub fn new() -> Self {
        EventEncoder {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: String::new(),
            started: false,
            open: None,
            next_block: 0,
            stop_reason: None,
            usage: Usage::default(),
            failed: false,
        }
    }

    /// Sets the model name used when no `Start` event names one.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = WireUsage::from(&self.usage);
        let start = MessageStartOut {
            kind: "message_start",
            message: MessageOut {
                id: message_id(&self.id),
                kind: "message",
                role: "assistant",
                model: &self.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage,
            },
        };
        sse::write_event(out, Some("message_start"), &json::to_string(&start));
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            let data = format!(r#"{{"type":"content_block_stop","index":{index}}}"#);
            sse::write_event(out, Some("content_block_stop"), &data);
        }
    }

    fn open_block(&mut self, kind: OpenBlock, block: BlockOut<'_>, out: &mut BytesMut) -> u32 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        #[derive(Serialize)]
        struct BlockStartOut<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            index: u32,
            content_block: BlockOut<'a>,
        }
        let start = BlockStartOut {
            kind: "content_block_start",
            index,
            content_block: block,
        };
        sse::write_event(out, Some("content_block_start"), &json::to_string(&start));
        index
    }

    fn delta(&self, index: u32, delta: DeltaOut<'_>, out: &mut BytesMut) {
        #[derive(Serialize)]
        struct BlockDeltaOut<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            index: u32,
            delta: DeltaOut<'a>,
        }
        let d = BlockDeltaOut {
            kind: "content_block_delta",
            index,
            delta,
        };
        sse::write_event(out, Some("content_block_delta"), &json::to_string(&d));
    }

    /// The frames for one event (possibly none).
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.failed {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { id, model, .. } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
            }
            ChatEvent::TextDelta { text, .. } => {
                if text.is_empty() {
                    return out.freeze();
                }
                self.ensure_started(&mut out);
                let index = match self.open {
                    Some((index, OpenBlock::Text)) => index,
                    _ => self.open_block(OpenBlock::Text, BlockOut::Text { text: "" }, &mut out),
                };
                self.delta(index, DeltaOut::TextDelta { text }, &mut out);
            }
            ChatEvent::ToolCallDelta {
                index: tool,
                id,
                name,
                arguments,
            } => {
                self.ensure_started(&mut out);
                let index = match self.open {
                    Some((index, OpenBlock::Tool(t))) if t == *tool => index,
                    _ => {
                        let id = id
                            .clone()
                            .unwrap_or_else(|| format!("toolu_{}", uuid::Uuid::new_v4().simple()));
                        let block = BlockOut::ToolUse {
                            id: &id,
                            name: name.as_deref().unwrap_or(""),
                            input: Value::Object(Map::new()),
                        };
                        self.open_block(OpenBlock::Tool(*tool), block, &mut out)
                    }
                };
                if !arguments.is_empty() {
                    let delta = DeltaOut::InputJsonDelta {
                        partial_json: arguments,
                    };
                    self.delta(index, delta, &mut out);
                }
            }
            ChatEvent::Usage(usage) => self.usage = *usage,
            ChatEvent::Finish { reason } => {
                self.ensure_started(&mut out);
                self.close_block(&mut out);
                self.stop_reason = Some(*reason);
            }
            ChatEvent::Error(err) => {
                self.failed = true;
                sse::write_event(&mut out, Some("error"), &json::to_string(&error_out(err)));
            }
        }
        out.freeze()
    }

    /// The closing frames: `message_delta` with the stop reason and usage, then `message_stop`.
    /// After an error event nothing more is sent.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.failed {
            return out.freeze();
        }
        self.ensure_started(&mut out);
        self.close_block(&mut out);
        #[derive(Serialize)]
        struct MessageDeltaOut {
            #[serde(rename = "type")]
            kind: &'static str,
            delta: StopOut,
            usage: WireUsage,
        }
        #[derive(Serialize)]
        struct StopOut {
            stop_reason: &'static str,
            stop_sequence: Option<()>,
        }
        let md = MessageDeltaOut {
            kind: "message_delta",
            delta: StopOut {
                stop_reason: stop_reason_str(self.stop_reason.unwrap_or(FinishReason::Stop)),
                stop_sequence: None,
            },
            usage: WireUsage::from(&self.usage),
        };
        sse::write_event(&mut out, Some("message_delta"), &json::to_string(&md));
        sse::write_event(&mut out, Some("message_stop"), r#"{"type":"message_stop"}"#);
        out.freeze()
    }
}
