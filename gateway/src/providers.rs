//! Builds the cloud provider for each configured backend from the cloud adapters' providers:
//! OpenAI and OpenAI-compatible servers, Azure (one deployment per mapped model) and Anthropic.

use std::sync::Arc;

use async_trait::async_trait;
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_cloud_adapters::providers::anthropic::{Anthropic, AnthropicConfig};
use tandem_cloud_adapters::providers::azure::{Azure, AzureConfig};
use tandem_cloud_adapters::providers::openai_compatible::{
    OpenAiCompatible, OpenAiCompatibleConfig,
};
use tandem_cloud_adapters::{
    Capabilities, ChatRequest, ChatResponse, EventStream, Provider, ProviderError,
    ProviderErrorKind, WireFormat,
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
                capabilities: capabilities_of(config),
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

/// What a backend's API honours: its preset's word for a named server; OpenAI's own API (and
/// Azure's) has no top-k, which OpenAI-compatible servers take.
fn capabilities_of(config: &BackendConfig) -> Capabilities {
    if let Some(preset) = config.preset {
        return preset.capabilities;
    }
    let kind = config.kind;
    match kind {
        BackendKind::OpenAi | BackendKind::Azure => Capabilities::OPENAI,
        _ => Capabilities::for_format(format_of(kind)),
    }
}

fn try_build(config: &BackendConfig) -> Result<Arc<dyn Provider>, String> {
    let http = HttpConfig {
        connect_timeout: config.connect_timeout,
        read_timeout: config.request_timeout,
        tls: config.tls.clone(),
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
            c.capabilities = capabilities_of(config);
            c.http = http;
            Ok(Arc::new(
                OpenAiCompatible::with_client(c, client).map_err(|e| e.to_string())?,
            ))
        }
        BackendKind::Azure => {
            let api_version = config.api_version.clone().unwrap_or_default();
            let mut c = AzureConfig::new(config.name.clone(), base_url, api_version);
            c.api_key = config.api_key.clone();
            c.deployments = config.models.values().cloned().collect();
            c.http = http;
            Ok(Arc::new(
                Azure::with_client(c, client).map_err(|e| e.to_string())?,
            ))
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

/// A backend that cannot be used; every call fails with the reason.
#[derive(Debug)]
struct Unavailable {
    name: String,
    format: WireFormat,
    /// What the backend's kind honours, so a request it could never serve is refused as it
    /// would be with the backend up.
    capabilities: Capabilities,
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

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn chat(&self, _req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        Err(self.error())
    }

    async fn chat_stream(&self, _req: &ChatRequest) -> Result<EventStream, ProviderError> {
        Err(self.error())
    }
}
