//! The [`Policy`] trait, what a policy sees of one request ([`PolicyInput`]) and the entry point
//! that applies the hard rules before any policy chooses ([`decide`]).

use std::fmt;

use crate::Result;
use crate::backend::BackendCandidate;
use crate::decision::{Choice, Decision, Explanation};
use crate::features::RequestFeatures;
use crate::rules::{RouteRules, Screen};

/// A routing policy: chooses a backend (or a cascade, or speculative decoding) for one request
/// among the backends that passed the hard rules, and explains why.
///
/// # Adding a policy (two files)
///
/// 1. `router-policy/src/policy/<name>.rs`: a `//!` line, the type, and `impl Policy` with
///    [`Policy::name`] and [`Policy::decide`]. [`PolicyInput::pick`] builds the decision for a
///    single backend; [`Policy::reject`] and [`Policy::learn`] have defaults.
/// 2. `router-policy/src/policy/mod.rs`: `pub mod <name>;`, a variant of
///    [`crate::policy::PolicyKind`] (its serde name is the config value) and its arm in
///    [`crate::policy::PolicyKind::build`].
///
/// The router then runs it when [`crate::RouterConfig::policy`] names it; a policy defined
/// outside the crate is registered with [`crate::Router::with_policy`]. Either way it is reached
/// through [`crate::Router::decide`], after the hard rules.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Short name: the config value, and the explanation's `model` for policies without a
    /// predictor.
    fn name(&self) -> &str;

    /// Chooses for one request; `input.allowed()` is never empty and holds the only backends
    /// the decision may name.
    fn decide(&self, input: &PolicyInput<'_>) -> Decision;

    /// The decision when no backend passed the hard rules.
    fn reject(&self, input: &PolicyInput<'_>) -> Decision {
        input.reject(self.name())
    }

    /// Feedback on a decision this policy made: `reward` (0..1) for the answer of `backend`,
    /// with the decision's bandit context. Policies that do not learn ignore it.
    fn learn(&self, backend: &str, context: &[f32], reward: f32) -> Result<()> {
        let _ = (backend, context, reward);
        Ok(())
    }
}

/// What a policy sees of one request: its features and rules, and its backends' snapshots
/// after the hard rules.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    features: &'a RequestFeatures,
    rules: &'a RouteRules,
    screen: Screen<'a>,
}

impl<'a> PolicyInput<'a> {
    /// Applies `rules` to `candidates` for a request with these `features`.
    pub fn new(
        features: &'a RequestFeatures,
        candidates: &'a [BackendCandidate],
        rules: &'a RouteRules,
    ) -> Self {
        Self {
            features,
            rules,
            screen: rules.screen(candidates, features.expected_output_tokens),
        }
    }

    /// The request's features.
    pub fn features(&self) -> &RequestFeatures {
        self.features
    }

    /// The request's rules (weights and cloud share as well as the hard rules).
    pub fn rules(&self) -> &RouteRules {
        self.rules
    }

    /// The backends the policy may choose, in route order.
    pub fn allowed(&self) -> &[&'a BackendCandidate] {
        &self.screen.allowed
    }

    /// The hard rules' result (excluded backends and the rule behind the choice).
    pub fn screen(&self) -> &Screen<'a> {
        &self.screen
    }

    /// The decision's reason: the rule that shaped the choice when there was one, else `why`.
    pub fn reason(&self, why: &str) -> String {
        self.screen
            .reason
            .clone()
            .unwrap_or_else(|| why.to_string())
    }

    /// Predicted dollar cost of this request on `backend`.
    pub fn cost(&self, backend: &BackendCandidate) -> f64 {
        let f = self.features;
        backend.profile.price.cost(
            u64::from(f.input_tokens),
            u64::from(f.cached_input_tokens),
            u64::from(f.expected_output_tokens),
        )
    }

    /// Predicted end-to-end latency of this request on `backend`, ms.
    pub fn latency_ms(&self, backend: &BackendCandidate) -> f64 {
        backend.predicted_latency_ms(self.features.expected_output_tokens)
    }

    /// The decision to serve from `backend` alone, explained with its cost and latency, `why`
    /// (unless a rule shaped the choice) and the policy's name. A policy without a predictor
    /// leaves `p_strong` and `predicted_quality` at 0.
    pub fn pick(&self, backend: &BackendCandidate, policy: &str, why: &str) -> Decision {
        let choice = Choice::serve(backend);
        let explanation = Explanation {
            choice: choice.compact(),
            p_strong: 0.0,
            predicted_quality: 0.0,
            cost_usd: self.cost(backend),
            latency_ms: self.latency_ms(backend),
            reason: self.reason(why),
            excluded: self.screen.excluded.clone(),
            model: policy.to_string(),
        };
        Decision::new(choice, explanation)
    }

    /// The rejection when nothing passed the hard rules, explained by `policy`.
    pub fn reject(&self, policy: &str) -> Decision {
        let explanation = Explanation {
            choice: Choice::Reject.compact(),
            p_strong: 0.0,
            predicted_quality: 0.0,
            cost_usd: 0.0,
            latency_ms: 0.0,
            reason: self.screen.reject_reason(),
            excluded: self.screen.excluded.clone(),
            model: policy.to_string(),
        };
        Decision::new(Choice::Reject, explanation)
    }
}

/// Decides for one request: the hard rules first, then `policy` among the backends that pass
/// (or its rejection when none does).
pub fn decide(
    policy: &dyn Policy,
    features: &RequestFeatures,
    candidates: &[BackendCandidate],
    rules: &RouteRules,
) -> Decision {
    let input = PolicyInput::new(features, candidates, rules);
    if input.allowed().is_empty() {
        policy.reject(&input)
    } else {
        policy.decide(&input)
    }
}
