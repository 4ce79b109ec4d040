//! `tandem bench local`: the engine's own bench next to llama.cpp (`benches/llama_cpp_peer.py`)
//! on the same GGUF and thread count, with the ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_artifacts::{FetchOptions, ProcessEnv as FetchEnv, resolve_model};

/// Runs both and returns the table.
pub fn run_local(model: &str, threads: usize) -> anyhow::Result<String> {
    let opts = FetchOptions::from_env(&FetchEnv);
    let path = resolve_model(&opts, model)?;
    let ours = super::engine::bench_local(&path, threads)?;
    let mut table = String::new();
    let _ = writeln!(table, "tandem engine\n{}", ours.table());
    let peer = run_peer(&path, threads);
    match &peer {
        Ok(v) => {
            let _ = writeln!(
                table,
                "{:<24}{:>12}{:>12}{:>10}",
                "figure", "tandem", "llama.cpp", "ratio"
            );
            for (label, key, ours_value, higher_is_better) in [
                (
                    "prefill 256 (tok/s)",
                    "prefill_tok_s/256",
                    ours.prefill_256_tok_s,
                    true,
                ),
                (
                    "prefill 1024 (tok/s)",
                    "prefill_tok_s/1024",
                    ours.prefill_1024_tok_s,
                    true,
                ),
                ("decode (tok/s)", "decode_tok_s", ours.decode_tok_s, true),
                ("ttft cold (ms)", "ttft_ms", ours.ttft_ms, false),
                ("peak rss (MB)", "peak_rss_mb", ours.peak_rss_mb, false),
            ] {
                // Keys with a `/` name a nested field (the peer groups prefill by length).
                let pointer = format!("/{key}");
                let Some(theirs) = v.pointer(&pointer).and_then(serde_json::Value::as_f64) else {
                    continue;
                };
                // Ratio > 1 means Tandem is better.
                let ratio = if higher_is_better {
                    ours_value / theirs
                } else {
                    theirs / ours_value
                };
                let _ = writeln!(
                    table,
                    "{label:<24}{ours_value:>12.1}{theirs:>12.1}{ratio:>10.2}"
                );
            }
            let _ = writeln!(table, "(ratio > 1: tandem better)");
        }
        Err(e) => {
            let _ = writeln!(table, "llama.cpp peer not run: {e}");
        }
    }
    Ok(table)
}

fn peer_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TANDEM_LLAMA_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("/work/venv-llama/bin/python");
    default.exists().then_some(default)
}

fn run_peer(model: &Path, threads: usize) -> anyhow::Result<serde_json::Value> {
    let python = peer_python()
        .ok_or_else(|| anyhow::anyhow!("no llama.cpp python (set TANDEM_LLAMA_PYTHON)"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/llama_cpp_peer.py");
    let output = Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(model)
        .arg("--threads")
        .arg(threads.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!(
            "peer printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(err) = v.get("error") {
        anyhow::bail!("peer failed: {err}");
    }
    Ok(v)
}
