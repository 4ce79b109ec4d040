//! Operational endpoints: `/v1/models`, `/healthz`, `/readyz`, `/metrics`, `/v1/feedback`, the
//! OpenAI-shaped 404 for unknown paths and the 405 for a known path's wrong method.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::{json_response, read_body};
use crate::config::BackendKind;
use crate::error::{ApiFlavor, Error};
use crate::executor::embeddings::{
    LOCAL_EMBEDDING_DIM, LOCAL_EMBEDDING_MAX_TOKENS, LOCAL_EMBEDDING_MODEL,
};
use crate::state::AppState;
use tandem_router_policy::Feedback;

/// `GET /v1/models`: every routed model id, the local embeddings model and the code model's
/// names (`[ide]`), each with its owner (the route's first backend), its backends and what it
/// can do.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = tandem_cloud_adapters::unix_now();
    let mut data: Vec<Value> = state
        .config
        .routes
        .keys()
        .filter_map(|id| model_entry(&state, id, created))
        .collect();
    let others = std::iter::once(LOCAL_EMBEDDING_MODEL).chain(
        state
            .config
            .ide
            .iter()
            .flat_map(|ide| ide.aliases.iter().map(String::as_str)),
    );
    for id in others {
        if !state.config.routes.contains_key(id) {
            data.extend(model_entry(&state, id, created));
        }
    }
    json_response(&json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one model as `/v1/models` lists it, or a 404 `model_not_found`.
pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match model_entry(&state, &id, tandem_cloud_adapters::unix_now()) {
        Some(entry) => json_response(&entry),
        None => Error::ModelNotFound(id).into_response_for(ApiFlavor::OpenAi),
    }
}

/// A model's entry: OpenAI's fields, then the route's backends, the context length where it is
/// known (`routes.X.context_length`, else the local model's own on a route of it alone; a cloud
/// model's is the provider's to say, so null unless configured) and its
/// capabilities: chat, tools (a cloud backend calls them; the local model does not), vision,
/// fill in the middle (the local model's `suffix`), embeddings.
fn model_entry(state: &AppState, id: &str, created: u64) -> Option<Value> {
    let Some(route) = state.config.routes.get(id) else {
        if id == LOCAL_EMBEDDING_MODEL {
            return Some(
                json!({"id": id, "object": "model", "created": created, "owned_by": "tandem",
                       "backends": [], "context_length": LOCAL_EMBEDDING_MAX_TOKENS,
                       "dimensions": LOCAL_EMBEDDING_DIM,
                       "capabilities": {"chat": false, "tools": false, "vision": false,
                                        "fim": false, "embeddings": true}}),
            );
        }
        // The code model: fill in the middle on `/v1/completions` and `/infill`, no chat; its
        // context length once it has loaded.
        state.config.ide.as_ref().filter(|ide| ide.is_named(id))?;
        let context_length = state
            .ide
            .as_ref()
            .and_then(|m| m.engine().ok())
            .map(|e| e.info().context_length as u64);
        return Some(
            json!({"id": id, "object": "model", "created": created, "owned_by": "tandem",
                           "backends": [crate::dispatch::CODE_BACKEND],
                           "context_length": context_length,
                           "capabilities": {"chat": false, "tools": false, "vision": false,
                                            "fim": true, "embeddings": false}}),
        );
    };
    let kinds: Vec<BackendKind> = route
        .backends
        .iter()
        .filter_map(|b| state.config.backends.get(b).map(|c| c.kind))
        .collect();
    let local = kinds
        .iter()
        .any(|k| matches!(k, BackendKind::Local | BackendKind::Speculative));
    let cloud = kinds
        .iter()
        .any(|k| !matches!(k, BackendKind::Local | BackendKind::Speculative));
    let embeddings = kinds.iter().any(|k| {
        matches!(
            k,
            BackendKind::OpenAi | BackendKind::OpenAiCompatible | BackendKind::Azure
        )
    });
    let context_length = match (&state.local, local && !cloud) {
        _ if route.context_length.is_some() => route.context_length,
        (Some(model), true) => model.engine().ok().map(|e| e.info().context_length as u64),
        _ => None,
    };
    Some(json!({
        "id": id, "object": "model", "created": created,
        "owned_by": route.backends.first().map(String::as_str).unwrap_or("tandem"),
        "backends": route.backends,
        "context_length": context_length,
        "capabilities": {"chat": true, "tools": cloud, "vision": cloud, "fim": local,
                         "embeddings": embeddings},
    }))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    json_response(&json!({"status": "ok"}))
}

/// `GET /readyz`: the local model is loaded, or none is configured.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let local = state.local.as_ref().map(|l| l.describe());
    // The code model loads on its own; the chat model alone decides readiness.
    let mut body = json!({"ready": state.ready(), "local_model": local});
    if let Some(ide) = &state.ide {
        body["ide_model"] = json!(ide.describe());
    }
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

