//! Upstream: the `/chat/completions` request body sent to an OpenAI-format server, borrowed
//! from a [`ChatRequest`].

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::types::{ChatRequest, ContentPart, Message, Role, ToolChoice, WireFormat};
use crate::wire::json::arguments_text;

/// A `/chat/completions` request body, borrowed from a [`ChatRequest`].
#[derive(Debug, Serialize)]
pub struct ChatCompletionsRequest<'a> {
    /// The upstream model name.
    pub model: &'a str,
    /// The conversation.
    pub messages: Vec<UpstreamMessage<'a>>,
    /// Most tokens to generate, under the older name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate, under the name the client used when it was this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling, which OpenAI-compatible servers take (the gateway refuses it for OpenAI's
    /// own API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Choices to generate, when more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    /// Whether to stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Always asks for usage when streaming, so it is counted even if the client did not ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<UpstreamTool<'a>>,
    /// Tool choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Parallel tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Response format, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<&'a Value>,
    /// Log-probabilities.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// Alternatives per token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// End-user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Fields the client sent in OpenAI format that this module does not model.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<&'a Map<String, Value>>,
}

/// `stream_options`.
#[derive(Debug, Serialize)]
pub struct StreamOptions {
    /// Ask for a final usage chunk.
    pub include_usage: bool,
}

/// One upstream message.
#[derive(Debug, Serialize)]
pub struct UpstreamMessage<'a> {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'static str,
    /// Text or parts; `null` for an assistant message that only calls tools.
    pub content: Option<UpstreamContent<'a>>,
    /// Participant name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Tool calls made by the assistant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<UpstreamToolCall<'a>>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
}

/// Message content: a string, or parts.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum UpstreamContent<'a> {
    /// Plain text.
    Text(&'a str),
    /// Text and image parts.
    Parts(Vec<UpstreamPart<'a>>),
}

/// One content part.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamPart<'a> {
    /// Text.
    Text {
        /// The text.
        text: &'a str,
    },
    /// An image.
    ImageUrl {
        /// The image.
        image_url: UpstreamImage<'a>,
    },
}

/// An image reference.
#[derive(Debug, Serialize)]
pub struct UpstreamImage<'a> {
    /// URL or data URL.
    pub url: &'a str,
    /// Detail hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// An assistant's tool call.
#[derive(Debug, Serialize)]
pub struct UpstreamToolCall<'a> {
    /// Call id.
    pub id: &'a str,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: UpstreamFunctionCall<'a>,
}

/// A function call's name and JSON arguments text.
#[derive(Debug, Serialize)]
pub struct UpstreamFunctionCall<'a> {
    /// Function name.
    pub name: &'a str,
    /// Arguments as JSON text.
    pub arguments: Cow<'a, str>,
}

/// A tool definition.
#[derive(Debug, Serialize)]
pub struct UpstreamTool<'a> {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function.
    pub function: UpstreamFunction<'a>,
}

/// A function definition.
#[derive(Debug, Serialize)]
pub struct UpstreamFunction<'a> {
    /// Name.
    pub name: &'a str,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// JSON Schema.
    pub parameters: &'a Value,
}

impl<'a> ChatCompletionsRequest<'a> {
    /// The upstream body for `req`, sent to model `model`. `stream` asks for SSE (and usage).
    pub fn new(req: &'a ChatRequest, model: &'a str, stream: bool) -> Self {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            push_upstream_messages(m, &mut messages);
        }
        let (max_tokens, max_completion_tokens) = if req.limit_as_max_completion_tokens {
            (None, req.max_tokens)
        } else {
            (req.max_tokens, None)
        };
        ChatCompletionsRequest {
            model,
            messages,
            max_tokens,
            max_completion_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            n: (req.n > 1).then_some(req.n),
            stop: &req.stop,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            tools: req
                .tools
                .iter()
                .map(|t| UpstreamTool {
                    kind: "function",
                    function: UpstreamFunction {
                        name: &t.name,
                        description: t.description.as_deref(),
                        parameters: &t.parameters,
                    },
                })
                .collect(),
            tool_choice: req.tool_choice.as_ref().map(|c| match c {
                ToolChoice::Auto => Value::from("auto"),
                ToolChoice::None => Value::from("none"),
                ToolChoice::Required => Value::from("required"),
                ToolChoice::Tool(name) => {
                    serde_json::json!({"type": "function", "function": {"name": name}})
                }
            }),
            parallel_tool_calls: req.parallel_tool_calls,
            response_format: req.response_format.as_ref(),
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs.filter(|_| req.logprobs),
            user: req.user.as_deref(),
            extra: req.extra_for(WireFormat::OpenAi),
        }
    }
}

fn push_upstream_messages<'a>(m: &'a Message, out: &mut Vec<UpstreamMessage<'a>>) {
    // Tool results become one `tool` message each, ahead of the rest of the message.
    for part in &m.content {
        if let ContentPart::ToolResult {
            tool_use_id,
            content,
            ..
        } = part
        {
            out.push(UpstreamMessage {
                role: "tool",
                content: Some(UpstreamContent::Text(content)),
                name: None,
                tool_calls: Vec::new(),
                tool_call_id: Some(tool_use_id),
            });
        }
    }
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for part in &m.content {
        match part {
            ContentPart::Text { text } => parts.push(UpstreamPart::Text { text }),
            ContentPart::Image { url, detail, .. } => parts.push(UpstreamPart::ImageUrl {
                image_url: UpstreamImage {
                    url,
                    detail: detail.as_deref(),
                },
            }),
            ContentPart::ToolUse { id, name, input } => tool_calls.push(UpstreamToolCall {
                id,
                kind: "function",
                function: UpstreamFunctionCall {
                    name,
                    arguments: arguments_text(input),
                },
            }),
            ContentPart::ToolResult { .. } => {}
        }
    }
    if m.role == Role::Tool {
        return;
    }
    let has_results = m
        .content
        .iter()
        .any(|p| matches!(p, ContentPart::ToolResult { .. }));
    if parts.is_empty() && tool_calls.is_empty() && has_results {
        return;
    }
    let content = match parts.as_slice() {
        [] if !tool_calls.is_empty() => None,
        [] => Some(UpstreamContent::Text("")),
        [UpstreamPart::Text { text }] => Some(UpstreamContent::Text(text)),
        _ => Some(UpstreamContent::Parts(parts)),
    };
    out.push(UpstreamMessage {
        role: m.role.as_str(),
        content,
        name: m.name.as_deref(),
        tool_calls,
        tool_call_id: None,
    });
}
