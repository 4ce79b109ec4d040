//! Parse: an upstream's `chat.completion` body and `chat.completion.chunk` stream read into the
//! normalized form, and a whole `chat.completion` passed on to an OpenAI client as it came.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::egress::ChatCompletion;
use super::error::error_from_value;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::types::{ChatEvent, ChatResponse, FinishReason, TokenLogprob, ToolCall, Usage};
use crate::wire::scan;
use crate::wire::sse::SseEvent;

/// Parses an OpenAI finish reason (unknown ones count as a natural stop).
pub fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<WireCached>,
    completion_tokens_details: Option<WireReasoning>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireCached {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireReasoning {
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        Usage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            cached_prompt_tokens: w
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
            reasoning_tokens: w
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            speculative: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct WireTokenLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTopLogprob>,
}

#[derive(Debug, Deserialize)]
struct WireTopLogprob {
    token: String,
    logprob: f32,
}

fn convert_logprobs(w: Option<WireLogprobs>) -> Option<Vec<TokenLogprob>> {
    let content = w?.content?;
    Some(
        content
            .into_iter()
            .map(|t| TokenLogprob {
                token: t.token,
                logprob: t.logprob,
                bytes: t.bytes,
                top: t
                    .top_logprobs
                    .into_iter()
                    .map(|x| (x.token, x.logprob))
                    .collect(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: WireMessage,
    /// Legacy `text_completion` choices carry `text` instead of a message.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireMessage {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// Parses a non-streamed `chat.completion` body.
pub fn parse_chat_response(body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Decode,
            provider,
            format!("bad chat.completion: {e}"),
        )
    })?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ProviderError::new(
            ProviderErrorKind::Decode,
            provider,
            "chat.completion has no choices",
        ));
    };
    let refused = choice.message.refusal.is_some();
    let text = choice
        .message
        .content
        .or(choice.message.refusal)
        .or(choice.text)
        .unwrap_or_default();
    let tool_calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let f = c.function.unwrap_or_default();
            ToolCall {
                id: c.id.unwrap_or_default(),
                name: f.name.unwrap_or_default(),
                arguments: f.arguments.unwrap_or_default(),
            }
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(r) => parse_finish_reason(r),
        None if refused => FinishReason::ContentFilter,
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: wire.created,
        text,
        tool_calls,
        finish_reason,
        logprobs: convert_logprobs(choice.logprobs),
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    /// Legacy `text_completion` chunks carry `text` instead of a delta.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireDelta {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

/// Turns an upstream's `chat.completion.chunk` SSE events into [`ChatEvent`]s.
#[derive(Debug)]
pub struct ChunkDecoder {
    provider: String,
    started: bool,
    finished: bool,
    usage_seen: bool,
    done: bool,
    failed: bool,
}

impl ChunkDecoder {
    /// A decoder for a stream from `provider`.
    pub fn new(provider: impl Into<String>) -> Self {
        ChunkDecoder {
            provider: provider.into(),
            started: false,
            finished: false,
            usage_seen: false,
            done: false,
            failed: false,
        }
    }

    /// Decodes one SSE event, appending the resulting events to `out`.
    pub fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>) {
        if self.done || self.failed {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => {
                self.failed = true;
                out.push(ChatEvent::Error(ProviderError::new(
                    ProviderErrorKind::Decode,
                    self.provider.clone(),
                    format!("bad chat.completion.chunk: {e}"),
                )));
                return;
            }
        };
        if let Some(error) = chunk.error {
            self.failed = true;
            let body = serde_json::json!({ "error": error });
            out.push(ChatEvent::Error(error_from_value(
                None,
                body,
                &self.provider,
            )));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(ChatEvent::Start {
                id: chunk.id,
                model: chunk.model,
                created: chunk.created,
            });
        }
        for choice in chunk.choices {
            let text = choice
                .delta
                .content
                .or(choice.delta.refusal)
                .or(choice.text);
            let logprobs = convert_logprobs(choice.logprobs);
            if text.as_deref().is_some_and(|t| !t.is_empty()) || logprobs.is_some() {
                out.push(ChatEvent::TextDelta {
                    index: choice.index,
                    text: text.unwrap_or_default(),
                    logprobs,
                });
            }
            for (pos, call) in choice
                .delta
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let f = call.function.unwrap_or_default();
                out.push(ChatEvent::ToolCallDelta {
                    index: call.index.unwrap_or(pos as u32),
                    id: call.id,
                    name: f.name,
                    arguments: f.arguments.unwrap_or_default(),
                });
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(ChatEvent::Finish {
                    reason: parse_finish_reason(&reason),
                });
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage_seen = true;
            out.push(ChatEvent::Usage(usage.into()));
        }
    }

    /// Whether the stream reached its end or already failed. The end is `[DONE]`, or a finish
    /// reason and the usage: the usage comes in a chunk after the finish reason, so a stream that
    /// ends between the two was cut, and its usage would be lost without a word.
    pub fn is_complete(&self) -> bool {
        self.done || self.failed || (self.finished && self.usage_seen)
    }
}

/// What a passed-on `chat.completion` must hold: at least one choice, each an object, and the
/// usage to account.
#[derive(Deserialize)]
struct CompletionCheck {
    #[serde(default)]
    choices: Vec<ChoiceCheck>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A choice: an object, its members the upstream's to shape.
#[derive(Deserialize)]
struct ChoiceCheck {}

/// Takes an upstream's non-streamed `chat.completion` body as it is, for an OpenAI client: every
/// field the upstream sent is kept in OpenAI's own shape (system fingerprint, service tier,
/// `refusal` beside a null `content`, annotations, every token detail), and nothing is decoded
/// into the normalized form and encoded again. The body must be UTF-8 JSON whose choices are
/// objects, at least one, as [`parse_chat_response`] requires; what a choice holds is not checked.
pub fn pass_chat_response(body: Bytes, provider: &str) -> Result<ChatCompletion, ProviderError> {
    let bad = |message: String| ProviderError::new(ProviderErrorKind::Decode, provider, message);
    let usage = match walk_completion(&body) {
        Some(usage) => usage,
        // The walk does not say what is wrong, or finds it too odd to vouch for; the full parse
        // decides, and says why.
        None => {
            let check: CompletionCheck = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("bad chat.completion: {e}")))?;
            if check.choices.is_empty() {
                return Err(bad("chat.completion has no choices".into()));
            }
            check.usage.map(Usage::from).unwrap_or_default()
        }
    };
    // Neither checks the UTF-8 of strings they skip, and a client's parser may.
    std::str::from_utf8(&body).map_err(|e| bad(format!("bad chat.completion: {e}")))?;
    Ok(ChatCompletion { body, usage })
}

