//! The speculative executor: the local model (or an n-gram table) drafts, a remote target
//! verifies, and the accepted tokens stream to the client as ordinary chat events. Greedy output
//! is exactly the target's own; the draft-length policy switches to plain streaming from the
//! target when speculation stops paying.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tandem_artifacts::{FetchOptions, ProcessEnv as FetchEnv, resolve_model};
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, EventStream, FinishReason, ProviderError, ProviderErrorKind,
    SpeculativeUsage, Usage, unix_now,
};
use tandem_kernels::spec::TargetSampling;
use tandem_local_model::{ChatMessage, Engine, TargetTokenizer, Tokenizer};
use tokio::sync::{OnceCell, mpsc};

use super::decoder::{SpecFinish, SpecOptions, SpecReport, run};
use super::draft::{CrossTokenizerDrafter, Drafter, EngineDrafter, NgramDrafter};
use super::policy::{DraftPolicy, PolicyConfig, PolicySnapshot};
use super::verify::{PlainStreamer, RemoteVerifier, Verifier};
use crate::config::{BackendConfig, BackendKind, DrafterKind, Price, SpeculativeBackend};
use crate::error::Error;
use crate::executor::local::{DEFAULT_MAX_TOKENS, LocalModel, template_messages};
use crate::executor::{Executor, refuse_beyond_local_decoding};
use crate::metrics::Metrics;

/// Most alternatives per position a sampled request may ask the target for.
const MAX_SAMPLED_TOP_K: u32 = 20;

/// The target's text side: the local engine's when the vocabularies match, else read from the
/// target's GGUF.
#[derive(Clone)]
enum TargetText {
    Engine(Engine),
    File(TargetTokenizer),
}

impl TargetText {
    fn tokenizer(&self) -> &Arc<Tokenizer> {
        match self {
            Self::Engine(e) => e.tokenizer(),
            Self::File(t) => t.tokenizer(),
        }
    }

    fn eos(&self) -> Vec<u32> {
        match self {
            Self::Engine(e) => e.info().eos_token_ids.clone(),
            Self::File(t) => t.eos_token_ids().to_vec(),
        }
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, Error> {
        match self {
            Self::Engine(e) => e.chat_prompt(messages, true),
            Self::File(t) => t.chat_prompt(messages, true),
        }
        .map_err(|e| Error::LocalModel(format!("target chat template: {e}")))
    }
}

/// Runs chat requests speculatively against a verifying target backend.
pub struct SpeculativeExecutor {
    config: BackendConfig,
    spec: SpeculativeBackend,
    target: BackendConfig,
    local: Option<Arc<LocalModel>>,
    verifier: Arc<dyn Verifier>,
    plain: Option<Arc<dyn PlainStreamer>>,
    cache_dir: Option<PathBuf>,
    target_text: OnceCell<TargetText>,
    metrics: Arc<Metrics>,
    /// What the last request measured: the next one starts from it.
    learned: Arc<Mutex<Option<PolicySnapshot>>>,
}

impl std::fmt::Debug for SpeculativeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeculativeExecutor")
            .field("backend", &self.config.name)
            .field("target", &self.target.name)
            .finish_non_exhaustive()
    }
}

impl SpeculativeExecutor {
    /// An executor for the speculative backend `config` verifying on `target`, drafting with
    /// `local` (absent for n-gram drafting).
    pub fn new(
        config: BackendConfig,
        target: BackendConfig,
        local: Option<Arc<LocalModel>>,
        cache_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let spec = config.speculative.clone().ok_or_else(|| {
            Error::Internal(format!("backend `{}` is not speculative", config.name))
        })?;
        let base_url = target
            .base_url
            .clone()
            .ok_or_else(|| Error::Internal(format!("target `{}` has no base_url", target.name)))?;
        let http = HttpConfig {
            connect_timeout: target.connect_timeout,
            read_timeout: target.request_timeout,
            tls: target.tls.clone(),
            ..HttpConfig::default()
        };
        let client = HttpClient::new(&http).map_err(|e| Error::Internal(e.to_string()))?;
        let verifier = RemoteVerifier::new(
            target.verify,
            target.name.clone(),
            base_url,
            target.api_key.clone(),
            client,
        )?;
        let plain = verifier
            .plain_streamer()
            .map(|s| Arc::new(s) as Arc<dyn PlainStreamer>);
        let verifier: Arc<dyn Verifier> = Arc::new(verifier);
        Ok(Self::with_parts(
            config, spec, target, local, verifier, plain, cache_dir, metrics,
        ))
    }

