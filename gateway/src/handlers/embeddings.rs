//! `POST /v1/embeddings` (OpenAI): decode, then embed on the local MiniLM encoder for model
//! `minilm`, or dispatch to the route's cloud embedding backends (OpenAI, OpenAI-compatible,
//! Azure), which get the client's body with the model mapped and answer as they came. Usage and
//! cost are recorded as for chat.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use tandem_cloud_adapters::openai::{
    EmbeddingInput, EmbeddingsRequest, decode_embeddings_request, embeddings_prompt_tokens,
    encode_embeddings_response,
};
use tandem_cloud_adapters::{Api, ChatRequest, Message, Role, Usage};

use super::chat::{record_usage, refuse_audited, write_audit};
use super::{finish_response, json_bytes_response, read_body, request_id, wire_error};
use crate::audit::PendingAudit;
use crate::dispatch::{RouteInfo, run_forward};
use crate::error::{ApiFlavor, Error};
use crate::executor::Forwarded;
use crate::executor::embeddings::LOCAL_EMBEDDING_MODEL;
use crate::routing::RequestHints;
use crate::state::AppState;

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    let decoded = match read_body(&parts, body).await {
        Ok(bytes) => decode_embeddings_request(&bytes).map_err(wire_error),
        Err(e) => Err(e),
    };
    let decoded = decoded
        .and_then(|r| RequestHints::from_parts(id.0.clone(), &parts).map(|hints| (r, hints)));
    let mut audit = PendingAudit::arriving(&parts, id.0.clone(), "/v1/embeddings");
    let (embeddings, hints) = match decoded {
        Ok(d) => d,
        Err(e) => return refuse_audited(&state, audit, e, ApiFlavor::OpenAi),
    };
    let model = embeddings.model.clone();
    audit.model = model.clone();
    // The local model answers its own id unless a route of that name says otherwise.
    let (result, route) =
        if model == LOCAL_EMBEDDING_MODEL && !state.config.routes.contains_key(&model) {
            let route = RouteInfo {
                backend: LOCAL_EMBEDDING_MODEL.into(),
                explanation: format!("{LOCAL_EMBEDDING_MODEL}; local embeddings model"),
                mode: "local",
                ..RouteInfo::default()
            };
            let answer = state.embedder.embed(&embeddings).await.map(|e| {
                let body = encode_embeddings_response(
                    &e.vectors,
                    &model,
                    e.prompt_tokens,
                    embeddings.encoding_format,
                );
                (body, e.prompt_tokens)
            });
            (answer, route)
        } else {
            let (result, route) = run_forward(
                &state,
                Api::Embeddings,
                &text_view(&embeddings),
                &embeddings.body,
                false,
                &hints,
            )
            .await;
            let answer = result.and_then(|answer| match answer {
                Forwarded::Whole(body) => {
                    let tokens = embeddings_prompt_tokens(&body);
                    Ok((body, tokens))
                }
                Forwarded::Stream(_) => Err(Error::Internal(
                    "an embeddings upstream answered with a stream".into(),
                )),
            });
            (answer, route)
        };
    // The privacy step names the inputs as the one message it reads them as.
    let result = result.map_err(|e| match e {
        Error::InvalidRequest {
            message,
            param: Some(param),
            code,
        } if param.starts_with("messages") => Error::InvalidRequest {
            message: message.replace(&param, "input"),
            param: Some("input".into()),
            code,
        },
        other => other,
    });
    let mut response = match result {
        Ok((body, prompt_tokens)) => {
            let usage = Usage {
                prompt_tokens,
                ..Usage::default()
            };
            let cost = record_usage(
                &state,
                &model,
                &route.backend,
                &usage,
                hints.meter.as_deref(),
                hints.ticket.as_ref(),
            );
            let response = json_bytes_response(body);
            audit.status = response.status().as_u16();
            audit.route = route.audited();
            write_audit(&state, &audit, Some(&usage), cost);
            response
        }
        Err(e) => {
            let response = e.into_response_for(ApiFlavor::OpenAi);
            audit.status = response.status().as_u16();
            audit.route = route.audited();
            write_audit(&state, &audit, None, 0.0);
            response
        }
    };
    let answered = response.status().is_success();
    finish_response(&state, &mut response, &id, &route, model, answered);
    response
}

/// The inputs' text as one user turn, for the privacy step (token ids carry no text it reads).
fn text_view(r: &EmbeddingsRequest) -> ChatRequest {
    let text = match &r.input {
        EmbeddingInput::Texts(texts) => texts.join("\n"),
        EmbeddingInput::Tokens(_) => String::new(),
    };
    ChatRequest {
        model: r.model.clone(),
        messages: vec![Message::text(Role::User, text)],
        ..ChatRequest::default()
    }
}
