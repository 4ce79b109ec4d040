//! The router: the entry point the gateway calls. It holds the configured [`Policy`] (the learned
//! one by default), decides through [`policy::decide`] (hard rules first), remembers decisions by
//! request id and applies feedback to the policy.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::BackendCandidate;
use crate::bandit::{BanditState, BanditStore};
use crate::config::RouterConfig;
use crate::decision::Decision;
use crate::features::RequestFeatures;
use crate::model_file::{DEFAULT_MODEL, ModelFile, STATIC_MODEL};
use crate::policy::learned::Learned;
use crate::policy::{self, Policy};
use crate::recent::RecentMap;
use crate::rules::RouteRules;
use crate::{Error, Result};

/// Feedback on one answered request (`POST /v1/feedback`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The request id the gateway returned.
    pub request_id: String,
    /// A score in 0..=1.
    #[serde(default)]
    pub score: Option<f32>,
    /// Thumbs up (true) or down (false).
    #[serde(default)]
    pub thumbs_up: Option<bool>,
    /// Whether the answer was correct, when known.
    #[serde(default)]
    pub correct: Option<bool>,
    /// The client retried the request (implicit: the answer was not good enough).
    #[serde(default)]
    pub retried: bool,
    /// The cascade escalated (implicit: the local answer was not confident).
    #[serde(default)]
    pub escalated: bool,
}

/// What feedback changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackOutcome {
    /// The backend the feedback is about (the learned policy updates its bandit arm).
    pub backend: String,
    /// The reward applied (0..1).
    pub reward: f32,
}

struct Remembered {
    backend: String,
    context: Vec<f32>,
    /// Feedback already moved the bandit for this answer.
    applied: bool,
}

/// Recent decisions by request id, for feedback.
type Recent = RecentMap<String, Remembered>;

/// The router: the configured policy behind the [`Policy`] trait, the learned policy's model and
/// bandit, and the recent decisions feedback refers to. Share it behind an `Arc`; every method
/// but the setup ones takes `&self`.
pub struct Router {
    config: RouterConfig,
    /// The learned policy: it decides unless another is configured or registered, and its
    /// model and bandit are what the router loads, predicts with and persists.
    learned: Learned,
    /// The policy that decides instead of the learned one, when there is one.
    other: Option<Arc<dyn Policy>>,
    recent: Mutex<Recent>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .field("policy", &self.policy().name())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Loads a model file (see [`ModelFile`]) and starts with an empty bandit.
    pub fn load(path: &Path, config: RouterConfig) -> Result<Self> {
        Self::new(ModelFile::load(path)?, config)
    }

    /// The model files shipped in the repository: `router-policy/models/default.json` for full
    /// embeddings and `router-policy/models/static.json` for static ones.
    pub fn load_default(config: RouterConfig) -> Result<Self> {
        let parse = |text: &str, path: &str| -> Result<ModelFile> {
            serde_json::from_str(text).map_err(|e| Error::Format {
                path: path.into(),
                message: e.to_string(),
            })
        };
        let file = parse(DEFAULT_MODEL, "models/default.json")?;
        let fast = parse(STATIC_MODEL, "models/static.json")?;
        Ok(Self::new(file, config)?.with_static_model(fast))
    }

    /// Adds the predictor for static embeddings ([`crate::EmbeddingSource::Static`]); without one,
    /// a static embedding counts as no embedding.
    pub fn with_static_model(mut self, file: ModelFile) -> Self {
        self.learned = self.learned.with_static_model(file);
        self
    }

