//! The target side of the Tandem verify protocol: `POST /v1/tandem/verify` over an engine's
//! sessions (the KV cache stays between rounds, so each round runs only the new tokens), and
//! `POST /v1/tandem/generate`, plain greedy streaming of token ids (the fallback and the
//! target-only baseline); plus the in-process verifier and streamer that skip HTTP. The wire
//! types and the HTTP clients are in `verify::tandem`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use tandem_cloud_adapters::ProviderError;
use tandem_cloud_adapters::provider::ProviderErrorKind;
use tandem_local_model::{Engine, GenerateEvent, GenerateRequest, SamplingParams, SessionId};

use super::delay::DelayLayer;
use super::verify::tandem::{
    GENERATE_PATH, GenerateBody, SESSION_MISMATCH, TandemVerifyRequest, TandemVerifyResponse,
    TandemVerifyUsage, VERIFY_PATH,
};
use super::verify::{PlainStreamer, Verifier, VerifyProtocol, VerifyRequest, VerifyResponse};
use crate::config::VerifyEndpoints;
use crate::executor::local::LocalModel;

struct SessionEntry {
    id: SessionId,
    tokens: Vec<u32>,
    last_used: Instant,
    /// Rolled back: the engine recomputes the last kept token on the next append.
    stale: bool,
}

/// How the target scores a block of new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoringMode {
    /// One token per forward pass, exactly as plain decoding computes them: for engines whose
    /// kernels round differently for one row than for several; costs one pass per token.
    Stepwise,
    /// One forward pass over the whole block (the default): identical to plain decoding because
    /// the engine's forward is batch-invariant (a row's logits do not depend on how many rows
    /// share the pass).
    #[default]
    Batched,
}

/// Verify sessions over one engine.
pub struct VerifyState {
    engine: Engine,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    max_sessions: usize,
    mode: ScoringMode,
}

impl std::fmt::Debug for VerifyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyState")
            .field("sessions", &self.sessions.lock().len())
            .finish()
    }
}

/// Why a verify call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The request is malformed (400).
    Invalid(String),
    /// The session does not hold `base_len` tokens (409, `session_mismatch`).
    SessionMismatch(String),
    /// The engine failed (500).
    Engine(String),
    /// The model is not loaded (yet) (503).
    NotReady(String),
}

impl IntoResponse for VerifyFailure {
    fn into_response(self) -> Response {
        let (status, kind, code, message) = match self {
            Self::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, m),
            Self::SessionMismatch(m) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some(SESSION_MISMATCH),
                m,
            ),
            Self::Engine(m) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, m),
            Self::NotReady(m) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, m),
        };
        let body =
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
        (status, Json(body)).into_response()
    }
}

fn engine_failure(e: tandem_local_model::Error) -> VerifyFailure {
    match e {
        tandem_local_model::Error::InvalidArgument(m) => VerifyFailure::Invalid(m),
        other => VerifyFailure::Engine(other.to_string()),
    }
}

impl VerifyState {
    /// Sessions over `engine`, at most `max_sessions` at once (least recently used go first).
    pub fn new(engine: Engine, max_sessions: usize) -> Self {
        Self {
            engine,
            sessions: Mutex::new(HashMap::new()),
            max_sessions: max_sessions.max(1),
            mode: ScoringMode::default(),
        }
    }

