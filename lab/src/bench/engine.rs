//! `bench_local`: prefill and decode throughput, time to first token and memory of the engine,
//! measured through the public engine API the gateway uses.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use tandem_local_model::{
    Engine, EngineConfig, Error, GenerateEvent, GenerateRequest, Result, SamplingParams,
};

/// Figures from one [`bench_local`] run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Model id.
    pub model: String,
    /// Kernel threads.
    pub threads: usize,
    /// The kernels' SIMD path.
    pub kernel_path: String,
    /// Prefill throughput of a 256-token prompt (tokens/s, cold cache).
    pub prefill_256_tok_s: f64,
    /// Prefill throughput of a 1024-token prompt (tokens/s, cold cache).
    pub prefill_1024_tok_s: f64,
    /// Decode throughput after a short prompt (tokens/s).
    pub decode_tok_s: f64,
    /// Time to first token of a 256-token prompt, cold cache (ms).
    pub ttft_ms: f64,
    /// Time to first token of the same prompt with its prefix cached (ms).
    pub ttft_cached_ms: f64,
    /// Resident memory now (MB).
    pub rss_mb: f64,
    /// Peak resident memory (MB).
    pub peak_rss_mb: f64,
}

impl BenchReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        format!(
            "model {} | threads {} | kernels {}\n\
             {:<24}{:>12.1}\n{:<24}{:>12.1}\n{:<24}{:>12.1}\n{:<24}{:>12.1}\n{:<24}{:>12.1}\n{:<24}{:>12.1}\n{:<24}{:>12.1}\n",
            self.model,
            self.threads,
            self.kernel_path,
            "prefill 256 (tok/s)",
            self.prefill_256_tok_s,
            "prefill 1024 (tok/s)",
            self.prefill_1024_tok_s,
            "decode (tok/s)",
            self.decode_tok_s,
            "ttft cold (ms)",
            self.ttft_ms,
            "ttft cached (ms)",
            self.ttft_cached_ms,
            "rss (MB)",
            self.rss_mb,
            "peak rss (MB)",
            self.peak_rss_mb,
        )
    }
}

/// Resident and peak resident memory of this process in MB (`/proc/self/status`; 0 elsewhere).
pub fn rss_mb() -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs one generation to completion; returns (time to first token, time of each token).
fn timed(
    engine: &Engine,
    prompt: Vec<u32>,
    params: SamplingParams,
) -> Result<(Duration, Vec<Duration>)> {
    let start = Instant::now();
    let mut rx = engine.generate(GenerateRequest { prompt, params })?;
    let mut times = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenerateEvent::Token { .. } => times.push(start.elapsed()),
            GenerateEvent::Finished { .. } => break,
            GenerateEvent::Error(e) => return Err(Error::InvalidArgument(e)),
        }
    }
    let first = times
        .first()
        .copied()
        .ok_or_else(|| Error::InvalidArgument("no token generated".into()))?;
    Ok((first, times))
}

/// A prompt of exactly `n` tokens made from ordinary text.
fn prompt_of(engine: &Engine, n: usize) -> Vec<u32> {
    let text = "The quick brown fox jumps over the lazy dog while the engineers measure how fast \
                a small language model reads its prompt and writes its answer. ";
    let mut ids = Vec::with_capacity(n + 64);
    while ids.len() < n {
        ids.extend(engine.tokenizer().encode(text, false));
    }
    ids.truncate(n);
    ids
}

/// Measures the engine on a model file with `threads` kernel threads. Call from a plain thread
/// (not inside an async runtime): it blocks.
pub fn bench_local(model_path: &Path, threads: usize) -> Result<BenchReport> {
    let engine = Engine::start(
        EngineConfig::new(model_path)
            .threads(threads)
            .kv_cache_tokens(4096)
            .max_context(2048),
    )?;
    let once = |n: usize| -> Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..2 {
            engine_clear(&engine)?;
            let (ttft, _) = timed(&engine, prompt_of(&engine, n), SamplingParams::greedy(1))?;
            best = best.min(ttft.as_secs_f64());
        }
        Ok(n as f64 / best)
    };
    // Warm-up: page in the weights.
    timed(&engine, prompt_of(&engine, 32), SamplingParams::greedy(4))?;
    let prefill_256 = once(256)?;
    let prefill_1024 = once(1024)?;

    engine_clear(&engine)?;
    let decode_n = 128;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(decode_n)
    };
    let (_, times) = timed(&engine, prompt_of(&engine, 16), params)?;
    let decode = match (times.first(), times.last()) {
        (Some(a), Some(b)) if times.len() > 1 && b > a => {
            (times.len() - 1) as f64 / (*b - *a).as_secs_f64()
        }
        _ => 0.0,
    };

    // The same 256-token prompt the llama.cpp peer times, cold and then with its prefix cached.
    let ttft_prompt = prompt_of(&engine, 256);
    engine_clear(&engine)?;
    let (cold, _) = timed(&engine, ttft_prompt.clone(), SamplingParams::greedy(1))?;
    let (warm, _) = timed(&engine, ttft_prompt, SamplingParams::greedy(1))?;
    let (rss, peak) = rss_mb();
    Ok(BenchReport {
        model: engine.info().id.clone(),
        threads,
        kernel_path: tandem_kernels::selected_path().to_owned(),
        prefill_256_tok_s: prefill_256,
        prefill_1024_tok_s: prefill_1024,
        decode_tok_s: decode,
        ttft_ms: cold.as_secs_f64() * 1e3,
        ttft_cached_ms: warm.as_secs_f64() * 1e3,
        rss_mb: rss,
        peak_rss_mb: peak,
    })
}

fn engine_clear(engine: &Engine) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::EngineStopped(e.to_string()))?;
    rt.block_on(engine.clear_cache())
}