    /// An executor over given verifier and plain streamer (tests, in-process targets).
    #[allow(clippy::too_many_arguments)]
    pub fn with_parts(
        config: BackendConfig,
        spec: SpeculativeBackend,
        target: BackendConfig,
        local: Option<Arc<LocalModel>>,
        verifier: Arc<dyn Verifier>,
        plain: Option<Arc<dyn PlainStreamer>>,
        cache_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            spec,
            target,
            local,
            verifier,
            plain,
            cache_dir,
            target_text: OnceCell::new(),
            metrics,
            learned: Arc::new(Mutex::new(None)),
        }
    }

    fn engine(&self) -> Result<Engine, Error> {
        self.local
            .as_ref()
            .ok_or_else(|| Error::NotReady("no local model is configured".into()))?
            .engine()
    }

    /// The target's tokenizer and template, loaded once.
    async fn target_text(&self) -> Result<TargetText, Error> {
        self.target_text
            .get_or_try_init(|| async {
                match &self.spec.tokenizer {
                    None => Ok(TargetText::Engine(self.engine()?)),
                    Some(name) => {
                        let mut opts = FetchOptions::from_env(&FetchEnv);
                        if let Some(dir) = &self.cache_dir {
                            opts.cache_root = dir.clone();
                        }
                        opts.offline = true;
                        let path = resolve_model(&opts, name).map_err(|e| {
                            Error::NotReady(format!(
                                "the target tokenizer `{name}` of backend `{}` is not available: {e} (run `tandem models fetch {name}`)",
                                self.config.name
                            ))
                        })?;
                        let loaded = tokio::task::spawn_blocking(move || {
                            TargetTokenizer::from_gguf(&path)
                        })
                        .await
                        .map_err(|e| Error::Internal(format!("tokenizer loader: {e}")))?
                        .map_err(|e| Error::LocalModel(format!("target tokenizer: {e}")))?;
                        Ok(TargetText::File(loaded))
                    }
                }
            })
            .await
            .cloned()
    }

    fn drafter(
        &self,
        text: &TargetText,
        messages: &[ChatMessage],
        target_prompt_len: usize,
    ) -> Result<Box<dyn Drafter>, Error> {
        Ok(match self.spec.drafter {
            DrafterKind::Ngram => Box::new(NgramDrafter::new(1, 4)),
            DrafterKind::Local => {
                let engine = self.engine()?;
                let target_hash = text.tokenizer().vocab_hash();
                if engine.info().vocab_hash == target_hash {
                    Box::new(EngineDrafter::new(engine, target_hash)?)
                } else {
                    let draft_prompt = engine
                        .chat_prompt(messages, true)
                        .map_err(|e| Error::LocalModel(format!("chat template: {e}")))?;
                    Box::new(CrossTokenizerDrafter::new(
                        engine,
                        text.tokenizer().clone(),
                        draft_prompt,
                        target_prompt_len,
                    ))
                }
            }
        })
    }

    fn policy(&self) -> DraftPolicy {
        let mut cfg = PolicyConfig {
            max_draft: self.spec.max_draft,
            input_price: self.target.price.input_per_mtok,
            output_price: self.target.price.output_per_mtok,
            ..PolicyConfig::default()
        };
        if let Some(seen) = *self.learned.lock() {
            cfg.prior_acceptance = seen.acceptance;
            cfg.prior_draft_time = seen.draft_time;
            cfg.prior_verify_time = seen.verify_time;
            cfg.plain_token_time = seen.plain_time;
        }
        DraftPolicy::new(cfg)
    }
}

