//! The `tandem-lab` command line: benchmarks with their peers, and the router's offline training
//! and evaluation. `tandem bench ...` and `tandem router ...` run it with the same arguments.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tandem_lab::bench::BenchArgs;

/// The allocator `tandem` itself runs with, so a benchmark's in-process gateway allocates as it
/// does when served.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tandem's tooling: benchmarks and the router's training and evaluation.
#[derive(Debug, Parser)]
#[command(name = "tandem-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train or evaluate the routing policy.
    #[command(subcommand)]
    Router(RouterCommand),
    /// Benchmarks (not tests): print a table with the peer and the ratio.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum RouterCommand {
    /// Train the quality predictor on a routing data set.
    Train {
        /// Data folder (RouteLLM-style).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the model.
        #[arg(long, default_value = "router-policy/models/default.json")]
        out: PathBuf,
    },
    /// Train the cascade's answer check on a data set with the weak model's answers.
    TrainAnswerCheck {
        /// Data folder (RouteLLM-style, with `<weak model>_response` columns).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the answer check.
        #[arg(long, default_value = "router-policy/models/answer_check.json")]
        out: PathBuf,
    },
    /// Evaluate routing policies on a data set.
    Eval {
        /// Data folder (RouteLLM-style).
        #[arg(long)]
        data: PathBuf,
        /// Where to write plots and the report.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Gateway overhead against the mock upstream: direct, through a bare hyper proxy, through
    /// nginx where installed and through Tandem, open-loop load.
    Overhead(tandem_lab::bench::OverheadArgs),
    /// What the production controls cost a request: no controls, a key's limits and budget
    /// checked in Redis, and exact-cache hits, against the mock upstream direct.
    Controls(tandem_lab::bench::ControlsArgs),
    /// Local model speed against llama.cpp on the same GGUF.
    Local {
        /// Model name or .gguf path.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// IDE code completion: a keystroke trace through source files on `/infill`, against
    /// llama.cpp on the same GGUF (its prompt cache on).
    Ide {
        /// Code model name or .gguf path.
        #[arg(long, default_value = "qwen2.5-coder-0.5b")]
        model: String,
        /// Threads (both sides).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Jumps per file.
        #[arg(long, default_value_t = 4)]
        points: usize,
        /// In-line keystroke requests after each jump.
        #[arg(long, default_value_t = 3)]
        keystrokes: usize,
        /// Source files to type through (default: the three in `benches/ide/`).
        #[arg(long)]
        file: Vec<std::path::PathBuf>,
        /// Tandem's variants: `default` (`[ide]`'s defaults: the cursor's line starts the
        /// middle, drafts), `psm` (llama.cpp's layout, prefix cache only), `psm-draft` (and
        /// prompt-lookup drafts), `psm-reuse` (moved runs reused), `jump` (the default with runs
        /// reused after jumps), `line` (the default without drafts), `short` (a quarter of the
        /// context), `spm`.
        #[arg(long, value_delimiter = ',', default_value = "default,psm")]
        variants: Vec<String>,
        /// Context sizes, prefix and suffix lines (`256x64`).
        #[arg(long, value_delimiter = ',', default_value = "256x64,64x16")]
        contexts: Vec<String>,
        /// List every request after the table (jump or not, latency, tokens computed, answer).
        #[arg(long)]
        steps: bool,
    },
    /// Routing decision latency.
    Router,
    /// Embeddings throughput (`minilm`) against ONNX Runtime's Python package on the same model.
    Embeddings {
        /// Seconds per batch size and side.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Speculative decoding against plain target streaming, over emulated round trips.
    Speculative {
        /// The drafting model.
        #[arg(long)]
        drafter: Option<String>,
        /// The target model.
        #[arg(long)]
        target: Option<String>,
        /// How the target holds its weights: as_stored, q8_0 (the default: a higher-precision
        /// target than the Q4_1 drafter on the same file), f16 or f32.
        #[arg(long)]
        target_format: Option<String>,
        /// Emulated round trips, ms.
        #[arg(long, value_delimiter = ',', default_value = "5,20,50,100")]
        rtts: Vec<u64>,
        /// Emulated target step times, ms.
        #[arg(long, value_delimiter = ',', default_value = "15,30")]
        steps: Vec<u64>,
        /// Prompts per cell.
        #[arg(long, default_value_t = BenchArgs::DEFAULT_PROMPTS)]
        prompts: usize,
        /// Tokens generated per prompt (short answers mostly measure the one-off prompt prefill).
        #[arg(long, default_value_t = BenchArgs::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// Kernel threads of the drafter's engine (the target's engine gets one).
        #[arg(long, default_value_t = 1)]
        drafter_threads: usize,
    },
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tandem_gateway::log_fields::init();
    match cli.command {
        Command::Router(RouterCommand::Train { data, out: path }) => {
            let args = tandem_lab::router::TrainArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_lab::router::train(&args)?.to_string());
            Ok(())
        }
        Command::Router(RouterCommand::TrainAnswerCheck { data, out: path }) => {
            let args = tandem_lab::router::TrainArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_lab::router::train_answer_check(&args)?.to_string());
            Ok(())
        }
        Command::Router(RouterCommand::Eval { data, out: path }) => {
            let args = tandem_lab::router::EvalArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_lab::router::eval(&args)?.to_string());
            Ok(())
        }
        Command::Bench(BenchCommand::Controls(args)) => {
            out(&tandem_lab::bench::run_controls(&args)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Overhead(args)) => {
            let report = tandem_lab::bench::run_overhead(&args)?;
            out(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::Ide {
            model,
            threads,
            points,
            keystrokes,
            file,
            variants,
            contexts,
            steps,
        }) => {
            let contexts = contexts
                .iter()
                .map(|c| {
                    let (p, s) = c
                        .split_once('x')
                        .ok_or_else(|| anyhow::anyhow!("--contexts: `{c}` is not PREFIXxSUFFIX"))?;
                    Ok((p.parse()?, s.parse()?))
                })
                .collect::<anyhow::Result<Vec<(usize, usize)>>>()?;
            let mut args = tandem_lab::bench::IdeArgs {
                model,
                threads,
                points,
                keystrokes,
                variants,
                contexts,
                steps,
                ..Default::default()
            };
            if !file.is_empty() {
                args.files = file;
            }
            let report = runtime()?.block_on(tandem_lab::bench::run_ide(&args))?;
            out(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::Local { model, threads }) => {
            out(&tandem_lab::bench::run_local(&model, threads)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Speculative {
            drafter,
            target,
            target_format,
            rtts,
            steps,
            prompts,
            max_tokens,
            drafter_threads,
        }) => {
            let mut args = BenchArgs {
                rtts_ms: rtts,
                steps_ms: steps,
                prompts,
                max_tokens,
                drafter_threads,
                ..Default::default()
            };
            if let Some(f) = target_format {
                args.target_format = tandem_local_model::WeightFormat::parse(&f)?;
            }
            if let Some(d) = drafter {
                args.drafter = d;
            }
            if let Some(t) = target {
                args.target = t;
            }
            let report = runtime()?.block_on(tandem_lab::bench::bench_speculative(args))?;
            out(&report.to_string());
            Ok(())
        }
        Command::Bench(BenchCommand::Embeddings { seconds }) => {
            out(&runtime()?.block_on(tandem_lab::bench::run_embeddings(seconds))?);
            Ok(())
        }
        Command::Bench(BenchCommand::Router) => {
            let report = tandem_lab::bench::router::bench_decide(&Default::default())?;
            out(&report.to_string());
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
