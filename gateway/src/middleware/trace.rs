//! Tracing spans: one span per request with method, path and request id; the response status and
//! latency are logged when headers go out.

use std::time::Duration;

use http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

use crate::context::RequestId;

/// Builds the span of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let id = request
            .extensions()
            .get::<RequestId>()
            .map(RequestId::as_str)
            .unwrap_or("-");
        // Display (`%`) fields are written as they are; plain `&str` fields would be escaped
        // character by character when the span is formatted.
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
    }
}

/// Logs the response at debug level (errors are logged by the handlers that see them).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = latency.as_micros() as u64,
            "response"
        );
    }
}

/// The tracing layer as configured for the gateway.
pub type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogResponse>;

/// A tracing layer with the gateway's span and response logging.
pub fn layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(LogResponse)
}
