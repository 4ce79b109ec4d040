//! Offline training (`tandem router train`): fit one predictor on every dataset under a path,
//! calibrate the share thresholds on out-of-fold predictions, and write a [`ModelFile`].

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::router::dataset::{Dataset, discover};
use crate::router::eval::{ANSWER_CHECK_SPEC, Embedder, featurize, featurize_answers, pick_models};
use tandem_router_policy::answer::{ANSWER_FEATURES, AnswerCheck};
use tandem_router_policy::calibration::threshold_for_share;
use tandem_router_policy::model::{Example, ModelSpec, QualityModel, TrainSet};
use tandem_router_policy::model_file::ModelFile;
use tandem_router_policy::{Error, Result};

/// Arguments of [`train`].
#[derive(Debug, Clone)]
pub struct TrainArgs {
    /// A CSV file or a directory (of directories) of them, as for eval.
    pub data: PathBuf,
    /// Where to write the model file (JSON).
    pub out: PathBuf,
    /// Weak model column (default: RouteLLM's Mixtral column, else the first).
    pub weak: Option<String>,
    /// Strong model column (default: RouteLLM's GPT-4 column, else the second).
    pub strong: Option<String>,
    /// The predictor.
    pub spec: ModelSpec,
    /// Use MiniLM embeddings; false: cheap features only.
    pub use_embeddings: bool,
    /// Cache root; default: the standard one.
    pub cache_root: Option<PathBuf>,
    /// Folds for the out-of-fold share calibration.
    pub folds: usize,
    /// Seed.
    pub seed: u64,
    /// Which embedding the model is trained on (when `use_embeddings`).
    pub embedding: crate::router::eval::EmbeddingKind,
}

impl Default for TrainArgs {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::from("router-policy/models/default.json"),
            weak: None,
            strong: None,
            // The kind shipped in models/default.json (best APGR on MMLU's held-out subjects).
            spec: ModelSpec::defaults()[2],
            use_embeddings: true,
            cache_root: None,
            folds: 5,
            seed: 17,
            embedding: crate::router::eval::EmbeddingKind::default(),
        }
    }
}

/// What [`train`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The model file written.
    pub path: PathBuf,
    /// Training prompts (after dropping contaminated ones).
    pub prompts: usize,
    /// The predictor kind.
    pub model: String,
    /// Out-of-fold (share, threshold) table stored in the file.
    pub share_thresholds: Vec<(f32, f32)>,
    /// File size in bytes.
    pub bytes: u64,
}

impl fmt::Display for TrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} ({} bytes): {} on {} prompts",
            self.path.display(),
            self.bytes,
            self.model,
            self.prompts
        )?;
        write!(f, "held-out thresholds:")?;
        for (s, t) in self.share_thresholds.iter().step_by(2) {
            write!(f, " {:.0}%→{t:.3}", 100.0 * s)?;
        }
        Ok(())
    }
}

/// Trains a predictor on all datasets under `args.data` and writes the model file.
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    if args.folds < 2 {
        return Err(Error::InvalidArgument("folds must be at least 2".into()));
    }
    let embedder = if args.use_embeddings {
        Some(Embedder::open(args.cache_root.as_deref(), args.embedding)?)
    } else {
        None
    };
    let encoder_id = embedder
        .as_ref()
        .map_or_else(|| "none".to_string(), |e| e.model_id().to_string());
    let mut examples = Vec::new();
    let mut names = Vec::new();
    let canonical = vec!["weak".to_string(), "strong".to_string()];
    for path in discover(&args.data)? {
        let data = Dataset::load(&path)?;
        let (wi, si) = pick_models(&data, args.weak.as_deref(), args.strong.as_deref())?;
        let xs = featurize(&data, embedder.as_ref())?;
        // Datasets may name their models differently; training sees them as weak and strong.
        examples.extend(xs.into_iter().zip(&data.rows).map(|(x, r)| Example {
            x,
            scores: vec![r.scores[wi], r.scores[si]],
        }));
        names.push(data.name.clone());
    }
    let set = TrainSet {
        models: canonical,
        examples,
    };
    let n = set.examples.len();
    let share_thresholds = held_out_share_table(&args.spec, &set, args.folds, args.seed)?;
    let model = QualityModel::train(&args.spec, &set, 1, 0, args.seed)?;
    let file = ModelFile {
        version: 1,
        encoder: encoder_id,
        trained_on: format!("{} ({} prompts, contaminated dropped)", names.join("+"), n),
        share_thresholds: share_thresholds.clone(),
        model,
    };
    file.save(&args.out)?;
    Ok(TrainReport {
        path: args.out.clone(),
        prompts: n,
        model: file.model_name(),
        share_thresholds,
        bytes: std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0),
    })
}

