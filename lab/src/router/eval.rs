//! Offline evaluation with RouteLLM's protocol: drop contaminated prompts, fit each router on
//! training folds only (MMLU: grouped K-fold, a subject never in both; others: K-fold), score the
//! held-out prompts, sweep the threshold, and report APGR, CPT(50%), CPT(80%) with bootstrap
//! confidence intervals, next to the random and oracle routers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::router::dataset::{Dataset, ROUTELLM_STRONG, ROUTELLM_WEAK, discover};
use crate::router::embed_store::EmbeddingStore;
use crate::router::metrics::{Curve, Summary};
use crate::router::report::{DatasetReport, RouterRow, WithCi};
use tandem_router_policy::answer::{ANSWER_FEATURES, answer_features};
use tandem_router_policy::embedding::EMBEDDING_DIM;
use tandem_router_policy::encoder::{Encoder, EncoderConfig, default_cache_root};
use tandem_router_policy::features::RequestFeatures;
use tandem_router_policy::model::{Example, ModelSpec, QualityModel, TrainSet};
use tandem_router_policy::static_embed::{STATIC_MAX_TOKENS, StaticEmbedder};
use tandem_router_policy::{Error, Result};

/// The row name of the cascade router: the answer check on the weak model's finished answer.
pub const CASCADE_ROUTER: &str = "cascade (answer)";

/// The predictor the answer check trains: logistic regression over [`ANSWER_FEATURES`].
pub const ANSWER_CHECK_SPEC: ModelSpec = ModelSpec::Logistic {
    l2: 1e-2,
    epochs: 300,
};

/// RouteLLM's best published numbers on its MMLU and GSM8K tables: (APGR, CPT(50%)).
pub const ROUTELLM_BEST: [(&str, f32, f32); 2] =
    [("mmlu", 0.603, 0.3540), ("gsm8k", 0.622, 0.3364)];

/// Arguments of [`eval`] (`tandem router eval`).
#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// A CSV file, a directory of CSVs, or a directory of such directories.
    pub data: PathBuf,
    /// Where to write the report, JSON and plots (none: no files).
    pub out: Option<PathBuf>,
    /// Weak model column (default: RouteLLM's Mixtral column, else the first).
    pub weak: Option<String>,
    /// Strong model column (default: RouteLLM's GPT-4 column, else the second).
    pub strong: Option<String>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Bootstrap resamples for the confidence intervals.
    pub bootstrap: usize,
    /// Seed for folds, training and the bootstrap.
    pub seed: u64,
    /// Use MiniLM embeddings (needs the encoder files); false: cheap features only.
    pub use_embeddings: bool,
    /// Cache root (encoder files and embedding cache); default: the standard one.
    pub cache_root: Option<PathBuf>,
    /// Routers to train; empty: [`ModelSpec::all`].
    pub models: Vec<ModelSpec>,
    /// Strong-call share the threshold is calibrated for on training folds.
    pub target_share: f32,
    /// Which embedding the routers see (when `use_embeddings`).
    pub embedding: EmbeddingKind,
}

impl Default for EvalArgs {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: None,
            weak: None,
            strong: None,
            folds: 5,
            bootstrap: 200,
            seed: 17,
            use_embeddings: true,
            cache_root: None,
            models: Vec::new(),
            target_share: 0.5,
            embedding: EmbeddingKind::default(),
        }
    }
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// One report per dataset.
    pub datasets: Vec<DatasetReport>,
    /// Whether embeddings were used.
    pub embeddings: bool,
    /// Which embedding, when used.
    #[serde(default)]
    pub embedding: EmbeddingKind,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// Requested strong-call share for the calibration check.
    pub target_share: f32,
}

