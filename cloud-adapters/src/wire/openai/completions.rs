//! The legacy `/v1/completions` API: the request decoded, a `text_completion` answer encoded as
//! JSON or as SSE chunks.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value};

use super::egress::{StreamHead, StreamTail, UsageField, WireUsageOut, finish_reason_str};
use crate::error::WireError;
use crate::types::{ChatEvent, ChatResponse, FinishReason, TokenLogprob};
use crate::wire::json::{self, opt};
use crate::wire::sse;

/// The prompt of a legacy completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// A legacy `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The model name.
    pub model: String,
    /// The prompt (one; batches are refused).
    pub prompt: Prompt,
    /// Text after the insertion point.
    pub suffix: Option<String>,
    /// Whether to repeat the prompt before the completion.
    pub echo: bool,
    /// Log-probabilities of this many alternatives per token.
    pub logprobs: Option<u32>,
    /// Log-probabilities of the prompt tokens (vLLM).
    pub prompt_logprobs: Option<u32>,
    /// Most tokens to generate: [`DEFAULT_COMPLETION_TOKENS`] when the client gives none, as in
    /// the API (0 scores the prompt only).
    pub max_tokens: u32,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling (vLLM).
    pub top_k: Option<u32>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether the client asked for a final usage chunk.
    pub include_usage: bool,
    /// End-user id.
    pub user: Option<String>,
    /// Name generated tokens `token_id:<id>` instead of by their text (vLLM).
    pub return_tokens_as_token_ids: bool,
    /// Other fields, untouched.
    pub extra: Map<String, Value>,
}

/// OpenAI's default `max_tokens` for legacy completions.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// Most alternatives per position a completion returns (`logprobs`, `prompt_logprobs`).
pub const MAX_COMPLETION_LOGPROBS: u32 = 20;

const KNOWN_COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "suffix",
    "echo",
    "logprobs",
    "prompt_logprobs",
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stream",
    "stream_options",
    "user",
    "n",
    "best_of",
    "return_tokens_as_token_ids",
];

/// Decodes a client's `/v1/completions` body.
pub fn decode_completion_request(body: &[u8]) -> Result<CompletionRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let prompt = match opt(&obj, "prompt") {
        None => return Err(WireError::missing("prompt")),
        Some(v) => decode_prompt(v)?,
    };
    for key in ["n", "best_of"] {
        if json::opt_u32(&obj, key, key)?.unwrap_or(1) > 1 {
            return Err(WireError::new(
                "unsupported_value",
                Some(key),
                format!("{key}>1 is not supported"),
            ));
        }
    }
    let logprobs = match opt(&obj, "logprobs") {
        // Some clients send a boolean; `true` means the top-1 token.
        Some(Value::Bool(b)) => b.then_some(0),
        _ => json::opt_u32(&obj, "logprobs", "logprobs")?,
    };
    let prompt_logprobs = json::opt_u32(&obj, "prompt_logprobs", "prompt_logprobs")?;
    for (key, value) in [("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)] {
        if value.is_some_and(|k| k > MAX_COMPLETION_LOGPROBS) {
            return Err(WireError::invalid_value(
                key,
                format!("'{key}' must be at most {MAX_COMPLETION_LOGPROBS}"),
            ));
        }
    }
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let include_usage = match opt(&obj, "stream_options") {
        None => false,
        Some(v) => {
            let so = json::as_object(v, "stream_options")?;
            json::opt_bool(so, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
        }
    };
    let mut extra = Map::new();
    for (key, value) in &obj {
        if !KNOWN_COMPLETION_FIELDS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        }
    }
    Ok(CompletionRequest {
        model,
        prompt,
        suffix: json::opt_str(&obj, "suffix", "suffix")?,
        echo: json::opt_bool(&obj, "echo", "echo")?.unwrap_or(false),
        logprobs,
        prompt_logprobs,
        max_tokens: json::opt_u32(&obj, "max_tokens", "max_tokens")?
            .unwrap_or(DEFAULT_COMPLETION_TOKENS),
        stop: json::stop_list(&obj, "stop", "stop")?,
        temperature: json::opt_f32(&obj, "temperature", "temperature")?,
        top_p: json::opt_f32(&obj, "top_p", "top_p")?,
        top_k: match opt(&obj, "top_k") {
            // vLLM's "off".
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => None,
            _ => json::opt_u32(&obj, "top_k", "top_k")?,
        },
        seed: json::opt_u64(&obj, "seed", "seed")?,
        stream,
        include_usage: stream && include_usage,
        user: json::opt_str(&obj, "user", "user")?,
        return_tokens_as_token_ids: json::opt_bool(
            &obj,
            "return_tokens_as_token_ids",
            "return_tokens_as_token_ids",
        )?
        .unwrap_or(false),
        extra,
    })
}

