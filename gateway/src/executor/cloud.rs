//! The cloud executor: one [`Provider`] (OpenAI, Azure, Anthropic, any OpenAI-compatible server)
//! with the backend's model map and prices.

use std::sync::Arc;

use async_trait::async_trait;
use tandem_cloud_adapters::{ChatRequest, ChatResponse, EventStream, Provider};

use super::{Executor, upstream_error};
use crate::config::{BackendConfig, BackendKind, Price};
use crate::error::Error;

/// Runs requests on a cloud provider.
pub struct CloudExecutor {
    config: BackendConfig,
    provider: Arc<dyn Provider>,
}

impl CloudExecutor {
    /// An executor for `config` speaking through `provider`.
    pub fn new(config: BackendConfig, provider: Arc<dyn Provider>) -> Self {
        Self { config, provider }
    }

    fn upstream_request(&self, mut request: ChatRequest) -> ChatRequest {
        request.model = self.config.upstream_model(&request.model).to_owned();
        request
    }
}

impl std::fmt::Debug for CloudExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudExecutor")
            .field("backend", &self.config.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Executor for CloudExecutor {
    fn backend(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> BackendKind {
        self.config.kind
    }

    fn price(&self) -> Price {
        self.config.price
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let request = self.upstream_request(request);
        self.provider
            .chat_stream(&request)
            .await
            .map_err(|e| upstream_error(&self.config.name, e))
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Error> {
        let request = self.upstream_request(request);
        self.provider
            .chat(&request)
            .await
            .map_err(|e| upstream_error(&self.config.name, e))
    }
}
