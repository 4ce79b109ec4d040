//! OpenAI's Responses API: `POST /v1/responses` (decoded into the normalized request, run
//! through dispatch like chat, encoded as a `response` object or its typed events; OpenAI's own
//! Responses API gets the body as it came), and the stored responses: `GET` and `DELETE
//! /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::{
    ResponseHead, ResponsesEncoder, ResponsesRequest, decode_responses_request, encode_response,
    usage_from_json,
};
use tandem_cloud_adapters::{ByteStream, Message, Usage, sse};

use super::chat::{
    Encoder, ResponseHook, StreamAccounting, record_usage, refuse_audited, sse_stream_body,
    write_audit,
};
use super::{
    finish_response, json_bytes_response, json_response, read_body, request_id, sse_response,
    wire_error,
};
use crate::audit::PendingAudit;
use crate::context::FirstTokenDeadline;
use crate::dispatch::{NativeResponses, ResponsesOutput, run_responses};
use crate::error::{ApiFlavor, Error};
use crate::executor::Forwarded;
use crate::routing::RequestHints;
use crate::state::AppState;
use crate::stored_responses::{self, HeldUpstream, StoredResponse, output_message};

/// `POST /v1/responses`.
pub async fn create(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    let decoded = match read_body(&parts, body).await {
        Ok(bytes) => decode_responses_request(&bytes).map_err(wire_error),
        Err(e) => Err(e),
    };
    let decoded = decoded
        .and_then(|r| RequestHints::from_parts(id.0.clone(), &parts).map(|hints| (r, hints)));
    let mut audit = PendingAudit::arriving(&parts, id.0.clone(), "/v1/responses");
    let (request, hints) = match decoded {
        Ok(d) => d,
        Err(e) => return refuse_audited(&state, audit, e, ApiFlavor::OpenAi),
    };
    let model = request.chat.model.clone();
    audit.model = model.clone();
    let deadline = parts.extensions.get::<FirstTokenDeadline>().copied();
    let (result, route) = answer(&state, request, &hints, deadline, &audit).await;
    let mut response = match result {
        Ok(response) => response,
        Err(e) => in_responses_terms(e).into_response_for(ApiFlavor::OpenAi),
    };
    let answered = response.status().is_success();
    // An answer's record is written with its tokens (a stream's when it ends); a refusal's here.
    if !answered {
        audit.status = response.status().as_u16();
        audit.route = route.audited();
        write_audit(&state, &audit, None, 0.0);
    }
    finish_response(&state, &mut response, &id, &route, model, answered);
    response
}