/// The target's sampling settings and the alternatives to ask for per position.
fn sampling(request: &ChatRequest) -> Result<(TargetSampling, u32), Error> {
    let params = TargetSampling {
        temperature: request.temperature.unwrap_or(1.0),
        top_k: request.top_k,
        top_p: request.top_p,
    };
    if params.is_greedy() {
        return Ok((TargetSampling::GREEDY, 1));
    }
    match request.top_k {
        Some(k) if (1..=MAX_SAMPLED_TOP_K).contains(&k) => Ok((params, k)),
        _ => Err(Error::invalid(
            format!(
                "speculative decoding samples exactly the target's distribution only with temperature 0, or with top_k between 1 and {MAX_SAMPLED_TOP_K} (a request without temperature samples at 1.0)"
            ),
            Some("top_k"),
        )),
    }
}

/// Turns target tokens into text deltas, holding back bytes of a split character and cutting at
/// stop strings.
struct TextState {
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    tokens: Vec<u32>,
    sent: usize,
    text: String,
    stop: Vec<String>,
    stopped: bool,
}

impl TextState {
    /// The new text after `block`.
    fn push(&mut self, block: &[u32]) -> String {
        self.tokens
            .extend(block.iter().copied().filter(|t| !self.eos.contains(t)));
        let bytes = self.tokenizer.decode_bytes(&self.tokens);
        let valid = match std::str::from_utf8(&bytes) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let full = String::from_utf8_lossy(&bytes[..valid]).into_owned();
        let mut end = full.len();
        if let Some(pos) = self.stop.iter().filter_map(|s| full.find(s.as_str())).min() {
            end = pos;
            self.stopped = true;
        } else {
            // A stop string may be starting at the end: hold it back.
            for s in &self.stop {
                for cut in (1..s.len()).rev() {
                    if s.is_char_boundary(cut) && full.ends_with(&s[..cut]) {
                        end = end.min(full.len() - cut);
                    }
                }
            }
        }
        let delta = full.get(self.sent..end).unwrap_or_default().to_owned();
        self.sent = self.sent.max(end);
        self.text = full;
        delta
    }

    /// What was held back, at the end of the answer.
    fn rest(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let delta = self.text.get(self.sent..).unwrap_or_default().to_owned();
        self.sent = self.text.len();
        delta
    }
}

fn stream_error(backend: &str, e: &Error) -> ChatEvent {
    ChatEvent::Error(ProviderError::new(
        ProviderErrorKind::StreamCut,
        backend,
        e.to_string(),
    ))
}

