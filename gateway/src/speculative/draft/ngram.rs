//! Prompt lookup: propose the tokens that followed the most recent earlier occurrence of the
//! context's last few tokens. Needs no model; strong when the answer copies from the prompt
//! (code edits, retrieval-grounded answers).

use super::{BoxFuture, Drafter};
use crate::error::Result;

/// An n-gram prompt-lookup drafter.
#[derive(Debug, Clone)]
pub struct NgramDrafter {
    min_ngram: usize,
    max_ngram: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        Self::new(1, 4)
    }
}

impl NgramDrafter {
    /// A drafter matching suffixes of `min_ngram..=max_ngram` tokens, longest first.
    pub fn new(min_ngram: usize, max_ngram: usize) -> Self {
        let min_ngram = min_ngram.max(1);
        Self {
            min_ngram,
            max_ngram: max_ngram.max(min_ngram),
        }
    }

    /// The proposal for `context`: up to `k` tokens, or none when no suffix recurs.
    pub fn lookup(&self, context: &[u32], k: usize) -> Vec<u32> {
        if k == 0 {
            return Vec::new();
        }
        for n in (self.min_ngram..=self.max_ngram).rev() {
            if context.len() <= n {
                continue;
            }
            let suffix = &context[context.len() - n..];
            // Most recent earlier occurrence: scan start positions from the right.
            for start in (0..context.len() - n).rev() {
                if &context[start..start + n] == suffix {
                    let from = start + n;
                    let to = (from + k).min(context.len());
                    return context[from..to].to_vec();
                }
            }
        }
        Vec::new()
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn draft<'a>(&'a mut self, context: &'a [u32], k: usize) -> BoxFuture<'a, Result<Vec<u32>>> {
        let out = self.lookup(context, k);
        Box::pin(async move { Ok(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match() {
        let d = NgramDrafter::new(1, 3);
        // "a b c d ... a b" -> "c d"
        assert_eq!(d.lookup(&[1, 2, 3, 4, 9, 1, 2], 2), vec![3, 4]);
        // The longest suffix wins over a more recent short match.
        assert_eq!(d.lookup(&[5, 6, 7, 8, 6, 9, 5, 6], 2), vec![7, 8]);
        // The most recent occurrence of the same suffix wins.
        assert_eq!(d.lookup(&[1, 2, 1, 3, 1], 1), vec![3]);
        // Proposals stop at the end of the context.
        assert_eq!(d.lookup(&[1, 2, 1], 5), vec![2, 1]);
    }

    #[test]
    fn nothing_to_propose_without_a_repeat() {
        let d = NgramDrafter::default();
        assert!(d.lookup(&[1, 2, 3], 4).is_empty());
        assert!(d.lookup(&[], 4).is_empty());
        assert!(d.lookup(&[1, 1], 0).is_empty());
    }
}
