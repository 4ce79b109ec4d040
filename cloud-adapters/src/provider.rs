//! The provider trait every cloud backend implements. The upstream error it reports lives in
//! [`crate::error`], a leaf that the normalized types can name without reaching back here.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use crate::error::{ProviderError, ProviderErrorKind, status_is_retryable};
use crate::types::{ChatEvent, ChatRequest, ChatResponse, WireFormat};
use crate::wire::openai::ChatCompletion;

/// A stream of normalized events from a provider.
pub type EventStream = BoxStream<'static, ChatEvent>;

/// What a backend's API can honour of a normalized request. The gateway refuses, before sending,
/// a request that asks for something its backend cannot do, so nothing the client asked for is
/// silently lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Whose API this is, as a refusal names it (`Anthropic's API`).
    pub api: &'static str,
    /// A structured-output mode (`response_format` other than plain text).
    pub structured_output: bool,
    /// Token log-probabilities (`logprobs`, `top_logprobs`).
    pub logprobs: bool,
    /// Several choices in one request (`n` > 1).
    pub several_choices: bool,
    /// A sampling seed.
    pub seed: bool,
    /// Top-k sampling.
    pub top_k: bool,
}

impl Capabilities {
    /// Everything the normalized request can say: OpenAI-compatible servers (vLLM, SGLang,
    /// llama.cpp, Ollama) take top-k as well.
    pub const FULL: Capabilities = Capabilities {
        api: "an OpenAI-compatible server",
        structured_output: true,
        logprobs: true,
        several_choices: true,
        seed: true,
        top_k: true,
    };

    /// OpenAI's own API (and Azure OpenAI): no top-k.
    pub const OPENAI: Capabilities = Capabilities {
        api: "OpenAI's own API",
        top_k: false,
        ..Capabilities::FULL
    };

    /// Anthropic's API: no structured-output mode, no log-probabilities, one choice, no seed.
    pub const ANTHROPIC: Capabilities = Capabilities {
        api: "Anthropic's API",
        structured_output: false,
        logprobs: false,
        several_choices: false,
        seed: false,
        top_k: true,
    };

    /// What a server speaking `format` can be assumed to honour, when the provider says no more.
    pub fn for_format(format: WireFormat) -> Self {
        match format {
            WireFormat::OpenAi => Capabilities::FULL,
            WireFormat::Anthropic => Capabilities::ANTHROPIC,
        }
    }
}

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

    /// What the backend's API can honour; by default what its wire format can carry.
    fn capabilities(&self) -> Capabilities {
        Capabilities::for_format(self.format())
    }

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
