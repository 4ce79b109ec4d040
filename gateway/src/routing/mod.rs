//! The learned routing policy in the gateway: request hints from headers, features (cheap ones
//! plus the prompt embedding when the encoder is loaded), live backend state, the decision, its
//! log, feedback and the bandit state's persistence.

pub mod ide;
pub mod log;
pub mod prompt;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tandem_cloud_adapters::{ChatRequest, ContentPart};
use tandem_router_policy::{
    AnswerCheck, BackendCandidate, BackendProfile, BackendState, BanditStore, Choice, Decision,
    Encoder, FileBanditStore, Placement, RequestFeatures, RouteRules, Router,
};

use crate::cache::CacheDirective;
use crate::config::{
    BackendKind, CascadeJudge, Config, PolicyRules, RouteConfig, RouterSettings, placement_allows,
};
use crate::context::{ApiKeyDigest, RouteSlot};
use crate::error::Error;
use crate::executor::cascade::Judge;
use crate::middleware::auth::CallerKey;
use crate::redis_store::RedisBanditStore;

pub use log::DecisionLog;
pub use prompt::last_user_text;

/// Header forcing a placement for one request.
pub const PLACEMENT_HEADER: &str = "x-tandem-placement";
/// Header setting a latency SLO for one request, in ms.
pub const LATENCY_SLO_HEADER: &str = "x-tandem-latency-slo-ms";

/// What a request says about its own routing, from its headers.
#[derive(Debug, Clone, Default)]
pub struct RequestHints {
    /// The request id (for `remember` and the decision log).
    pub request_id: Arc<str>,
    /// `x-tandem-placement`.
    pub placement: Option<Placement>,
    /// `x-tandem-latency-slo-ms`.
    pub latency_slo_ms: Option<f64>,
    /// sha256 hex digest of the API key the request carried, as auth read it.
    pub key_hash: Option<String>,
    /// The placement of the virtual key the request carried.
    pub key_placement: Option<Placement>,
    /// Where the backend being tried is noted, for a timeout's answer.
    pub route_slot: Option<RouteSlot>,
    /// The request's meter (bill, local compute, spans), when the observe layer opened one.
    pub meter: Option<Arc<crate::observe::RequestMeter>>,
    /// The request's hold on its key's and route's token limiters, when the controls layer
    /// admitted it with one.
    pub ticket: Option<crate::controls::Ticket>,
    /// The request's `cache-control` directives for the response cache.
    pub cache: CacheDirective,
}

impl RequestHints {
    /// Reads the routing headers, and the API key digest auth left in the extensions; a
    /// malformed header is a 400 naming it.
    pub fn from_parts(request_id: Arc<str>, parts: &http::request::Parts) -> Result<Self, Error> {
        let mut hints = Self::from_headers(request_id, &parts.headers)?;
        hints.key_hash = parts
            .extensions
            .get::<ApiKeyDigest>()
            .map(ApiKeyDigest::to_hex);
        hints.route_slot = parts.extensions.get::<RouteSlot>().cloned();
        hints.ticket = parts.extensions.get::<crate::controls::Ticket>().cloned();
        hints.meter = parts
            .extensions
            .get::<Arc<crate::observe::RequestMeter>>()
            .cloned();
        if let Some(meter) = &hints.meter {
            meter.note_key(hints.key_hash.as_deref());
        }
        hints.key_placement = parts
            .extensions
            .get::<CallerKey>()
            .and_then(|k| k.0.spec.placement);
        Ok(hints)
    }

    /// Reads the routing headers; a malformed value is a 400 naming the header.
    pub fn from_headers(request_id: Arc<str>, headers: &HeaderMap) -> Result<Self, Error> {
        // Names made once: a lookup by `&str` parses and validates the name on every call.
        static PLACEMENT: HeaderName = HeaderName::from_static(PLACEMENT_HEADER);
        static LATENCY_SLO: HeaderName = HeaderName::from_static(LATENCY_SLO_HEADER);
        let text = |header: &HeaderName| -> Result<Option<String>, Error> {
            let name = header.as_str();
            match headers.get(header) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_ascii_lowercase()))
                    .map_err(|_| bad_header(name, "is not ASCII text")),
            }
        };
        let placement = match text(&PLACEMENT)?.as_deref() {
            None => None,
            Some("local-only") => Some(Placement::LocalOnly),
            Some("cloud-only") => Some(Placement::CloudOnly),
            Some(other) => {
                return Err(bad_header(
                    PLACEMENT_HEADER,
                    &format!("`{other}` is not a placement (expected local-only or cloud-only)"),
                ));
            }
        };
        let latency_slo_ms = match text(&LATENCY_SLO)? {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(ms) if ms.is_finite() && ms > 0.0 => Some(ms),
                _ => {
                    return Err(bad_header(
                        LATENCY_SLO_HEADER,
                        &format!("`{v}` is not a positive number of milliseconds"),
                    ));
                }
            },
        };
        Ok(Self {
            request_id,
            placement,
            latency_slo_ms,
            key_hash: None,
            key_placement: None,
            route_slot: None,
            meter: None,
            ticket: None,
            cache: CacheDirective::from_headers(headers),
        })
    }
}