/// Runs the evaluation on every dataset under `args.data`.
pub fn eval(args: &EvalArgs) -> Result<EvalReport> {
    if args.folds < 2 {
        return Err(Error::InvalidArgument("folds must be at least 2".into()));
    }
    if !(0.0..=1.0).contains(&args.target_share) {
        return Err(Error::InvalidArgument(
            "target share must be within 0..=1".into(),
        ));
    }
    let specs = if args.models.is_empty() {
        ModelSpec::all().to_vec()
    } else {
        args.models.clone()
    };
    let embedder = if args.use_embeddings {
        Some(Embedder::open(args.cache_root.as_deref(), args.embedding)?)
    } else {
        None
    };
    let mut datasets = Vec::new();
    for path in discover(&args.data)? {
        let data = Dataset::load(&path)?;
        let mut report = eval_dataset(&data, args, &specs, embedder.as_ref())?;
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            let png = out.join(format!("{}_accuracy_vs_share.png", report.dataset));
            crate::router::plot::plot_report(&report, &png)?;
            report.plot = Some(png);
        }
        datasets.push(report);
    }
    let report = EvalReport {
        datasets,
        embeddings: args.use_embeddings,
        embedding: args.embedding,
        bootstrap: args.bootstrap,
        target_share: args.target_share,
    };
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let path = out.join("router_eval.json");
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        let path = out.join("router_eval.txt");
        std::fs::write(&path, report.to_string()).map_err(|e| Error::io(&path, e))?;
    }
    Ok(report)
}

/// Which prompt embedding the routers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EmbeddingKind {
    /// MiniLM-L6-v2 sentence embeddings of the first `max_tokens` tokens.
    MiniLm {
        /// Truncation length.
        max_tokens: usize,
    },
    /// Mean-pooled static token vectors from MiniLM's word-embedding table
    /// ([`tandem_router_policy::static_embed`]), no transformer layers.
    Static,
}

impl Default for EmbeddingKind {
    fn default() -> Self {
        Self::MiniLm {
            max_tokens: tandem_router_policy::encoder::DEFAULT_MAX_TOKENS,
        }
    }
}

impl fmt::Display for EmbeddingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MiniLm { max_tokens } => {
                write!(f, "MiniLM-L6-v2 int8, first {max_tokens} tokens")
            }
            Self::Static => write!(f, "static MiniLM token vectors, mean-pooled"),
        }
    }
}

/// The encoder plus its on-disk embedding store, or the static embedder.
// One per evaluation run, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Embedder {
    Onnx {
        encoder: Encoder,
        store: parking_lot::Mutex<EmbeddingStore>,
    },
    Static {
        embedder: StaticEmbedder,
        id: String,
    },
}

impl Embedder {
    pub(crate) fn open(cache_root: Option<&Path>, kind: EmbeddingKind) -> Result<Self> {
        let root = cache_root
            .map(Path::to_path_buf)
            .unwrap_or_else(default_cache_root);
        let config = EncoderConfig::from_cache_root(&root);
        match kind {
            EmbeddingKind::MiniLm { max_tokens } => {
                let encoder = Encoder::with_config(EncoderConfig {
                    pool_size: 2,
                    cache_capacity: 0,
                    max_tokens,
                    ..config
                })?;
                let store = EmbeddingStore::in_cache(&root, encoder.model_id(), EMBEDDING_DIM)?;
                Ok(Self::Onnx {
                    encoder,
                    store: parking_lot::Mutex::new(store),
                })
            }
            EmbeddingKind::Static => {
                config.check_files()?;
                let embedder = StaticEmbedder::load(
                    &config.model_path,
                    &config.tokenizer_path,
                    STATIC_MAX_TOKENS,
                )?;
                let id = format!("static-{}", embedder.model_id());
                Ok(Self::Static { embedder, id })
            }
        }
    }

    pub(crate) fn model_id(&self) -> &str {
        match self {
            Self::Onnx { encoder, .. } => encoder.model_id(),
            Self::Static { id, .. } => id,
        }
    }

