//! Egress: a normalized answer encoded for an OpenAI client, as `chat.completion` JSON or as
//! `chat.completion.chunk` SSE frames.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::error::error_out;
use crate::error::ProviderError;
use crate::types::{ChatEvent, ChatResponse, FinishReason, TokenLogprob, Usage, unix_now};
use crate::wire::json;
use crate::wire::sse;

#[derive(Serialize)]
pub(super) struct WireUsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    completion_tokens_details: ReasoningOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    speculative: Option<SpeculativeOut>,
}

/// `usage.speculative`: Tandem's extension for speculatively decoded answers.
#[derive(Serialize)]
struct SpeculativeOut {
    rounds: u64,
    drafted: u64,
    accepted: u64,
    acceptance_rate: f64,
    draft_length: f64,
    plain_tokens: u64,
    target_input_tokens: u64,
    target_cached_input_tokens: u64,
    target_output_tokens: u64,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl From<&Usage> for WireUsageOut {
    fn from(u: &Usage) -> Self {
        WireUsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cached_prompt_tokens,
            },
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: u.reasoning_tokens,
            },
            speculative: u.speculative.map(|s| SpeculativeOut {
                rounds: s.rounds,
                drafted: s.drafted,
                accepted: s.accepted,
                acceptance_rate: s.acceptance_rate(),
                draft_length: s.draft_length(),
                plain_tokens: s.plain_tokens,
                target_input_tokens: s.target_input_tokens,
                target_cached_input_tokens: s.target_cached_input_tokens,
                target_output_tokens: s.target_output_tokens,
            }),
        }
    }
}

#[derive(Serialize)]
struct LogprobsOut<'a> {
    content: Vec<TokenLogprobOut<'a>>,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct TokenLogprobOut<'a> {
    token: &'a str,
    logprob: f32,
    bytes: Cow<'a, [u8]>,
    top_logprobs: Vec<TopLogprobOut<'a>>,
}

#[derive(Serialize)]
struct TopLogprobOut<'a> {
    token: &'a str,
    logprob: f32,
    bytes: &'a [u8],
}

fn logprobs_out(lps: &[TokenLogprob]) -> LogprobsOut<'_> {
    LogprobsOut {
        content: lps
            .iter()
            .map(|lp| TokenLogprobOut {
                token: &lp.token,
                logprob: lp.logprob,
                bytes: match &lp.bytes {
                    Some(b) => Cow::Borrowed(b.as_slice()),
                    None => Cow::Borrowed(lp.token.as_bytes()),
                },
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|(t, l)| TopLogprobOut {
                        token: t,
                        logprob: *l,
                        bytes: t.as_bytes(),
                    })
                    .collect(),
            })
            .collect(),
        refusal: None,
    }
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    usage: WireUsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: Option<LogprobsOut<'a>>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

/// The OpenAI spelling of a finish reason.
pub fn finish_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn response_out(r: &ChatResponse) -> ResponseOut<'_> {
    ResponseOut {
        id: &r.id,
        object: "chat.completion",
        created: r.created,
        model: &r.model,
        choices: [ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: (!r.text.is_empty() || r.tool_calls.is_empty()).then_some(r.text.as_str()),
                refusal: None,
                tool_calls: r
                    .tool_calls
                    .iter()
                    .map(|c| ToolCallOut {
                        index: None,
                        id: Some(&c.id),
                        kind: Some("function"),
                        function: FunctionOut {
                            name: Some(&c.name),
                            arguments: &c.arguments,
                        },
                    })
                    .collect(),
            },
            logprobs: r.logprobs.as_deref().map(logprobs_out),
            finish_reason: finish_reason_str(r.finish_reason),
        }],
        usage: WireUsageOut::from(&r.usage),
    }
}

/// Encodes a complete answer as `chat.completion` JSON bytes, fields in OpenAI's order.
pub fn encode_chat_response(response: &ChatResponse) -> Bytes {
    Bytes::from(serde_json::to_vec(&response_out(response)).unwrap_or_default())
}

/// A whole answer in the form an OpenAI client receives it: the `chat.completion` body, and the
/// usage it reports for accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// The `chat.completion` JSON body.
    pub body: Bytes,
    /// Token counts, as the body reports them.
    pub usage: Usage,
}

impl ChatCompletion {
    /// A normalized answer encoded for an OpenAI client.
    pub fn encode(response: &ChatResponse) -> Self {
        ChatCompletion {
            body: encode_chat_response(response),
            usage: response.usage,
        }
    }
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoiceOut<'a>>,
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

/// `usage` in a chunk: absent, `null` (include_usage, not the last chunk), or the counts.
pub(super) enum UsageField {
    Absent,
    Null,
    Counts(WireUsageOut),
}

impl UsageField {
    pub(super) fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }
}