fn bad_header(name: &str, why: &str) -> Error {
    Error::InvalidRequest {
        message: format!("invalid {name} header: {why}"),
        param: Some(name.to_owned()),
        code: Some("invalid_header"),
    }
}

/// One backend's live state: the policy's EWMAs and the gateway's count of requests on it.
#[derive(Debug)]
pub struct LiveBackend {
    /// The backend's kind in the config.
    pub kind: BackendKind,
    /// EWMAs of TTFT, inter-token latency and errors.
    pub state: BackendState,
    in_flight: AtomicU32,
}

/// Counts a request on a backend until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<LiveBackend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LiveBackend {
    /// Counts one more request until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The snapshot the policy decides on.
    pub fn snapshot(&self) -> BackendCandidate {
        let mut c = self.state.snapshot();
        c.queue_depth = self.in_flight.load(Ordering::Relaxed);
        c
    }
}

/// What the policy decided for one request, with the route's backends to run in order.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The decision.
    pub decision: Decision,
    /// Backend names: the chosen one first, then the other allowed ones (fallback).
    pub order: Vec<String>,
}

/// The learned policy in the gateway and everything around it: the router, the encoder, live
/// backend state, the decision log and the bandit's persistence.
pub struct LearnedRouting {
    /// The router.
    pub router: Arc<Router>,
    settings: RouterSettings,
    encoder: Arc<OnceLock<Arc<Encoder>>>,
    /// The thread loading the encoder, joined before the policy goes.
    encoder_loader: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    backends: BTreeMap<String, Arc<LiveBackend>>,
    log: Option<DecisionLog>,
    file_store: Option<FileBanditStore>,
    redis_store: Option<RedisBanditStore>,
    /// Feedback applied since start (persistence saves when it moved).
    updates: AtomicU64,
    saved_updates: AtomicU64,
    /// One save at a time: the periodic one and the one at shutdown share the temp file.
    saving: parking_lot::Mutex<()>,
    /// The periodic save task, stopped at shutdown.
    persistence: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
    /// The answer check and its escalation threshold, when cascades judge whole answers.
    answer_check: Option<(Arc<AnswerCheck>, f32)>,
}

impl std::fmt::Debug for LearnedRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedRouting")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("encoder", &self.encoder.get().is_some())
            .finish_non_exhaustive()
    }
}

