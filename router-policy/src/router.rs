//! The router: hard rules, then the learned predictor (blended with the online bandit), then the
//! decision rule `quality − λ·cost − μ·latency` over the candidate backends.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendCandidate, BackendKind};
use crate::bandit::{self, BanditState, BanditStore, LinUcb};
use crate::decision::{Choice, Decision, Explanation};
use crate::embedding::{EMBEDDING_DIM, EmbeddingSource};
use crate::features::{FEATURE_DIM, RequestFeatures};
use crate::model::QualityModel;
use crate::recent::RecentMap;
use crate::rules::{Placement, RouteRules, Weights};
use crate::{Error, Result};

/// The file `train` writes and `Router::load` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Format version.
    pub version: u32,
    /// Encoder identity the embeddings came from (model hash and truncation).
    pub encoder: String,
    /// What it was trained on.
    pub trained_on: String,
    /// Held-out (out-of-fold) calibration: (strong-call share, threshold on P(strong better)).
    pub share_thresholds: Vec<(f32, f32)>,
    /// The predictor.
    pub model: QualityModel,
}

impl ModelFile {
    /// Reads a model file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: Self = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.into(),
            message: e.to_string(),
        })?;
        if file.model.input_dim() != FEATURE_DIM {
            return Err(Error::Format {
                path: path.into(),
                message: format!(
                    "model input width {}, expected {FEATURE_DIM}",
                    file.model.input_dim()
                ),
            });
        }
        Ok(file)
    }

    /// Writes the model file as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::write_json(self, path)
    }

    /// The inverse of [`ModelFile::threshold_for_share`]: the share of strong calls a threshold of
    /// `p` gives, by linear interpolation in the held-out table (thresholds fall as shares rise).
    pub fn share_for_threshold(&self, p: f32) -> f32 {
        let t = &self.share_thresholds;
        let Some((&(first_s, first_t), &(last_s, last_t))) = t.first().zip(t.last()) else {
            return 0.5;
        };
        if p >= first_t {
            return first_s;
        }
        if p <= last_t {
            return last_s;
        }
        for w in t.windows(2) {
            let ((s0, t0), (s1, t1)) = (w[0], w[1]);
            if p <= t0 && p >= t1 {
                let f = if (t0 - t1).abs() < 1e-9 {
                    0.0
                } else {
                    (t0 - p) / (t0 - t1)
                };
                return s0 + f * (s1 - s0);
            }
        }
        0.5
    }

    /// The threshold on P(strong better) that sends `share` of traffic to the strong side, by
    /// linear interpolation in the held-out table.
    pub fn threshold_for_share(&self, share: f32) -> f32 {
        crate::calibration::threshold_in_table(&self.share_thresholds, share)
    }
}

/// Router settings (the gateway fills these from its config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Default cost and latency weights.
    pub weights: Weights,
    /// When set, local vs cloud is decided by the held-out threshold for this cloud share
    /// instead of the utility (the utility still picks among clouds).
    #[serde(default)]
    pub target_cloud_share: Option<f32>,
    /// Offer cascade when local and cloud utilities are within this margin (None: never).
    #[serde(default)]
    pub cascade_band: Option<f32>,
    /// Confidence threshold used for cascade decisions.
    #[serde(default = "default_cascade_threshold")]
    pub cascade_threshold: f32,
    /// Use speculative decoding when a cloud target that verifies drafts wins and a drafter is
    /// available.
    #[serde(default)]
    pub speculative: bool,
    /// LinUCB exploration weight.
    #[serde(default = "default_alpha")]
    pub bandit_alpha: f32,
    /// Bandit updates on an arm at which its estimate gets half the weight in predicted quality.
    #[serde(default = "default_half_weight")]
    pub bandit_half_weight: f32,
    /// Recent request ids remembered for feedback: at least this many (at most twice as many
    /// are kept).
    #[serde(default = "default_recent")]
    pub recent_requests: usize,
}

fn default_cascade_threshold() -> f32 {
    0.35
}
fn default_alpha() -> f32 {
    0.2
}
fn default_half_weight() -> f32 {
    50.0
}
fn default_recent() -> usize {
    100_000
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            weights: Weights {
                lambda_per_usd: 20.0,
                mu_per_s: 0.02,
            },
            target_cloud_share: None,
            cascade_band: None,
            cascade_threshold: default_cascade_threshold(),
            speculative: false,
            bandit_alpha: default_alpha(),
            bandit_half_weight: default_half_weight(),
            recent_requests: default_recent(),
        }
    }
}

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
    /// The bandit arm (backend) updated.
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

