//! Adaptive draft length: pick `k` each round from what this session has measured.
//!
//! A round with draft length `k` at per-token acceptance `α` yields on average
//! `E(k) = (1 − α^{k+1}) / (1 − α)` tokens (accepted drafts plus the target's own) and costs
//! `k + 1` fresh input tokens and one output token at the target. Its wall time is
//! `k · t_draft + t_verify` when drafting and verifying take turns. Pipelined (the next block
//! drafted while the verification is in flight) a round takes `max(t_verify, (k + 1) · t_draft)`,
//! plus `k · t_draft` when the block drafted ahead does not stand, which happens unless all `k`
//! drafts and the drafter's guess of the target's bonus token are accepted (`1 − α^{k+1}`).
//!
//! Plain streaming yields one token per `t_plain` for one output token. The policy maximizes
//! tokens per unit of (time + `λ` · price), with `λ` converting price into seconds, and returns
//! `0` (stream plainly) when no `k` beats plain streaming.

use std::time::Duration;

use tandem_kernels::spec::expected_tokens_per_round;

/// Settings of the draft-length policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The longest draft considered.
    pub max_draft: usize,
    /// Acceptance assumed before anything is measured.
    pub prior_acceptance: f64,
    /// Weight of the prior, in draft tokens.
    pub prior_weight: f64,
    /// Time per draft token assumed before measuring.
    pub prior_draft_time: Duration,
    /// Verify round trip assumed before measuring.
    pub prior_verify_time: Duration,
    /// Time per token of plain streaming from the target (measured while streaming).
    pub plain_token_time: Duration,
    /// Price of one target input token (any unit).
    pub input_price: f64,
    /// Price of one target output token (same unit).
    pub output_price: f64,
    /// Seconds one price unit is worth (0 optimizes time only).
    pub seconds_per_price: f64,
    /// Smoothing of the moving averages (weight of the newest sample).
    pub smoothing: f64,
    /// Speculation must beat plain streaming by this factor before it is chosen.
    pub margin: f64,
    /// Rounds measured before the policy may fall back (priors alone never decide).
    pub explore_rounds: u64,
    /// Whether the next block is drafted while a verification is in flight (see the module
    /// docs); the decoding loop sets it from its options.
    pub pipelined: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_draft: 12,
            prior_acceptance: 0.8,
            prior_weight: 8.0,
            prior_draft_time: Duration::from_millis(10),
            prior_verify_time: Duration::from_millis(60),
            plain_token_time: Duration::from_millis(30),
            input_price: 0.0,
            output_price: 0.0,
            seconds_per_price: 0.0,
            smoothing: 0.3,
            margin: 1.05,
            explore_rounds: 3,
            pipelined: true,
        }
    }
}

/// The per-session policy state.
#[derive(Debug, Clone)]
pub struct DraftPolicy {
    cfg: PolicyConfig,
    drafted: f64,
    accepted: f64,
    draft_time: f64,
    verify_time: f64,
    plain_time: f64,
    rounds: u64,
}

impl DraftPolicy {
    /// A policy with nothing measured yet.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            draft_time: cfg.prior_draft_time.as_secs_f64(),
            verify_time: cfg.prior_verify_time.as_secs_f64(),
            plain_time: cfg.plain_token_time.as_secs_f64(),
            drafted: 0.0,
            accepted: 0.0,
            rounds: 0,
            cfg,
        }
    }

    /// The acceptance estimate: measured rate shrunk toward the prior.
    pub fn acceptance(&self) -> f64 {
        let w = self.cfg.prior_weight;
        ((self.accepted + w * self.cfg.prior_acceptance) / (self.drafted + w)).clamp(0.0, 0.999)
    }

    /// Records a round: `drafted` draft tokens sent, `accepted` kept.
    pub fn observe_round(&mut self, drafted: usize, accepted: usize) {
        // A mismatch ends the round: only positions up to it were tested.
        let tested = if accepted < drafted {
            accepted + 1
        } else {
            drafted
        };
        self.rounds += 1;
        self.drafted += tested as f64;
        self.accepted += accepted as f64;
    }

    /// Records drafting `tokens` tokens in `elapsed`.
    pub fn observe_draft(&mut self, tokens: usize, elapsed: Duration) {
        if tokens > 0 {
            let per = elapsed.as_secs_f64() / tokens as f64;
            self.draft_time = ewma(self.draft_time, per, self.cfg.smoothing);
        }
    }

    /// Drafting and verification overlap (`true`) or take turns.
    pub fn set_pipelined(&mut self, pipelined: bool) {
        self.cfg.pipelined = pipelined;
    }

    /// Records one verify round trip (the call alone, not drafting that overlapped it).
    pub fn observe_verify(&mut self, elapsed: Duration) {
        self.verify_time = ewma(self.verify_time, elapsed.as_secs_f64(), self.cfg.smoothing);
    }

    /// Records the time between two plainly streamed tokens.
    pub fn observe_plain(&mut self, per_token: Duration) {
        self.plain_time = ewma(self.plain_time, per_token.as_secs_f64(), self.cfg.smoothing);
    }

    /// Expected tokens per second-equivalent for draft length `k`.
    pub fn speculative_rate(&self, k: usize) -> f64 {
        let alpha = self.acceptance();
        let tokens = expected_tokens_per_round(alpha, k);
        let drafting = k as f64 * self.draft_time;
        let time = if self.cfg.pipelined {
            let ahead = (k + 1) as f64 * self.draft_time;
            let stands = alpha.powi(k as i32 + 1);
            self.verify_time.max(ahead) + (1.0 - stands) * drafting
        } else {
            drafting + self.verify_time
        };
        let price = (k as f64 + tokens) * self.cfg.input_price + self.cfg.output_price;
        tokens / (time + self.cfg.seconds_per_price * price)
    }

    /// Tokens per second-equivalent of plain streaming.
    pub fn plain_rate(&self) -> f64 {
        1.0 / (self.plain_time + self.cfg.seconds_per_price * self.cfg.output_price)
    }

    /// The draft length for the next round (`0`: stream plainly), at most `remaining`.
    pub fn choose(&self, remaining: usize) -> usize {
        let max = self.cfg.max_draft.min(remaining.saturating_sub(1)).max(1);
        let (best_k, best_rate) = (1..=max)
            .map(|k| (k, self.speculative_rate(k)))
            .fold((1, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
        if self.rounds >= self.cfg.explore_rounds && best_rate < self.plain_rate() * self.cfg.margin
        {
            0
        } else {
            best_k
        }
    }

    /// The measured figures, for reports.
    pub fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            acceptance: self.acceptance(),
            draft_time: Duration::from_secs_f64(self.draft_time),
            verify_time: Duration::from_secs_f64(self.verify_time),
            plain_time: Duration::from_secs_f64(self.plain_time),
        }
    }
}

