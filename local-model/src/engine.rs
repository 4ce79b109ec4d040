//! The engine: one OS thread that owns the model, the KV/prefix cache and the drafting sessions.
//! Requests arrive over a channel; each generation streams events through its own
//! `tokio::sync::mpsc` sender, and dropping the receiver cancels it within one step.
//!
//! Each step batches one decode token of every running generation with prefill chunks of new
//! prompts, so short requests are not stuck behind long ones.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tandem_kernels::KernelPool;
use tokio::sync::{mpsc, oneshot};

use crate::chat::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, GEMMA_TEMPLATE};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Arch, BatchItem, KvRun, Model, Scratch, SeqKv, WeightFormat};
use crate::sampling::{
    LogNorm, Sampler, SamplingParams, StopBuffer, TokenLogprob, TopLogprob, entropy, top_k_logits,
};
use crate::spell::Spelling;
use crate::tokenizer::Tokenizer;

/// Engine settings. `EngineConfig::new(path)` gives defaults; the builder methods adjust them.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Kernel threads (0 = all available cores).
    pub threads: usize,
    /// Upper bound on tokens held in KV storage: running requests, sessions and the prefix cache
    /// together. Least recently used cached prefixes are evicted first.
    pub kv_cache_tokens: usize,
    /// Most generations decoded together; more wait in a queue.
    pub max_batch: usize,
    /// Longest sequence (prompt + completion); defaults to the model's context length capped by
    /// `kv_cache_tokens`.
    pub max_context: Option<usize>,
    /// Tokens of prompt prefill per step, shared between waiting prompts.
    pub prefill_chunk: usize,
    /// Steps of at most this many tokens run on one kernel thread when the threads share
    /// physical cores (0 = always use `threads`).
    pub small_step_rows: usize,
    /// How the matrix weights are held: as stored (default), or converted at load to Q8_0, f16
    /// or f32, e.g. a higher-precision target run from a 4-bit file (costs load time and memory:
    /// about 1.06, 2 or 4 bytes per weight).
    pub weight_format: WeightFormat,
    /// Reuse of cached runs at moved positions: a prompt that shares a run of at least this
    /// many tokens with a cached sequence after their common prefix, moved by at most as many
    /// (an editor's suffix after a keystroke), takes that run's KV moved to its new position
    /// instead of computing it again, and computes only the tokens between runs (0 = off: only
    /// the common prefix is reused, and every answer equals a cold run's). The moved run keeps
    /// what it attended to before, so answers can differ slightly from a cold run's.
    pub cache_reuse: usize,
    /// Reuse runs wherever they moved, from any token (an editor's jump: the lines both windows
    /// show, at new positions), not only runs a marker starts that moved by at most
    /// `cache_reuse` tokens. A run then also keeps the role it had (prefix or suffix text), so
    /// answers differ from a cold run's more often.
    pub cache_reuse_anywhere: bool,
    /// Prompt-lookup drafting for greedy generations: up to this many tokens that followed the
    /// latest earlier occurrence of the sequence's last few tokens (in the prompt or the answer)
    /// are checked in the same forward pass as the next token, and every one the model agrees
    /// with is kept, so repeated text costs fewer steps; the output is the same as without
    /// (0 = off).
    pub draft_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model_path: PathBuf::new(),
            threads: 0,
            kv_cache_tokens: 8192,
            max_batch: 8,
            max_context: None,
            prefill_chunk: 256,
            small_step_rows: 4,
            weight_format: WeightFormat::AsStored,
            cache_reuse: 0,
            cache_reuse_anywhere: false,
            draft_tokens: 0,
        }
    }
}

impl EngineConfig {
    /// Defaults for a model file.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            ..Self::default()
        }
    }

    /// Sets the kernel thread count (0 = all cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the KV token budget.
    pub fn kv_cache_tokens(mut self, tokens: usize) -> Self {
        self.kv_cache_tokens = tokens;
        self
    }

    /// Sets the shortest run reused at a moved position (0 = off).
    pub fn cache_reuse(mut self, min_tokens: usize) -> Self {
        self.cache_reuse = min_tokens;
        self
    }

    /// Sets whether moved runs are reused wherever they moved (see the field).
    pub fn cache_reuse_anywhere(mut self, anywhere: bool) -> Self {
        self.cache_reuse_anywhere = anywhere;
        self
    }

    /// Sets the most prompt-lookup draft tokens per step (0 = off).
    pub fn draft_tokens(mut self, n: usize) -> Self {
        self.draft_tokens = n;
        self
    }

    /// Sets the batch size.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets the longest sequence.
    pub fn max_context(mut self, n: usize) -> Self {
        self.max_context = Some(n);
        self
    }

    /// Sets the prefill chunk.
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n;
        self
    }

    /// Sets the largest step that runs on one kernel thread.
    pub fn small_step_rows(mut self, n: usize) -> Self {
        self.small_step_rows = n;
        self
    }

    /// Sets how the matrix weights are held (see [`WeightFormat`]).
    pub fn weight_format(mut self, format: WeightFormat) -> Self {
        self.weight_format = format;
        self
    }
}

/// What the loaded model is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Short id: the file name without `.gguf`.
    pub id: String,
    /// `general.name` from the file, or the id.
    pub name: String,
    /// Architecture (`llama`, `qwen2`, `qwen3`, `gemma3`).
    pub arch: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence this engine accepts.
    pub context_length: usize,
    /// Tokens that end generation (EOS and end-of-turn).
    pub eos_token_ids: Vec<u32>,
    /// BOS token, if any.
    pub bos_token_id: Option<u32>,
    /// sha256 over the vocabulary: equal hashes mean the same tokenizer.
    pub vocab_hash: String,
    /// Decoder layers.
    pub n_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// KV bytes per cached token.
    pub kv_bytes_per_token: usize,
}

/// A generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (already templated and tokenized).
    pub prompt: Vec<u32>,
    /// Sampling parameters.
    pub params: SamplingParams,
}

/// Why the engine stopped generating (the API's finish reason is `tandem_cloud_adapters::FinishReason`;
/// the local executor maps this onto it, and a cancelled generation has no answer to finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// The receiver was dropped.
    Cancelled,
}

/// One streamed event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// A sampled token. `text` is the stop-safe text delta (possibly empty while text that may
    /// start a stop string or an incomplete UTF-8 character is held back). An end-of-sequence
    /// token is reported too, with empty text plus anything still held back.
    Token {
        /// Token id.
        id: u32,
        /// Text delta to show.
        text: String,
        /// Log-probabilities and entropy, when `params.logprobs` was set.
        logprob: Option<TokenLogprob>,
    },
    /// The last event of a successful generation.
    Finished {
        /// Why it ended.
        reason: StopReason,
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Tokens generated (each reported by a `Token` event).
        completion_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_prompt_tokens: usize,
        /// CPU seconds the engine spent on this generation: its share, by tokens processed, of
        /// the engine thread's and kernel workers' CPU time in every step it took part in.
        cpu_seconds: f64,
    },
    /// The generation failed; no more events follow.
    Error(String),
}