/// The usage of a `chat.completion` that holds at least one choice, each an object, found by a
/// walk that checks the whole body against JSON's grammar but builds nothing, in well under a
/// full parse's instructions; `None` where the walk cannot vouch for the body, or where the full
/// parse might read the usage differently.
fn walk_completion(body: &[u8]) -> Option<Usage> {
    let (mut choices, mut seen_choices, mut usage) = (0, false, None);
    scan::walk_document(body, |key, at| match key {
        // A repeated member is the full parse's to refuse.
        b"choices" if !std::mem::replace(&mut seen_choices, true) => {
            scan::walk_array(body, at, |choice| {
                choices += 1;
                (body.get(choice) == Some(&b'{')).then_some(())?;
                scan::value_end(body, choice)
            })
        }
        b"usage" if usage.is_none() => {
            let (read, end) = walk_usage(body, at)?;
            usage = Some(read);
            Some(end)
        }
        b"choices" | b"usage" => None,
        _ => scan::value_end(body, at),
    })?;
    (choices > 0).then(|| usage.unwrap_or_default())
}

/// The counts of the OpenAI `usage` object (or `null`) at `at`, read as [`WireUsage`] reads
/// them: 0 for a count or details object that is absent, and for a detail that is null; and the
/// index just past it.
fn walk_usage(json: &[u8], at: usize) -> Option<(Usage, usize)> {
    if let Some(end) = scan::null_end(json, at) {
        return Some((Usage::default(), end));
    }
    let mut counts = [None; 4];
    let end = scan::walk_object(json, at, |key, at| {
        let (slot, detail) = match key {
            b"prompt_tokens" => (0, None),
            b"completion_tokens" => (1, None),
            b"prompt_tokens_details" => (2, Some(&b"cached_tokens"[..])),
            b"completion_tokens_details" => (3, Some(&b"reasoning_tokens"[..])),
            _ => return scan::value_end(json, at),
        };
        let (count, end) = match detail {
            None => scan::count_at(json, at)?,
            Some(name) => walk_detail(json, at, name)?,
        };
        // A repeated count is the full parse's to refuse.
        counts[slot].replace(count).is_none().then_some(end)
    })?;
    let [prompt, completion, cached, reasoning] = counts.map(|c| c.unwrap_or(0));
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: cached,
        reasoning_tokens: reasoning,
        ..Usage::default()
    };
    Some((usage, end))
}

