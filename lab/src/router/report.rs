//! The evaluation's result tables, per dataset and per router: plain data shared by the
//! evaluation that fills them and the plot that draws them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::router::metrics::Curve;

/// A number with its bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WithCi {
    /// The point estimate on the full test set.
    pub value: f32,
    /// 2.5th percentile over resamples.
    pub lo: f32,
    /// 97.5th percentile over resamples.
    pub hi: f32,
}

/// One router's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterRow {
    /// Router name.
    pub router: String,
    /// APGR.
    pub apgr: WithCi,
    /// CPT(50%) as a share (1.0 when never reached).
    pub cpt50: WithCi,
    /// CPT(80%) as a share (1.0 when never reached).
    pub cpt80: WithCi,
    /// Strong-call share realised on test folds by a threshold calibrated on training folds for
    /// [`crate::router::eval::EvalArgs::target_share`] (learned routers only).
    pub realised_share: Option<f32>,
    /// The accuracy-against-share curve.
    #[serde(skip_serializing)]
    pub curve: Curve,
}

/// One dataset's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    /// Dataset name.
    pub dataset: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Prompts dropped as contaminated.
    pub dropped_contaminated: usize,
    /// How the folds were made.
    pub split: String,
    /// Weak model column.
    pub weak: String,
    /// Strong model column.
    pub strong: String,
    /// Weak-only accuracy.
    pub weak_accuracy: f32,
    /// Strong-only accuracy.
    pub strong_accuracy: f32,
    /// Rows: random, learned routers, oracle.
    pub rows: Vec<RouterRow>,
    /// The plot written, if any.
    pub plot: Option<PathBuf>,
}