/// Scores of one position of a scored token sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionScores {
    /// The token at this position.
    pub token: u32,
    /// Its log-probability given everything before it.
    pub logprob: f32,
    /// Entropy (nats) of the distribution it was drawn from.
    pub entropy: f32,
    /// The `top_k` most likely tokens at this position: (id, logprob), best first.
    pub top: Vec<(u32, f32)>,
}

/// Result of scoring tokens after a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// One entry per scored token.
    pub positions: Vec<PositionScores>,
    /// The distribution after the last token (the "bonus" position of speculative decoding):
    /// (id, logprob), best first.
    pub next_top: Vec<(u32, f32)>,
    /// Entropy of that distribution.
    pub next_entropy: f32,
    /// Tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// A drafting session's id.
pub type SessionId = u64;

/// One drafted token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftToken {
    /// Token id.
    pub id: u32,
    /// Its probability under the sampling distribution it was drawn from (1 for greedy).
    pub prob: f32,
    /// Its log-probability under the model (temperature 1).
    pub logprob: f32,
    /// The sampling distribution's most likely tokens (id, prob), best first; at most
    /// `params.logprobs` (default 8) entries.
    pub dist: Vec<(u32, f32)>,
}

/// Counters of the engine's cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Sequences held in the prefix cache.
    pub entries: usize,
    /// Tokens held in the prefix cache.
    pub cached_tokens: usize,
    /// Tokens held by running generations and sessions.
    pub active_tokens: usize,
    /// Running generations.
    pub running: usize,
    /// Generations waiting for a batch slot.
    pub waiting: usize,
    /// Open sessions.
    pub sessions: usize,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Told once a generation is admitted: how many prompt tokens came from the prefix cache.
type Admitted = Option<oneshot::Sender<usize>>;

enum Command {
    Generate(GenerateRequest, mpsc::Sender<GenerateEvent>, Admitted),
    Score {
        prefix: Vec<u32>,
        tokens: Vec<u32>,
        top_k: usize,
        reply: Reply<Scores>,
    },
    OpenSession(Vec<u32>, Reply<SessionId>),
    Draft(SessionId, usize, SamplingParams, Reply<Vec<DraftToken>>),
    Append(SessionId, Vec<u32>, usize, Reply<Scores>),
    Rollback(SessionId, usize, Reply<()>),
    CloseSession(SessionId),
    ClearCache(Reply<()>),
    Stats(Reply<CacheStats>),
    Shutdown,
}

struct Inner {
    tx: std_mpsc::Sender<Command>,
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// What the prefix cache holds, as the worker last published it.
    cached: CachedPrefixes,
}

/// The token sequences the prefix cache holds, published by the worker after each change so
/// that callers can ask what a prompt would reuse without waiting for the engine thread.
type CachedPrefixes = Arc<parking_lot::Mutex<Vec<Arc<[u32]>>>>;

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

/// Handle to a running engine. Cheap to clone; the engine stops when the last clone drops.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.inner.info)
            .finish()
    }
}

struct Ready {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template_src: String,
    cached: CachedPrefixes,
}

impl Engine {
    /// Loads the model on a new engine thread and returns once it is ready to serve.
    pub fn start(cfg: EngineConfig) -> Result<Engine> {
        let (tx, rx) = std_mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<Ready>>();
        let thread = std::thread::Builder::new()
            .name("tandem-engine".into())
            .spawn(move || match Worker::load(&cfg) {
                Ok((worker, ready)) => {
                    if ready_tx.send(Ok(ready)).is_ok() {
                        worker.run(rx);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::EngineStopped(format!("cannot spawn engine thread: {e}")))?;
        let ready = match ready_rx.recv() {
            Ok(r) => r,
            Err(_) => {
                let _ = thread.join();
                return Err(Error::EngineStopped(
                    "engine thread exited while loading".into(),
                ));
            }
        };
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        let tok = &ready.tokenizer;
        let text_of = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
        let template = ChatTemplate::new(
            &ready.template_src,
            &text_of(tok.bos_id()),
            &text_of(tok.eos_id()),
        )?;
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                info: ready.info,
                tokenizer: ready.tokenizer,
                template,
                thread: parking_lot::Mutex::new(Some(thread)),
                cached: ready.cached,
            }),
        })
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// How many of `prompt`'s first tokens the prefix cache holds (as of its last change): what
    /// a generation of it would not compute, for predicting its time before it starts.
    pub fn cached_prefix(&self, prompt: &[u32]) -> usize {
        self.inner
            .cached
            .lock()
            .iter()
            .map(|seq| common_prefix(seq, prompt))
            .max()
            .unwrap_or(0)
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }

    /// Renders messages with the model's chat template (special tokens as text).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.inner.template.render(messages, add_generation_prompt)
    }

    /// Renders and tokenizes a chat prompt: specials parsed, BOS added unless the template
    /// already wrote it.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        let tok = &self.inner.tokenizer;
        let has_bos = tok
            .bos_id()
            .is_some_and(|b| !tok.token_text(b).is_empty() && text.starts_with(&tok.token_text(b)));
        Ok(tok.encode(&text, !has_bos))
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.inner
            .tx
            .send(cmd)
            .map_err(|_| Error::EngineStopped("engine thread is gone".into()))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await
            .map_err(|_| Error::EngineStopped("engine dropped the request".into()))?
    }

    /// Starts a generation; events stream on the returned receiver. Drop it to cancel.
    pub fn generate(&self, req: GenerateRequest) -> Result<mpsc::Receiver<GenerateEvent>> {
        if req.prompt.is_empty() {
            return Err(Error::InvalidArgument("prompt is empty".into()));
        }
        let cap = req.params.max_tokens.clamp(1, 1 << 16) + 4;
        let (tx, rx) = mpsc::channel(cap);
        self.send(Command::Generate(req, tx, None))?;
        Ok(rx)
    }

    /// Like [`Engine::generate`], and also tells, once the generation is admitted, how many
    /// prompt tokens came from the prefix cache (so a caller that stops early still knows what
    /// was computed).
    pub fn generate_counted(
        &self,
        req: GenerateRequest,
    ) -> Result<(mpsc::Receiver<GenerateEvent>, oneshot::Receiver<usize>)> {
        if req.prompt.is_empty() {
            return Err(Error::InvalidArgument("prompt is empty".into()));
        }
        let cap = req.params.max_tokens.clamp(1, 1 << 16) + 4;
        let (tx, rx) = mpsc::channel(cap);
        let (admitted, cached) = oneshot::channel();
        self.send(Command::Generate(req, tx, Some(admitted)))?;
        Ok((rx, cached))
    }

    /// Scores `tokens` after `prefix` in one forward pass over `tokens` (the prefix's KV comes
    /// from the prefix cache when it can): each token's log-probability and the `top_k`
    /// alternatives per position, plus the distribution after the last token.
    pub async fn score(&self, prefix: &[u32], tokens: &[u32], top_k: usize) -> Result<Scores> {
        let (prefix, tokens) = (prefix.to_vec(), tokens.to_vec());
        self.call(|reply| Command::Score {
            prefix,
            tokens,
            top_k,
            reply,
        })
        .await
    }

    /// Opens a persistent sequence over `prompt` for drafting or verification.
    pub async fn open_session(&self, prompt: &[u32]) -> Result<SessionId> {
        let p = prompt.to_vec();
        self.call(|r| Command::OpenSession(p, r)).await
    }

    /// Proposes `k` tokens continuing the session, appending them to its KV.
    pub async fn draft(
        &self,
        session: SessionId,
        k: usize,
        params: &SamplingParams,
    ) -> Result<Vec<DraftToken>> {
        let p = params.clone();
        self.call(|r| Command::Draft(session, k, p, r)).await
    }

    /// Feeds tokens into the session and returns their scores (and the next distribution).
    pub async fn append(&self, session: SessionId, tokens: &[u32], top_k: usize) -> Result<Scores> {
        let t = tokens.to_vec();
        self.call(|r| Command::Append(session, t, top_k, r)).await
    }

    /// Drops the last `n` tokens of the session.
    pub async fn rollback(&self, session: SessionId, n: usize) -> Result<()> {
        self.call(|r| Command::Rollback(session, n, r)).await
    }

    /// Closes a session; its KV goes to the prefix cache.
    pub async fn close_session(&self, session: SessionId) {
        let _ = self.send(Command::CloseSession(session));
    }

    /// Empties the prefix cache.
    pub async fn clear_cache(&self) -> Result<()> {
        self.call(Command::ClearCache).await
    }

    /// Cache and queue counters.
    pub async fn stats(&self) -> Result<CacheStats> {
        self.call(Command::Stats).await
    }
}

