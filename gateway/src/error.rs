//! The gateway's one edge error: every failure a client can see, with its HTTP status, its
//! OpenAI- or Anthropic-shaped body and a low-cardinality metric label decided in one place.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// Result with the gateway's edge error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which wire shape an error body takes, chosen by the endpoint the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFlavor {
    /// `{"error":{"message","type","param","code"}}` (OpenAI endpoints and everything else).
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}` (`/v1/messages`).
    Anthropic,
}

impl ApiFlavor {
    /// The flavour of the endpoint at `path`.
    pub fn from_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

/// An upstream failure as the gateway keeps it: status, meaning and whether another backend may help.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    /// The backend that failed (config name).
    pub backend: String,
    /// The upstream HTTP status, when it answered with one.
    pub status: Option<u16>,
    /// What went wrong, in the upstream's words where it gave any.
    pub message: String,
    /// Short kind (`connect`, `timeout`, `status`, `decode`, `stream_cut`, ...), used as a metric label.
    pub kind: &'static str,
    /// Whether trying the same request on another backend may succeed.
    pub retryable: bool,
    /// The upstream's own error `type`, passed on to the client where known.
    pub upstream_type: Option<String>,
    /// The upstream's own error `code` (`context_length_exceeded`, `rate_limit_exceeded`, ...).
    pub upstream_code: Option<String>,
    /// The parameter the upstream blamed.
    pub upstream_param: Option<String>,
    /// The upstream's `retry-after`, in seconds, passed on to the client.
    pub retry_after_secs: Option<u64>,
}

impl UpstreamError {
    /// The OpenAI `error.code` when the upstream gave none of its own: the kind where it means
    /// something to a client (`timeout`, `connect`, `stream_cut`, ...), else one read from the
    /// status (`rate_limit_exceeded` for a 429), never the bare `status` kind.
    pub fn code(&self) -> &'static str {
        if self.kind != "status" {
            return self.kind;
        }
        match self.status {
            Some(400 | 422) => "invalid_request",
            Some(401 | 403) => "upstream_auth_failed",
            Some(404) => "upstream_not_found",
            Some(408 | 504) => "timeout",
            Some(413) => "request_too_large",
            Some(429) => "rate_limit_exceeded",
            Some(529) => "overloaded",
            _ => "upstream_error",
        }
    }
}

impl UpstreamError {
    /// The OpenAI `error.type`: what happened where the status or kind says it (a 429 is a rate
    /// limit, a timeout a timeout, whatever type the upstream wrote), else the upstream's own.
    pub fn openai_type(&self) -> String {
        let own = self.upstream_type.as_deref();
        match (self.status, self.kind) {
            // OpenAI's own 429s name what ran out: keep those.
            (Some(429), _) => match own {
                Some(t @ ("requests" | "tokens" | "insufficient_quota" | "rate_limit_error")) => {
                    t.into()
                }
                _ => "rate_limit_error".into(),
            },
            (Some(408 | 504), _) | (None, "timeout") => "timeout_error".into(),
            _ => own.unwrap_or("upstream_error").into(),
        }
    }

    /// What happened, in a few words, for the route header and logs: `connect failed`,
    /// `timed out`, `status 503`, `stream cut`.
    pub fn what(&self) -> String {
        match (self.kind, self.status) {
            ("status", Some(status)) => format!("status {status}"),
            ("connect", _) => "connect failed".into(),
            ("timeout", _) => "timed out".into(),
            ("stream_cut", _) => "stream cut".into(),
            ("decode", _) => "unreadable answer".into(),
            (kind, _) => kind.replace('_', " "),
        }
    }
}

/// Every error the gateway answers a client with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The body is not valid JSON or does not have the expected shape.
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable reason.
        message: String,
        /// The offending parameter, when one is known.
        param: Option<String>,
        /// Machine-readable code.
        code: Option<&'static str>,
    },
    /// A parameter the gateway does not support (for example `n` > 1).
    #[error("{message}")]
    Unsupported {
        /// Human-readable reason.
        message: String,
        /// The parameter.
        param: String,
    },
    /// The requested model is served by no route.
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    /// No endpoint at this path.
    #[error("unknown endpoint {0}")]
    EndpointNotFound(String),
    /// The path is known but does not take this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The path it was sent to.
        path: String,
    },
    /// The feedback names a request id the gateway does not know.
    #[error("unknown request id `{0}`")]
    UnknownRequestId(String),
    /// No stored response has this id (expired, deleted, never stored, or `store: false`).
    #[error("Response with id '{id}' not found.")]
    ResponseNotFound {
        /// The id asked for.
        id: String,
        /// The parameter that named it (`previous_response_id`), when a body did.
        param: Option<&'static str>,
    },
    /// Missing or wrong API key.
    #[error("invalid or missing api key")]
    Unauthorized,
    /// The request body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is declared as something other than JSON.
    #[error("the request body must be JSON (`content-type: application/json`), not `{0}`")]
    UnsupportedMediaType(String),
    /// Too many requests in flight: load shed.
    #[error("the gateway is at its concurrency limit of {limit} requests, retry later")]
    Overloaded {
        /// The concurrency limit.
        limit: usize,
        /// Seconds the client should wait.
        retry_after_secs: u64,
    },
    /// A backend's circuit breaker is open: it failed repeatedly and rests before a probe.
    #[error(
        "backend `{backend}` is unavailable for {retry_after_secs} s (its circuit breaker is open after repeated failures)"
    )]
    CircuitOpen {
        /// The backend's config name.
        backend: String,
        /// Seconds until it may be probed again.
        retry_after_secs: u64,
    },
    /// The whole request took longer than the configured total timeout.
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    /// A stream's first event did not arrive in time.
    #[error("no first token within {0} ms")]
    FirstTokenTimeout(u64),
    /// A backend exists but cannot answer yet (model still loading, engine not built in).
    #[error("{0}")]
    NotReady(String),
    /// An upstream failed.
    #[error("upstream `{}` failed: {}", .0.backend, .0.message)]
    Upstream(Box<UpstreamError>),
    /// The local model failed.
    #[error("local model error: {0}")]
    LocalModel(String),
    /// A bug or an unexpected state inside the gateway.
    #[error("internal error: {0}")]
    Internal(String),
    /// No virtual key has this id (admin API).
    #[error("no key has the id `{0}`")]
    UnknownKey(String),
    /// The caller's key may not use this model.
    #[error("this key may not use the model `{0}`")]
    ModelNotAllowed(String),
    /// A rate limit (of the key or of the route) has no room for this request.
    #[error("{message}")]
    RateLimited {
        /// Which limit, and when to retry.
        message: String,
        /// `requests` or `tokens`: the limit that refused.
        limit: &'static str,
        /// Seconds until the request would fit.
        retry_after_secs: u64,
    },
    /// The caller's key spent its budget.
    #[error("{0}")]
    InsufficientQuota(String),
    /// The shared state store did not answer (Redis down or slow); with limits failing closed,
    /// what a request that a limit applies to gets.
    #[error("the shared state store is unavailable: {0}")]
    StoreUnavailable(String),
}

impl Error {
    /// A 400 with a message and the parameter it is about.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::Unsupported { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_)
            | Self::EndpointNotFound(_)
            | Self::UnknownRequestId(_)
            | Self::ResponseNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnknownKey(_) => StatusCode::NOT_FOUND,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::InsufficientQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) | Self::FirstTokenTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady(_) | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(e) => e
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(match e.kind {
                    "timeout" => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                }),
            Self::LocalModel(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A low-cardinality label for the `errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unsupported { .. } => "unsupported_parameter",
            Self::ModelNotFound(_) => "model_not_found",
            Self::EndpointNotFound(_) => "endpoint_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UnknownRequestId(_) => "unknown_request_id",
            Self::ResponseNotFound { .. } => "response_not_found",
            Self::Unauthorized => "unauthorized",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Overloaded { .. } => "overloaded",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Timeout(_) => "timeout",
            Self::FirstTokenTimeout(_) => "first_token_timeout",
            Self::NotReady(_) => "not_ready",
            Self::Upstream(_) => "upstream",
            Self::LocalModel(_) => "local_model",
            Self::Internal(_) => "internal",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::UnknownKey(_) => "unknown_key",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::InsufficientQuota(_) => "insufficient_quota",
        }
    }

    /// What happened, in a few words, for the route header: an upstream's failure says what it
    /// was (`status 429`, `connect failed`), the rest their metric label.
    pub fn what(&self) -> String {
        match self {
            Self::Upstream(e) => e.what(),
            other => other.metric_label().replace('_', " "),
        }
    }

    /// Whether another backend may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Upstream(e) => e.retryable,
            // Another backend may be well, or answer before its deadline.
            Self::NotReady(_) | Self::CircuitOpen { .. } | Self::FirstTokenTimeout(_) => true,
            _ => false,
        }
    }

    /// The OpenAI `error.type`.
    fn openai_type(&self) -> String {
        match self {
            Self::InvalidRequest { .. }
            | Self::Unsupported { .. }
            | Self::ModelNotFound(_)
            | Self::EndpointNotFound(_)
            | Self::MethodNotAllowed { .. }
            | Self::UnknownRequestId(_)
            | Self::PayloadTooLarge { .. }
            | Self::UnsupportedMediaType(_)
            | Self::ResponseNotFound { .. }
            | Self::UnknownKey(_) => "invalid_request_error".into(),
            Self::ModelNotAllowed(_) => "permission_error".into(),
            // OpenAI's own 429s name the limit that refused as the type.
            Self::RateLimited { limit, .. } => (*limit).into(),
            Self::InsufficientQuota(_) => "insufficient_quota".into(),
            Self::Unauthorized => "authentication_error".into(),
            Self::Overloaded { .. } => "rate_limit_error".into(),
            Self::Upstream(e) => e.openai_type(),
            Self::Timeout(_) | Self::FirstTokenTimeout(_) => "timeout_error".into(),
            Self::NotReady(_)
            | Self::CircuitOpen { .. }
            | Self::LocalModel(_)
            | Self::Internal(_)
            | Self::StoreUnavailable(_) => "server_error".into(),
        }
    }

    /// The Anthropic `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 415 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// The OpenAI `error.param`.
    fn param(&self) -> Option<String> {
        match self {
            Self::InvalidRequest { param, .. } => param.clone(),
            Self::Unsupported { param, .. } => Some(param.clone()),
            Self::ModelNotFound(_) | Self::ModelNotAllowed(_) => Some("model".into()),
            Self::ResponseNotFound { param, .. } => param.map(str::to_owned),
            Self::Upstream(e) => e.upstream_param.clone(),
            _ => None,
        }
    }

    /// The OpenAI `error.code`.
    fn code(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { code, .. } => *code,
            Self::Unsupported { .. } => Some("unsupported_parameter"),
            Self::ModelNotFound(_) => Some("model_not_found"),
            Self::UnknownRequestId(_) => Some("unknown_request_id"),
            Self::ResponseNotFound { .. } => Some("response_not_found"),
            Self::Unauthorized => Some("invalid_api_key"),
            Self::PayloadTooLarge { .. } => Some("request_too_large"),
            Self::UnsupportedMediaType(_) => Some("unsupported_media_type"),
            Self::Overloaded { .. } => Some("overloaded"),
            Self::CircuitOpen { .. } => Some("circuit_open"),
            Self::Timeout(_) => Some("timeout"),
            Self::FirstTokenTimeout(_) => Some("first_token_timeout"),
            Self::NotReady(_) => Some("not_ready"),
            Self::Upstream(e) => Some(e.upstream_code.as_deref().unwrap_or_else(|| e.code())),
            Self::EndpointNotFound(_) => Some("unknown_url"),
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::StoreUnavailable(_) => Some("store_unavailable"),
            Self::UnknownKey(_) => Some("key_not_found"),
            Self::ModelNotAllowed(_) => Some("model_not_allowed"),
            Self::RateLimited { .. } => Some("rate_limit_exceeded"),
            Self::InsufficientQuota(_) => Some("insufficient_quota"),
            Self::LocalModel(_) | Self::Internal(_) => None,
        }
    }

    /// The JSON body in the given flavour.
    pub fn body(&self, flavor: ApiFlavor) -> Value {
        let message = self.to_string();
        match flavor {
            ApiFlavor::OpenAi => json!({"error": {
                "message": message,
                "type": self.openai_type(),
                "param": self.param(),
                "code": self.code(),
            }}),
            ApiFlavor::Anthropic => json!({"type": "error", "error": {
                "type": self.anthropic_type(),
                "message": message,
            }}),
        }
    }

    /// The error as one server-sent event, for a stream that has already started.
    pub fn sse_frame(&self, flavor: ApiFlavor) -> Bytes {
        let body = self.body(flavor);
        match flavor {
            ApiFlavor::OpenAi => Bytes::from(format!("data: {body}\n\n")),
            ApiFlavor::Anthropic => Bytes::from(format!("event: error\ndata: {body}\n\n")),
        }
    }

    /// The full HTTP response in the given flavour.
    pub fn into_response_for(self, flavor: ApiFlavor) -> Response {
        let status = self.status();
        let body = self.body(flavor).to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::Overloaded {
                retry_after_secs, ..
            }
            | Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::CircuitOpen {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            // A backend loading or down for a moment: worth a retry soon.
            Self::NotReady(_) | Self::StoreUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::Upstream(e) => {
                if let Some(secs) = e.retry_after_secs {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
            }
            _ => {}
        }
        response
            .extensions_mut()
            .insert(ErrorLabel(self.metric_label()));
        response
    }
}

