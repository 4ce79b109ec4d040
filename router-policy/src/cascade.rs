//! Cascade: start on the local model, read the confidence of its first few tokens, and keep the
//! local answer or escalate to the cloud. The threshold is calibrated on labelled samples.

use serde::{Deserialize, Serialize};

use crate::features::LocalConfidence;
use crate::{Error, Result};

/// What to do after the local model's first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CascadeAction {
    /// The local model is confident: stream its answer.
    KeepLocal,
    /// Not confident: discard and send the request to the cloud.
    Escalate,
}

/// Keep local when [`LocalConfidence::score`] is at least `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CascadePolicy {
    /// Confidence threshold in (0, 1].
    pub threshold: f32,
}

impl CascadePolicy {
    /// The action for the local model's first-token confidence.
    pub fn decide(&self, confidence: &LocalConfidence) -> CascadeAction {
        if confidence.score() >= self.threshold {
            CascadeAction::KeepLocal
        } else {
            CascadeAction::Escalate
        }
    }
}

/// One labelled cascade observation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CascadeSample {
    /// The local model's first-token confidence.
    pub confidence: LocalConfidence,
    /// Whether the local answer turned out acceptable.
    pub local_ok: bool,
}

/// What a calibration aims for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CascadeTarget {
    /// Escalate at most this share of requests.
    EscalationShare(f32),
    /// Kept-local answers must be acceptable at least this often (escalating as little as that
    /// allows).
    KeptAccuracy(f32),
}

/// A calibrated threshold and what it achieves on the calibration samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CascadeCalibration {
    /// The policy.
    pub policy: CascadePolicy,
    /// Share of samples escalated.
    pub escalation_share: f32,
    /// Accuracy of the samples kept local (1 when none kept).
    pub kept_accuracy: f32,
}

/// Chooses the cascade threshold on held-out samples.
pub fn calibrate_cascade(
    samples: &[CascadeSample],
    target: CascadeTarget,
) -> Result<CascadeCalibration> {
    if samples.is_empty() {
        return Err(Error::InvalidArgument(
            "cascade calibration needs samples".into(),
        ));
    }
    let goal = match target {
        CascadeTarget::EscalationShare(s) | CascadeTarget::KeptAccuracy(s) => s,
    };
    if !(0.0..=1.0).contains(&goal) {
        return Err(Error::InvalidArgument(
            "cascade target must be within 0..=1".into(),
        ));
    }
    let mut scored: Vec<(f32, bool)> = samples
        .iter()
        .map(|s| (s.confidence.score(), s.local_ok))
        .collect();
    // Most confident first: keeping the first k, escalating the rest.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = scored.len();
    let stats = |kept: usize| {
        let ok = scored[..kept].iter().filter(|s| s.1).count();
        let acc = if kept == 0 {
            1.0
        } else {
            ok as f32 / kept as f32
        };
        ((n - kept) as f32 / n as f32, acc)
    };
    let threshold_for = |kept: usize| {
        if kept == 0 {
            f32::INFINITY
        } else {
            scored[kept - 1].0
        }
    };
    let kept = match target {
        CascadeTarget::EscalationShare(s) => n - ((s * n as f32).floor() as usize).min(n),
        // The most samples kept whose kept accuracy still meets the goal.
        CascadeTarget::KeptAccuracy(a) => (0..=n).rev().find(|&k| stats(k).1 >= a).unwrap_or(0),
    };
    // Ties at the cut keep together; report what the threshold actually does.
    let threshold = threshold_for(kept);
    let kept_real = scored.iter().filter(|s| s.0 >= threshold).count();
    let (escalation_share, kept_accuracy) = stats(kept_real);
    Ok(CascadeCalibration {
        policy: CascadePolicy { threshold },
        escalation_share,
        kept_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(logprob: f32, ok: bool) -> CascadeSample {
        CascadeSample {
            confidence: LocalConfidence {
                mean_entropy: 0.0,
                mean_logprob: logprob,
                tokens: 4,
            },
            local_ok: ok,
        }
    }

    #[test]
    fn calibration_meets_targets() {
        let samples: Vec<CascadeSample> = (0..100)
            .map(|i| sample(-(i as f32) / 20.0, i < 60))
            .collect();
        let c = calibrate_cascade(&samples, CascadeTarget::EscalationShare(0.3)).unwrap();
        assert!((c.escalation_share - 0.3).abs() < 0.011);
        let c = calibrate_cascade(&samples, CascadeTarget::KeptAccuracy(1.0)).unwrap();
        assert!((c.escalation_share - 0.4).abs() < 0.011);
        assert_eq!(c.kept_accuracy, 1.0);
        let confident = sample(-0.1, true).confidence;
        let unsure = sample(-4.0, false).confidence;
        assert_eq!(c.policy.decide(&confident), CascadeAction::KeepLocal);
        assert_eq!(c.policy.decide(&unsure), CascadeAction::Escalate);
    }
}
