//! What every embedding producer and consumer agrees on: the embedding's width and where an
//! embedding came from. A leaf module, so the encoder, the static embedder and the features do not
//! import one another for these.

use serde::{Deserialize, Serialize};

/// Width of a MiniLM-L6-v2 embedding.
pub const EMBEDDING_DIM: usize = 384;

/// Where a prompt embedding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingSource {
    /// MiniLM's sentence embedding (the encoder ran, now or earlier).
    #[default]
    Full,
    /// Mean of MiniLM's static token vectors ([`crate::static_embed`]), computed in microseconds
    /// while the full embedding is not cached yet.
    Static,
}
