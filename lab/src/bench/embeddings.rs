//! `tandem bench embeddings`: the local embeddings model (`minilm` as `/v1/embeddings` serves
//! it: the gateway's embedder on its two-session pool) against the same ONNX file and tokenizer
//! on ONNX Runtime's Python package (`benches/embeddings_peer.py`, one session with two threads),
//! inputs per second at batch 1 and 32, with the ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_cloud_adapters::openai::{EmbeddingInput, EmbeddingsRequest, EncodingFormat};
use tandem_gateway::executor::embeddings::{LocalEmbedder, embedder_config};
use tandem_router_policy::encoder::default_cache_root;

/// The inputs both sides embed: 64 sentences of about 25 tokens.
fn texts(n: usize) -> Vec<String> {
    let topics = [
        "cats",
        "taxes",
        "compilers",
        "rain",
        "football",
        "bread",
        "satellites",
        "jazz",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Sentence number {i} talks about {} and how it relates to everyday life in a \
                 small town by the sea.",
                topics[i % topics.len()]
            )
        })
        .collect()
}

/// Inputs per second with `clients` callers each embedding batches of `size` for `seconds`.
async fn throughput(
    embedder: Arc<LocalEmbedder>,
    size: usize,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let pool = texts(64);
    let request = |i: usize| EmbeddingsRequest {
        model: "minilm".into(),
        input: EmbeddingInput::Texts(
            (0..size)
                .map(|k| pool[(i + k) % pool.len()].clone())
                .collect(),
        ),
        encoding_format: EncodingFormat::Float,
        dimensions: None,
        body: Default::default(),
    };
    embedder
        .embed(&request(0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let embedder = embedder.clone();
        let requests: Vec<EmbeddingsRequest> = (0..64).map(|i| request(i * size + c)).collect();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut i = 0;
            while Instant::now() < until {
                embedder
                    .embed(&requests[i % requests.len()])
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                done += size;
                i += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Runs both sides for `seconds` per batch size and returns the table.
pub async fn run_embeddings(seconds: f64) -> anyhow::Result<String> {
    let root = default_cache_root();
    let config = embedder_config(&root);
    config
        .check_files()
        .map_err(|e| anyhow::anyhow!("{e} (run `tandem models fetch minilm-l6-v2-int8`)"))?;
    let embedder = Arc::new(LocalEmbedder::new(root.clone()));
    let mut ours = Vec::new();
    for size in [1, 32] {
        // Two callers keep both sessions of the pool busy: the two cores a peer thread pair gets.
        ours.push(throughput(embedder.clone(), size, 2, seconds).await?);
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<22}{:>14}{:>16}{:>8}",
        "inputs/s", "tandem", "onnxruntime-py", "ratio"
    );
    match run_peer(&config.model_path, &config.tokenizer_path, seconds) {
        Ok(peer) => {
            for (i, size) in [1, 32].into_iter().enumerate() {
                let theirs = peer
                    .get(format!("batch_{size}"))
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(f64::NAN);
                let _ = writeln!(
                    table,
                    "{:<22}{:>14.1}{:>16.1}{:>8.2}",
                    format!("batch {size}"),
                    ours[i],
                    theirs,
                    ours[i] / theirs
                );
            }
            let _ = writeln!(
                table,
                "(ratio > 1: tandem faster; peer: {})",
                peer.get("runtime").and_then(|v| v.as_str()).unwrap_or("?")
            );
        }
        Err(e) => {
            for (i, size) in [1, 32].into_iter().enumerate() {
                let _ = writeln!(table, "{:<22}{:>14.1}", format!("batch {size}"), ours[i]);
            }
            let _ = writeln!(table, "onnxruntime peer not run: {e}");
        }
    }
    Ok(table)
}

/// The peer's venv: `TANDEM_EMBED_PYTHON`, else one made in the target dir with `onnxruntime`,
/// `tokenizers` and `numpy` from the package index.
fn peer_python() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TANDEM_EMBED_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let venv = PathBuf::from(target).join("bench-embeddings-py");
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()?;
        anyhow::ensure!(status.success(), "python3 -m venv failed");
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "onnxruntime",
                "tokenizers",
                "numpy",
            ])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "pip install onnxruntime tokenizers numpy failed"
        );
    }
    Ok(python)
}

fn run_peer(model: &Path, tokenizer: &Path, seconds: f64) -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/embeddings_peer.py");
    let output = Command::new(peer_python()?)
        .arg(script)
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(["--threads", "2", "--seconds", &seconds.to_string()])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!(
            "peer printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
