//! The `tandem` command line: serve, config, models, router, bench and audit.

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
    /// Create, list and revoke virtual keys through a running gateway's admin API.
    Keys(KeysArgs),
    /// Check the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Args)]
struct KeysArgs {
    /// The admin API's base URL (`server.admin_listen`).
    #[arg(
        long,
        env = "TANDEM_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    admin_url: String,
    /// An admin key (one of `server.admin_key_hashes`).
    #[arg(long, env = "TANDEM_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key; the key is printed once and stored only as its hash.
    Create {
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// A model (route) the key may call; repeat for several; all when absent.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// US dollars per UTC day.
        #[arg(long)]
        daily_usd: Option<f64>,
        /// US dollars per UTC month.
        #[arg(long)]
        monthly_usd: Option<f64>,
        /// `local-only` or `cloud-only`.
        #[arg(long)]
        placement: Option<String>,
        /// A label, `name=value` (`team=search`, `user=ana`); repeat for several.
        #[arg(long = "meta")]
        metadata: Vec<String>,
    },
    /// List every key (revoked ones too), without the keys themselves.
    List,
    /// Revoke a key by its id (`vk_...`); every replica refuses it within a second.
    Revoke {
        /// The key's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit log files (the active one and its rotated ones, in any
    /// order); name the first broken record and exit non-zero on a break.
    Verify {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
        Command::Keys(args) => runtime()?.block_on(keys(args)),
        Command::Router(args) => run_lab("router", args),
        Command::Bench(args) => run_lab("bench", args),
        Command::Audit(AuditCommand::Verify { files }) => {
            match tandem_gateway::audit::verify(&files) {
                Ok(v) => {
                    let range = v
                        .seqs
                        .map_or("none".to_owned(), |(a, b)| format!("{a}..={b}"));
                    let end = if v.head_checked {
                        "its end matches the head file"
                    } else {
                        "no head file found, so records cut off the end would not show"
                    };
                    out(&format!(
                        "ok: {} records in {} file(s), records {range}, chain intact; {end}",
                        v.records, v.files
                    ));
                    Ok(())
                }
                Err(broken) => bail!("audit chain broken at {broken}"),
            }
        }
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

/// `tandem keys ...`: one call to the admin API, its JSON answer printed.
async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    use tandem_cloud_adapters::client::{HttpClient, HttpConfig, install_crypto_provider};
    install_crypto_provider();
    let client = HttpClient::new(&HttpConfig::default())?;
    let base = args.admin_url.trim_end_matches('/');
    let (method, url, body) = match args.command {
        KeysCommand::Create {
            name,
            models,
            rpm,
            tpm,
            daily_usd,
            monthly_usd,
            placement,
            metadata,
        } => {
            let mut meta = serde_json::Map::new();
            for pair in metadata {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--meta {pair}: expected name=value");
                };
                meta.insert(k.to_owned(), serde_json::Value::from(v));
            }
            let mut body = serde_json::json!({
                "name": name, "models": models, "requests_per_minute": rpm,
                "tokens_per_minute": tpm, "budget_daily_usd": daily_usd,
                "budget_monthly_usd": monthly_usd, "placement": placement, "metadata": meta,
            });
            if let Some(fields) = body.as_object_mut() {
                fields.retain(|_, v| !v.is_null());
            }
            (http::Method::POST, format!("{base}/admin/keys"), Some(body))
        }
        KeysCommand::List => (http::Method::GET, format!("{base}/admin/keys"), None),
        KeysCommand::Revoke { id } => (
            http::Method::DELETE,
            format!("{base}/admin/keys/{id}"),
            None,
        ),
    };
    let mut request = client.request_url(method, &url);
    if let Some(key) = &args.admin_key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = &body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = response.status();
    let text = response.text().await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if !status.is_success() {
        bail!("the admin API answered {status}: {pretty}");
    }
    out(&pretty);
    Ok(())
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
    out(&format!("listening on {}", gateway.url()));
    if let Some(admin) = gateway.admin_addr {
        tracing::info!(addr = %admin, "admin API listening");
        out(&format!("admin API on http://{admin}"));
    }
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            // SIGHUP reads the TLS certificate and key again at once.
            let mut hangup = signal(SignalKind::hangup())?;
            tokio::pin!(ctrl_c);
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => break,
                    _ = term.recv() => break,
                    _ = hangup.recv() => match gateway.reload_tls() {
                        Ok(()) => tracing::info!("SIGHUP: TLS files reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS files not reloaded; serving the previous ones"),
                    },
                }
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
