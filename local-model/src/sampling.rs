//! Sampling parameters, the per-request sampler (temperature, top-k, top-p, min-p, seeded RNG),
//! log-probabilities with entropy, and stop-string handling that never leaks a stop string.

use serde::{Deserialize, Serialize};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the best one's (0 = off).
    pub min_p: f32,
    /// RNG seed; the same seed and prompt give the same output.
    pub seed: Option<u64>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings: generation ends before any of them and never emits it.
    pub stop: Vec<String>,
    /// Return this many alternatives' log-probabilities with each token (OpenAI `top_logprobs`);
    /// `Some(0)` returns the chosen token's log-probability and the entropy only.
    pub logprobs: Option<usize>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// More tokens that end generation as end-of-sequence does (a FIM template's file separator).
    pub stop_token_ids: Vec<u32>,
    /// Text the answer must begin with, which is not reported: the end of a prompt's text
    /// handed back to the model, so it picks its own tokens across where the prompt was cut
    /// (a word cut by the cursor tokenizes unlike the word it becomes).
    pub forced_prefix: String,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            forced_prefix: String::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding for `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Whether this picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// One alternative token with its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// Token text (lossy UTF-8).
    pub token: String,
    /// Natural-log probability under the model (temperature 1).
    pub logprob: f32,
    /// The token's raw bytes.
    pub bytes: Vec<u8>,
}

/// Log-probability information for a generated token, in the OpenAI shape plus confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Its natural-log probability under the model (temperature 1).
    pub logprob: f32,
    /// Its raw bytes.
    pub bytes: Vec<u8>,
    /// Entropy (nats) of the model's next-token distribution at this position.
    pub entropy: f32,
    /// The most likely alternatives, best first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// A small, fast, seedable RNG (xoshiro256**), so runs reproduce across platforms.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the generator (SplitMix64 expansion, as xoshiro's authors advise).
    pub fn new(seed: u64) -> Self {
        let mut z = tandem_kernels::SplitMix64::new(seed);
        Self {
            s: [z.next_u64(), z.next_u64(), z.next_u64(), z.next_u64()],
        }
    }

    /// A seed from the clock and a counter, for requests without one.
    pub fn fresh_seed() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ COUNTER
            .fetch_add(0x9E37_79B9, Ordering::Relaxed)
            .rotate_left(17)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in xs.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best
}

/// Log-softmax summary of a logits row: log of the normalizer and the maximum.
#[derive(Debug, Clone, Copy)]
pub struct LogNorm {
    max: f32,
    log_z: f32,
}

impl LogNorm {
    /// Computes the normalizer of `logits` at temperature 1.
    pub fn of(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        Self {
            max,
            log_z: z.ln() as f32,
        }
    }

    /// Log-probability of a logit.
    pub fn logprob(&self, logit: f32) -> f32 {
        logit - self.max - self.log_z
    }
}

/// Entropy (nats) of softmax(logits).
pub fn entropy(logits: &[f32], norm: &LogNorm) -> f32 {
    let mut h = 0f64;
    for &l in logits {
        let lp = norm.logprob(l) as f64;
        h -= lp.exp() * lp;
    }
    h as f32
}

/// The k largest (id, logit) pairs, best first (ties by lower id).
pub fn top_k_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|i| (i, logits[i as usize])).collect()
}

/// A token choice with its probability under the distribution it was drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// The token.
    pub id: u32,
    /// Its probability under the sampling distribution (after temperature and filters).
    pub prob: f32,
}

/// Candidates examined before falling back to a full sort for top-p.
const TOP_P_CANDIDATES: usize = 1024;

/// Per-request sampler: filters and RNG state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for these parameters (seeded from `params.seed` or a fresh seed).
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            rng: Rng::new(params.seed.unwrap_or_else(Rng::fresh_seed)),
            params: params.clone(),
            cand: Vec::new(),
        }
    }

    /// The sampling distribution after temperature and filters, as (id, prob) best first.
    /// Greedy gives the argmax with probability 1.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<(u32, f32)> {
        self.filtered(logits);
        self.cand.clone()
    }

    fn filtered(&mut self, logits: &[f32]) {
        let p = &self.params;
        self.cand.clear();
        if p.is_greedy() {
            self.cand.push((argmax(logits) as u32, 1.0));
            return;
        }
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let limit = if p.top_k > 0 { p.top_k } else { usize::MAX };
        // Probabilities of all tokens, normalized over the full vocabulary first.
        let mut z = 0f64;
        for &l in logits {
            z += (((l - max) * inv_t) as f64).exp();
        }
        let keep = limit.min(if p.top_p < 1.0 {
            TOP_P_CANDIDATES
        } else {
            usize::MAX
        });
        if keep >= logits.len() {
            self.cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, ((((l - max) * inv_t) as f64).exp() / z) as f32)),
            );
            self.cand
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        } else {
            for (id, l) in top_k_logits(logits, keep) {
                self.cand
                    .push((id, ((((l - max) * inv_t) as f64).exp() / z) as f32));
            }
            // Top-p beyond the candidates' mass: redo over everything.
            let mass: f32 = self.cand.iter().map(|c| c.1).sum();
            if p.top_k == 0 && mass < p.top_p {
                self.cand.clear();
                self.cand.extend(
                    logits
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| (i as u32, ((((l - max) * inv_t) as f64).exp() / z) as f32)),
                );
                self.cand
                    .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
        }
        if p.min_p > 0.0
            && let Some(&(_, best)) = self.cand.first()
        {
            let floor = best * p.min_p;
            self.cand.retain(|c| c.1 >= floor);
        }
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            let mut cut = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.1;
                if acc >= p.top_p {
                    cut = i + 1;
                    break;
                }
            }
            self.cand.truncate(cut.max(1));
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        if total > 0.0 {
            for c in &mut self.cand {
                c.1 /= total;
            }
        }
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> Choice {
        if self.params.is_greedy() {
            return Choice {
                id: argmax(logits) as u32,
                prob: 1.0,
            };
        }
        self.filtered(logits);
        let u = self.rng.next_f64() as f32;
        let mut acc = 0f32;
        for &(id, prob) in &self.cand {
            acc += prob;
            if u < acc {
                return Choice { id, prob };
            }
        }
        match self.cand.last() {
            Some(&(id, prob)) => Choice { id, prob },
            None => Choice {
                id: argmax(logits) as u32,
                prob: 1.0,
            },
        }
    }
}

/// Turns generated bytes into stop-safe text deltas: incomplete UTF-8 and any tail that could
/// begin a stop string are held back until they resolve.
#[derive(Debug, Clone, Default)]
pub struct StopBuffer {
    stops: Vec<String>,
    bytes: Vec<u8>,
    pending: String,
}

/// What pushing a token's bytes produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStep {
    /// Text safe to emit now.
    pub text: String,
    /// A stop string was hit; generation ends and the text from it on is dropped.
    pub stopped: bool,
}

impl StopBuffer {
    /// A buffer for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Adds a token's bytes.
    pub fn push(&mut self, token_bytes: &[u8]) -> StopStep {
        self.bytes.extend_from_slice(token_bytes);
        // Move the longest valid UTF-8 prefix into `pending`.
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            Err(e) => {
                if e.error_len().is_some() {
                    // Invalid (not merely incomplete) bytes: replace them and go on.
                    let s = String::from_utf8_lossy(&self.bytes).into_owned();
                    self.bytes.clear();
                    self.pending.push_str(&s);
                    return self.scan();
                }
                e.valid_up_to()
            }
        };
        if let Ok(s) = std::str::from_utf8(&self.bytes[..valid]) {
            self.pending.push_str(s);
        }
        self.bytes.drain(..valid);
        self.scan()
    }

    fn scan(&mut self) -> StopStep {
        let mut first: Option<usize> = None;
        for s in &self.stops {
            if let Some(p) = self.pending.find(s.as_str()) {
                first = Some(first.map_or(p, |f: usize| f.min(p)));
            }
        }
        if let Some(p) = first {
            let text = self.pending[..p].to_owned();
            self.pending.clear();
            self.bytes.clear();
            return StopStep {
                text,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(self.pending.len());
            for l in (1..=max).rev() {
                let start = self.pending.len() - l;
                if self.pending.is_char_boundary(start) && s.starts_with(&self.pending[start..]) {
                    hold = hold.max(l);
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        StopStep {
            text,
            stopped: false,
        }
    }

    /// Everything still held (at the end of generation without a stop).
    pub fn flush(&mut self) -> String {
        let mut out = std::mem::take(&mut self.pending);
        if !self.bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.bytes));
            self.bytes.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_tokens_is_never_emitted() {
        let mut b = StopBuffer::new(&["END".to_string()]);
        let mut out = String::new();
        for t in ["Hello E", "N", "D tail"] {
            let s = b.push(t.as_bytes());
            out.push_str(&s.text);
            if s.stopped {
                break;
            }
        }
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn held_prefix_is_released_when_it_diverges() {
        let mut b = StopBuffer::new(&["END".to_string()]);
        assert_eq!(b.push(b"abc E").text, "abc ");
        assert_eq!(b.push(b"Nx").text, "ENx");
        assert_eq!(b.flush(), "");
    }

    #[test]
    fn split_utf8_is_held_until_complete() {
        let mut b = StopBuffer::new(&[]);
        let e = "é".as_bytes();
        assert_eq!(b.push(&e[..1]).text, "");
        assert_eq!(b.push(&e[1..]).text, "é");
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 0.9,
            top_p: 0.9,
            seed: Some(7),
            ..SamplingParams::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(&p);
            (0..20).map(|_| s.sample(&logits).id).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(&p);
            (0..20).map(|_| s.sample(&logits).id).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn top_k_one_is_argmax_and_min_p_filters() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let mut s = Sampler::new(&SamplingParams {
            top_k: 1,
            ..SamplingParams::default()
        });
        assert_eq!(s.sample(&logits).id, 1);
        let mut s = Sampler::new(&SamplingParams {
            min_p: 0.5,
            ..SamplingParams::default()
        });
        let d = s.distribution(&logits);
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
