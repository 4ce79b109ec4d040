//! HTTP handlers: ingress decode, dispatch, egress encode.

pub mod chat;
pub mod completions;
pub mod count_tokens;
pub mod embeddings;
pub mod infill;
pub mod ops;
pub mod responses;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, header};
use tandem_cloud_adapters::WireError;

use crate::context::{AnsweredBy, BodyLimit, CACHE_HEADER, ROUTE_HEADER, RequestId};
use crate::dispatch::RouteInfo;
use crate::error::Error;
use crate::state::{AppState, RequestRecord};

/// Reads the whole JSON body; a body declared as anything but JSON is a 415, one over the limit
/// a 413. A body with no `content-type` is read as JSON, as the APIs Tandem speaks do.
pub async fn read_body(parts: &Parts, body: Body) -> Result<Bytes, Error> {
    if let Some(declared) = parts.headers.get(header::CONTENT_TYPE)
        && !tandem_cloud_adapters::http::is_json(&parts.headers)
    {
        return Err(Error::UnsupportedMediaType(
            String::from_utf8_lossy(declared.as_bytes()).into_owned(),
        ));
    }
    axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                let limit = parts.extensions.get::<BodyLimit>().map_or(0, |l| l.0);
                return Error::PayloadTooLarge { limit };
            }
            source = s.source();
        }
        Error::invalid(format!("could not read the request body: {e}"), None)
    })
}

/// A decoding error as a 400.
pub fn wire_error(e: WireError) -> Error {
    Error::InvalidRequest {
        message: e.message,
        param: e.param,
        code: Some(e.code),
    }
}

/// The request's id.
pub fn request_id(parts: &Parts) -> RequestId {
    parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate)
}

/// Adds the route header, and the route (`model`, the id the client asked for) and answering
/// backend for the metrics, to a response.
pub fn mark_route(response: &mut Response, route: &RouteInfo, model: &str) {
    response
        .headers_mut()
        .insert(ROUTE_HEADER, route.header_value());
    if let Some(status) = route.cache {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(status.as_str()));
    }
    if !route.backend.is_empty() {
        response.extensions_mut().insert(AnsweredBy {
            route: model.into(),
            backend: route.backend.as_str().into(),
        });
    }
}

/// Marks a routed response (see [`mark_route`]) and, when it answered, remembers which backend
/// did, so feedback on the request id finds it.
pub fn finish_response(
    state: &AppState,
    response: &mut Response,
    id: &RequestId,
    route: &RouteInfo,
    model: String,
    answered: bool,
) {
    mark_route(response, route, &model);
    if answered {
        state.requests.insert(
            id.0.clone(),
            RequestRecord {
                model,
                backend: route.backend.clone(),
            },
        );
    }
}

/// A JSON response.
pub fn json_response(value: &serde_json::Value) -> Response {
    json_bytes_response(Bytes::from(value.to_string()))
}

/// A JSON response from bytes already encoded.
pub fn json_bytes_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An event-stream response.
pub fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
