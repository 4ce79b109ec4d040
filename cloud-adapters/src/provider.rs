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

/// An upstream's raw body, chunk by chunk, with transport failures mapped.
pub type ByteStream = BoxStream<'static, Result<Bytes, ProviderError>>;

/// An upstream API beside chat and legacy completions whose bodies go as the client wrote them
/// (the model mapped) and come back as the upstream sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI's `/embeddings`.
    Embeddings,
    /// OpenAI's `/responses`.
    Responses,
    /// Anthropic's `/v1/messages/count_tokens`.
    CountTokens,
}

impl Api {
    /// Every API, for building their URLs once.
    pub const ALL: [Api; 3] = [Api::Embeddings, Api::Responses, Api::CountTokens];

    /// The API's path as clients know it.
    pub fn path(self) -> &'static str {
        match self {
            Api::Embeddings => "/v1/embeddings",
            Api::Responses => "/v1/responses",
            Api::CountTokens => "/v1/messages/count_tokens",
        }
    }
}

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
    /// OpenAI's own Responses API upstream (`/responses`), which a Responses request passes
    /// through as it came; elsewhere it is translated to chat.
    pub responses_api: bool,
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
        responses_api: false,
    };

    /// OpenAI's own API (and Azure OpenAI): no top-k, and the Responses API.
    pub const OPENAI: Capabilities = Capabilities {
        api: "OpenAI's own API",
        top_k: false,
        responses_api: true,
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
        responses_api: false,
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

    /// Sends `body` (the client's, its model mapped to `model`) to the upstream's `api` and
    /// returns the whole answer as it came. Providers without that API answer
    /// [`ProviderErrorKind::Unsupported`].
    async fn forward(&self, api: Api, model: &str, body: Bytes) -> Result<Bytes, ProviderError> {
        let _ = (model, body);
        Err(self.no_api(api))
    }

    /// Like [`Provider::forward`] for a body asking for a stream: the upstream's SSE bytes as
    /// they come.
    async fn forward_stream(
        &self,
        api: Api,
        model: &str,
        body: Bytes,
    ) -> Result<ByteStream, ProviderError> {
        let _ = (model, body);
        Err(self.no_api(api))
    }

    /// Reads or deletes (`method`) what the upstream's `api` keeps at `path` under that API's
    /// URL (a stored response: `/resp_1`, `/resp_1/input_items?limit=2`), for `model`, and
    /// returns the answer as it came. Providers without that API answer
    /// [`ProviderErrorKind::Unsupported`].
    async fn fetch(
        &self,
        api: Api,
        model: &str,
        method: ::http::Method,
        path: &str,
    ) -> Result<Bytes, ProviderError> {
        let _ = (model, method, path);
        Err(self.no_api(api))
    }

    /// The error of a provider without `api`.
    fn no_api(&self, api: Api) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::Unsupported,
            self.name(),
            format!("this provider has no {} API", api.path()),
        )
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
