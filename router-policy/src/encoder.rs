//! Prompt embeddings from all-MiniLM-L6-v2 (int8 ONNX) on ONNX Runtime, with a session pool and an
//! LRU cache of recent prompts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::embedding::{EMBEDDING_DIM, EmbeddingSource};
use crate::static_embed::{STATIC_MAX_TOKENS, StaticEmbedder};
use crate::{Error, Result};

/// Tokens kept per prompt by default. The head of a prompt carries most of its routing signal and
/// the encoder's cost grows with length, so serving and evaluation use the same cut.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Settings of an [`Encoder`].
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// ONNX Runtime shared library (`onnxruntime/libonnxruntime.so` in the cache).
    pub lib_path: PathBuf,
    /// The int8 ONNX model.
    pub model_path: PathBuf,
    /// The tokenizer (`tokenizer.json`).
    pub tokenizer_path: PathBuf,
    /// Sessions in the pool; each runs one request at a time.
    pub pool_size: usize,
    /// Intra-op threads per session. One keeps N sessions from oversubscribing the cores.
    pub intra_threads: usize,
    /// Tokens kept per prompt (longer prompts are truncated).
    pub max_tokens: usize,
    /// Embeddings of recent prompts kept in memory.
    pub cache_capacity: usize,
}

impl EncoderConfig {
    /// The standard cache layout: `<cache_root>/onnxruntime/libonnxruntime.so` and
    /// `<cache_root>/minilm-l6-v2-int8/{model.onnx,tokenizer.json}`.
    pub fn from_cache_root(cache_root: &Path) -> Self {
        Self {
            lib_path: cache_root.join("onnxruntime/libonnxruntime.so"),
            model_path: cache_root.join("minilm-l6-v2-int8/model.onnx"),
            tokenizer_path: cache_root.join("minilm-l6-v2-int8/tokenizer.json"),
            pool_size: 2,
            intra_threads: 1,
            max_tokens: DEFAULT_MAX_TOKENS,
            cache_capacity: 4096,
        }
    }

