//! The HTTP server: application state from config, the routes, the one middleware stack, the
//! local model's background load, and serving with graceful shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::{ListenerExt, TapIo};
use tandem_artifacts::{FetchOptions, ProcessEnv as FetchEnv, fetch, find_artifact, resolve_model};
use tandem_cloud_adapters::Provider;
use tandem_local_model::{Engine, EngineConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

use crate::audit::AuditLog;
use crate::cache::ResponseCache;
use crate::config::{BackendConfig, BackendKind, Config, LocalConfig};
use crate::error::Error;
use crate::executor::Executor;
use crate::executor::cloud::CloudExecutor;
use crate::executor::embeddings::LocalEmbedder;
use crate::executor::local::{LocalExecutor, LocalModel, LocalState};
use crate::handlers::{chat, completions, count_tokens, embeddings, infill, ops, responses};
use crate::metrics::Metrics;
use crate::middleware::{
    auth::AuthLayer, body_limit::BodyLimitLayer, concurrency::LoadShedLayer,
    controls::ControlsLayer, first_token_timeout::FirstTokenTimeoutLayer, metrics::MetricsLayer,
    observe::ObserveLayer, request_id::RequestIdLayer, route_header::RouteHeaderLayer,
    timeout::TimeoutLayer, trace,
};
use crate::observe::Observer;
use crate::providers::build_provider;
use crate::resilience::Resilience;
use crate::routing::{self, LearnedRouting};
use crate::speculative::SpeculativeExecutor;
use crate::speculative::service::gateway_routes as verify_routes;
use crate::state::{AppState, FeedbackSink, MemoryFeedback, RequestLog};
use crate::tls::{RELOAD_INTERVAL, ServerTls, TlsListener};

/// How the local model gets loaded.
#[derive(Clone, Default)]
pub enum LocalLoad {
    /// Fetch it if missing (unless offline), then load it in the background.
    #[default]
    FetchAndLoad,
    /// Only load from the cache or a path; never use the network.
    Offline,
    /// Use this running engine.
    Engine(Engine),
}

/// What [`Gateway::start`] needs besides the config.
#[derive(Clone, Default)]
pub struct GatewayOptions {
    /// How to load the local model (and, offline or not, the code model).
    pub local: LocalLoad,
    /// A running engine to serve as the `[ide]` code model instead of loading one.
    pub ide: Option<Engine>,
    /// No progress bars.
    pub quiet: bool,
    /// Providers to use instead of building them from config, by backend name.
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
    /// Where feedback goes (in memory when absent).
    pub feedback: Option<Arc<dyn FeedbackSink>>,
}

/// Connections the kernel queues for the gateway to accept (it caps this at `somaxconn`).
/// Clients open a connection per request in flight, so a stall of a few hundred milliseconds
/// at thousands of requests a second brings that many at once; past the queue they are dropped
/// and reset. tokio's default is 1024.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for serving, with address reuse (a restart need not wait out `TIME_WAIT`) and
/// an accept queue of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds the shared state: one executor per backend, the local model (loading in the background
/// unless given), metrics.
/// Fails when a learned route's policy cannot start.
pub fn build_state(config: Config, options: &GatewayOptions) -> Result<Arc<AppState>, Error> {
    let uses_policy = config
        .routes
        .values()
        .any(|r| r.policy == crate::config::RoutePolicy::Learned);
    let metrics = Arc::new(Metrics::new());
    let local = config.local.as_ref().map(|local_cfg| {
        let model = Arc::new(LocalModel::new(LocalState::Loading(format!(
            "model {}",
            local_cfg.model
        ))));
        match &options.local {
            LocalLoad::Engine(engine) => model.set(LocalState::Ready(engine.clone())),
            load => spawn_local_load(
                model.clone(),
                local_cfg.clone(),
                config.cache_dir.clone(),
                matches!(load, LocalLoad::Offline),
                options.quiet,
                // The chat model has its own speculative paths, and its answers stay a cold
                // run's.
                |cfg| cfg,
            ),
        }
        model
    });
    // The code model loads beside the chat model, the same way (fetched unless offline).
    let ide = config.ide.as_ref().map(|ide_cfg| {
        let model = Arc::new(LocalModel::new(LocalState::Loading(format!(
            "code model {}",
            ide_cfg.model
        ))));
        match &options.ide {
            Some(engine) => model.set(LocalState::Ready(engine.clone())),
            None => spawn_local_load(
                model.clone(),
                LocalConfig {
                    model: ide_cfg.model.clone(),
                    threads: ide_cfg.threads,
                    kv_cache_tokens: ide_cfg.kv_cache_tokens,
                    ..LocalConfig::default()
                },
                config.cache_dir.clone(),
                matches!(options.local, LocalLoad::Offline),
                options.quiet,
                {
                    let ide_cfg = ide_cfg.clone();
                    move |cfg| ide_cfg.tune(cfg)
                },
            ),
        }
        model
    });
    let mut executors: BTreeMap<String, Arc<dyn Executor>> = BTreeMap::new();
    for (name, backend) in &config.backends {
        let executor: Arc<dyn Executor> = match (backend.kind, &local) {
            (BackendKind::Local, Some(model)) => {
                Arc::new(LocalExecutor::new(backend.clone(), model.clone()))
            }
            (BackendKind::Local, None) => continue,
            (BackendKind::Speculative, _) => {
                match speculative_executor(&config, backend, &local, &metrics) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(backend = %name, error = %e, "speculative backend unusable");
                        continue;
                    }
                }
            }
            _ => {
                let provider = options
                    .providers
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| build_provider(backend));
                Arc::new(CloudExecutor::new(backend.clone(), provider))
            }
        };
        executors.insert(name.clone(), executor);
    }
    let policy = match LearnedRouting::new(&config) {
        Ok(p) => {
            let p = Arc::new(p);
            routing::spawn_persistence(p.clone());
            Some(p)
        }
        // Learned routes would lose their placement and key rules without it: refuse to start.
        Err(e) if uses_policy => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "the routing policy is unavailable (no route uses it)");
            None
        }
    };
    let resilience = Resilience::new(
        config.resilience.clone(),
        config
            .backends
            .iter()
            .map(|(name, b)| (name.as_str(), b.kind)),
    );
    let audit = AuditLog::open(&config.audit)
        .map_err(|e| crate::error::Error::Internal(format!("audit log: {e}")))?
        .map(Arc::new);
    let embedder =
        Arc::new(LocalEmbedder::new(config.cache_dir.clone().unwrap_or_else(
            tandem_router_policy::encoder::default_cache_root,
        )));
    let store = crate::store::open(&config, &metrics, &FetchEnv)?;
    let cache = ResponseCache::open(&config, store.clone(), metrics.clone());
    let controls =
        crate::controls::Controls::start(&config, store.clone(), metrics.clone(), &FetchEnv);
    let config = Arc::new(config);
    let observer = Observer::start(config.clone(), metrics.clone());
    crate::observe::replicas::spawn_publisher(observer.clone(), store.clone());
    let ide_rates = crate::routing::ide::IdeRates::new(
        config
            .ide
            .as_ref()
            .and_then(|i| i.cloud.as_ref())
            .map_or(400, |c| c.latency_ms),
    );
    Ok(Arc::new(AppState {
        audit,
        store,
        controls,
        policy,
        resilience,
        embedder,
        observer,
        cache,
        config,
        executors,
        local,
        ide,
        editors: Arc::default(),
        ide_rates,
        metrics,
        requests: RequestLog::default(),
        feedback: options
            .feedback
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryFeedback::default())),
    }))
}

