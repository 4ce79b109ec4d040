//! SGLang's native `/generate` as a verifier.
//!
//! The request sends `input_ids` (prefix plus draft), `return_logprob`, `top_logprobs_num` and
//! `logprob_start_len` one position before the draft: SGLang computes input log probabilities
//! only from there on, so its radix cache keeps serving the prefix. (One extra position makes the
//! first draft position's distribution present on servers that leave the first returned entry
//! empty.) `max_new_tokens: 1` at temperature 0 gives the bonus position.
//!
//! `meta_info.input_token_logprobs` holds `[logprob, token_id, text]` per position from
//! `logprob_start_len`; `input_top_logprobs` holds, per position, a list of such triples (or
//! `null`); `output_top_logprobs[0]` is the bonus position's.

use serde::Serialize;
use serde_json::Value;
use tandem_cloud_adapters::{ProviderError, Usage};

use super::{Endpoint, TopLogprobs, VerifyRequest, VerifyResponse, decode_error, sort_best_first};

/// Sampling settings of the request.
#[derive(Debug, Serialize)]
pub struct SglangSamplingParams {
    /// One token: the bonus.
    pub max_new_tokens: u32,
    /// Greedy.
    pub temperature: f32,
}

/// The request body.
#[derive(Debug, Serialize)]
pub struct SglangVerifyBody<'a> {
    /// Model name (ignored by single-model servers).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub model: &'a str,
    /// Prefix plus draft.
    pub input_ids: Vec<u32>,
    /// Sampling settings.
    pub sampling_params: SglangSamplingParams,
    /// Ask for log probabilities.
    pub return_logprob: bool,
    /// First prompt position to compute log probabilities for.
    pub logprob_start_len: usize,
    /// How many alternatives per position.
    pub top_logprobs_num: u32,
    /// Ids are enough; skip detokenizing each alternative.
    pub return_text_in_logprobs: bool,
}

/// Builds the request body for one round.
pub fn request_body<'a>(req: &VerifyRequest<'a>) -> SglangVerifyBody<'a> {
    let mut input_ids = Vec::with_capacity(req.prefix.len() + req.draft.len());
    input_ids.extend_from_slice(req.prefix);
    input_ids.extend_from_slice(req.draft);
    SglangVerifyBody {
        model: req.model,
        input_ids,
        sampling_params: SglangSamplingParams {
            max_new_tokens: 1,
            temperature: 0.0,
        },
        return_logprob: true,
        logprob_start_len: req.prefix.len().saturating_sub(1),
        top_logprobs_num: req.top_k.max(1),
        return_text_in_logprobs: false,
    }
}

/// Parses a `/generate` answer for a round whose draft is `draft`.
pub fn parse_response(
    provider: &str,
    body: &Value,
    draft: &[u32],
) -> Result<VerifyResponse, ProviderError> {
    // A batch answer is a list; a single request's is an object.
    let body = match body {
        Value::Array(items) => items
            .first()
            .ok_or_else(|| decode_error(provider, "sglang response is an empty list"))?,
        other => other,
    };
    let meta = body
        .get("meta_info")
        .ok_or_else(|| decode_error(provider, "sglang response has no meta_info"))?;
    let draft_len = draft.len();
    let mut positions = Vec::with_capacity(draft_len + 1);
    if draft_len > 0 {
        let tops = meta
            .get("input_top_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| decode_error(provider, "sglang response has no input_top_logprobs"))?;
        if tops.len() < draft_len {
            return Err(decode_error(
                provider,
                format!(
                    "sglang input_top_logprobs has {} entries for {draft_len} draft tokens",
                    tops.len()
                ),
            ));
        }
        // The last `draft_len` entries are the draft's positions; check their token ids.
        if let Some(tokens) = meta.get("input_token_logprobs").and_then(Value::as_array) {
            let tail = &tokens[tokens.len().saturating_sub(draft_len)..];
            for (entry, &want) in tail.iter().zip(draft) {
                let got = entry.get(1).and_then(Value::as_u64);
                if got.is_some_and(|g| g != u64::from(want)) {
                    return Err(decode_error(
                        provider,
                        format!(
                            "sglang input_token_logprobs names token {got:?} where the draft has {want}"
                        ),
                    ));
                }
            }
        }
        for entry in &tops[tops.len() - draft_len..] {
            positions.push(parse_triples(provider, entry)?);
        }
    }
    let bonus = meta
        .pointer("/output_top_logprobs/0")
        .ok_or_else(|| decode_error(provider, "sglang response has no output_top_logprobs"))?;
    positions.push(parse_triples(provider, bonus)?);
    let field = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    let response = VerifyResponse {
        positions,
        usage: Usage {
            prompt_tokens: field("prompt_tokens"),
            completion_tokens: field("completion_tokens"),
            cached_prompt_tokens: field("cached_tokens"),
            ..Usage::default()
        },
    };
    response.check(draft_len, provider)
}

/// `[[logprob, id, text], ...]` into `(id, logprob)` best first.
fn parse_triples(provider: &str, entry: &Value) -> Result<TopLogprobs, ProviderError> {
    let list = entry.as_array().ok_or_else(|| {
        decode_error(
            provider,
            "sglang top log probabilities are missing at a draft position",
        )
    })?;
    let mut top: TopLogprobs = Vec::with_capacity(list.len());
    for triple in list {
        let lp = triple.get(0).and_then(Value::as_f64);
        let id = triple.get(1).and_then(Value::as_u64);
        match (lp, id) {
            (Some(lp), Some(id)) => top.push((
                u32::try_from(id)
                    .map_err(|_| decode_error(provider, "sglang token id out of range"))?,
                lp as f32,
            )),
            _ => {
                return Err(decode_error(
                    provider,
                    "sglang log probability entry is not [logprob, id, text]",
                ));
            }
        }
    }
    sort_best_first(&mut top);
    Ok(top)
}

/// Scores one round on an SGLang server: `generate` under `endpoint` (the server root).
pub(super) async fn verify(
    endpoint: &Endpoint,
    req: &VerifyRequest<'_>,
) -> Result<VerifyResponse, ProviderError> {
    let value = endpoint.post("generate", &request_body(req)).await?;
    parse_response(endpoint.name(), &value, req.draft)
}
