//! The `tandem` command line: serve, config, models, router and bench.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tandem_artifacts::{
    FetchOptions, ProcessEnv as FetchEnv, fetch, fetch_all, known_artifacts, locate,
};
use tandem_gateway::config::{Config, ProcessEnv, hash_api_key};
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
    Router(LabArgs),
    /// Benchmarks (not tests): print a table with the peer and the ratio.
    Bench(LabArgs),
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
    /// Also serve the code model for editor plugins (`/infill`, `/v1/completions` with `suffix`),
    /// fetched like the chat model: the config's `[ide]`, or its defaults when it has none.
    #[arg(long)]
    ide: bool,
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

/// Arguments handed on to `tandem-lab` as they are.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
struct LabArgs {
    /// The `tandem-lab` subcommand's arguments (`--help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tandem_gateway::log_fields::init();
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
        Command::Router(args) => run_lab("router", args),
        Command::Bench(args) => run_lab("bench", args),
    }
}

/// Runs `tandem-lab COMMAND ARGS...` in this process's place: the tooling ships as its own binary,
/// next to `tandem` (or on the `PATH`), so the serving binary carries none of it.
fn run_lab(command: &str, args: LabArgs) -> anyhow::Result<()> {
    let sibling = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("tandem-lab"))
        .filter(|path| path.is_file());
    let lab = sibling.unwrap_or_else(|| PathBuf::from("tandem-lab"));
    let mut child = std::process::Command::new(&lab);
    child.arg(command).args(&args.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let err = child.exec();
        Err(lab_missing(command, err))
    }
    #[cfg(not(unix))]
    {
        let status = child.status().map_err(|err| lab_missing(command, err))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// Says how to get `tandem-lab` when it cannot be started.
fn lab_missing(command: &str, err: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "`tandem {command}` runs `tandem-lab`, which could not be started ({err}); build it with \
         `cargo build --release -p tandem-lab` (it lands next to `tandem`) or install it with \
         `cargo install --path lab`"
    )
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
    if args.ide && config.ide.is_none() {
        config.ide = Some(tandem_gateway::config::IdeConfig::default());
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
