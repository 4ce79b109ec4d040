//! Anthropic Messages wire format: ingress decode, egress encode (JSON and SSE events),
//! upstream request structs, response and stream parsing.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::WireError;
use crate::json::{self, opt};
use crate::openai::truncate;
use crate::provider::{ProviderError, ProviderErrorKind};
use crate::sse::{self, SseEvent};
use crate::types::{
    ChatEvent, ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Role, Tool, ToolCall,
    ToolChoice, Usage, WireFormat, unix_now,
};

/// The `anthropic-version` header value this module speaks.
pub const API_VERSION: &str = "2023-06-01";

// ===== ingress: decode =====

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
];

/// Decodes a client's `/v1/messages` body.
pub fn decode_messages_request(body: &[u8]) -> Result<ChatRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let mut messages = Vec::new();
    match opt(&obj, "system") {
        None => {}
        Some(Value::String(s)) => messages.push(Message::text(Role::System, s.clone())),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                let bp = format!("system[{i}]");
                let block = json::as_object(block, &bp)?;
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&json::req_str(block, "text", &format!("{bp}.text"))?);
            }
            messages.push(Message::text(Role::System, text));
        }
        Some(_) => {
            return Err(WireError::invalid_type(
                "system",
                "a string or an array of text blocks",
            ));
        }
    }
    let items = match opt(&obj, "messages") {
        None => return Err(WireError::missing("messages")),
        Some(v) => json::as_array(v, "messages")?,
    };
    if items.is_empty() {
        return Err(WireError::invalid_value(
            "messages",
            "'messages' must not be empty",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        messages.push(decode_message(item, i)?);
    }
    let tools = match opt(&obj, "tools") {
        None => Vec::new(),
        Some(v) => decode_tools(json::as_array(v, "tools")?)?,
    };
    let (tool_choice, parallel_tool_calls) = match opt(&obj, "tool_choice") {
        None => (None, None),
        Some(v) => decode_tool_choice(v)?,
    };
    let user = match opt(&obj, "metadata") {
        None => None,
        Some(v) => json::opt_str(
            json::as_object(v, "metadata")?,
            "user_id",
            "metadata.user_id",
        )?,
    };
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let mut extra = Map::new();
    for (key, value) in &obj {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        }
    }
    Ok(ChatRequest {
        model,
        messages,
        // Anthropic requires the limit, and takes sampling values within 0 and 1.
        max_tokens: json::token_limit(
            Some(
                json::opt_u32(&obj, "max_tokens", "max_tokens")?
                    .ok_or_else(|| WireError::missing("max_tokens"))?,
            ),
            "max_tokens",
        )?,
        limit_as_max_completion_tokens: false,
        temperature: json::within(
            json::opt_f32(&obj, "temperature", "temperature")?,
            "temperature",
            0.0,
            1.0,
        )?,
        top_p: json::within(json::opt_f32(&obj, "top_p", "top_p")?, "top_p", 0.0, 1.0)?,
        top_k: json::opt_u32(&obj, "top_k", "top_k")?,
        seed: None,
        stop: json::stop_list(&obj, "stop_sequences", "stop_sequences")?,
        stream,
        // Anthropic streams always carry usage.
        include_usage: stream,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format: None,
        logprobs: false,
        top_logprobs: None,
        n: 1,
        user,
        ingress: Some(WireFormat::Anthropic),
        extra,
    })
}

fn decode_message(item: &Value, i: usize) -> Result<Message, WireError> {
    let param = format!("messages[{i}]");
    let obj = json::as_object(item, &param)?;
    let role_param = format!("{param}.role");
    let role = match json::req_str(obj, "role", &role_param)?.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(WireError::invalid_value(
                &role_param,
                format!("invalid role '{other}' in '{role_param}': expected user or assistant"),
            ));
        }
    };
    let cp = format!("{param}.content");
    let content = match opt(obj, "content") {
        None => return Err(WireError::missing(&cp)),
        Some(Value::String(s)) => vec![ContentPart::text(s.clone())],
        Some(Value::Array(blocks)) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                if let Some(part) = decode_block(block, &format!("{cp}[{j}]"))? {
                    out.push(part);
                }
            }
            out
        }
        Some(_) => {
            return Err(WireError::invalid_type(
                &cp,
                "a string or an array of content blocks",
            ));
        }
    };
    Ok(Message {
        role,
        content,
        name: None,
    })
}