impl LearnedRouting {
    /// Loads the quality model, restores the bandit (Redis first, then the file), opens the
    /// decision log and starts loading the encoder in the background.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let settings = config.router.clone();
        let mut router = match &settings.model_path {
            Some(path) => Router::load(path, settings.policy.clone()),
            None => Router::load_default(settings.policy.clone()),
        }
        .map_err(|e| Error::Internal(format!("router model: {e}")))?;
        let file_store = settings.bandit_path.clone().map(FileBanditStore::new);
        let redis_store = match &config.redis_url {
            Some(url) => Some(
                RedisBanditStore::new(url, &settings.redis_prefix)
                    .map_err(|e| Error::Internal(format!("redis bandit store: {e}")))?,
            ),
            None => None,
        };
        if let Some(store) = &file_store
            && let Err(e) = router.restore_bandit(store)
        {
            tracing::warn!(error = %e, "cannot restore the bandit from its file; starting fresh");
        }
        // With Redis, the replicas' summed statistics (this one's file state added once when
        // Redis holds none yet).
        if let Some(store) = &redis_store {
            sync_bandit(&router, store);
        }
        let log = match &settings.decision_log {
            Some(path) => Some(
                DecisionLog::open(path, settings.decision_log_queue).map_err(|e| {
                    Error::Internal(format!("decision log {}: {e}", path.display()))
                })?,
            ),
            None => None,
        };
        let backends = config
            .backends
            .values()
            .map(|b| {
                let profile = BackendProfile {
                    name: b.name.clone(),
                    kind: match b.kind {
                        BackendKind::Local => tandem_router_policy::Site::Local,
                        _ => tandem_router_policy::Site::Cloud,
                    },
                    strength: b.profile.strength,
                    price: b.price,
                    serial: b.kind == BackendKind::Local,
                    verifies_drafts: false,
                    drafts: false,
                    prior_ttft_ms: b.profile.prior_ttft_ms,
                    prior_itl_ms: b.profile.prior_itl_ms,
                };
                let live = LiveBackend {
                    kind: b.kind,
                    state: BackendState::new(profile, 0.2),
                    in_flight: AtomicU32::new(0),
                };
                (b.name.clone(), Arc::new(live))
            })
            .collect();
        let answer_check = match &settings.cascade_judge {
            CascadeJudge::FirstTokens => None,
            CascadeJudge::Answer {
                path,
                escalate_share,
            } => {
                let check = match path {
                    Some(path) => AnswerCheck::load(path),
                    None => AnswerCheck::shipped(),
                }
                .map_err(|e| Error::Internal(format!("answer check: {e}")))?;
                let threshold = check.threshold_for_share(*escalate_share);
                Some((Arc::new(check), threshold))
            }
        };
        let encoder = Arc::new(OnceLock::new());
        let mut encoder_loader = None;
        let uses_encoder = config.routes.values().any(|r| {
            r.policy == crate::config::RoutePolicy::Learned
                || r.cache.is_some_and(|c| c.semantic.is_some())
        });
        if settings.encoder && uses_encoder {
            let root = config
                .cache_dir
                .clone()
                .unwrap_or_else(tandem_router_policy::encoder::default_cache_root);
            encoder_loader = load_encoder_in_background(encoder.clone(), root);
        }
        Ok(Self {
            router: Arc::new(router),
            settings,
            encoder,
            encoder_loader: parking_lot::Mutex::new(encoder_loader),
            backends,
            log,
            file_store,
            redis_store,
            updates: AtomicU64::new(0),
            saved_updates: AtomicU64::new(0),
            saving: parking_lot::Mutex::new(()),
            persistence: parking_lot::Mutex::new(None),
            answer_check,
        })
    }

    /// How a cascade decided with confidence threshold `threshold` judges the local model.
    pub fn cascade_judge(&self, threshold: f32) -> Judge {
        match &self.answer_check {
            Some((check, threshold)) => Judge::Answer {
                check: check.clone(),
                threshold: *threshold,
            },
            None => Judge::FirstTokens {
                threshold,
                tokens: self.settings.cascade_tokens,
            },
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    /// A backend's live state.
    pub fn backend(&self, name: &str) -> Option<&Arc<LiveBackend>> {
        self.backends.get(name)
    }

    /// The decision log, when one is configured.
    pub fn decision_log(&self) -> Option<&DecisionLog> {
        self.log.as_ref()
    }

    /// Whether the prompt encoder is loaded.
    pub fn has_encoder(&self) -> bool {
        self.encoder.get().is_some()
    }

    /// The prompt encoder, once loaded (the semantic cache embeds prompts with it too).
    pub fn encoder(&self) -> Option<Arc<Encoder>> {
        self.encoder.get().cloned()
    }

    /// Features of a request: cheap ones always, plus the prompt embedding when the encoder is
    /// loaded: the cached full embedding, else the static one (microseconds) while a background
    /// thread computes the full one for next time. A decision never waits for the transformer.
    pub async fn features(&self, request: &ChatRequest) -> RequestFeatures {
        let prompt = last_user_text(request);
        let embedding = match self.encoder.get().map(|e| e.embed_for_decision(&prompt)) {
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "embedding failed; cheap features only");
                None
            }
            None => None,
        };
        let mut f = RequestFeatures::from_prompt(&prompt, None);
        if let Some((embedding, source)) = embedding {
            f = f.with_embedding(embedding, source);
        }
        f.cheap = f.cheap.clone().with_request(
            request.messages.len(),
            request.max_tokens,
            !request.tools.is_empty(),
        );
        let all_chars: usize = request
            .messages
            .iter()
            .flat_map(|m| m.content.iter())
            .map(|p| match p {
                ContentPart::Text { text } => text.chars().count(),
                _ => 0,
            })
            .sum();
        f.input_tokens = (all_chars as u32 / 4).max(1);
        f.expected_output_tokens = request.max_tokens.unwrap_or(256).clamp(1, 4096);
        f
    }

    /// The hard rules for one request: route, then API key, then header (local-only wins over
    /// cloud-only wherever it comes from; the tightest SLO wins).
    pub fn rules(&self, model: &str, route: &RouteConfig, hints: &RequestHints) -> RouteRules {
        let mut rules = RouteRules {
            weights: route.rules.weights,
            target_cloud_share: route.rules.target_cloud_share,
            latency_slo_ms: route.rules.latency_slo_ms,
            ..RouteRules::default()
        };
        if let Some(key) = key_rules(&self.settings, hints) {
            rules.weights = key.weights.or(rules.weights);
            rules.target_cloud_share = key.target_cloud_share.or(rules.target_cloud_share);
            rules.latency_slo_ms = min_slo(rules.latency_slo_ms, key.latency_slo_ms);
        }
        if let Some((p, source)) = placement_for(&self.settings, model, route, hints) {
            rules = rules.with_placement(p, source);
        }
        rules.latency_slo_ms = min_slo(rules.latency_slo_ms, hints.latency_slo_ms);
        rules
    }

    /// Decides for one request on a learned route. `local_ready` says whether the local model
    /// can serve now (an unready one is left out like an unhealthy backend).
    pub async fn plan(
        &self,
        model: &str,
        route: &RouteConfig,
        request: &ChatRequest,
        hints: &RequestHints,
        local_ready: bool,
    ) -> Planned {
        let features = self.features(request).await;
        let rules = self.rules(model, route, hints);
        let candidates: Vec<BackendCandidate> = route
            .backends
            .iter()
            .filter_map(|name| {
                let mut c = self.backends.get(name)?.snapshot();
                if c.profile.kind == tandem_router_policy::Site::Local && !local_ready {
                    c.healthy = false;
                }
                Some(c)
            })
            .collect();
        let mut decision = self.router.decide(&features, &candidates, &rules);
        if let (Choice::Cascade { threshold, .. }, Some(t)) =
            (&mut decision.choice, route.cascade_threshold)
        {
            *threshold = t;
            decision.explanation.choice = decision.choice.compact();
        }
        let placement = rules.placement;
        let first: Vec<String> = match &decision.choice {
            Choice::Local { backend } | Choice::Cloud { backend } => vec![backend.clone()],
            Choice::Cascade { local, cloud, .. } => vec![local.clone(), cloud.clone()],
            Choice::Speculative { target, .. } => vec![target.clone()],
            Choice::Reject => Vec::new(),
        };
        let mut order = first.clone();
        if !first.is_empty() {
            for b in &route.backends {
                let allowed = self
                    .backends
                    .get(b)
                    .is_some_and(|live| placement.is_none_or(|p| placement_allows(p, live.kind)));
                if allowed && !order.contains(b) {
                    order.push(b.clone());
                }
            }
        }
        self.router.remember(&hints.request_id, &decision);
        Planned { decision, order }
    }

    /// Appends a decision and its outcome to the decision log (never waits).
    pub fn log(&self, request_id: &str, decision: &Decision, outcome: serde_json::Value) {
        let Some(log) = &self.log else { return };
        let mut line: serde_json::Value =
            serde_json::from_str(&decision.log_line(request_id)).unwrap_or_default();
        if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), outcome) {
            obj.insert("ts".into(), tandem_cloud_adapters::unix_now().into());
            obj.extend(extra);
        }
        log.append(line.to_string());
    }

    /// Logs a request the policy did not decide on (the privacy step blocked it or kept it
    /// local): its id, the time and `outcome`'s fields.
    pub fn log_event(&self, request_id: &str, outcome: serde_json::Value) {
        let Some(log) = &self.log else { return };
        let mut line = serde_json::json!({
            "request_id": request_id,
            "ts": tandem_cloud_adapters::unix_now(),
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), outcome) {
            obj.extend(extra);
        }
        log.append(line.to_string());
    }

    /// Feedback reached the bandit.
    pub fn note_update(&self) {
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// Merges the bandit with the other replicas' through Redis (every time: they learn too),
    /// and saves it to its file when feedback moved it since the last save (blocking IO: call
    /// from the blocking pool). Errors are logged, never raised.
    pub fn persist(&self) {
        let _one_at_a_time = self.saving.lock();
        if let Some(store) = &self.redis_store {
            sync_bandit(&self.router, store);
        }
        let updates = self.updates.load(Ordering::Relaxed);
        if updates == self.saved_updates.load(Ordering::Relaxed) {
            return;
        }
        if let Some(store) = &self.file_store {
            match self.router.save_bandit(store as &dyn BanditStore) {
                Ok(()) => self.saved_updates.store(updates, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "saving the bandit state failed"),
            }
        }
    }

    /// Whether any store is configured.
    pub fn persists(&self) -> bool {
        self.file_store.is_some() || self.redis_store.is_some()
    }

    /// How often the bandit is saved.
    pub fn save_interval(&self) -> Duration {
        self.settings.bandit_save_interval
    }
}