/// The executor of a `speculative` backend: its target's verify protocol, the local drafter.
fn speculative_executor(
    config: &Config,
    backend: &BackendConfig,
    local: &Option<Arc<LocalModel>>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Executor>, crate::error::Error> {
    let target = backend
        .speculative
        .as_ref()
        .and_then(|s| config.backends.get(&s.target))
        .ok_or_else(|| crate::error::Error::Internal("speculative target missing".into()))?;
    Ok(Arc::new(SpeculativeExecutor::new(
        backend.clone(),
        target.clone(),
        local.clone(),
        config.cache_dir.clone(),
        metrics.clone(),
    )?))
}

/// Fetches (unless offline) and loads the local model on a background task; the engine's own
/// thread does the loading work. `tune` adds the model's own engine settings (the code model's
/// moved runs and drafts).
fn spawn_local_load(
    model: Arc<LocalModel>,
    local: LocalConfig,
    cache_dir: Option<PathBuf>,
    offline: bool,
    quiet: bool,
    tune: impl FnOnce(EngineConfig) -> EngineConfig + Send + 'static,
) {
    tokio::spawn(async move {
        let mut opts = FetchOptions::from_env(&FetchEnv);
        if let Some(dir) = cache_dir {
            opts.cache_root = dir;
        }
        opts.offline |= offline;
        opts.quiet = quiet;
        if find_artifact(&local.model).is_some() && !opts.offline {
            model.set(LocalState::Loading(format!("fetching {}", local.model)));
            if let Err(e) = fetch(&opts, &local.model).await {
                tracing::error!(error = %e, "fetching the local model failed");
                model.set(LocalState::Failed(format!(
                    "{e} (run `tandem models fetch {}`)",
                    local.model
                )));
                return;
            }
        }
        let path = match resolve_model(&opts, &local.model) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "the local model is not available");
                model.set(LocalState::Failed(format!(
                    "{e} (run `tandem models fetch {}`)",
                    local.model
                )));
                return;
            }
        };
        model.set(LocalState::Loading(format!("loading {}", path.display())));
        let cfg = tune(
            EngineConfig::new(path)
                .threads(local.threads)
                .kv_cache_tokens(local.kv_cache_tokens)
                .weight_format(local.weights),
        );
        match tokio::task::spawn_blocking(move || Engine::start(cfg)).await {
            Ok(Ok(engine)) => {
                tracing::info!(model = %engine.info().name, "local model ready");
                model.set(LocalState::Ready(engine));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "loading the local model failed");
                model.set(LocalState::Failed(e.to_string()));
            }
            Err(e) => model.set(LocalState::Failed(format!("loader task failed: {e}"))),
        }
    });
}

