//! An engine generation's outcome in the API's terms: why it ended and what it used. Read by the
//! chat and completion paths alike.

use tandem_cloud_adapters::{FinishReason, Usage};

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
