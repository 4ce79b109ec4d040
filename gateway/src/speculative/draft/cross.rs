//! Drafting across tokenizers: the draft model writes text, the text is re-tokenized with the
//! target's tokenizer, and the draft model is re-synced to the target's committed text each round.
//!
//! Each round the committed target tokens after the prompt are decoded to text and re-encoded
//! with the draft model's tokenizer; the draft session keeps its common prefix with that and
//! rolls back the rest (the first mismatch). The drafted text is then encoded with the target's
//! tokenizer, and its last token dropped (it may be a fragment the target would merge with what
//! follows). Whatever the drafter proposes, the target verifies token ids, so greedy output stays
//! the target's own; tokenizer differences cost acceptance, never correctness.

use std::sync::Arc;

use tandem_local_model::{Engine, Tokenizer};

use super::engine::MirroredSession;
use super::{BoxFuture, Drafter};
use crate::error::Result;

/// A drafter whose model has its own tokenizer.
#[derive(Debug)]
pub struct CrossTokenizerDrafter {
    session: MirroredSession,
    draft_tokenizer: Arc<Tokenizer>,
    target_tokenizer: Arc<Tokenizer>,
    /// The request's prompt rendered for the draft model (its own chat template).
    draft_prompt: Vec<u32>,
    /// How many leading target tokens are the prompt (the rest is generated output).
    target_prompt_len: usize,
}

impl CrossTokenizerDrafter {
    /// A drafter for one request: `draft_prompt` is the prompt in the draft model's tokens,
    /// `target_prompt_len` the length of the same prompt in the target's tokens.
    pub fn new(
        engine: Engine,
        target_tokenizer: Arc<Tokenizer>,
        draft_prompt: Vec<u32>,
        target_prompt_len: usize,
    ) -> Self {
        let draft_tokenizer = engine.tokenizer().clone();
        Self {
            session: MirroredSession::new(engine),
            draft_tokenizer,
            target_tokenizer,
            draft_prompt,
            target_prompt_len,
        }
    }

    /// The draft model's engine.
    pub fn engine(&self) -> &Engine {
        self.session.engine()
    }

    async fn propose(&mut self, context: &[u32], k: usize) -> Result<Vec<u32>> {
        if k == 0 || context.len() < self.target_prompt_len {
            return Ok(Vec::new());
        }
        let committed = self
            .target_tokenizer
            .decode_bytes(&context[self.target_prompt_len..]);
        let valid = valid_utf8_prefix(&committed);
        let pending = &committed[valid.len()..];
        let own_output = self.draft_tokenizer.encode(valid, false);
        let mut draft_context = self.draft_prompt.clone();
        draft_context.extend_from_slice(&own_output);
        self.session.sync(&draft_context).await?;
        // Tokens are shorter in the smaller vocabulary; draft a little more text than needed.
        let drafted = self.session.draft_greedy(k + k / 2 + 2).await?;
        let base = self.draft_tokenizer.decode_bytes(&own_output);
        let mut all = own_output.clone();
        all.extend_from_slice(&drafted);
        let full = self.draft_tokenizer.decode_bytes(&all);
        let Some(new_bytes) = full.strip_prefix(base.as_slice()) else {
            return Ok(Vec::new());
        };
        // Bytes of a character the target has half committed must come first.
        let Some(new_bytes) = new_bytes.strip_prefix(pending) else {
            return Ok(Vec::new());
        };
        let text = valid_utf8_prefix(new_bytes);
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut target_ids = self.target_tokenizer.encode(text, false);
        target_ids.pop();
        target_ids.truncate(k);
        Ok(target_ids)
    }
}

/// The longest prefix of `bytes` that is valid UTF-8.
fn valid_utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

impl Drafter for CrossTokenizerDrafter {
    fn name(&self) -> &'static str {
        "cross-tokenizer"
    }

    fn draft<'a>(&'a mut self, context: &'a [u32], k: usize) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(self.propose(context, k))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.session.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_prefix_stops_before_a_split_character() {
        let bytes = "né".as_bytes();
        assert_eq!(valid_utf8_prefix(&bytes[..2]), "n");
        assert_eq!(valid_utf8_prefix(bytes), "né");
    }
}
