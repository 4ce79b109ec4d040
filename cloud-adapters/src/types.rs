//! Normalized chat types shared by every wire format, provider and executor.

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{ProviderError, ProviderErrorKind};

/// The wire format a request arrived in or a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// OpenAI chat completions (and every OpenAI-compatible server).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The OpenAI spelling of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, by URL or `data:` URL.
    Image {
        /// `https://...` or `data:image/png;base64,...`.
        url: String,
        /// OpenAI's `detail` hint (`low`, `high`, `auto`).
        detail: Option<String>,
        /// Where the client put it (`messages[0].content[1]`), so a backend that cannot read
        /// images names the part in its refusal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
    /// A tool call made by the assistant.
    ToolUse {
        /// The call id (`call_...` or `toolu_...`).
        id: String,
        /// The tool's name.
        name: String,
        /// The arguments as JSON (an object when the model produced valid JSON).
        input: serde_json::Value,
    },
    /// The result of a tool call, sent back by the client.
    ToolResult {
        /// The id of the call this answers.
        tool_use_id: String,
        /// The result as text.
        content: String,
        /// Whether the tool failed.
        is_error: bool,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says, in order.
    pub content: Vec<ContentPart>,
    /// OpenAI's optional participant name.
    pub name: Option<String>,
}

impl Message {
    /// A message with a single text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![ContentPart::text(text)],
            name: None,
        }
    }

    /// The concatenation of the message's text parts.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                out.push_str(text);
            }
        }
        out
    }
}

/// A function tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// The function name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool must be called.
    Tool(String),
}

/// A chat request in normalized form: what every ingress decodes into and every provider sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name as the client asked for it.
    pub model: String,
    /// The conversation; system prompts are `Role::System` messages.
    pub messages: Vec<Message>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Whether an OpenAI-format client gave that limit as `max_completion_tokens`, the only name
    /// OpenAI's reasoning models take: an OpenAI-format upstream gets it under the same name.
    #[serde(default)]
    pub limit_as_max_completion_tokens: bool,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling (Anthropic, vLLM).
    pub top_k: Option<u32>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Whether the client wants a stream.
    pub stream: bool,
    /// Whether the client asked for a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
    /// How the tools may be used.
    pub tool_choice: Option<ToolChoice>,
    /// Whether several tool calls may be made at once.
    pub parallel_tool_calls: Option<bool>,
    /// OpenAI's `response_format`, passed through.
    pub response_format: Option<serde_json::Value>,
    /// Whether to return token log-probabilities.
    pub logprobs: bool,
    /// How many alternatives per token to return with the log-probabilities.
    pub top_logprobs: Option<u32>,
    /// Number of choices; only 1 is supported.
    pub n: u32,
    /// End-user id for abuse tracking.
    pub user: Option<String>,
    /// The format the request arrived in; `extra` is only forwarded to upstreams of that format.
    pub ingress: Option<WireFormat>,
    /// Provider-specific fields passed through untouched to an upstream of the same format.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for ChatRequest {
    fn default() -> Self {
        ChatRequest {
            model: String::new(),
            messages: Vec::new(),
            max_tokens: None,
            limit_as_max_completion_tokens: false,
            temperature: None,
            top_p: None,
            top_k: None,
            seed: None,
            stop: Vec::new(),
            stream: false,
            include_usage: false,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            response_format: None,
            logprobs: false,
            top_logprobs: None,
            n: 1,
            user: None,
            ingress: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl ChatRequest {
    /// The client's name for the first image part (`messages[0].content[1]`), if the request
    /// has one: what a backend that reads only text refuses.
    pub fn first_image_param(&self) -> Option<String> {
        self.messages.iter().enumerate().find_map(|(i, m)| {
            m.content
                .iter()
                .enumerate()
                .find_map(|(j, part)| match part {
                    ContentPart::Image { param, .. } => Some(
                        param
                            .clone()
                            .unwrap_or_else(|| format!("messages[{i}].content[{j}]")),
                    ),
                    _ => None,
                })
        })
    }

    /// The text of the last user message, if any.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::joined_text)
    }

    /// The `extra` fields when they were written for `format`, else an empty map.
    pub fn extra_for(
        &self,
        format: WireFormat,
    ) -> Option<&serde_json::Map<String, serde_json::Value>> {
        (self.ingress == Some(format) && !self.extra.is_empty()).then_some(&self.extra)
    }
}

/// Token counts as the backend reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached ones included (OpenAI's convention).
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_prompt_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic).
    pub cache_creation_tokens: u64,
    /// Output tokens spent on hidden reasoning.
    pub reasoning_tokens: u64,
    /// What speculative decoding did, when the answer was decoded speculatively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeUsage>,
}

/// The `usage.speculative` extension: what speculative decoding did for one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeculativeUsage {
    /// Verify rounds.
    pub rounds: u64,
    /// Draft tokens sent for verification.
    pub drafted: u64,
    /// Draft tokens the target accepted.
    pub accepted: u64,
    /// Tokens streamed plainly from the target after speculation stopped paying.
    pub plain_tokens: u64,
    /// Input tokens the target billed (cached ones included).
    pub target_input_tokens: u64,
    /// Of those, tokens the target served from its cache.
    pub target_cached_input_tokens: u64,
    /// Output tokens the target billed.
    pub target_output_tokens: u64,
}

