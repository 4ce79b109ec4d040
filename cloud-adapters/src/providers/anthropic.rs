//! Anthropic Messages (`x-api-key`, `anthropic-version: 2023-06-01`).

use ::http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use async_trait::async_trait;

use super::{checked_base, endpoint, header_map};
use crate::client::{HttpClient, HttpConfig, RequestBuilder};
use crate::error::{Error, Result};
use crate::http;
use crate::provider::{Capabilities, EventStream, Provider, ProviderError};
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

/// A provider speaking Anthropic Messages.
#[derive(Debug, Clone)]
pub struct Anthropic {
    name: String,
    model: Option<String>,
    default_max_tokens: u32,
    url: ::http::Uri,
    headers: HeaderMap,
    client: HttpClient,
}

impl Anthropic {
    /// A provider with its own pooled client.
    pub fn new(config: AnthropicConfig) -> Result<Self> {
        let client = HttpClient::new(&config.http)?;
        Self::with_client(config, client)
    }

    /// A provider sharing an existing client.
    pub fn with_client(config: AnthropicConfig, client: HttpClient) -> Result<Self> {
        let base = checked_base(&config.name, &config.base_url)?;
        if config.default_max_tokens == 0 {
            return Err(Error::Config(format!(
                "{}: default_max_tokens must be at least 1",
                config.name
            )));
        }
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let url = endpoint(&config.name, url)?;
        let mut headers = header_map(&config.name, &config.extra_headers)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let version = HeaderValue::from_str(&config.version)
            .map_err(|_| Error::Config(format!("{}: invalid anthropic version", config.name)))?;
        headers.insert("anthropic-version", version);
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(key).map_err(|_| {
                Error::Config(format!(
                    "{}: api_key is not a valid header value",
                    config.name
                ))
            })?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        Ok(Anthropic {
            name: config.name,
            model: config.model,
            default_max_tokens: config.default_max_tokens,
            url,
            headers,
            client,
        })
    }

    /// The messages URL requests go to.
    pub fn url(&self) -> &::http::Uri {
        &self.url
    }

    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<RequestBuilder<'_>, ProviderError> {
        let model = self.model.as_deref().unwrap_or(&req.model);
        let body = MessagesRequest::new(req, model, stream, self.default_max_tokens);
        http::post_json(&self.client, &self.url, &self.headers, &self.name, &body)
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        WireFormat::Anthropic
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ANTHROPIC
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let request = self.request(req, false)?;
        let response = http::send(request, &self.name, wire::parse_error_body).await?;
        let body = http::read_body(response, &self.name).await?;
        wire::parse_messages_response(&body, &self.name)
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let request = self
            .request(req, true)?
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let response = http::send(request, &self.name, wire::parse_error_body).await?;
        let body = http::body_stream(response, &self.name);
        Ok(http::decode_sse(
            body,
            EventDecoder::new(&*self.name),
            &*self.name,
        ))
    }
}
