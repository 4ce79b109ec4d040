//! Forced text: the tokens that can spell on from where a forced text has got to, so an answer
//! begins with text cut from its prompt while the model still picks the tokens across the cut.

use crate::tokenizer::Tokenizer;

/// The vocabulary indexed by first byte, built on first use, and the masked-logits buffer.
#[derive(Debug, Default)]
pub(crate) struct Spelling {
    by_first_byte: Vec<Vec<u32>>,
    masked: Vec<f32>,
}

impl Spelling {
    /// `logits` with every token that does not spell on from `rest` set to minus infinity: a
    /// token is kept when its bytes begin with `rest` or are a start of `rest`. `None` when no
    /// token is kept or `rest` is empty.
    pub(crate) fn mask(&mut self, tok: &Tokenizer, rest: &[u8], logits: &[f32]) -> Option<&[f32]> {
        let first = *rest.first()?;
        if self.by_first_byte.is_empty() {
            self.by_first_byte = vec![Vec::new(); 256];
            for id in 0..tok.vocab_size() as u32 {
                if tok.is_control(id) {
                    continue;
                }
                if let Some(&b) = tok.token_bytes(id).first() {
                    self.by_first_byte[b as usize].push(id);
                }
            }
        }
        self.masked.clear();
        self.masked.resize(logits.len(), f32::NEG_INFINITY);
        let mut kept = false;
        for &id in &self.by_first_byte[first as usize] {
            let bytes = tok.token_bytes(id);
            let i = id as usize;
            if i < logits.len() && (bytes.starts_with(rest) || rest.starts_with(bytes)) {
                self.masked[i] = logits[i];
                kept = true;
            }
        }
        kept.then_some(self.masked.as_slice())
    }
}
