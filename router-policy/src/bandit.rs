//! Online learning: a LinUCB contextual bandit with one arm per backend, over a compact context
//! (the predictor's output, cheap features and local confidence). Its estimate of an arm's reward
//! is blended into the predicted quality as evidence accumulates. The state is plain serde data so
//! the gateway can persist it (file here, Redis in the gateway) through [`BanditStore`].
//!
//! Each arm also keeps its additive statistics (Σ x·xᵀ, b = Σ reward·x, n), which replicas can
//! add up: [`LinUcb::rebase`] takes the sums of every replica and keeps what this one learned
//! since it last read them, so no replica overwrites another's counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::features::{CHEAP_DIM, RequestFeatures};
use crate::{Error, Result};

/// Width of the bandit context: bias, predictor output, cheap features, 3 confidence numbers.
pub const CONTEXT_DIM: usize = 2 + CHEAP_DIM + 3;

/// The bandit's context for a request whose predictor said `p_strong`.
pub fn context(features: &RequestFeatures, p_strong: f32) -> Vec<f32> {
    let mut v = Vec::with_capacity(CONTEXT_DIM);
    v.push(1.0);
    v.push(p_strong);
    v.extend_from_slice(&features.cheap.to_vector());
    match features.local_confidence {
        Some(c) => v.extend_from_slice(&[1.0, c.mean_entropy / 5.0, c.mean_logprob / 5.0]),
        None => v.extend_from_slice(&[0.0, 0.0, 0.0]),
    }
    v
}

/// One arm: the inverse design matrix and reward vector of ridge regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmState {
    /// A⁻¹, row-major `CONTEXT_DIM × CONTEXT_DIM`.
    pub a_inv: Vec<f32>,
    /// b = Σ reward · x.
    pub b: Vec<f32>,
    /// Updates seen.
    pub n: u64,
    /// Σ x·xᵀ (A less the identity prior), row-major: the additive form of `a_inv`, which
    /// replicas sum. Empty in states saved before it existed (then derived from `a_inv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub design: Vec<f32>,
}

impl ArmState {
    fn new(d: usize) -> Self {
        let mut a_inv = vec![0.0; d * d];
        for i in 0..d {
            a_inv[i * d + i] = 1.0;
        }
        Self {
            a_inv,
            b: vec![0.0; d],
            n: 0,
            design: vec![0.0; d * d],
        }
    }

    /// The arm with these additive statistics (`design` = Σ x·xᵀ), A⁻¹ computed from them.
    pub fn from_sums(design: Vec<f32>, b: Vec<f32>, n: u64) -> Result<Self> {
        let d = CONTEXT_DIM;
        if design.len() != d * d || b.len() != d {
            return Err(Error::Store(format!(
                "bandit sums have {} and {} entries, expected {} and {d}",
                design.len(),
                b.len(),
                d * d
            )));
        }
        let mut a: Vec<f64> = design.iter().map(|&v| f64::from(v)).collect();
        for i in 0..d {
            a[i * d + i] += 1.0;
        }
        let a_inv = invert(&a, d)
            .ok_or_else(|| Error::Store("bandit sums give a singular design matrix".into()))?;
        Ok(Self {
            a_inv: a_inv.into_iter().map(|v| v as f32).collect(),
            b,
            n,
            design,
        })
    }

    /// Fills `design` from `a_inv` for a state saved before it was kept.
    fn with_design(mut self, d: usize) -> Result<Self> {
        if self.design.len() == d * d {
            return Ok(self);
        }
        let a_inv: Vec<f64> = self.a_inv.iter().map(|&v| f64::from(v)).collect();
        let mut a = invert(&a_inv, d)
            .ok_or_else(|| Error::Store("bandit state has a singular A⁻¹".into()))?;
        for i in 0..d {
            a[i * d + i] -= 1.0;
        }
        self.design = a.into_iter().map(|v| v as f32).collect();
        Ok(self)
    }

    fn theta(&self, d: usize) -> Vec<f32> {
        (0..d)
            .map(|i| (0..d).map(|j| self.a_inv[i * d + j] * self.b[j]).sum())
            .collect()
    }
}

/// The inverse of the `d × d` row-major matrix `m` (Gauss-Jordan with partial pivoting); None
/// when it is singular.
fn invert(m: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut a = m.to_vec();
    let mut inv = vec![0.0; d * d];
    for i in 0..d {
        inv[i * d + i] = 1.0;
    }
    for col in 0..d {
        let pivot =
            (col..d).max_by(|&x, &y| a[x * d + col].abs().total_cmp(&a[y * d + col].abs()))?;
        if a[pivot * d + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for k in 0..d {
                a.swap(pivot * d + k, col * d + k);
                inv.swap(pivot * d + k, col * d + k);
            }
        }
        let p = a[col * d + col];
        for k in 0..d {
            a[col * d + k] /= p;
            inv[col * d + k] /= p;
        }
        for row in 0..d {
            if row == col {
                continue;
            }
            let f = a[row * d + col];
            if f != 0.0 {
                for k in 0..d {
                    a[row * d + k] -= f * a[col * d + k];
                    inv[row * d + k] -= f * inv[col * d + k];
                }
            }
        }
    }
    Some(inv)
}

