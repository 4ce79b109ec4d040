//! Where a fresh embedding's time goes: tokenization against the ONNX run, per truncation length
//! and per session option set, over real RouteLLM prompts.
//!
//! `cargo run -p tandem-lab --example encoder_profile -- <routellm dir> [samples]`

#![allow(clippy::print_stdout)] // a profiling tool: its table goes to stdout

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tandem_lab::router::dataset::{Dataset, discover};
use tandem_router_policy::encoder::{EncoderConfig, default_cache_root};
use tokenizers::{Tokenizer, TruncationParams};

fn pct(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(
        args.next()
            .context("usage: encoder_profile <data> [samples]")?,
    );
    let samples: usize = args.next().map_or(Ok(150), |s| s.parse())?;
    anyhow::ensure!(samples > 0, "samples must be at least 1");
    let mut prompts = Vec::new();
    for path in discover(&data)? {
        let d = Dataset::load(&path)?;
        let step = (d.rows.len() / samples).max(1);
        prompts.extend(
            d.rows
                .iter()
                .step_by(step)
                .take(samples)
                .map(|r| r.prompt.clone()),
        );
    }
    let cfg = EncoderConfig::from_cache_root(&default_cache_root());
    let env = ort::environment::init_from(&cfg.lib_path)?
        .with_name("p")
        .build()?;
    let mut tok = Tokenizer::from_file(&cfg.tokenizer_path).map_err(anyhow::Error::msg)?;
    // The file pads every prompt to 128; the encoder pads a batch to its longest only.
    tok.with_padding(None);
    tok.with_truncation(None).map_err(anyhow::Error::msg)?;

    type Opt = (
        &'static str,
        fn(
            ort::session::builder::SessionBuilder,
        ) -> ort::Result<ort::session::builder::SessionBuilder>,
    );
    let opts: Vec<Opt> = vec![
        ("ort defaults", |b| Ok(b)),
        ("intra1 inter1 nospin (current)", |b| {
            b.with_intra_threads(1)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)
                .map_err(Into::into)
        }),
        ("intra1 nospin L3 seq", |b| {
            b.with_intra_threads(1)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)?
                .with_optimization_level(GraphOptimizationLevel::All)?
                .with_parallel_execution(false)
                .map_err(Into::into)
        }),
        ("intra2 spin L3", |b| {
            b.with_intra_threads(2)?
                .with_intra_op_spinning(true)?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(Into::into)
        }),
        ("intra1 nospin L3 nomempattern", |b| {
            b.with_intra_threads(1)?
                .with_intra_op_spinning(false)?
                .with_optimization_level(GraphOptimizationLevel::All)?
                .with_memory_pattern(false)
                .map_err(Into::into)
        }),
    ];
    anyhow::ensure!(
        !prompts.is_empty(),
        "no prompts found in the data directory"
    );
    println!("{} prompts", prompts.len());
    let lens: Vec<usize> = prompts
        .iter()
        .map(|p| {
            tok.encode(p.as_str(), true)
                .map(|e| e.get_ids().len())
                .unwrap_or(0)
        })
        .collect();
    println!(
        "untruncated tokens p50 {} p90 {} p99 {} max {}",
        pct(lens.iter().map(|&l| l as f64).collect(), 0.5),
        pct(lens.iter().map(|&l| l as f64).collect(), 0.9),
        pct(lens.iter().map(|&l| l as f64).collect(), 0.99),
        lens.iter().max().unwrap_or(&0)
    );
    for (name, f) in &opts {
        let mut session: Session = f(Session::builder(&env)?)
            .map_err(anyhow::Error::from)?
            .commit_from_file(&cfg.model_path)?;
        for max in [128usize, 64, 32] {
            let mut t = tok.clone();
            t.with_truncation(Some(TruncationParams {
                max_length: max,
                ..Default::default()
            }))
            .map_err(anyhow::Error::msg)?;
            let (mut tt, mut rt) = (Vec::new(), Vec::new());
            for (i, p) in prompts.iter().enumerate() {
                let t0 = Instant::now();
                let enc = t.encode(p.as_str(), true).map_err(anyhow::Error::msg)?;
                let t1 = Instant::now();
                let n = enc.get_ids().len();
                let ids: Vec<i64> = enc.get_ids().iter().map(|&x| x as i64).collect();
                let shape = [1i64, n as i64];
                let out = session.run(ort::inputs![
                    "input_ids" => Tensor::from_array((shape, ids))?,
                    "attention_mask" => Tensor::from_array((shape, vec![1i64; n]))?,
                    "token_type_ids" => Tensor::from_array((shape, vec![0i64; n]))?,
                ])?;
                std::hint::black_box(&out);
                drop(out);
                let t2 = Instant::now();
                if i >= 5 {
                    tt.push((t1 - t0).as_secs_f64() * 1e3);
                    rt.push((t2 - t1).as_secs_f64() * 1e3);
                }
            }
            println!(
                "{name:<34} max {max:>3}: tokenize p50 {:.3} p99 {:.3} ms | run p50 {:.2} p90 {:.2} p99 {:.2} ms",
                pct(tt.clone(), 0.5),
                pct(tt, 0.99),
                pct(rt.clone(), 0.5),
                pct(rt.clone(), 0.9),
                pct(rt, 0.99)
            );
        }
    }
    Ok(())
}
