//! Azure OpenAI: each model is served from its own deployment URL
//! (`{base_url}/openai/deployments/{deployment}/...?api-version=...`, `api-key` header), so the
//! provider holds one OpenAI-compatible provider (the generic HTTP provider over OpenAI's codec
//! in Azure's flavour) per deployment and picks it by the (already mapped) model name.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use super::openai_compatible::{Flavour, OpenAiCompatible, OpenAiCompatibleConfig};
use crate::client::{HttpClient, HttpConfig};
use crate::error::{ProviderError, ProviderErrorKind, Result};
use crate::provider::{Api, ByteStream, Capabilities, EventStream, Provider};
use crate::types::{ChatRequest, ChatResponse, WireFormat};
use crate::wire::openai::ChatCompletion;

/// Configuration of an Azure OpenAI resource.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    /// The provider's name in errors, metrics and route headers.
    pub name: String,
    /// The resource URL (`https://x.openai.azure.com`).
    pub base_url: String,
    /// The API key, sent as `api-key`.
    pub api_key: Option<String>,
    /// The `api-version` query value (e.g. `2024-10-21`).
    pub api_version: String,
    /// The deployments served, each named as the model a request asks for.
    pub deployments: Vec<String>,
    /// Timeouts and pooling.
    pub http: HttpConfig,
}

impl AzureConfig {
    /// A config for the resource at `base_url` with no deployments yet.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        api_version: impl Into<String>,
    ) -> Self {
        AzureConfig {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            api_version: api_version.into(),
            deployments: Vec::new(),
            http: HttpConfig::default(),
        }
    }
}

/// A provider for an Azure OpenAI resource: one deployment per model.
#[derive(Debug, Clone)]
pub struct Azure {
    name: String,
    deployments: BTreeMap<String, OpenAiCompatible>,
}

impl Azure {
    /// A provider with its own pooled client.
    pub fn new(config: AzureConfig) -> Result<Self> {
        let client = HttpClient::new(&config.http)?;
        Self::with_client(config, client)
    }

    /// A provider whose deployments share an existing client.
    pub fn with_client(config: AzureConfig, client: HttpClient) -> Result<Self> {
        let mut deployments = BTreeMap::new();
        for deployment in &config.deployments {
            let mut c = OpenAiCompatibleConfig::new(config.name.clone(), config.base_url.clone());
            c.api_key = config.api_key.clone();
            c.http = config.http.clone();
            c.flavour = Flavour::Azure {
                deployment: deployment.clone(),
                api_version: config.api_version.clone(),
            };
            c.capabilities = Capabilities::OPENAI;
            let provider = OpenAiCompatible::with_client(c, client.clone())?;
            deployments.insert(deployment.clone(), provider);
        }
        Ok(Azure {
            name: config.name,
            deployments,
        })
    }

    fn pick(&self, model: &str) -> Result<&OpenAiCompatible, ProviderError> {
        self.deployments.get(model).ok_or_else(|| {
            ProviderError::new(
                ProviderErrorKind::Unsupported,
                self.name.clone(),
                format!(
                    "no Azure deployment is mapped for model `{}` (add it to the backend's models)",
                    model
                ),
            )
        })
    }
}

#[async_trait]
impl Provider for Azure {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OPENAI
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.pick(&req.model)?.chat(req).await
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        self.pick(&req.model)?.chat_completion(req).await
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        self.pick(&req.model)?.chat_stream(req).await
    }

    async fn completions(&self, model: &str, body: Bytes) -> Result<ChatResponse, ProviderError> {
        self.pick(model)?.completions(model, body).await
    }

    async fn completions_stream(
        &self,
        model: &str,
        body: Bytes,
    ) -> Result<EventStream, ProviderError> {
        self.pick(model)?.completions_stream(model, body).await
    }

    async fn forward(&self, api: Api, model: &str, body: Bytes) -> Result<Bytes, ProviderError> {
        self.pick(model)?.forward(api, model, body).await
    }

    async fn forward_stream(
        &self,
        api: Api,
        model: &str,
        body: Bytes,
    ) -> Result<ByteStream, ProviderError> {
        self.pick(model)?.forward_stream(api, model, body).await
    }

    async fn fetch(
        &self,
        api: Api,
        model: &str,
        method: ::http::Method,
        path: &str,
    ) -> Result<Bytes, ProviderError> {
        self.pick(model)?.fetch(api, model, method, path).await
    }
}
