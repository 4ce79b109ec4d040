//! Drafters for speculative decoding: the local model itself when it shares the target's
//! vocabulary ([`EngineDrafter`]), an n-gram prompt-lookup drafter that needs no model
//! ([`NgramDrafter`]), and a drafter whose model has a different tokenizer
//! ([`CrossTokenizerDrafter`]).
//!
//! Every drafter speaks the target's token ids. The orchestrator calls [`Drafter::draft`] with the
//! whole committed sequence (prompt plus accepted output) each round; a drafter re-syncs its own
//! state to that sequence (rolling back what was rejected) before proposing. All drafters here
//! draft greedily, so their proposal is a point mass on each drafted token, which keeps sampled
//! acceptance exact (`tandem_kernels::spec::SparseDist::point`).
//!
//! The model drafters drive a local [`tandem_local_model::Engine`]'s drafting sessions through its public API; the
//! target's text side for the cross-tokenizer path is [`tandem_local_model::TargetTokenizer`].

mod cross;
mod engine;
mod ngram;

use std::future::Future;
use std::pin::Pin;

pub use cross::CrossTokenizerDrafter;
pub use engine::EngineDrafter;
pub use ngram::NgramDrafter;

use crate::error::{Error, Result};

/// A boxed, sendable future (drafters are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Proposes draft tokens in the target's vocabulary.
pub trait Drafter: Send {
    /// A short name for reports and metrics (`engine`, `ngram`, `cross-tokenizer`).
    fn name(&self) -> &'static str;

    /// Proposes up to `k` tokens continuing `context` (the committed sequence, target ids).
    /// Fewer (or none) may come back when the drafter has nothing useful to offer.
    fn draft<'a>(&'a mut self, context: &'a [u32], k: usize) -> BoxFuture<'a, Result<Vec<u32>>>;

    /// Releases any per-request state (engine sessions). Called once at the end of a request.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// An engine failure while drafting, as the gateway reports it.
pub(crate) fn engine_error(e: tandem_local_model::Error) -> Error {
    Error::LocalModel(e.to_string())
}

/// Length of the longest common prefix of two token sequences.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_leading_matches() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
