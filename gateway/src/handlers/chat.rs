//! `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic): decode into the
//! normalized request, dispatch, and encode the answer in the client's format, streamed or whole.
//! A whole answer from a backend that speaks OpenAI's format upstream reaches an OpenAI client as
//! the backend sent it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, EventStream, ProviderError, Usage, WireFormat, anthropic, openai,
};

use super::{
    finish_response, json_bytes_response, read_body, request_id, sse_response, wire_error,
};
use crate::audit::PendingAudit;
use crate::cache::CACHE_BACKEND;
use crate::config::BackendKind;
use crate::context::FirstTokenDeadline;
use crate::controls::Ticket;
use crate::controls::spend::Charge;
use crate::dispatch::{run_chat, run_chat_completion, run_stream};
use crate::error::{ApiFlavor, Error};
use crate::metrics::BackendLabels;
use crate::observe::{RequestMeter, bill};
use crate::routing::RequestHints;
use crate::state::AppState;

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    handle(state, request, WireFormat::OpenAi).await
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<Arc<AppState>>, request: Request) -> Response {
    handle(state, request, WireFormat::Anthropic).await
}

fn flavor(format: WireFormat) -> ApiFlavor {
    match format {
        WireFormat::OpenAi => ApiFlavor::OpenAi,
        WireFormat::Anthropic => ApiFlavor::Anthropic,
    }
}

async fn handle(state: Arc<AppState>, request: Request, format: WireFormat) -> Response {
    let flavor = flavor(format);
    let (parts, body) = request.into_parts();
    let decoded = match read_body(&parts, body).await {
        Ok(bytes) => match format {
            WireFormat::OpenAi => openai::decode_chat_request(&bytes).map_err(wire_error),
            WireFormat::Anthropic => anthropic::decode_messages_request(&bytes).map_err(wire_error),
        },
        Err(e) => Err(e),
    };
    let id = request_id(&parts);
    let endpoint = match format {
        WireFormat::OpenAi => "/v1/chat/completions",
        WireFormat::Anthropic => "/v1/messages",
    };
    let mut audit = PendingAudit::arriving(&parts, id.0.clone(), endpoint);
    let hints = decoded
        .and_then(validate)
        .and_then(|c| RequestHints::from_parts(id.0.clone(), &parts).map(|h| (c, h)));
    let (chat, hints) = match hints {
        Ok(c) => c,
        Err(e) => return refuse_audited(&state, audit, e, flavor),
    };
    let model = chat.model.clone();
    let meter = hints.meter.clone();
    let ticket = parts.extensions.get::<Ticket>().cloned();
    audit.model = model.clone();
    let (mut response, route) = if chat.stream {
        let deadline = parts.extensions.get::<FirstTokenDeadline>().copied();
        let include_usage = chat.include_usage;
        // Boxed: the streaming dispatch's state is the largest of any, and unboxed it would
        // size (and so be copied with) every request's future, whole answers' included.
        let (result, route) = Box::pin(run_stream(&state, chat, &hints, deadline)).await;
        match result {
            Ok(events) => {
                audit.status = 200;
                audit.route = route.audited();
                let encoder = match format {
                    WireFormat::OpenAi => Encoder::OpenAi(openai::ChunkEncoder::new(include_usage)),
                    WireFormat::Anthropic => Encoder::Anthropic(anthropic::EventEncoder::new()),
                };
                let body = sse_stream_body(
                    state.clone(),
                    events,
                    encoder,
                    (model.clone(), route.backend.clone()),
                    (meter, ticket, Some(audit.clone())),
                );
                (sse_response(body), route)
            }
            Err(e) => (e.into_response_for(flavor), route),
        }
    } else {
        // The whole answer's body and usage. Backends that speak OpenAI's format answer an OpenAI
        // client as they came; the others are encoded.
        let (result, route) = match format {
            WireFormat::OpenAi => {
                let (result, route) = run_chat_completion(&state, chat, &hints).await;
                if let (Some(m), Ok(c)) = (&meter, &result)
                    && m.captures_content()
                {
                    m.note_output_text(&answer_text(&c.body));
                }
                (result.map(|c| (c.body, c.usage)), route)
            }
            WireFormat::Anthropic => {
                let (result, route) = run_chat(&state, chat, &hints).await;
                if let (Some(m), Ok(a)) = (&meter, &result)
                    && m.captures_content()
                {
                    m.note_output_text(&a.text);
                }
                let encoded = result.map(|a| (anthropic::encode_messages_response(&a), a.usage));
                (encoded, route)
            }
        };
        match result {
            Ok((body, usage)) => {
                let cost = record_usage(
                    &state,
                    &model,
                    &route.backend,
                    &usage,
                    meter.as_deref(),
                    ticket.as_ref(),
                );
                audit.status = 200;
                audit.route = route.audited();
                write_audit(&state, &audit, Some(&usage), cost);
                audit.status = 0;
                (json_bytes_response(body), route)
            }
            Err(e) => (e.into_response_for(flavor), route),
        }
    };
    if audit.status == 0 && !response.status().is_success() {
        audit.status = response.status().as_u16();
        audit.route = route.audited();
        write_audit(&state, &audit, None, 0.0);
    }
    let answered = response.status().is_success();
    finish_response(&state, &mut response, &id, &route, model, answered);
    response
}

