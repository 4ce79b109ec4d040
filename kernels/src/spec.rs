//! Speculative acceptance arithmetic: greedy prefix match and rejection sampling with the residual.
//!
//! A round of speculative decoding proposes `k` draft tokens after a prefix. The target scores the
//! prefix plus the draft in one pass and returns, for each of the `k + 1` positions (one per draft
//! token, plus the "bonus" position after the whole draft), either its argmax (greedy) or its
//! next-token distribution (sampling). These functions decide how many draft tokens survive and
//! which token the target contributes after them.
//!
//! # Greedy
//! [`accept_greedy`] keeps the longest prefix where each draft token equals the target's argmax,
//! then appends the target's argmax at the first mismatch (or the bonus token when all match). The
//! output is exactly the target's own greedy continuation.
//!
//! # Sampling
//! [`accept_sampled`] is the rejection sampler of speculative sampling: draft token `x` at a
//! position is kept with probability `min(1, p(x) / q(x))`, where `p` is the target's and `q` the
//! drafter's distribution there; at the first rejection a token is drawn from the residual
//! `max(0, p − q)` renormalized; when every draft token is kept, the bonus token is drawn from `p`
//! at the last position. Each emitted token then follows `p` exactly, whatever `q` is, provided
//! `q` is the distribution the draft token was really drawn from (a drafter that drafts greedily
//! passes [`SparseDist::point`]).
//!
//! # When this is lossless given a top-k response
//! A remote target returns only its `returned_k` most likely tokens per position, as log
//! probabilities of its raw (temperature 1) distribution. [`target_dist`] turns them into the
//! distribution the target would sample from, and says whether that is exact:
//! - **exact** when the request's sampling is top-k with `top_k ≤ returned_k` (any temperature,
//!   with or without top-p on top): the target's sampling distribution is supported on its `top_k`
//!   best tokens, all of which were returned, and temperature and top-p act on those alone;
//! - **exact** when the request uses top-p alone at temperature 1 and the returned tokens already
//!   hold at least `top_p` of the probability mass (the nucleus is inside the returned set);
//! - **exact** at temperature 0 (greedy): only the argmax matters;
//! - **otherwise approximate**: the tail beyond the returned tokens is unknown, and the
//!   distribution used is the returned top-k renormalized (the target's distribution truncated to
//!   `returned_k`). Callers that must be lossless treat [`Exactness::Truncated`] as a reason to
//!   fall back to plain target sampling; the speculative orchestrator does so by default.

use crate::{Error, Result};

/// Outcome of one round's acceptance: how many draft tokens were kept, then the target's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    /// Number of leading draft tokens accepted (`0..=k`).
    pub accepted: usize,
    /// The token the target contributes after the accepted ones: its correction at the first
    /// rejected position, or the bonus token when all `k` draft tokens were accepted.
    pub next_token: u32,
}

impl Acceptance {
    /// Whether every draft token was accepted (the next token is the bonus token).
    pub fn all_accepted(&self, draft_len: usize) -> bool {
        self.accepted == draft_len
    }
}

/// Greedy acceptance: keep the longest prefix of `draft` equal to the target's argmax tokens.
///
/// `target_argmax[i]` is the target's most likely token after the prefix plus `draft[..i]`; it
/// must hold `draft.len() + 1` entries (the last is the bonus position).
pub fn accept_greedy(draft: &[u32], target_argmax: &[u32]) -> Result<Acceptance> {
    if target_argmax.len() != draft.len() + 1 {
        return Err(Error::InvalidArgument(format!(
            "greedy acceptance needs draft.len() + 1 = {} target tokens, got {}",
            draft.len() + 1,
            target_argmax.len()
        )));
    }
    let accepted = draft
        .iter()
        .zip(target_argmax)
        .take_while(|(d, t)| d == t)
        .count();
    Ok(Acceptance {
        accepted,
        next_token: target_argmax[accepted],
    })
}

