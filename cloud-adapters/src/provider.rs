//! The provider trait every cloud backend implements, and the upstream error it reports.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::openai::ChatCompletion;
use crate::types::{ChatEvent, ChatRequest, ChatResponse, WireFormat};

/// What kind of failure an upstream call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderErrorKind {
    /// The connection could not be made.
    Connect,
    /// The upstream took too long (connect or read).
    Timeout,
    /// The upstream answered with an error status.
    Status,
    /// The upstream's body could not be understood.
    Decode,
    /// A stream ended before its end marker.
    StreamCut,
    /// The request asks for something this provider cannot do.
    Unsupported,
    /// The caller went away.
    Cancelled,
}

impl ProviderErrorKind {
    /// A short, low-cardinality label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderErrorKind::Connect => "connect",
            ProviderErrorKind::Timeout => "timeout",
            ProviderErrorKind::Status => "status",
            ProviderErrorKind::Decode => "decode",
            ProviderErrorKind::StreamCut => "stream_cut",
            ProviderErrorKind::Unsupported => "unsupported",
            ProviderErrorKind::Cancelled => "cancelled",
        }
    }
}

/// An upstream failure: what happened, the status if any, and whether a retry may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ProviderErrorKind,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, in words (the upstream's own message when it gave one).
    pub message: String,
    /// Whether sending the same request again (here or elsewhere) may succeed.
    pub retryable: bool,
    /// The upstream's error body, when it was JSON.
    pub upstream_body: Option<serde_json::Value>,
    /// How long the upstream asked callers to wait before trying again (its `retry-after`, in
    /// seconds).
    pub retry_after_secs: Option<u64>,
    /// The provider's configured name.
    pub provider: String,
}

impl ProviderError {
    /// An error of `kind`; retryability follows the kind (connect, timeout, cut: yes).
    pub fn new(
        kind: ProviderErrorKind,
        provider: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let retryable = matches!(
            kind,
            ProviderErrorKind::Connect | ProviderErrorKind::Timeout | ProviderErrorKind::StreamCut
        );
        ProviderError {
            kind,
            status: None,
            message: message.into(),
            retryable,
            upstream_body: None,
            retry_after_secs: None,
            provider: provider.into(),
        }
    }

    /// An error status from the upstream; retryability follows [`status_is_retryable`].
    pub fn status(status: u16, provider: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Status,
            status: Some(status),
            message: message.into(),
            retryable: status_is_retryable(status),
            upstream_body: None,
            retry_after_secs: None,
            provider: provider.into(),
        }
    }

    /// A stream that ended before its end marker.
    pub fn stream_cut(provider: impl Into<String>) -> Self {
        Self::new(
            ProviderErrorKind::StreamCut,
            provider,
            "upstream stream ended before completion",
        )
    }

    /// The same error attributed to `provider`.
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }
}

/// Whether an upstream HTTP status is worth retrying: rate limits, server errors, overload.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529) || status > 529
}

/// A stream of normalized events from a provider.
pub type EventStream = BoxStream<'static, ChatEvent>;

/// A cloud backend: sends a normalized request, answers with a normalized response or stream.
///
/// Usage is reported inside the answer ([`ChatResponse::usage`], [`ChatEvent::Usage`]).
/// Dropping a returned future or stream drops the upstream request.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The configured name, used in errors, metrics and route headers.
    fn name(&self) -> &str;

    /// The wire format the provider speaks upstream.
    fn format(&self) -> WireFormat;

    /// Sends `req` and waits for the whole answer.
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// Sends `req` and waits for the whole answer in the form an OpenAI client receives it. A
    /// provider that speaks OpenAI's format upstream passes the upstream's body on as it came;
    /// the others encode their normalized answer.
    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        self.chat(req).await.map(|r| ChatCompletion::encode(&r))
    }

    /// Sends `req` and streams the answer. Errors before the first byte come back as `Err`;
    /// later ones as a final [`ChatEvent::Error`].
    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError>;

    /// Sends a legacy `/completions` body as the client wrote it (`model` already mapped to the
    /// upstream's id, `stream` false) and folds the `text_completion` into a [`ChatResponse`].
    /// Providers without that API answer [`ProviderErrorKind::Unsupported`].
    async fn completions(&self, model: &str, body: Bytes) -> Result<ChatResponse, ProviderError> {
        let _ = (model, body);
        Err(self.no_legacy_completions())
    }

    /// Like [`Provider::completions`] for a body with `"stream": true`, streaming the answer.
    async fn completions_stream(
        &self,
        model: &str,
        body: Bytes,
    ) -> Result<EventStream, ProviderError> {
        let _ = (model, body);
        Err(self.no_legacy_completions())
    }

    /// The error of a provider without the legacy completions API.
    fn no_legacy_completions(&self) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::Unsupported,
            self.name(),
            "this provider has no legacy /completions API",
        )
    }
}