/// Refuses what the gateway cannot honour: several choices are passed on only in a whole answer
/// from a backend that makes them (see the executors), never re-encoded into a stream.
fn validate(chat: ChatRequest) -> Result<ChatRequest, Error> {
    if chat.n > 1 && chat.stream {
        return Err(Error::Unsupported {
            message: format!(
                "n = {} is supported for whole answers only; stream with n = 1",
                chat.n
            ),
            param: "n".into(),
        });
    }
    if chat.model.is_empty() {
        return Err(Error::invalid(
            "missing required parameter: 'model'",
            Some("model"),
        ));
    }
    Ok(chat)
}

/// Writes a request's audit record when the audit log is on.
pub(crate) fn write_audit(
    state: &AppState,
    audit: &PendingAudit,
    usage: Option<&Usage>,
    cost: f64,
) {
    if let Some(log) = &state.audit {
        audit.write(log, usage, cost);
    }
}

/// Answers a request refused before dispatch (unreadable, undecodable, bad hints) in `flavor`'s
/// error shape, and audits it with the status it got.
pub(crate) fn refuse_audited(
    state: &AppState,
    mut audit: PendingAudit,
    error: Error,
    flavor: ApiFlavor,
) -> Response {
    let response = error.into_response_for(flavor);
    audit.status = response.status().as_u16();
    write_audit(state, &audit, None, 0.0);
    response
}

/// Counts tokens, cost and reference cost from what `backend` reported, on `route` (the model
/// id asked for), notes them on the request's meter, charges the spend (a local answer's avoided
/// cost, against the route's reference cloud backend, as savings) and settles the request's
/// token reservation.
pub fn record_usage(
    state: &AppState,
    route: &str,
    backend: &str,
    usage: &Usage,
    meter: Option<&RequestMeter>,
    ticket: Option<&Ticket>,
) -> f64 {
    let bill = bill(&state.config, route, backend, usage);
    // An answer from the response cache is not billed: nothing ran.
    if backend == CACHE_BACKEND {
        return 0.0;
    }
    state.metrics.record_usage(
        route,
        backend,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_prompt_tokens,
        (bill.paid, bill.reference),
    );
    if let Some(meter) = meter {
        meter.note_usage(usage, bill);
    }
    let local = state
        .executors
        .get(backend)
        .is_some_and(|e| e.kind() == BackendKind::Local);
    if let Some(t) = ticket {
        t.settle(usage.prompt_tokens + usage.completion_tokens);
    }
    state.controls.record(Charge {
        key: ticket.and_then(|t| t.key().map(str::to_owned)),
        route: route.to_owned(),
        backend: backend.to_owned(),
        cost: bill.paid,
        savings: if local { bill.saved().max(0.0) } else { 0.0 },
    });
    bill.paid
}

