//! Decision-latency benchmark (`tandem bench router`): the policy alone, the policy with a cached
//! embedding, the policy with a fresh static embedding (the gateway's path on a miss), and the
//! policy with a fresh full embedding at two truncation lengths.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use tandem_router_policy::Result;
use tandem_router_policy::backend::{BackendCandidate, BackendProfile, Price, Site};
use tandem_router_policy::config::RouterConfig;
use tandem_router_policy::encoder::{Encoder, EncoderConfig, default_cache_root};
use tandem_router_policy::features::RequestFeatures;
use tandem_router_policy::router::Router;
use tandem_router_policy::rules::RouteRules;

/// Arguments of [`bench_decide`].
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Iterations of the fast (cached) cases.
    pub iterations: usize,
    /// Iterations of the cases that run the encoder.
    pub encoder_iterations: usize,
    /// Cache root for the encoder files (None: the standard one).
    pub cache_root: Option<PathBuf>,
    /// Truncation lengths measured for fresh embeddings.
    pub max_tokens: Vec<usize>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            iterations: 2000,
            encoder_iterations: 200,
            cache_root: None,
            max_tokens: vec![128, 32],
        }
    }
}

/// Latency percentiles of one case, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// What was measured.
    pub case: String,
    /// Samples.
    pub samples: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

/// The benchmark table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// One row per case.
    pub rows: Vec<BenchRow>,
    /// Why encoder cases are missing, if they are.
    pub note: Option<String>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<52} {:>8} {:>11} {:>11} {:>11} {:>9}",
            "case", "samples", "p50 µs", "p99 µs", "mean µs", "p99/peer"
        )?;
        let peer = self.rows.first().map_or(1.0, |r| r.p99_us.max(1e-9));
        for r in &self.rows {
            writeln!(
                f,
                "{:<52} {:>8} {:>11.1} {:>11.1} {:>11.1} {:>8.1}x",
                r.case,
                r.samples,
                r.p50_us,
                r.p99_us,
                r.mean_us,
                r.p99_us / peer
            )?;
        }
        if let Some(n) = &self.note {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "peer: the first row (policy on cheap features only, no embedding)"
        )
    }
}