// ===== the engine thread =====

struct Running {
    tokens: Vec<u32>,
    kv: SeqKv,
    prompt_len: usize,
    cached: usize,
    completion: usize,
    params: SamplingParams,
    sampler: Sampler,
    stop: StopBuffer,
    tx: mpsc::Sender<GenerateEvent>,
    /// CPU time spent on this sequence so far (its share of each step it took part in), ns.
    cpu_ns: u64,
    /// Draft tokens appended to `tokens` for this step, to be checked against its logits.
    drafted: usize,
    /// Bytes of `params.forced_prefix` not yet spelled by a chosen token.
    forced: Vec<u8>,
    /// The end of the cached run this sequence's prompt was taken from, past where they part:
    /// an earlier answer (and the text it answered) that greedy decoding is likely to write
    /// again in whole or in part.
    earlier: Vec<u32>,
    /// Whether `earlier` continues this sequence exactly (the prompt extended the cached run and
    /// the model has chosen its tokens so far): then it is the next step's draft as it stands;
    /// otherwise drafts are looked up in it.
    on_track: bool,
}

struct Session {
    tokens: Vec<u32>,
    kv: SeqKv,
    /// Logits after the last token in `kv`, when current.
    logits: Option<Vec<f32>>,
    sampler: Option<Sampler>,
}

struct CacheEntry {
    /// The sequence's tokens: those in `kv`, then the answer's last token (not put through).
    tokens: Vec<u32>,
    kv: SeqKv,
    last_used: u64,
}

struct Worker {
    model: Model,
    pool: KernelPool,
    /// One-thread pool for small steps (decode), used when the pool's threads share physical
    /// cores: on two hyperthreads of one core, a second thread's spinning between the many small
    /// matmuls of a decode step costs more than it adds.
    small_pool: Option<KernelPool>,
    small_rows: usize,
    tok: Arc<Tokenizer>,
    eos: Vec<u32>,
    max_context: usize,
    kv_budget: usize,
    max_batch: usize,
    chunk: usize,
    scratch: Scratch,
    logits: Vec<f32>,
    running: Vec<Running>,
    waiting: VecDeque<(GenerateRequest, mpsc::Sender<GenerateEvent>, Admitted)>,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
    cache: Vec<CacheEntry>,
    clock: u64,
    /// Shortest run reused at a moved position (0 = off).
    reuse_min: usize,
    /// Runs are reused wherever they moved, from any token.
    reuse_anywhere: bool,
    /// Most prompt-lookup draft tokens per step of a greedy generation (0 = off).
    draft_max: usize,
    /// Masks for answers that must begin with a forced text.
    spelling: Spelling,
    /// Where the cache's sequences are published for [`Engine::cached_prefix`].
    published: CachedPrefixes,
}

fn pick_pool<'a>(
    pool: &'a KernelPool,
    small: &'a Option<KernelPool>,
    small_rows: usize,
    rows: usize,
) -> &'a KernelPool {
    match small {
        Some(p) if rows <= small_rows => p,
        _ => pool,
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A cached run's end past where a new prompt parts from it (see `Running::earlier`).
#[derive(Default)]
struct Earlier {
    tokens: Vec<u32>,
    on_track: bool,
}

/// Most tokens of an earlier answer checked as drafts in one step: it is the likely answer
/// itself, so more of it is worth checking at once than of a prompt-lookup guess.
const FOLLOW_DRAFT: usize = 16;

/// Most tokens of a cached run's parted end kept to look drafts up in: the earlier answer and
/// the line it answered, not the whole earlier prompt.
const EARLIER_CORPUS: usize = 64;

/// Prompt-lookup draft: the tokens (at most `max`) that followed the latest earlier occurrence of
/// the sequence's last 4, 3 or 2 tokens (the longest that occurred), or none.
fn lookup_draft(tokens: &[u32], max: usize) -> &[u32] {
    (2..=4)
        .rev()
        .find_map(|n| {
            let cut = tokens.len().checked_sub(n).filter(|&c| c > 0)?;
            lookup_in(tokens, &tokens[cut..], cut, max)
        })
        .unwrap_or(&[])
}

/// The tokens (at most `max`) after the latest occurrence of `tail` in `corpus` that starts
/// before `starts_before`, or none (nor where nothing follows it there).
fn lookup_in<'a>(
    corpus: &'a [u32],
    tail: &[u32],
    starts_before: usize,
    max: usize,
) -> Option<&'a [u32]> {
    let n = tail.len();
    let last_start = (corpus.len() + 1).saturating_sub(n);
    let start = (0..starts_before.min(last_start))
        .rev()
        .find(|&s| &corpus[s..s + n] == tail)?;
    let from = start + n;
    Some(&corpus[from..(from + max).min(corpus.len())]).filter(|d| !d.is_empty())
}

/// A draft from an earlier answer's tokens: what followed the sequence's last 3 or 2 tokens
/// there, or none.
fn earlier_draft<'a>(tokens: &[u32], earlier: &'a [u32], max: usize) -> Option<&'a [u32]> {
    (2..=3).rev().find_map(|n| {
        let tail = tokens.get(tokens.len().checked_sub(n)?..)?;
        lookup_in(earlier, tail, usize::MAX, max)
    })
}