/// What a policy has measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicySnapshot {
    /// Acceptance estimate.
    pub acceptance: f64,
    /// Time per draft token.
    pub draft_time: Duration,
    /// Verify round trip.
    pub verify_time: Duration,
    /// Time per plainly streamed token.
    pub plain_time: Duration,
}

fn ewma(old: f64, new: f64, weight: f64) -> f64 {
    old + weight * (new - old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        alpha_rounds: (usize, usize),
        draft_ms: u64,
        verify_ms: u64,
        plain_ms: u64,
    ) -> DraftPolicy {
        let mut p = DraftPolicy::new(PolicyConfig {
            plain_token_time: Duration::from_millis(plain_ms),
            ..PolicyConfig::default()
        });
        for _ in 0..50 {
            p.observe_round(alpha_rounds.0, alpha_rounds.1);
            p.observe_draft(1, Duration::from_millis(draft_ms));
            p.observe_verify(Duration::from_millis(verify_ms));
        }
        p
    }

    #[test]
    fn high_acceptance_and_slow_target_draft_long() {
        let p = policy((8, 8), 5, 50, 30);
        assert!(p.acceptance() > 0.95);
        assert!(p.choose(100) >= 8, "k = {}", p.choose(100));
    }

    #[test]
    fn low_acceptance_or_high_rtt_falls_back_to_plain_streaming() {
        // Almost nothing accepted: one token per round trip is slower than streaming.
        let p = policy((4, 0), 5, 130, 30);
        assert_eq!(p.choose(100), 0);
        // Moderate acceptance but a 300 ms round trip against 15 ms streaming.
        let p = policy((4, 2), 5, 300, 15);
        assert_eq!(p.choose(100), 0);
    }

    #[test]
    fn draft_length_grows_with_acceptance() {
        let low = policy((4, 2), 5, 60, 100).choose(100);
        let high = policy((4, 4), 5, 60, 100).choose(100);
        assert!(low >= 1 && high > low, "low {low}, high {high}");
    }

    #[test]
    fn overlapped_drafting_pays_where_taking_turns_does_not() {
        // Drafting (17 ms a token) costs about a verify round (55 ms) for 3 tokens: in turns
        // plain 20 ms streaming wins; overlapped, speculation does.
        let mut p = policy((4, 4), 17, 55, 20);
        assert!(p.choose(100) > 0, "pipelined");
        p.set_pipelined(false);
        assert_eq!(p.choose(100), 0, "in turns");
    }

    #[test]
    fn never_drafts_past_the_end() {
        let p = policy((8, 8), 1, 50, 30);
        assert_eq!(p.choose(3), 2);
        assert_eq!(p.choose(1), 1);
    }

    #[test]
    fn output_price_favours_speculation() {
        // Plain streaming is faster, but output tokens cost 16x (cached) input: speculation
        // wins on price.
        let mut cfg = PolicyConfig {
            plain_token_time: Duration::from_millis(20),
            input_price: 0.25,
            output_price: 4.0,
            seconds_per_price: 0.01,
            ..PolicyConfig::default()
        };
        cfg.prior_acceptance = 0.5;
        let mut p = DraftPolicy::new(cfg);
        for _ in 0..20 {
            p.observe_round(2, 1);
            p.observe_draft(1, Duration::from_millis(5));
            p.observe_verify(Duration::from_millis(30));
        }
        assert!(p.choose(100) > 0);
        let free = DraftPolicy {
            cfg: PolicyConfig {
                seconds_per_price: 0.0,
                ..p.cfg.clone()
            },
            ..p
        };
        assert_eq!(free.choose(100), 0, "on time alone plain streaming wins");
    }
}
