//! The admin API, served on its own listener (`server.admin_listen`) behind its own keys
//! (`server.admin_key_hashes`, `server.admin_key_env`), never on the serving port. Each feature
//! is a submodule with a `routes()` of its own; adding one is one line in [`router`].

pub mod keys;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::config::AdminConfig;
use crate::error::Error;
use crate::handlers::ops;
use crate::middleware::auth::AuthLayer;
use crate::state::AppState;

/// The admin routes behind the admin key.
pub fn router(state: Arc<AppState>, admin: &AdminConfig) -> Router {
    Router::new()
        .merge(keys::routes()) // /admin/keys: virtual keys
        .fallback(ops::not_found)
        .with_state(state)
        .layer(AuthLayer::new(&admin.key_hashes)) // 401 without an admin key
}

/// Reads a JSON body into `T`; a 400 naming the field that is wrong.
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        Error::InvalidRequest {
            message: format!("invalid body: {}", e.inner()),
            param,
            code: None,
        }
    })
}
