//! `/admin/keys`: create (`POST`, the key is in this answer only), list (`GET`), read
//! (`GET /admin/keys/{id}`), change (`PATCH`, the fields given) and revoke (`DELETE`) virtual
//! keys.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use super::json_body;
use crate::controls::keys::{KeyPatch, KeySpec};
use crate::error::Error;
use crate::state::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{id}", get(read).patch(update).delete(revoke))
}

async fn create(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let spec: KeySpec = match json_body(&body) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match state.controls.keys.create(spec).await {
        Ok((record, key)) => {
            let mut body = json!(record);
            body["key"] = json!(key);
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    match state.controls.keys.list().await {
        Ok(keys) => axum::Json(json!({"object": "list", "data": keys})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn read(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    answer(state.controls.keys.get(&id).await)
}

async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let patch: KeyPatch = match json_body(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    answer(state.controls.keys.update(&id, patch).await)
}

async fn revoke(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    answer(state.controls.keys.revoke(&id).await)
}

fn answer<T: serde::Serialize>(result: Result<T, Error>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