/// `name` in the details object (or `null`) at `at`, 0 where it or the object is null or absent;
/// and the index just past the object.
fn walk_detail(json: &[u8], at: usize, name: &[u8]) -> Option<(u64, usize)> {
    if let Some(end) = scan::null_end(json, at) {
        return Some((0, end));
    }
    let mut count = None;
    let end = scan::walk_object(json, at, |key, at| {
        if key != name {
            return scan::value_end(json, at);
        }
        let (n, end) = match scan::null_end(json, at) {
            Some(end) => (0, end),
            None => scan::count_at(json, at)?,
        };
        count.replace(n).is_none().then_some(end)
    })?;
    Some((count.unwrap_or(0), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_completion_is_vouched_for_by_the_walk() {
        let body = include_bytes!("../../../tests/fixtures/openai/chat_text.json");
        let usage = walk_completion(body).unwrap();
        let parsed: CompletionCheck = serde_json::from_slice(body).unwrap();
        assert_eq!(usage, Usage::from(parsed.usage.unwrap()));
        assert_eq!(usage.cached_prompt_tokens, 1024);
    }

    /// What the full parse of a body makes of it: its usage, or that it refuses it.
    fn fully_parsed(body: &[u8]) -> Option<Usage> {
        let check: CompletionCheck = serde_json::from_slice(body).ok()?;
        (!check.choices.is_empty()).then(|| check.usage.map(Usage::from).unwrap_or_default())
    }

    #[test]
    fn the_walk_reads_usage_as_the_full_parse_does_or_leaves_it_to_it() {
        let body =
            |usage: &str| format!(r#"{{"id":"x","choices":[{{"index":0}}],"usage":{usage}}}"#);
        let read = [
            r#"null"#,
            r#"{}"#,
            r#"{"prompt_tokens":3}"#,
            r#"{"completion_tokens":4,"total_tokens":7,"prompt_tokens":3}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{}}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "prompt_tokens_details":{"audio_tokens":0,"cached_tokens":null}}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "prompt_tokens_details":{"cached_tokens":2},
                "completion_tokens_details":{"reasoning_tokens":1,"audio_tokens":0}}"#,
        ];
        for usage in read {
            let body = body(usage);
            let full = fully_parsed(body.as_bytes());
            assert!(full.is_some(), "{body}");
            assert_eq!(walk_completion(body.as_bytes()), full, "{body}");
        }
        // Refused by the full parse, or read by it in a way the walk leaves to it: a usage
        // given as an array reads its counts by position.
        let left = [
            r#"{"prompt_tokens":null,"completion_tokens":4}"#,
            r#"{"prompt_tokens":-3,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3.0,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3,"prompt_tokens":3,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":7}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "completion_tokens_details":{"reasoning_tokens":1,"reasoning_tokens":1}}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":4}"#,
            r#"[3, 4]"#,
        ];
        for usage in left {
            let body = body(usage);
            assert_eq!(walk_completion(body.as_bytes()), None, "{body}");
        }
        let others = [
            r#"{"choices":[{}],"choices":[{}]}"#,
            r#"{"choices":[{},7]}"#,
            r#"{"choices":{}}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[]}"#,
        ];
        for body in others {
            assert_eq!(walk_completion(body.as_bytes()), None, "{body}");
        }
    }
}
