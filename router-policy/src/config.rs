//! The router's settings: weights, cloud share, cascade, speculative decoding, bandit, the
//! feedback window, and which policy decides.

use serde::{Deserialize, Serialize};

use crate::policy::PolicyKind;
use crate::rules::Weights;

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
    /// Which policy decides (the learned one unless set).
    #[serde(default)]
    pub policy: PolicyKind,
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
            policy: PolicyKind::default(),
        }
    }
}
