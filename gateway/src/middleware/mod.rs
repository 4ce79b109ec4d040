//! The gateway's tower layers, one per module, each with its Layer, Service and ResponseFuture.
//! They are stacked in one `ServiceBuilder` block in [`crate::server`].

pub mod auth;
pub mod body_limit;
pub mod concurrency;
pub mod controls;
pub mod deadline_body;
pub mod first_token_timeout;
pub mod metrics;
pub mod observe;
pub mod request_id;
pub mod route_header;
pub mod timeout;
pub mod trace;

use axum::body::Body;
use axum::response::Response;
use http::Request;

use crate::error::{ApiFlavor, Error};

/// Paths that answer without auth and are never shed: probes and metrics.
pub(crate) fn is_operational_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Renders `error` in the flavour of the endpoint `request` was sent to.
pub(crate) fn error_response<B>(request: &Request<B>, error: Error) -> Response<Body> {
    error.into_response_for(ApiFlavor::from_path(request.uri().path()))
}

/// Whether a response is a server-sent event stream.
pub(crate) fn is_event_stream(response: &Response<Body>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}
