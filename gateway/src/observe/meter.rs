//! One request's meter: created by the `observe` middleware and kept in the request's
//! extensions, filled in by dispatch, the executors and the handlers (route, backend, decision,
//! usage, bill, local CPU, backend wait, first token), and settled when its last holder lets go
//! (the response for a whole answer, the end of the body for a stream): the ledger's record, the
//! root span. Work below dispatch finds it through the task-local [`Scope`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use parking_lot::Mutex;
use tandem_cloud_adapters::Usage;

use super::Observer;
use super::bill::Bill;
use super::ledger::RequestReport;
use super::trace::{
    AttrValue, LiveSpan, SpanId, SpanKind, SpanRecord, SpanSink, TRACEPARENT, TraceId,
    parse_traceparent, traceparent, unix_ns_at,
};
use crate::metrics::ENDPOINTS;

/// The trace a request belongs to: its id, the root span's id, and the client's span.
#[derive(Debug, Clone, Copy)]
struct TraceIds {
    trace: TraceId,
    root: SpanId,
    remote_parent: Option<SpanId>,
}

/// What is learned about a request as it runs.
#[derive(Debug, Default)]
struct Noted {
    route: Option<String>,
    backend: Option<String>,
    upstream_model: Option<String>,
    mode: &'static str,
    explanation: String,
    fallbacks: u32,
    status: u16,
    error: Option<&'static str>,
    usage: Option<Usage>,
    bill: Option<Bill>,
    cpu_seconds: f64,
    energy_joules: f64,
    first_token: Option<Duration>,
    headers_at: Option<Duration>,
    cache_hit: bool,
    key: Option<String>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    stream: bool,
    input_text: Option<String>,
    output_text: Option<String>,
    attrs: Vec<(&'static str, AttrValue)>,
}

/// One request's meter (see the module docs).
pub struct RequestMeter {
    observer: Arc<Observer>,
    id: Arc<str>,
    endpoint: usize,
    method: http::Method,
    started: Instant,
    wait_ns: AtomicU64,
    trace: Option<TraceIds>,
    noted: Mutex<Noted>,
}

impl std::fmt::Debug for RequestMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestMeter {
    /// A meter for a request that started at `started`; a trace is opened (continuing the
    /// client's `traceparent`) when export is on.
    pub fn new(
        observer: Arc<Observer>,
        id: Arc<str>,
        endpoint: usize,
        method: http::Method,
        headers: &HeaderMap,
        started: Instant,
    ) -> Self {
        let trace = observer.exporter.as_ref().map(|_| {
            let remote = headers
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_traceparent);
            TraceIds {
                trace: remote.map_or_else(TraceId::random, |(t, _, _)| t),
                root: SpanId::random(),
                remote_parent: remote.map(|(_, p, _)| p),
            }
        });
        Self {
            observer,
            id,
            endpoint: endpoint.min(ENDPOINTS.len() - 1),
            method,
            started,
            wait_ns: AtomicU64::new(0),
            trace,
            noted: Mutex::new(Noted {
                mode: "none",
                ..Noted::default()
            }),
        }
    }

    /// The API key digest the request presented (the dashboard filters on its first 12 digits).
    pub fn note_key(&self, key_hex: Option<&str>) {
        self.noted.lock().key = key_hex.map(|k| k.chars().take(12).collect());
    }

    /// The request id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Whether spans are recorded.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Whether prompt and answer text go on spans.
    pub fn captures_content(&self) -> bool {
        self.trace.is_some()
            && self
                .observer
                .exporter
                .as_ref()
                .is_some_and(|e| e.capture_content)
    }

    /// The scope of work directly under the request's root span.
    pub fn root_scope(self: &Arc<Self>) -> Scope {
        Scope {
            meter: self.clone(),
            parent: self.trace.map(|t| t.root),
        }
    }

    /// A span under `parent` (the root when none), when tracing; it ends when dropped.
    pub fn span(&self, parent: Option<SpanId>, name: &str, kind: SpanKind) -> Option<LiveSpan> {
        let (trace, exporter) = (self.trace?, self.observer.exporter.clone()?);
        Some(LiveSpan::start(
            exporter,
            trace.trace,
            Some(parent.unwrap_or(trace.root)),
            name,
            kind,
        ))
    }

