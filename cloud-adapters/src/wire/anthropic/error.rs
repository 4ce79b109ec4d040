//! Anthropic's error shape, both ways: the body sent to a client for an upstream failure
//! (`{"type":"error","error":{"type","message"}}`), and an upstream's error body read back.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ProviderError, ProviderErrorKind};
use crate::wire::error as wire_error;
use crate::wire::json;

/// The Anthropic error `type` for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_type(err: &ProviderError) -> &'static str {
    match err.status {
        Some(s) => error_type_for_status(s),
        None if err.kind == ProviderErrorKind::Unsupported => "invalid_request_error",
        None => "api_error",
    }
}

#[derive(Serialize)]
pub(super) struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The Anthropic error body for an upstream failure: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(err: &ProviderError) -> Value {
    serde_json::json!({"type": "error", "error": {"type": error_type(err), "message": err.message}})
}

/// [`error_body`] as bytes with the fields in Anthropic's order.
pub fn error_body_bytes(err: &ProviderError) -> Bytes {
    Bytes::from(json::to_string(&error_out(err)))
}

/// The error body for `err`, ready to serialize in Anthropic's field order.
pub(super) fn error_out(err: &ProviderError) -> ErrorOut<'_> {
    ErrorOut {
        kind: "error",
        error: ErrorInner {
            kind: error_type(err),
            message: &err.message,
        },
    }
}

/// Parses an upstream error response (`{"type":"error","error":{"type","message"}}`) into a
/// [`ProviderError`] with the status's retryability.
pub fn parse_error_body(status: u16, body: &[u8], provider: &str) -> ProviderError {
    wire_error::parse_error_body(status, body, provider, error_from_value)
}

/// The error an Anthropic-shaped error body (or a stream's `error` event, without a status)
/// describes.
pub(super) fn error_from_value(status: Option<u16>, value: Value, provider: &str) -> ProviderError {
    let inner = value.get("error");
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    // An error event mid-stream carries no status; its type says what happened.
    let status_of_type = match inner.and_then(|e| e.get("type")).and_then(Value::as_str) {
        Some("overloaded_error") => Some(529),
        Some("rate_limit_error") => Some(429),
        Some("api_error") => Some(500),
        _ => None,
    };
    wire_error::error_from_body(status, value, provider, message, |e| {
        e.status = status_of_type;
        e.retryable = status_of_type.is_some();
    })
}
