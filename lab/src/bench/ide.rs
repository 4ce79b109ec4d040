//! `tandem bench ide`: a keystroke trace through real source files, a completion at each pause as
//! llama.vim asks for it (the lines before the cursor as `input_prefix`, the line up to the
//! cursor as `prompt`, the lines after as `input_suffix`: the line is being written, so the rest
//! of it is not there yet), answered by
//! Tandem's `/infill` over HTTP and by llama.cpp (`benches/llama_cpp_ide_peer.py`, prompt cache
//! on) on the same GGUF, thread count, prompts and order. Latency percentiles split into jumps
//! (the cursor moved elsewhere) and in-line keystrokes (the user typed the next characters),
//! tokens computed per request, cache reuse and a quality proxy (the completion's first line
//! against the rest of the real line: exact, and its first 8 characters).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use tandem_artifacts::{FetchOptions, ProcessEnv as FetchEnv, resolve_model};
use tandem_gateway::config::{Config, IdeConfig, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_kernels::SplitMix64;
use tandem_local_model::{Engine, EngineConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct IdeArgs {
    /// Code model name or `.gguf` path.
    pub model: String,
    /// Kernel threads, both sides.
    pub threads: usize,
    /// Jumps per file; each is followed by `keystrokes` in-line requests.
    pub points: usize,
    /// In-line keystroke requests after each jump.
    pub keystrokes: usize,
    /// Tokens asked for per completion (it also ends at the end of the line).
    pub n_predict: usize,
    /// Source files typed through (default: frozen copies of two of this repository's files and
    /// a sample, in `benches/ide/`).
    pub files: Vec<PathBuf>,
    /// Tandem's variants to run: `default` (`[ide]`'s defaults: the cursor's line starts the
    /// middle, drafts), `psm` (llama.cpp's layout, only the common prefix reused), `psm-draft`
    /// (and prompt-lookup drafts), `psm-reuse` (moved runs reused: `[ide] cache_reuse = 32`),
    /// `jump` (the default with runs reused wherever a jump moved them: `[ide] jump_reuse =
    /// 32`), `line` (the default without drafts), `short` (the default with a quarter of its context
    /// tokens), `short-jump` (both `short` and `jump`), `spm` (suffix first), or `[ide]` settings
    /// written `key=value+key=value`.
    pub variants: Vec<String>,
    /// Context sizes: lines of prefix and of suffix.
    pub contexts: Vec<(usize, usize)>,
    /// List every request after the table.
    pub steps: bool,
}

impl Default for IdeArgs {
    fn default() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Self {
            model: "qwen2.5-coder-0.5b".into(),
            threads: 2,
            points: 4,
            keystrokes: 3,
            n_predict: 16,
            // Frozen copies of two of this repository's files (as of the 2026-12-08 table) and
            // a sample: the trace stays the same while the code it was taken from changes.
            files: vec![
                root.join("benches/ide/sample.rs.txt"),
                root.join("benches/ide/sample_peer.py.txt"),
                root.join("benches/ide/sample.py"),
            ],
            variants: vec!["default".into(), "psm".into()],
            contexts: vec![(256, 64), (64, 16)],
            steps: false,
        }
    }
}

/// One completion request of the trace.
#[derive(Debug, Clone)]
struct Step {
    jump: bool,
    input_prefix: String,
    prompt: String,
    input_suffix: String,
    /// The rest of the real line: what a perfect completion writes.
    truth: String,
}

/// The trace: per file, `points` jumps to a random line with code, the cursor somewhere in its
/// first half, then `keystrokes` steps typing 1-3 more characters of the real line.
fn trace(args: &IdeArgs, prefix_lines: usize, suffix_lines: usize) -> anyhow::Result<Vec<Step>> {
    let mut rng = SplitMix64::new(27);
    let mut steps = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        let candidates: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].trim().len() >= 16)
            .collect();
        if candidates.is_empty() {
            continue;
        }
        for _ in 0..args.points {
            let line_no = candidates[(rng.next_u64() % candidates.len() as u64) as usize];
            let line = lines[line_no];
            let indent = line.len() - line.trim_start().len();
            let span = (line.len() - indent) / 2;
            let mut col = indent + 1 + (rng.next_u64() % span.max(1) as u64) as usize;
            for k in 0..=args.keystrokes {
                if k > 0 {
                    col += 1 + (rng.next_u64() % 3) as usize;
                }
                while !line.is_char_boundary(col.min(line.len())) {
                    col += 1;
                }
                if col >= line.len() {
                    break;
                }
                let before = &lines[line_no.saturating_sub(prefix_lines)..line_no];
                let after = &lines[line_no + 1..(line_no + 1 + suffix_lines).min(lines.len())];
                let mut input_prefix = before.join("\n");
                if !before.is_empty() {
                    input_prefix.push('\n');
                }
                // The line is being written: nothing follows the cursor on it yet.
                let mut input_suffix = "\n".to_owned();
                input_suffix.push_str(&after.join("\n"));
                steps.push(Step {
                    jump: k == 0,
                    input_prefix,
                    prompt: line[..col].to_owned(),
                    input_suffix,
                    truth: line[col..].to_owned(),
                });
            }
        }
    }
    Ok(steps)
}