/// Stops the decoding task when the client's stream is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Executor for SpeculativeExecutor {
    fn backend(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Speculative
    }

    fn price(&self) -> Price {
        self.target.price
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error> {
        // The verified tokens are the target's unconstrained ones.
        refuse_beyond_local_decoding(self.backend(), &request)?;
        if request.messages.is_empty() {
            return Err(Error::invalid(
                "messages must not be empty",
                Some("messages"),
            ));
        }
        let (params, top_k) = sampling(&request)?;
        let text = self.target_text().await?;
        let messages = template_messages(&request);
        let prompt = text.chat_prompt(&messages)?;
        let mut drafter = self.drafter(&text, &messages, prompt.len())?;
        let cancel = Arc::new(AtomicBool::new(false));
        let cancel_flag = cancel.clone();
        let opts = SpecOptions {
            // This backend's own model map first (the route's model id), then the target's, so
            // either may name the model the verifier serves.
            model: self
                .target
                .upstream_model(self.config.upstream_model(&request.model))
                .to_owned(),
            session: Some(format!("spec-{}", uuid::Uuid::new_v4().simple())),
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1) as usize,
            eos: text.eos(),
            top_k,
            pipeline: true,
            sampling: params,
            seed: request.seed.unwrap_or_else(rand_seed),
            allow_truncated: false,
            cancel: Some(cancel.clone()),
        };
        let mut policy = self.policy();
        let verifier = self.verifier.clone();
        // The plain stream is greedy: sampled requests never fall back to it.
        let plain = self.plain.clone().filter(|_| params.is_greedy());
        let (tx, mut rx) = mpsc::unbounded_channel::<Result<ChatEvent, Error>>();
        let mut text_state = TextState {
            tokenizer: text.tokenizer().clone(),
            eos: opts.eos.clone(),
            tokens: Vec::new(),
            sent: 0,
            text: String::new(),
            stop: request.stop.clone(),
            stopped: false,
        };
        let start = ChatEvent::Start {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: request.model.clone(),
            created: unix_now(),
        };
        let prompt_tokens = prompt.len() as u64;
        let backend = self.config.name.clone();
        let metrics = self.metrics.clone();
        let learned = self.learned.clone();
        // In the request's scope, so rounds show under its span and verify calls carry its
        // trace context.
        tokio::spawn(crate::observe::carry(async move {
            let mut start = Some(start);
            // Filled round by round, so a failure mid-stream still reports what was served and
            // what the target billed.
            let mut report = SpecReport::default();
            let result = {
                let tx = &tx;
                let start = &mut start;
                let text_state = &mut text_state;
                let cancel = &cancel;
                run(
                    drafter.as_mut(),
                    verifier.as_ref(),
                    plain.as_deref(),
                    &mut policy,
                    &prompt,
                    &opts,
                    &mut |block| {
                        if let Some(s) = start.take() {
                            let _ = tx.send(Ok(s));
                        }
                        let delta = text_state.push(block);
                        if !delta.is_empty() {
                            let _ = tx.send(Ok(ChatEvent::TextDelta {
                                index: 0,
                                text: delta,
                                logprobs: None,
                            }));
                        }
                        // A stop string ends the answer; so does a client that went away.
                        if text_state.stopped || tx.is_closed() {
                            cancel.store(true, Ordering::Relaxed);
                        }
                    },
                    &mut report,
                )
                .await
            };
            *learned.lock() = Some(policy.snapshot());
            metrics.record_speculative(&backend, &report);
            if let Err(e) = result {
                if start.is_some() {
                    let _ = tx.send(Err(e));
                } else {
                    let _ = tx.send(Ok(ChatEvent::Usage(usage(prompt_tokens, &report))));
                    let _ = tx.send(Ok(stream_error(&backend, &e)));
                }
                return;
            }
            if let Some(s) = start.take() {
                let _ = tx.send(Ok(s));
            }
            let rest = text_state.rest();
            if !rest.is_empty() {
                let _ = tx.send(Ok(ChatEvent::TextDelta {
                    index: 0,
                    text: rest,
                    logprobs: None,
                }));
            }
            let reason = match report.finish {
                Some(SpecFinish::Length) if !text_state.stopped => FinishReason::Length,
                _ => FinishReason::Stop,
            };
            let _ = tx.send(Ok(ChatEvent::Finish { reason }));
            let _ = tx.send(Ok(ChatEvent::Usage(usage(prompt_tokens, &report))));
            tracing::debug!(
                backend = %backend,
                rounds = report.rounds,
                drafted = report.drafted,
                accepted = report.accepted,
                fell_back = report.fell_back,
                "speculative request done"
            );
        }));
        // The first event comes once the first block is verified, so a target that cannot be
        // reached is an error the caller may retry elsewhere rather than a broken stream.
        let first = match rx.recv().await {
            Some(Err(e)) => return Err(e),
            Some(Ok(event)) => event,
            None => {
                return Err(Error::Internal(
                    "speculative decoding ended silently".into(),
                ));
            }
        };
        let backend = self.config.name.clone();
        let guard = CancelOnDrop(cancel_flag);
        let rest = futures::stream::poll_fn(move |cx| {
            let _keep = &guard;
            rx.poll_recv(cx)
        })
        .map(move |item| item.unwrap_or_else(|e| stream_error(&backend, &e)));
        Ok(futures::stream::once(std::future::ready(first))
            .chain(rest)
            .boxed())
    }
}

fn rand_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// The usage of a speculative answer, or of the part served before a failure: the tokens the
/// client got and what speculative decoding did for them.
fn usage(prompt_tokens: u64, report: &SpecReport) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens: report.tokens.len() as u64,
        speculative: Some(SpeculativeUsage {
            rounds: report.rounds,
            drafted: report.drafted,
            accepted: report.accepted,
            plain_tokens: report.plain_tokens,
            target_input_tokens: report.target_input_tokens,
            target_cached_input_tokens: report.target_cached_input_tokens,
            target_output_tokens: report.target_output_tokens,
        }),
        ..Usage::default()
    }
}