/// Adds what `router`'s bandit learned since the last sync to the replicas' sums in Redis and
/// rebases it on them (blocking IO). A failure is logged; the next sync adds what this one
/// could not.
fn sync_bandit(router: &Router, store: &RedisBanditStore) {
    let local = router.bandit_state();
    match store.sync(&local) {
        Ok(merged) => {
            if let Err(e) = router.rebase_bandit(&local, &merged) {
                tracing::warn!(error = %e, "the replicas' bandit sums could not be taken in");
            }
        }
        Err(e) => tracing::warn!(error = %e, "syncing the bandit through redis failed"),
    }
}

/// Saves the bandit every interval until [`LearnedRouting::stop_persistence`].
pub fn spawn_persistence(policy: Arc<LearnedRouting>) {
    if !policy.persists() {
        return;
    }
    let task = tokio::spawn({
        let policy = policy.clone();
        async move {
            let mut tick = tokio::time::interval(policy.save_interval());
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = policy.clone();
                let _ = tokio::task::spawn_blocking(move || p.persist()).await;
            }
        }
    });
    *policy.persistence.lock() = Some(task.abort_handle());
}

impl LearnedRouting {
    /// Stops the periodic save (the shutdown save follows it).
    pub fn stop_persistence(&self) {
        if let Some(task) = self.persistence.lock().take() {
            task.abort();
        }
    }