fn decode_block(block: &Value, bp: &str) -> Result<Option<ContentPart>, WireError> {
    let obj = json::as_object(block, bp)?;
    let part = match json::req_str(obj, "type", &format!("{bp}.type"))?.as_str() {
        "text" => ContentPart::text(json::req_str(obj, "text", &format!("{bp}.text"))?),
        "image" => {
            let sp = format!("{bp}.source");
            let source = match opt(obj, "source") {
                Some(s) => json::as_object(s, &sp)?,
                None => return Err(WireError::missing(&sp)),
            };
            let url = match json::req_str(source, "type", &format!("{sp}.type"))?.as_str() {
                "base64" => format!(
                    "data:{};base64,{}",
                    json::req_str(source, "media_type", &format!("{sp}.media_type"))?,
                    json::req_str(source, "data", &format!("{sp}.data"))?
                ),
                "url" => json::req_str(source, "url", &format!("{sp}.url"))?,
                other => {
                    return Err(WireError::new(
                        "unsupported_value",
                        Some(&format!("{sp}.type")),
                        format!("image source type '{other}' is not supported"),
                    ));
                }
            };
            ContentPart::Image { url, detail: None }
        }
        "tool_use" => ContentPart::ToolUse {
            id: json::req_str(obj, "id", &format!("{bp}.id"))?,
            name: json::req_str(obj, "name", &format!("{bp}.name"))?,
            input: opt(obj, "input")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        },
        "tool_result" => {
            let rp = format!("{bp}.content");
            let content = match opt(obj, "content") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (k, p) in parts.iter().enumerate() {
                        let pp = format!("{rp}[{k}]");
                        let p = json::as_object(p, &pp)?;
                        if json::opt_str(p, "type", &format!("{pp}.type"))?.as_deref()
                            == Some("text")
                        {
                            text.push_str(&json::req_str(p, "text", &format!("{pp}.text"))?);
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(WireError::invalid_type(
                        &rp,
                        "a string or an array of blocks",
                    ));
                }
            };
            ContentPart::ToolResult {
                tool_use_id: json::req_str(obj, "tool_use_id", &format!("{bp}.tool_use_id"))?,
                content,
                is_error: json::opt_bool(obj, "is_error", &format!("{bp}.is_error"))?
                    .unwrap_or(false),
            }
        }
        // Earlier reasoning carries nothing another backend could use.
        "thinking" | "redacted_thinking" => return Ok(None),
        other => {
            return Err(WireError::new(
                "unsupported_value",
                Some(&format!("{bp}.type")),
                format!("content block type '{other}' is not supported"),
            ));
        }
    };
    Ok(Some(part))
}

fn decode_tools(items: &[Value]) -> Result<Vec<Tool>, WireError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let obj = json::as_object(item, &tp)?;
        out.push(Tool {
            name: json::req_str(obj, "name", &format!("{tp}.name"))?,
            description: json::opt_str(obj, "description", &format!("{tp}.description"))?,
            parameters: match opt(obj, "input_schema") {
                Some(v) => v.clone(),
                None => return Err(WireError::missing(&format!("{tp}.input_schema"))),
            },
        });
    }
    Ok(out)
}

fn decode_tool_choice(value: &Value) -> Result<(Option<ToolChoice>, Option<bool>), WireError> {
    let obj = json::as_object(value, "tool_choice")?;
    let choice = match json::req_str(obj, "type", "tool_choice.type")?.as_str() {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool(json::req_str(obj, "name", "tool_choice.name")?),
        other => {
            return Err(WireError::invalid_value(
                "tool_choice.type",
                format!("invalid 'tool_choice.type' '{other}': expected auto, any, tool or none"),
            ));
        }
    };
    let disable = json::opt_bool(
        obj,
        "disable_parallel_tool_use",
        "tool_choice.disable_parallel_tool_use",
    )?;
    Ok((Some(choice), disable.map(|d| !d)))
}

// ===== egress: encode =====

/// The Anthropic spelling of a finish reason.
pub fn stop_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Parses an Anthropic stop reason.
pub fn parse_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
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
    match crate::openai::arguments_value(arguments) {
        v @ Value::Object(_) => v,
        other => serde_json::json!({ "arguments": other }),
    }
}