    /// The same state scoring blocks with `mode`.
    pub fn with_mode(mut self, mode: ScoringMode) -> Self {
        self.mode = mode;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Handles one verify (or close) request.
    pub async fn verify(
        &self,
        req: TandemVerifyRequest,
    ) -> Result<TandemVerifyResponse, VerifyFailure> {
        let taken = self.sessions.lock().remove(&req.session_id);
        if req.close {
            if let Some(entry) = taken {
                self.engine.close_session(entry.id).await;
            }
            return Ok(TandemVerifyResponse {
                session_id: req.session_id,
                positions: Vec::new(),
                usage: TandemVerifyUsage::default(),
            });
        }
        if req.tokens.is_empty() || req.draft_len > req.tokens.len() {
            return Err(VerifyFailure::Invalid(format!(
                "tokens must hold at least one token and all {} draft tokens",
                req.draft_len
            )));
        }
        let top_k = req.top_k.max(1) as usize;
        let (mut entry, new_tokens, cached) = match taken {
            Some(mut entry) if req.base_len > 0 && entry.tokens.len() >= req.base_len => {
                // Tokens this side already fed past `base_len` (its own greedy choices) that
                // the request repeats are kept, not recomputed.
                let already = entry.tokens[req.base_len..]
                    .iter()
                    .zip(&req.tokens[..req.tokens.len() - req.draft_len])
                    .take_while(|(a, b)| a == b)
                    .count();
                let keep = req.base_len + already;
                let extra = entry.tokens.len() - keep;
                if extra > 0 {
                    self.engine
                        .rollback(entry.id, extra)
                        .await
                        .map_err(engine_failure)?;
                    entry.tokens.truncate(keep);
                    entry.stale = true;
                }
                (entry, &req.tokens[already..], keep)
            }
            other => {
                if let Some(stale) = other {
                    self.engine.close_session(stale.id).await;
                }
                if req.base_len > 0 {
                    return Err(VerifyFailure::SessionMismatch(format!(
                        "session `{}` does not hold {} tokens; send the whole sequence",
                        req.session_id, req.base_len
                    )));
                }
                // Open on everything before the scored block; at least one token is scored.
                let committed = req.tokens.len() - req.draft_len;
                let split = if self.mode == ScoringMode::Stepwise && req.greedy {
                    // The whole committed sequence in one prefill, as plain decoding does.
                    committed
                } else {
                    committed.min(req.tokens.len() - 1)
                };
                let (head, tail) = req.tokens.split_at(split);
                if head.is_empty() {
                    return Err(VerifyFailure::Invalid(
                        "a new session needs at least one committed token before the draft".into(),
                    ));
                }
                let id = self
                    .engine
                    .open_session(head)
                    .await
                    .map_err(engine_failure)?;
                let entry = SessionEntry {
                    id,
                    tokens: head.to_vec(),
                    last_used: Instant::now(),
                    stale: false,
                };
                (entry, tail, 0)
            }
        };
        let scored = match self.mode {
            ScoringMode::Batched => {
                self.score_batched(&mut entry, new_tokens, &req, top_k)
                    .await
            }
            ScoringMode::Stepwise => {
                self.score_stepwise(&mut entry, new_tokens, &req, top_k)
                    .await
            }
        };
        entry.last_used = Instant::now();
        let positions = match scored {
            Ok(p) => p,
            Err(e) => {
                self.engine.close_session(entry.id).await;
                return Err(e);
            }
        };
        self.insert(req.session_id.clone(), entry).await;
        Ok(TandemVerifyResponse {
            session_id: req.session_id,
            positions,
            usage: TandemVerifyUsage {
                prompt_tokens: req.tokens.len() as u64,
                completion_tokens: 1,
                cached_tokens: cached as u64,
            },
        })
    }

    /// One forward pass over the new tokens.
    async fn score_batched(
        &self,
        entry: &mut SessionEntry,
        new_tokens: &[u32],
        req: &TandemVerifyRequest,
        top_k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>, VerifyFailure> {
        let scores = self
            .engine
            .append(entry.id, new_tokens, top_k)
            .await
            .map_err(engine_failure)?;
        entry.tokens.extend_from_slice(new_tokens);
        let scored = scores.positions.len();
        let mut positions: Vec<Vec<(u32, f32)>> = scores.positions[scored - req.draft_len..]
            .iter()
            .map(|p| p.top.clone())
            .collect();
        positions.push(scores.next_top);
        Ok(positions)
    }

    /// One token per forward pass, as plain decoding runs them, stopping at the first greedy
    /// mismatch without feeding the wrong token.
    async fn score_stepwise(
        &self,
        entry: &mut SessionEntry,
        new_tokens: &[u32],
        req: &TandemVerifyRequest,
        top_k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>, VerifyFailure> {
        let id = entry.id;
        let draft_start = new_tokens.len() - req.draft_len;
        if entry.stale {
            // After a rollback the last kept token is recomputed alone, as decoding did.
            self.engine
                .append(id, &[], 1)
                .await
                .map_err(engine_failure)?;
            entry.stale = false;
        }
        let mut positions = Vec::with_capacity(req.draft_len + 1);
        if req.greedy {
            // Committed tokens first, one per pass.
            for &token in &new_tokens[..draft_start] {
                self.engine
                    .append(id, &[token], 1)
                    .await
                    .map_err(engine_failure)?;
                entry.tokens.push(token);
            }
            // Then decode greedily, step by step, while the draft agrees: each step feeds the
            // target's own choice, so a mismatch leaves the correction already in place.
            let greedy = SamplingParams::greedy(1);
            for j in 0..=req.draft_len {
                let step = self
                    .engine
                    .draft(id, 1, &greedy)
                    .await
                    .map_err(engine_failure)?;
                let Some(choice) = step.first() else {
                    return Err(VerifyFailure::Engine("engine drafted nothing".into()));
                };
                entry.tokens.push(choice.id);
                positions.push(vec![(choice.id, choice.logprob)]);
                if new_tokens.get(draft_start + j) != Some(&choice.id) {
                    break;
                }
            }
            return Ok(positions);
        }
        let mut predicted: Option<Vec<(u32, f32)>> = None;
        for (j, &token) in new_tokens.iter().enumerate() {
            let in_draft = j >= draft_start;
            if in_draft
                && req.greedy
                && let Some(top) = &predicted
                && top.first().map(|t| t.0) != Some(token)
            {
                positions.push(top.clone());
                return Ok(positions);
            }
            let scores = self
                .engine
                .append(id, &[token], top_k)
                .await
                .map_err(engine_failure)?;
            entry.tokens.push(token);
            let top = scores
                .positions
                .first()
                .map(|p| p.top.clone())
                .unwrap_or_default();
            if in_draft {
                let mismatch = req.greedy && top.first().map(|t| t.0) != Some(token);
                positions.push(top);
                if mismatch {
                    // Only the first token of a fresh block gets here: take it back out.
                    self.engine.rollback(id, 1).await.map_err(engine_failure)?;
                    entry.tokens.pop();
                    self.engine
                        .append(id, &[], 1)
                        .await
                        .map_err(engine_failure)?;
                    return Ok(positions);
                }
            }
            predicted = Some(scores.next_top);
        }
        positions.push(predicted.unwrap_or_default());
        Ok(positions)
    }

    /// Streams greedy tokens continuing a session (opened on `tokens` when it is not held),
    /// one pass per token; `Ok(None)` marks the end.
    pub async fn stream_session(
        self: &Arc<Self>,
        session_id: String,
        tokens: Vec<u32>,
        max_tokens: usize,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Option<u32>, String>>, VerifyFailure> {
        if tokens.is_empty() {
            return Err(VerifyFailure::Invalid("tokens is empty".into()));
        }
        let taken = self.sessions.lock().remove(&session_id);
        let mut entry = match taken {
            Some(mut e) if tokens.starts_with(&e.tokens) => {
                if e.stale {
                    self.engine
                        .append(e.id, &[], 1)
                        .await
                        .map_err(engine_failure)?;
                    e.stale = false;
                }
                for &t in &tokens[e.tokens.len()..] {
                    self.engine
                        .append(e.id, &[t], 1)
                        .await
                        .map_err(engine_failure)?;
                    e.tokens.push(t);
                }
                e
            }
            other => {
                if let Some(old) = other {
                    self.engine.close_session(old.id).await;
                }
                let id = self
                    .engine
                    .open_session(&tokens)
                    .await
                    .map_err(engine_failure)?;
                SessionEntry {
                    id,
                    tokens,
                    last_used: Instant::now(),
                    stale: false,
                }
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let state = Arc::clone(self);
        let eos = self.engine.info().eos_token_ids.clone();
        tokio::spawn(async move {
            let greedy = SamplingParams::greedy(1);
            for _ in 0..max_tokens {
                match state.engine.draft(entry.id, 1, &greedy).await {
                    Ok(step) => {
                        let Some(choice) = step.first() else { break };
                        entry.tokens.push(choice.id);
                        if tx.send(Ok(Some(choice.id))).await.is_err() {
                            break;
                        }
                        if eos.contains(&choice.id) {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        break;
                    }
                }
            }
            let _ = tx.send(Ok(None)).await;
            entry.last_used = Instant::now();
            state.insert(session_id, entry).await;
        });
        Ok(rx)
    }

    async fn insert(&self, key: String, entry: SessionEntry) {
        let evicted = {
            let mut sessions = self.sessions.lock();
            sessions.insert(key, entry);
            let mut evicted = Vec::new();
            while sessions.len() > self.max_sessions {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                match oldest.and_then(|k| sessions.remove(&k)) {
                    Some(e) => evicted.push(e.id),
                    None => break,
                }
            }
            evicted
        };
        for id in evicted {
            self.engine.close_session(id).await;
        }
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

async fn verify_handler(
    State(state): State<Arc<VerifyState>>,
    Json(req): Json<TandemVerifyRequest>,
) -> Result<Json<TandemVerifyResponse>, VerifyFailure> {
    state.verify(req).await.map(Json)
}

type EventStream = BoxStream<'static, Result<Event, Infallible>>;

async fn generate_handler(
    State(state): State<Arc<VerifyState>>,
    Json(body): Json<GenerateBody>,
) -> Result<Sse<EventStream>, VerifyFailure> {
    if let Some(session_id) = body.session_id.clone() {
        let rx = state
            .stream_session(session_id, body.tokens, body.max_tokens)
            .await?;
        let events = tokio_stream_from(rx).map(|item| {
            Ok(match item {
                Ok(Some(id)) => Event::default().data(id.to_string()),
                Ok(None) => Event::default().data("[DONE]"),
                Err(m) => Event::default().event("error").data(m),
            })
        });
        return Ok(Sse::new(events.boxed()));
    }
    let mut params = SamplingParams::greedy(body.max_tokens.max(1));
    params.ignore_eos = false;
    let rx = state
        .engine
        .generate(GenerateRequest {
            prompt: body.tokens,
            params,
        })
        .map_err(engine_failure)?;
    let tokens = tokio_stream_from(rx).filter_map(|ev| async move {
        match ev {
            GenerateEvent::Token { id, .. } => Some(Event::default().data(id.to_string())),
            GenerateEvent::Finished { .. } => Some(Event::default().data("[DONE]")),
            GenerateEvent::Error(m) => Some(Event::default().event("error").data(m)),
        }
    });
    Ok(Sse::new(tokens.map(Ok).boxed()))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The routes of the target side: `/v1/tandem/verify` and `/v1/tandem/generate`.
pub fn router(state: Arc<VerifyState>) -> axum::Router {
    axum::Router::new()
        .route(VERIFY_PATH, post(verify_handler))
        .route(GENERATE_PATH, post(generate_handler))
        .with_state(state)
}

/// The verify endpoints of a gateway whose local model may still be loading: the sessions are
/// created over the engine once it is ready.
struct LazyVerify {
    model: Arc<LocalModel>,
    endpoints: VerifyEndpoints,
    state: std::sync::OnceLock<Arc<VerifyState>>,
}

impl LazyVerify {
    fn state(&self) -> Result<Arc<VerifyState>, VerifyFailure> {
        if let Some(s) = self.state.get() {
            return Ok(s.clone());
        }
        let engine = self
            .model
            .engine()
            .map_err(|e| VerifyFailure::NotReady(e.to_string()))?;
        Ok(self
            .state
            .get_or_init(|| {
                Arc::new(
                    VerifyState::new(engine, self.endpoints.sessions)
                        .with_mode(self.endpoints.scoring),
                )
            })
            .clone())
    }
}

async fn lazy_verify_handler(
    State(lazy): State<Arc<LazyVerify>>,
    Json(req): Json<TandemVerifyRequest>,
) -> Result<Json<TandemVerifyResponse>, VerifyFailure> {
    verify_handler(State(lazy.state()?), Json(req)).await
}

async fn lazy_generate_handler(
    State(lazy): State<Arc<LazyVerify>>,
    Json(body): Json<GenerateBody>,
) -> Result<Sse<EventStream>, VerifyFailure> {
    generate_handler(State(lazy.state()?), Json(body)).await
}

/// The target side mounted on a gateway: `/v1/tandem/verify` and `/v1/tandem/generate` over the
/// gateway's local model, behind the delay emulation when `endpoints.delay` is set. Empty when
/// the endpoints are switched off.
pub fn gateway_routes(model: Arc<LocalModel>, endpoints: &VerifyEndpoints) -> axum::Router {
    if !endpoints.enabled {
        return axum::Router::new();
    }
    let lazy = Arc::new(LazyVerify {
        model,
        endpoints: endpoints.clone(),
        state: std::sync::OnceLock::new(),
    });
    let routes = axum::Router::new()
        .route(VERIFY_PATH, post(lazy_verify_handler))
        .route(GENERATE_PATH, post(lazy_generate_handler))
        .with_state(lazy);
    match endpoints.delay {
        Some(delay) => routes.layer(DelayLayer::new(delay)),
        None => routes,
    }
}

/// The verify protocol without HTTP: a [`Verifier`] calling a [`VerifyState`] in this process
/// (tests, benches, and a gateway that hosts the target itself).
#[derive(Debug, Clone)]
pub struct InProcessVerifier {
    state: Arc<VerifyState>,
    sent: Arc<Mutex<HashMap<String, Vec<u32>>>>,
}

impl InProcessVerifier {
    /// A verifier over `state`.
    pub fn new(state: Arc<VerifyState>) -> Self {
        Self {
            state,
            sent: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

#[async_trait::async_trait]
impl Verifier for InProcessVerifier {
    fn name(&self) -> &str {
        "in-process"
    }

    fn protocol(&self) -> VerifyProtocol {
        VerifyProtocol::Tandem
    }

    async fn verify(&self, req: &VerifyRequest<'_>) -> Result<VerifyResponse, ProviderError> {
        let session = req.session.unwrap_or("in-process").to_owned();
        let mut full = req.prefix.to_vec();
        full.extend_from_slice(req.draft);
        let base_len = self.sent.lock().get(&session).map_or(0, |prev| {
            prev.iter().zip(&full).take_while(|(a, b)| a == b).count()
        });
        let base_len = base_len.min(full.len().saturating_sub(req.draft.len().max(1)));
        let answer = self
            .state
            .verify(TandemVerifyRequest {
                model: req.model.to_owned(),
                session_id: session.clone(),
                base_len,
                tokens: full[base_len..].to_vec(),
                draft_len: req.draft.len(),
                top_k: req.top_k,
                greedy: req.greedy,
                close: false,
            })
            .await
            .map_err(|f| {
                ProviderError::new(ProviderErrorKind::Status, "in-process", format!("{f:?}"))
            })?;
        self.sent.lock().insert(session, full);
        VerifyResponse::from(answer)
            .check(req.draft.len(), "in-process")
            .and_then(|r| r.check_early_exit(req.draft, "in-process").map(|()| r))
    }

    async fn end_session(&self, session: &str) {
        self.sent.lock().remove(session);
        let _ = self.state.verify(TandemVerifyRequest::close(session)).await;
    }
}

/// Plain greedy streaming from an engine in this process.
#[derive(Debug, Clone)]
pub struct InProcessStreamer {
    engine: Engine,
}

impl InProcessStreamer {
    /// A streamer over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

#[async_trait::async_trait]
impl PlainStreamer for InProcessStreamer {
    async fn stream(
        &self,
        context: &[u32],
        max_tokens: usize,
        _session: Option<&str>,
    ) -> Result<BoxStream<'static, Result<u32, ProviderError>>, ProviderError> {
        let rx = self
            .engine
            .generate(GenerateRequest {
                prompt: context.to_vec(),
                params: SamplingParams::greedy(max_tokens.max(1)),
            })
            .map_err(|e| {
                ProviderError::new(ProviderErrorKind::Status, "in-process", e.to_string())
            })?;
        Ok(tokio_stream_from(rx)
            .filter_map(|ev| async move {
                match ev {
                    GenerateEvent::Token { id, .. } => Some(Ok(id)),
                    GenerateEvent::Finished { .. } => None,
                    GenerateEvent::Error(m) => Some(Err(ProviderError::new(
                        ProviderErrorKind::Status,
                        "in-process",
                        m,
                    ))),
                }
            })
            .boxed())
    }
}