    /// Fails with a message naming `tandem models fetch` when a file is absent.
    pub fn check_files(&self) -> Result<()> {
        for (what, path) in [
            ("onnx runtime library", &self.lib_path),
            ("encoder model", &self.model_path),
            ("encoder tokenizer", &self.tokenizer_path),
        ] {
            if !path.is_file() {
                return Err(Error::MissingArtifact {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The cache root: `$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else `$HOME/.cache/tandem`.
pub fn default_cache_root() -> PathBuf {
    cache_root_from(|key| std::env::var_os(key).map(PathBuf::from))
}

/// [`default_cache_root`] with the environment read through `get` (so tests never set process env).
pub fn cache_root_from(get: impl Fn(&str) -> Option<PathBuf>) -> PathBuf {
    if let Some(dir) = get("TANDEM_CACHE_DIR").filter(|p| !p.as_os_str().is_empty()) {
        return dir;
    }
    if let Some(dir) = get("XDG_CACHE_HOME").filter(|p| !p.as_os_str().is_empty()) {
        return dir.join("tandem");
    }
    get("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/tandem")
}

/// One environment per process is all ONNX Runtime allows; it lives for the whole process.
static ORT_ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

fn ort_environment(lib_path: &Path) -> Result<ort::environment::Environment> {
    ORT_ENV
        .get_or_init(|| {
            let builder = ort::environment::init_from(lib_path).map_err(|e| e.to_string())?;
            builder
                .with_name("tandem-router")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Onnx)
}

/// The 128-bit cache key of a prompt: the head of its SHA-256.
pub fn text_key(text: &str) -> u128 {
    let digest = Sha256::digest(text.as_bytes());
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(head)
}

/// A small least-recently-used map from prompt key to embedding.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    tick: u64,
    entries: HashMap<u128, (Arc<[f32]>, u64)>,
    order: BTreeMap<u64, u128>,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn get(&mut self, key: u128) -> Option<Arc<[f32]>> {
        self.tick += 1;
        let tick = self.tick;
        let (value, used) = self.entries.get_mut(&key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key);
        Some(value.clone())
    }

    fn put(&mut self, key: u128, value: Arc<[f32]>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(key, (value, self.tick)) {
            self.order.remove(&used);
        }
        self.order.insert(self.tick, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// A pool of ONNX sessions: a caller takes a free one, runs it, and gives it back.
struct SessionPool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
}

impl SessionPool {
    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut session = {
            let mut free = self.free.lock();
            loop {
                if let Some(s) = free.pop() {
                    break s;
                }
                self.returned.wait(&mut free);
            }
        };
        let out = f(&mut session);
        self.free.lock().push(session);
        self.returned.notify_one();
        out
    }
}

/// What the caller and the background filler share: the tokenizer, the sessions and the cache.
struct Shared {
    tokenizer: Tokenizer,
    pool: SessionPool,
    cache: Mutex<Lru>,
    /// Prompts queued for the background filler, so a repeated miss is queued once.
    pending: Mutex<HashSet<u128>>,
    /// Set when the encoder is dropped: the filler skips what is still queued.
    closing: AtomicBool,
}

/// Prompts waiting for a full embedding in the background (beyond this, misses are not queued).
const BACKGROUND_QUEUE: usize = 256;

/// The background filler's queue and thread.
struct Filler {
    tx: SyncSender<(u128, String)>,
    thread: std::thread::JoinHandle<()>,
}

/// Sentence embeddings for routing: MiniLM-L6-v2, mean-pooled over the attention mask and
/// L2-normalized. Cheap to share (`&self` everywhere); calls block the calling thread, so run them
/// off async workers.
pub struct Encoder {
    shared: Arc<Shared>,
    /// Absent when its table could not be read: decisions then wait for the cache.
    fast: Option<StaticEmbedder>,
    background: Mutex<Option<Filler>>,
    config: EncoderConfig,
    model_id: String,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Encoder {
    /// Waits for the filler's embedding in progress: a process that exits while ONNX Runtime
    /// still runs on another thread can crash in its exit handlers.
    fn drop(&mut self) {
        if let Some(Filler { tx, thread }) = self.background.lock().take() {
            self.shared.closing.store(true, Ordering::Relaxed);
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Encoder {
    /// Loads the runtime library, `pool_size` sessions (one intra-op thread each) and the tokenizer,
    /// with the default truncation and cache size.
    pub fn new(
        lib_path: impl Into<PathBuf>,
        model_path: impl Into<PathBuf>,
        tokenizer_path: impl Into<PathBuf>,
        pool_size: usize,
    ) -> Result<Self> {
        Self::with_config(EncoderConfig {
            lib_path: lib_path.into(),
            model_path: model_path.into(),
            tokenizer_path: tokenizer_path.into(),
            pool_size,
            intra_threads: 1,
            max_tokens: DEFAULT_MAX_TOKENS,
            cache_capacity: 4096,
        })
    }

    /// Loads an encoder from the standard files under the cache root.
    pub fn from_cache_root(cache_root: &Path, pool_size: usize) -> Result<Self> {
        Self::with_config(EncoderConfig {
            pool_size,
            ..EncoderConfig::from_cache_root(cache_root)
        })
    }

    /// Loads an encoder with every setting explicit.
    pub fn with_config(config: EncoderConfig) -> Result<Self> {
        if config.pool_size == 0 || config.intra_threads == 0 || config.max_tokens < 3 {
            return Err(Error::InvalidArgument(
                "encoder pool_size and intra_threads must be at least 1 and max_tokens at least 3"
                    .into(),
            ));
        }
        config.check_files()?;
        let env = ort_environment(&config.lib_path)?;
        let mut sessions = Vec::with_capacity(config.pool_size);
        for _ in 0..config.pool_size {
            let session = Session::builder(&env)
                .and_then(|b| {
                    b.with_intra_threads(config.intra_threads)
                        .map_err(Into::into)
                })
                .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
                // Spinning threads would steal the core from the gateway between requests.
                .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
                .and_then(|b| {
                    b.with_optimization_level(GraphOptimizationLevel::All)
                        .map_err(Into::into)
                })
                .and_then(|mut b| b.commit_from_file(&config.model_path))
                .map_err(|e| Error::Onnx(format!("{}: {e}", config.model_path.display())))?;
            sessions.push(session);
        }
        let mut tokenizer = Tokenizer::from_file(&config.tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", config.tokenizer_path.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let model_id = model_identity(&config.model_path, config.max_tokens)?;
        // The full encoder stays usable without the static table.
        let fast = StaticEmbedder::load(
            &config.model_path,
            &config.tokenizer_path,
            STATIC_MAX_TOKENS,
        )
        .ok();
        Ok(Self {
            shared: Arc::new(Shared {
                tokenizer,
                pool: SessionPool {
                    free: Mutex::new(sessions),
                    returned: Condvar::new(),
                },
                cache: Mutex::new(Lru::new(config.cache_capacity)),
                pending: Mutex::new(HashSet::new()),
                closing: AtomicBool::new(false),
            }),
            fast,
            background: Mutex::new(None),
            config,
            model_id,
        })
    }

    /// The settings this encoder runs with.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Names the model file and truncation, for keying on-disk embedding caches.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The embedding of `text`, from the in-memory cache when this prompt was seen recently.
    pub fn embed(&self, text: &str) -> Result<Arc<[f32]>> {
        self.shared.embed_cached(text_key(text), text)
    }

    /// The cached embedding of `text` if there is one; never runs the model.
    pub fn cached(&self, text: &str) -> Option<Arc<[f32]>> {
        self.shared.cache.lock().get(text_key(text))
    }

    /// An embedding for a routing decision without waiting for the transformer: the cached full
    /// embedding when there is one, else the static embedding (microseconds), while the full
    /// embedding is computed on a background thread (one, with a bounded queue) and cached for
    /// the prompt's next request. None when neither is there yet (no static table).
    pub fn embed_for_decision(&self, text: &str) -> Result<Option<(Arc<[f32]>, EmbeddingSource)>> {
        let key = text_key(text);
        if let Some(hit) = self.shared.cache.lock().get(key) {
            return Ok(Some((hit, EmbeddingSource::Full)));
        }
        if self.config.cache_capacity > 0 && self.shared.pending.lock().insert(key) {
            let queued = self
                .background_sender()
                .is_some_and(|tx| tx.try_send((key, text.to_owned())).is_ok());
            if !queued {
                self.shared.pending.lock().remove(&key);
            }
        }
        match &self.fast {
            Some(fast) => Ok(Some((fast.embed(text)?.into(), EmbeddingSource::Static))),
            None => Ok(None),
        }
    }

    /// Whether the static table loaded.
    pub fn has_static(&self) -> bool {
        self.fast.is_some()
    }

    /// The static embedding of `text` (see [`crate::static_embed`]); never runs the transformer.
    pub fn embed_static(&self, text: &str) -> Result<Arc<[f32]>> {
        match &self.fast {
            Some(fast) => Ok(fast.embed(text)?.into()),
            None => Err(Error::InvalidArgument(
                "the static embedding table could not be read from the encoder model".into(),
            )),
        }
    }

    /// Prompts queued for a background full embedding and not finished yet.
    pub fn pending_background(&self) -> usize {
        self.shared.pending.lock().len()
    }

    /// The background filler's queue, started on first use (one thread, joined when the encoder
    /// is dropped).
    fn background_sender(&self) -> Option<SyncSender<(u128, String)>> {
        let mut slot = self.background.lock();
        if slot.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(u128, String)>(BACKGROUND_QUEUE);
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("tandem-encoder-fill".into())
                .spawn(move || {
                    while let Ok((key, text)) = rx.recv() {
                        if shared.closing.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Err(e) = shared.embed_cached(key, &text) {
                            tracing::debug!(error = %e, "background embedding failed");
                        }
                        shared.pending.lock().remove(&key);
                    }
                });
            match spawned {
                Ok(thread) => *slot = Some(Filler { tx, thread }),
                Err(e) => tracing::warn!(error = %e, "cannot start the embedding filler"),
            }
        }
        slot.as_ref().map(|f| f.tx.clone())
    }

    /// Embeds a batch in one model run (padded to the longest), bypassing the cache.
    pub fn embed_uncached(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>> {
        self.shared.embed_uncached(texts)
    }

    /// Like [`Encoder::embed_uncached`], with the number of tokens read (special tokens
    /// included, truncation applied), for usage.
    pub fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<Arc<[f32]>>, u64)> {
        self.shared.embed_counted(texts)
    }

    /// Embeds rows of the tokenizer's ids (without special tokens, which are added here, as
    /// they are for text) in one run; a row is truncated like text. Ids outside the vocabulary
    /// are an [`Error::InvalidArgument`]. Returns the vectors and the tokens read.
    pub fn embed_token_ids(&self, rows: &[Vec<u32>]) -> Result<(Vec<Arc<[f32]>>, u64)> {
        let tokenizer = &self.shared.tokenizer;
        let vocab = tokenizer.get_vocab_size(true) as u32;
        let special = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {token} token")))
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let keep = self.config.max_tokens.saturating_sub(2);
        let mut framed = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if let Some(bad) = row.iter().find(|&&id| id >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "input[{i}]: token id {bad} is outside the vocabulary (size {vocab})"
                )));
            }
            let mut ids = Vec::with_capacity(row.len().min(keep) + 2);
            ids.push(cls);
            ids.extend(row.iter().take(keep));
            ids.push(sep);
            framed.push(ids);
        }
        let tokens = framed.iter().map(|r| r.len() as u64).sum();
        Ok((self.shared.run(&framed)?, tokens))
    }

    /// The tokenizer's ids of `text`, without special tokens (the form token-id input takes).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.shared
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

impl Shared {
    fn embed_cached(&self, key: u128, text: &str) -> Result<Arc<[f32]>> {
        if let Some(hit) = self.cache.lock().get(key) {
            return Ok(hit);
        }
        let mut out = self.embed_uncached(&[text])?;
        let embedding = out
            .pop()
            .ok_or_else(|| Error::Onnx("empty output".into()))?;
        self.cache.lock().put(key, embedding.clone());
        Ok(embedding)
    }

    fn embed_uncached(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>> {
        Ok(self.embed_counted(texts)?.0)
    }

    /// Embeds `texts` in one run and counts the tokens read (special tokens included).
    fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<Arc<[f32]>>, u64)> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let rows: Vec<Vec<u32>> = encodings
            .iter()
            .map(|e| {
                e.get_ids()
                    .iter()
                    .zip(e.get_attention_mask())
                    .filter(|&(_, &m)| m != 0)
                    .map(|(&id, _)| id)
                    .collect()
            })
            .collect();
        let tokens = rows.iter().map(|r| r.len() as u64).sum();
        Ok((self.run(&rows)?, tokens))
    }

    /// Runs the model on rows of token ids (special tokens in place), padded to the longest.
    fn run(&self, rows: &[Vec<u32>]) -> Result<Vec<Arc<[f32]>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let types = vec![0i64; batch * seq];
        for (b, row) in rows.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                ids[b * seq + t] = i64::from(id);
                mask[b * seq + t] = 1;
            }
        }
        let shape = [batch as i64, seq as i64];
        let onnx = |e: ort::Error| Error::Onnx(e.to_string());
        let input_ids = Tensor::from_array((shape, ids)).map_err(onnx)?;
        let attention_mask = Tensor::from_array((shape, mask.clone())).map_err(onnx)?;
        let token_type_ids = Tensor::from_array((shape, types)).map_err(onnx)?;
        let hidden: Vec<f32> = self.pool.with_session(|session| {
            let outputs = session
                .run(ort::inputs![
                    "input_ids" => input_ids,
                    "attention_mask" => attention_mask,
                    "token_type_ids" => token_type_ids,
                ])
                .map_err(onnx)?;
            let value = outputs
                .get("last_hidden_state")
                .ok_or_else(|| Error::Onnx("model has no last_hidden_state output".into()))?;
            let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(onnx)?;
            let dims: Vec<i64> = out_shape.iter().copied().collect();
            if dims != [batch as i64, seq as i64, EMBEDDING_DIM as i64] {
                return Err(Error::Onnx(format!("unexpected output shape {dims:?}")));
            }
            Ok(data.to_vec())
        })?;
        Ok((0..batch)
            .map(|b| mean_pool(&hidden, &mask, b, seq))
            .collect())
    }
}

/// Mean of the token vectors the mask keeps, then L2-normalized.
fn mean_pool(hidden: &[f32], mask: &[i64], b: usize, seq: usize) -> Arc<[f32]> {
    let mut sum = vec![0f32; EMBEDDING_DIM];
    let mut count = 0f32;
    for t in 0..seq {
        if mask[b * seq + t] == 0 {
            continue;
        }
        count += 1.0;
        let row = &hidden[(b * seq + t) * EMBEDDING_DIM..(b * seq + t + 1) * EMBEDDING_DIM];
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v;
        }
    }
    let count = count.max(1e-9);
    sum.iter_mut().for_each(|s| *s /= count);
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|s| *s /= norm);
    sum.into()
}

/// Short identity of a model file and truncation: size plus the head of the file's SHA-256.
fn model_identity(model_path: &Path, max_tokens: usize) -> Result<String> {
    let bytes = std::fs::read(model_path).map_err(|e| Error::io(model_path, e))?;
    let digest = Sha256::digest(&bytes);
    Ok(format!(
        "minilm-{}-t{max_tokens}",
        hex::encode(&digest[..6])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        let mut lru = Lru::new(2);
        lru.put(1, Arc::from(vec![1.0f32]));
        lru.put(2, Arc::from(vec![2.0f32]));
        assert!(lru.get(1).is_some());
        lru.put(3, Arc::from(vec![3.0f32]));
        assert!(lru.get(2).is_none());
        assert!(lru.get(1).is_some());
        assert!(lru.get(3).is_some());
    }

    #[test]
    fn cache_root_order() {
        let root = cache_root_from(|k| match k {
            "XDG_CACHE_HOME" => Some(PathBuf::from("/x")),
            "HOME" => Some(PathBuf::from("/h")),
            _ => None,
        });
        assert_eq!(root, PathBuf::from("/x/tandem"));
        let root = cache_root_from(|k| (k == "HOME").then(|| PathBuf::from("/h")));
        assert_eq!(root, PathBuf::from("/h/.cache/tandem"));
    }
}