/// Encodes a complete answer as Messages `message` JSON bytes, fields in Anthropic's order.
pub fn encode_messages_response(response: &ChatResponse) -> Bytes {
    Bytes::from(serde_json::to_vec(&message_out(response)).unwrap_or_default())
}

/// The Anthropic error `type` for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_type(err: &ProviderError) -> &'static str {
    match err.status {
        Some(s) => error_type_for_status(s),
        None if err.kind == ProviderErrorKind::Unsupported => "invalid_request_error",
        None => "api_error",
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

/// The Anthropic error body for an upstream failure: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(err: &ProviderError) -> Value {
    serde_json::json!({"type": "error", "error": {"type": error_type(err), "message": err.message}})
}

/// [`error_body`] as bytes with the fields in Anthropic's order.
pub fn error_body_bytes(err: &ProviderError) -> Bytes {
    let body = ErrorOut {
        kind: "error",
        error: ErrorInner {
            kind: error_type(err),
            message: &err.message,
        },
    };
    Bytes::from(json::to_string(&body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
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
                let body = ErrorOut {
                    kind: "error",
                    error: ErrorInner {
                        kind: error_type(err),
                        message: &err.message,
                    },
                };
                sse::write_event(&mut out, Some("error"), &json::to_string(&body));
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

// ===== upstream: request structs =====

/// A `/v1/messages` request body, borrowed from a [`ChatRequest`].
#[derive(Debug, Serialize)]
pub struct MessagesRequest<'a> {
    /// The upstream model name.
    pub model: &'a str,
    /// Most tokens to generate (required by the API).
    pub max_tokens: u32,
    /// The conversation (user and assistant turns).
    pub messages: Vec<UpstreamMessage<'a>>,
    /// System prompt blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<TextBlock<'a>>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    /// Whether to stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Sampling temperature (Anthropic accepts 0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<UpstreamTool<'a>>,
    /// Tool choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<UpstreamToolChoice<'a>>,
    /// End-user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata<'a>>,
    /// Fields the client sent in Anthropic format that this module does not model.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<&'a Map<String, Value>>,
}

/// A text block.
#[derive(Debug, Serialize)]
pub struct TextBlock<'a> {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: &'a str,
}

/// `metadata`.
#[derive(Debug, Serialize)]
pub struct Metadata<'a> {
    /// End-user id.
    pub user_id: &'a str,
}

/// One upstream turn.
#[derive(Debug, Serialize)]
pub struct UpstreamMessage<'a> {
    /// `user` or `assistant`.
    pub role: &'static str,
    /// Content blocks.
    pub content: Vec<UpstreamBlock<'a>>,
}

/// A content block.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamBlock<'a> {
    /// Text.
    Text {
        /// The text.
        text: &'a str,
    },
    /// An image.
    Image {
        /// Where the image is.
        source: ImageSource<'a>,
    },
    /// A tool call made by the assistant.
    ToolUse {
        /// Call id.
        id: &'a str,
        /// Tool name.
        name: &'a str,
        /// Arguments.
        input: &'a Value,
    },
    /// A tool's result.
    ToolResult {
        /// The call answered.
        tool_use_id: &'a str,
        /// The result text.
        content: &'a str,
        /// Whether the tool failed.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// An image source.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource<'a> {
    /// Inline data.
    Base64 {
        /// MIME type.
        media_type: &'a str,
        /// Base64 data.
        data: &'a str,
    },
    /// A URL.
    Url {
        /// The URL.
        url: &'a str,
    },
}

/// A tool definition.
#[derive(Debug, Serialize)]
pub struct UpstreamTool<'a> {
    /// Name.
    pub name: &'a str,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// JSON Schema of the input.
    pub input_schema: &'a Value,
}

/// `tool_choice`.
#[derive(Debug, Serialize)]
pub struct UpstreamToolChoice<'a> {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The tool, for `tool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// At most one tool call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

