//! The application state every handler shares: config, executors by backend, the local model,
//! metrics, the observer and the log of recent requests that feedback refers to.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tandem_router_policy::Feedback;
use tandem_router_policy::recent::RecentMap;

use crate::audit::AuditLog;
use crate::cache::ResponseCache;
use crate::config::{BackendKind, Config};
use crate::controls::Controls;
use crate::executor::Executor;
use crate::executor::embeddings::LocalEmbedder;
use crate::executor::infill::EditorSessions;
use crate::executor::local::LocalModel;
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::resilience::Resilience;
use crate::routing::LearnedRouting;
use crate::store::SharedStore;

/// Feedback can refer to at least this many of the latest answered requests (up to twice as
/// many are kept).
pub const REQUEST_LOG_CAPACITY: usize = 100_000;

/// What the gateway remembers about an answered request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The model id the client asked for.
    pub model: String,
    /// The backend that answered.
    pub backend: String,
}

/// Answered requests by id: at least the last [`REQUEST_LOG_CAPACITY`], never rehashed on the
/// request path.
#[derive(Debug)]
pub struct RequestLog {
    inner: Mutex<RecentMap<Arc<str>, RequestRecord>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        Self {
            inner: Mutex::new(RecentMap::new(REQUEST_LOG_CAPACITY)),
        }
    }
}

impl RequestLog {
    /// Remembers a request.
    pub fn insert(&self, id: Arc<str>, record: RequestRecord) {
        self.inner.lock().insert(id, record);
    }

    /// Looks a request up.
    pub fn get(&self, id: &str) -> Option<RequestRecord> {
        self.inner.lock().get(id).cloned()
    }
}

/// Receives feedback (the router policy's learning hook).
pub trait FeedbackSink: Send + Sync {
    /// Takes one piece of feedback about a known request, with the one score in [0, 1] it comes
    /// to (thumbs up = 1, down = 0).
    fn apply(&self, record: &RequestRecord, feedback: &Feedback, score: f64);
}

/// Keeps the feedback in memory (for tests and when no policy learns from it).
#[derive(Debug, Default)]
pub struct MemoryFeedback(pub Mutex<Vec<(Feedback, f64)>>);

impl FeedbackSink for MemoryFeedback {
    fn apply(&self, _record: &RequestRecord, feedback: &Feedback, score: f64) {
        self.0.lock().push((feedback.clone(), score));
    }
}

/// Everything handlers share.
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// One executor per backend.
    pub executors: BTreeMap<String, Arc<dyn Executor>>,
    /// The local model, when a local backend is configured.
    pub local: Option<Arc<LocalModel>>,
    /// The code model (`[ide]`), served next to the chat model.
    pub ide: Option<Arc<LocalModel>>,
    /// The running code completions of each editor session (a newer one stops the older).
    pub editors: Arc<EditorSessions>,
    /// The code model's and the IDE cloud's measured speeds, for the IDE routing policy.
    pub ide_rates: crate::routing::ide::IdeRates,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Circuit breakers and the retry budget.
    pub resilience: Resilience,
    /// Recently answered requests.
    pub requests: RequestLog,
    /// Where feedback goes for requests the routing policy did not decide.
    pub feedback: Arc<dyn FeedbackSink>,
    /// The local embeddings model (`minilm`), loaded on first use.
    pub embedder: Arc<LocalEmbedder>,
    /// The learned routing policy (None when it could not be loaded; learned routes then run
    /// in config order).
    pub policy: Option<Arc<LearnedRouting>>,
    /// Bills, local compute, the ledger and trace export.
    pub observer: Arc<Observer>,
    /// The shared state store (Redis, or the embedded one).
    pub store: SharedStore,
    /// The response cache (off when no route caches).
    pub cache: ResponseCache,
    /// Virtual keys, rate limits, budgets and spend.
    pub controls: Arc<Controls>,
    /// The tamper-evident audit log, when `[audit] path` is set.
    pub audit: Option<Arc<AuditLog>>,
}

impl AppState {
    /// Whether the gateway can serve: the local model is loaded, or none is configured.
    pub fn ready(&self) -> bool {
        self.local.as_ref().is_none_or(|l| l.is_ready())
    }

    /// Whether any backend is the local model.
    pub fn has_local_backend(&self) -> bool {
        self.executors
            .values()
            .any(|e| e.kind() == BackendKind::Local)
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backends", &self.executors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