fn row(case: &str, mut us: Vec<f64>) -> BenchRow {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| {
        us.get(((us.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    BenchRow {
        case: case.to_string(),
        samples: us.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        mean_us: us.iter().sum::<f64>() / us.len().max(1) as f64,
    }
}

/// Two local-and-cloud candidates typical of a deployment.
pub fn sample_candidates() -> Vec<BackendCandidate> {
    let local = BackendProfile {
        name: "smollm2".into(),
        kind: Site::Local,
        strength: 0.0,
        price: Price::default(),
        serial: true,
        verifies_drafts: false,
        drafts: true,
        prior_ttft_ms: 80.0,
        prior_itl_ms: 10.0,
    };
    let cloud = BackendProfile {
        name: "openai".into(),
        kind: Site::Cloud,
        strength: 1.0,
        price: Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: 1.25,
        },
        serial: false,
        verifies_drafts: false,
        drafts: false,
        prior_ttft_ms: 400.0,
        prior_itl_ms: 15.0,
    };
    vec![
        BackendCandidate::from_profile(local),
        BackendCandidate::from_profile(cloud),
    ]
}

const PROMPTS: [&str; 6] = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four. How much does she make selling the rest at $2 each?",
    "Write a Rust function that parses a TOML file into a struct and reports the path of any invalid key.",
    "What is the capital of Australia?",
    "Explain the difference between TCP congestion control algorithms Reno and CUBIC, with the equations for the window growth.",
    "Translate to French: the meeting is moved to Thursday afternoon.",
    "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\nA. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of taste.\nC. loss of taste only.\nD. none of the above.\nAnswer:",
];

/// Runs the benchmark with the shipped default model.
pub fn bench_decide(args: &BenchArgs) -> Result<BenchReport> {
    let router = Router::load_default(RouterConfig::default())?;
    let candidates = sample_candidates();
    let rules = RouteRules::default();
    let mut rows = Vec::new();
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e6
    };

    let mut us = Vec::with_capacity(args.iterations);
    // The first rounds warm caches and the allocator; they are not counted.
    for i in 0..args.iterations + 200 {
        let prompt = PROMPTS[i % PROMPTS.len()];
        let t = time(&mut || {
            let f = RequestFeatures::from_prompt(prompt, None);
            std::hint::black_box(router.decide(&f, &candidates, &rules));
        });
        if i >= 200 {
            us.push(t);
        }
    }
    rows.push(row("features + decide, no embedding (peer)", us));

    let root = args.cache_root.clone().unwrap_or_else(default_cache_root);
    let mut note = None;
    let encoder = match Encoder::with_config(EncoderConfig {
        pool_size: 1,
        ..EncoderConfig::from_cache_root(&root)
    }) {
        Ok(e) => Some(e),
        Err(e) => {
            note = Some(format!("encoder cases skipped: {e}"));
            None
        }
    };
    if let Some(encoder) = &encoder {
        for p in PROMPTS {
            encoder.embed(p)?;
        }
        let mut us = Vec::with_capacity(args.iterations);
        for i in 0..args.iterations {
            let prompt = PROMPTS[i % PROMPTS.len()];
            us.push(time(&mut || {
                let e = encoder.embed(prompt).ok();
                let f = RequestFeatures::from_prompt(prompt, e);
                std::hint::black_box(router.decide(&f, &candidates, &rules));
            }));
        }
        rows.push(row("embed (LRU hit) + features + decide", us));
    }
    // What the gateway does on a miss: the static embedding now, the full one later in the
    // background (not queued here: no cache, so only the decision path is timed).
    if let Ok(enc) = Encoder::with_config(EncoderConfig {
        pool_size: 1,
        cache_capacity: 0,
        ..EncoderConfig::from_cache_root(&root)
    }) && enc.has_static()
    {
        let mut us = Vec::with_capacity(args.iterations);
        for i in 0..args.iterations {
            let prompt = format!("case {i}: {} {} {}", PROMPTS[3], PROMPTS[5], PROMPTS[1]);
            let mut failed = None;
            us.push(time(&mut || match enc.embed_for_decision(&prompt) {
                Ok(found) => {
                    let mut f = RequestFeatures::from_prompt(&prompt, None);
                    if let Some((e, source)) = found {
                        f = f.with_embedding(e, source);
                    }
                    std::hint::black_box(router.decide(&f, &candidates, &rules));
                }
                Err(e) => failed = Some(e),
            }));
            if let Some(e) = failed {
                return Err(e);
            }
        }
        rows.push(row(
            "static embedding (miss, gateway path) + features + decide",
            us,
        ));
    }
    for &max_tokens in &args.max_tokens {
        let Ok(enc) = Encoder::with_config(EncoderConfig {
            pool_size: 1,
            max_tokens,
            cache_capacity: 0,
            ..EncoderConfig::from_cache_root(&root)
        }) else {
            continue;
        };
        let mut us = Vec::with_capacity(args.encoder_iterations);
        for i in 0..args.encoder_iterations {
            // A fresh prefix defeats every cache; three prompts joined exceed 128 tokens, so the
            // truncation length is what is measured.
            let prompt = format!("case {i}: {} {} {}", PROMPTS[3], PROMPTS[5], PROMPTS[1]);
            let mut failed = None;
            us.push(time(&mut || match enc.embed(&prompt) {
                Ok(e) => {
                    let f = RequestFeatures::from_prompt(&prompt, Some(Arc::clone(&e)));
                    std::hint::black_box(router.decide(&f, &candidates, &rules));
                }
                Err(e) => failed = Some(e),
            }));
            if let Some(e) = failed {
                return Err(e);
            }
        }
        rows.push(row(
            &format!("embed (miss, ≤{max_tokens} tokens) + features + decide"),
            us,
        ));
    }
    Ok(BenchReport { rows, note })
}
