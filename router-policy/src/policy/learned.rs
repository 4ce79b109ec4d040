//! The learned policy: the predictor of P(strong model answers better), blended with the online
//! bandit, then the decision rule `quality − λ·cost − μ·latency` over the allowed backends, the
//! held-out share threshold, the cascade band and speculative decoding.

use super::api::{self, Policy, PolicyInput};
use crate::backend::{BackendCandidate, Site};
use crate::bandit::{self, BanditState, BanditStore, LinUcb};
use crate::config::RouterConfig;
use crate::decision::{Choice, Decision, Explanation};
use crate::embedding::{EMBEDDING_DIM, EmbeddingSource};
use crate::features::RequestFeatures;
use crate::model_file::ModelFile;
use crate::rules::{RouteRules, Weights};
use crate::{Error, Result};

/// Predictor plus bandit plus utility. Every method takes `&self`; the bandit locks inside.
pub struct Learned {
    file: ModelFile,
    /// The predictor for static embeddings, used while a prompt's full embedding is not cached.
    fast: Option<ModelFile>,
    config: RouterConfig,
    bandit: LinUcb,
}

impl std::fmt::Debug for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learned")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One allowed backend, scored.
struct Scored<'a> {
    cand: &'a BackendCandidate,
    quality: f32,
    cost: f64,
    latency_ms: f64,
    utility: f64,
}

impl Learned {
    /// The policy around an in-memory model file, with an empty bandit.
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
            file,
            fast: None,
            config,
        })
    }

    /// Adds the predictor for static embeddings ([`EmbeddingSource::Static`]); without one, a
    /// static embedding counts as no embedding.
    pub fn with_static_model(mut self, file: ModelFile) -> Self {
        self.fast = Some(file);
        self
    }

    /// The loaded model file.
    pub fn model_file(&self) -> &ModelFile {
        &self.file
    }

    /// The predictor for static embeddings, if loaded.
    pub fn static_model_file(&self) -> Option<&ModelFile> {
        self.fast.as_ref()
    }

    /// Resumes the bandit from `store` (no-op when it holds nothing).
    pub fn restore_bandit(&mut self, store: &dyn BanditStore) -> Result<()> {
        if let Some(state) = store.load()? {
            self.bandit = LinUcb::from_state(state, self.config.bandit_alpha)?;
        }
        Ok(())
    }

    /// The bandit state (for persistence).
    pub fn bandit_state(&self) -> BanditState {
        self.bandit.state()
    }

    /// Takes every replica's summed bandit statistics, keeping what was learned here since
    /// `base` (see [`LinUcb::rebase`]).
    pub fn rebase_bandit(&self, base: &BanditState, merged: &BanditState) -> Result<()> {
        self.bandit.rebase(base, merged)
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

    fn rejection(
        &self,
        input: &PolicyInput<'_>,
        p_strong: f32,
        context: Vec<f32>,
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
                excluded: input.screen().excluded.clone(),
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
        // Costs are read off utility decisions: a cloud share would override the weights.
        let plain = self.without_share();
        let policy: &Self = plain.as_ref().unwrap_or(self);
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
                .map(|f| api::decide(policy, f, candidates, &r).explanation.cost_usd)
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

    /// The same predictors without the configured cloud share, with a fresh bandit; None when no
    /// share is configured (this policy already decides by utility).
    fn without_share(&self) -> Option<Self> {
        self.config.target_cloud_share?;
        Some(Self {
            file: self.file.clone(),
            fast: self.fast.clone(),
            config: RouterConfig {
                target_cloud_share: None,
                ..self.config.clone()
            },
            bandit: LinUcb::new(self.config.bandit_alpha),
        })
    }
}

impl Policy for Learned {
    fn name(&self) -> &str {
        "learned"
    }

    fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let features = input.features();
        let rules = input.rules();
        let p_strong = self.predict(features);
        let ctx = bandit::context(features, p_strong);
        let weights = rules.weights.unwrap_or(self.config.weights);
        let excluded = input.screen().excluded.clone();

        let scored: Vec<Scored<'_>> = input
            .allowed()
            .iter()
            .map(|&c| {
                let quality = self.quality(c, p_strong, &ctx);
                let cost = input.cost(c);
                let latency_ms = input.latency_ms(c);
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
        let best_of = |kind: Site| {
            scored
                .iter()
                .filter(|s| s.cand.profile.kind == kind)
                .max_by(|a, b| a.utility.total_cmp(&b.utility))
        };
        let best_local = best_of(Site::Local);
        let best_cloud = best_of(Site::Cloud);
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
        // The input has an allowed backend and every backend is local or cloud, so a pick
        // always exists.
        let Some((chosen, why)) = picked else {
            return self.rejection(input, p_strong, ctx, "no-backend".into());
        };
        let mut reason = input.reason(why);
        let mut choice = Choice::serve(chosen.cand);
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

    fn reject(&self, input: &PolicyInput<'_>) -> Decision {
        let p_strong = self.predict(input.features());
        let ctx = bandit::context(input.features(), p_strong);
        self.rejection(input, p_strong, ctx, input.screen().reject_reason())
    }

    fn learn(&self, backend: &str, context: &[f32], reward: f32) -> Result<()> {
        self.bandit.update(backend, context, reward)
    }
}