/// One answered request.
#[derive(Debug, Clone, Copy, Default)]
struct Answer {
    ms: f64,
    prompt_tokens: f64,
    computed: f64,
    exact: bool,
    first8: bool,
}

fn score(content: &str, truth: &str) -> (bool, bool) {
    let first_line = content.split('\n').next().unwrap_or("");
    let got = first_line.trim_end();
    let want = truth.trim_end();
    let n = want.chars().count().min(8);
    let head = |s: &str| s.chars().take(n).collect::<String>();
    (got == want, head(got) == head(want))
}

fn request_body(step: &Step, n_predict: usize) -> Value {
    json!({"input_prefix": step.input_prefix, "prompt": step.prompt,
           "input_suffix": step.input_suffix, "n_predict": n_predict, "stop": ["\n"],
           "temperature": 0, "cache_prompt": true})
}

/// A variant's `[ide]` settings.
fn variant(name: &str) -> anyhow::Result<String> {
    let quarter = IdeConfig::default().context_tokens / 4;
    Ok(match name {
        "default" => String::new(),
        "psm" => "layout = \"psm\"\ndraft_tokens = 0\n".into(),
        "psm-reuse" => "layout = \"psm\"\ncache_reuse = 32\ndraft_tokens = 0\n".into(),
        "psm-draft" => "layout = \"psm\"\n".into(),
        "jump" => "jump_reuse = 32\n".into(),
        // A quarter of the default's context: 384 prefix and 128 suffix tokens.
        "short" => format!("context_tokens = {quarter}\n"),
        // Both: a jump computes only the unseen lines of a quarter of the context.
        "short-jump" => format!("context_tokens = {quarter}\njump_reuse = 32\n"),
        "line" => "draft_tokens = 0\n".into(),
        "spm" => "layout = \"spm\"\ndraft_tokens = 0\n".into(),
        // Any other settings, written `key=value+key=value`.
        other if other.contains('=') => other.split('+').map(|kv| format!("{kv}\n")).collect(),
        other => {
            anyhow::bail!(
                "unknown variant `{other}` (expected default, psm, psm-draft, psm-reuse, jump, line, short, short-jump or spm)"
            )
        }
    })
}