    /// Decides with `policy` instead of the configured one (a policy defined outside this crate;
    /// the hard rules still come first). Feedback then goes to `policy`.
    pub fn with_policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.other = Some(policy);
        self
    }

    /// The predictor for static embeddings, if loaded.
    pub fn static_model_file(&self) -> Option<&ModelFile> {
        self.learned.static_model_file()
    }

    /// A router around an in-memory model file, running the policy `config.policy` names.
    pub fn new(file: ModelFile, config: RouterConfig) -> Result<Self> {
        Ok(Self {
            learned: Learned::new(file, config.clone())?,
            other: config.policy.build(),
            recent: Mutex::new(Recent::new(config.recent_requests)),
            config,
        })
    }

    /// The policy that decides.
    pub fn policy(&self) -> &dyn Policy {
        match &self.other {
            Some(p) => p.as_ref(),
            None => &self.learned,
        }
    }

    /// Resumes the bandit from `store` (no-op when it holds nothing).
    pub fn restore_bandit(&mut self, store: &dyn BanditStore) -> Result<()> {
        self.learned.restore_bandit(store)
    }

    /// Saves the bandit to `store`.
    pub fn save_bandit(&self, store: &dyn BanditStore) -> Result<()> {
        store.save(&self.learned.bandit_state())
    }

    /// The bandit state (for persistence elsewhere).
    pub fn bandit_state(&self) -> BanditState {
        self.learned.bandit_state()
    }

    /// Takes every replica's summed bandit statistics, keeping what was learned here since
    /// `base` (see [`crate::bandit::LinUcb::rebase`]).
    pub fn rebase_bandit(&self, base: &BanditState, merged: &BanditState) -> Result<()> {
        self.learned.rebase_bandit(base, merged)
    }

    /// The loaded model file.
    pub fn model_file(&self) -> &ModelFile {
        self.learned.model_file()
    }

    /// The settings.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The learned predictor's P(strong model answers better) for these features (see
    /// [`Learned::predict`]).
    pub fn predict(&self, features: &RequestFeatures) -> f32 {
        self.learned.predict(features)
    }

    /// Chooses a backend (or cascade, or speculative) for one request: the hard rules, then the
    /// policy.
    pub fn decide(
        &self,
        features: &RequestFeatures,
        candidates: &[BackendCandidate],
        rules: &RouteRules,
    ) -> Decision {
        policy::decide(self.policy(), features, candidates, rules)
    }

    /// The learned policy's smallest cost weight λ that keeps `sample` within `budget_usd` per
    /// request (see [`Learned::lambda_for_budget`]).
    pub fn lambda_for_budget(
        &self,
        sample: &[RequestFeatures],
        candidates: &[BackendCandidate],
        rules: &RouteRules,
        budget_usd: f64,
    ) -> Option<f64> {
        self.learned
            .lambda_for_budget(sample, candidates, rules, budget_usd)
    }

    /// Says another backend answered a remembered request (a fallback, or a cascade that
    /// escalated): later feedback on the answer teaches that backend's arm. Unknown ids are
    /// ignored.
    pub fn answered_by(&self, request_id: &str, backend: &str) {
        if let Some(r) = self.recent.lock().get_mut(request_id)
            && r.backend != backend
        {
            r.backend = backend.to_owned();
            r.applied = false;
        }
    }

    /// Remembers a decision under its request id so feedback can reach the bandit.
    pub fn remember(&self, request_id: &str, decision: &Decision) {
        let Some(backend) = decision.choice.first_backend() else {
            return;
        };
        self.recent.lock().insert(
            request_id.to_string(),
            Remembered {
                backend: backend.to_string(),
                context: decision.context.clone(),
                applied: false,
            },
        );
    }

    /// Applies feedback for a remembered request to the policy (the `POST /v1/feedback` logic).
    /// Unknown ids and malformed values are [`Error::UnknownRequest`] and
    /// [`Error::InvalidFeedback`] (client errors).
    pub fn apply_feedback(&self, feedback: &Feedback) -> Result<FeedbackOutcome> {
        let reward = feedback_reward(feedback)?;
        let (backend, context) = {
            let mut recent = self.recent.lock();
            let r = recent
                .get_mut(feedback.request_id.as_str())
                .ok_or_else(|| Error::UnknownRequest(feedback.request_id.clone()))?;
            if r.applied {
                return Err(Error::FeedbackAlreadyApplied(feedback.request_id.clone()));
            }
            r.applied = true;
            (r.backend.clone(), r.context.clone())
        };
        self.policy().learn(&backend, &context, reward)?;
        Ok(FeedbackOutcome { backend, reward })
    }
}

/// Feedback as JSON (the request body) applied to `router`: parse errors are
/// [`Error::InvalidFeedback`].
pub fn apply_feedback(router: &Router, body: &[u8]) -> Result<FeedbackOutcome> {
    let feedback: Feedback =
        serde_json::from_slice(body).map_err(|e| Error::InvalidFeedback(e.to_string()))?;
    router.apply_feedback(&feedback)
}

fn feedback_reward(f: &Feedback) -> Result<f32> {
    if f.request_id.trim().is_empty() {
        return Err(Error::InvalidFeedback("request_id is empty".into()));
    }
    let mut signals = Vec::new();
    if let Some(s) = f.score {
        if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
            return Err(Error::InvalidFeedback(format!(
                "score {s} is outside 0..=1"
            )));
        }
        signals.push(s);
    }
    if let Some(up) = f.thumbs_up {
        signals.push(if up { 1.0 } else { 0.0 });
    }
    if let Some(ok) = f.correct {
        // Correctness is the strongest signal: it alone decides when present.
        return Ok(if ok { 1.0 } else { 0.0 });
    }
    if f.retried || f.escalated {
        signals.push(0.0);
    }
    if signals.is_empty() {
        return Err(Error::InvalidFeedback(
            "no signal: give score, thumbs_up, correct, retried or escalated".into(),
        ));
    }
    Ok(signals.iter().sum::<f32>() / signals.len() as f32)
}

/// Convenience: shares an [`Arc`]'d router.
pub type SharedRouter = Arc<Router>;