/// Response extension naming the error an answer carries, read by the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorLabel(pub &'static str);

/// An error with the flavour it must be rendered in; what handlers return.
#[derive(Debug)]
pub struct FlavoredError(pub Error, pub ApiFlavor);

impl IntoResponse for FlavoredError {
    fn into_response(self) -> Response {
        self.0.into_response_for(self.1)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.into_response_for(ApiFlavor::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_not_found_is_openai_shaped_404() {
        let e = Error::ModelNotFound("gpt-9".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let b = e.body(ApiFlavor::OpenAi);
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "model");
    }

    #[test]
    fn anthropic_shape_has_type_error() {
        let b = Error::PayloadTooLarge { limit: 10 }.body(ApiFlavor::Anthropic);
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "request_too_large");
    }

    #[test]
    fn upstream_status_is_passed_on() {
        let e = Error::Upstream(Box::new(UpstreamError {
            backend: "openai".into(),
            status: Some(429),
            message: "slow down".into(),
            kind: "status",
            retryable: true,
            upstream_type: Some("rate_limit_error".into()),
            upstream_code: Some("rate_limit_exceeded".into()),
            upstream_param: None,
            retry_after_secs: Some(7),
        }));
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retryable());
        let body = e.body(ApiFlavor::OpenAi);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let r = e.into_response_for(ApiFlavor::Anthropic);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }

