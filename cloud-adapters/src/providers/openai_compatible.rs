//! OpenAI and every OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, Groq, Cerebras,
//! Together), with Azure OpenAI's path and header style as a flavour (one deployment; the Azure
//! provider in [`super::azure`] holds one per deployment).

use ::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;

use super::{checked_base, endpoint, header_map};
use crate::client::{HttpClient, HttpConfig, RequestBuilder};
use crate::error::{Error, Result};
use crate::http;
use crate::provider::{Capabilities, EventStream, Provider, ProviderError};
use crate::types::{ChatRequest, ChatResponse, WireFormat};
use crate::wire::openai::{self, ChatCompletion, ChatCompletionsRequest, ChunkDecoder};

/// How the upstream lays out its URL and key header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Flavour {
    /// `{base_url}/chat/completions`, `Authorization: Bearer {key}`.
    #[default]
    OpenAi,
    /// `{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`,
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

/// A provider speaking OpenAI chat completions.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    name: String,
    model: Option<String>,
    capabilities: Capabilities,
    url: ::http::Uri,
    completions_url: ::http::Uri,
    headers: HeaderMap,
    client: HttpClient,
}

impl OpenAiCompatible {
    /// A provider with its own pooled client.
    pub fn new(config: OpenAiCompatibleConfig) -> Result<Self> {
        let client = HttpClient::new(&config.http)?;
        Self::with_client(config, client)
    }

    /// A provider sharing an existing client.
    pub fn with_client(config: OpenAiCompatibleConfig, client: HttpClient) -> Result<Self> {
        let base = checked_base(&config.name, &config.base_url)?;
        let url_for = |endpoint: &str| match &config.flavour {
            Flavour::OpenAi => format!("{base}/{endpoint}"),
            Flavour::Azure {
                deployment,
                api_version,
            } => format!(
                "{base}/openai/deployments/{deployment}/{endpoint}?api-version={api_version}"
            ),
        };
        let url = endpoint(&config.name, url_for("chat/completions"))?;
        let completions_url = endpoint(&config.name, url_for("completions"))?;
        let mut headers = header_map(&config.name, &config.extra_headers)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &config.api_key {
            let (name, value) = match config.flavour {
                Flavour::OpenAi => ("authorization", format!("Bearer {key}")),
                Flavour::Azure { .. } => ("api-key", key.clone()),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                Error::Config(format!(
                    "{}: api_key is not a valid header value",
                    config.name
                ))
            })?;
            value.set_sensitive(true);
            match name {
                "authorization" => headers.insert(AUTHORIZATION, value),
                _ => headers.insert("api-key", value),
            };
        }
        Ok(OpenAiCompatible {
            name: config.name,
            model: config.model,
            capabilities: config.capabilities,
            url,
            completions_url,
            headers,
            client,
        })
    }

    /// The chat completions URL requests go to.
    pub fn url(&self) -> &::http::Uri {
        &self.url
    }

    /// A POST of a legacy `/completions` body, sent as it is.
    fn legacy_request(&self, body: Bytes) -> RequestBuilder<'_> {
        self.client
            .post(self.completions_url.clone())
            .headers(&self.headers)
            .body(body)
    }

    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<RequestBuilder<'_>, ProviderError> {
        let model = self.model.as_deref().unwrap_or(&req.model);
        let body = ChatCompletionsRequest::new(req, model, stream);
        http::post_json(&self.client, &self.url, &self.headers, &self.name, &body)
    }
}

#[async_trait]
impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let request = self.request(req, false)?;
        let response = http::send(request, &self.name, openai::parse_error_body).await?;
        let body = http::read_body(response, &self.name).await?;
        openai::parse_chat_response(&body, &self.name)
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let request = self.request(req, false)?;
        let response = http::send(request, &self.name, openai::parse_error_body).await?;
        let body = http::read_body(response, &self.name).await?;
        openai::pass_chat_response(body, &self.name)
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let request = self
            .request(req, true)?
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let response = http::send(request, &self.name, openai::parse_error_body).await?;
        let body = http::body_stream(response, &self.name);
        Ok(http::decode_sse(
            body,
            ChunkDecoder::new(&*self.name),
            &*self.name,
        ))
    }

    async fn completions(&self, _model: &str, body: Bytes) -> Result<ChatResponse, ProviderError> {
        let request = self.legacy_request(body);
        let response = http::send(request, &self.name, openai::parse_error_body).await?;
        let body = http::read_body(response, &self.name).await?;
        openai::parse_chat_response(&body, &self.name)
    }

    async fn completions_stream(
        &self,
        _model: &str,
        body: Bytes,
    ) -> Result<EventStream, ProviderError> {
        let request = self
            .legacy_request(body)
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let response = http::send(request, &self.name, openai::parse_error_body).await?;
        let body = http::body_stream(response, &self.name);
        Ok(http::decode_sse(
            body,
            ChunkDecoder::new(&*self.name),
            &*self.name,
        ))
    }
}
