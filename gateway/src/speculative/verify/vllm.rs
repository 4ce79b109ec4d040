//! vLLM's OpenAI-compatible `/v1/completions` as a verifier: the prompt is the token ids of the
//! prefix plus the draft, `prompt_logprobs: k` scores every prompt position, and `max_tokens: 1`
//! with `logprobs: k` gives the bonus position.
//!
//! vLLM answers `choices[0].prompt_logprobs` as a list with `null` first (the first prompt token
//! has no context), then per position a map from the token id (as a string) to
//! `{logprob, rank, decoded_token}`: the top `k` plus the prompt's own token. With
//! `return_tokens_as_token_ids: true`, the generated token's `logprobs.top_logprobs[0]` is keyed
//! `"token_id:<id>"`.

use serde::Serialize;
use serde_json::Value;
use tandem_cloud_adapters::{ProviderError, Usage};

use super::{Endpoint, TopLogprobs, VerifyRequest, VerifyResponse, decode_error, sort_best_first};

/// The request body (borrowed; vLLM extensions included).
#[derive(Debug, Serialize)]
pub struct VllmVerifyBody<'a> {
    /// Model name.
    pub model: &'a str,
    /// Prefix plus draft, as token ids.
    pub prompt: Vec<u32>,
    /// One token: the bonus.
    pub max_tokens: u32,
    /// Greedy, so the bonus is the argmax.
    pub temperature: f32,
    /// Top log probabilities for the bonus token.
    pub logprobs: u32,
    /// Top log probabilities for every prompt position (vLLM extension).
    pub prompt_logprobs: u32,
    /// Key the bonus token's alternatives by id rather than text (vLLM extension).
    pub return_tokens_as_token_ids: bool,
    /// Never stream.
    pub stream: bool,
}

/// Builds the request body for one round.
pub fn request_body<'a>(req: &VerifyRequest<'a>) -> VllmVerifyBody<'a> {
    let mut prompt = Vec::with_capacity(req.prefix.len() + req.draft.len());
    prompt.extend_from_slice(req.prefix);
    prompt.extend_from_slice(req.draft);
    let k = req.top_k.max(1);
    VllmVerifyBody {
        model: req.model,
        prompt,
        max_tokens: 1,
        temperature: 0.0,
        logprobs: k,
        prompt_logprobs: k,
        return_tokens_as_token_ids: true,
        stream: false,
    }
}

/// Parses a vLLM completions answer for a round with `prefix_len` committed and `draft_len`
/// draft tokens.
pub fn parse_response(
    provider: &str,
    body: &Value,
    prefix_len: usize,
    draft_len: usize,
) -> Result<VerifyResponse, ProviderError> {
    let choice = body
        .pointer("/choices/0")
        .ok_or_else(|| decode_error(provider, "vllm response has no choices"))?;
    let mut positions = Vec::with_capacity(draft_len + 1);
    if draft_len > 0 {
        let prompt = choice
            .get("prompt_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                decode_error(
                    provider,
                    "vllm response has no prompt_logprobs (is the server vLLM with prompt_logprobs support?)",
                )
            })?;
        if prompt.len() != prefix_len + draft_len {
            return Err(decode_error(
                provider,
                format!(
                    "vllm prompt_logprobs has {} entries for a {}-token prompt",
                    prompt.len(),
                    prefix_len + draft_len
                ),
            ));
        }
        for (i, entry) in prompt[prefix_len..].iter().enumerate() {
            positions.push(parse_prompt_position(provider, entry, prefix_len + i)?);
        }
    }
    let bonus = choice
        .pointer("/logprobs/top_logprobs/0")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            decode_error(
                provider,
                "vllm response has no logprobs for the bonus token",
            )
        })?;
    let mut top: TopLogprobs = Vec::with_capacity(bonus.len());
    for (key, lp) in bonus {
        let id = parse_token_key(key).ok_or_else(|| {
            decode_error(
                provider,
                format!("vllm top_logprobs key `{key}` is not a token id (return_tokens_as_token_ids ignored?)"),
            )
        })?;
        let lp = lp
            .as_f64()
            .ok_or_else(|| decode_error(provider, "vllm top_logprobs value is not a number"))?;
        top.push((id, lp as f32));
    }
    sort_best_first(&mut top);
    positions.push(top);
    let response = VerifyResponse {
        positions,
        usage: parse_usage(body.get("usage")),
    };
    response.check(draft_len, provider)
}

fn parse_prompt_position(
    provider: &str,
    entry: &Value,
    index: usize,
) -> Result<TopLogprobs, ProviderError> {
    let map = entry.as_object().ok_or_else(|| {
        decode_error(
            provider,
            format!("vllm prompt_logprobs[{index}] is not an object"),
        )
    })?;
    let mut top: TopLogprobs = Vec::with_capacity(map.len());
    for (key, v) in map {
        let id = parse_token_key(key).ok_or_else(|| {
            decode_error(
                provider,
                format!("vllm prompt_logprobs[{index}] key `{key}` is not a token id"),
            )
        })?;
        let lp = v.get("logprob").and_then(Value::as_f64).ok_or_else(|| {
            decode_error(
                provider,
                format!("vllm prompt_logprobs[{index}] has no logprob"),
            )
        })?;
        top.push((id, lp as f32));
    }
    sort_best_first(&mut top);
    Ok(top)
}

/// `"123"` or `"token_id:123"`.
fn parse_token_key(key: &str) -> Option<u32> {
    key.strip_prefix("token_id:").unwrap_or(key).parse().ok()
}

/// OpenAI-shaped usage with vLLM's `prompt_tokens_details.cached_tokens`.
fn parse_usage(usage: Option<&Value>) -> Usage {
    let field = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    match usage {
        None => Usage::default(),
        Some(u) => Usage {
            prompt_tokens: field(u.get("prompt_tokens")),
            completion_tokens: field(u.get("completion_tokens")),
            cached_prompt_tokens: field(u.pointer("/prompt_tokens_details/cached_tokens")),
            ..Usage::default()
        },
    }
}

/// Scores one round on a vLLM (or any server speaking its completions extensions):
/// `completions` under `endpoint`, whose base URL ends in `/v1`.
pub(super) async fn verify(
    endpoint: &Endpoint,
    req: &VerifyRequest<'_>,
) -> Result<VerifyResponse, ProviderError> {
    let value = endpoint.post("completions", &request_body(req)).await?;
    parse_response(endpoint.name(), &value, req.prefix.len(), req.draft.len())
}
