//! OpenAI and every OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, Groq, Cerebras,
//! Together), with Azure OpenAI's path and header style as a flavour (one deployment; the Azure
//! provider in [`super::azure`] holds one per deployment): OpenAI's [`Codec`] and the generic
//! HTTP provider configured with it.

use ::http::header::{AUTHORIZATION, HeaderMap};
use bytes::Bytes;

use super::codec::Codec;
use super::generic::{HttpProvider, HttpProviderConfig};
use super::key_value;
use crate::client::{HttpClient, HttpConfig};
use crate::error::Result;
use crate::provider::{Api, Capabilities, ProviderError};
use crate::types::{ChatRequest, ChatResponse, WireFormat};
use crate::wire::openai::{self, ChatCompletion, ChatCompletionsRequest, ChunkDecoder};

/// How the upstream lays out its URL and key header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Flavour {
    /// `{base_url}/chat/completions`, `Authorization: Bearer {key}`.
    #[default]
    OpenAi,
    /// `{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`
    /// (and the other APIs beside it, but the Responses API: `{base_url}/openai/v1/responses`),
    /// `api-key: {key}`.
    Azure {
        /// The deployment name.
        deployment: String,
        /// The `api-version` query value (e.g. `2024-10-21`).
        api_version: String,
    },
}

/// Configuration of an OpenAI-compatible upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiCompatibleConfig {
    /// The provider's name in errors, metrics and route headers.
    pub name: String,
    /// Base URL including the version path (`https://api.openai.com/v1`,
    /// `http://127.0.0.1:8000/v1`); for Azure the resource URL (`https://x.openai.azure.com`).
    pub base_url: String,
    /// The API key, if the upstream needs one.
    pub api_key: Option<String>,
    /// Headers added to every request (`OpenAI-Organization`, routing hints).
    pub extra_headers: Vec<(String, String)>,
    /// URL and key style.
    pub flavour: Flavour,
    /// The upstream model name; `None` forwards the client's.
    pub model: Option<String>,
    /// What the server's API can honour: [`Capabilities::FULL`] for OpenAI-compatible servers,
    /// [`Capabilities::OPENAI`] for OpenAI's own API.
    pub capabilities: Capabilities,
    /// Timeouts and pooling.
    pub http: HttpConfig,
}

impl OpenAiCompatibleConfig {
    /// A config for `base_url` with defaults elsewhere.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        OpenAiCompatibleConfig {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            extra_headers: Vec::new(),
            flavour: Flavour::OpenAi,
            model: None,
            capabilities: Capabilities::FULL,
            http: HttpConfig::default(),
        }
    }
}

/// OpenAI's chat completions format, with the legacy `/completions` API beside it, in one
/// [`Flavour`]'s URL and key style.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenAiCodec {
    /// URL and key style.
    pub flavour: Flavour,
}

impl OpenAiCodec {
    /// The URL of `endpoint` (`chat/completions`, `completions`) under `base`.
    fn url(&self, base: &str, endpoint: &str) -> String {
        match &self.flavour {
            Flavour::OpenAi => format!("{base}/{endpoint}"),
            Flavour::Azure {
                deployment,
                api_version,
            } => {
                format!(
                    "{base}/openai/deployments/{deployment}/{endpoint}?api-version={api_version}"
                )
            }
        }
    }
}

impl Codec for OpenAiCodec {
    type Decoder = ChunkDecoder;

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
    }

    fn chat_url(&self, base: &str) -> String {
        self.url(base, "chat/completions")
    }

    fn completions_url(&self, base: &str) -> Option<String> {
        Some(self.url(base, "completions"))
    }

    fn api_url(&self, base: &str, api: Api) -> Option<String> {
        match api {
            Api::Embeddings => Some(self.url(base, "embeddings")),
            Api::Responses => Some(match &self.flavour {
                Flavour::OpenAi => format!("{base}/responses"),
                // Azure serves the Responses API only on its v1 API: no deployment in the path
                // (the body's `model` names it) and no `api-version`.
                Flavour::Azure { .. } => format!("{base}/openai/v1/responses"),
            }),
            Api::CountTokens => None,
        }
    }

    fn add_headers(
        &self,
        provider: &str,
        api_key: Option<&str>,
        headers: &mut HeaderMap,
    ) -> Result<()> {
        if let Some(key) = api_key {
            match self.flavour {
                Flavour::OpenAi => headers.insert(
                    AUTHORIZATION,
                    key_value(provider, &format!("Bearer {key}"))?,
                ),
                Flavour::Azure { .. } => headers.insert("api-key", key_value(provider, key)?),
            };
        }
        Ok(())
    }

    fn encode(&self, req: &ChatRequest, model: &str, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ChatCompletionsRequest::new(req, model, stream))
    }

    fn parse_response(&self, body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
        openai::parse_chat_response(body, provider)
    }

    fn pass_response(&self, body: Bytes, provider: &str) -> Result<ChatCompletion, ProviderError> {
        openai::pass_chat_response(body, provider)
    }

    fn parse_error(&self, status: u16, body: &[u8], provider: &str) -> ProviderError {
        openai::parse_error_body(status, body, provider)
    }

    fn decoder(&self, provider: &str) -> ChunkDecoder {
        ChunkDecoder::new(provider)
    }
}

/// A provider speaking OpenAI chat completions.
pub type OpenAiCompatible = HttpProvider<OpenAiCodec>;

impl HttpProvider<OpenAiCodec> {
    /// A provider with its own pooled client.
    pub fn new(config: OpenAiCompatibleConfig) -> Result<Self> {
        let client = HttpClient::new(&config.http)?;
        Self::with_client(config, client)
    }

    /// A provider sharing an existing client.
    pub fn with_client(config: OpenAiCompatibleConfig, client: HttpClient) -> Result<Self> {
        let codec = OpenAiCodec {
            flavour: config.flavour,
        };
        let upstream = HttpProviderConfig {
            name: config.name,
            base_url: config.base_url,
            api_key: config.api_key,
            extra_headers: config.extra_headers,
            model: config.model,
            capabilities: Some(config.capabilities),
        };
        Self::with_codec(codec, upstream, client)
    }
}