/// Runs a decoded request: its previous response's conversation first, then dispatch; an
/// answer's audit record (`audit`, as it arrived) is written with its tokens.
async fn answer(
    state: &Arc<AppState>,
    request: ResponsesRequest,
    hints: &RequestHints,
    deadline: Option<FirstTokenDeadline>,
    audit: &PendingAudit,
) -> (Result<Response, Error>, crate::dispatch::RouteInfo) {
    let model = audit.model.as_str();
    let no_route = |e: Error| {
        let route = crate::dispatch::RouteInfo::unrouted("no route");
        (Err(e), route)
    };
    let previous = match &request.previous_response_id {
        None => None,
        Some(pid) => match stored_responses::load(&*state.store, pid).await {
            Ok(Some(stored)) => Some(stored),
            // Perhaps OpenAI's own: only its Responses API can continue it.
            Ok(None) if route_passes_through(state, model) => None,
            Ok(None) => {
                return no_route(Error::ResponseNotFound {
                    id: pid.clone(),
                    param: Some("previous_response_id"),
                });
            }
            Err(e) => return no_route(e),
        },
    };
    let continues_ours = previous.is_some();
    // The items of the whole conversation: those of the responses it continues (their inputs
    // and outputs), then this request's.
    let mut input_items = Vec::new();
    let mut conversation = Vec::new();
    if let Some(p) = previous {
        input_items = p.input_items;
        input_items.extend(
            p.response["output"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
        conversation = p.conversation;
    }
    input_items.extend(request.input_items.iter().cloned());
    let chat = request.chat_request(&conversation);
    conversation.extend(request.chat.messages.iter().cloned());
    let native = NativeResponses {
        // A conversation stored here is ours to continue, not OpenAI's.
        body: (!continues_ours).then_some(&request.body),
        openai_only: request.openai_only.as_ref(),
    };
    let head = ResponseHead::new(model, echo(&request));
    let (result, route) = run_responses(state, chat, native, hints, deadline).await;
    let mut audit = audit.clone();
    audit.status = 200;
    audit.route = route.audited();
    let keep = request.store.then(|| Kept {
        state: state.clone(),
        input_items,
        conversation,
    });
    // Where OpenAI's own Responses API keeps what it answers, for the stored-response calls.
    let held = request.store.then(|| Held {
        state: state.clone(),
        upstream: HeldUpstream {
            backend: route.backend.clone(),
            model: model.to_owned(),
        },
    });
    // A whole answer is stored (or where it is kept noted) before it is sent, so a follow-up
    // can name it at once.
    let (result, keep) = match result {
        Ok(ResponsesOutput::Whole(answer)) => {
            let cost = record_usage(
                state,
                model,
                &route.backend,
                &answer.usage,
                hints.meter.as_deref(),
                hints.ticket.as_ref(),
            );
            write_audit(state, &audit, Some(&answer.usage), cost);
            let value = encode_response(&head, &answer);
            if let Some(keep) = keep {
                keep.save_now(value.clone()).await;
            }
            return (Ok(json_response(&value)), route);
        }
        Ok(ResponsesOutput::Passed(Forwarded::Whole(body))) => {
            let usage = passed_usage(&body);
            let cost = record_usage(
                state,
                model,
                &route.backend,
                &usage,
                hints.meter.as_deref(),
                hints.ticket.as_ref(),
            );
            write_audit(state, &audit, Some(&usage), cost);
            if let Some(held) = held {
                held.note_now(&serde_json::from_slice(&body).unwrap_or_default())
                    .await;
            }
            return (Ok(json_bytes_response(body)), route);
        }
        other => (other, keep),
    };
    let response = result.map(|output| match output {
        ResponsesOutput::Events(events) => {
            let hook = keep.map(|keep| {
                Box::new(move |encoder: &ResponsesEncoder| {
                    if let Some(value) = encoder.response() {
                        keep.save(value.clone());
                    }
                }) as ResponseHook
            });
            let encoder = Encoder::Responses(ResponsesEncoder::new(head), hook);
            let body = sse_stream_body(
                state.clone(),
                events,
                encoder,
                (model.to_owned(), route.backend.clone()),
                (hints.meter.clone(), hints.ticket.clone(), Some(audit)),
            );
            sse_response(body)
        }
        ResponsesOutput::Whole(_) | ResponsesOutput::Passed(Forwarded::Whole(_)) => {
            Error::Internal("a whole answer was answered above".into())
                .into_response_for(ApiFlavor::OpenAi)
        }
        ResponsesOutput::Passed(Forwarded::Stream(bytes)) => {
            let accounting = StreamAccounting::new(
                state.clone(),
                (model.to_owned(), route.backend.clone()),
                (hints.meter.clone(), hints.ticket.clone(), Some(audit)),
            );
            sse_response(Body::from_stream(never_silent(bytes, accounting, held)))
        }
    });
    (response, route)
}

/// What is needed to store a response once it is whole.
struct Kept {
    state: Arc<AppState>,
    input_items: Vec<Value>,
    conversation: Vec<Message>,
}

impl Kept {
    /// Stores `response` in the background (a stream's end does not wait for it).
    fn save(self, response: Value) {
        tokio::spawn(self.save_now(response));
    }

    /// Stores `response`; a failure is logged (the answer stands without it).
    async fn save_now(self, response: Value) {
        let mut conversation = self.conversation;
        conversation.extend(output_message(&response));
        let stored = StoredResponse {
            response,
            input_items: self.input_items,
            conversation,
        };
        if let Err(e) = stored_responses::save(&*self.state.store, &stored).await {
            tracing::warn!(error = %e, "cannot store a response");
        }
    }
}

/// Whether a backend of route `model` takes Responses requests as they are (OpenAI's own).
fn route_passes_through(state: &AppState, model: &str) -> bool {
    state.config.routes.get(model).is_some_and(|route| {
        route.backends.iter().any(|b| {
            state
                .executors
                .get(b)
                .is_some_and(|e| e.passes_through(tandem_cloud_adapters::Api::Responses))
        })
    })
}

/// The request fields a `response` object echoes, with OpenAI's defaults.
fn echo(r: &ResponsesRequest) -> Map<String, Value> {
    let chat = &r.chat;
    let mut m = Map::new();
    m.insert("instructions".into(), json!(r.instructions));
    m.insert("max_output_tokens".into(), json!(chat.max_tokens));
    m.insert("metadata".into(), r.metadata.clone());
    m.insert(
        "parallel_tool_calls".into(),
        json!(chat.parallel_tool_calls.unwrap_or(true)),
    );
    m.insert("previous_response_id".into(), json!(r.previous_response_id));
    m.insert("reasoning".into(), json!({"effort": null, "summary": null}));
    m.insert("store".into(), json!(r.store));
    m.insert("temperature".into(), json!(chat.temperature.unwrap_or(1.0)));
    m.insert("text".into(), r.text.clone());
    m.insert("tool_choice".into(), r.tool_choice.clone());
    m.insert("tools".into(), r.tools.clone());
    m.insert("top_p".into(), json!(chat.top_p.unwrap_or(1.0)));
    m.insert("truncation".into(), r.truncation.clone());
    m.insert("user".into(), json!(chat.user));
    m
}

/// An error about the normalized request, named as the Responses API names its fields.
fn in_responses_terms(e: Error) -> Error {
    let rename = |param: &str| -> Option<String> {
        let renamed = match param {
            "response_format" => "text.format",
            "max_tokens" => "max_output_tokens",
            // A message's index counts instructions and earlier turns: the input is named.
            p if p == "messages" || p.starts_with("messages[") => "input",
            _ => return None,
        };
        Some(renamed.to_owned())
    };
    match e {
        Error::Unsupported { message, param } => match rename(&param) {
            Some(p) => Error::Unsupported {
                message: message.replace(&format!("`{param}`"), &format!("`{p}`")),
                param: p,
            },
            None => Error::Unsupported { message, param },
        },
        Error::InvalidRequest {
            message,
            param: Some(param),
            code,
        } => match rename(&param) {
            Some(p) => Error::InvalidRequest {
                message: message.replace(&param, &p),
                param: Some(p),
                code,
            },
            None => Error::InvalidRequest {
                message,
                param: Some(param),
                code,
            },
        },
        other => other,
    }
}

/// The usage of a `response` object passed on from OpenAI.
fn passed_usage(body: &[u8]) -> Usage {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    usage_from_json(&v["usage"])
}

/// An upstream Responses stream passed on as it came, read on the way for its accounting (the
/// first text or arguments delta, and the usage of its final `response`, charged like any
/// stream's); a cut (an error, or an end before a terminal event) ends with an `error` event.
fn never_silent(
    bytes: ByteStream,
    accounting: StreamAccounting,
    held: Option<Held>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let watch = Passed {
        bytes,
        parser: sse::SseParser::new(),
        accounting,
        held,
        ended: false,
        done: false,
    };
    futures::stream::unfold(watch, |mut w| async move {
        if w.done {
            return None;
        }
        match w.bytes.next().await {
            Some(Ok(chunk)) => {
                w.parser.push(&chunk);
                while let Some(event) = w.parser.next_event() {
                    w.read(&event);
                }
                Some((Ok(chunk), w))
            }
            Some(Err(e)) => {
                w.done = true;
                Some((Ok(cut_event(&e.message)), w))
            }
            None => {
                w.done = true;
                (!w.ended).then(|| (Ok(cut_event("the upstream stream ended early")), w))
            }
        }
    })
}

/// A passed-on Responses stream as it goes by.
struct Passed {
    bytes: ByteStream,
    parser: sse::SseParser,
    /// Charged when the stream ends or is dropped.
    accounting: StreamAccounting,
    /// Noted once `response.created` names the response.
    held: Option<Held>,
    /// A terminal event went by.
    ended: bool,
    done: bool,
}

impl Passed {
    /// Notes what `event` means for the accounting and whether the stream has ended.
    fn read(&mut self, event: &sse::SseEvent) {
        let mut data = None;
        let json = || -> Value { serde_json::from_str(&event.data).unwrap_or_default() };
        // OpenAI names each event; its `type` says the same where a server does not.
        let kind = match &event.event {
            Some(kind) => kind.clone(),
            None => {
                let v = json();
                let kind = v["type"].as_str().unwrap_or_default().to_owned();
                data = Some(v);
                kind
            }
        };
        match kind.as_str() {
            "response.output_text.delta" | "response.function_call_arguments.delta" => {
                self.accounting.first_token();
            }
            "response.completed" | "response.failed" | "response.incomplete" => {
                let v = data.unwrap_or_else(json);
                let usage = &v["response"]["usage"];
                if usage.is_object() {
                    self.accounting.note_usage(usage_from_json(usage));
                }
                self.ended = true;
            }
            "error" => self.ended = true,
            "response.created" => {
                if let Some(held) = self.held.take() {
                    held.note(&data.unwrap_or_else(json)["response"]);
                }
            }
            _ => {}
        }
    }
}

/// The upstream that answered a passed-through request, to note for a response it keeps.
struct Held {
    state: Arc<AppState>,
    upstream: HeldUpstream,
}

impl Held {
    /// [`Held::note_now`] in the background (a stream goes on meanwhile).
    fn note(self, response: &Value) {
        let response = json!({"id": response["id"], "store": response["store"]});
        tokio::spawn(async move { self.note_now(&response).await });
    }

    /// Notes where `response` is kept, unless the client asked OpenAI not to store it; a
    /// failure is logged (the answer stands without it).
    async fn note_now(self, response: &Value) {
        let Some(id) = response["id"].as_str() else {
            return;
        };
        if response["store"] == false {
            return;
        }
        if let Err(e) =
            stored_responses::note_upstream(&*self.state.store, id, &self.upstream).await
        {
            tracing::warn!(error = %e, "cannot note where a response is kept");
        }
    }
}

/// The answer of the upstream that keeps response `id` (OpenAI's own Responses API) to
/// `method` on `path` under its Responses URL, as it came; None when no upstream keeps it.
async fn from_upstream(
    state: &AppState,
    id: &str,
    method: http::Method,
    path: &str,
) -> Result<Option<Response>, Error> {
    let Some(held) = stored_responses::upstream(&*state.store, id).await? else {
        return Ok(None);
    };
    let Some(executor) = state.executors.get(&held.backend) else {
        return Ok(None);
    };
    let body = executor
        .fetch(
            tandem_cloud_adapters::Api::Responses,
            &held.model,
            method,
            path,
        )
        .await?;
    Ok(Some(json_bytes_response(body)))
}

fn cut_event(message: &str) -> Bytes {
    let data = json!({"type": "error", "code": "stream_cut", "message": message, "param": null});
    sse::encode_event(Some("error"), &data.to_string())
}

/// `GET /v1/responses/{id}`: one kept here, or asked of OpenAI's own API that keeps it.
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let answer = async {
        if let Some(s) = stored_responses::load(&*state.store, &id).await? {
            return Ok(json_response(&s.response));
        }
        from_upstream(&state, &id, http::Method::GET, &format!("/{id}"))
            .await?
            .ok_or_else(|| not_found(&id))
    };
    answer
        .await
        .unwrap_or_else(|e| e.into_response_for(ApiFlavor::OpenAi))
}

/// `DELETE /v1/responses/{id}`: here, or on OpenAI's own API that keeps it.
pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let answer = async {
        if stored_responses::delete(&*state.store, &id).await? {
            return Ok(json_response(
                &json!({"id": id, "object": "response.deleted", "deleted": true}),
            ));
        }
        let deleted = from_upstream(&state, &id, http::Method::DELETE, &format!("/{id}"))
            .await?
            .ok_or_else(|| not_found(&id))?;
        stored_responses::forget_upstream(&*state.store, &id).await?;
        Ok::<_, Error>(deleted)
    };
    answer
        .await
        .unwrap_or_else(|e| e.into_response_for(ApiFlavor::OpenAi))
}