fn decode_prompt(value: &Value) -> Result<Prompt, WireError> {
    let batch_error = || {
        WireError::new(
            "unsupported_value",
            Some("prompt"),
            "a batch of several prompts is not supported",
        )
    };
    let token = |v: &Value, param: &str| -> Result<u32, WireError> {
        v.as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| WireError::invalid_type(param, "a token id (non-negative integer)"))
    };
    match value {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(items) => match items.first() {
            None => Err(WireError::invalid_value(
                "prompt",
                "'prompt' must not be empty",
            )),
            Some(Value::String(s)) => {
                if items.len() > 1 {
                    return Err(batch_error());
                }
                Ok(Prompt::Text(s.clone()))
            }
            Some(Value::Array(inner)) => {
                if items.len() > 1 {
                    return Err(batch_error());
                }
                if inner.is_empty() {
                    return Err(WireError::invalid_value(
                        "prompt",
                        "'prompt' must not be empty",
                    ));
                }
                let ids = inner
                    .iter()
                    .enumerate()
                    .map(|(i, v)| token(v, &format!("prompt[0][{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Prompt::Tokens(ids))
            }
            Some(_) => {
                let ids = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| token(v, &format!("prompt[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Prompt::Tokens(ids))
            }
        },
        _ => Err(WireError::invalid_type(
            "prompt",
            "a string, an array of strings or token ids",
        )),
    }
}

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoiceOut<'a>; 1],
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

#[derive(Serialize)]
struct CompletionChoiceOut<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<CompletionLogprobsOut<'a>>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct CompletionLogprobsOut<'a> {
    tokens: Vec<&'a str>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
}

fn completion_logprobs(lps: &[TokenLogprob], start_offset: usize) -> CompletionLogprobsOut<'_> {
    let mut offset = start_offset;
    let mut text_offset = Vec::with_capacity(lps.len());
    for lp in lps {
        text_offset.push(offset);
        offset += lp.token.len();
    }
    CompletionLogprobsOut {
        tokens: lps.iter().map(|l| l.token.as_str()).collect(),
        token_logprobs: lps.iter().map(|l| l.logprob).collect(),
        top_logprobs: lps
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|(t, p)| (t.clone(), Value::from(*p)))
                    .collect()
            })
            .collect(),
        text_offset,
    }
}

/// Encodes a complete answer as a legacy `text_completion` object; `echo` is the prompt text to
/// repeat before the completion (when the client asked for `echo`).
pub fn encode_completion_response(response: &ChatResponse, echo: Option<&str>) -> Bytes {
    let text: Cow<'_, str> = match echo {
        Some(prompt) => Cow::Owned(format!("{prompt}{}", response.text)),
        None => Cow::Borrowed(&response.text),
    };
    let out = CompletionOut {
        id: &response.id,
        object: "text_completion",
        created: response.created,
        model: &response.model,
        choices: [CompletionChoiceOut {
            text: &text,
            index: 0,
            logprobs: response
                .logprobs
                .as_deref()
                .map(|l| completion_logprobs(l, echo.map_or(0, str::len))),
            finish_reason: Some(finish_reason_str(response.finish_reason)),
        }],
        usage: UsageField::Counts(WireUsageOut::from(&response.usage)),
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// Turns [`ChatEvent`]s into legacy `text_completion` SSE chunks.
#[derive(Debug)]
pub struct CompletionChunkEncoder {
    head: StreamHead,
    offset: usize,
    tail: StreamTail,
}

impl CompletionChunkEncoder {
    /// An encoder; `include_usage` sends the final usage chunk.
    pub fn new(include_usage: bool) -> Self {
        CompletionChunkEncoder {
            head: StreamHead::new("cmpl", "text_completion"),
            offset: 0,
            tail: StreamTail::new(include_usage),
        }
    }

    fn chunk(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprob]>,
        finish: Option<FinishReason>,
        out: &mut BytesMut,
    ) {
        let c = CompletionOut {
            id: &self.head.id,
            object: self.head.object,
            created: self.head.created,
            model: &self.head.model,
            choices: [CompletionChoiceOut {
                text,
                index: 0,
                logprobs: logprobs.map(|l| completion_logprobs(l, self.offset)),
                finish_reason: finish.map(finish_reason_str),
            }],
            usage: self.tail.placeholder(),
        };
        sse::write_event(out, None, &json::to_string(&c));
    }

    /// The frames for one event (possibly none). Tool-call deltas have no legacy form and are
    /// dropped.
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.tail.failed() {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { id, model, created } => self.head.start(id, model, *created),
            ChatEvent::TextDelta { text, logprobs, .. } => {
                self.chunk(text, logprobs.as_deref(), None, &mut out);
                self.offset += text.len();
            }
            ChatEvent::ToolCallDelta { .. } => {}
            ChatEvent::Usage(u) => self.tail.record(*u),
            ChatEvent::Finish { reason } => self.chunk("", None, Some(*reason), &mut out),
            ChatEvent::Error(err) => self.tail.fail(&self.head, err, &mut out),
        }
        out.freeze()
    }

    /// The closing frames: the usage chunk when asked for, then `data: [DONE]`. After an error
    /// event nothing more is sent (a usage chunk the backend reported before failing comes just
    /// before the error event, as in a chat stream).
    pub fn finish(&mut self) -> Bytes {
        self.tail.finish(&self.head)
    }
}
