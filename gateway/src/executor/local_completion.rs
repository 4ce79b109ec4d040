//! `/v1/completions` on the local model: text or token-id prompts, `suffix` (fill in the middle),
//! `echo`, `logprobs`, streaming, and the vLLM scoring form (`prompt_logprobs: k` with
//! `max_tokens` 0 or 1) that lets one Tandem verify drafts for another.

use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::{CompletionRequest, Prompt};
use tandem_cloud_adapters::{FinishReason, Usage};
use tandem_local_model::{Engine, FimInput, GenerateEvent, GenerateRequest, SamplingParams};

use super::completion::{CompletionOutput, LegacyLogprobs, LocalCompletion, LocalStream};
use super::engine::{engine_usage, finish_reason};
use crate::error::Error;

fn bad(message: impl Into<String>, param: &str) -> Error {
    Error::invalid(message, Some(param))
}

/// The prompt as token ids, with fill-in-the-middle tokens when there is a suffix.
pub fn prompt_tokens(engine: &Engine, request: &CompletionRequest) -> Result<Vec<u32>, Error> {
    let tok = engine.tokenizer();
    let vocab = tok.vocab_size() as u32;
    let mut tokens = match (&request.prompt, &request.suffix) {
        (Prompt::Text(text), None) => tok.encode(text, true),
        (Prompt::Text(text), Some(suffix)) => {
            let template = super::infill::template(engine, "suffix")?;
            let fim = FimInput {
                prefix: text,
                suffix,
                max_prefix_tokens: usize::MAX,
                max_suffix_tokens: usize::MAX,
                max_extra_tokens: usize::MAX,
                ..FimInput::default()
            };
            template
                .build(&fim, tok.adds_bos().then(|| tok.bos_id()).flatten(), |t| {
                    tok.encode_with(t, false, false)
                })
                .tokens
        }
        (Prompt::Tokens(ids), None) => ids.clone(),
        (Prompt::Tokens(_), Some(_)) => {
            return Err(bad("'suffix' needs a text prompt", "suffix"));
        }
    };
    if let Some(bad_id) = tokens.iter().find(|&&t| t >= vocab) {
        return Err(bad(
            format!("token id {bad_id} is outside the vocabulary (size {vocab})"),
            "prompt",
        ));
    }
    if tokens.is_empty() {
        // An empty text prompt starts from BOS (or the first token) so there is something to condition on.
        tokens.push(tok.bos_id().unwrap_or(0));
    }
    let context = engine.info().context_length;
    if tokens.len() >= context {
        return Err(super::engine::context_length_exceeded(
            tokens.len(),
            context,
            "prompt",
        ));
    }
    if tokens.len() + request.max_tokens as usize > context {
        return Err(bad(
            format!(
                "prompt ({} tokens) plus max_tokens ({}) exceeds the context of {context}",
                tokens.len(),
                request.max_tokens
            ),
            "max_tokens",
        ));
    }
    Ok(tokens)
}

/// vLLM-style `prompt_logprobs`: `null` for the first token, then per position a map from token
/// id to `{logprob, rank, decoded_token}` holding the actual token and the top alternatives.
async fn score_prompt(
    engine: &Engine,
    tokens: &[u32],
    k: u32,
) -> Result<(Vec<Value>, Vec<Option<f32>>, Vec<Value>), Error> {
    let tok = engine.tokenizer();
    let mut prompt_logprobs = vec![Value::Null];
    let mut token_logprobs = vec![None];
    let mut top_logprobs = vec![Value::Null];
    if tokens.len() > 1 {
        let scores = engine
            .score(&tokens[..1], &tokens[1..], k.max(1) as usize)
            .await
            .map_err(|e| Error::LocalModel(e.to_string()))?;
        for p in scores.positions {
            let mut entry = Map::new();
            let rank = p
                .top
                .iter()
                .position(|(id, _)| *id == p.token)
                .map_or(p.top.len() + 1, |r| r + 1);
            entry.insert(p.token.to_string(), json!({"logprob": p.logprob, "rank": rank, "decoded_token": tok.token_text(p.token)}));
            let mut top = Map::new();
            for (r, (id, lp)) in p.top.iter().take(k as usize).enumerate() {
                entry.entry(id.to_string()).or_insert_with(
                    || json!({"logprob": lp, "rank": r + 1, "decoded_token": tok.token_text(*id)}),
                );
                top.insert(tok.token_text(*id), json!(lp));
            }
            prompt_logprobs.push(Value::Object(entry));
            token_logprobs.push(Some(p.logprob));
            top_logprobs.push(Value::Object(top));
        }
    }
    Ok((prompt_logprobs, token_logprobs, top_logprobs))
}

