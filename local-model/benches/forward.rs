//! Cost of one forward pass of the real SmolLM2-135M over `n` new rows (logits for every row, as
//! batched verification needs them) against one decode step, after a 64-token context; plus
//! prefill throughput of a 256-token prompt. Prints a table, then runs criterion on the key cases.
//!
//! `cargo bench -p tandem-local-model --bench forward` (needs `tandem models fetch smollm2-135m`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_kernels::{KernelPool, selected_path};
use tandem_local_model::gguf::GgufFile;
use tandem_local_model::model::{BatchItem, Model, Scratch, SeqKv};

const CONTEXT: usize = 64;

fn load() -> Option<Model> {
    let root = default_cache_root(&ProcessEnv);
    let Some(a) = locate(&root, "smollm2-135m") else {
        println!("smollm2-135m is not cached; run `tandem models fetch smollm2-135m`");
        return None;
    };
    let gguf = Arc::new(GgufFile::open(a.primary()).unwrap());
    Some(Model::load(gguf).unwrap())
}

fn tokens(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 300 + (i * 7919 + salt * 104_729) % 40_000)
        .collect()
}

/// A sequence holding `CONTEXT` tokens, and the scratch for steps of up to 256 rows.
struct Bed {
    kv: SeqKv,
    scratch: Scratch,
    logits: Vec<f32>,
}

impl Bed {
    fn new(model: &Model, pool: &KernelPool) -> Self {
        let mut bed = Bed {
            kv: SeqKv::new(&model.cfg),
            scratch: Scratch::new(&model.cfg, 256, CONTEXT + 300),
            logits: Vec::new(),
        };
        let ctx = tokens(CONTEXT, 1);
        bed.forward(model, pool, &ctx, CONTEXT);
        bed
    }

    fn forward(&mut self, model: &Model, pool: &KernelPool, toks: &[u32], logits_from: usize) {
        let mut items = [BatchItem {
            kv: &mut self.kv,
            tokens: toks,
            logits_from,
        }];
        model
            .forward(pool, &mut items, &mut self.scratch, &mut self.logits)
            .unwrap();
    }

    /// Scores `toks` after the context (logits for all), then forgets them.
    fn verify(&mut self, model: &Model, pool: &KernelPool, toks: &[u32]) {
        self.forward(model, pool, toks, 0);
        self.kv.truncate(CONTEXT);
    }
}

fn best_of(mut f: impl FnMut(), budget: Duration) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn table(model: &Model) {
    println!();
    println!(
        "SmolLM2-135M forward over n rows after {CONTEXT} tokens, logits for every row; kernels {}",
        selected_path()
    );
    println!(
        "{:>4} {:>4} {:>10} {:>8} {:>10}",
        "thr", "n", "ms", "× n=1", "rows/s"
    );
    for thr in [1usize, 2] {
        let pool = KernelPool::new(thr).unwrap();
        let mut bed = Bed::new(model, &pool);
        let mut base = 0.0;
        for n in [1usize, 2, 4, 8, 16] {
            let toks = tokens(n, 2);
            let s = best_of(
                || bed.verify(model, &pool, &toks),
                Duration::from_millis(700),
            );
            if n == 1 {
                base = s;
            }
            println!(
                "{:>4} {:>4} {:>10.2} {:>8.2} {:>10.1}",
                thr,
                n,
                s * 1e3,
                s / base,
                n as f64 / s
            );
        }
        let prompt = tokens(256, 3);
        let s = best_of(
            || {
                let mut kv = SeqKv::new(&model.cfg);
                let mut items = [BatchItem {
                    kv: &mut kv,
                    tokens: &prompt,
                    logits_from: prompt.len() - 1,
                }];
                model
                    .forward(&pool, &mut items, &mut bed.scratch, &mut bed.logits)
                    .unwrap();
            },
            Duration::from_millis(1500),
        );
        println!(
            "{thr:>4} prefill 256 tokens: {:.1} ms = {:.0} tok/s",
            s * 1e3,
            256.0 / s
        );
    }
    println!();
}

fn benches(c: &mut Criterion) {
    let Some(model) = load() else {
        return;
    };
    table(&model);
    let pool = KernelPool::new(1).unwrap();
    let mut bed = Bed::new(&model, &pool);
    let mut g = c.benchmark_group("forward_smollm2");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for n in [1usize, 4, 16] {
        let toks = tokens(n, 4);
        g.bench_function(BenchmarkId::new("rows/1thr", n), |b| {
            b.iter(|| bed.verify(&model, &pool, black_box(&toks)))
        });
    }
    g.finish();
}

criterion_group!(forward_benches, benches);
criterion_main!(forward_benches);
