//! The `tandem` command line: serve, config, models, router and bench.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tandem_artifacts::{
    FetchOptions, ProcessEnv as FetchEnv, fetch, fetch_all, known_artifacts, locate,
};
use tandem_gateway::config::{Config, ProcessEnv, hash_api_key};
use tandem_gateway::speculative::BenchArgs;
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};

/// Every allocation of the binary (request buffers, JSON trees, headers) goes through mimalloc:
/// under load glibc's malloc spent a large share of the CPU on consolidation and locking. Set
/// here, not in the library, so programs embedding the gateway keep their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tandem: a hybrid edge-cloud LLM gateway (OpenAI- and Anthropic-compatible).
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API. With no config: the local model only, on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Check a config file or hash an API key.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Fetch or list model artifacts.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Train or evaluate the routing policy.
    #[command(subcommand)]
    Router(RouterCommand),
    /// Benchmarks (not tests): print a table with the peer and the ratio.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (`tandem.toml`); env `TANDEM__SECTION__KEY` overrides its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Never download: the local model must already be in the cache.
    #[arg(long)]
    offline: bool,
    /// Listen address, overriding the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print a summary.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the sha256 hash of an API key, for `server.api_key_hashes`.
    HashKey {
        /// The key (read from standard input when absent).
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download an artifact (default: the default local model) into the cache.
    Fetch {
        /// Artifact name.
        name: Option<String>,
        /// Every known artifact.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// List known artifacts and whether each is cached.
    List,
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
    Overhead(tandem_gateway::bench::OverheadArgs),
    /// Local model speed against llama.cpp on the same GGUF.
    Local {
        /// Model name or .gguf path.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Routing decision latency.
    Router,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in log files, and not formatted on every span.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .fmt_fields(tandem_gateway::log_fields::LogFields)
        .init();
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve(args)),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file, &ProcessEnv)
                .with_context(|| format!("{} is not valid", file.display()))?;
            out(&format!(
                "{} is valid\n{}",
                file.display(),
                config.summary()
            ));
            Ok(())
        }
        Command::Config(ConfigCommand::HashKey { key }) => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if key.is_empty() {
                bail!("empty key");
            }
            out(&hash_api_key(&key));
            Ok(())
        }
        Command::Models(ModelsCommand::Fetch { name, all }) => runtime()?.block_on(async {
            let opts = FetchOptions::from_env(&FetchEnv);
            if all {
                for paths in fetch_all(&opts).await? {
                    out(&format!("ok {}", paths.dir.display()));
                }
            } else {
                let name =
                    name.unwrap_or_else(|| tandem_gateway::config::DEFAULT_LOCAL_MODEL.to_owned());
                let paths = fetch(&opts, &name).await?;
                out(&format!("ok {}", paths.dir.display()));
            }
            Ok(())
        }),
        Command::Models(ModelsCommand::List) => {
            let opts = FetchOptions::from_env(&FetchEnv);
            out(&format!("cache: {}", opts.cache_root.display()));
            for spec in known_artifacts() {
                let state = match locate(&opts.cache_root, spec.name) {
                    Some(p) => format!("cached  {}", p.primary().display()),
                    None => "missing".to_owned(),
                };
                out(&format!("{:<20} {:?}  {state}", spec.name, spec.kind));
            }
            Ok(())
        }
        Command::Router(RouterCommand::Train { data, out: path }) => {
            let args = tandem_router_policy::TrainArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_router_policy::train(&args)?.to_string());
            Ok(())
        }
        Command::Router(RouterCommand::TrainAnswerCheck { data, out: path }) => {
            let args = tandem_router_policy::TrainArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_router_policy::train_answer_check(&args)?.to_string());
            Ok(())
        }
        Command::Router(RouterCommand::Eval { data, out: path }) => {
            let args = tandem_router_policy::EvalArgs {
                data,
                out: path,
                ..Default::default()
            };
            out(&tandem_router_policy::eval(&args)?.to_string());
            Ok(())
        }
        Command::Bench(BenchCommand::Overhead(args)) => {
            let report = tandem_gateway::bench::run_overhead(&args)?;
            out(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::Local { model, threads }) => {
            out(&tandem_gateway::bench::run_local(&model, threads)?);
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
            let report =
                runtime()?.block_on(tandem_gateway::speculative::bench_speculative(args))?;
            out(&report.to_string());
            Ok(())
        }
        Command::Bench(BenchCommand::Router) => {
            let report = tandem_router_policy::bench::bench_decide(&Default::default())?;
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path, &ProcessEnv)
            .with_context(|| format!("{} is not valid", path.display()))?,
        None => Config::default_local_with(&ProcessEnv)
            .context("the embedded default with TANDEM__ overrides is not valid")?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let options = GatewayOptions {
        local: if args.offline {
            LocalLoad::Offline
        } else {
            LocalLoad::FetchAndLoad
        },
        ..GatewayOptions::default()
    };
    let gateway = Gateway::start(config, options)
        .await
        .context("cannot start the server")?;
    tracing::info!(addr = %gateway.addr, "tandem listening");
    // The address goes to stdout too, so scripts (and tests) can read the bound port.
    out(&format!("listening on http://{}", gateway.addr));
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        ctrl_c.await?;
        Ok::<_, std::io::Error>(())
    };
    shutdown.await?;
    tracing::info!("shutting down");
    gateway.shutdown().await?;
    Ok(())
}