/// The serializable bandit state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanditState {
    /// Context width (guards against loading a state of another version).
    pub dim: usize,
    /// Arms by backend name.
    pub arms: BTreeMap<String, ArmState>,
}

impl Default for BanditState {
    fn default() -> Self {
        Self {
            dim: CONTEXT_DIM,
            arms: BTreeMap::new(),
        }
    }
}

/// What the bandit says about one arm for one context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmEstimate {
    /// Ridge estimate of the reward.
    pub mean: f32,
    /// Exploration bonus (α · sqrt(xᵀA⁻¹x)).
    pub bonus: f32,
    /// Updates seen on this arm.
    pub n: u64,
}

/// LinUCB over named arms.
#[derive(Debug, Default)]
pub struct LinUcb {
    state: Mutex<BanditState>,
    alpha: f32,
}

impl LinUcb {
    /// An empty bandit with exploration weight `alpha`.
    pub fn new(alpha: f32) -> Self {
        Self {
            state: Mutex::new(BanditState::default()),
            alpha,
        }
    }

    /// A bandit resumed from a saved state.
    pub fn from_state(state: BanditState, alpha: f32) -> Result<Self> {
        if state.dim != CONTEXT_DIM
            || state
                .arms
                .values()
                .any(|a| a.a_inv.len() != CONTEXT_DIM * CONTEXT_DIM || a.b.len() != CONTEXT_DIM)
        {
            return Err(Error::Store(format!(
                "bandit state has width {}, expected {CONTEXT_DIM}",
                state.dim
            )));
        }
        let state = with_designs(state)?;
        Ok(Self {
            state: Mutex::new(state),
            alpha,
        })
    }

    /// Takes the sums of every replica (`merged`) and keeps what this bandit learned since
    /// `base` (the state it last pushed to them): each arm becomes merged + (now − base). An arm
    /// that learned nothing here since `base` takes `merged` as it is.
    pub fn rebase(&self, base: &BanditState, merged: &BanditState) -> Result<()> {
        let d = CONTEXT_DIM;
        let merged = with_designs(merged.clone())?;
        let base = with_designs(base.clone())?;
        let mut state = self.state.lock();
        let mut arms = merged.arms;
        for (name, now) in &state.arms {
            let before = base.arms.get(name);
            if before.is_some_and(|b| b.n == now.n) {
                continue;
            }
            let zero = ArmState::new(d);
            let before = before.unwrap_or(&zero);
            let into = arms.get(name).cloned().unwrap_or_else(|| ArmState::new(d));
            let design = (0..d * d)
                .map(|i| into.design[i] + now.design[i] - before.design[i])
                .collect();
            let b = (0..d).map(|i| into.b[i] + now.b[i] - before.b[i]).collect();
            let n = (into.n + now.n).saturating_sub(before.n);
            arms.insert(name.clone(), ArmState::from_sums(design, b, n)?);
        }
        state.arms = arms;
        Ok(())
    }

    /// A copy of the state, for persisting.
    pub fn state(&self) -> BanditState {
        self.state.lock().clone()
    }

    /// The estimate for `arm` in context `x` (None before the arm's first update).
    pub fn estimate(&self, arm: &str, x: &[f32]) -> Option<ArmEstimate> {
        let state = self.state.lock();
        let a = state.arms.get(arm)?;
        let d = CONTEXT_DIM;
        if x.len() != d {
            return None;
        }
        let theta = a.theta(d);
        let mean: f32 = theta.iter().zip(x).map(|(t, v)| t * v).sum();
        let mut quad = 0.0f32;
        for i in 0..d {
            let row: f32 = (0..d).map(|j| a.a_inv[i * d + j] * x[j]).sum();
            quad += x[i] * row;
        }
        Some(ArmEstimate {
            mean,
            bonus: self.alpha * quad.max(0.0).sqrt(),
            n: a.n,
        })
    }

    /// Adds one observed `reward` (0..1) for `arm` in context `x` (Sherman–Morrison update).
    pub fn update(&self, arm: &str, x: &[f32], reward: f32) -> Result<()> {
        let d = CONTEXT_DIM;
        if x.len() != d || !reward.is_finite() {
            return Err(Error::InvalidArgument(
                "bandit update needs a full context and a finite reward".into(),
            ));
        }
        let mut state = self.state.lock();
        let a = state
            .arms
            .entry(arm.to_string())
            .or_insert_with(|| ArmState::new(d));
        let ax: Vec<f32> = (0..d)
            .map(|i| (0..d).map(|j| a.a_inv[i * d + j] * x[j]).sum())
            .collect();
        let denom = 1.0 + x.iter().zip(&ax).map(|(u, v)| u * v).sum::<f32>();
        for i in 0..d {
            for j in 0..d {
                a.a_inv[i * d + j] -= ax[i] * ax[j] / denom;
            }
        }
        for (bi, xi) in a.b.iter_mut().zip(x) {
            *bi += reward * xi;
        }
        for i in 0..d {
            for j in 0..d {
                a.design[i * d + j] += x[i] * x[j];
            }
        }
        a.n += 1;
        Ok(())
    }
}

