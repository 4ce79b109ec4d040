//! `POST /v1/messages/count_tokens` (Anthropic): the Messages request decoded (without
//! `max_tokens`, which counting does not need), then counted on the route's first backend: the
//! local model exactly (its tokenizer and chat template), an Anthropic backend by asking it, any
//! other by an estimate, marked as such in the body (`"estimate": true`) and in
//! `x-tandem-token-count` (`exact`, `upstream` or `estimate`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::HeaderValue;
use serde_json::{Value, json};
use tandem_cloud_adapters::anthropic;

use super::chat::{refuse_audited, write_audit};
use super::{finish_response, json_response, read_body, request_id, wire_error};
use crate::audit::PendingAudit;
use crate::dispatch::run_count_tokens;
use crate::error::{ApiFlavor, Error};
use crate::executor::CountSource;
use crate::routing::RequestHints;
use crate::state::AppState;

/// The header saying how a count was made.
pub const TOKEN_COUNT_HEADER: &str = "x-tandem-token-count";

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    let decoded = async {
        let bytes = read_body(&parts, body).await?;
        let mut obj = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(obj)) => obj,
            // The decoder says what is wrong with it.
            _ => {
                return Err(match anthropic::decode_messages_request(&bytes) {
                    Err(e) => wire_error(e),
                    Ok(_) => Error::invalid("the request body must be a JSON object", None),
                });
            }
        };
        // Counting needs no limit: one is lent to the decoder, and only the client's body
        // goes upstream.
        let mut lent = obj.clone();
        lent.entry("max_tokens").or_insert(json!(1));
        let text = serde_json::to_vec(&lent).unwrap_or_default();
        let request = anthropic::decode_messages_request(&text).map_err(wire_error)?;
        obj.remove("stream");
        Ok((request, obj))
    }
    .await;
    let decoded = decoded.and_then(|(r, body)| {
        RequestHints::from_parts(id.0.clone(), &parts).map(|hints| (r, body, hints))
    });
    let mut audit = PendingAudit::arriving(&parts, id.0.clone(), "/v1/messages/count_tokens");
    let (chat, body, hints) = match decoded {
        Ok(d) => d,
        Err(e) => return refuse_audited(&state, audit, e, ApiFlavor::Anthropic),
    };
    audit.model = chat.model.clone();
    let (result, route) = run_count_tokens(&state, &chat, &body, &hints).await;
    let mut response = match result {
        Ok(count) => {
            let mut answer = json!({"input_tokens": count.input_tokens});
            if count.source == CountSource::Estimate {
                answer["estimate"] = Value::Bool(true);
            }
            let mut response = json_response(&answer);
            response.headers_mut().insert(
                TOKEN_COUNT_HEADER,
                HeaderValue::from_static(count.source.as_str()),
            );
            response
        }
        Err(e) => e.into_response_for(ApiFlavor::Anthropic),
    };
    // Counting sends the messages upstream on an Anthropic route: audited like an answer.
    audit.status = response.status().as_u16();
    audit.route = route.audited();
    write_audit(&state, &audit, None, 0.0);
    finish_response(&state, &mut response, &id, &route, chat.model, false);
    response
}