/// A probability distribution over a few token ids (the rest have probability zero).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseDist {
    /// Token ids, each at most once.
    pub ids: Vec<u32>,
    /// Probabilities, parallel to `ids`, non-negative and summing to 1.
    pub probs: Vec<f32>,
}

impl SparseDist {
    /// All mass on one token: the proposal of a drafter that drafts deterministically.
    pub fn point(token: u32) -> Self {
        Self {
            ids: vec![token],
            probs: vec![1.0],
        }
    }

    /// A distribution from non-negative weights, normalized; errors when they sum to zero.
    pub fn from_weights(ids: Vec<u32>, weights: Vec<f32>) -> Result<Self> {
        if ids.len() != weights.len() {
            return Err(Error::InvalidArgument(format!(
                "distribution has {} ids but {} weights",
                ids.len(),
                weights.len()
            )));
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::InvalidArgument(
                "distribution weights must be finite and non-negative".into(),
            ));
        }
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        if total <= 0.0 {
            return Err(Error::InvalidArgument(
                "distribution weights sum to zero".into(),
            ));
        }
        let probs = weights
            .iter()
            .map(|w| (f64::from(*w) / total) as f32)
            .collect();
        Ok(Self { ids, probs })
    }

    /// Probability of `token` (zero when absent).
    pub fn prob(&self, token: u32) -> f32 {
        self.ids
            .iter()
            .position(|&id| id == token)
            .map_or(0.0, |i| self.probs[i])
    }

    /// The most likely token, or `None` for an empty distribution.
    pub fn argmax(&self) -> Option<u32> {
        let mut best: Option<(u32, f32)> = None;
        for (&id, &p) in self.ids.iter().zip(&self.probs) {
            if best.is_none_or(|(_, bp)| p > bp) {
                best = Some((id, p));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Draws a token with the uniform number `u` in `[0, 1)` (inverse CDF).
    pub fn sample(&self, u: f64) -> Option<u32> {
        let total: f64 = self.probs.iter().map(|p| f64::from(*p)).sum();
        let mut target = u * total;
        for (&id, &p) in self.ids.iter().zip(&self.probs) {
            let p = f64::from(p);
            if target < p {
                return Some(id);
            }
            target -= p;
        }
        // Rounding left a sliver past the end: take the last token with mass.
        self.ids
            .iter()
            .zip(&self.probs)
            .rev()
            .find(|(_, p)| **p > 0.0)
            .map(|(id, _)| *id)
    }
}

/// Sampling acceptance: the rejection sampler with residual resampling.
///
/// - `draft[i]` was drawn from `draft_dists[i]` (`q` at position `i`);
/// - `target_dists` holds `draft.len() + 1` target distributions (`p`), the last for the bonus;
/// - `uniform` returns independent uniform numbers in `[0, 1)`.
pub fn accept_sampled(
    draft: &[u32],
    draft_dists: &[SparseDist],
    target_dists: &[SparseDist],
    uniform: &mut dyn FnMut() -> f64,
) -> Result<Acceptance> {
    if draft_dists.len() != draft.len() || target_dists.len() != draft.len() + 1 {
        return Err(Error::InvalidArgument(format!(
            "sampled acceptance needs {} draft and {} target distributions, got {} and {}",
            draft.len(),
            draft.len() + 1,
            draft_dists.len(),
            target_dists.len()
        )));
    }
    for (i, (&token, (q, p))) in draft
        .iter()
        .zip(draft_dists.iter().zip(target_dists))
        .enumerate()
    {
        let q_x = f64::from(q.prob(token));
        if q_x <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "draft token {token} at position {i} has zero probability under its own proposal"
            )));
        }
        let p_x = f64::from(p.prob(token));
        if uniform() < (p_x / q_x).min(1.0) {
            continue;
        }
        let next_token = sample_residual(p, q, uniform())?;
        return Ok(Acceptance {
            accepted: i,
            next_token,
        });
    }
    let bonus = &target_dists[draft.len()];
    let next_token = bonus.sample(uniform()).ok_or_else(|| {
        Error::InvalidArgument("target distribution at the bonus position is empty".into())
    })?;
    Ok(Acceptance {
        accepted: draft.len(),
        next_token,
    })
}

