//! `POST /v1/completions` on the local model: text or token-id prompts, `suffix` (fill in the
//! middle), `echo`, `logprobs`, streaming, and the vLLM scoring form (`prompt_logprobs: k` with
//! `max_tokens` 0 or 1) that lets one Tandem verify drafts for another.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::{
    self, CompletionChunkEncoder, CompletionRequest, Prompt, encode_completion_response,
};
use tandem_cloud_adapters::{Usage, unix_now};
use tandem_local_model::{Engine, GenerateEvent, GenerateRequest, SamplingParams};

use super::chat::{Encoder, encoded_sse_body, record_usage};
use super::{json_response, mark_route, read_body, request_id, sse_response, wire_error};
use crate::config::BackendKind;
use crate::context::FirstTokenDeadline;
use crate::dispatch::{route_for, with_fallback};
use crate::error::{ApiFlavor, Error};
use crate::executor::Executor;
use crate::routing::RequestHints;
use crate::state::{AppState, RequestRecord};

fn bad(message: impl Into<String>, param: &str) -> Error {
    Error::invalid(message, Some(param))
}

/// Decodes a client's `/v1/completions` body; a value the API does not support (`n` > 1, a batch
/// of prompts) is a 400 naming it as unsupported.
pub fn decode(bytes: &[u8]) -> Result<CompletionRequest, Error> {
    openai::decode_completion_request(bytes).map_err(|e| match e.code {
        "unsupported_value" => Error::Unsupported {
            message: e.message,
            param: e.param.unwrap_or_default(),
        },
        _ => wire_error(e),
    })
}

/// `POST /v1/completions`: the route's backends in order. The local model answers itself; a cloud
/// backend speaking OpenAI's API gets the client's body as it is (model mapped); backends without
/// the legacy API are skipped, and a retryable failure moves on when the route allows fallback.
pub async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    // A stream stops waiting for upstream headers at the first-token deadline.
    let deadline = parts
        .extensions
        .get::<FirstTokenDeadline>()
        .map(|d| (d.at, d.error()));
    // Errors before a route was found carry no route; after, the route says where it failed.
    let result = async {
        let bytes = read_body(&parts, body).await?;
        let request = decode(&bytes)?;
        let hints = RequestHints::from_parts(id.0.clone(), &parts)?;
        let (executors, fallback) = route_for(&state, &request.model, &hints)?;
        if let Some(slot) = &hints.route_slot {
            slot.note_route(&request.model);
        }
        // A backend without the legacy API answers Unsupported, and the next one is tried.
        let (answer, route) = with_fallback(
            &state,
            executors,
            fallback,
            format!("route {}", request.model),
            false,
            hints.route_slot.as_ref(),
            |executor, _last| {
                let (state, bytes, request, deadline) =
                    (&state, &bytes, &request, deadline.clone());
                async move {
                    if executor.kind() == BackendKind::Local {
                        run_local(state, request.clone(), executor.backend()).await
                    } else {
                        run_cloud(state, executor.as_ref(), bytes, request, deadline).await
                    }
                }
            },
        )
        .await;
        Ok::<_, Error>((answer, route, request.model))
    }
    .await;
    match result {
        Err(e) => e.into_response_for(ApiFlavor::OpenAi),
        Ok((answer, route, model)) => {
            let answered = answer.is_ok();
            let mut response = answer.unwrap_or_else(|e| e.into_response_for(ApiFlavor::OpenAi));
            mark_route(&mut response, &route, &model);
            if answered {
                state.requests.insert(
                    id.0.clone(),
                    RequestRecord {
                        model,
                        backend: route.backend.clone(),
                    },
                );
            }
            response
        }
    }
}

/// Answers on the in-process model.
async fn run_local(
    state: &Arc<AppState>,
    request: CompletionRequest,
    backend: &str,
) -> Result<Response, Error> {
    let engine = state
        .local
        .as_ref()
        .ok_or_else(|| Error::NotReady("no local model configured".into()))?
        .engine()?;
    run(state, engine, request, backend).await
}

