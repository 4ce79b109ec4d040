//! OpenAI's error shape, both ways: the body sent to a client for an upstream failure
//! (`{"error":{"message","type","param","code"}}`), and an upstream's error body read back.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ProviderError, ProviderErrorKind};
use crate::wire::error as wire_error;
use crate::wire::json;

#[derive(Serialize)]
pub(super) struct ErrorOut<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: &'static str,
}

/// The OpenAI error body for an upstream failure: `{"error":{"message","type","param","code"}}`.
pub fn error_body(err: &ProviderError) -> Value {
    serde_json::to_value(error_out(err)).unwrap_or(Value::Null)
}

/// [`error_body`] as bytes with the fields in OpenAI's order.
pub fn error_body_bytes(err: &ProviderError) -> Bytes {
    Bytes::from(json::to_string(&error_out(err)))
}

pub(super) fn error_out(err: &ProviderError) -> ErrorOut<'_> {
    let kind = match (err.kind, err.status) {
        (_, Some(429)) => "rate_limit_error",
        (_, Some(400 | 404 | 422)) => "invalid_request_error",
        (_, Some(401)) => "authentication_error",
        (_, Some(403)) => "permission_error",
        (ProviderErrorKind::Unsupported, _) => "invalid_request_error",
        _ => "server_error",
    };
    ErrorOut {
        error: ErrorInner {
            message: &err.message,
            kind,
            param: None,
            code: err.kind.as_str(),
        },
    }
}

/// Parses an upstream error response (`{"error":{"message","type","code"}}`) into a
/// [`ProviderError`] with the status's retryability.
pub fn parse_error_body(status: u16, body: &[u8], provider: &str) -> ProviderError {
    wire_error::parse_error_body(status, body, provider, error_from_value)
}

/// The error an OpenAI-shaped error body (or a stream's `error` chunk, without a status)
/// describes. Some servers put the message in `error` itself or at the top level.
pub(super) fn error_from_value(status: Option<u16>, value: Value, provider: &str) -> ProviderError {
    let inner = value.get("error");
    let message = inner
        .and_then(|e| {
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
        })
        .or_else(|| value.get("message").and_then(Value::as_str))
        .map(str::to_owned);
    // An error inside a stream: retryable when it says the server failed or is busy.
    let busy = matches!(
        inner.and_then(|e| e.get("type")).and_then(Value::as_str),
        Some("server_error" | "rate_limit_error" | "overloaded_error")
    );
    wire_error::error_from_body(status, value, provider, message, |e| {
        e.retryable = busy;
    })
}