    pub(crate) fn embed_all(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>> {
        match self {
            Self::Onnx { encoder, store } => {
                let mut store = store.lock();
                let mut last = std::time::Instant::now();
                store.embed_all(encoder, texts, 2, |done, total| {
                    if last.elapsed().as_secs() >= 10 {
                        last = std::time::Instant::now();
                        tracing::info!(done, total, "embedding prompts");
                    }
                })
            }
            Self::Static { embedder, .. } => texts
                .iter()
                .map(|t| embedder.embed(t).map(Arc::from))
                .collect(),
        }
    }
}

/// Feature vectors of all rows (embeddings computed from the text alone, never from labels).
pub(crate) fn featurize(data: &Dataset, embedder: Option<&Embedder>) -> Result<Vec<Vec<f32>>> {
    let embeddings = match embedder {
        Some(e) => {
            let texts: Vec<&str> = data.rows.iter().map(|r| r.prompt.as_str()).collect();
            e.embed_all(&texts)?.into_iter().map(Some).collect()
        }
        None => vec![None; data.rows.len()],
    };
    Ok(data
        .rows
        .iter()
        .zip(embeddings)
        .map(|(r, e)| RequestFeatures::from_prompt(&r.prompt, e).to_vector())
        .collect())
}

/// Answer-check features of every row from model `index`'s answers; None unless every row has
/// one.
pub(crate) fn featurize_answers(data: &Dataset, index: usize) -> Option<Vec<Vec<f32>>> {
    data.rows
        .iter()
        .map(|r| {
            let answer = r.responses.get(index)?.as_deref()?;
            Some(answer_features(&r.prompt, answer))
        })
        .collect()
}

pub(crate) fn pick_models(
    data: &Dataset,
    weak: Option<&str>,
    strong: Option<&str>,
) -> Result<(usize, usize)> {
    let pick = |flag: Option<&str>, default: &str, fallback: usize| match flag {
        Some(name) => data.model_index(name),
        None => Ok(data.model_index(default).unwrap_or(fallback)),
    };
    let w = pick(weak, ROUTELLM_WEAK, 0)?;
    let s = pick(strong, ROUTELLM_STRONG, 1)?;
    if w == s {
        return Err(Error::InvalidArgument(
            "weak and strong columns must differ".into(),
        ));
    }
    Ok((w, s))
}

/// Fold index per row: grouped (whole groups per fold, balanced by size) when the dataset has at
/// least as many groups as folds, else shuffled rows.
fn make_folds(data: &Dataset, k: usize, seed: u64) -> (Vec<usize>, String) {
    let groups = data.groups();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if groups.len() >= k {
        let mut sizes: Vec<(String, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g.clone(),
                    data.rows.iter().filter(|r| &r.group == g).count(),
                )
            })
            .collect();
        sizes.shuffle(&mut rng);
        sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
        let mut load = vec![0usize; k];
        let mut fold_of = std::collections::HashMap::new();
        for (g, n) in sizes {
            let f = (0..k).min_by_key(|&f| load[f]).unwrap_or(0);
            load[f] += n;
            fold_of.insert(g, f);
        }
        let folds = data
            .rows
            .iter()
            .map(|r| fold_of.get(&r.group).copied().unwrap_or(0))
            .collect();
        (
            folds,
            format!("grouped {k}-fold over {} groups", groups.len()),
        )
    } else {
        let mut idx: Vec<usize> = (0..data.rows.len()).collect();
        idx.shuffle(&mut rng);
        let mut folds = vec![0; data.rows.len()];
        for (pos, &i) in idx.iter().enumerate() {
            folds[i] = pos % k;
        }
        (folds, format!("{k}-fold"))
    }
}

