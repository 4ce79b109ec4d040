//! Threshold calibration: pick the score threshold that sends a requested share of traffic to the
//! strong (cloud) side, measured on held-out predictions.

/// The threshold `t` such that the share of `scores >= t` is as close to `share` as the data
/// allows (ties may make an exact share impossible). A share of 0 gives +∞ (nothing passes).
pub fn threshold_for_share(scores: &[f32], share: f32) -> f32 {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    if sorted.is_empty() {
        return f32::INFINITY;
    }
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (share.clamp(0.0, 1.0) * sorted.len() as f32).round() as usize;
    if k == 0 {
        return f32::INFINITY;
    }
    sorted[k.min(sorted.len()) - 1]
}

/// Share of `scores` at or above `threshold`.
pub fn share_above(scores: &[f32], threshold: f32) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s >= threshold).count() as f32 / scores.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_requested_share() {
        let scores: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        for target in [0.0, 0.1, 0.25, 0.5, 0.8, 1.0] {
            let t = threshold_for_share(&scores, target);
            assert!(
                (share_above(&scores, t) - target).abs() <= 0.002,
                "target {target}"
            );
        }
    }
}
