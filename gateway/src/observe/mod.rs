//! What Tandem decides and saves, made visible: each request's bill against its route's
//! reference cloud model, local CPU time and energy, Tandem's own overhead, the ledger the
//! dashboard reads, and OpenTelemetry traces exported over OTLP/HTTP.
//!
//! - `bill`: paid, reference and saved dollars of one answer.
//! - `energy`: joules per CPU-second (RAPL where readable, else watts per core).
//! - `meter`: one request's meter and the task-local scope work below dispatch reports to.
//! - `ledger`: finished requests, totals and the dashboard's summary.
//! - `replicas`: the ledger's snapshot shared through the store, and the merged summary.
//! - `trace`, `otlp`: spans, `traceparent`, and their batched protobuf export.

pub mod bill;
pub mod energy;
pub mod ledger;
pub mod meter;
pub mod otlp;
pub mod replicas;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

pub use bill::{Bill, bill};
pub use meter::{RequestMeter, Scope, carry, current};
pub use trace::{AttrValue, SpanKind};

use crate::config::{BackendKind, Config, ObservabilityConfig};
use crate::metrics::Metrics;

/// How often the RAPL counters are read.
const RAPL_INTERVAL: Duration = Duration::from_secs(5);

/// The process's observability: settings, metrics, ledger, energy model and trace exporter.
#[derive(Debug)]
pub struct Observer {
    /// `[observability]`.
    pub config: ObservabilityConfig,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Finished requests.
    pub ledger: ledger::Ledger,
    /// Joules per CPU-second.
    pub energy: Arc<energy::Energy>,
    /// The trace exporter, when export is on.
    pub exporter: Option<Arc<otlp::Exporter>>,
    /// This replica's id (its dashboard snapshot's key).
    pub replica: String,
    config_all: Arc<Config>,
}

impl Observer {
    /// Starts the trace exporter (when configured) and the RAPL reader (where readable); needs
    /// a tokio runtime.
    pub fn start(config: Arc<Config>, metrics: Arc<Metrics>) -> Arc<Self> {
        let settings = config.observability.clone();
        let energy = Arc::new(if settings.rapl {
            energy::Energy::with_rapl(
                settings.watts_per_core,
                std::path::Path::new(energy::POWERCAP),
            )
        } else {
            energy::Energy::fixed(settings.watts_per_core)
        });
        if energy.has_rapl() {
            let e = energy.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RAPL_INTERVAL);
                loop {
                    tick.tick().await;
                    let e = e.clone();
                    let _ = tokio::task::spawn_blocking(move || e.sample()).await;
                }
            });
        }
        let exporter = settings.otlp.as_ref().map(otlp::Exporter::start);
        Arc::new(Self {
            ledger: ledger::Ledger::new(settings.recent_requests),
            config: settings,
            metrics,
            energy,
            exporter,
            replica: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            config_all: config,
        })
    }

    /// The model id `backend` is asked for on `route`: a cloud backend's mapped id, the local
    /// model's name.
    pub fn backend_model<'a>(&'a self, backend: &str, route: &'a str) -> Option<&'a str> {
        let b = self.config_all.backends.get(backend)?;
        Some(match b.kind {
            BackendKind::Local => self
                .config_all
                .local
                .as_ref()
                .map_or(route, |l| l.model.as_str()),
            _ => b.upstream_model(route),
        })
    }

    /// Whether `model` names a configured route.
    pub fn is_route(&self, model: &str) -> bool {
        self.config_all.routes.contains_key(model)
    }

    /// The kind of `backend`.
    pub fn backend_kind(&self, backend: &str) -> Option<BackendKind> {
        self.config_all.backends.get(backend).map(|b| b.kind)
    }

    /// A finished request's report.
    fn settle(&self, report: ledger::RequestReport) {
        if let ("chat" | "completions" | "messages", std::borrow::Cow::Borrowed(mode)) =
            (&*report.endpoint, &report.mode)
        {
            self.metrics
                .modes
                .get_or_create(&crate::metrics::ModeLabels {
                    route: report.route.clone(),
                    mode,
                })
                .inc();
        }
        self.ledger.record(report);
    }
}
