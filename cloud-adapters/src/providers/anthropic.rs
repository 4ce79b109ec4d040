//! Anthropic Messages (`x-api-key`, `anthropic-version: 2023-06-01`): Anthropic's [`Codec`] and
//! the generic HTTP provider configured with it.

use ::http::header::{HeaderMap, HeaderValue};

use super::codec::Codec;
use super::generic::{HttpProvider, HttpProviderConfig};
use super::{checked_base, key_value};
use crate::client::{HttpClient, HttpConfig};
use crate::error::{Error, Result};
use crate::provider::{Api, Capabilities, ProviderError};
use crate::types::{ChatRequest, ChatResponse, WireFormat};
use crate::wire::anthropic::{self as wire, EventDecoder, MessagesRequest};

/// Configuration of an Anthropic upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicConfig {
    /// The provider's name in errors, metrics and route headers.
    pub name: String,
    /// `https://api.anthropic.com` (with or without `/v1`).
    pub base_url: String,
    /// The API key.
    pub api_key: Option<String>,
    /// The `anthropic-version` header.
    pub version: String,
    /// Headers added to every request (`anthropic-beta`).
    pub extra_headers: Vec<(String, String)>,
    /// `max_tokens` when the client gave none (the API requires it).
    pub default_max_tokens: u32,
    /// The upstream model name; `None` forwards the client's.
    pub model: Option<String>,
    /// Timeouts and pooling.
    pub http: HttpConfig,
}

impl AnthropicConfig {
    /// A config for `base_url` with defaults elsewhere.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        AnthropicConfig {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            version: wire::API_VERSION.to_owned(),
            extra_headers: Vec::new(),
            default_max_tokens: 4096,
            model: None,
            http: HttpConfig::default(),
        }
    }
}

/// Anthropic's Messages format: `/v1/messages`, the key in `x-api-key`, the API version in
/// `anthropic-version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicCodec {
    /// The `anthropic-version` header.
    pub version: String,
    /// `max_tokens` when the client gave none.
    pub default_max_tokens: u32,
}

impl Codec for AnthropicCodec {
    type Decoder = EventDecoder;

    fn format(&self) -> WireFormat {
        WireFormat::Anthropic
    }

    fn chat_url(&self, base: &str) -> String {
        if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        }
    }

    fn api_url(&self, base: &str, api: Api) -> Option<String> {
        (api == Api::CountTokens).then(|| format!("{}/count_tokens", self.chat_url(base)))
    }

    fn add_headers(
        &self,
        provider: &str,
        api_key: Option<&str>,
        headers: &mut HeaderMap,
    ) -> Result<()> {
        let version = HeaderValue::from_str(&self.version)
            .map_err(|_| Error::Config(format!("{provider}: invalid anthropic version")))?;
        headers.insert("anthropic-version", version);
        if let Some(key) = api_key {
            headers.insert("x-api-key", key_value(provider, key)?);
        }
        Ok(())
    }

    fn encode(&self, req: &ChatRequest, model: &str, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&MessagesRequest::new(
            req,
            model,
            stream,
            self.default_max_tokens,
        ))
    }

    fn parse_response(&self, body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
        wire::parse_messages_response(body, provider)
    }

    fn parse_error(&self, status: u16, body: &[u8], provider: &str) -> ProviderError {
        wire::parse_error_body(status, body, provider)
    }

    fn decoder(&self, provider: &str) -> EventDecoder {
        EventDecoder::new(provider)
    }
}

/// A provider speaking Anthropic Messages.
pub type Anthropic = HttpProvider<AnthropicCodec>;

impl HttpProvider<AnthropicCodec> {
    /// A provider with its own pooled client.
    pub fn new(config: AnthropicConfig) -> Result<Self> {
        let client = HttpClient::new(&config.http)?;
        Self::with_client(config, client)
    }

    /// A provider sharing an existing client.
    pub fn with_client(config: AnthropicConfig, client: HttpClient) -> Result<Self> {
        // A bad base URL is reported before a bad `default_max_tokens`.
        checked_base(&config.name, &config.base_url)?;
        if config.default_max_tokens == 0 {
            return Err(Error::Config(format!(
                "{}: default_max_tokens must be at least 1",
                config.name
            )));
        }
        let codec = AnthropicCodec {
            version: config.version,
            default_max_tokens: config.default_max_tokens,
        };
        let upstream = HttpProviderConfig {
            name: config.name,
            base_url: config.base_url,
            api_key: config.api_key,
            extra_headers: config.extra_headers,
            model: config.model,
            capabilities: Some(Capabilities::ANTHROPIC),
        };
        Self::with_codec(codec, upstream, client)
    }
}
