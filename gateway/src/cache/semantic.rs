//! The semantic cache's in-process index: the prompt embeddings of cached answers, searched by
//! cosine similarity among the entries of the same conversation context. Bounded: past its
//! capacity, expired entries go first, then the oldest. Rebuilt from the store at start.

use std::sync::Arc;

use parking_lot::RwLock;

use super::now_ms;

/// One cached prompt.
#[derive(Debug, Clone)]
struct Item {
    /// Hash of everything in the request but the last user turn (model, system prompt,
    /// history, tools, sampling): only prompts asked in the same context can stand in.
    context: [u8; 32],
    /// The prompt's embedding, unit length.
    vector: Arc<[f32]>,
    /// The cache key of its answer.
    key: String,
    expires_ms: u64,
}

/// The nearest-prompt index.
#[derive(Debug)]
pub struct Index {
    items: RwLock<Vec<Item>>,
    capacity: usize,
}

/// `v` scaled to unit length (None for a zero or non-finite vector).
pub fn unit(v: &[f32]) -> Option<Arc<[f32]>> {
    let norm = tandem_kernels::ops::dot_f32(v, v).sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

impl Index {
    /// An empty index of at most `capacity` prompts.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: RwLock::new(Vec::new()),
            capacity: capacity.max(1),
        }
    }

    /// Adds (or replaces) the prompt of `key`.
    pub fn insert(&self, context: [u8; 32], vector: Arc<[f32]>, key: String, expires_ms: u64) {
        let mut items = self.items.write();
        items.retain(|i| i.key != key);
        if items.len() >= self.capacity {
            let now = now_ms();
            items.retain(|i| i.expires_ms > now);
        }
        if items.len() >= self.capacity {
            let over = items.len() + 1 - self.capacity;
            items.drain(..over);
        }
        items.push(Item {
            context,
            vector,
            key,
            expires_ms,
        });
    }

    /// The key of the nearest live prompt in `context` with similarity at least `min`, and that
    /// similarity. `vector` must be unit length.
    pub fn nearest(&self, context: &[u8; 32], vector: &[f32], min: f32) -> Option<(String, f32)> {
        let now = now_ms();
        let items = self.items.read();
        items
            .iter()
            .filter(|i| i.context == *context && i.expires_ms > now)
            .filter(|i| i.vector.len() == vector.len())
            .map(|i| (i, tandem_kernels::ops::dot_f32(&i.vector, vector)))
            .filter(|(_, s)| *s >= min)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, s)| (i.key.clone(), s))
    }

    /// Prompts held.
    pub fn len(&self) -> usize {
        self.items.read().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[f32]) -> Arc<[f32]> {
        unit(x).unwrap()
    }

    #[test]
    fn the_nearest_prompt_in_the_same_context_above_the_threshold_answers() {
        let index = Index::new(10);
        let later = now_ms() + 60_000;
        index.insert([1; 32], v(&[1.0, 0.0]), "a".into(), later);
        index.insert([1; 32], v(&[0.0, 1.0]), "b".into(), later);
        index.insert([2; 32], v(&[1.0, 0.1]), "other-context".into(), later);
        let (key, sim) = index.nearest(&[1; 32], &v(&[1.0, 0.1]), 0.9).unwrap();
        assert_eq!(key, "a");
        assert!(sim > 0.99);
        assert!(index.nearest(&[1; 32], &v(&[1.0, 1.0]), 0.9).is_none());
        assert!(index.nearest(&[3; 32], &v(&[1.0, 0.0]), 0.5).is_none());
    }

    #[test]
    fn the_index_keeps_its_capacity_dropping_the_oldest() {
        let index = Index::new(2);
        let later = now_ms() + 60_000;
        for key in ["a", "b", "c"] {
            index.insert([0; 32], v(&[1.0]), key.into(), later);
        }
        assert_eq!(index.len(), 2);
        assert_ne!(index.nearest(&[0; 32], &v(&[1.0]), 0.5).unwrap().0, "a");
    }
}
