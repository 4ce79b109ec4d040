//! The predictor file: what `train` writes and the learned policy loads, with the held-out table
//! that maps a share of strong calls to a threshold on P(strong better).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::FEATURE_DIM;
use crate::model::QualityModel;
use crate::{Error, Result};

/// The file `train` writes and [`crate::Router::load`] reads.
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
        crate::calibration::share_in_table(&self.share_thresholds, p)
    }

    /// The threshold on P(strong better) that sends `share` of traffic to the strong side, by
    /// linear interpolation in the held-out table.
    pub fn threshold_for_share(&self, share: f32) -> f32 {
        crate::calibration::threshold_in_table(&self.share_thresholds, share)
    }

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