    /// An upstream error from `status` with no code of its own, as an Anthropic upstream sends.
    fn uncoded_upstream(kind: &'static str, status: Option<u16>) -> Error {
        Error::Upstream(Box::new(UpstreamError {
            backend: "anthropic".into(),
            status,
            message: "mock".into(),
            kind,
            retryable: true,
            upstream_type: Some("rate_limit_error".into()),
            upstream_code: None,
            upstream_param: None,
            retry_after_secs: None,
        }))
    }

    #[test]
    fn an_upstream_error_without_a_code_gets_a_meaningful_one() {
        let code = |e: Error| e.body(ApiFlavor::OpenAi)["error"]["code"].clone();
        assert_eq!(
            code(uncoded_upstream("status", Some(429))),
            "rate_limit_exceeded"
        );
        assert_eq!(code(uncoded_upstream("status", Some(529))), "overloaded");
        assert_eq!(
            code(uncoded_upstream("status", Some(500))),
            "upstream_error"
        );
        assert_eq!(code(uncoded_upstream("status", None)), "upstream_error");
        assert_eq!(
            code(uncoded_upstream("status", Some(400))),
            "invalid_request"
        );
        // Kinds that mean something already are kept.
        assert_eq!(code(uncoded_upstream("timeout", None)), "timeout");
        assert_eq!(code(uncoded_upstream("connect", None)), "connect");
        // The metric label stays low-cardinality.
        assert_eq!(
            uncoded_upstream("status", Some(429)).metric_label(),
            "upstream"
        );
    }

