//! The local executor: renders the chat template, generates on the in-process engine (its own
//! thread) and streams tokens as [`ChatEvent`]s with usage from the tokenizer.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::RwLock;
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, ContentPart, EventStream, TokenLogprob, unix_now,
};
use tandem_local_model::{ChatMessage, Engine, GenerateEvent, GenerateRequest, SamplingParams};

use super::completion::{CompletionCall, CompletionOutput};
use super::engine::{context_length_exceeded, engine_usage, finish_reason};
use super::{CountSource, Executor, TokenCount, local_completion, refuse_beyond_local_decoding};
use crate::config::{BackendConfig, BackendKind, Price};
use crate::error::Error;

/// Default completion length when the client gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Where the local model is in its life.
#[derive(Clone)]
pub enum LocalState {
    /// Being fetched or loaded.
    Loading(String),
    /// Serving.
    Ready(Engine),
    /// Failed to load; the message says why.
    Failed(String),
}

/// The in-process model, shared by the executor, the completions endpoint and readiness.
pub struct LocalModel {
    state: RwLock<LocalState>,
}

impl LocalModel {
    /// A model in the given state.
    pub fn new(state: LocalState) -> Self {
        Self {
            state: RwLock::new(state),
        }
    }

    /// Moves to a new state (loading finished or failed).
    pub fn set(&self, state: LocalState) {
        *self.state.write() = state;
    }

    /// Whether the engine is serving.
    pub fn is_ready(&self) -> bool {
        matches!(*self.state.read(), LocalState::Ready(_))
    }

    /// A line for `/readyz`.
    pub fn describe(&self) -> String {
        match &*self.state.read() {
            LocalState::Loading(what) => format!("loading: {what}"),
            LocalState::Ready(e) => format!("ready: {}", e.info().name),
            LocalState::Failed(why) => format!("failed: {why}"),
        }
    }

    /// The engine, or a 503 saying why there is none.
    pub fn engine(&self) -> Result<Engine, Error> {
        match &*self.state.read() {
            LocalState::Ready(e) => Ok(e.clone()),
            LocalState::Loading(what) => Err(Error::NotReady(format!(
                "the local model is not ready yet ({what})"
            ))),
            LocalState::Failed(why) => Err(Error::NotReady(format!(
                "the local model failed to load: {why}"
            ))),
        }
    }
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Sampling parameters for a chat request.
pub fn sampling_params(request: &ChatRequest) -> SamplingParams {
    SamplingParams {
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0) as usize,
        seed: request.seed,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize,
        stop: request.stop.clone(),
        logprobs: request
            .logprobs
            .then(|| request.top_logprobs.unwrap_or(0) as usize),
        ..SamplingParams::default()
    }
}

/// The chat template's view of the conversation (text only; tool calls and results inline).
pub(crate) fn template_messages(request: &ChatRequest) -> Vec<ChatMessage> {
    request
        .messages
        .iter()
        .map(|m| {
            let mut content = String::new();
            for part in &m.content {
                match part {
                    ContentPart::Text { text } => content.push_str(text),
                    ContentPart::ToolResult { content: c, .. } => content.push_str(c),
                    ContentPart::ToolUse { name, input, .. } => {
                        content.push_str(&format!("{name}({input})"))
                    }
                    ContentPart::Image { .. } => {}
                }
            }
            ChatMessage::new(m.role.as_str(), content)
        })
        .collect()
}

/// The normalized form of an engine token's log-probabilities.
pub fn convert_logprob(lp: &tandem_local_model::TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        token: lp.token.clone(),
        logprob: lp.logprob,
        bytes: Some(lp.bytes.clone()),
        top: lp
            .top_logprobs
            .iter()
            .map(|t| (t.token.clone(), t.logprob))
            .collect(),
    }
}

/// Turns engine events into chat events: `Start`, deltas, `Finish`, `Usage` (or `Error`).
pub fn engine_events(
    rx: tokio::sync::mpsc::Receiver<GenerateEvent>,
    id: String,
    model: String,
    backend: String,
) -> EventStream {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((event, rx))
    });
    generate_events(events.boxed(), id, model, backend)
}

