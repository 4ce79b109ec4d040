//! RouteLLM's metrics (arXiv:2406.18665): performance gap recovered (PGR) as a function of the
//! share of calls sent to the strong model, its area (APGR), and the call-performance threshold
//! CPT(x): the smallest strong-call share that recovers x of the gap.
//!
//! A router is a score per prompt; sweeping the threshold from high to low sends prompts to the
//! strong model in score order. Prompts with equal scores are taken as one block whose gain is
//! spread evenly (the expectation under random tie-breaking), so a constant score is exactly the
//! random router.

use serde::{Deserialize, Serialize};

/// Accuracy against strong-call share, one point per possible threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Strong-call shares, 0 to 1 in steps of 1/n.
    pub share: Vec<f32>,
    /// Mean score (accuracy) at each share.
    pub accuracy: Vec<f32>,
    /// Weak-only accuracy.
    pub weak_accuracy: f32,
    /// Strong-only accuracy.
    pub strong_accuracy: f32,
}

/// The summary numbers of one curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Area under PGR(share), share from 0 to 1.
    pub apgr: f32,
    /// Smallest share reaching 50% PGR (None if never).
    pub cpt50: Option<f32>,
    /// Smallest share reaching 80% PGR (None if never).
    pub cpt80: Option<f32>,
}

impl Curve {
    /// Builds the curve of a router from its scores (higher = more likely to need the strong
    /// model) and the weak and strong models' per-prompt scores.
    pub fn from_scores(router: &[f32], weak: &[f32], strong: &[f32]) -> Self {
        let n = router.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| router[b].total_cmp(&router[a]));
        let weak_total: f64 = weak.iter().map(|&x| f64::from(x)).sum();
        let strong_total: f64 = strong.iter().map(|&x| f64::from(x)).sum();
        let mut share = Vec::with_capacity(n + 1);
        let mut accuracy = Vec::with_capacity(n + 1);
        let denom = n.max(1) as f64;
        share.push(0.0);
        accuracy.push((weak_total / denom) as f32);
        let mut acc = weak_total;
        let mut i = 0;
        while i < n {
            let mut j = i;
            while j < n && router[order[j]] == router[order[i]] {
                j += 1;
            }
            let block_gain: f64 = order[i..j]
                .iter()
                .map(|&k| f64::from(strong[k]) - f64::from(weak[k]))
                .sum();
            let per = block_gain / (j - i) as f64;
            for k in i..j {
                acc += per;
                share.push(((k + 1) as f64 / denom) as f32);
                accuracy.push((acc / denom) as f32);
            }
            i = j;
        }
        Self {
            share,
            accuracy,
            weak_accuracy: (weak_total / denom) as f32,
            strong_accuracy: (strong_total / denom) as f32,
        }
    }

    /// PGR at each point: (acc − weak) / (strong − weak); 0 when the models tie.
    pub fn pgr(&self) -> Vec<f32> {
        let gap = self.strong_accuracy - self.weak_accuracy;
        self.accuracy
            .iter()
            .map(|a| {
                if gap.abs() < 1e-9 {
                    0.0
                } else {
                    (a - self.weak_accuracy) / gap
                }
            })
            .collect()
    }

    /// APGR and CPT(50%), CPT(80%).
    pub fn summary(&self) -> Summary {
        let pgr = self.pgr();
        let mut apgr = 0.0f64;
        for k in 1..pgr.len() {
            let w = f64::from(self.share[k] - self.share[k - 1]);
            apgr += w * f64::from(pgr[k] + pgr[k - 1]) / 2.0;
        }
        let cpt = |target: f32| {
            pgr.iter()
                .position(|&p| p >= target - 1e-6)
                .map(|k| self.share[k])
        };
        Summary {
            apgr: apgr as f32,
            cpt50: cpt(0.5),
            cpt80: cpt(0.8),
        }
    }

    /// Accuracy at the point closest to `share`.
    pub fn accuracy_at(&self, share: f32) -> f32 {
        let n = self.share.len().saturating_sub(1);
        let k = ((share.clamp(0.0, 1.0) * n as f32).round() as usize).min(n);
        self.accuracy.get(k).copied().unwrap_or(self.weak_accuracy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_router_is_the_diagonal() {
        let weak = [1.0, 0.0, 0.0, 1.0];
        let strong = [1.0, 1.0, 1.0, 0.0];
        let c = Curve::from_scores(&[0.0; 4], &weak, &strong);
        let s = c.summary();
        assert!((s.apgr - 0.5).abs() < 1e-6);
        assert_eq!(s.cpt50, Some(0.5));
        assert_eq!(s.cpt80, Some(1.0));
    }
}
