//! The [`Codec`] trait: what a wire format tells the generic HTTP provider
//! ([`super::generic::HttpProvider`]) so that the provider itself holds no format of its own.

use bytes::Bytes;
use http::header::HeaderMap;

use crate::error::Result;
use crate::http::StreamDecode;
use crate::provider::{Api, ProviderError};
use crate::types::{ChatRequest, ChatResponse, WireFormat};
use crate::wire::openai::ChatCompletion;

/// One upstream API's wire format: its URLs, its headers, its request body, and how its answers,
/// streams and error bodies read. One implementation per format (and URL or key style); the
/// sending, status mapping, body reading and SSE plumbing are the generic provider's.
pub trait Codec: Send + Sync + 'static {
    /// The decoder of the format's SSE stream.
    type Decoder: StreamDecode;

    /// The wire format spoken upstream.
    fn format(&self) -> WireFormat;

    /// The chat endpoint's URL under `base` (checked, without trailing slashes).
    fn chat_url(&self, base: &str) -> String;

    /// The legacy `/completions` endpoint's URL under `base`, for an API that has one. Its
    /// answers are read by [`Codec::parse_response`] and [`Codec::decoder`].
    fn completions_url(&self, base: &str) -> Option<String> {
        let _ = base;
        None
    }

    /// The URL of another of the API's endpoints (`api`) under `base`, for an API that has it.
    /// Bodies go to it as the client wrote them and come back as they came.
    fn api_url(&self, base: &str, api: Api) -> Option<String> {
        let _ = (base, api);
        None
    }

    /// Adds the format's own headers (key, version) to `headers`, which already hold the
    /// configured extra headers and the JSON content type. `provider` names it in errors.
    fn add_headers(
        &self,
        provider: &str,
        api_key: Option<&str>,
        headers: &mut HeaderMap,
    ) -> Result<()>;

    /// The request body for `req`, asking the upstream for `model`.
    fn encode(&self, req: &ChatRequest, model: &str, stream: bool) -> serde_json::Result<Vec<u8>>;

    /// A whole answer read into a [`ChatResponse`].
    fn parse_response(&self, body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError>;

    /// A whole answer in the form an OpenAI client receives it: by default the normalized answer
    /// encoded; OpenAI's format passes the upstream's body on as it came.
    fn pass_response(&self, body: Bytes, provider: &str) -> Result<ChatCompletion, ProviderError> {
        self.parse_response(&body, provider)
            .map(|r| ChatCompletion::encode(&r))
    }

    /// An error status's body read into a [`ProviderError`] (kind, retryability, message).
    fn parse_error(&self, status: u16, body: &[u8], provider: &str) -> ProviderError;

    /// A fresh decoder for one streamed answer.
    fn decoder(&self, provider: &str) -> Self::Decoder;
}