fn eval_dataset(
    data: &Dataset,
    args: &EvalArgs,
    specs: &[ModelSpec],
    embedder: Option<&Embedder>,
) -> Result<DatasetReport> {
    let (wi, si) = pick_models(data, args.weak.as_deref(), args.strong.as_deref())?;
    let n = data.rows.len();
    if n < args.folds {
        return Err(Error::InvalidArgument(format!(
            "dataset {} has {n} rows, fewer than the folds",
            data.name
        )));
    }
    let weak: Vec<f32> = data.rows.iter().map(|r| r.scores[wi]).collect();
    let strong: Vec<f32> = data.rows.iter().map(|r| r.scores[si]).collect();
    let xs = featurize(data, embedder)?;
    let (folds, split) = make_folds(data, args.folds, args.seed);

    let mut rows = Vec::new();
    rows.push(summarize(
        "random",
        &vec![0.0; n],
        &weak,
        &strong,
        None,
        args,
    ));
    for spec in specs {
        let (oof, realised) = out_of_fold(spec, &xs, data, &folds, (si, wi), args)?;
        rows.push(summarize(
            spec.name(),
            &oof,
            &weak,
            &strong,
            Some(realised),
            args,
        ));
    }
    // A cascade sees the weak model's finished answer, so it is judged where the file has them.
    if let Some(answers) = featurize_answers(data, wi) {
        let (oof, realised) =
            out_of_fold(&ANSWER_CHECK_SPEC, &answers, data, &folds, (si, wi), args)?;
        rows.push(summarize(
            CASCADE_ROUTER,
            &oof,
            &weak,
            &strong,
            Some(realised),
            args,
        ));
    }
    let gain: Vec<f32> = strong.iter().zip(&weak).map(|(s, w)| s - w).collect();
    rows.push(summarize("oracle", &gain, &weak, &strong, None, args));
    let first = &rows[0].curve;
    Ok(DatasetReport {
        dataset: data.name.clone(),
        prompts: n,
        dropped_contaminated: data.dropped_contaminated,
        split,
        weak: data.models[wi].clone(),
        strong: data.models[si].clone(),
        weak_accuracy: first.weak_accuracy,
        strong_accuracy: first.strong_accuracy,
        rows,
        plot: None,
    })
}

/// Out-of-fold scores of a `spec` router on feature vectors `xs`, and the strong-call share its
/// threshold realises on the test folds when calibrated on the training folds alone.
fn out_of_fold(
    spec: &ModelSpec,
    xs: &[Vec<f32>],
    data: &Dataset,
    folds: &[usize],
    (si, wi): (usize, usize),
    args: &EvalArgs,
) -> Result<(Vec<f32>, f32)> {
    let n = xs.len();
    let mut oof = vec![0f32; n];
    let mut routed_strong = 0usize;
    for f in 0..args.folds {
        let train: Vec<usize> = (0..n).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..n).filter(|&i| folds[i] == f).collect();
        if test.is_empty() {
            continue;
        }
        let set = TrainSet {
            models: data.models.clone(),
            examples: train
                .iter()
                .map(|&i| Example {
                    x: xs[i].clone(),
                    scores: data.rows[i].scores.clone(),
                })
                .collect(),
        };
        let model = QualityModel::train(spec, &set, si, wi, args.seed + f as u64)?;
        for &i in &test {
            oof[i] = model.predict(&xs[i]);
        }
        // Share calibration on training folds only: an inner model fit on 80% of them sets
        // the threshold on its held-out 20% and is then applied to the test fold.
        let (inner_fit, inner_cal): (Vec<usize>, Vec<usize>) =
            (0..set.examples.len()).partition(|k| k % 5 != 4);
        let inner_set = TrainSet {
            models: set.models.clone(),
            examples: inner_fit.iter().map(|&k| set.examples[k].clone()).collect(),
        };
        let inner = QualityModel::train(spec, &inner_set, si, wi, args.seed + 100 + f as u64)?;
        let cal_scores: Vec<f32> = inner_cal
            .iter()
            .map(|&k| inner.predict(&set.examples[k].x))
            .collect();
        let threshold =
            tandem_router_policy::calibration::threshold_for_share(&cal_scores, args.target_share);
        routed_strong += test
            .iter()
            .filter(|&&i| inner.predict(&xs[i]) >= threshold)
            .count();
    }
    Ok((oof, routed_strong as f32 / n as f32))
}

