//! Operational endpoints: `/v1/models`, `/healthz`, `/readyz`, `/metrics`, `/v1/feedback`, and the
//! OpenAI-shaped 404 for unknown paths.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::{json_response, read_body};
use crate::error::{ApiFlavor, Error};
use crate::state::{AppState, Feedback};

/// `GET /v1/models`: every routed model id, with the first backend as owner.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = tandem_cloud_adapters::unix_now();
    let data: Vec<Value> = state
        .config
        .routes
        .iter()
        .map(|(id, route)| {
            json!({"id": id, "object": "model", "created": created,
                   "owned_by": route.backends.first().map(String::as_str).unwrap_or("tandem")})
        })
        .collect();
    json_response(&json!({"object": "list", "data": data}))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    json_response(&json!({"status": "ok"}))
}

/// `GET /readyz`: the local model is loaded, or none is configured.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let local = state.local.as_ref().map(|l| l.describe());
    let body = json!({"ready": state.ready(), "local_model": local});
    let mut response = json_response(&body);
    if !state.ready() {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `POST /v1/feedback`: `{"request_id", "score" | "thumbs": "up"|"down", "correct"?}`.
pub async fn feedback(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let result = async {
        let bytes = read_body(&parts, body).await?;
        let feedback = parse_feedback(&bytes)?;
        let record = state.requests.get(&feedback.request_id).ok_or_else(|| Error::UnknownRequestId(feedback.request_id.clone()))?;
        state.feedback.apply(&record, &feedback);
        Ok::<_, Error>(json!({"status": "accepted", "request_id": feedback.request_id, "backend": record.backend}))
    }
    .await;
    match result {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response_for(ApiFlavor::OpenAi),
    }
}

fn parse_feedback(bytes: &[u8]) -> Result<Feedback, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::InvalidRequest {
        message: format!("invalid JSON: {e}"),
        param: None,
        code: Some("invalid_json"),
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("the body must be a JSON object", None))?;
    let request_id = match obj.get("request_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(Error::invalid(
                "'request_id' must be a non-empty string",
                Some("request_id"),
            ));
        }
        None => {
            return Err(Error::invalid(
                "missing required parameter: 'request_id'",
                Some("request_id"),
            ));
        }
    };
    let score = match (obj.get("score"), obj.get("thumbs")) {
        (Some(Value::Number(n)), _) => match n.as_f64() {
            Some(s) if (0.0..=1.0).contains(&s) => s,
            _ => {
                return Err(Error::invalid(
                    "'score' must be a number between 0 and 1",
                    Some("score"),
                ));
            }
        },
        (Some(_), _) => {
            return Err(Error::invalid(
                "'score' must be a number between 0 and 1",
                Some("score"),
            ));
        }
        (None, Some(Value::String(t))) if t == "up" => 1.0,
        (None, Some(Value::String(t))) if t == "down" => 0.0,
        (None, Some(_)) => {
            return Err(Error::invalid(
                "'thumbs' must be \"up\" or \"down\"",
                Some("thumbs"),
            ));
        }
        (None, None) => {
            return Err(Error::invalid(
                "one of 'score' or 'thumbs' is required",
                Some("score"),
            ));
        }
    };
    let correct = match obj.get("correct") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(Error::invalid(
                "'correct' must be a boolean",
                Some("correct"),
            ));
        }
    };
    Ok(Feedback {
        request_id,
        score,
        correct,
    })
}

/// Any other path: an OpenAI-shaped 404.
pub async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    Error::EndpointNotFound(path.clone()).into_response_for(ApiFlavor::from_path(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_forms() {
        assert_eq!(
            parse_feedback(br#"{"request_id":"a","thumbs":"up"}"#)
                .unwrap()
                .score,
            1.0
        );
        let f = parse_feedback(br#"{"request_id":"a","score":0.25,"correct":false}"#).unwrap();
        assert_eq!((f.score, f.correct), (0.25, Some(false)));
        assert!(parse_feedback(b"{").is_err());
        assert!(parse_feedback(br#"{"request_id":"a","score":3}"#).is_err());
        assert!(parse_feedback(br#"{"request_id":"a"}"#).is_err());
        assert!(parse_feedback(br#"{"score":1}"#).is_err());
    }
}