    /// Waits for the encoder loader, if it is still running. A process that exits while ONNX
    /// Runtime loads on another thread can crash in its exit handlers. Blocks: call it off async
    /// workers.
    pub fn wait_for_encoder_load(&self) {
        let loader = self.encoder_loader.lock().take();
        if let Some(loader) = loader {
            let _ = loader.join();
        }
    }
}

impl Drop for LearnedRouting {
    fn drop(&mut self) {
        self.wait_for_encoder_load();
    }
}

/// Loads the encoder on its own thread, so the gateway serves (on cheap features) meanwhile.
fn load_encoder_in_background(
    slot: Arc<OnceLock<Arc<Encoder>>>,
    root: PathBuf,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("tandem-encoder-load".into())
        .spawn(move || match Encoder::from_cache_root(&root, 1) {
            Ok(e) => {
                tracing::info!("router encoder loaded");
                let _ = slot.set(Arc::new(e));
            }
            Err(e) => {
                tracing::info!(error = %e, "router encoder unavailable; deciding on cheap features")
            }
        });
    spawned
        .inspect_err(|e| tracing::warn!(error = %e, "cannot start the encoder loader"))
        .ok()
}

/// The per-key rules of the key a request carried, if the config has any.
fn key_rules<'a>(settings: &'a RouterSettings, hints: &RequestHints) -> Option<&'a PolicyRules> {
    hints.key_hash.as_ref().and_then(|h| settings.keys.get(h))
}

/// The placement a request must keep, and where it came from: the route, then the API key, then
/// the `x-tandem-placement` header; local-only wins over cloud-only wherever it comes from. Every
/// route honours it, fixed or learned, on every endpoint.
pub fn placement_for(
    settings: &RouterSettings,
    model: &str,
    route: &RouteConfig,
    hints: &RequestHints,
) -> Option<(Placement, String)> {
    let mut rules = RouteRules::default();
    if let Some(p) = route.rules.placement {
        rules = rules.with_placement(p, format!("route:{model}"));
    }
    if let Some(p) = key_rules(settings, hints)
        .and_then(|k| k.placement)
        .or(hints.key_placement)
    {
        rules = rules.with_placement(p, "key");
    }
    if let Some(p) = hints.placement {
        rules = rules.with_placement(p, "header");
    }
    rules
        .placement
        .map(|p| (p, rules.placement_source.unwrap_or_default()))
}

fn min_slo(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