/// The routing policy. Share it behind an `Arc`; every method takes `&self`.
pub struct Router {
    file: ModelFile,
    /// The predictor for static embeddings, used while a prompt's full embedding is not cached.
    fast: Option<ModelFile>,
    config: RouterConfig,
    bandit: LinUcb,
    recent: Mutex<Recent>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Scored<'a> {
    cand: &'a BackendCandidate,
    quality: f32,
    cost: f64,
    latency_ms: f64,
    utility: f64,
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
        self.fast = Some(file);
        self
    }

    /// The predictor for static embeddings, if loaded.
    pub fn static_model_file(&self) -> Option<&ModelFile> {
        self.fast.as_ref()
    }

    /// A router around an in-memory model file.
    pub fn new(file: ModelFile, config: RouterConfig) -> Result<Self> {
        if let Some(s) = config.target_cloud_share
            && !(0.0..=1.0).contains(&s)
        {
            return Err(Error::InvalidArgument(
                "target_cloud_share must be within 0..=1".into(),
            ));
        }
        Ok(Self {
            bandit: LinUcb::new(config.bandit_alpha),
            recent: Mutex::new(Recent::new(config.recent_requests)),
            file,
            fast: None,
            config,
        })
    }

    /// Resumes the bandit from `store` (no-op when it holds nothing).
    pub fn restore_bandit(&mut self, store: &dyn BanditStore) -> Result<()> {
        if let Some(state) = store.load()? {
            self.bandit = LinUcb::from_state(state, self.config.bandit_alpha)?;
        }
        Ok(())
    }

    /// Saves the bandit to `store`.
    pub fn save_bandit(&self, store: &dyn BanditStore) -> Result<()> {
        store.save(&self.bandit.state())
    }

    /// The bandit state (for persistence elsewhere).
    pub fn bandit_state(&self) -> BanditState {
        self.bandit.state()
    }

    /// The loaded model file.
    pub fn model_file(&self) -> &ModelFile {
        &self.file
    }

    /// The settings.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The predictor's P(strong model answers better) for these features. Without an embedding
    /// (not cached and not worth waiting for) the embedding slots take the training mean, so the
    /// prediction rests on the cheap features alone instead of on an out-of-range zero vector.
    ///
    /// A static embedding goes to the static model, whose output is then mapped onto the main
    /// model's scale through the two held-out share tables (same share of strong calls, same
    /// threshold), so thresholds and utilities read it as they read the main model.
    pub fn predict(&self, features: &RequestFeatures) -> f32 {
        let mut x = features.to_vector();
        if features.embedding.is_some() && features.embedding_source == EmbeddingSource::Static {
            if let Some(fast) = &self.fast
                && fast.model.input_dim() == x.len()
            {
                let p = fast.model.predict(&x);
                return self.file.threshold_for_share(fast.share_for_threshold(p));
            }
            // No static predictor: rest on the cheap features, as without an embedding.
            if let Some(mean) = self.file.model.input_mean() {
                let n = EMBEDDING_DIM.min(mean.len()).min(x.len());
                x[..n].copy_from_slice(&mean[..n]);
            }
            return self.file.model.predict(&x);
        }
        if features.embedding.is_none()
            && let Some(mean) = self.file.model.input_mean()
        {
            let n = EMBEDDING_DIM.min(mean.len()).min(x.len());
            x[..n].copy_from_slice(&mean[..n]);
        }
        self.file.model.predict(&x)
    }

    fn quality(&self, cand: &BackendCandidate, p_strong: f32, ctx: &[f32]) -> f32 {
        // Strength interpolates between the weak (1 − p) and strong (1) reference models.
        let prior = 1.0 - p_strong * (1.0 - cand.profile.strength.clamp(0.0, 1.0));
        match self.bandit.estimate(cand.name(), ctx) {
            Some(e) if e.n > 0 => {
                let w = e.n as f32 / (e.n as f32 + self.config.bandit_half_weight.max(1e-3));
                let learned = (e.mean + e.bonus).clamp(0.0, 1.0);
                (1.0 - w) * prior + w * learned
            }
            _ => prior,
        }
    }

    /// Chooses a backend (or cascade, or speculative) for one request.
    pub fn decide(
        &self,
        features: &RequestFeatures,
        candidates: &[BackendCandidate],
        rules: &RouteRules,
    ) -> Decision {
        let p_strong = self.predict(features);
        let ctx = bandit::context(features, p_strong);
        let weights = rules.weights.unwrap_or(self.config.weights);
        let out_tokens = features.expected_output_tokens;
        let mut excluded = Vec::new();
        let mut rule_reason: Option<String> = None;

        // Hard rules first.
        let mut allowed: Vec<&BackendCandidate> = Vec::new();
        for c in candidates {
            let why = if !c.healthy {
                Some("unhealthy")
            } else if !rules.allowed_backends.is_empty()
                && !rules.allowed_backends.iter().any(|b| b == c.name())
            {
                Some("not allowed")
            } else {
                match (rules.placement, c.profile.kind) {
                    (Some(Placement::LocalOnly), BackendKind::Cloud) => Some("local-only"),
                    (Some(Placement::CloudOnly), BackendKind::Local) => Some("cloud-only"),
                    _ => None,
                }
            };
            match why {
                Some(w) => excluded.push(format!("{}:{w}", c.name())),
                None => allowed.push(c),
            }
        }
        if let Some(p) = rules.placement {
            let src = rules.placement_source.as_deref().unwrap_or("rule");
            rule_reason = Some(format!("rule:{}({src})", p.as_str()));
        }
        if let Some(slo) = rules.latency_slo_ms {
            let within: Vec<&BackendCandidate> = allowed
                .iter()
                .copied()
                .filter(|c| c.predicted_latency_ms(out_tokens) <= slo)
                .collect();
            for c in allowed
                .iter()
                .filter(|c| c.predicted_latency_ms(out_tokens) > slo)
            {
                excluded.push(format!("{}:slo", c.name()));
            }
            if within.is_empty() && !allowed.is_empty() {
                // Nobody meets the SLO: serve from the fastest rather than fail.
                let fastest = allowed.iter().copied().min_by(|a, b| {
                    a.predicted_latency_ms(out_tokens)
                        .total_cmp(&b.predicted_latency_ms(out_tokens))
                });
                allowed = fastest.into_iter().collect();
                rule_reason = Some("slo:none-meets-fastest".into());
            } else {
                allowed = within;
            }
        }
        if allowed.is_empty() {
            let reason = rule_reason.unwrap_or_else(|| "no-backend".into());
            return self.reject(p_strong, ctx, excluded, reason);
        }

        let scored: Vec<Scored<'_>> = allowed
            .iter()
            .map(|c| {
                let quality = self.quality(c, p_strong, &ctx);
                let cost = c.profile.price.cost(
                    features.input_tokens,
                    features.cached_input_tokens,
                    out_tokens,
                );
                let latency_ms = c.predicted_latency_ms(out_tokens);
                let utility = f64::from(quality)
                    - weights.lambda_per_usd * cost
                    - weights.mu_per_s * latency_ms / 1000.0;
                Scored {
                    cand: c,
                    quality,
                    cost,
                    latency_ms,
                    utility,
                }
            })
            .collect();
        let best_of = |kind: BackendKind| {
            scored
                .iter()
                .filter(|s| s.cand.profile.kind == kind)
                .max_by(|a, b| a.utility.total_cmp(&b.utility))
        };
        let best_local = best_of(BackendKind::Local);
        let best_cloud = best_of(BackendKind::Cloud);
        let target_share = rules.target_cloud_share.or(self.config.target_cloud_share);

        let picked = match (best_local, best_cloud) {
            (Some(l), Some(c)) => match target_share {
                Some(share) => {
                    let threshold = self.file.threshold_for_share(share);
                    Some(if p_strong >= threshold {
                        (c, "share-threshold")
                    } else {
                        (l, "share-threshold")
                    })
                }
                None => Some(if c.utility > l.utility {
                    (c, "utility")
                } else {
                    (l, "utility")
                }),
            },
            (Some(only), None) | (None, Some(only)) => Some((only, "only-candidate")),
            (None, None) => None,
        };
        // `allowed` is non-empty and every backend is local or cloud, so a pick always exists.
        let Some((chosen, why)) = picked else {
            return self.reject(p_strong, ctx, excluded, "no-backend".into());
        };
        let mut reason = rule_reason.clone().unwrap_or_else(|| why.to_string());

        let mut choice = match chosen.cand.profile.kind {
            BackendKind::Local => Choice::Local {
                backend: chosen.cand.name().to_string(),
            },
            BackendKind::Cloud => Choice::Cloud {
                backend: chosen.cand.name().to_string(),
            },
        };
        if let (Some(l), Some(c)) = (best_local, best_cloud) {
            // Cascade when the two are too close to call: try local, escalate if unsure.
            if let Some(band) = self.config.cascade_band
                && rules.placement.is_none()
                && (c.utility - l.utility).abs() <= f64::from(band)
            {
                choice = Choice::Cascade {
                    local: l.cand.name().to_string(),
                    cloud: c.cand.name().to_string(),
                    threshold: self.config.cascade_threshold,
                };
                reason = "cascade-band".into();
            }
            // Speculative keeps the target's output exactly and cuts its latency.
            if self.config.speculative
                && matches!(choice, Choice::Cloud { .. })
                && c.cand.profile.verifies_drafts
                && l.cand.profile.drafts
            {
                choice = Choice::Speculative {
                    drafter: l.cand.name().to_string(),
                    target: c.cand.name().to_string(),
                };
                reason = format!("{reason}+speculative");
            }
        }
        Decision {
            explanation: Explanation {
                choice: choice.compact(),
                p_strong,
                predicted_quality: chosen.quality,
                cost_usd: chosen.cost,
                latency_ms: chosen.latency_ms,
                reason,
                excluded,
                model: self.file.model_name(),
            },
            choice,
            context: ctx,
        }
    }

    fn reject(
        &self,
        p_strong: f32,
        context: Vec<f32>,
        excluded: Vec<String>,
        reason: String,
    ) -> Decision {
        Decision {
            choice: Choice::Reject,
            explanation: Explanation {
                choice: "reject".into(),
                p_strong,
                predicted_quality: 0.0,
                cost_usd: 0.0,
                latency_ms: 0.0,
                reason,
                excluded,
                model: self.file.model_name(),
            },
            context,
        }
    }

    /// The smallest cost weight λ (per US dollar) whose decisions keep the mean predicted cost of
    /// `sample` (e.g. recent requests) within `budget_usd` per request, found by bisection on
    /// log λ; μ stays as given. Returns None when even a prohibitive λ cannot meet the budget.
    pub fn lambda_for_budget(
        &self,
        sample: &[RequestFeatures],
        candidates: &[BackendCandidate],
        rules: &RouteRules,
        budget_usd: f64,
    ) -> Option<f64> {
        if sample.is_empty() || !(budget_usd.is_finite() && budget_usd >= 0.0) {
            return None;
        }
        let mu = rules.weights.unwrap_or(self.config.weights).mu_per_s;
        let mean_cost = |lambda: f64| {
            let r = RouteRules {
                weights: Some(Weights {
                    lambda_per_usd: lambda,
                    mu_per_s: mu,
                }),
                target_cloud_share: None,
                ..rules.clone()
            };
            let total: f64 = sample
                .iter()
                .map(|f| {
                    self.decide_without_share(f, candidates, &r)
                        .explanation
                        .cost_usd
                })
                .sum();
            total / sample.len() as f64
        };
        if mean_cost(0.0) <= budget_usd {
            return Some(0.0);
        }
        let (mut lo, mut hi) = (-3.0f64, 9.0f64);
        if mean_cost(10f64.powf(hi)) > budget_usd {
            return None;
        }
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if mean_cost(10f64.powf(mid)) > budget_usd {
                lo = mid
            } else {
                hi = mid
            }
        }
        Some(10f64.powf(hi))
    }

    fn decide_without_share(
        &self,
        f: &RequestFeatures,
        candidates: &[BackendCandidate],
        rules: &RouteRules,
    ) -> Decision {
        if self.config.target_cloud_share.is_none() {
            return self.decide(f, candidates, rules);
        }
        let plain = Router {
            file: self.file.clone(),
            fast: self.fast.clone(),
            config: RouterConfig {
                target_cloud_share: None,
                ..self.config.clone()
            },
            bandit: LinUcb::new(self.config.bandit_alpha),
            recent: Mutex::new(Recent::new(1)),
        };
        plain.decide(f, candidates, rules)
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

    /// Applies feedback for a remembered request to the bandit (the `POST /v1/feedback` logic).
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
        self.bandit.update(&backend, &context, reward)?;
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

impl ModelFile {
    /// The predictor's kind, for explanations.
    pub fn model_name(&self) -> String {
        match &self.model {
            QualityModel::Logistic(_) => "logistic",
            QualityModel::Mlp(_) => "mlp",
            QualityModel::MatrixFactorization(_) => "mf",
            QualityModel::Knn(_) => "knn",
            QualityModel::Ensemble(_) => "ensemble",
        }
        .to_string()
    }
}

/// The default model shipped with the crate.
pub const DEFAULT_MODEL: &str = include_str!("../models/default.json");

/// The model for static embeddings shipped with the crate (`tandem router train --embedding
/// static`).
pub const STATIC_MODEL: &str = include_str!("../models/static.json");

/// Convenience: shares an [`Arc`]'d router.
pub type SharedRouter = Arc<Router>;
