//! Online learning: a LinUCB contextual bandit with one arm per backend, over a compact context
//! (the predictor's output, cheap features and local confidence). Its estimate of an arm's reward
//! is blended into the predicted quality as evidence accumulates. The state is plain serde data so
//! the gateway can persist it (file here, Redis in the gateway) through [`BanditStore`].

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
        }
    }

    fn theta(&self, d: usize) -> Vec<f32> {
        (0..d)
            .map(|i| (0..d).map(|j| self.a_inv[i * d + j] * self.b[j]).sum())
            .collect()
    }
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
        Ok(Self {
            state: Mutex::new(state),
            alpha,
        })
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
        a.n += 1;
        Ok(())
    }
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