impl SpeculativeUsage {
    /// Accepted over drafted.
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }

    /// Draft tokens per round (the chosen draft length).
    pub fn draft_length(&self) -> f64 {
        if self.rounds == 0 {
            0.0
        } else {
            self.drafted as f64 / self.rounds as f64
        }
    }
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Output withheld by a filter or a refusal.
    ContentFilter,
    /// Generation failed.
    Error,
}

/// The log-probability of one generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token text.
    pub token: String,
    /// Its natural log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes, when the backend gave them.
    pub bytes: Option<Vec<u8>>,
    /// The most likely alternatives at this position.
    pub top: Vec<(String, f32)>,
}

/// One event of a streamed answer.
///
/// Order: `Start`, then deltas, then `Finish`, then `Usage` (cumulative: the last one is the
/// total). A stream that fails ends with `Error` (after any usage known so far).
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The answer begins.
    Start {
        /// The completion id.
        id: String,
        /// The model that answers.
        model: String,
        /// Unix seconds.
        created: u64,
    },
    /// More text.
    TextDelta {
        /// The choice index (always 0: `n > 1` is refused).
        index: u32,
        /// The new text.
        text: String,
        /// Log-probabilities of the tokens in `text`.
        logprobs: Option<Vec<TokenLogprob>>,
    },
    /// A tool call begins (`id` and `name` set) or its arguments grow.
    ToolCallDelta {
        /// The tool call's position among this answer's tool calls.
        index: u32,
        /// The call id, on the first delta of a call.
        id: Option<String>,
        /// The function name, on the first delta of a call.
        name: Option<String>,
        /// The next piece of the JSON arguments.
        arguments: String,
    },
    /// Token counts so far; later ones replace earlier ones.
    Usage(Usage),
    /// Generation stopped.
    Finish {
        /// Why.
        reason: FinishReason,
    },
    /// A stream cut or an upstream error mid-stream; egress turns it into an error event.
    Error(ProviderError),
}

/// A complete tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The JSON arguments as text.
    pub arguments: String,
}

/// A complete (non-streamed) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The completion id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// The generated text.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Token log-probabilities when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Token counts.
    pub usage: Usage,
}

/// Folds [`ChatEvent`]s into a [`ChatResponse`], for answering a non-streaming client from a
/// stream.
#[derive(Debug, Default)]
pub struct ResponseBuilder {
    id: String,
    model: String,
    created: u64,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<FinishReason>,
    logprobs: Option<Vec<TokenLogprob>>,
    usage: Usage,
    error: Option<ProviderError>,
}

impl ResponseBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one event.
    pub fn push(&mut self, event: ChatEvent) {
        match event {
            ChatEvent::Start { id, model, created } => {
                self.id = id;
                self.model = model;
                self.created = created;
            }
            ChatEvent::TextDelta { text, logprobs, .. } => {
                self.text.push_str(&text);
                if let Some(lp) = logprobs {
                    self.logprobs.get_or_insert_with(Vec::new).extend(lp);
                }
            }
            ChatEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                let index = index as usize;
                while self.tool_calls.len() <= index {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let call = &mut self.tool_calls[index];
                if let Some(id) = id {
                    call.id = id;
                }
                if let Some(name) = name {
                    call.name.push_str(&name);
                }
                call.arguments.push_str(&arguments);
            }
            ChatEvent::Usage(usage) => self.usage = usage,
            ChatEvent::Finish { reason } => self.finish_reason = Some(reason),
            ChatEvent::Error(err) => {
                if self.error.is_none() {
                    self.error = Some(err);
                }
            }
        }
    }

    /// The folded answer, or the stream's error. A stream without a finish reason is a cut.
    pub fn finish(self) -> Result<ChatResponse, ProviderError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let Some(finish_reason) = self.finish_reason else {
            return Err(ProviderError::new(
                ProviderErrorKind::StreamCut,
                "",
                "stream ended without a finish reason",
            ));
        };
        Ok(ChatResponse {
            id: self.id,
            model: self.model,
            created: self.created,
            text: self.text,
            tool_calls: self.tool_calls,
            finish_reason,
            logprobs: self.logprobs,
            usage: self.usage,
        })
    }
}

/// Folds a whole event stream into one answer (non-streaming from a stream).
pub async fn collect_response(
    stream: impl Stream<Item = ChatEvent>,
) -> Result<ChatResponse, ProviderError> {
    let mut builder = ResponseBuilder::new();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let failed = matches!(event, ChatEvent::Error(_));
        builder.push(event);
        if failed {
            break;
        }
    }
    builder.finish()
}

/// The text a run of events carries: every text delta, in order.
pub fn events_text(events: &[ChatEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Splits a complete answer into the events a stream of it would carry.
pub fn response_events(response: &ChatResponse) -> Vec<ChatEvent> {
    let mut events = Vec::with_capacity(4 + response.tool_calls.len());
    events.push(ChatEvent::Start {
        id: response.id.clone(),
        model: response.model.clone(),
        created: response.created,
    });
    if !response.text.is_empty() || response.tool_calls.is_empty() {
        events.push(ChatEvent::TextDelta {
            index: 0,
            text: response.text.clone(),
            logprobs: response.logprobs.clone(),
        });
    }
    for (index, call) in response.tool_calls.iter().enumerate() {
        events.push(ChatEvent::ToolCallDelta {
            index: index as u32,
            id: Some(call.id.clone()),
            name: Some(call.name.clone()),
            arguments: call.arguments.clone(),
        });
    }
    events.push(ChatEvent::Finish {
        reason: response.finish_reason,
    });
    events.push(ChatEvent::Usage(response.usage));
    events
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