/// `POST /v1/feedback`: `{"request_id", "score"?, "thumbs": "up"|"down"?, "thumbs_up"?,
/// "correct"?, "retried"?, "escalated"?}`. Requests the routing policy decided teach its bandit;
/// others go to the feedback sink. An unknown id is a 404, a malformed body a 400.
pub async fn feedback(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let result = async {
        let bytes = read_body(&parts, body).await?;
        let feedback = parse_feedback(&bytes)?;
        if let Some(policy) = &state.policy {
            match policy.router.apply_feedback(&feedback) {
                Ok(outcome) => {
                    policy.note_update();
                    return Ok(json!({"status": "accepted", "request_id": feedback.request_id,
                                     "backend": outcome.backend, "reward": outcome.reward}));
                }
                Err(tandem_router_policy::Error::UnknownRequest(_)) => {}
                Err(e) if e.is_client_error() => return Err(Error::invalid(e.to_string(), None)),
                Err(e) => return Err(Error::Internal(e.to_string())),
            }
        }
        let record = state
            .requests
            .get(&feedback.request_id)
            .ok_or_else(|| Error::UnknownRequestId(feedback.request_id.clone()))?;
        let score = sink_score(&feedback)?;
        state.feedback.apply(&record, &feedback, score);
        Ok::<_, Error>(json!({"status": "accepted", "request_id": feedback.request_id, "backend": record.backend}))
    }
    .await;
    match result {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response_for(ApiFlavor::OpenAi),
    }
}

/// One score in [0, 1] for the feedback sink.
fn sink_score(f: &Feedback) -> Result<f64, Error> {
    if let Some(s) = f.score {
        return Ok(f64::from(s));
    }
    if let Some(up) = f.thumbs_up {
        return Ok(if up { 1.0 } else { 0.0 });
    }
    if let Some(ok) = f.correct {
        return Ok(if ok { 1.0 } else { 0.0 });
    }
    if f.retried || f.escalated {
        return Ok(0.0);
    }
    Err(Error::invalid(
        "one of 'score', 'thumbs', 'correct', 'retried' or 'escalated' is required",
        Some("score"),
    ))
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
    const KNOWN: [&str; 7] = [
        "request_id",
        "score",
        "thumbs",
        "thumbs_up",
        "correct",
        "retried",
        "escalated",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Error::invalid(
            format!("unknown parameter '{k}'"),
            Some(k.as_str()),
        ));
    }
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
    let score = match obj.get("score") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if (0.0..=1.0).contains(&s) => Some(s as f32),
            _ => {
                return Err(Error::invalid(
                    "'score' must be a number between 0 and 1",
                    Some("score"),
                ));
            }
        },
        Some(_) => {
            return Err(Error::invalid(
                "'score' must be a number between 0 and 1",
                Some("score"),
            ));
        }
    };
    let thumbs_up = match (obj.get("thumbs"), obj.get("thumbs_up")) {
        (Some(Value::String(t)), None) if t == "up" => Some(true),
        (Some(Value::String(t)), None) if t == "down" => Some(false),
        (None, Some(Value::Bool(b))) => Some(*b),
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(_), None) => {
            return Err(Error::invalid(
                "'thumbs' must be \"up\" or \"down\"",
                Some("thumbs"),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "'thumbs_up' must be a boolean",
                Some("thumbs_up"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "give 'thumbs' or 'thumbs_up', not both",
                Some("thumbs"),
            ));
        }
    };
    let flag = |key: &str| -> Result<Option<bool>, Error> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::invalid(
                format!("'{key}' must be a boolean"),
                Some(key),
            )),
        }
    };
    let feedback = Feedback {
        request_id,
        score,
        thumbs_up,
        correct: flag("correct")?,
        retried: flag("retried")?.unwrap_or(false),
        escalated: flag("escalated")?.unwrap_or(false),
    };
    // At least one signal.
    sink_score(&feedback)?;
    Ok(feedback)
}

/// Any other path: an OpenAI-shaped 404.
pub async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    Error::EndpointNotFound(path.clone()).into_response_for(ApiFlavor::from_path(&path))
}

/// A known path called with a method it does not take: a 405 shaped for the endpoint's flavour
/// (axum adds the `allow` header).
pub async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    let flavor = ApiFlavor::from_path(path);
    Error::MethodNotAllowed {
        method: request.method().to_string(),
        path: path.to_owned(),
    }
    .into_response_for(flavor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_forms() {
        assert_eq!(
            parse_feedback(br#"{"request_id":"a","thumbs":"up"}"#)
                .unwrap()
                .thumbs_up,
            Some(true)
        );
        let f = parse_feedback(br#"{"request_id":"a","score":0.25,"correct":false}"#).unwrap();
        assert_eq!((f.score, f.correct), (Some(0.25), Some(false)));
        assert!(
            parse_feedback(br#"{"request_id":"a","retried":true}"#)
                .unwrap()
                .retried
        );
        assert!(parse_feedback(br#"{"request_id":"a","score":1,"extra":1}"#).is_err());
        assert!(parse_feedback(b"{").is_err());
        assert!(parse_feedback(br#"{"request_id":"a","score":3}"#).is_err());
        assert!(parse_feedback(br#"{"request_id":"a"}"#).is_err());
        assert!(parse_feedback(br#"{"score":1}"#).is_err());
    }
}