/// Out-of-fold predictions of `spec` on `set` (weak is model 0, strong model 1), turned into a
/// table of (share at or above, threshold) every 5%.
fn held_out_share_table(
    spec: &ModelSpec,
    set: &TrainSet,
    folds: usize,
    seed: u64,
) -> Result<Vec<(f32, f32)>> {
    let n = set.examples.len();
    let mut oof = vec![0f32; n];
    for f in 0..folds {
        let train_set = TrainSet {
            models: set.models.clone(),
            examples: set
                .examples
                .iter()
                .enumerate()
                .filter(|(i, _)| i % folds != f)
                .map(|(_, e)| e.clone())
                .collect(),
        };
        let m = QualityModel::train(spec, &train_set, 1, 0, seed + f as u64)?;
        for i in (0..n).filter(|i| i % folds == f) {
            oof[i] = m.predict(&set.examples[i].x);
        }
    }
    Ok((0..=20)
        .map(|k| k as f32 / 20.0)
        .map(|s| (s, threshold_for_share(&oof, s).min(1.0)))
        .collect())
}

/// Trains the answer check (`tandem router train-answer-check`) on every dataset under
/// `args.data` that carries the weak model's answers, and writes an [`AnswerCheck`] file. The
/// label is whether the strong model did better than the weak model's answer; `args.spec` and
/// the embedding settings are not used (the check reads the answer text alone).
pub fn train_answer_check(args: &TrainArgs) -> Result<TrainReport> {
    if args.folds < 2 {
        return Err(Error::InvalidArgument("folds must be at least 2".into()));
    }
    let mut examples = Vec::new();
    let mut names = Vec::new();
    for path in discover(&args.data)? {
        let data = Dataset::load(&path)?;
        let (wi, si) = pick_models(&data, args.weak.as_deref(), args.strong.as_deref())?;
        let Some(answers) = featurize_answers(&data, wi).filter(|a| !a.is_empty()) else {
            continue;
        };
        examples.extend(answers.into_iter().zip(&data.rows).map(|(x, r)| Example {
            x,
            scores: vec![r.scores[wi], r.scores[si]],
        }));
        names.push(data.name.clone());
    }
    if examples.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no dataset under {} has a `<weak model>_response` column",
            args.data.display()
        )));
    }
    let set = TrainSet {
        models: vec!["weak".to_string(), "strong".to_string()],
        examples,
    };
    let n = set.examples.len();
    let share_thresholds = held_out_share_table(&ANSWER_CHECK_SPEC, &set, args.folds, args.seed)?;
    let check = AnswerCheck {
        version: 1,
        trained_on: format!(
            "{} weak-model answers ({n}, contaminated dropped)",
            names.join("+")
        ),
        features: ANSWER_FEATURES.iter().map(|f| f.to_string()).collect(),
        share_thresholds: share_thresholds.clone(),
        model: QualityModel::train(&ANSWER_CHECK_SPEC, &set, 1, 0, args.seed)?,
    };
    check.save(&args.out)?;
    Ok(TrainReport {
        path: args.out.clone(),
        prompts: n,
        model: format!("answer check ({})", ANSWER_CHECK_SPEC.name()),
        share_thresholds,
        bytes: std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0),
    })
}