fn not_found(id: &str) -> Error {
    Error::ResponseNotFound {
        id: id.to_owned(),
        param: None,
    }
}

/// The query of `GET /v1/responses/{id}/input_items`.
#[derive(Debug, Deserialize)]
pub struct ItemsQuery {
    /// `asc` or `desc` (the default, as OpenAI's).
    order: Option<String>,
    /// Items per page, 1 to 100 (20 by default).
    limit: Option<usize>,
    /// The item id the page starts after.
    after: Option<String>,
}

/// `GET /v1/responses/{id}/input_items` (of a response OpenAI's own API keeps: its page, the
/// query passed on).
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<ItemsQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let page = async {
        let Some(stored) = stored_responses::load(&*state.store, &id).await? else {
            let query = raw.map(|q| format!("?{q}")).unwrap_or_default();
            let path = format!("/{id}/input_items{query}");
            return from_upstream(&state, &id, http::Method::GET, &path)
                .await?
                .ok_or_else(|| not_found(&id));
        };
        let limit = query.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid(
                "'limit' must be between 1 and 100",
                Some("limit"),
            ));
        }
        let mut items = stored.input_items;
        match query.order.as_deref() {
            None | Some("desc") => items.reverse(),
            Some("asc") => {}
            Some(other) => {
                return Err(Error::invalid(
                    format!("invalid 'order' '{other}': expected asc or desc"),
                    Some("order"),
                ));
            }
        }
        if let Some(after) = &query.after {
            let at = items
                .iter()
                .position(|i| i["id"] == after.as_str())
                .ok_or_else(|| Error::invalid(format!("no input item '{after}'"), Some("after")))?;
            items.drain(..=at);
        }
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(json_response(&json!({"object": "list", "data": items,
                  "first_id": items.first().map(|i| i["id"].clone()),
                  "last_id": items.last().map(|i| i["id"].clone()),
                  "has_more": has_more})))
    }
    .await;
    page.unwrap_or_else(|e| e.into_response_for(ApiFlavor::OpenAi))
}