/// The residual `max(0, p − q)`, normalized: what a rejected position samples from.
pub fn residual(p: &SparseDist, q: &SparseDist) -> Option<SparseDist> {
    let weights: Vec<f32> = p
        .ids
        .iter()
        .zip(&p.probs)
        .map(|(&id, &pp)| (pp - q.prob(id)).max(0.0))
        .collect();
    SparseDist::from_weights(p.ids.clone(), weights).ok()
}

fn sample_residual(p: &SparseDist, q: &SparseDist, u: f64) -> Result<u32> {
    // p == q leaves no residual mass, but then rejection had probability zero; rounding can
    // still land here, and p itself is the right fallback.
    let dist = residual(p, q).unwrap_or_else(|| p.clone());
    dist.sample(u)
        .ok_or_else(|| Error::InvalidArgument("target distribution is empty".into()))
}

/// How faithfully a distribution built from a top-k response matches the target's sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exactness {
    /// The distribution is exactly the target's sampling distribution.
    Exact,
    /// The target's support may extend past the returned tokens; the distribution is truncated.
    Truncated,
}

/// The target's sampling settings for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetSampling {
    /// Temperature; `0` means greedy.
    pub temperature: f32,
    /// Top-k cut-off, if any.
    pub top_k: Option<u32>,
    /// Top-p (nucleus) cut-off, if any (`1.0` is none).
    pub top_p: Option<f32>,
}

impl TargetSampling {
    /// Greedy decoding.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };

    /// Whether these settings mean greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }

    /// Whether a top-k response of `returned_k` tokens is always enough to sample exactly.
    pub fn exact_with(&self, returned_k: usize) -> bool {
        self.is_greedy() || self.top_k.is_some_and(|k| k as usize <= returned_k)
    }
}

/// Builds the target's sampling distribution at one position from its top log probabilities.
///
/// `top` holds `(token, raw logprob)` pairs, most likely first or in any order; `returned_k` is
/// how many the target was asked for (fewer may come back when the vocabulary is small). See the
/// module docs for when the result is [`Exactness::Exact`].
pub fn target_dist(
    top: &[(u32, f32)],
    params: &TargetSampling,
    returned_k: usize,
) -> Result<(SparseDist, Exactness)> {
    if top.is_empty() {
        return Err(Error::InvalidArgument(
            "target returned no log probabilities".into(),
        ));
    }
    if params.top_k == Some(0) && !params.is_greedy() {
        return Err(Error::InvalidArgument("top_k must be at least 1".into()));
    }
    let mut sorted: Vec<(u32, f32)> = top.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    if params.is_greedy() {
        return Ok((SparseDist::point(sorted[0].0), Exactness::Exact));
    }
    let raw_mass: f64 = sorted.iter().map(|(_, lp)| f64::from(*lp).exp()).sum();
    let mut exact = false;
    if let Some(k) = params.top_k {
        sorted.truncate(k as usize);
        exact = k as usize <= returned_k;
    }
    // Tempered weights; the max is subtracted for stability.
    let inv_t = 1.0 / f64::from(params.temperature);
    let max_lp = f64::from(sorted[0].1);
    let mut weights: Vec<f64> = sorted
        .iter()
        .map(|(_, lp)| ((f64::from(*lp) - max_lp) * inv_t).exp())
        .collect();
    if let Some(top_p) = params.top_p.filter(|p| *p < 1.0) {
        // With the whole top-k known, the nucleus is taken inside it (as the target does);
        // otherwise the raw probabilities are the target's own only at temperature 1.
        let unit_temperature = (params.temperature - 1.0).abs() < 1e-6;
        let cumulative_of: Vec<f64> = if !exact && unit_temperature {
            sorted.iter().map(|(_, lp)| f64::from(*lp).exp()).collect()
        } else {
            let total: f64 = weights.iter().sum();
            weights.iter().map(|w| w / total).collect()
        };
        let mut cumulative = 0.0;
        let mut keep = weights.len();
        for (i, w) in cumulative_of.iter().enumerate() {
            cumulative += w;
            if cumulative >= f64::from(top_p) {
                keep = i + 1;
                break;
            }
        }
        // Only with the whole top-k known (or at T=1 with the nucleus inside the returned
        // mass) is the cumulative sum above the target's own.
        if !exact && unit_temperature && raw_mass >= f64::from(top_p) {
            exact = true;
        }
        weights.truncate(keep);
        sorted.truncate(keep);
    }
    let dist = SparseDist::from_weights(
        sorted.iter().map(|(id, _)| *id).collect(),
        weights.iter().map(|w| *w as f32).collect(),
    )?;
    let exactness = if exact {
        Exactness::Exact
    } else {
        Exactness::Truncated
    };
    Ok((dist, exactness))
}