async fn run_tandem(
    path: &Path,
    threads: usize,
    steps: &[Step],
    n_predict: usize,
    name: &str,
    mut log: Option<&mut String>,
) -> anyhow::Result<Vec<Answer>> {
    let config = Config::from_toml_str(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[ide]\n{}",
            variant(name)?
        ),
        &MapEnv::default(),
    )?;
    let ide = config
        .ide
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no [ide] section"))?;
    let engine = {
        let cfg = ide.tune(
            EngineConfig::new(path)
                .threads(threads)
                .kv_cache_tokens(8192),
        );
        tokio::task::spawn_blocking(move || Engine::start(cfg)).await??
    };
    let gateway = Gateway::start(
        config,
        GatewayOptions {
            local: LocalLoad::Engine(engine.clone()),
            ide: Some(engine.clone()),
            quiet: true,
            ..GatewayOptions::default()
        },
    )
    .await?;
    engine.clear_cache().await?;
    let client = reqwest_client()?;
    let url = format!("http://{}/infill", gateway.addr);
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let started = Instant::now();
        let body = request_body(step, n_predict).to_string();
        let text = post(&client, &url, body).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let v: Value = serde_json::from_str(&text)?;
        let content = v["content"].as_str().unwrap_or("");
        let (exact, first8) = score(content, &step.truth);
        if let Some(log) = log.as_deref_mut() {
            let _ = writeln!(
                log,
                "{name} jump={} ms={ms:.0} prompt={} computed={} truth={:?} answer={content:?}",
                step.jump, v["tokens_evaluated"], v["timings"]["prompt_n"], step.truth
            );
        }
        out.push(Answer {
            ms,
            prompt_tokens: v["tokens_evaluated"].as_f64().unwrap_or(0.0),
            computed: v["timings"]["prompt_n"].as_f64().unwrap_or(0.0),
            exact,
            first8,
        });
    }
    gateway.shutdown().await?;
    Ok(out)
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn reqwest_client() -> anyhow::Result<Http> {
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    )
}

