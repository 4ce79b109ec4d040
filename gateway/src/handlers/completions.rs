//! `POST /v1/completions`: decode, dispatch, encode. The local model's answer carries what only it
//! reports (prompt scores, tokens named by id) and is encoded here; an upstream's answer goes
//! through the shared legacy encoder.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::{
    self, CompletionChunkEncoder, CompletionRequest, encode_completion_response, finish_reason_str,
};
use tandem_cloud_adapters::unix_now;
use tandem_local_model::GenerateEvent;

use super::chat::{Encoder, encoded_sse_body, record_usage, refuse_audited};
use super::{
    finish_response, json_bytes_response, json_response, read_body, request_id, sse_response,
    wire_error,
};
use crate::audit::PendingAudit;
use crate::context::FirstTokenDeadline;
use crate::controls::Ticket;
use crate::dispatch::run_completion;
use crate::error::{ApiFlavor, Error};
use crate::executor::completion::{LocalCompletion, LocalStream};
use crate::executor::engine::{engine_usage, finish_reason};
use crate::executor::{CompletionCall, CompletionOutput};
use crate::observe::RequestMeter;
use crate::routing::RequestHints;
use crate::state::AppState;

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

/// `POST /v1/completions`: decode, dispatch through the route's plan (the policy's on a learned
/// route), encode the executor's answer as `text_completion` JSON or SSE chunks.
pub async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    // Each try of a stream stops waiting for upstream headers after the first-token timeout.
    let deadline = parts.extensions.get::<FirstTokenDeadline>().copied();
    // Errors before dispatch carry no route; after, the route says where it failed.
    let call = async {
        let bytes = read_body(&parts, body).await?;
        let request = decode(&bytes)?;
        let body = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(body)) => body,
            _ => return Err(Error::invalid("the body must be a JSON object", None)),
        };
        let hints = RequestHints::from_parts(id.0.clone(), &parts)?;
        Ok((CompletionCall { request, body }, hints))
    }
    .await;
    let mut audit = PendingAudit::arriving(&parts, id.0.clone(), "/v1/completions");
    let (call, hints) = match call {
        Ok(c) => c,
        Err(e) => return refuse_audited(&state, audit, e, ApiFlavor::OpenAi),
    };
    let ticket = parts.extensions.get::<Ticket>().cloned();
    let (result, route) = run_completion(&state, &call, &hints, deadline).await;
    let model = call.request.model.clone();
    let answered = result.is_ok();
    let mut response = match result {
        Ok(output) => encode(
            &state,
            output,
            call.request,
            &route.backend,
            hints.meter.clone(),
            ticket,
        ),
        Err(e) => e.into_response_for(ApiFlavor::OpenAi),
    };
    // Legacy completions are audited when answered, without their token counts.
    if let Some(log) = &state.audit {
        audit.model = model.clone();
        audit.status = response.status().as_u16();
        audit.route = route.audited();
        audit.write(log, None, 0.0);
    }
    finish_response(&state, &mut response, &id, &route, model, answered);
    response
}

/// Encodes an executor's answer for the client, counting its usage.
fn encode(
    state: &Arc<AppState>,
    output: CompletionOutput,
    request: CompletionRequest,
    backend: &str,
    meter: Option<Arc<RequestMeter>>,
    ticket: Option<Ticket>,
) -> Response {
    match output {
        CompletionOutput::Answer(answer) => {
            record_usage(
                state,
                &request.model,
                backend,
                &answer.usage,
                meter.as_deref(),
                ticket.as_ref(),
            );
            json_bytes_response(encode_completion_response(&answer, None))
        }
        CompletionOutput::Events(events) => {
            let encoder = Encoder::Completion(CompletionChunkEncoder::new(request.include_usage));
            let body = encoded_sse_body(
                state.clone(),
                events,
                encoder,
                request.model,
                backend.to_owned(),
                meter,
                ticket,
            );
            sse_response(body)
        }
        CompletionOutput::Local(answer) => {
            record_usage(
                state,
                &request.model,
                backend,
                &answer.usage,
                meter.as_deref(),
                ticket.as_ref(),
            );
            json_response(&local_body(&request.model, answer))
        }
        CompletionOutput::LocalStream(stream) => stream_response(
            state.clone(),
            stream,
            request,
            backend.to_owned(),
            meter,
            ticket,
        ),
    }
}

/// The local model's whole answer as a `text_completion` object.
fn local_body(model: &str, answer: LocalCompletion) -> Value {
    let mut choice = json!({
        "index": 0,
        "text": answer.text,
        "logprobs": answer.logprobs.map_or(Value::Null, |l| l.to_json()),
        "finish_reason": finish_reason_str(answer.finish),
    });
    if let Some(prompt_logprobs) = answer.prompt_logprobs {
        choice["prompt_logprobs"] = Value::Array(prompt_logprobs);
    }
    let usage = &answer.usage;
    let mut usage_json = json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens()});
    if usage.cached_prompt_tokens > 0 {
        usage_json["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_prompt_tokens});
    }
    json!({
        "id": completion_id(), "object": "text_completion", "created": unix_now(), "model": model,
        "choices": [choice], "usage": usage_json,
    })
}

/// A fresh `cmpl-` id.
fn completion_id() -> String {
    format!("cmpl-{}", uuid::Uuid::new_v4().simple())
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
    stream: LocalStream,
    request: CompletionRequest,
    backend: String,
    meter: Option<Arc<RequestMeter>>,
    ticket: Option<Ticket>,
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
        meter: Option<Arc<RequestMeter>>,
        ticket: Option<Ticket>,
    }
    let s = S {
        rx: Some(stream.events),
        echo: stream.echo,
        id: completion_id(),
        created: unix_now(),
        model: request.model,
        include_usage: request.include_usage,
        state,
        backend,
        meter,
        ticket,
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
                    cpu_seconds,
                }) => {
                    s.rx = None;
                    if let Some(m) = &s.meter {
                        m.add_local_cpu(&s.backend, cpu_seconds);
                    }
                    let usage =
                        engine_usage(prompt_tokens, completion_tokens, cached_prompt_tokens);
                    record_usage(
                        &s.state,
                        &s.model,
                        &s.backend,
                        &usage,
                        s.meter.as_deref(),
                        s.ticket.as_ref(),
                    );
                    let finish = finish_reason_str(finish_reason(reason));
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
    use tandem_cloud_adapters::openai::Prompt;

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