/// Expected tokens emitted per round for draft length `k` at per-token acceptance rate `alpha`:
/// `(1 − α^{k+1}) / (1 − α)` (accepted drafts plus the target's own token).
pub fn expected_tokens_per_round(alpha: f64, k: usize) -> f64 {
    let alpha = alpha.clamp(0.0, 1.0);
    if (1.0 - alpha).abs() < 1e-9 {
        return (k + 1) as f64;
    }
    (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of uniforms.
    struct Uniforms(crate::rng::SplitMix64);
    impl Uniforms {
        fn new(seed: u64) -> Self {
            Self(crate::rng::SplitMix64::new(seed))
        }

        fn next(&mut self) -> f64 {
            self.0.next_f64()
        }
    }

    #[test]
    fn greedy_accepts_longest_matching_prefix_then_target_token() {
        let a = accept_greedy(&[5, 6, 7], &[5, 6, 9, 1]).unwrap();
        assert_eq!(
            a,
            Acceptance {
                accepted: 2,
                next_token: 9
            }
        );
        let all = accept_greedy(&[5, 6, 7], &[5, 6, 7, 42]).unwrap();
        assert_eq!(all.accepted, 3);
        assert_eq!(all.next_token, 42);
        assert!(all.all_accepted(3));
        let none = accept_greedy(&[1, 2], &[3, 2, 4]).unwrap();
        assert_eq!((none.accepted, none.next_token), (0, 3));
        let empty = accept_greedy(&[], &[8]).unwrap();
        assert_eq!((empty.accepted, empty.next_token), (0, 8));
    }

    #[test]
    fn greedy_rejects_wrong_lengths() {
        assert!(accept_greedy(&[1, 2], &[1, 2]).is_err());
        assert!(accept_greedy(&[], &[]).is_err());
    }

    #[test]
    fn residual_is_positive_part_normalized() {
        let p = SparseDist::from_weights(vec![0, 1, 2], vec![0.5, 0.3, 0.2]).unwrap();
        let q = SparseDist::from_weights(vec![0, 1, 2], vec![0.7, 0.1, 0.2]).unwrap();
        let r = residual(&p, &q).unwrap();
        assert!(r.prob(0).abs() < 1e-6);
        assert!((r.prob(1) - 1.0).abs() < 1e-6);
        assert!(r.prob(2).abs() < 1e-6);
        assert!(residual(&p, &p).is_none());
    }

    #[test]
    fn point_proposal_accepts_with_target_probability() {
        let p = SparseDist::from_weights(vec![3, 4], vec![0.25, 0.75]).unwrap();
        let mut u = Uniforms::new(7);
        let trials = 20_000;
        let mut kept = 0;
        for _ in 0..trials {
            let a = accept_sampled(
                &[3],
                &[SparseDist::point(3)],
                &[p.clone(), p.clone()],
                &mut || u.next(),
            )
            .unwrap();
            if a.accepted == 1 {
                kept += 1;
            } else {
                // The residual of a point mass at 3 is p without 3.
                assert_eq!(a.next_token, 4);
            }
        }
        let rate = kept as f64 / trials as f64;
        assert!((rate - 0.25).abs() < 0.02, "acceptance rate {rate}");
    }

    #[test]
    fn sampled_rejects_bad_input() {
        let p = SparseDist::point(1);
        let mut u = || 0.5;
        assert!(accept_sampled(&[1], &[], &[p.clone(), p.clone()], &mut u).is_err());
        // The draft token must have mass under its own proposal.
        assert!(accept_sampled(&[1], &[SparseDist::point(2)], &[p.clone(), p], &mut u).is_err());
        assert!(SparseDist::from_weights(vec![1], vec![0.0]).is_err());
        assert!(SparseDist::from_weights(vec![1], vec![f32::NAN]).is_err());
    }

    #[test]
    fn target_dist_exactness_rules() {
        let top = [(9, -0.2f32), (4, -2.0), (7, -3.5)];
        let greedy = target_dist(&top, &TargetSampling::GREEDY, 3).unwrap();
        assert_eq!(greedy, (SparseDist::point(9), Exactness::Exact));

        let topk = TargetSampling {
            temperature: 0.7,
            top_k: Some(2),
            top_p: None,
        };
        let (d, e) = target_dist(&top, &topk, 3).unwrap();
        assert_eq!(e, Exactness::Exact);
        assert_eq!(d.ids, vec![9, 4]);
        let w9 = (-0.2f64 / 0.7).exp();
        let w4 = (-2.0f64 / 0.7).exp();
        assert!((f64::from(d.prob(9)) - w9 / (w9 + w4)).abs() < 1e-5);

        // top_k 0 keeps nothing to sample from: an error, not a panic.
        let zero_k = TargetSampling {
            top_k: Some(0),
            ..topk
        };
        assert!(target_dist(&top, &zero_k, 3).is_err());

        let wide_k = TargetSampling {
            top_k: Some(50),
            ..topk
        };
        assert_eq!(
            target_dist(&top, &wide_k, 3).unwrap().1,
            Exactness::Truncated
        );

        let plain = TargetSampling {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        };
        assert_eq!(
            target_dist(&top, &plain, 3).unwrap().1,
            Exactness::Truncated
        );

        // 0.819 + 0.135 + 0.030 = 0.984 of mass: a 0.9 nucleus is inside, and needs two tokens.
        let nucleus = TargetSampling {
            top_p: Some(0.9),
            ..plain
        };
        let (d, e) = target_dist(&top, &nucleus, 3).unwrap();
        assert_eq!(e, Exactness::Exact);
        assert_eq!(d.ids, vec![9, 4]);
        let too_wide = TargetSampling {
            top_p: Some(0.99),
            ..plain
        };
        assert_eq!(
            target_dist(&top, &too_wide, 3).unwrap().1,
            Exactness::Truncated
        );
        assert!(target_dist(&[], &plain, 3).is_err());
    }

    #[test]
    fn expected_tokens_formula() {
        assert!((expected_tokens_per_round(0.0, 5) - 1.0).abs() < 1e-12);
        assert!((expected_tokens_per_round(1.0, 5) - 6.0).abs() < 1e-12);
        let a: f64 = 0.8;
        let direct: f64 = (0..=4).map(|i| a.powi(i)).sum();
        assert!((expected_tokens_per_round(a, 4) - direct).abs() < 1e-12);
    }

    // ----- statistical test: speculative sampling follows the target distribution -----

    const VOCAB: u32 = 4;

    /// A target that depends on the previous token (a Markov chain over 4 tokens).
    fn target_p(prev: u32) -> SparseDist {
        let rows = [
            [0.50, 0.20, 0.20, 0.10],
            [0.05, 0.15, 0.30, 0.50],
            [0.25, 0.25, 0.25, 0.25],
            [0.70, 0.10, 0.10, 0.10],
        ];
        SparseDist::from_weights((0..VOCAB).collect(), rows[prev as usize].to_vec()).unwrap()
    }

    /// A deliberately different drafter.
    fn draft_q(prev: u32) -> SparseDist {
        let rows = [
            [0.10, 0.60, 0.20, 0.10],
            [0.40, 0.10, 0.10, 0.40],
            [0.05, 0.05, 0.80, 0.10],
            [0.25, 0.25, 0.25, 0.25],
        ];
        SparseDist::from_weights((0..VOCAB).collect(), rows[prev as usize].to_vec()).unwrap()
    }

    /// Generates `len` tokens after `start` by rounds of speculative sampling with `k` drafts.
    fn speculative_sequence(start: u32, len: usize, k: usize, u: &mut Uniforms) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev = start;
        while out.len() < len {
            let mut draft = Vec::new();
            let mut qs = Vec::new();
            let mut ps = vec![target_p(prev)];
            let mut last = prev;
            for _ in 0..k {
                let q = draft_q(last);
                let x = q.sample(u.next()).unwrap();
                draft.push(x);
                qs.push(q);
                ps.push(target_p(x));
                last = x;
            }
            let a = accept_sampled(&draft, &qs, &ps, &mut || u.next()).unwrap();
            out.extend_from_slice(&draft[..a.accepted]);
            out.push(a.next_token);
            prev = *out.last().unwrap();
        }
        out.truncate(len);
        out
    }

    #[test]
    fn speculative_sampling_follows_target_distribution_chi_square() {
        // Three-token sequences: 64 cells, exact probabilities from the chain.
        let len = 3;
        let cells = (VOCAB as usize).pow(len as u32);
        let mut expected = vec![0f64; cells];
        for (cell, e) in expected.iter_mut().enumerate() {
            let mut prev = 0u32;
            let mut prob = 1.0f64;
            let mut rest = cell;
            for _ in 0..len {
                let x = (rest % VOCAB as usize) as u32;
                rest /= VOCAB as usize;
                prob *= f64::from(target_p(prev).prob(x));
                prev = x;
            }
            *e = prob;
        }
        let trials = 40_000;
        for k in [1usize, 3] {
            let mut counts = vec![0u64; cells];
            let mut u = Uniforms::new(0xC0FFEE + k as u64);
            for _ in 0..trials {
                let seq = speculative_sequence(0, len, k, &mut u);
                let cell = seq
                    .iter()
                    .rev()
                    .fold(0usize, |acc, &x| acc * VOCAB as usize + x as usize);
                counts[cell] += 1;
            }
            let chi2: f64 = counts
                .iter()
                .zip(&expected)
                .map(|(&o, &p)| {
                    let e = p * trials as f64;
                    (o as f64 - e).powi(2) / e
                })
                .sum();
            // 63 degrees of freedom: the 0.999 quantile is about 103.4.
            assert!(chi2 < 103.4, "k={k}: chi-square {chi2:.1} too large");
        }
    }

    #[test]
    fn drafter_distribution_alone_is_rejected_by_chi_square() {
        // The same statistic detects a sampler that returns the drafter's tokens unchanged,
        // which shows the test has power.
        let trials = 40_000;
        let mut u = Uniforms::new(99);
        let mut counts = [0u64; VOCAB as usize];
        for _ in 0..trials {
            counts[draft_q(0).sample(u.next()).unwrap() as usize] += 1;
        }
        let p = target_p(0);
        let chi2: f64 = (0..VOCAB)
            .map(|x| {
                let e = f64::from(p.prob(x)) * trials as f64;
                (counts[x as usize] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 > 16.3,
            "chi-square {chi2:.1} should reject (3 dof, 0.999)"
        );
    }
}