async fn post(client: &Http, url: &str, body: String) -> anyhow::Result<String> {
    use http_body_util::BodyExt as _;
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    anyhow::ensure!(status.is_success(), "/infill answered {status}: {text}");
    Ok(text)
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(model: &Path, threads: usize) -> anyhow::Result<Self> {
        let python = std::env::var("TANDEM_LLAMA_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/work/venv-llama/bin/python"));
        anyhow::ensure!(
            python.exists(),
            "no llama.cpp python at {} (set TANDEM_LLAMA_PYTHON)",
            python.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/llama_cpp_ide_peer.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--model")
            .arg(model)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        );
        let mut peer = Self {
            child,
            stdin,
            stdout,
        };
        peer.read()?;
        Ok(peer)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut line)? > 0, "the peer exited");
        Ok(serde_json::from_str(&line)?)
    }

    fn ask(&mut self, body: &Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{body}")?;
        self.stdin.flush()?;
        self.read()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_peer(
    model: &Path,
    threads: usize,
    steps: &[Step],
    n_predict: usize,
) -> anyhow::Result<Vec<Answer>> {
    let mut peer = Peer::start(model, threads)?;
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let v = peer.ask(&request_body(step, n_predict))?;
        let (exact, first8) = score(v["content"].as_str().unwrap_or(""), &step.truth);
        out.push(Answer {
            ms: v["ms"].as_f64().unwrap_or(0.0),
            prompt_tokens: v["prompt_tokens"].as_f64().unwrap_or(0.0),
            computed: v["prompt_n"].as_f64().unwrap_or(0.0),
            exact,
            first8,
        });
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One row: latency percentiles of the jumps and the in-line keystrokes, tokens, quality.
fn row(name: &str, steps: &[Step], answers: &[Answer]) -> String {
    let pick = |jump: bool| {
        let mut v: Vec<f64> = steps
            .iter()
            .zip(answers)
            .filter(|(s, _)| s.jump == jump)
            .map(|(_, a)| a.ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (jumps, inline) = (pick(true), pick(false));
    let n = answers.len().max(1) as f64;
    let computed: f64 = answers.iter().map(|a| a.computed).sum::<f64>() / n;
    let prompt: f64 = answers.iter().map(|a| a.prompt_tokens).sum::<f64>() / n;
    let exact = answers.iter().filter(|a| a.exact).count();
    let first8 = answers.iter().filter(|a| a.first8).count();
    format!(
        "{name:<14} {:>7.0} {:>7.0} {:>7.0} | {:>7.0} {:>7.0} {:>7.0} | {:>6.0} {:>6.0} {:>5.0}% | {:>3}/{:<3} {:>3}/{:<3}",
        percentile(&inline, 0.5),
        percentile(&inline, 0.95),
        percentile(&inline, 0.99),
        percentile(&jumps, 0.5),
        percentile(&jumps, 0.95),
        percentile(&jumps, 0.99),
        prompt,
        computed,
        100.0 * (1.0 - computed / prompt.max(1.0)),
        exact,
        answers.len(),
        first8,
        answers.len(),
    )
}

/// Runs the trace at both context sizes on both sides and returns the table.
pub async fn run_ide(args: &IdeArgs) -> anyhow::Result<String> {
    let opts = FetchOptions::from_env(&FetchEnv);
    let path = resolve_model(&opts, &args.model)?;
    for name in &args.variants {
        variant(name)?;
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "model {} ({} threads), {} files, {} jumps + {} keystrokes each, n_predict {}, greedy, one line",
        args.model,
        args.threads,
        args.files.len(),
        args.points,
        args.keystrokes,
        args.n_predict
    );
    let mut log = String::new();
    for &(prefix_lines, suffix_lines) in &args.contexts {
        let steps = trace(args, prefix_lines, suffix_lines)?;
        let _ = writeln!(
            table,
            "\ncontext: prefix {prefix_lines} / suffix {suffix_lines} lines, {} requests ({} jumps)",
            steps.len(),
            steps.iter().filter(|s| s.jump).count()
        );
        let _ = writeln!(
            table,
            "{:<14} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6} {:>6} {:>6} | {:>7} {:>7}",
            "side",
            "in p50",
            "p95",
            "p99",
            "jump p50",
            "p95",
            "p99",
            "prompt",
            "comp.",
            "reuse",
            "exact",
            "first8"
        );
        let mut ours = Vec::new();
        for layout in &args.variants {
            let answers = run_tandem(
                &path,
                args.threads,
                &steps,
                args.n_predict,
                layout,
                args.steps.then_some(&mut log),
            )
            .await?;
            let _ = writeln!(
                table,
                "{}",
                row(&format!("tandem {layout}"), &steps, &answers)
            );
            ours.push((layout.clone(), answers));
        }
        match run_peer(&path, args.threads, &steps, args.n_predict) {
            Ok(theirs) => {
                let _ = writeln!(table, "{}", row("llama.cpp", &steps, &theirs));
                let p50 = |a: &[Answer], jump: bool| {
                    let mut v: Vec<f64> = steps
                        .iter()
                        .zip(a)
                        .filter(|(s, _)| s.jump == jump)
                        .map(|(_, x)| x.ms)
                        .collect();
                    v.sort_by(f64::total_cmp);
                    percentile(&v, 0.5)
                };
                for (layout, ours) in &ours {
                    let _ = writeln!(
                        table,
                        "p50 ratio (llama.cpp / tandem {layout}): in-line {:.2}, jumps {:.2}",
                        p50(&theirs, false) / p50(ours, false),
                        p50(&theirs, true) / p50(ours, true)
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(table, "llama.cpp peer not run: {e}");
            }
        }
    }
    let _ = writeln!(
        table,
        "\n(ms end to end; tandem over HTTP, llama.cpp in its own process through a pipe; prompt = mean prompt tokens, comp. = mean computed)"
    );
    if args.steps {
        let _ = write!(table, "\nrequests, in order:\n{log}");
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_types_the_real_line_and_scores_it() {
        let args = IdeArgs {
            points: 2,
            keystrokes: 2,
            ..IdeArgs::default()
        };
        let steps = trace(&args, 64, 16).unwrap();
        assert!(steps.iter().filter(|s| s.jump).count() >= 4);
        for s in &steps {
            assert!(!s.truth.is_empty());
            assert!(s.input_suffix.starts_with('\n'));
            assert!(!s.prompt.ends_with(&s.truth));
        }
        assert_eq!(score("abc\ndef", "abc"), (true, true));
        assert_eq!(score("abcdefgh_x", "abcdefgh_y"), (false, true));
    }
}
