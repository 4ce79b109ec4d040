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

/// The threshold for `share` by linear interpolation in a held-out table of (share, threshold)
/// pairs sorted by share (thresholds fall as shares rise); 0.5 for an empty table.
pub fn threshold_in_table(table: &[(f32, f32)], share: f32) -> f32 {
    let (Some(&(first_s, first_t)), Some(&(_, last_t))) = (table.first(), table.last()) else {
        return 0.5;
    };
    let share = share.clamp(0.0, 1.0);
    if share < first_s {
        return first_t;
    }
    for w in table.windows(2) {
        let ((s0, t0), (s1, t1)) = (w[0], w[1]);
        if share >= s0 && share <= s1 {
            let f = if (s1 - s0).abs() < 1e-9 {
                0.0
            } else {
                (share - s0) / (s1 - s0)
            };
            return t0 + f * (t1 - t0);
        }
    }
    last_t
}

/// The inverse of [`threshold_in_table`]: the share a threshold of `p` gives, by linear
/// interpolation in the same (share, threshold) table; 0.5 for an empty table.
pub fn share_in_table(table: &[(f32, f32)], p: f32) -> f32 {
    let t = table;
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
