//! The local embeddings model: the router's MiniLM encoder (all-MiniLM-L6-v2, int8 ONNX) serving
//! `/v1/embeddings` as model `minilm`, 384 dimensions, mean-pooled and L2-normalized. Loaded on
//! first use from the artifact cache; batches run on the encoder's session pool off the async
//! workers.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_cloud_adapters::openai::{EmbeddingInput, EmbeddingsRequest};
use tandem_router_policy::encoder::{Encoder, EncoderConfig};
use tokio::sync::OnceCell;

use crate::error::Error;

/// The model id clients ask for.
pub const LOCAL_EMBEDDING_MODEL: &str = "minilm";

/// The vectors' length.
pub const LOCAL_EMBEDDING_DIM: usize = tandem_router_policy::embedding::EMBEDDING_DIM;

/// Tokens read per input: the length the model was trained on (longer inputs are truncated).
pub const LOCAL_EMBEDDING_MAX_TOKENS: usize = 256;

/// Inputs per model run: a batch of 64 is two runs, one on each session of the pool.
const RUN_BATCH: usize = 32;

/// The settings of the embeddings encoder under `cache_root`: two sessions of one thread each,
/// the model's own input length, and no cache (every answer is computed).
pub fn embedder_config(cache_root: &std::path::Path) -> EncoderConfig {
    EncoderConfig {
        pool_size: 2,
        intra_threads: 1,
        max_tokens: LOCAL_EMBEDDING_MAX_TOKENS,
        cache_capacity: 0,
        ..EncoderConfig::from_cache_root(cache_root)
    }
}

/// The local embeddings model, loaded on first use.
pub struct LocalEmbedder {
    cache_root: PathBuf,
    encoder: OnceCell<Arc<Encoder>>,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("cache_root", &self.cache_root)
            .field("loaded", &self.encoder.initialized())
            .finish()
    }
}

/// What the local model answered: one vector per input, and the tokens it read.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// The vectors, in input order.
    pub vectors: Vec<Arc<[f32]>>,
    /// Input tokens read, special tokens included.
    pub prompt_tokens: u64,
}

impl LocalEmbedder {
    /// An embedder reading its files under `cache_root` when first asked.
    pub fn new(cache_root: PathBuf) -> Self {
        Self {
            cache_root,
            encoder: OnceCell::new(),
        }
    }

    /// The encoder, loading it (off the async workers) on first use; missing files are a 503
    /// that says how to fetch them.
    async fn encoder(&self) -> Result<Arc<Encoder>, Error> {
        self.encoder
            .get_or_try_init(|| async {
                let config = embedder_config(&self.cache_root);
                tokio::task::spawn_blocking(move || Encoder::with_config(config))
                    .await
                    .map_err(|e| Error::Internal(format!("embedder load: {e}")))?
                    .map(Arc::new)
                    .map_err(|e| {
                        Error::NotReady(format!(
                            "the local embeddings model cannot load: {e} (run `tandem models \
                             fetch minilm-l6-v2-int8`)"
                        ))
                    })
            })
            .await
            .cloned()
    }

    /// Embeds the request's inputs: batches of [`RUN_BATCH`] run side by side on the pool.
    /// `dimensions` other than the model's own is a 400 naming it (MiniLM's vectors do not
    /// shorten).
    pub async fn embed(&self, request: &EmbeddingsRequest) -> Result<Embeddings, Error> {
        if let Some(d) = request.dimensions
            && d as usize != LOCAL_EMBEDDING_DIM
        {
            return Err(Error::InvalidRequest {
                message: format!(
                    "model `{LOCAL_EMBEDDING_MODEL}` has {LOCAL_EMBEDDING_DIM} dimensions and \
                     cannot shorten its vectors; 'dimensions' must be {LOCAL_EMBEDDING_DIM} or left out"
                ),
                param: Some("dimensions".into()),
                code: Some("invalid_value"),
            });
        }
        let encoder = self.encoder().await?;
        let runs: Vec<_> = match &request.input {
            EmbeddingInput::Texts(texts) => texts
                .chunks(RUN_BATCH)
                .map(|chunk| {
                    let (encoder, chunk) = (encoder.clone(), chunk.to_vec());
                    tokio::task::spawn_blocking(move || {
                        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
                        encoder.embed_counted(&texts)
                    })
                })
                .collect(),
            EmbeddingInput::Tokens(rows) => rows
                .chunks(RUN_BATCH)
                .map(|chunk| {
                    let (encoder, chunk) = (encoder.clone(), chunk.to_vec());
                    tokio::task::spawn_blocking(move || encoder.embed_token_ids(&chunk))
                })
                .collect(),
        };
        let mut out = Embeddings {
            vectors: Vec::with_capacity(request.input.len()),
            prompt_tokens: 0,
        };
        for (i, run) in runs.into_iter().enumerate() {
            let (vectors, tokens) = run
                .await
                .map_err(|e| Error::Internal(format!("embedding run: {e}")))?
                .map_err(|e| match e {
                    // A token id outside the vocabulary, numbered within its run.
                    tandem_router_policy::Error::InvalidArgument(message) => {
                        Error::InvalidRequest {
                            message: renumber(&message, i * RUN_BATCH),
                            param: Some("input".into()),
                            code: Some("invalid_value"),
                        }
                    }
                    other => Error::Internal(format!("embedding: {other}")),
                })?;
            out.vectors.extend(vectors);
            out.prompt_tokens += tokens;
        }
        Ok(out)
    }
}

/// `input[i]: ...` of a run starting at `offset` as the client's index.
fn renumber(message: &str, offset: usize) -> String {
    let index = message
        .strip_prefix("input[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)));
    match index {
        Some((i, rest)) => format!("input[{}]{rest}", i + offset),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn a_bad_token_is_named_by_its_place_in_the_request() {
        assert_eq!(renumber("input[1]: bad", 32), "input[33]: bad");
        assert_eq!(renumber("other", 32), "other");
    }
}