/// Runs of at least `min` tokens that `new` shares with `old` after their first `from` tokens,
/// in order in both: `(start in old, start in new, length)`. At each position of `new` the
/// longest match at or after the previous run's end in `old` is taken, so a run can move either
/// way (text inserted before it, or removed), by at most `reach` tokens each way, and the
/// search gives up after `reach` new tokens without a run. With `reach` = `min`, a run whose
/// surroundings changed more (a jump elsewhere in a file) is not taken: it attended to too
/// different a context to stand in for a cold run. A run starts at an `anchor` token (a
/// template's control token, such as a fill-in-the-middle suffix marker): plain text that moved
/// across such a marker changed its role, and its cached keys say the old one. Reuse after a
/// jump (`reach` unbounded, any token an anchor) accepts both, and says what it costs.
fn shared_runs(
    old: &[u32],
    new: &[u32],
    from: usize,
    min: usize,
    reach: usize,
    anchor: impl Fn(u32) -> bool,
) -> Vec<(usize, usize, usize)> {
    const KEY: usize = 4;
    let key = min.clamp(1, KEY);
    let mut at: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for c in from..old.len().saturating_sub(key - 1) {
        at.entry(&old[c..c + key]).or_default().push(c);
    }
    let mut runs = Vec::new();
    let (mut old_from, mut new_from, mut p) = (from, from, from);
    while p + min <= new.len() && p + key <= new.len() && p - new_from <= reach {
        if !anchor(new[p]) {
            p += 1;
            continue;
        }
        let best = at
            .get(&new[p..p + key])
            .into_iter()
            .flatten()
            .filter(|&&c| c >= old_from && c - old_from <= reach)
            .map(|&c| (c, common_prefix(&old[c..], &new[p..])))
            .max_by_key(|&(_, n)| n);
        match best {
            Some((c, n)) if n >= min => {
                runs.push((c, p, n));
                old_from = c + n;
                p += n;
                new_from = p;
            }
            _ => p += 1,
        }
    }
    runs
}