fn summarize(
    name: &str,
    scores: &[f32],
    weak: &[f32],
    strong: &[f32],
    realised_share: Option<f32>,
    args: &EvalArgs,
) -> RouterRow {
    let curve = Curve::from_scores(scores, weak, strong);
    let point = curve.summary();
    let n = scores.len();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xb007);
    let mut samples: Vec<Summary> = Vec::with_capacity(args.bootstrap);
    let (mut s, mut w, mut st) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    for _ in 0..args.bootstrap {
        for k in 0..n {
            let i = rng.random_range(0..n);
            s[k] = scores[i];
            w[k] = weak[i];
            st[k] = strong[i];
        }
        samples.push(Curve::from_scores(&s, &w, &st).summary());
    }
    let ci = |value: f32, get: &dyn Fn(&Summary) -> f32| {
        let mut v: Vec<f32> = samples.iter().map(get).collect();
        v.sort_by(f32::total_cmp);
        let at = |q: f32| {
            v.get(((v.len() as f32 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(value)
        };
        WithCi {
            value,
            lo: at(0.025),
            hi: at(0.975),
        }
    };
    RouterRow {
        router: name.to_string(),
        apgr: ci(point.apgr, &|s| s.apgr),
        cpt50: ci(point.cpt50.unwrap_or(1.0), &|s| s.cpt50.unwrap_or(1.0)),
        cpt80: ci(point.cpt80.unwrap_or(1.0), &|s| s.cpt80.unwrap_or(1.0)),
        realised_share,
        curve,
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.datasets {
            writeln!(
                f,
                "{}: {} prompts ({} contaminated dropped), {}; weak {} acc {:.4}, strong {} acc {:.4}",
                d.dataset,
                d.prompts,
                d.dropped_contaminated,
                d.split,
                d.weak,
                d.weak_accuracy,
                d.strong,
                d.strong_accuracy
            )?;
            writeln!(
                f,
                "{:<22} {:>22} {:>24} {:>24} {:>10}",
                "router", "APGR [95% CI]", "CPT(50%) [95% CI]", "CPT(80%) [95% CI]", "share@cal"
            )?;
            let pct = |w: &WithCi| {
                format!(
                    "{:.2}% [{:.2}, {:.2}]",
                    100.0 * w.value,
                    100.0 * w.lo,
                    100.0 * w.hi
                )
            };
            for r in &d.rows {
                writeln!(
                    f,
                    "{:<22} {:>22} {:>24} {:>24} {:>10}",
                    r.router,
                    format!("{:.3} [{:.3}, {:.3}]", r.apgr.value, r.apgr.lo, r.apgr.hi),
                    pct(&r.cpt50),
                    pct(&r.cpt80),
                    r.realised_share
                        .map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
                )?;
            }
            if let Some((_, apgr, c50)) = ROUTELLM_BEST
                .iter()
                .find(|(name, ..)| d.dataset.contains(name))
            {
                writeln!(
                    f,
                    "{:<22} {:>22} {:>24} {:>24} {:>10}",
                    "RouteLLM best (paper)",
                    format!("{apgr:.3}"),
                    format!("{:.2}%", 100.0 * c50),
                    "-",
                    "-"
                )?;
            }
            if d.rows.iter().any(|r| r.router == CASCADE_ROUTER) {
                writeln!(
                    f,
                    "{CASCADE_ROUTER}: the weak model answers every prompt; its answer is kept or sent on to the strong model by the answer check ({} text features of the answer), so the share counts the strong calls a cascade adds",
                    ANSWER_FEATURES.len()
                )?;
            }
            if let Some(p) = &d.plot {
                writeln!(f, "plot: {}", p.display())?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "embeddings: {}; bootstrap: {} resamples; share@cal: strong-call share realised on test folds by a threshold set on training folds for {:.0}%",
            if self.embeddings {
                self.embedding.to_string()
            } else {
                "off (cheap features only)".to_string()
            },
            self.bootstrap,
            100.0 * self.target_share
        )
    }
}