    /// The GenAI operation of the request's endpoint.
    fn operation(&self) -> &'static str {
        match ENDPOINTS[self.endpoint] {
            "completions" => "text_completion",
            "chat" | "messages" => "chat",
            other => other,
        }
    }

    /// The span of one try on `backend` for `route`, with the GenAI client attributes.
    pub fn attempt_span(&self, route: &str, backend: &str, index: usize) -> Option<LiveSpan> {
        self.trace?;
        let kind = self.observer.backend_kind(backend);
        let model = self
            .observer
            .backend_model(backend, route)
            .unwrap_or(route)
            .to_owned();
        let operation = self.operation();
        let span_kind = if kind.is_some_and(|k| k.is_cloud()) {
            SpanKind::Client
        } else {
            SpanKind::Internal
        };
        let mut span = self.span(None, &format!("{operation} {model}"), span_kind)?;
        span.set("gen_ai.operation.name", operation);
        span.set("gen_ai.request.model", model);
        let provider = match kind {
            Some(crate::config::BackendKind::OpenAi) => "openai",
            Some(crate::config::BackendKind::Anthropic) => "anthropic",
            Some(crate::config::BackendKind::Azure) => "azure.ai.openai",
            Some(k) => k.as_str(),
            None => "unknown",
        };
        span.set("gen_ai.provider.name", provider);
        span.set("tandem.backend", backend);
        span.set("tandem.attempt", index as u64);
        Some(span)
    }

    /// A span that already happened (`start` to `end`), under `parent`.
    pub fn past_span(
        &self,
        parent: Option<SpanId>,
        name: &str,
        start: Instant,
        end: Instant,
        attrs: Vec<(&'static str, AttrValue)>,
    ) {
        let (Some(trace), Some(exporter)) = (self.trace, &self.observer.exporter) else {
            return;
        };
        let start_ns = unix_ns_at(start);
        exporter.export(SpanRecord {
            trace_id: trace.trace,
            span_id: SpanId::random(),
            parent: Some(parent.unwrap_or(trace.root)),
            name: name.to_owned(),
            kind: SpanKind::Internal,
            start_unix_ns: start_ns,
            end_unix_ns: start_ns + end.saturating_duration_since(start).as_nanos() as u64,
            attrs,
            error: None,
        });
    }

    /// Adds time spent waiting for a backend (not Tandem's own overhead).
    pub fn add_wait(&self, waited: Duration) {
        self.wait_ns
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Tandem's own time so far: elapsed less the backend waits.
    pub fn overhead(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed)))
    }

    /// What the request asked for (the GenAI request attributes, and its text when captured).
    pub fn note_request(&self, request: &tandem_cloud_adapters::ChatRequest) {
        let capture = self.captures_content();
        let mut n = self.noted.lock();
        n.max_tokens = request.max_tokens.map(u64::from);
        n.temperature = request.temperature.map(f64::from);
        n.stream = request.stream;
        if capture {
            let text: Vec<serde_json::Value> = request
                .messages
                .iter()
                .map(|m| {
                    let content: String = m
                        .content
                        .iter()
                        .filter_map(|p| match p {
                            tandem_cloud_adapters::ContentPart::Text { text } => {
                                Some(text.as_str())
                            }
                            _ => None,
                        })
                        .collect();
                    serde_json::json!({"role": m.role.as_str(), "content": content})
                })
                .collect();
            n.input_text = Some(serde_json::Value::Array(text).to_string());
        }
    }

    /// The route taken, the backend that answered (or failed last, empty for none), how
    /// (`local`, `cloud`, ...), why, and how many times it fell back.
    pub fn note_route(
        &self,
        route: &str,
        backend: &str,
        mode: &'static str,
        explanation: &str,
        fallbacks: u32,
    ) {
        let upstream = self
            .observer
            .backend_model(backend, route)
            .map(str::to_owned);
        let mut n = self.noted.lock();
        // A model id no route serves stays `none`: a client cannot add label values.
        n.route = self.observer.is_route(route).then(|| route.to_owned());
        if !backend.is_empty() {
            n.backend = Some(backend.to_owned());
        }
        n.upstream_model = upstream;
        n.mode = mode;
        n.explanation = explanation.to_owned();
        n.fallbacks = fallbacks;
    }

    /// The answer was served from the response cache.
    pub fn note_cache_hit(&self, route: &str) {
        self.observer.metrics.record_cache_hit(route);
        let mut n = self.noted.lock();
        n.cache_hit = true;
        n.mode = "cache";
    }

    /// Local compute spent on the request by `backend`'s engine.
    pub fn add_local_cpu(&self, backend: &str, cpu_seconds: f64) {
        let joules = self.observer.energy.joules(cpu_seconds);
        self.observer
            .metrics
            .record_local_compute(backend, cpu_seconds, joules);
        let mut n = self.noted.lock();
        n.cpu_seconds += cpu_seconds;
        n.energy_joules += joules;
    }

    /// The answer's usage and bill.
    pub fn note_usage(&self, usage: &Usage, bill: Bill) {
        let mut n = self.noted.lock();
        n.usage = Some(*usage);
        n.bill = Some(bill);
    }

    /// The bill, once usage is known.
    pub fn bill(&self) -> Option<Bill> {
        self.noted.lock().bill
    }

    /// Local CPU and energy so far.
    pub fn local_compute(&self) -> (f64, f64) {
        let n = self.noted.lock();
        (n.cpu_seconds, n.energy_joules)
    }

    /// A stream's first token reached the client.
    pub fn note_first_token(&self) {
        let mut n = self.noted.lock();
        if n.first_token.is_none() {
            n.first_token = Some(self.started.elapsed());
        }
    }

    /// Answer text, when captured.
    pub fn note_output_text(&self, text: &str) {
        if !self.captures_content() {
            return;
        }
        self.noted
            .lock()
            .output_text
            .get_or_insert_with(String::new)
            .push_str(text);
    }

    /// An extra attribute for the root span.
    pub fn note_attr(&self, key: &'static str, value: impl Into<AttrValue>) {
        if self.trace.is_some() {
            self.noted.lock().attrs.push((key, value.into()));
        }
    }

    /// The response head is going out with `status` (and the edge error's label).
    pub fn note_response(&self, status: http::StatusCode, error: Option<&'static str>) {
        let mut n = self.noted.lock();
        n.status = status.as_u16();
        n.error = error;
        n.headers_at = Some(self.started.elapsed());
    }

    /// The `traceparent` for a call made under `span` (None when not tracing).
    pub fn traceparent_for(&self, span: Option<SpanId>) -> Option<http::HeaderValue> {
        let t = self.trace?;
        Some(traceparent(t.trace, span.unwrap_or(t.root)))
    }

    fn report(&self, n: &Noted, total: Duration) -> RequestReport {
        let usage = n.usage.unwrap_or_default();
        let bill = n.bill.unwrap_or_default();
        let spec = usage.speculative.unwrap_or_default();
        RequestReport {
            ts_ms: super::trace::unix_ns() / 1_000_000,
            id: self.id.to_string(),
            endpoint: ENDPOINTS[self.endpoint].into(),
            route: n.route.clone().unwrap_or_else(|| "none".into()),
            backend: n.backend.clone().unwrap_or_else(|| "none".into()),
            mode: n.mode.into(),
            status: n.status,
            error: n.error.map(Into::into),
            explanation: n.explanation.clone(),
            key: n.key.clone(),
            fallbacks: n.fallbacks,
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            paid: bill.paid,
            reference: bill.reference,
            saved: bill.saved(),
            cpu_seconds: n.cpu_seconds,
            energy_joules: n.energy_joules,
            first_token_s: n.first_token.map(|d| d.as_secs_f64()),
            total_s: total.as_secs_f64(),
            overhead_s: n
                .headers_at
                .unwrap_or(total)
                .saturating_sub(Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed)))
                .as_secs_f64(),
            spec_drafted: spec.drafted,
            spec_accepted: spec.accepted,
            cache_hit: n.cache_hit,
        }
    }

    fn root_span(&self, t: TraceIds, n: &Noted, report: &RequestReport) -> SpanRecord {
        let operation = self.operation();
        let route = n.route.as_deref().unwrap_or("");
        let mut attrs: Vec<(&'static str, AttrValue)> = vec![
            ("gen_ai.operation.name", operation.into()),
            ("http.request.method", self.method.as_str().into()),
            ("http.response.status_code", i64::from(n.status).into()),
            ("tandem.request_id", self.id.to_string().into()),
            ("tandem.decision", n.mode.into()),
        ];
        if !route.is_empty() {
            attrs.push(("gen_ai.request.model", route.into()));
            attrs.push(("tandem.route", route.into()));
        }
        if let Some(b) = &n.backend {
            attrs.push(("tandem.backend", b.clone().into()));
        }
        if let Some(m) = &n.upstream_model {
            attrs.push(("gen_ai.response.model", m.clone().into()));
        }
        if !n.explanation.is_empty() {
            attrs.push(("tandem.reasons", n.explanation.clone().into()));
        }
        if let Some(u) = &n.usage {
            attrs.push(("gen_ai.usage.input_tokens", u.prompt_tokens.into()));
            attrs.push(("gen_ai.usage.output_tokens", u.completion_tokens.into()));
        }
        if let Some(m) = n.max_tokens {
            attrs.push(("gen_ai.request.max_tokens", m.into()));
        }
        if let Some(t) = n.temperature {
            attrs.push(("gen_ai.request.temperature", t.into()));
        }
        if n.bill.is_some() {
            attrs.push(("tandem.cost.paid_usd", report.paid.into()));
            attrs.push(("tandem.cost.reference_usd", report.reference.into()));
            attrs.push(("tandem.cost.saved_usd", report.saved.into()));
        }
        if n.cpu_seconds > 0.0 {
            attrs.push(("tandem.local.cpu_seconds", n.cpu_seconds.into()));
            attrs.push(("tandem.local.energy_joules", n.energy_joules.into()));
        }
        attrs.push(("tandem.fallbacks", u64::from(n.fallbacks).into()));
        attrs.push(("tandem.overhead_ms", (report.overhead_s * 1e3).into()));
        if let Some(e) = n.error {
            attrs.push(("error.type", e.into()));
        }
        if let Some(text) = &n.input_text {
            attrs.push(("gen_ai.input.messages", text.clone().into()));
        }
        if let Some(text) = &n.output_text {
            attrs.push(("gen_ai.output.messages", text.clone().into()));
        }
        attrs.extend(n.attrs.iter().cloned());
        let start = unix_ns_at(self.started);
        let name = if route.is_empty() {
            format!("{} {}", self.method, ENDPOINTS[self.endpoint])
        } else {
            format!("{operation} {route}")
        };
        SpanRecord {
            trace_id: t.trace,
            span_id: t.root,
            parent: t.remote_parent,
            name,
            kind: SpanKind::Server,
            start_unix_ns: start,
            end_unix_ns: start + (report.total_s * 1e9) as u64,
            attrs,
            error: n.error.map(str::to_owned),
        }
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        let total = self.started.elapsed();
        let n = std::mem::take(&mut *self.noted.lock());
        let report = self.report(&n, total);
        if let (Some(t), Some(exporter)) = (self.trace, &self.observer.exporter) {
            exporter.export(self.root_span(t, &n, &report));
        }
        self.observer.settle(report);
    }
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Where work below dispatch reports to: the request's meter and the span it runs under.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The request's meter.
    pub meter: Arc<RequestMeter>,
    /// The span the work runs under (the root when none).
    pub parent: Option<SpanId>,
}