    #[test]
    fn a_429_is_a_rate_limit_and_a_timeout_a_timeout_whatever_the_upstream_wrote() {
        let mut e = UpstreamError {
            backend: "vllm".into(),
            status: Some(429),
            message: "busy".into(),
            kind: "status",
            retryable: true,
            upstream_type: Some("server_error".into()),
            upstream_code: None,
            upstream_param: None,
            retry_after_secs: None,
        };
        assert_eq!(e.openai_type(), "rate_limit_error");
        assert_eq!(e.what(), "status 429");
        e.upstream_type = Some("tokens".into());
        assert_eq!(e.openai_type(), "tokens", "OpenAI's own 429 types are kept");
        e.status = None;
        e.kind = "timeout";
        assert_eq!(e.openai_type(), "timeout_error");
        assert_eq!(e.what(), "timed out");
        e.kind = "connect";
        assert_eq!(e.what(), "connect failed");
        let timeout = Error::Upstream(Box::new(UpstreamError {
            kind: "timeout",
            ..e.clone()
        }));
        assert_eq!(
            timeout.body(ApiFlavor::OpenAi)["error"]["type"],
            "timeout_error"
        );
        assert_eq!(
            timeout.body(ApiFlavor::Anthropic)["error"]["type"],
            "timeout_error"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_a_415_in_both_shapes() {
        let e = Error::UnsupportedMediaType("text/plain".into());
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            e.body(ApiFlavor::OpenAi)["error"]["code"],
            "unsupported_media_type"
        );
        assert_eq!(
            e.body(ApiFlavor::Anthropic)["error"]["type"],
            "invalid_request_error"
        );
    }

    #[test]
    fn method_not_allowed_is_shaped_per_flavor() {
        let e = Error::MethodNotAllowed {
            method: "GET".into(),
            path: "/v1/chat/completions".into(),
        };
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        let b = e.body(ApiFlavor::OpenAi);
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "method_not_allowed");
        assert_eq!(
            b["error"]["message"],
            "method GET is not allowed on /v1/chat/completions"
        );
        let b = e.body(ApiFlavor::Anthropic);
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn overloaded_carries_retry_after() {
        let r = Error::Overloaded {
            limit: 1,
            retry_after_secs: 1,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