/// The routes and the middleware stack around them.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.config.limits.clone();
    let verify = match (&state.local, &state.config.local) {
        (Some(model), Some(cfg)) => verify_routes(model.clone(), &cfg.verify),
        _ => Router::new(),
    };
    let stack = ServiceBuilder::new()
        .layer(RouteHeaderLayer) // x-tandem-route on every answer: "gateway; no backend (<why>)" where no route set one
        .layer(RequestIdLayer) // x-request-id: taken or generated, echoed on the response
        .layer(trace::layer()) // one tracing span per request, carrying the request id
        .layer(MetricsLayer::new(state.metrics.clone())) // requests, latency, errors by endpoint and backend
        .layer(ObserveLayer::new(state.observer.clone())) // the request's meter and span; x-tandem-overhead-ms, x-tandem-cost
        .layer(AuthLayer::new(&state.config.api_key_hashes).with_keys(state.controls.keys.clone())) // 401 without a valid API key (config or virtual, when any exists)
        .layer(LoadShedLayer::new(
            limits.max_concurrency,
            limits.retry_after_secs,
            Some(state.metrics.clone()),
        )) // 429 + retry-after over the concurrency limit
        .layer(TimeoutLayer::new(limits.request_timeout)) // total time: 504, or an error event mid-stream
        .layer(FirstTokenTimeoutLayer::new(limits.first_token_timeout)) // a stream's first event must come in time
        .layer(BodyLimitLayer::new(limits.max_body_bytes)) // 413 for bodies over the limit
        .layer(ControlsLayer::new(state.controls.clone())); // a key's models and budget, rate limits (403/429 before any upstream call), x-ratelimit-* headers
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/infill", post(infill::infill))
        .route("/v1/messages", post(chat::messages))
        .route("/v1/models", get(ops::models))
        .route("/v1/models/{id}", get(ops::model))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens::count_tokens),
        )
        .route("/v1/feedback", post(ops::feedback))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
        .merge(verify) // /v1/tandem/verify and /generate: this model as a speculative target
        .method_not_allowed_fallback(ops::method_not_allowed) // known path, wrong method: a shaped 405
        .layer(stack)
}