/// `state` with every arm's additive statistics filled in.
fn with_designs(mut state: BanditState) -> Result<BanditState> {
    for arm in state.arms.values_mut() {
        *arm = std::mem::replace(arm, ArmState::new(0)).with_design(CONTEXT_DIM)?;
    }
    Ok(state)
}

/// Where bandit state is kept between runs. The gateway adds a Redis implementation.
pub trait BanditStore: Send + Sync {
    /// The saved state, or None when nothing was saved yet.
    fn load(&self) -> Result<Option<BanditState>>;
    /// Saves the state.
    fn save(&self, state: &BanditState) -> Result<()>;
}

/// Keeps the state in memory (tests, or a gateway without persistence).
#[derive(Debug, Default)]
pub struct MemoryBanditStore {
    saved: Mutex<Option<BanditState>>,
}

impl BanditStore for MemoryBanditStore {
    fn load(&self) -> Result<Option<BanditState>> {
        Ok(self.saved.lock().clone())
    }

    fn save(&self, state: &BanditState) -> Result<()> {
        *self.saved.lock() = Some(state.clone());
        Ok(())
    }
}

/// Keeps the state in a JSON file, replaced atomically on save.
#[derive(Debug, Clone)]
pub struct FileBanditStore {
    path: PathBuf,
}

impl FileBanditStore {
    /// A store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl BanditStore for FileBanditStore {
    fn load(&self) -> Result<Option<BanditState>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::Format {
                    path: self.path.clone(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    fn save(&self, state: &BanditState) -> Result<()> {
        let json = serde_json::to_vec(state).map_err(|e| Error::Store(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(seed: f32) -> Vec<f32> {
        (0..CONTEXT_DIM)
            .map(|i| ((i as f32 + 1.0) * seed).sin())
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-3)
    }

    /// Two replicas that learn apart and rebase on their summed statistics hold what one bandit
    /// that saw every update holds.
    #[test]
    fn rebased_replicas_add_up_to_one_bandit_that_saw_everything() {
        let (one, two, all) = (LinUcb::new(0.5), LinUcb::new(0.5), LinUcb::new(0.5));
        for i in 0..5 {
            let (xa, xb) = (x(0.3 + i as f32), x(1.7 + i as f32));
            one.update("cloud", &xa, 1.0).unwrap();
            two.update("cloud", &xb, 0.0).unwrap();
            two.update("local", &xb, 1.0).unwrap();
            for (arm, ctx, r) in [
                ("cloud", &xa, 1.0),
                ("cloud", &xb, 0.0),
                ("local", &xb, 1.0),
            ] {
                all.update(arm, ctx, r).unwrap();
            }
        }
        // The shared sums: what each pushed since an empty start.
        let mut sums = BanditState::default();
        for replica in [&one, &two] {
            for (name, arm) in replica.state().arms {
                let into = sums
                    .arms
                    .entry(name)
                    .or_insert_with(|| ArmState::new(CONTEXT_DIM));
                let design = into
                    .design
                    .iter()
                    .zip(&arm.design)
                    .map(|(p, q)| p + q)
                    .collect();
                let b = into.b.iter().zip(&arm.b).map(|(p, q)| p + q).collect();
                *into = ArmState::from_sums(design, b, into.n + arm.n).unwrap();
            }
        }
        // Each pushed everything it learned (its snapshot) into the sums, and rebases on them.
        let snapshot = one.state();
        one.rebase(&snapshot, &sums).unwrap();
        let merged = one.state();
        let expected = all.state();
        for name in ["cloud", "local"] {
            assert_eq!(merged.arms[name].n, expected.arms[name].n, "{name}");
            assert!(
                close(&merged.arms[name].a_inv, &expected.arms[name].a_inv),
                "{name}"
            );
            assert!(
                close(&merged.arms[name].b, &expected.arms[name].b),
                "{name}"
            );
        }
        // What a replica learns after its snapshot stays on top of the sums.
        let snapshot = two.state();
        two.update("local", &x(9.0), 1.0).unwrap();
        two.rebase(&snapshot, &sums).unwrap();
        assert_eq!(two.state().arms["local"].n, expected.arms["local"].n + 1);
        assert_eq!(two.state().arms["cloud"].n, expected.arms["cloud"].n);
    }

    #[test]
    fn a_state_saved_without_sums_gets_them_from_its_inverse() {
        let bandit = LinUcb::new(0.5);
        bandit.update("a", &x(0.5), 1.0).unwrap();
        let mut old = bandit.state();
        let design = old.arms["a"].design.clone();
        old.arms.get_mut("a").unwrap().design.clear();
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("design"));
        let resumed = LinUcb::from_state(serde_json::from_str(&json).unwrap(), 0.5).unwrap();
        let derived = &resumed.state().arms["a"].design;
        assert!(
            derived
                .iter()
                .zip(&design)
                .all(|(p, q)| (p - q).abs() < 1e-3)
        );
    }
}
