//! An engine generation's outcome in the API's terms: why it ended, what it used, and the 400 for a
//! prompt over the context. Read by the chat and completion paths alike.

use tandem_cloud_adapters::{FinishReason, Usage};

use crate::error::Error;

/// Why an engine generation ended, as the API says it: `length` at the token limit, else `stop`.
pub fn finish_reason(reason: tandem_local_model::StopReason) -> FinishReason {
    match reason {
        tandem_local_model::StopReason::Length => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// The usage of an engine generation, from its finish event's token counts.
pub fn engine_usage(
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_prompt_tokens: usize,
) -> Usage {
    Usage {
        prompt_tokens: prompt_tokens as u64,
        completion_tokens: completion_tokens as u64,
        cached_prompt_tokens: cached_prompt_tokens as u64,
        ..Usage::default()
    }
}

/// The 400 for a prompt of `tokens` over the local model's `context`: OpenAI's
/// `context_length_exceeded` code, in words Anthropic's clients know (`prompt is too long`).
pub fn context_length_exceeded(tokens: usize, context: usize, param: &str) -> Error {
    Error::InvalidRequest {
        message: format!(
            "prompt is too long: {tokens} tokens > {context} maximum (the local model's context \
             length); shorten the messages or route this model to a backend with a longer context"
        ),
        param: Some(param.to_owned()),
        code: Some("context_length_exceeded"),
    }
}
