//! Builds the cloud provider for each configured backend from the cloud adapters: OpenAI and
//! OpenAI-compatible servers, Azure (one deployment per mapped model) and Anthropic.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::providers::anthropic::{Anthropic, AnthropicConfig};
use tandem_cloud_adapters::providers::openai_compatible::{
    Flavour, OpenAiCompatible, OpenAiCompatibleConfig,
};
use tandem_cloud_adapters::{
    ChatRequest, ChatResponse, EventStream, Provider, ProviderError, ProviderErrorKind, WireFormat,
};

use crate::config::{BackendConfig, BackendKind};

/// The provider for a cloud backend. A backend whose client cannot be built gets a provider
/// that fails every call with the reason, so one bad backend does not stop the others.
pub fn build_provider(config: &BackendConfig) -> Arc<dyn Provider> {
    match try_build(config) {
        Ok(p) => p,
        Err(message) => {
            tracing::error!(backend = %config.name, %message, "backend unusable");
            Arc::new(Unavailable {
                name: config.name.clone(),
                format: format_of(config.kind),
                message,
            })
        }
    }
}

fn format_of(kind: BackendKind) -> WireFormat {
    match kind {
        BackendKind::Anthropic => WireFormat::Anthropic,
        _ => WireFormat::OpenAi,
    }
}

fn try_build(config: &BackendConfig) -> Result<Arc<dyn Provider>, String> {
    let http = HttpConfig {
        connect_timeout: config.connect_timeout,
        read_timeout: config.request_timeout,
        ..HttpConfig::default()
    };
    let client = HttpClient::new(&http).map_err(|e| e.to_string())?;
    let base_url = config
        .base_url
        .clone()
        .ok_or_else(|| "no base_url".to_owned())?;
    match config.kind {
        BackendKind::Local => Err("a local backend has no provider".into()),
        BackendKind::Speculative => Err("a speculative backend has no provider".into()),
        BackendKind::OpenAi | BackendKind::OpenAiCompatible => {
            let mut c = OpenAiCompatibleConfig::new(config.name.clone(), base_url);
            c.api_key = config.api_key.clone();
            c.http = http;
            Ok(Arc::new(
                OpenAiCompatible::with_client(c, client).map_err(|e| e.to_string())?,
            ))
        }
        BackendKind::Azure => {
            let api_version = config.api_version.clone().unwrap_or_default();
            let mut deployments = BTreeMap::new();
            for deployment in config.models.values() {
                let mut c = OpenAiCompatibleConfig::new(config.name.clone(), base_url.clone());
                c.api_key = config.api_key.clone();
                c.http = http.clone();
                c.flavour = Flavour::Azure {
                    deployment: deployment.clone(),
                    api_version: api_version.clone(),
                };
                let p =
                    OpenAiCompatible::with_client(c, client.clone()).map_err(|e| e.to_string())?;
                deployments.insert(deployment.clone(), Arc::new(p) as Arc<dyn Provider>);
            }
            Ok(Arc::new(AzureDeployments {
                name: config.name.clone(),
                deployments,
            }))
        }
        BackendKind::Anthropic => {
            let mut c = AnthropicConfig::new(config.name.clone(), base_url);
            c.api_key = config.api_key.clone();
            c.http = http;
            Ok(Arc::new(
                Anthropic::with_client(c, client).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// Azure serves each model from its own deployment URL: one provider per deployment, picked by
/// the (already mapped) model name.
struct AzureDeployments {
    name: String,
    deployments: BTreeMap<String, Arc<dyn Provider>>,
}

impl AzureDeployments {
    fn pick(&self, model: &str) -> Result<&Arc<dyn Provider>, ProviderError> {
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
impl Provider for AzureDeployments {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
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
}

/// A backend that cannot be used; every call fails with the reason.
#[derive(Debug)]
struct Unavailable {
    name: String,
    format: WireFormat,
    message: String,
}

impl Unavailable {
    fn error(&self) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::Unsupported,
            self.name.clone(),
            self.message.clone(),
        )
    }
}

#[async_trait]
impl Provider for Unavailable {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        self.format
    }

    async fn chat(&self, _req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        Err(self.error())
    }

    async fn chat_stream(&self, _req: &ChatRequest) -> Result<EventStream, ProviderError> {
        Err(self.error())
    }
}