impl Serialize for UsageField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Counts(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<LogprobsOut<'a>>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

/// Turns [`ChatEvent`]s into `chat.completion.chunk` SSE frames.
///
/// Usage is held back and sent once, as the last chunk before `data: [DONE]`, when the client
/// asked for it (`stream_options.include_usage`).
#[derive(Debug)]
pub struct ChunkEncoder {
    head: StreamHead,
    started: bool,
    tail: StreamTail,
}

impl ChunkEncoder {
    /// An encoder; `include_usage` sends the final usage chunk (the client asked for it).
    pub fn new(include_usage: bool) -> Self {
        ChunkEncoder {
            head: StreamHead::new("chatcmpl", "chat.completion.chunk"),
            started: false,
            tail: StreamTail::new(include_usage),
        }
    }

    /// Sets the model name used before (or without) a `Start` event.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.head.model = model.into();
        self
    }

    fn chunk(&self, choice: Option<ChunkChoiceOut<'_>>, usage: UsageField, out: &mut BytesMut) {
        let chunk = ChunkOut {
            id: &self.head.id,
            object: self.head.object,
            created: self.head.created,
            model: &self.head.model,
            choices: choice.into_iter().collect(),
            usage,
        };
        sse::write_event(out, None, &json::to_string(&chunk));
    }

    fn usage_placeholder(&self) -> UsageField {
        self.tail.placeholder()
    }

    fn start_frame(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let delta = DeltaOut {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
            ..DeltaOut::default()
        };
        let choice = ChunkChoiceOut {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: None,
        };
        self.chunk(Some(choice), self.usage_placeholder(), out);
    }

    /// The frames for one event (possibly none).
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.tail.failed() {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { id, model, created } => {
                self.head.start(id, model, *created);
                self.start_frame(&mut out);
            }
            ChatEvent::TextDelta {
                index,
                text,
                logprobs,
            } => {
                self.start_frame(&mut out);
                let choice = ChunkChoiceOut {
                    index: *index,
                    delta: DeltaOut {
                        content: Some(text),
                        ..DeltaOut::default()
                    },
                    logprobs: logprobs.as_deref().map(logprobs_out),
                    finish_reason: None,
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                self.start_frame(&mut out);
                let call = ToolCallOut {
                    index: Some(*index),
                    id: id.as_deref(),
                    kind: id.as_ref().map(|_| "function"),
                    function: FunctionOut {
                        name: name.as_deref(),
                        arguments,
                    },
                };
                let choice = ChunkChoiceOut {
                    index: 0,
                    delta: DeltaOut {
                        tool_calls: vec![call],
                        ..DeltaOut::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::Usage(usage) => self.tail.record(*usage),
            ChatEvent::Finish { reason } => {
                self.start_frame(&mut out);
                let choice = ChunkChoiceOut {
                    index: 0,
                    delta: DeltaOut::default(),
                    logprobs: None,
                    finish_reason: Some(finish_reason_str(*reason)),
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::Error(err) => self.tail.fail(&self.head, err, &mut out),
        }
        out.freeze()
    }

    /// The closing frames: the usage chunk when asked for, then `data: [DONE]`. After an error
    /// event nothing more is sent, so the client can tell the stream failed (a usage chunk the
    /// backend reported before failing comes just before the error event).
    pub fn finish(&mut self) -> Bytes {
        self.tail.finish(&self.head)
    }
}

/// What the first fields of every chunk of a stream say.
#[derive(Debug)]
pub(super) struct StreamHead {
    /// The completion id.
    pub(super) id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub(super) object: &'static str,
    /// Unix seconds.
    pub(super) created: u64,
    /// The model that answers.
    pub(super) model: String,
}

impl StreamHead {
    /// Takes the upstream's id, model and creation time from its start event.
    pub(super) fn start(&mut self, id: &str, model: &str, created: u64) {
        self.id.clear();
        self.id.push_str(id);
        self.model.clear();
        self.model.push_str(model);
        self.created = created;
    }

    /// A head with a fresh id (`{prefix}-{uuid}`), created now, for `object` chunks; the model
    /// and the upstream's id come later.
    pub(super) fn new(prefix: &str, object: &'static str) -> Self {
        StreamHead {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            object,
            created: unix_now(),
            model: String::new(),
        }
    }
}

/// The end of an OpenAI-format stream, one policy for the chat and the legacy completions
/// encoders. Usage is held back and sent once, as a chunk without choices: last before
/// `data: [DONE]` when the client asked for it; after a failure, just before the error event
/// when the client asked for it and the backend reported it. After an error nothing more is
/// sent, so the client can tell the stream failed.
#[derive(Debug)]
pub(super) struct StreamTail {
    include_usage: bool,
    usage: Option<Usage>,
    failed: bool,
}

impl StreamTail {
    /// A tail; `include_usage` sends the usage chunk (the client asked for it).
    pub(super) fn new(include_usage: bool) -> Self {
        StreamTail {
            include_usage,
            usage: None,
            failed: false,
        }
    }

    /// Whether an error event was sent (nothing more is).
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Keeps the latest counts (each report is cumulative).
    pub(super) fn record(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// `usage` in a content chunk: `null` when a usage chunk will follow, else absent.
    pub(super) fn placeholder(&self) -> UsageField {
        if self.include_usage {
            UsageField::Null
        } else {
            UsageField::Absent
        }
    }

    /// The frames of a failure: what was served before it, when the client asked for usage and
    /// the backend reported it, then the error event.
    pub(super) fn fail(&mut self, head: &StreamHead, err: &ProviderError, out: &mut BytesMut) {
        self.failed = true;
        if let (true, Some(usage)) = (self.include_usage, self.usage) {
            usage_chunk(head, &usage, out);
        }
        sse::write_event(out, None, &json::to_string(&error_out(err)));
    }

    /// The closing frames: the usage chunk when asked for, then `data: [DONE]`; nothing after
    /// an error event.
    pub(super) fn finish(&mut self, head: &StreamHead) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        if self.include_usage {
            usage_chunk(head, &self.usage.unwrap_or_default(), &mut out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out.freeze()
    }
}

/// A chunk with no choices that carries the counts.
fn usage_chunk(head: &StreamHead, usage: &Usage, out: &mut BytesMut) {
    let chunk = ChunkOut {
        id: &head.id,
        object: head.object,
        created: head.created,
        model: &head.model,
        choices: Vec::new(),
        usage: UsageField::Counts(WireUsageOut::from(usage)),
    };
    sse::write_event(out, None, &json::to_string(&chunk));
}