/// Forwards the client's body to a cloud backend and encodes its answer as `text_completion`.
async fn run_cloud(
    state: &Arc<AppState>,
    executor: &dyn Executor,
    bytes: &[u8],
    request: &CompletionRequest,
    deadline: Option<(tokio::time::Instant, Error)>,
) -> Result<Response, Error> {
    let body = match serde_json::from_slice(bytes) {
        Ok(Value::Object(body)) => body,
        _ => return Err(Error::invalid("the body must be a JSON object", None)),
    };
    let backend = executor.backend().to_owned();
    if request.stream {
        let events = match deadline {
            Some((at, late)) => tokio::time::timeout_at(at, executor.completions_stream(body))
                .await
                .unwrap_or(Err(late))?,
            None => executor.completions_stream(body).await?,
        };
        let encoder = Encoder::Completion(CompletionChunkEncoder::new(request.include_usage));
        let body = encoded_sse_body(
            state.clone(),
            events,
            encoder,
            request.model.clone(),
            backend,
        );
        Ok(sse_response(body))
    } else {
        let answer = executor.completions(body).await?;
        record_usage(state, &request.model, &backend, &answer.usage);
        let mut response = Response::new(Body::from(encode_completion_response(&answer, None)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

/// The prompt as token ids, with fill-in-the-middle tokens when there is a suffix.
fn prompt_tokens(engine: &Engine, request: &CompletionRequest) -> Result<Vec<u32>, Error> {
    let tok = engine.tokenizer();
    let vocab = tok.vocab_size() as u32;
    let mut tokens = match (&request.prompt, &request.suffix) {
        (Prompt::Text(text), None) => tok.encode(text, true),
        (Prompt::Text(text), Some(suffix)) => {
            let (Some(pre), Some(suf), Some(mid)) = (
                tok.token_id("<fim_prefix>"),
                tok.token_id("<fim_suffix>"),
                tok.token_id("<fim_middle>"),
            ) else {
                return Err(Error::Unsupported {
                    message: "this local model has no fill-in-the-middle tokens".into(),
                    param: "suffix".into(),
                });
            };
            let mut t = vec![pre];
            t.extend(tok.encode_with(text, false, false));
            t.push(suf);
            t.extend(tok.encode_with(suffix, false, false));
            t.push(mid);
            t
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

/// OpenAI legacy `logprobs` object over some tokens.
#[derive(Default)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl LegacyLogprobs {
    fn push(&mut self, token: String, logprob: Option<f32>, top: Value) {
        self.text_offset.push(self.offset);
        self.offset += token.len();
        self.tokens.push(token);
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(top);
    }

    fn to_json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs,
               "top_logprobs": self.top_logprobs, "text_offset": self.text_offset})
    }
}

async fn run(
    state: &Arc<AppState>,
    engine: Engine,
    request: CompletionRequest,
    backend: &str,
) -> Result<Response, Error> {
    let tokens = prompt_tokens(&engine, &request)?;
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let tok = engine.tokenizer().clone();

    let wants_prompt_scores =
        request.prompt_logprobs.is_some() || (request.echo && request.logprobs.is_some());
    let (prompt_lp, prompt_token_lp, prompt_top) = if wants_prompt_scores {
        let k = request.prompt_logprobs.or(request.logprobs).unwrap_or(0);
        score_prompt(&engine, &tokens, k).await?
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
        return Ok(stream_response(
            state.clone(),
            rx,
            id,
            created,
            request,
            echo_text,
            backend.to_owned(),
        ));
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
    let mut finish = "length";
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
                }) => {
                    finish = if reason == tandem_local_model::FinishReason::Length {
                        "length"
                    } else {
                        "stop"
                    };
                    usage = Usage {
                        prompt_tokens: prompt_tokens as u64,
                        completion_tokens: completion_tokens as u64,
                        cached_prompt_tokens: cached_prompt_tokens as u64,
                        ..Usage::default()
                    };
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
    record_usage(state, &request.model, backend, &usage);
    let mut choice = json!({
        "index": 0,
        "text": text,
        "logprobs": if request.logprobs.is_some() { logprobs.to_json() } else { Value::Null },
        "finish_reason": finish,
    });
    if request.prompt_logprobs.is_some() {
        choice["prompt_logprobs"] = Value::Array(prompt_lp);
    }
    let mut usage_json = json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens()});
    if usage.cached_prompt_tokens > 0 {
        usage_json["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_prompt_tokens});
    }
    Ok(json_response(&json!({
        "id": id, "object": "text_completion", "created": created, "model": request.model,
        "choices": [choice], "usage": usage_json,
    })))
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    logprobs: Value,
    finish: Option<&str>,
) -> Bytes {
    let v = json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]});
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(
    state: Arc<AppState>,
    rx: tokio::sync::mpsc::Receiver<GenerateEvent>,
    id: String,
    created: u64,
    request: CompletionRequest,
    echo_text: String,
    backend: String,
) -> Response {
    struct S {
        rx: Option<tokio::sync::mpsc::Receiver<GenerateEvent>>,
        echo: Option<String>,
        id: String,
        created: u64,
        model: String,
        include_usage: bool,
        state: Arc<AppState>,
        backend: String,
    }
    let s = S {
        rx: Some(rx),
        echo: (!echo_text.is_empty()).then_some(echo_text),
        id,
        created,
        model: request.model,
        include_usage: request.include_usage,
        state,
        backend,
    };
    let frames = futures::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(echo) = s.echo.take() {
                return Some((
                    Ok::<_, Infallible>(chunk(
                        &s.id,
                        s.created,
                        &s.model,
                        &echo,
                        Value::Null,
                        None,
                    )),
                    s,
                ));
            }
            let rx = s.rx.as_mut()?;
            let frame = match rx.recv().await {
                Some(GenerateEvent::Token { text, logprob, .. }) => {
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let lp = logprob.map_or(Value::Null, |lp| {
                        let top: Map<String, Value> = lp.top_logprobs.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect();
                        json!({"tokens": [lp.token], "token_logprobs": [lp.logprob], "top_logprobs": [top], "text_offset": [0]})
                    });
                    chunk(&s.id, s.created, &s.model, &text, lp, None)
                }
                Some(GenerateEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_prompt_tokens,
                }) => {
                    s.rx = None;
                    let usage = Usage {
                        prompt_tokens: prompt_tokens as u64,
                        completion_tokens: completion_tokens as u64,
                        cached_prompt_tokens: cached_prompt_tokens as u64,
                        ..Usage::default()
                    };
                    record_usage(&s.state, &s.model, &s.backend, &usage);
                    let finish = if reason == tandem_local_model::FinishReason::Length {
                        "length"
                    } else {
                        "stop"
                    };
                    let mut out =
                        chunk(&s.id, s.created, &s.model, "", Value::Null, Some(finish)).to_vec();
                    if s.include_usage {
                        let u = json!({"id": s.id, "object": "text_completion", "created": s.created, "model": s.model, "choices": [],
                                       "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens()}});
                        out.extend_from_slice(format!("data: {u}\n\n").as_bytes());
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    Bytes::from(out)
                }
                Some(GenerateEvent::Error(e)) => {
                    s.rx = None;
                    Error::LocalModel(e).sse_frame(ApiFlavor::OpenAi)
                }
                None => {
                    s.rx = None;
                    Error::LocalModel("the engine stopped mid-generation".into())
                        .sse_frame(ApiFlavor::OpenAi)
                }
            };
            return Some((Ok(frame), s));
        }
    });
    sse_response(Body::from_stream(frames.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_scoring_form() {
        let r = decode(
            br#"{"model":"local","prompt":[1,2,3],"prompt_logprobs":5,"echo":true,"max_tokens":0}"#,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(
            (r.prompt_logprobs, r.echo, r.max_tokens),
            (Some(5), true, 0)
        );
        let r = decode(br#"{"model":"local","prompt":[[4,5]],"top_k":-1}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![4, 5]));
        assert_eq!(r.top_k, None);
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(decode(b"{").is_err());
        assert!(decode(br#"{"prompt":"x"}"#).is_err());
        assert_eq!(
            decode(br#"{"model":"m","prompt":"x","n":2}"#)
                .unwrap_err()
                .metric_label(),
            "unsupported_parameter"
        );
        assert!(decode(br#"{"model":"m","prompt":[-1]}"#).is_err());
        assert!(decode(br#"{"model":"m","prompt":"x","max_tokens":"ten"}"#).is_err());
        assert!(decode(br#"{"model":"m","prompt":"x","logprobs":50}"#).is_err());
    }
}
