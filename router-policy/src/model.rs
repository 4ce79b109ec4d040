//! Learned quality predictors: P(the strong model answers better | request features).
//!
//! Three kinds, all trained offline on (features, soft label) pairs and saved as JSON:
//! - logistic regression on the standardized feature vector;
//! - a one-hidden-layer MLP;
//! - a matrix-factorization router in RouteLLM's style: each model m has a vector `v_m`, a prompt
//!   is projected to `u = W x`, a model's score is `w · (v_m ⊙ u)`, and
//!   P(strong better) = σ(score(strong) − score(weak) + b).
//!
//! Labels are soft: `(s_strong − s_weak + 1) / 2`, so a tie counts as one half. With cross-entropy
//! the prediction then tracks the expected gain of the strong model, which is what routing ranks.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::embedding::EMBEDDING_DIM;
use crate::{Error, Result};

/// One training example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Feature vector ([`crate::RequestFeatures::to_vector`]).
    pub x: Vec<f32>,
    /// Scores per model, in the order of [`TrainSet::models`].
    pub scores: Vec<f32>,
}

/// Examples plus the model names their scores refer to.
#[derive(Debug, Clone, Default)]
pub struct TrainSet {
    /// Model (score column) names.
    pub models: Vec<String>,
    /// The examples.
    pub examples: Vec<Example>,
}

/// Which predictor to train, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// Logistic regression.
    Logistic {
        /// L2 penalty.
        l2: f32,
        /// Full-batch epochs.
        epochs: usize,
    },
    /// One hidden ReLU layer.
    Mlp {
        /// Hidden units.
        hidden: usize,
        /// L2 penalty.
        l2: f32,
        /// Mini-batch epochs.
        epochs: usize,
    },
    /// RouteLLM-style matrix factorization.
    MatrixFactorization {
        /// Latent dimension.
        dim: usize,
        /// L2 penalty.
        l2: f32,
        /// Mini-batch epochs.
        epochs: usize,
    },
    /// Mean label of the k nearest training prompts by embedding cosine (stores the training
    /// embeddings, so for evaluation rather than shipping).
    Knn {
        /// Neighbours.
        k: usize,
    },
    /// Mean of logistic, matrix factorization and kNN with their default settings.
    Ensemble,
}

impl ModelSpec {
    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Logistic { .. } => "logistic",
            Self::Mlp { .. } => "mlp",
            Self::MatrixFactorization { .. } => "mf",
            Self::Knn { .. } => "knn",
            Self::Ensemble => "ensemble",
        }
    }

    /// Every kind `eval` can run, by name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|s| s.name() == name)
    }

    /// Every kind with its default settings (what `eval` runs by default).
    pub fn all() -> [ModelSpec; 5] {
        let [l, m, f] = Self::defaults();
        [l, m, f, Self::Knn { k: 100 }, Self::Ensemble]
    }

    /// The three parametric kinds with their default settings.
    pub fn defaults() -> [ModelSpec; 3] {
        [
            Self::Logistic {
                l2: 1e-2,
                epochs: 300,
            },
            Self::Mlp {
                hidden: 32,
                l2: 1e-3,
                epochs: 30,
            },
            Self::MatrixFactorization {
                dim: 32,
                l2: 1e-3,
                epochs: 30,
            },
        ]
    }
}

/// Per-feature standardization learned on the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Feature means.
    pub mean: Vec<f32>,
    /// Feature standard deviations (floored).
    pub std: Vec<f32>,
}

impl Standardizer {
    fn fit(xs: &[&[f32]]) -> Self {
        let d = xs.first().map_or(0, |x| x.len());
        let n = xs.len().max(1) as f32;
        let mut mean = vec![0f32; d];
        for x in xs {
            for (m, v) in mean.iter_mut().zip(x.iter()) {
                *m += v / n;
            }
        }
        let mut var = vec![0f32; d];
        for x in xs {
            for ((s, v), m) in var.iter_mut().zip(x.iter()).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let std = var.iter().map(|v| v.sqrt().max(1e-3)).collect();
        Self { mean, std }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((v, m), s)| (v - m) / s)
            .collect()
    }
}