/// Runs a completion on the engine for `backend`: the whole answer, or the stream of its events.
pub async fn complete(
    engine: &Engine,
    request: &CompletionRequest,
    backend: &str,
) -> Result<CompletionOutput, Error> {
    let tokens = prompt_tokens(engine, request)?;
    complete_prompt(engine, request, tokens, backend).await
}

/// [`complete`] with the prompt already laid out as tokens ([`prompt_tokens`]).
pub async fn complete_prompt(
    engine: &Engine,
    request: &CompletionRequest,
    tokens: Vec<u32>,
    backend: &str,
) -> Result<CompletionOutput, Error> {
    let tok = engine.tokenizer().clone();

    let wants_prompt_scores =
        request.prompt_logprobs.is_some() || (request.echo && request.logprobs.is_some());
    let (prompt_lp, prompt_token_lp, prompt_top) = if wants_prompt_scores {
        let k = request.prompt_logprobs.or(request.logprobs).unwrap_or(0);
        score_prompt(engine, &tokens, k).await?
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };

    let params = SamplingParams {
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0) as usize,
        seed: request.seed,
        max_tokens: request.max_tokens as usize,
        stop: request.stop.clone(),
        logprobs: request.logprobs.map(|k| k as usize),
        // A code model that goes on to the next file or pads is done with the middle.
        stop_token_ids: match request.suffix {
            Some(_) => super::infill::template(engine, "suffix")?.stop_tokens,
            None => Vec::new(),
        },
        ..SamplingParams::default()
    };
    let echo_text = if request.echo {
        tok.decode(&tokens)
    } else {
        String::new()
    };

    if request.stream {
        if request.max_tokens == 0 {
            return Err(bad("a stream needs max_tokens > 0", "max_tokens"));
        }
        let rx = engine
            .generate(GenerateRequest {
                prompt: tokens,
                params,
            })
            .map_err(|e| Error::LocalModel(e.to_string()))?;
        return Ok(CompletionOutput::LocalStream(LocalStream {
            echo: (!echo_text.is_empty()).then_some(echo_text),
            events: rx,
        }));
    }

    let mut text = echo_text.clone();
    let mut logprobs = LegacyLogprobs::default();
    if request.echo && request.logprobs.is_some() {
        for (i, t) in tokens.iter().enumerate() {
            let name = if request.return_tokens_as_token_ids {
                format!("token_id:{t}")
            } else {
                tok.token_text(*t)
            };
            logprobs.push(
                name,
                prompt_token_lp.get(i).copied().flatten(),
                prompt_top.get(i).cloned().unwrap_or(Value::Null),
            );
        }
    }
    let mut usage = Usage {
        prompt_tokens: tokens.len() as u64,
        ..Usage::default()
    };
    let mut finish = FinishReason::Length;
    if request.max_tokens > 0 {
        let mut rx = engine
            .generate(GenerateRequest {
                prompt: tokens,
                params,
            })
            .map_err(|e| Error::LocalModel(e.to_string()))?;
        loop {
            match rx.recv().await {
                Some(GenerateEvent::Token {
                    id: token_id,
                    text: t,
                    logprob,
                }) => {
                    let as_ids = request.return_tokens_as_token_ids;
                    let name = |id: u32, token: &str| {
                        if as_ids {
                            format!("token_id:{id}")
                        } else {
                            token.to_owned()
                        }
                    };
                    text.push_str(&if as_ids { name(token_id, "") } else { t });
                    if let Some(lp) = logprob {
                        let top: Map<String, Value> = lp
                            .top_logprobs
                            .iter()
                            .map(|a| (name(a.id, &a.token), json!(a.logprob)))
                            .collect();
                        logprobs.push(
                            name(token_id, &lp.token),
                            Some(lp.logprob),
                            Value::Object(top),
                        );
                    }
                }
                Some(GenerateEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_prompt_tokens,
                    cpu_seconds,
                }) => {
                    if let Some(scope) = crate::observe::current() {
                        scope.meter.add_local_cpu(backend, cpu_seconds);
                    }
                    finish = finish_reason(reason);
                    usage = engine_usage(prompt_tokens, completion_tokens, cached_prompt_tokens);
                    break;
                }
                Some(GenerateEvent::Error(e)) => return Err(Error::LocalModel(e)),
                None => {
                    return Err(Error::LocalModel(
                        "the engine stopped mid-generation".into(),
                    ));
                }
            }
        }
    }
    Ok(CompletionOutput::Local(LocalCompletion {
        text,
        logprobs: request.logprobs.is_some().then_some(logprobs),
        prompt_logprobs: request.prompt_logprobs.is_some().then_some(prompt_lp),
        finish,
        usage,
    }))
}
