//! The cloud executor: one [`Provider`] (OpenAI, Azure, Anthropic, any OpenAI-compatible server)
//! with the backend's model map and prices.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::{
    Api, ChatRequest, ChatResponse, EventStream, Provider, ProviderErrorKind, WireFormat,
};

use super::completion::{CompletionCall, CompletionOutput};
use super::{
    CountSource, Executor, Forwarded, TokenCount, cannot_honour, estimate_tokens, no_api,
    no_legacy_completions, refuse_dropped_fields, refuse_several_choices, upstream_error,
    wants_structured_output,
};
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

    /// The request with the model mapped, or why this backend cannot honour it: what the
    /// provider's capabilities ([`tandem_cloud_adapters::Capabilities`]) say its API lacks
    /// (Anthropic's: structured output, log-probabilities, several choices, a seed; OpenAI's
    /// own: top-k), and fields beyond the normalized request, which reach an upstream only in
    /// the client's own format; none of them may be silently lost.
    fn upstream_request(&self, mut request: ChatRequest) -> Result<ChatRequest, Error> {
        let name = &self.config.name;
        let can = self.provider.capabilities();
        let lacks =
            |param: &str, what: &str| cannot_honour(name, param, &format!("({}) {what}", can.api));
        if !can.structured_output && wants_structured_output(&request) {
            return Err(lacks("response_format", "has no structured-output mode"));
        }
        if !can.logprobs && (request.logprobs || request.top_logprobs.is_some()) {
            let param = if request.logprobs {
                "logprobs"
            } else {
                "top_logprobs"
            };
            return Err(lacks(param, "returns no log-probabilities"));
        }
        if !can.several_choices {
            refuse_several_choices(name, &request)?;
        }
        if !can.seed && request.seed.is_some() {
            return Err(lacks("seed", "has no sampling seed"));
        }
        if !can.top_k && request.top_k.is_some() {
            return Err(lacks("top_k", "has no top_k"));
        }
        refuse_dropped_fields(name, &request, Some(self.provider.format()))?;
        request.model = self.config.upstream_model(&request.model).to_owned();
        Ok(request)
    }

    /// A body for another of the upstream's APIs, with the model mapped to the upstream's id.
    fn mapped_body(&self, body: &Map<String, Value>) -> (String, Bytes) {
        let mut body = body.clone();
        let model = self.map_model(&mut body);
        (
            model,
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        )
    }

    /// Replaces the client's model in `body` with the upstream's id, and returns that.
    fn map_model(&self, body: &mut Map<String, Value>) -> String {
        let client_model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let model = self.config.upstream_model(client_model).to_owned();
        body.insert("model".into(), Value::String(model.clone()));
        model
    }

    /// A provider's "no such API" as the edge's unsupported error, others as upstream errors.
    fn api_error(&self, api: Api, e: tandem_cloud_adapters::ProviderError) -> Error {
        self.unsupported_or_upstream(e, || no_api(&self.config.name, api))
    }

    /// `unsupported()` for a provider's refusal before sending, else the upstream's error.
    fn unsupported_or_upstream(
        &self,
        e: tandem_cloud_adapters::ProviderError,
        unsupported: impl FnOnce() -> Error,
    ) -> Error {
        if e.kind == ProviderErrorKind::Unsupported && e.status.is_none() {
            unsupported()
        } else {
            upstream_error(&self.config.name, e)
        }
    }

    /// A legacy completions body with the model mapped to the upstream's id.
    fn upstream_body(&self, mut body: Map<String, Value>) -> (String, Bytes) {
        let model = self.map_model(&mut body);
        // Usage is always asked for on streams, so metrics and cost count them; the client
        // sees the usage chunk only when it asked for it.
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        (model, Bytes::from(bytes))
    }

    /// A provider's "no such API" as the edge's unsupported error, others as upstream errors.
    fn completions_error(&self, e: tandem_cloud_adapters::ProviderError) -> Error {
        self.unsupported_or_upstream(e, || no_legacy_completions(&self.config.name))
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
        refuse_several_choices(&self.config.name, &request)?;
        let request = self.upstream_request(request)?;
        self.provider
            .chat_stream(&request)
            .await
            .map_err(|e| upstream_error(&self.config.name, e))
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Error> {
        // The normalized answer holds one choice; several pass only through `chat_completion`.
        refuse_several_choices(&self.config.name, &request)?;
        let request = self.upstream_request(request)?;
        self.provider
            .chat(&request)
            .await
            .map_err(|e| upstream_error(&self.config.name, e))
    }

    async fn chat_completion(&self, request: ChatRequest) -> Result<ChatCompletion, Error> {
        let request = self.upstream_request(request)?;
        self.provider
            .chat_completion(&request)
            .await
            .map_err(|e| upstream_error(&self.config.name, e))
    }

    async fn completion(&self, call: &CompletionCall) -> Result<CompletionOutput, Error> {
        let (model, body) = self.upstream_body(call.body.clone());
        if call.request.stream {
            self.provider
                .completions_stream(&model, body)
                .await
                .map(CompletionOutput::Events)
        } else {
            self.provider
                .completions(&model, body)
                .await
                .map(CompletionOutput::Answer)
        }
        .map_err(|e| self.completions_error(e))
    }

    async fn forward(
        &self,
        api: Api,
        body: &Map<String, Value>,
        stream: bool,
    ) -> Result<Forwarded, Error> {
        // OpenAI's Responses API only where the backend is OpenAI's own: a chat-completions
        // server gets the request translated instead.
        if api == Api::Responses && !self.passes_through(api) {
            return Err(no_api(&self.config.name, api));
        }
        let (model, body) = self.mapped_body(body);
        if stream {
            self.provider
                .forward_stream(api, &model, body)
                .await
                .map(Forwarded::Stream)
        } else {
            self.provider
                .forward(api, &model, body)
                .await
                .map(Forwarded::Whole)
        }
        .map_err(|e| self.api_error(api, e))
    }

    async fn fetch(
        &self,
        api: Api,
        model: &str,
        method: http::Method,
        path: &str,
    ) -> Result<Bytes, Error> {
        let model = self.config.upstream_model(model);
        self.provider
            .fetch(api, model, method, path)
            .await
            .map_err(|e| self.api_error(api, e))
    }

    fn passes_through(&self, api: Api) -> bool {
        api == Api::Responses && self.provider.capabilities().responses_api
    }

    async fn count_tokens(
        &self,
        request: &ChatRequest,
        body: &Map<String, Value>,
    ) -> Result<TokenCount, Error> {
        if self.provider.format() != WireFormat::Anthropic {
            return Ok(estimate_tokens(request));
        }
        let Forwarded::Whole(answer) = self.forward(Api::CountTokens, body, false).await? else {
            return Err(Error::Internal("a whole answer was asked for".into()));
        };
        let input_tokens = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.get("input_tokens")?.as_u64())
            .ok_or_else(|| {
                upstream_error(
                    &self.config.name,
                    tandem_cloud_adapters::ProviderError::new(
                        ProviderErrorKind::Decode,
                        self.config.name.clone(),
                        "count_tokens answer without input_tokens",
                    ),
                )
            })?;
        Ok(TokenCount {
            input_tokens,
            source: CountSource::Upstream,
        })
    }
}