/// Logistic regression weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    /// Input standardization.
    pub norm: Standardizer,
    /// Weights.
    pub w: Vec<f32>,
    /// Bias.
    pub b: f32,
}

/// One-hidden-layer MLP weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    /// Input standardization.
    pub norm: Standardizer,
    /// Hidden weights, row-major `[hidden][input]`.
    pub w1: Vec<f32>,
    /// Hidden biases.
    pub b1: Vec<f32>,
    /// Output weights.
    pub w2: Vec<f32>,
    /// Output bias.
    pub b2: f32,
}

/// Matrix-factorization router weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixFactorization {
    /// Input standardization.
    pub norm: Standardizer,
    /// Model names, in the order of `model_vecs`.
    pub models: Vec<String>,
    /// Latent vector per model, `[model][dim]`.
    pub model_vecs: Vec<Vec<f32>>,
    /// Projection, row-major `[dim][input]`.
    pub proj: Vec<f32>,
    /// Output weights over the latent dimensions.
    pub w: Vec<f32>,
    /// Bias of the pairwise logit.
    pub b: f32,
    /// Which model is strong and which is weak at prediction time.
    pub strong: usize,
    /// See `strong`.
    pub weak: usize,
}

/// A trained quality predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QualityModel {
    /// Logistic regression.
    Logistic(Logistic),
    /// MLP.
    Mlp(Mlp),
    /// Matrix factorization.
    MatrixFactorization(MatrixFactorization),
    /// Nearest neighbours.
    Knn(Knn),
    /// Mean of several models.
    Ensemble(Vec<QualityModel>),
}

/// Nearest-neighbour predictor over normalized prompt embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    /// Full input width (the embedding is its head).
    pub input_dim: usize,
    /// Neighbours.
    pub k: usize,
    /// Training embeddings, each L2-normalized.
    pub xs: Vec<Vec<f32>>,
    /// Their soft labels.
    pub ts: Vec<f32>,
    /// Mean label, the prior the neighbours are shrunk toward.
    pub prior: f32,
}