/// A running gateway.
pub struct Gateway {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    /// Shared state (metrics, local model, feedback).
    pub state: Arc<AppState>,
    /// The admin listener's bound address, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// TLS on the listeners, when configured.
    tls: Option<Arc<ServerTls>>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    task: JoinHandle<std::io::Result<()>>,
    admin_task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stop` turns true.
fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<ServerTls>>,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    let stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    // Every handler and its middleware stack become services once, here. Served as a plain
    // `Router`, axum redoes that for each accepted connection (the lazily layered fallbacks
    // rebuilt, the route tables copied): CPU spent most when a stalled gateway's clients
    // open a burst of new connections.
    let app = app.with_state(()).into_make_service();
    Ok(match tls {
        Some(tls) => {
            let listener = TlsListener::new(no_delay(listener), tls)?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(no_delay(listener), app)
                .with_graceful_shutdown(stop)
                .await
        }),
    })
}

/// `listener` with Nagle's algorithm off on every accepted connection: a stream event or answer
/// leaves when it is written, not after the client acknowledges the previous segment (which a
/// delayed ACK can hold back for tens of milliseconds).
pub fn no_delay(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    fn set(tcp: &mut TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    }
    listener.tap_io(set as fn(&mut TcpStream))
}

impl Gateway {
    /// Binds `config.listen` and serves in the background.
    pub async fn start(config: Config, options: GatewayOptions) -> std::io::Result<Self> {
        let listener = bind(config.listen)?;
        Self::start_on(listener, config, options)
    }

    /// Serves on an already bound listener (its accept queue as the caller made it).
    pub fn start_on(
        listener: TcpListener,
        config: Config,
        options: GatewayOptions,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let admin_listener = match &config.controls.admin {
            Some(admin) => Some(bind(admin.listen)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(settings) => {
                let tls = ServerTls::load(settings).map_err(std::io::Error::other)?;
                tls.watch(RELOAD_INTERVAL);
                Some(tls)
            }
            None => None,
        };
        let state = build_state(config, &options).map_err(std::io::Error::other)?;
        let app = router(state.clone());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = serve(listener, app, rx.clone(), tls.clone())?;
        let (admin_addr, admin_task) = match (admin_listener, &state.config.controls.admin) {
            (Some(l), Some(admin)) => {
                let admin_addr = l.local_addr()?;
                let app = crate::admin::router(state.clone(), admin);
                // The admin listener takes the same TLS (and client certificates) as the API.
                (Some(admin_addr), Some(serve(l, app, rx, tls.clone())?))
            }
            _ => (None, None),
        };
        Ok(Self {
            addr,
            state,
            admin_addr,
            tls,
            shutdown: Some(tx),
            task,
            admin_task,
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Reads the TLS files again now (as on SIGHUP), without waiting for the change check; the
    /// previous certificate stays when they cannot be used. Nothing to do without TLS.
    pub fn reload_tls(&self) -> Result<(), crate::config::ConfigError> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// The admin API's base URL, when it listens.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// Stops accepting connections and waits for in-flight requests.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(admin) = self.admin_task.take() {
            let _ = admin.await;
        }
        // In-flight requests (streams included) finish within the grace period; what is left
        // after it is cut, so a stuck client cannot hold a deploy.
        let grace = self.state.config.resilience.shutdown_grace;
        let served = match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "requests still in flight after the shutdown grace period; cutting them"
                );
                self.task.abort();
                Ok(())
            }
        };
        self.state.controls.stop().await;
        self.state.store.close();
        // The bandit's last lessons survive a restart.
        if let Some(policy) = self.state.policy.clone() {
            policy.stop_persistence();
            let _ = tokio::task::spawn_blocking(move || {
                policy.persist();
                policy.wait_for_encoder_load();
            })
            .await;
        }
        served
    }

    /// Waits until the server stops (it runs until shutdown).
    pub async fn wait(self) -> std::io::Result<()> {
        let Self { task, shutdown, .. } = self;
        let _keep_open = shutdown;
        match task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    #[tokio::test]
    async fn a_restarted_gateway_binds_the_port_its_predecessor_served() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (served, _) = first.accept().await.unwrap();
        // The server closes first, so its side of the connection lingers in TIME_WAIT.
        drop(served);
        drop(first);
        drop(client);
        let second = bind(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let _client = TcpStream::connect(addr).await.unwrap();
        second.accept().await.unwrap();
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = no_delay(listener);
        let client = TcpStream::connect(addr).await.unwrap();
        let (server_side, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(server_side.nodelay().unwrap());
    }
}