impl Worker {
    fn load(cfg: &EngineConfig) -> Result<(Self, Ready)> {
        let gguf = Arc::new(GgufFile::open(&cfg.model_path)?);
        let tok = Arc::new(Tokenizer::from_gguf(&gguf)?);
        let model = Model::load_with(gguf.clone(), cfg.weight_format)?;
        let mc = &model.cfg;
        if tok.vocab_size() > mc.vocab {
            return Err(Error::Gguf(format!(
                "tokenizer has {} tokens but the output head {}",
                tok.vocab_size(),
                mc.vocab
            )));
        }
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let pool = KernelPool::new(threads).map_err(|e| Error::Kernel(e.to_string()))?;
        // Only where the threads would be SMT siblings of one core: on separate cores a decode
        // step gains from both.
        let small_pool = if threads > 1
            && cfg.small_step_rows > 0
            && tandem_kernels::cpu::threads_share_cores(threads)
        {
            Some(KernelPool::new(1).map_err(|e| Error::Kernel(e.to_string()))?)
        } else {
            None
        };
        let kv_budget = cfg.kv_cache_tokens.max(16);
        let max_context = cfg
            .max_context
            .unwrap_or(mc.context_length)
            .min(mc.context_length.max(1))
            .min(kv_budget);
        let mut eos: Vec<u32> = tok.eos_id().into_iter().collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>"] {
            if let Some(id) = tok.token_id(name)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        if let Some(id) = gguf
            .get("tokenizer.ggml.eot_token_id")
            .and_then(|v| v.as_u64())
            && !eos.contains(&(id as u32))
            && (id as usize) < tok.vocab_size()
        {
            eos.push(id as u32);
        }
        let template_src = match gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(t) => t.to_owned(),
            None if mc.arch == Arch::Gemma3 || tok.token_id("<start_of_turn>").is_some() => {
                GEMMA_TEMPLATE.to_owned()
            }
            None => CHATML_TEMPLATE.to_owned(),
        };
        let id = cfg
            .model_path
            .file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".gguf").to_owned())
            .unwrap_or_else(|| "local".into());
        let info = ModelInfo {
            name: gguf
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| id.clone()),
            id,
            arch: mc.arch.as_str().to_owned(),
            vocab_size: tok.vocab_size(),
            context_length: max_context,
            eos_token_ids: eos.clone(),
            bos_token_id: tok.bos_id(),
            vocab_hash: tok.vocab_hash().to_owned(),
            n_layers: mc.n_layers,
            hidden_size: mc.hidden,
            kv_bytes_per_token: mc.kv_bytes_per_token(),
        };
        let chunk = cfg.prefill_chunk.clamp(16, 4096);
        let max_batch = cfg.max_batch.max(1);
        let scratch = Scratch::new(mc, chunk + max_batch, max_context + 1);
        let worker = Worker {
            model,
            pool,
            small_pool,
            small_rows: cfg.small_step_rows,
            tok: tok.clone(),
            eos,
            max_context,
            kv_budget,
            max_batch,
            chunk,
            scratch,
            logits: Vec::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            sessions: HashMap::new(),
            next_session: 1,
            cache: Vec::new(),
            clock: 0,
            reuse_min: cfg.cache_reuse,
            reuse_anywhere: cfg.cache_reuse_anywhere,
            draft_max: cfg.draft_tokens,
            spelling: Spelling::default(),
            published: CachedPrefixes::default(),
        };
        let cached = worker.published.clone();
        Ok((
            worker,
            Ready {
                info,
                tokenizer: tok,
                template_src,
                cached,
            },
        ))
    }

    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        loop {
            // Block only when idle; otherwise take what has arrived and step.
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Handles one command; false on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Generate(req, tx, admitted) => self.waiting.push_back((req, tx, admitted)),
            Command::Score {
                prefix,
                tokens,
                top_k,
                reply,
            } => {
                let _ = reply.send(self.score(&prefix, &tokens, top_k));
            }
            Command::OpenSession(prompt, reply) => {
                let _ = reply.send(self.open_session(prompt));
            }
            Command::Draft(id, k, params, reply) => {
                let _ = reply.send(self.draft(id, k, &params));
            }
            Command::Append(id, tokens, top_k, reply) => {
                let _ = reply.send(self.append(id, &tokens, top_k));
            }
            Command::Rollback(id, n, reply) => {
                let r = match self.sessions.get_mut(&id) {
                    None => Err(Error::UnknownSession(id)),
                    Some(s) if n > s.kv.len => Err(Error::InvalidArgument(format!(
                        "cannot roll back {n} tokens of a {}-token session",
                        s.kv.len
                    ))),
                    Some(s) => {
                        if n > 0 {
                            s.kv.truncate(s.kv.len - n);
                            s.tokens.truncate(s.kv.len);
                            s.logits = None;
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::CloseSession(id) => {
                if let Some(s) = self.sessions.remove(&id) {
                    self.cache_insert(s.tokens, s.kv);
                }
            }
            Command::ClearCache(reply) => {
                self.cache.clear();
                self.publish(None);
                let _ = reply.send(Ok(()));
            }
            Command::Stats(reply) => {
                let _ = reply.send(Ok(self.stats()));
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.cache.len(),
            cached_tokens: self.cache.iter().map(|e| e.kv.len).sum(),
            active_tokens: self.active_tokens(),
            running: self.running.len(),
            waiting: self.waiting.len(),
            sessions: self.sessions.len(),
        }
    }

    fn active_tokens(&self) -> usize {
        self.running.iter().map(|r| r.tokens.len()).sum::<usize>()
            + self
                .sessions
                .values()
                .map(|s| s.tokens.len())
                .sum::<usize>()
    }

    // ----- prefix cache -----

    /// Takes the cached sequence sharing the longest prefix with `tokens`, truncated to at most
    /// `limit` tokens; a fresh sequence if none shares anything. Also returns the cached
    /// sequence's end past where it parts from `tokens`.
    fn cache_take(&mut self, tokens: &[u32], limit: usize) -> (SeqKv, usize, Earlier) {
        let best = self
            .cache
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = common_prefix(&e.tokens[..e.kv.len], tokens).min(limit);
                (i, n, e.last_used)
            })
            // Of equals, the latest: after a jump it is the likeliest to hold the new window.
            .max_by_key(|&(_, n, used)| (n, used));
        match best {
            Some((i, n, _)) if n > 0 => {
                let mut e = self.cache.swap_remove(i);
                let parted = common_prefix(&e.tokens, tokens);
                let on_track = parted == tokens.len();
                // Parted: only the end, where the earlier answer is.
                let from = if on_track {
                    parted
                } else {
                    parted.max(e.tokens.len().saturating_sub(EARLIER_CORPUS))
                };
                let parted_end = Earlier {
                    tokens: e.tokens[from..].to_vec(),
                    on_track,
                };
                if self.reuse_min > 0 {
                    let (kv, cached) = self.reuse_runs(e, n, &tokens[..limit.min(tokens.len())]);
                    return (kv, cached, parted_end);
                }
                e.kv.truncate(n);
                (e.kv, n, parted_end)
            }
            _ => (SeqKv::new(&self.model.cfg), 0, Earlier::default()),
        }
    }

    /// Rebuilds cached sequence `e` for `tokens` (at most the taken limit): its first `prefix`
    /// tokens as they are, then each later run it shares with `tokens` moved to its new position,
    /// the tokens between runs computed. Returns the sequence (the caller computes what follows
    /// it) and how many of its tokens came from the cache.
    fn reuse_runs(&mut self, e: CacheEntry, prefix: usize, tokens: &[u32]) -> (SeqKv, usize) {
        let tok = &self.tok;
        let anywhere = self.reuse_anywhere;
        let reach = if anywhere { usize::MAX } else { self.reuse_min };
        let runs = shared_runs(
            &e.tokens[..e.kv.len],
            tokens,
            prefix,
            self.reuse_min,
            reach,
            |t| anywhere || tok.is_control(t),
        );
        let cfg = &self.model.cfg;
        // Copied out first: computing the tokens between runs overwrites the old positions.
        let moved: Vec<(usize, KvRun)> = runs
            .iter()
            .map(|&(old, new, n)| {
                let mut run = e.kv.copy_run(cfg, old, n);
                self.model.shift_run(&mut run, new as i64 - old as i64);
                (new, run)
            })
            .collect();
        let mut kv = e.kv;
        kv.truncate(prefix);
        let mut cached = prefix;
        for (at, run) in moved {
            if at > kv.len {
                let between = tokens[kv.len..at].to_vec();
                if self.run_tokens(&mut kv, &between, between.len()).is_err() {
                    // The caller computes the rest and reports the error there.
                    break;
                }
            }
            kv.append_run(&self.model.cfg, &run);
            cached += run.len;
        }
        (kv, cached)
    }

    fn cache_insert(&mut self, mut tokens: Vec<u32>, mut kv: SeqKv) {
        // The token after the KV is kept: it is where the next prompt's drafts begin.
        tokens.truncate(kv.len + 1);
        if kv.len == 0 {
            return;
        }
        // A cached sequence that is a prefix of this one is redundant, and vice versa.
        self.cache.retain(|e| {
            common_prefix(&e.tokens[..e.kv.len], &tokens[..kv.len]) < e.kv.len.min(kv.len)
        });
        kv.shrink(&self.model.cfg);
        self.clock += 1;
        self.cache.push(CacheEntry {
            tokens,
            kv,
            last_used: self.clock,
        });
        if !self.evict(0) {
            self.publish(None);
        }
    }

    /// Evicts least recently used entries until `extra` more tokens fit the budget.
    /// Returns whether any was evicted (and the cache published again).
    fn evict(&mut self, extra: usize) -> bool {
        let active = self.active_tokens();
        let mut evicted = false;
        loop {
            let cached: usize = self.cache.iter().map(|e| e.kv.len).sum();
            if active + cached + extra <= self.kv_budget || self.cache.is_empty() {
                break;
            }
            if let Some((i, _)) = self
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
            {
                self.cache.swap_remove(i);
                evicted = true;
            }
        }
        if evicted {
            self.publish(None);
        }
        evicted
    }

    /// Publishes the cache's sequences, and `also`, for [`Engine::cached_prefix`]. A sequence
    /// taken by a running generation stays listed until the next change: it comes back
    /// extended.
    fn publish(&self, also: Option<&[u32]>) {
        let seqs = self
            .cache
            .iter()
            .map(|e| &e.tokens[..e.kv.len])
            .chain(also)
            .map(Arc::from)
            .collect();
        *self.published.lock() = seqs;
    }

    // ----- forward helpers -----

    /// Runs `tokens` through `kv` in prefill-sized chunks, returning logits for
    /// `tokens[logits_from..]` (all produced by the last chunk when they fit).
    fn run_tokens(
        &mut self,
        kv: &mut SeqKv,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        if kv.len + tokens.len() > self.max_context {
            return Err(Error::ContextOverflow(format!(
                "{} tokens exceed the context of {}",
                kv.len + tokens.len(),
                self.max_context
            )));
        }
        let vocab = self.model.cfg.vocab;
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(logits_from) * vocab);
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + self.chunk).min(tokens.len());
            let chunk = &tokens[start..end];
            let from = logits_from.saturating_sub(start).min(chunk.len());
            let mut items = [BatchItem {
                kv: &mut *kv,
                tokens: chunk,
                logits_from: from,
            }];
            let pool = pick_pool(&self.pool, &self.small_pool, self.small_rows, chunk.len());
            self.model
                .forward(pool, &mut items, &mut self.scratch, &mut self.logits)?;
            out.extend_from_slice(&self.logits);
            start = end;
        }
        Ok(out)
    }

    fn scores_from(&self, tokens: &[u32], rows: &[f32], top_k: usize, cached: usize) -> Scores {
        let vocab = self.model.cfg.vocab;
        let n = tokens.len();
        let mut positions = Vec::with_capacity(n);
        for (i, &t) in tokens.iter().enumerate() {
            let row = &rows[i * vocab..(i + 1) * vocab];
            let norm = LogNorm::of(row);
            positions.push(PositionScores {
                token: t,
                logprob: norm.logprob(row[t as usize]),
                entropy: entropy(row, &norm),
                top: top_k_logits(row, top_k)
                    .into_iter()
                    .map(|(id, l)| (id, norm.logprob(l)))
                    .collect(),
            });
        }
        let last = &rows[n * vocab..(n + 1) * vocab];
        let norm = LogNorm::of(last);
        Scores {
            positions,
            next_top: top_k_logits(last, top_k)
                .into_iter()
                .map(|(id, l)| (id, norm.logprob(l)))
                .collect(),
            next_entropy: entropy(last, &norm),
            cached_tokens: cached,
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let v = self.model.cfg.vocab;
        match tokens.iter().find(|&&t| t as usize >= v) {
            Some(t) => Err(Error::InvalidArgument(format!(
                "token id {t} outside vocabulary of {v}"
            ))),
            None => Ok(()),
        }
    }

    // ----- scoring and sessions -----

    fn score(&mut self, prefix: &[u32], tokens: &[u32], top_k: usize) -> Result<Scores> {
        if prefix.is_empty() {
            return Err(Error::InvalidArgument(
                "score needs a non-empty prefix".into(),
            ));
        }
        self.check_tokens(prefix)?;
        self.check_tokens(tokens)?;
        let mut full = prefix.to_vec();
        full.extend_from_slice(tokens);
        self.evict(full.len());
        // Keep the last prefix token to recompute: its row predicts tokens[0].
        let (mut kv, cached, _) = self.cache_take(&full, prefix.len() - 1);
        let feed = &full[kv.len..];
        let from = prefix.len() - 1 - kv.len;
        let rows = self.run_tokens(&mut kv, feed, from);
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                self.cache_insert(full, kv);
                return Err(e);
            }
        };
        let s = self.scores_from(tokens, &rows, top_k, cached);
        self.cache_insert(full, kv);
        Ok(s)
    }

    fn open_session(&mut self, prompt: Vec<u32>) -> Result<SessionId> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("session prompt is empty".into()));
        }
        self.check_tokens(&prompt)?;
        self.evict(prompt.len());
        let (mut kv, _, _) = self.cache_take(&prompt, prompt.len() - 1);
        let feed = prompt[kv.len..].to_vec();
        let logits = match self.run_tokens(&mut kv, &feed, feed.len() - 1) {
            Ok(l) => l,
            Err(e) => {
                self.cache_insert(prompt, kv);
                return Err(e);
            }
        };
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                tokens: prompt,
                kv,
                logits: Some(logits),
                sampler: None,
            },
        );
        Ok(id)
    }

    /// Feeds `tokens` into a session; returns logits rows for the position before each token
    /// and after the last (`tokens.len() + 1` rows).
    fn session_feed(&mut self, id: SessionId, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut s = self.sessions.remove(&id).ok_or(Error::UnknownSession(id))?;
        let vocab = self.model.cfg.vocab;
        let res = (|| {
            let mut rows = Vec::with_capacity((tokens.len() + 1) * vocab);
            let feed: Vec<u32> = match s.logits.take() {
                Some(l) => {
                    rows.extend_from_slice(&l);
                    tokens.to_vec()
                }
                None => {
                    // Stale after a rollback: recompute the last position with the new tokens.
                    let last = *s.tokens.last().ok_or_else(|| {
                        Error::InvalidArgument(
                            "session is empty; append to a non-empty session".into(),
                        )
                    })?;
                    s.kv.truncate(s.kv.len - 1);
                    let mut f = vec![last];
                    f.extend_from_slice(tokens);
                    f
                }
            };
            let out = self.run_tokens(&mut s.kv, &feed, 0)?;
            rows.extend_from_slice(&out);
            s.tokens.extend_from_slice(tokens);
            Ok(rows)
        })();
        match res {
            Ok(rows) => {
                s.logits = Some(rows[tokens.len() * vocab..].to_vec());
                self.sessions.insert(id, s);
                Ok(rows)
            }
            Err(e) => {
                s.tokens.truncate(s.kv.len);
                s.logits = None;
                self.sessions.insert(id, s);
                Err(e)
            }
        }
    }

    fn append(&mut self, id: SessionId, tokens: &[u32], top_k: usize) -> Result<Scores> {
        self.check_tokens(tokens)?;
        let rows = self.session_feed(id, tokens)?;
        Ok(self.scores_from(tokens, &rows, top_k, 0))
    }

    fn draft(
        &mut self,
        id: SessionId,
        k: usize,
        params: &SamplingParams,
    ) -> Result<Vec<DraftToken>> {
        let vocab = self.model.cfg.vocab;
        let keep = params.logprobs.unwrap_or(8);
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            let logits = match self.sessions.get_mut(&id) {
                None => return Err(Error::UnknownSession(id)),
                Some(s) => s.logits.clone(),
            };
            let logits = match logits {
                Some(l) => l,
                None => {
                    let rows = self.session_feed(id, &[])?;
                    rows[..vocab].to_vec()
                }
            };
            let s = self
                .sessions
                .get_mut(&id)
                .ok_or(Error::UnknownSession(id))?;
            let sampler = s.sampler.get_or_insert_with(|| Sampler::new(params));
            let dist = sampler.distribution(&logits);
            let choice = sampler.sample(&logits);
            let norm = LogNorm::of(&logits);
            out.push(DraftToken {
                id: choice.id,
                prob: choice.prob,
                logprob: norm.logprob(logits[choice.id as usize]),
                dist: dist.into_iter().take(keep.max(1)).collect(),
            });
            self.session_feed(id, &[choice.id])?;
        }
        Ok(out)
    }

    // ----- generation -----

    fn admit(&mut self) {
        while self.running.len() < self.max_batch {
            let Some((req, tx, admitted)) = self.waiting.pop_front() else {
                break;
            };
            if tx.is_closed() {
                continue;
            }
            if let Err(e) = self.check_tokens(&req.prompt) {
                let _ = tx.blocking_send(GenerateEvent::Error(e.to_string()));
                continue;
            }
            if req.prompt.len() >= self.max_context {
                let _ = tx.blocking_send(GenerateEvent::Error(
                    Error::ContextOverflow(format!(
                        "prompt of {} tokens leaves no room in the context of {}",
                        req.prompt.len(),
                        self.max_context
                    ))
                    .to_string(),
                ));
                continue;
            }
            let reserve = (req.prompt.len() + req.params.max_tokens).min(self.max_context);
            if !self.running.is_empty() && self.active_tokens() + reserve > self.kv_budget {
                // Wait for running generations to free KV space.
                self.waiting.push_front((req, tx, admitted));
                break;
            }
            self.evict(reserve);
            let (kv, cached, earlier) = self.cache_take(&req.prompt, req.prompt.len() - 1);
            if let Some(admitted) = admitted {
                let _ = admitted.send(cached);
            }
            let sampler = Sampler::new(&req.params);
            let forced = req.params.forced_prefix.as_bytes().to_vec();
            self.running.push(Running {
                prompt_len: req.prompt.len(),
                tokens: req.prompt,
                kv,
                cached,
                completion: 0,
                stop: StopBuffer::new(&req.params.stop),
                params: req.params,
                sampler,
                tx,
                cpu_ns: 0,
                drafted: 0,
                forced,
                earlier: earlier.tokens,
                on_track: earlier.on_track,
            });
        }
    }

    /// CPU time of the engine thread and every kernel worker so far, ns.
    fn cpu_ns(&self) -> u64 {
        tandem_kernels::cpu::thread_cpu_ns()
            + self.pool.worker_cpu_ns()
            + self
                .small_pool
                .as_ref()
                .map_or(0, KernelPool::worker_cpu_ns)
    }

    fn step(&mut self) {
        // Cancelled requests free their slot now.
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tx.is_closed() {
                let r = self.running.swap_remove(i);
                self.cache_insert(r.tokens, r.kv);
            } else {
                i += 1;
            }
        }
        if self.running.is_empty() {
            return;
        }
        // Decode tokens first, then prefill chunks within the step's budget.
        let decoding = self
            .running
            .iter()
            .filter(|r| r.tokens.len() - r.kv.len == 1)
            .count();
        let mut budget = self.chunk.saturating_sub(decoding).max(self.chunk / 4);
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter_mut().enumerate() {
            let pending = r.tokens.len() - r.kv.len;
            if pending == 1 {
                // Never past the token limit or the context: a kept draft token is an answer's.
                let left = (r.params.max_tokens.saturating_sub(r.completion + 1))
                    .min(self.max_context.saturating_sub(r.tokens.len() + 1));
                let room = left.min(self.draft_max);
                let draft = if !r.params.is_greedy() {
                    Vec::new()
                } else if r.on_track {
                    let follow = left.min(FOLLOW_DRAFT.max(self.draft_max));
                    r.earlier[..r.earlier.len().min(follow)].to_vec()
                } else if room > 0 {
                    earlier_draft(&r.tokens, &r.earlier, room)
                        .unwrap_or_else(|| lookup_draft(&r.tokens, room))
                        .to_vec()
                } else {
                    Vec::new()
                };
                r.drafted = draft.len();
                r.tokens.extend_from_slice(&draft);
                budget = budget.saturating_sub(draft.len());
                plan.push((i, 1 + r.drafted));
            } else if budget > 0 {
                let take = pending.min(budget);
                budget -= take;
                plan.push((i, take));
            }
        }
        let kv_lens: Vec<usize> = self.running.iter().map(|r| r.kv.len).collect();
        let cpu_before = self.cpu_ns();
        let result = {
            let mut items: Vec<BatchItem<'_>> = Vec::with_capacity(plan.len());
            let mut by_index: Vec<Option<&mut Running>> =
                self.running.iter_mut().map(Some).collect();
            for &(i, take) in &plan {
                if let Some(r) = by_index[i].take() {
                    let start = r.kv.len;
                    let done = start + take == r.tokens.len();
                    // A drafted step needs the logits before each draft token too.
                    let logits_from = match (done, r.drafted) {
                        (false, _) => take,
                        (true, 0) => take - 1,
                        (true, _) => 0,
                    };
                    items.push(BatchItem {
                        kv: &mut r.kv,
                        tokens: &r.tokens[start..start + take],
                        logits_from,
                    });
                }
            }
            let rows: usize = items.iter().map(|it| it.tokens.len()).sum();
            let pool = pick_pool(&self.pool, &self.small_pool, self.small_rows, rows);
            self.model
                .forward(pool, &mut items, &mut self.scratch, &mut self.logits)
        };
        if let Err(e) = result {
            for r in self.running.drain(..) {
                // Nothing is kept of a failed step, drafts included.
                let _ = r.tx.blocking_send(GenerateEvent::Error(e.to_string()));
            }
            return;
        }
        let vocab = self.model.cfg.vocab;
        let mut row = 0;
        let mut finished: Vec<(usize, StopReason)> = Vec::new();
        for &(i, take) in &plan {
            let r = &mut self.running[i];
            if kv_lens[i] + take < r.tokens.len() {
                continue; // mid-prefill, no logits
            }
            let drafted = std::mem::take(&mut r.drafted);
            let draft: Vec<u32> = r.tokens.drain(r.tokens.len() - drafted..).collect();
            let kept_from = r.tokens.len();
            let first_row = row;
            row += drafted + 1;
            let mut reason = None;
            for j in 0..=drafted {
                let logits = &self.logits[(first_row + j) * vocab..(first_row + j + 1) * vocab];
                let choice = if r.forced.is_empty() {
                    r.sampler.sample(logits)
                } else {
                    let spelled = self.spelling.mask(&self.tok, &r.forced, logits);
                    if spelled.is_none() {
                        // No token spells on (never so with byte tokens): the model goes free.
                        r.forced.clear();
                    }
                    r.sampler.sample(spelled.unwrap_or(logits))
                };
                let id = choice.id;
                let logprob = r.params.logprobs.map(|n| {
                    let norm = LogNorm::of(logits);
                    let tok = &self.tok;
                    TokenLogprob {
                        token: tok.token_text(id),
                        logprob: norm.logprob(logits[id as usize]),
                        bytes: tok.token_bytes(id).to_vec(),
                        entropy: entropy(logits, &norm),
                        top_logprobs: top_k_logits(logits, n)
                            .into_iter()
                            .map(|(t, l)| TopLogprob {
                                id: t,
                                token: tok.token_text(t),
                                logprob: norm.logprob(l),
                                bytes: tok.token_bytes(t).to_vec(),
                            })
                            .collect(),
                    }
                });
                r.completion += 1;
                r.tokens.push(id);
                let is_eos = !r.params.ignore_eos
                    && (self.eos.contains(&id) || r.params.stop_token_ids.contains(&id));
                let (mut text, stop) = if is_eos {
                    (r.stop.flush(), Some(StopReason::Stop))
                } else if self.tok.is_control(id) {
                    (String::new(), None)
                } else {
                    let bytes = self.tok.token_bytes(id);
                    // The forced text was the prompt's: it is not the answer's.
                    let spelled = bytes.len().min(r.forced.len());
                    r.forced.drain(..spelled);
                    let st = r.stop.push(&bytes[spelled..]);
                    (st.text, st.stopped.then_some(StopReason::Stop))
                };
                reason = stop;
                if reason.is_none()
                    && (r.completion >= r.params.max_tokens || r.tokens.len() >= self.max_context)
                {
                    text.push_str(&r.stop.flush());
                    reason = Some(StopReason::Length);
                }
                let sent =
                    r.tx.blocking_send(GenerateEvent::Token { id, text, logprob });
                if sent.is_err() {
                    reason = Some(StopReason::Cancelled);
                }
                // The next row holds only if the model chose the draft token it was computed after.
                if reason.is_some() || draft.get(j) != Some(&id) {
                    break;
                }
            }
            // The earlier answer is followed while the model keeps choosing it.
            let kept = &r.tokens[kept_from..];
            if r.on_track && r.earlier.starts_with(kept) {
                r.earlier.drain(..kept.len());
            } else {
                r.on_track = false;
            }
            // The KV holds every kept token but the last, which the next step puts through.
            r.kv.truncate(r.tokens.len() - 1);
            if let Some(reason) = reason {
                finished.push((i, reason));
            }
        }
        // The step's CPU time, shared by the tokens each sequence put through it.
        let spent = self.cpu_ns().saturating_sub(cpu_before);
        let rows: u64 = plan
            .iter()
            .map(|&(_, take)| take as u64)
            .sum::<u64>()
            .max(1);
        for &(i, take) in &plan {
            self.running[i].cpu_ns += spent * take as u64 / rows;
        }
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let r = self.running.swap_remove(i);
            // Published before the answer ends, so that a caller who asks next sees it; the
            // insertion itself (the KV shrunk to size) waits until the answer is out.
            self.publish(Some(&r.tokens[..r.kv.len]));
            let _ = r.tx.blocking_send(GenerateEvent::Finished {
                reason,
                prompt_tokens: r.prompt_len,
                completion_tokens: r.completion,
                cached_prompt_tokens: r.cached,
                cpu_seconds: r.cpu_ns as f64 / 1e9,
            });
            self.cache_insert(r.tokens, r.kv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{earlier_draft, lookup_draft, shared_runs};

    #[test]
    fn an_earlier_answer_drafts_what_followed_the_tail_there() {
        let earlier = [5, 6, 7, 8, 9, 6, 7, 10, 11];
        // The latest "6 7" is followed by 10 11; "1 6 7" occurs nowhere, "6 7" does.
        assert_eq!(earlier_draft(&[1, 6, 7], &earlier, 4), Some(&[10, 11][..]));
        assert_eq!(earlier_draft(&[5, 6, 7], &earlier, 1), Some(&[8][..]));
        // Nothing follows the corpus's end, and an unseen tail drafts nothing.
        assert_eq!(earlier_draft(&[1, 10, 11], &earlier, 4), None);
        assert_eq!(earlier_draft(&[1, 2, 3], &earlier, 4), None);
        assert_eq!(earlier_draft(&[7], &earlier, 4), None);
    }

    #[test]
    fn a_draft_follows_the_latest_occurrence_of_the_longest_tail() {
        // "1 2 3" occurred twice; the latest occurrence is followed by 9 9.
        let t = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 7, 2, 3];
        assert_eq!(lookup_draft(&t, 8), &[9, 9, 7, 2, 3]);
        assert_eq!(lookup_draft(&t, 2), &[9, 9]);
        // A tail of 4 that occurred wins over a later tail of 2.
        let t = [5, 6, 7, 8, 1, 6, 7, 0, 5, 6, 7, 8];
        assert_eq!(lookup_draft(&t, 3), &[1, 6, 7]);
        assert!(lookup_draft(&[1, 2, 3, 4], 4).is_empty());
        assert!(lookup_draft(&[], 4).is_empty());
    }

    /// Tokens 0 and 16 stand for control tokens, where runs may start.
    fn anchor(t: u32) -> bool {
        t == 0 || t == 10 || t == 16
    }

    #[test]
    fn a_run_after_inserted_tokens_is_found_moved_right() {
        let old: Vec<u32> = (0..40).collect();
        // Two tokens typed before position 10: the rest moved right by 2.
        let mut new: Vec<u32> = (0..10).collect();
        new.extend([100, 101]);
        new.extend(10..40);
        assert_eq!(
            shared_runs(&old, &new, 10, 8, 8, anchor),
            vec![(10, 12, 30)]
        );
        // Not from a plain token.
        assert!(shared_runs(&old, &new, 10, 8, 8, |t| t == 45).is_empty());
    }

    #[test]
    fn a_run_after_removed_tokens_is_found_moved_left() {
        let old: Vec<u32> = (0..40).collect();
        let mut new: Vec<u32> = (0..10).collect();
        new.extend(16..40);
        assert_eq!(
            shared_runs(&old, &new, 10, 8, 8, anchor),
            vec![(16, 10, 24)]
        );
        // Ten removed is more than a run of 8 may move.
        let mut new: Vec<u32> = (0..10).collect();
        new.extend(20..40);
        assert!(shared_runs(&old, &new, 10, 8, 8, |_| true).is_empty());
        // As are ten inserted.
        let mut new: Vec<u32> = (0..10).collect();
        new.extend(100..110);
        new.extend(10..40);
        assert!(shared_runs(&old, &new, 10, 8, 8, anchor).is_empty());
    }

    #[test]
    fn after_a_jump_runs_are_found_anywhere_in_order() {
        // The window moved down by 20: its first 20 tokens are gone, 20 new ones follow.
        let old: Vec<u32> = (0..100).collect();
        let mut new: Vec<u32> = vec![0, 1];
        new.extend(22..100);
        new.extend(200..220);
        assert!(shared_runs(&old, &new, 2, 8, 8, anchor).is_empty());
        assert_eq!(
            shared_runs(&old, &new, 2, 8, usize::MAX, |_| true),
            vec![(22, 2, 78)]
        );
        // A marker and a new line between two old runs: both taken, the gap computed.
        let mut new: Vec<u32> = vec![0, 1];
        new.extend(50..70);
        new.extend([300, 301, 302]);
        new.extend(80..95);
        assert_eq!(
            shared_runs(&old, &new, 2, 8, usize::MAX, |_| true),
            vec![(50, 2, 20), (80, 25, 15)]
        );
    }

    #[test]
    fn short_matches_and_out_of_order_runs_are_not_reused() {
        let old: Vec<u32> = (0..40).collect();
        // 16..24 comes before 10..16 in the new sequence: only the first found is kept.
        let mut new: Vec<u32> = (0..10).collect();
        new.extend(16..24);
        new.extend(10..16);
        new.extend([7, 8, 9]);
        assert_eq!(shared_runs(&old, &new, 10, 6, 6, anchor), vec![(16, 10, 8)]);
        assert!(shared_runs(&old, &new, 10, 9, 9, anchor).is_empty());
    }
}