/// The text of an OpenAI chat completion's first choice (for captured spans only).
fn answer_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// One stream's encoder in the client's format.
pub(crate) enum Encoder {
    /// OpenAI chat completion chunks.
    OpenAi(openai::ChunkEncoder),
    /// Anthropic Messages events.
    Anthropic(anthropic::EventEncoder),
    /// Legacy `text_completion` chunks.
    Completion(openai::CompletionChunkEncoder),
    /// Responses API events, with what to do with the final `response` once there is one.
    Responses(openai::ResponsesEncoder, Option<ResponseHook>),
}

/// Called once with a Responses stream's final encoder (its `response` object set).
pub(crate) type ResponseHook = Box<dyn FnOnce(&openai::ResponsesEncoder) + Send>;

impl Encoder {
    fn encode(&mut self, event: &ChatEvent) -> Bytes {
        match self {
            Self::OpenAi(e) => e.encode(event),
            Self::Anthropic(e) => e.encode(event),
            Self::Completion(e) => e.encode(event),
            Self::Responses(e, hook) => {
                let out = e.encode(event);
                Self::ended(e, hook);
                out
            }
        }
    }

    fn finish(&mut self) -> Bytes {
        match self {
            Self::OpenAi(e) => e.finish(),
            Self::Anthropic(e) => e.finish(),
            Self::Completion(e) => e.finish(),
            Self::Responses(e, hook) => {
                let out = e.finish();
                Self::ended(e, hook);
                out
            }
        }
    }

    /// Runs a Responses stream's hook once its final `response` exists.
    fn ended(encoder: &openai::ResponsesEncoder, hook: &mut Option<ResponseHook>) {
        if encoder.response().is_some()
            && let Some(hook) = hook.take()
        {
            hook(encoder);
        }
    }
}

/// Records a stream's usage when it ends or is dropped (client gone): the one accounting of
/// every streamed answer, encoded here or passed on as an upstream sent it.
pub(crate) struct StreamAccounting {
    state: Arc<AppState>,
    /// The model id the client asked for.
    route: String,
    backend: String,
    usage: Option<Usage>,
    started: StdInstant,
    first_token_seen: bool,
    meter: Option<Arc<RequestMeter>>,
    /// The request's hold on its token limiters (settled or given back at the end).
    ticket: Option<Ticket>,
    /// The audit record, written with the stream's tokens when it ends.
    audit: Option<PendingAudit>,
}

impl StreamAccounting {
    /// The accounting of a stream from `backend` on route `route` (the model id asked for).
    pub(crate) fn new(
        state: Arc<AppState>,
        (route, backend): (String, String),
        (meter, ticket, audit): (
            Option<Arc<RequestMeter>>,
            Option<Ticket>,
            Option<PendingAudit>,
        ),
    ) -> Self {
        Self {
            state,
            route,
            backend,
            usage: None,
            started: StdInstant::now(),
            first_token_seen: false,
            meter,
            ticket,
            audit,
        }
    }

    /// The stream's usage as the backend reported it (the last report counts).
    pub(crate) fn note_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// Notes the first content (once): the first-token metric and the meter.
    pub(crate) fn first_token(&mut self) {
        if !self.first_token_seen {
            self.first_token_seen = true;
            self.state
                .metrics
                .first_token
                .get_or_create(&BackendLabels {
                    backend: self.backend.clone(),
                })
                .observe(self.started.elapsed().as_secs_f64());
            if let Some(m) = &self.meter {
                m.note_first_token();
            }
        }
    }
}

