//! Parse: an upstream's Messages `message` body and its SSE events read into the normalized form.

use serde::Deserialize;
use serde_json::Value;

use super::egress::{OpenBlock, WireUsage};
use super::error::error_from_value;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::types::{ChatEvent, ChatResponse, FinishReason, ToolCall, unix_now};
use crate::wire::json;
use crate::wire::sse::SseEvent;

/// Parses an Anthropic stop reason.
pub fn parse_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Parses a non-streamed Messages `message` body.
pub fn parse_messages_response(body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
    let wire: WireMessage = serde_json::from_slice(body).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Decode,
            provider,
            format!("bad message: {e}"),
        )
    })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text: t } => text.push_str(&t),
            WireBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: json::to_string(&input),
            }),
            WireBlock::Other => {}
        }
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: unix_now(),
        text,
        tool_calls,
        finish_reason: wire
            .stop_reason
            .as_deref()
            .map_or(FinishReason::Stop, parse_stop_reason),
        logprobs: None,
        usage: wire.usage.into(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireStartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WirePartialUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireMessageDelta {
    stop_reason: Option<String>,
}

/// `message_delta` usage: output tokens always, input and cache counts in newer API versions.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WirePartialUsage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// Turns an upstream's Messages SSE events into [`ChatEvent`]s.
#[derive(Debug)]
pub struct EventDecoder {
    provider: String,
    started: bool,
    finished: bool,
    done: bool,
    failed: bool,
    /// Content block index to what it carries.
    blocks: Vec<(u32, OpenBlock)>,
    tools: u32,
    usage: WireUsage,
}

impl EventDecoder {
    /// A decoder for a stream from `provider`.
    pub fn new(provider: impl Into<String>) -> Self {
        EventDecoder {
            provider: provider.into(),
            started: false,
            finished: false,
            done: false,
            failed: false,
            blocks: Vec::new(),
            tools: 0,
            usage: WireUsage::default(),
        }
    }

    fn block(&self, index: u32) -> Option<OpenBlock> {
        self.blocks
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| *b)
    }

    /// Decodes one SSE event, appending the resulting events to `out`.
    pub fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>) {
        if self.done || self.failed || event.data.trim().is_empty() {
            return;
        }
        let wire: WireEvent = match serde_json::from_str(&event.data) {
            Ok(w) => w,
            Err(e) => {
                self.failed = true;
                out.push(ChatEvent::Error(ProviderError::new(
                    ProviderErrorKind::Decode,
                    self.provider.clone(),
                    format!("bad messages event: {e}"),
                )));
                return;
            }
        };
        match wire {
            WireEvent::MessageStart { message } => {
                self.started = true;
                self.usage = message.usage;
                out.push(ChatEvent::Start {
                    id: message.id,
                    model: message.model,
                    created: unix_now(),
                });
                out.push(ChatEvent::Usage(self.usage.into()));
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireStartBlock::Text { text } => {
                    self.blocks.push((index, OpenBlock::Text));
                    if !text.is_empty() {
                        out.push(ChatEvent::TextDelta {
                            index: 0,
                            text,
                            logprobs: None,
                        });
                    }
                }
                WireStartBlock::ToolUse { id, name } => {
                    let tool = self.tools;
                    self.tools += 1;
                    self.blocks.push((index, OpenBlock::Tool(tool)));
                    out.push(ChatEvent::ToolCallDelta {
                        index: tool,
                        id: Some(id),
                        name: Some(name),
                        arguments: String::new(),
                    });
                }
                WireStartBlock::Other => {}
            },
            WireEvent::ContentBlockDelta { index, delta } => match (self.block(index), delta) {
                (Some(OpenBlock::Text), WireDelta::TextDelta { text }) => {
                    out.push(ChatEvent::TextDelta {
                        index: 0,
                        text,
                        logprobs: None,
                    });
                }
                (Some(OpenBlock::Tool(tool)), WireDelta::InputJsonDelta { partial_json }) => {
                    out.push(ChatEvent::ToolCallDelta {
                        index: tool,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    });
                }
                _ => {}
            },
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    let cur = &mut self.usage;
                    cur.input_tokens = u.input_tokens.unwrap_or(cur.input_tokens);
                    cur.cache_creation_input_tokens = u
                        .cache_creation_input_tokens
                        .unwrap_or(cur.cache_creation_input_tokens);
                    cur.cache_read_input_tokens = u
                        .cache_read_input_tokens
                        .unwrap_or(cur.cache_read_input_tokens);
                    cur.output_tokens = u.output_tokens.unwrap_or(cur.output_tokens);
                }
                if let Some(reason) = delta.stop_reason {
                    self.finished = true;
                    out.push(ChatEvent::Finish {
                        reason: parse_stop_reason(&reason),
                    });
                }
                out.push(ChatEvent::Usage(self.usage.into()));
            }
            WireEvent::MessageStop {} => self.done = true,
            WireEvent::Error { error } => {
                self.failed = true;
                let body = serde_json::json!({"type": "error", "error": error});
                out.push(ChatEvent::Error(error_from_value(
                    None,
                    body,
                    &self.provider,
                )));
            }
            WireEvent::ContentBlockStop {} | WireEvent::Ping {} | WireEvent::Other => {}
        }
    }

    /// Whether the stream reached its end (`message_stop` or a stop reason) or already failed.
    pub fn is_complete(&self) -> bool {
        self.done || self.finished || self.failed
    }
}