/// Like [`engine_events`] over any stream of engine events (e.g. some held back, then the rest of
/// the engine's channel). A stream that ends without `Finished` or `Error` ends in an error event.
/// The generation's CPU time goes on the request's meter, and its prefill (to the first token)
/// and decode show as spans under the try that started it.
pub fn generate_events(
    events: futures::stream::BoxStream<'static, GenerateEvent>,
    id: String,
    model: String,
    backend: String,
) -> EventStream {
    let start = ChatEvent::Start {
        id,
        model,
        created: unix_now(),
    };
    let watch = EngineWatch {
        scope: crate::observe::current(),
        submitted: Instant::now(),
        first: None,
    };
    let rest = futures::stream::unfold(Some((events, watch)), move |rx| {
        let backend = backend.clone();
        async move {
            let (mut rx, mut watch) = rx?;
            let event = match rx.next().await {
                Some(GenerateEvent::Token { text, logprob, .. }) => {
                    watch.first.get_or_insert_with(Instant::now);
                    let logprobs = logprob.as_ref().map(|lp| vec![convert_logprob(lp)]);
                    vec![ChatEvent::TextDelta {
                        index: 0,
                        text,
                        logprobs,
                    }]
                }
                Some(GenerateEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_prompt_tokens,
                    cpu_seconds,
                }) => {
                    watch.finished(
                        &backend,
                        cpu_seconds,
                        prompt_tokens,
                        completion_tokens,
                        cached_prompt_tokens,
                    );
                    let reason = finish_reason(reason);
                    let usage =
                        engine_usage(prompt_tokens, completion_tokens, cached_prompt_tokens);
                    return Some((
                        vec![ChatEvent::Finish { reason }, ChatEvent::Usage(usage)],
                        None,
                    ));
                }
                Some(GenerateEvent::Error(message)) => {
                    let e = tandem_cloud_adapters::ProviderError::new(
                        tandem_cloud_adapters::ProviderErrorKind::Decode,
                        backend,
                        format!("local model: {message}"),
                    );
                    return Some((vec![ChatEvent::Error(e)], None));
                }
                None => {
                    let e = tandem_cloud_adapters::ProviderError::new(
                        tandem_cloud_adapters::ProviderErrorKind::StreamCut,
                        backend,
                        "local engine stopped mid-generation",
                    );
                    return Some((vec![ChatEvent::Error(e)], None));
                }
            };
            Some((event, Some((rx, watch))))
        }
    })
    .flat_map(futures::stream::iter)
    // Empty deltas (text held back at a possible stop string) carry nothing unless logprobs.
    .filter(|e| {
        std::future::ready(
            !matches!(e, ChatEvent::TextDelta { text, logprobs: None, .. } if text.is_empty()),
        )
    });
    futures::stream::once(std::future::ready(start))
        .chain(rest)
        .boxed()
}

/// What a generation's meter and spans need: the request's scope, when it was handed to the
/// engine and when its first token came.
struct EngineWatch {
    scope: Option<crate::observe::Scope>,
    submitted: Instant,
    first: Option<Instant>,
}

impl EngineWatch {
    fn finished(
        &self,
        backend: &str,
        cpu_seconds: f64,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_prompt_tokens: usize,
    ) {
        let Some(scope) = &self.scope else { return };
        scope.meter.add_local_cpu(backend, cpu_seconds);
        if !scope.meter.tracing() {
            return;
        }
        let now = Instant::now();
        let first = self.first.unwrap_or(now);
        scope.meter.past_span(
            scope.parent,
            "local.prefill",
            self.submitted,
            first,
            vec![
                ("gen_ai.usage.input_tokens", (prompt_tokens as u64).into()),
                (
                    "tandem.cached_input_tokens",
                    (cached_prompt_tokens as u64).into(),
                ),
                ("tandem.backend", backend.into()),
            ],
        );
        scope.meter.past_span(
            scope.parent,
            "local.decode",
            first,
            now,
            vec![
                (
                    "gen_ai.usage.output_tokens",
                    (completion_tokens as u64).into(),
                ),
                ("tandem.local.cpu_seconds", cpu_seconds.into()),
                ("tandem.backend", backend.into()),
            ],
        );
    }
}

/// Runs chat requests on the in-process model.
pub struct LocalExecutor {
    config: BackendConfig,
    model: Arc<LocalModel>,
}

impl LocalExecutor {
    /// An executor for the local backend `config`.
    pub fn new(config: BackendConfig, model: Arc<LocalModel>) -> Self {
        Self { config, model }
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    fn backend(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn price(&self) -> Price {
        self.config.price
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let (rx, id) = self.start(&request, None)?;
        Ok(engine_events(
            rx,
            id,
            request.model.clone(),
            self.config.name.clone(),
        ))
    }

    async fn completion(&self, call: &CompletionCall) -> Result<CompletionOutput, Error> {
        local_completion::complete(&self.model.engine()?, &call.request, &self.config.name).await
    }

    async fn count_tokens(
        &self,
        request: &ChatRequest,
        _body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<TokenCount, Error> {
        // Exactly what generation would read: the chat template over the conversation.
        let engine = self.model.engine()?;
        let prompt = engine
            .chat_prompt(&template_messages(request), true)
            .map_err(|e| Error::LocalModel(format!("chat template: {e}")))?;
        Ok(TokenCount {
            input_tokens: prompt.len() as u64,
            source: CountSource::Exact,
        })
    }
}

impl LocalExecutor {
    /// The backend's config name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Starts generating on the engine and returns its raw event channel and a completion id.
    /// `logprobs` replaces the request's own setting (a cascade needs them to judge confidence).
    pub fn start(
        &self,
        request: &ChatRequest,
        logprobs: Option<usize>,
    ) -> Result<(tokio::sync::mpsc::Receiver<GenerateEvent>, String), Error> {
        refuse_beyond_local_decoding(&self.config.name, request)?;
        if request.messages.is_empty() {
            return Err(Error::invalid(
                "messages must not be empty",
                Some("messages"),
            ));
        }
        let engine = self.model.engine()?;
        let prompt = engine
            .chat_prompt(&template_messages(request), true)
            .map_err(|e| Error::LocalModel(format!("chat template: {e}")))?;
        let context = engine.info().context_length;
        if prompt.len() >= context {
            return Err(context_length_exceeded(prompt.len(), context, "messages"));
        }
        let mut params = sampling_params(request);
        if logprobs.is_some() {
            params.logprobs = logprobs;
        }
        let rx = engine
            .generate(GenerateRequest { prompt, params })
            .map_err(|e| Error::LocalModel(e.to_string()))?;
        let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        Ok((rx, id))
    }
}