impl Knn {
    fn predict(&self, x: &[f32]) -> f32 {
        let e = &x[..EMBEDDING_DIM.min(x.len())];
        let mut sims: Vec<(f32, f32)> = self
            .xs
            .iter()
            .zip(&self.ts)
            .map(|(v, t)| (dot(v, e), *t))
            .collect();
        let k = self.k.min(sims.len()).max(1);
        if sims.len() > k {
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        }
        let sum: f32 = sims[..k.min(sims.len())].iter().map(|s| s.1).sum();
        // A few pseudo-counts of the prior keep small neighbourhoods from swinging to 0 or 1.
        (sum + 5.0 * self.prior) / (k as f32 + 5.0)
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl QualityModel {
    /// Input width the model expects.
    pub fn input_dim(&self) -> usize {
        match self {
            Self::Logistic(m) => m.norm.mean.len(),
            Self::Mlp(m) => m.norm.mean.len(),
            Self::MatrixFactorization(m) => m.norm.mean.len(),
            Self::Knn(m) => m.input_dim,
            Self::Ensemble(ms) => ms.first().map_or(0, Self::input_dim),
        }
    }

    /// Mean of the training inputs, where the model keeps one.
    pub fn input_mean(&self) -> Option<&[f32]> {
        match self {
            Self::Logistic(m) => Some(&m.norm.mean),
            Self::Mlp(m) => Some(&m.norm.mean),
            Self::MatrixFactorization(m) => Some(&m.norm.mean),
            Self::Knn(_) => None,
            Self::Ensemble(ms) => ms.iter().find_map(Self::input_mean),
        }
    }

    /// P(strong model answers better) for one feature vector.
    pub fn predict(&self, x: &[f32]) -> f32 {
        if x.len() != self.input_dim() {
            return 0.5;
        }
        match self {
            Self::Logistic(m) => sigmoid(dot(&m.w, &m.norm.apply(x)) + m.b),
            Self::Mlp(m) => {
                let x = m.norm.apply(x);
                let d = x.len();
                let h: Vec<f32> =
                    m.b1.iter()
                        .enumerate()
                        .map(|(j, b)| (dot(&m.w1[j * d..(j + 1) * d], &x) + b).max(0.0))
                        .collect();
                sigmoid(dot(&m.w2, &h) + m.b2)
            }
            Self::MatrixFactorization(m) => {
                let x = m.norm.apply(x);
                let d = x.len();
                let z: f32 =
                    m.w.iter()
                        .enumerate()
                        .map(|(k, wk)| {
                            let u = dot(&m.proj[k * d..(k + 1) * d], &x);
                            wk * (m.model_vecs[m.strong][k] - m.model_vecs[m.weak][k]) * u
                        })
                        .sum();
                sigmoid(z + m.b)
            }
            Self::Knn(m) => m.predict(x),
            Self::Ensemble(ms) => {
                ms.iter().map(|m| m.predict(x)).sum::<f32>() / ms.len().max(1) as f32
            }
        }
    }

    /// Reads a model from a JSON file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Trains a model of kind `spec` to predict whether `strong` beats `weak`.
    pub fn train(
        spec: &ModelSpec,
        data: &TrainSet,
        strong: usize,
        weak: usize,
        seed: u64,
    ) -> Result<Self> {
        if data.examples.is_empty() {
            return Err(Error::InvalidArgument("no training examples".into()));
        }
        let n_models = data.models.len();
        if strong >= n_models || weak >= n_models || strong == weak {
            return Err(Error::InvalidArgument(
                "strong and weak must be two distinct models".into(),
            ));
        }
        let xs: Vec<&[f32]> = data.examples.iter().map(|e| e.x.as_slice()).collect();
        let norm = Standardizer::fit(&xs);
        let zs: Vec<Vec<f32>> = xs.iter().map(|x| norm.apply(x)).collect();
        let label = |e: &Example, i: usize, j: usize| {
            ((e.scores[i] - e.scores[j] + 1.0) / 2.0).clamp(0.0, 1.0)
        };
        let ts: Vec<f32> = data
            .examples
            .iter()
            .map(|e| label(e, strong, weak))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(match *spec {
            ModelSpec::Logistic { l2, epochs } => {
                QualityModel::Logistic(train_logistic(norm, &zs, &ts, l2, epochs))
            }
            ModelSpec::Mlp { hidden, l2, epochs } => QualityModel::Mlp(train_mlp(
                norm,
                &zs,
                &ts,
                hidden.max(1),
                l2,
                epochs,
                &mut rng,
            )),
            ModelSpec::MatrixFactorization { dim, l2, epochs } => {
                // Every ordered pair of models with a decided label is a comparison, as in
                // RouteLLM's preference data.
                let mut pairs = Vec::new();
                for (n, e) in data.examples.iter().enumerate() {
                    for i in 0..n_models {
                        for j in (i + 1)..n_models {
                            pairs.push((n, i, j, label(e, i, j)));
                        }
                    }
                }
                let mut m = train_mf(
                    norm,
                    &zs,
                    &pairs,
                    n_models,
                    dim.max(1),
                    l2,
                    epochs,
                    &mut rng,
                );
                m.models = data.models.clone();
                m.strong = strong;
                m.weak = weak;
                QualityModel::MatrixFactorization(m)
            }
            ModelSpec::Knn { k } => {
                let xs = xs
                    .iter()
                    .map(|x| {
                        let e = &x[..EMBEDDING_DIM.min(x.len())];
                        let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                        e.iter().map(|v| v / n).collect()
                    })
                    .collect();
                let prior = ts.iter().sum::<f32>() / ts.len() as f32;
                QualityModel::Knn(Knn {
                    input_dim: norm.mean.len(),
                    k: k.max(1),
                    xs,
                    ts,
                    prior,
                })
            }
            ModelSpec::Ensemble => {
                let members = [
                    ModelSpec::defaults()[0],
                    ModelSpec::defaults()[2],
                    ModelSpec::Knn { k: 100 },
                ];
                let ms = members
                    .iter()
                    .map(|m| Self::train(m, data, strong, weak, seed))
                    .collect::<Result<Vec<_>>>()?;
                QualityModel::Ensemble(ms)
            }
        })
    }
}

/// Adam state for one flat parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    lr: f32,
}

impl Adam {
    fn new(n: usize, lr: f32) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
        }
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.t += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        for i in 0..params.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grads[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grads[i] * grads[i];
            params[i] -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}

fn train_logistic(
    norm: Standardizer,
    zs: &[Vec<f32>],
    ts: &[f32],
    l2: f32,
    epochs: usize,
) -> Logistic {
    let d = norm.mean.len();
    // Parameters: d weights then the bias.
    let mut p = vec![0f32; d + 1];
    let mut adam = Adam::new(d + 1, 0.01);
    let n = zs.len() as f32;
    let mut g = vec![0f32; d + 1];
    for _ in 0..epochs {
        g.iter_mut().for_each(|x| *x = 0.0);
        for (z, t) in zs.iter().zip(ts) {
            let err = sigmoid(dot(&p[..d], z) + p[d]) - t;
            for (gi, zi) in g[..d].iter_mut().zip(z) {
                *gi += err * zi / n;
            }
            g[d] += err / n;
        }
        for i in 0..d {
            g[i] += l2 * p[i];
        }
        adam.step(&mut p, &g);
    }
    let b = p[d];
    p.truncate(d);
    Logistic { norm, w: p, b }
}

fn train_mlp(
    norm: Standardizer,
    zs: &[Vec<f32>],
    ts: &[f32],
    hidden: usize,
    l2: f32,
    epochs: usize,
    rng: &mut ChaCha8Rng,
) -> Mlp {
    let d = norm.mean.len();
    // Flat layout: w1 [hidden*d], b1 [hidden], w2 [hidden], b2 [1].
    let n_params = hidden * d + hidden + hidden + 1;
    let mut p = vec![0f32; n_params];
    let scale = (2.0 / d as f32).sqrt();
    for w in p[..hidden * d].iter_mut() {
        *w = (rng.random::<f32>() * 2.0 - 1.0) * scale;
    }
    for w in p[hidden * d + hidden..hidden * d + 2 * hidden].iter_mut() {
        *w = (rng.random::<f32>() * 2.0 - 1.0) * (1.0 / hidden as f32).sqrt();
    }
    let mut adam = Adam::new(n_params, 3e-3);
    let mut order: Vec<usize> = (0..zs.len()).collect();
    let batch = 64;
    let mut g = vec![0f32; n_params];
    let mut h = vec![0f32; hidden];
    for _ in 0..epochs {
        order.shuffle(rng);
        for chunk in order.chunks(batch) {
            g.iter_mut().for_each(|x| *x = 0.0);
            let bn = chunk.len() as f32;
            for &i in chunk {
                let z = &zs[i];
                let (w1, rest) = p.split_at(hidden * d);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(hidden);
                for j in 0..hidden {
                    h[j] = (dot(&w1[j * d..(j + 1) * d], z) + b1[j]).max(0.0);
                }
                let err = (sigmoid(dot(w2, &h) + b2[0]) - ts[i]) / bn;
                for j in 0..hidden {
                    g[hidden * d + hidden + j] += err * h[j];
                    if h[j] > 0.0 {
                        let gh = err * w2[j];
                        g[hidden * d + j] += gh;
                        for (gk, zk) in g[j * d..(j + 1) * d].iter_mut().zip(z) {
                            *gk += gh * zk;
                        }
                    }
                }
                g[n_params - 1] += err;
            }
            for k in 0..hidden * d {
                g[k] += l2 * p[k];
            }
            adam.step(&mut p, &g);
        }
    }
    let b2 = p[n_params - 1];
    let w2 = p[hidden * d + hidden..hidden * d + 2 * hidden].to_vec();
    let b1 = p[hidden * d..hidden * d + hidden].to_vec();
    p.truncate(hidden * d);
    Mlp {
        norm,
        w1: p,
        b1,
        w2,
        b2,
    }
}

#[allow(clippy::too_many_arguments)]
fn train_mf(
    norm: Standardizer,
    zs: &[Vec<f32>],
    pairs: &[(usize, usize, usize, f32)],
    n_models: usize,
    dim: usize,
    l2: f32,
    epochs: usize,
    rng: &mut ChaCha8Rng,
) -> MatrixFactorization {
    let d = norm.mean.len();
    // Flat layout: model vecs [n_models*dim], proj [dim*d], w [dim], b [1].
    let off_proj = n_models * dim;
    let off_w = off_proj + dim * d;
    let n_params = off_w + dim + 1;
    let mut p = vec![0f32; n_params];
    for x in p[..off_proj].iter_mut() {
        *x = rng.random::<f32>() * 2.0 - 1.0;
    }
    let scale = (1.0 / d as f32).sqrt();
    for x in p[off_proj..off_w].iter_mut() {
        *x = (rng.random::<f32>() * 2.0 - 1.0) * scale;
    }
    for x in p[off_w..off_w + dim].iter_mut() {
        *x = 1.0 / dim as f32;
    }
    let mut adam = Adam::new(n_params, 3e-3);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut g = vec![0f32; n_params];
    let mut u = vec![0f32; dim];
    for _ in 0..epochs {
        order.shuffle(rng);
        for chunk in order.chunks(64) {
            g.iter_mut().for_each(|x| *x = 0.0);
            let bn = chunk.len() as f32;
            for &pi in chunk {
                let (n, i, j, t) = pairs[pi];
                let z = &zs[n];
                for k in 0..dim {
                    u[k] = dot(&p[off_proj + k * d..off_proj + (k + 1) * d], z);
                }
                let logit: f32 = (0..dim)
                    .map(|k| p[off_w + k] * (p[i * dim + k] - p[j * dim + k]) * u[k])
                    .sum::<f32>()
                    + p[n_params - 1];
                let err = (sigmoid(logit) - t) / bn;
                for k in 0..dim {
                    let a = p[i * dim + k] - p[j * dim + k];
                    let wk = p[off_w + k];
                    g[off_w + k] += err * a * u[k];
                    g[i * dim + k] += err * wk * u[k];
                    g[j * dim + k] -= err * wk * u[k];
                    let gu = err * wk * a;
                    for (gq, zq) in g[off_proj + k * d..off_proj + (k + 1) * d]
                        .iter_mut()
                        .zip(z)
                    {
                        *gq += gu * zq;
                    }
                }
                g[n_params - 1] += err;
            }
            for k in off_proj..off_w {
                g[k] += l2 * p[k];
            }
            adam.step(&mut p, &g);
        }
    }
    let model_vecs = (0..n_models)
        .map(|m| p[m * dim..(m + 1) * dim].to_vec())
        .collect();
    MatrixFactorization {
        norm,
        models: Vec::new(),
        model_vecs,
        proj: p[off_proj..off_w].to_vec(),
        w: p[off_w..off_w + dim].to_vec(),
        b: p[n_params - 1],
        strong: 0,
        weak: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> TrainSet {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let examples = (0..n)
            .map(|_| {
                let x: Vec<f32> = (0..4).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
                // The weak model fails when the first feature is high.
                let weak = if x[0] > 0.2 { 0.0 } else { 1.0 };
                Example {
                    x,
                    scores: vec![weak, 1.0],
                }
            })
            .collect();
        TrainSet {
            models: vec!["weak".into(), "strong".into()],
            examples,
        }
    }

    #[test]
    fn every_kind_learns_a_separable_rule() {
        let data = toy(400);
        for spec in ModelSpec::defaults() {
            let m = QualityModel::train(&spec, &data, 1, 0, 1).unwrap();
            let hard = m.predict(&[0.9, 0.0, 0.0, 0.0]);
            let easy = m.predict(&[-0.9, 0.0, 0.0, 0.0]);
            assert!(
                hard > easy + 0.2,
                "{}: hard {hard} easy {easy}",
                spec.name()
            );
            let json = serde_json::to_string(&m).unwrap();
            let back: QualityModel = serde_json::from_str(&json).unwrap();
            assert!((back.predict(&[0.9, 0.0, 0.0, 0.0]) - hard).abs() < 1e-6);
        }
    }
}
