//! The request context: what the middleware, the handlers and dispatch put in a request's or a
//! response's extensions and read back (request id, API key digest, body limit, first-token
//! deadline, the route slot and the answering backend), and the header names they share. A leaf
//! module: it names nothing else in the crate but the edge error, so every layer can read it
//! without importing another layer.

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderName, HeaderValue, Response};
use tokio::time::Instant;

use crate::error::Error;

/// The header that says which backend answered and why.
pub const ROUTE_HEADER: &str = "x-tandem-route";
/// Response header saying whether the response cache answered: `hit`, `miss` or `bypass`.
pub const CACHE_HEADER: &str = "x-tandem-cache";

/// The header carrying the id.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in request extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        // Encoded into a stack buffer: `to_string` would go through the formatting machinery on
        // every request.
        let mut buf = uuid::Uuid::encode_buffer();
        Self(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf),
        ))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sha256 digest of the API key a request presented (set by [`AuthService`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyDigest(pub [u8; 32]);

impl ApiKeyDigest {
    /// Lowercase hex, as `api_key_hashes` and `router.keys` spell it in the config.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The configured limit, in request extensions, for the body reader's error message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// When a stream's first event must have arrived, in request extensions.
#[derive(Debug, Clone, Copy)]
pub struct FirstTokenDeadline {
    /// The instant.
    pub at: Instant,
    /// The configured timeout, for messages.
    pub millis: u64,
}

impl FirstTokenDeadline {
    /// The error a late stream gets.
    pub fn error(&self) -> Error {
        Error::FirstTokenTimeout(self.millis)
    }
}

/// Response extension: the route a request took and the backend that answered on it.
#[derive(Debug, Clone)]
pub struct AnsweredBy {
    /// The route: the model id the client asked for.
    pub route: Arc<str>,
    /// The backend's config name.
    pub backend: Arc<str>,
}

/// Where a handler notes the route it took and the backend it is waiting on, in request
/// extensions, so a request that runs out of time can still say where it was.
#[derive(Debug, Clone, Default)]
pub struct RouteSlot(Arc<parking_lot::Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    route: Option<String>,
    backend: Option<String>,
}

impl RouteSlot {
    /// The route: the model id the client asked for, once it named one.
    pub fn note_route(&self, model: &str) {
        self.0.lock().route = Some(model.to_owned());
    }

    /// The backend now being tried.
    pub fn note_backend(&self, backend: &str) {
        self.0.lock().backend = Some(backend.to_owned());
    }

    /// Marks a timed-out response with the route and backend noted, if a backend was.
    pub(crate) fn mark_timed_out(&self, response: &mut Response<Body>) {
        let noted = self.0.lock();
        let (Some(route), Some(backend)) = (&noted.route, &noted.backend) else {
            return;
        };
        if let Ok(value) = HeaderValue::from_str(&format!("{backend}; route {route}; timed out")) {
            response.headers_mut().insert(ROUTE_HEADER, value);
        }
        response.extensions_mut().insert(AnsweredBy {
            route: route.as_str().into(),
            backend: backend.as_str().into(),
        });
    }
}