impl Scope {
    /// A child span of this scope's span, when tracing.
    pub fn span(&self, name: &str, kind: SpanKind) -> Option<LiveSpan> {
        self.meter.span(self.parent, name, kind)
    }

    /// A scope one level down, under `span`.
    pub fn under(&self, span: Option<&LiveSpan>) -> Scope {
        Scope {
            meter: self.meter.clone(),
            parent: span.map(LiveSpan::id).or(self.parent),
        }
    }

    /// Runs `work` in this scope: [`current`] finds it, and every upstream request it sends
    /// carries the scope's `traceparent`.
    pub async fn run<F: Future>(self, work: F) -> F::Output {
        let mut headers = HeaderMap::new();
        if let Some(v) = self.meter.traceparent_for(self.parent) {
            headers.insert(TRACEPARENT, v);
        }
        let propagated = tandem_cloud_adapters::client::with_propagated_headers(headers, work);
        SCOPE.scope(self, propagated).await
    }
}

/// The scope the current task runs in, if any.
pub fn current() -> Option<Scope> {
    SCOPE.try_with(Scope::clone).ok()
}

/// `work` in the current task's scope, for a task it spawns (task-locals do not cross spawns).
pub fn carry<F: Future + Send + 'static>(work: F) -> impl Future<Output = F::Output> + Send
where
    F::Output: Send,
{
    let scope = current();
    async move {
        match scope {
            Some(scope) => scope.run(work).await,
            None => work.await,
        }
    }
}
