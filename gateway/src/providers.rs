//! Builds the cloud provider for each configured backend.

use std::sync::Arc;

use async_trait::async_trait;
use tandem_cloud_adapters::{
    ChatRequest, ChatResponse, EventStream, Provider, ProviderError, ProviderErrorKind, WireFormat,
};

use crate::config::{BackendConfig, BackendKind};

/// The provider for a cloud backend.
pub fn build_provider(config: &BackendConfig) -> Arc<dyn Provider> {
    let format = match config.kind {
        BackendKind::Anthropic => WireFormat::Anthropic,
        _ => WireFormat::OpenAi,
    };
    Arc::new(Unavailable {
        name: config.name.clone(),
        format,
    })
}

/// A provider that cannot be reached from this build; every call fails with a clear error.
#[derive(Debug)]
struct Unavailable {
    name: String,
    format: WireFormat,
}

impl Unavailable {
    fn error(&self) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::Unsupported,
            self.name.clone(),
            "no client for this backend kind in this build",
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