impl Drop for StreamAccounting {
    fn drop(&mut self) {
        let usage = self.usage.take();
        let cost = usage.as_ref().map_or(0.0, |u| {
            record_usage(
                &self.state,
                &self.route,
                &self.backend,
                u,
                self.meter.as_deref(),
                self.ticket.as_ref(),
            )
        });
        if let Some(audit) = self.audit.take() {
            write_audit(&self.state, &audit, usage.as_ref(), cost);
        }
    }
}

/// The state of one SSE body.
struct SseStream {
    events: EventStream,
    encoder: Encoder,
    /// Frames held back until the first content event, so the first frame means a first token.
    held: BytesMut,
    finished: bool,
    done: bool,
    accounting: StreamAccounting,
}

/// Encodes a stream of events as SSE with `encoder`, with the same guarantees as [`sse_body`].
pub(crate) fn encoded_sse_body(
    state: Arc<AppState>,
    events: EventStream,
    encoder: Encoder,
    route: String,
    backend: String,
    meter: Option<Arc<RequestMeter>>,
    ticket: Option<Ticket>,
) -> Body {
    sse_stream_body(
        state,
        events,
        encoder,
        (route, backend),
        (meter, ticket, None),
    )
}

/// [`encoded_sse_body`], writing `audit` with the stream's tokens when it ends.
pub(crate) fn sse_stream_body(
    state: Arc<AppState>,
    events: EventStream,
    encoder: Encoder,
    (route, backend): (String, String),
    (meter, ticket, audit): (
        Option<Arc<RequestMeter>>,
        Option<Ticket>,
        Option<PendingAudit>,
    ),
) -> Body {
    let capture = meter.as_ref().is_some_and(|m| m.captures_content());
    let stream = SseStream {
        events,
        encoder,
        held: BytesMut::new(),
        finished: false,
        done: false,
        accounting: StreamAccounting::new(state, (route, backend), (meter, ticket, audit)),
    };
    let frames = futures::stream::unfold(stream, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let bytes = match s.events.next().await {
                Some(start @ ChatEvent::Start { .. }) => {
                    // Held back so the first frame the client gets carries content.
                    let frame = s.encoder.encode(&start);
                    s.held.extend_from_slice(&frame);
                    continue;
                }
                Some(event) => {
                    match &event {
                        ChatEvent::Usage(u) => s.accounting.note_usage(*u),
                        ChatEvent::Finish { .. } => s.finished = true,
                        ChatEvent::Error(_) => s.done = true,
                        ChatEvent::TextDelta { text, .. } => {
                            s.accounting.first_token();
                            if capture && let Some(m) = &s.accounting.meter {
                                m.note_output_text(text);
                            }
                        }
                        ChatEvent::ToolCallDelta { .. } => s.accounting.first_token(),
                        ChatEvent::Start { .. } => {}
                    }
                    s.encoder.encode(&event)
                }
                None => {
                    s.done = true;
                    if s.finished {
                        s.encoder.finish()
                    } else {
                        let cut = ProviderError::stream_cut(s.accounting.backend.clone());
                        s.encoder.encode(&ChatEvent::Error(cut))
                    }
                }
            };
            let out = if s.held.is_empty() {
                bytes
            } else {
                let mut all = std::mem::take(&mut s.held);
                all.extend_from_slice(&bytes);
                all.freeze()
            };
            if out.is_empty() {
                continue;
            }
            return Some((Ok::<_, Infallible>(out), s));
        }
    });
    Body::from_stream(frames)
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// The size of the future `f` returns.
    fn size_of_future<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_request_future_does_not_carry_the_streaming_dispatch_inline() {
        // Every request's future is moved into its box whole, so its size is copied per request.
        let handler = size_of_future(handle);
        let streaming = size_of_future(
            |state: &'static Arc<AppState>, chat: ChatRequest, hints: &'static RequestHints| {
                run_stream(state, chat, hints, None)
            },
        );
        assert!(
            handler < streaming / 2,
            "handler future {handler} bytes, streaming dispatch {streaming}"
        );
    }
}