impl<'a> MessagesRequest<'a> {
    /// The upstream body for `req`, sent to `model`; `default_max_tokens` fills in the
    /// required `max_tokens` when the client gave none.
    pub fn new(
        req: &'a ChatRequest,
        model: &'a str,
        stream: bool,
        default_max_tokens: u32,
    ) -> Self {
        let mut system = Vec::new();
        let mut messages: Vec<UpstreamMessage<'a>> = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            if m.role == Role::System {
                for part in &m.content {
                    if let ContentPart::Text { text } = part
                        && !text.is_empty()
                    {
                        system.push(TextBlock { kind: "text", text });
                    }
                }
                continue;
            }
            let role = if m.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            let mut blocks: Vec<UpstreamBlock<'a>> = Vec::with_capacity(m.content.len());
            // Tool results must open the user turn that answers the calls.
            for part in &m.content {
                if let ContentPart::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = part
                {
                    blocks.push(UpstreamBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error: *is_error,
                    });
                }
            }
            for part in &m.content {
                match part {
                    // The API refuses empty text blocks.
                    ContentPart::Text { text } if text.is_empty() => {}
                    ContentPart::Text { text } => blocks.push(UpstreamBlock::Text { text }),
                    ContentPart::Image { url, .. } => blocks.push(UpstreamBlock::Image {
                        source: image_source(url),
                    }),
                    ContentPart::ToolUse { id, name, input } => {
                        blocks.push(UpstreamBlock::ToolUse { id, name, input })
                    }
                    ContentPart::ToolResult { .. } => {}
                }
            }
            if blocks.is_empty() {
                continue;
            }
            // Consecutive turns of one role (several `tool` messages) merge into one turn.
            match messages.last_mut() {
                Some(last) if last.role == role => last.content.extend(blocks),
                _ => messages.push(UpstreamMessage {
                    role,
                    content: blocks,
                }),
            }
        }
        let tool_choice = match (&req.tool_choice, req.parallel_tool_calls) {
            (None, None) | (None, Some(true)) => None,
            (choice, parallel) => {
                let (kind, name) = match choice {
                    None | Some(ToolChoice::Auto) => ("auto", None),
                    Some(ToolChoice::None) => ("none", None),
                    Some(ToolChoice::Required) => ("any", None),
                    Some(ToolChoice::Tool(name)) => ("tool", Some(name.as_str())),
                };
                let disable = match (kind, parallel) {
                    ("none", _) => None,
                    (_, Some(p)) => Some(!p),
                    (_, None) => None,
                };
                Some(UpstreamToolChoice {
                    kind,
                    name,
                    disable_parallel_tool_use: disable,
                })
            }
        };
        MessagesRequest {
            model,
            max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
            messages,
            system,
            stop_sequences: &req.stop,
            stream,
            temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
            top_p: req.top_p,
            top_k: req.top_k,
            tools: req
                .tools
                .iter()
                .map(|t| UpstreamTool {
                    name: &t.name,
                    description: t.description.as_deref(),
                    input_schema: &t.parameters,
                })
                .collect(),
            tool_choice,
            metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
            extra: req.extra_for(WireFormat::Anthropic),
        }
    }
}

fn image_source(url: &str) -> ImageSource<'_> {
    if let Some((media_type, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return ImageSource::Base64 { media_type, data };
    }
    ImageSource::Url { url }
}

// ===== upstream: response parsing =====

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

// ===== upstream: errors =====

/// Parses an upstream error response (`{"type":"error","error":{"type","message"}}`) into a
/// [`ProviderError`] with the status's retryability.
pub fn parse_error_body(status: u16, body: &[u8], provider: &str) -> ProviderError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => error_from_value(Some(status), value, provider),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("upstream returned status {status}")
            } else {
                format!("upstream returned status {status}: {}", truncate(text, 500))
            };
            ProviderError::status(status, provider, message)
        }
    }
}

fn error_from_value(status: Option<u16>, value: Value, provider: &str) -> ProviderError {
    let inner = value.get("error");
    let kind = inner
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match status {
            Some(s) => format!("upstream returned status {s}"),
            None => "upstream reported an error".to_owned(),
        });
    let mut err = match status {
        Some(s) => ProviderError::status(s, provider, message),
        None => {
            let mut e = ProviderError::new(ProviderErrorKind::Status, provider, message);
            // An error event mid-stream carries no status; its type says what happened.
            e.status = match kind {
                "overloaded_error" => Some(529),
                "rate_limit_error" => Some(429),
                "api_error" => Some(500),
                _ => None,
            };
            e.retryable = e.status.is_some();
            e
        }
    };
    err.upstream_body = Some(value);
    err
}
