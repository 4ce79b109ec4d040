//! Dispatch: picks the backends for a request's model and runs it on them in order, moving to the
//! next one on a retryable error when the route allows fallback. Fixed routes keep config order;
//! learned routes ask the routing policy (hard rules first, then predicted quality, cost and
//! latency) and run its choice first, a cascade included. Every answer says which backend
//! answered and why (`x-tandem-route`), and every policy decision is logged.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::{self, ChatCompletion};
use tandem_cloud_adapters::{Api, ChatEvent, ChatRequest, ChatResponse, EventStream, Usage};
use tandem_router_policy::{Choice, Feedback, Placement};
use tokio::time::Instant;

use crate::cache::{CACHE_BACKEND, CacheStatus, Fill, Hit, Lookup};
use crate::config::{BackendKind, PrivacyAction, RoutePolicy, placement_allows};
use crate::context::{FirstTokenDeadline, RouteSlot};
use crate::error::Error;
use crate::executor::cascade::{CascadeExecutor, CascadeOutcome};
use crate::executor::infill::{self, InfillChunk, InfillOutcome, InfillRequest};
use crate::executor::local::LocalExecutor;
use crate::executor::local_completion;
use crate::executor::redact::RedactingExecutor;
use crate::executor::{CompletionCall, CompletionOutput, Executor, Forwarded, TokenCount};
use crate::metrics::BackendLabels;
use crate::observe::trace::LiveSpan;
use crate::observe::{Bill, RequestMeter, SpanKind, bill};
use crate::privacy::{PrivacyNote, Screened};
use crate::resilience::{Admission, Outcome, Resilience};
use crate::routing::ide::{Barred, IdeDecision, IdeShape, TYPICAL_TOKENS, decide};
use crate::routing::{LiveBackend, Planned, RequestHints, placement_for};
use crate::state::AppState;

/// Which backend answered and why.
#[derive(Debug, Clone, Default)]
pub struct RouteInfo {
    /// The backend's config name (empty when none was reached).
    pub backend: String,
    /// The explanation sent in `x-tandem-route`.
    pub explanation: String,
    /// How it was served: `local`, `cloud`, `cascade`, `speculative` (`none` when no backend
    /// answered).
    pub mode: &'static str,
    /// Moves to a next backend after a retryable failure.
    pub fallbacks: u32,
    /// What the response cache did, on a route with a cache (`x-tandem-cache`).
    pub cache: Option<CacheStatus>,
    /// Every backend the request was sent to, in order (for the audit log).
    pub tried: Vec<String>,
    /// What the privacy step did, when it did anything.
    pub privacy: Option<PrivacyNote>,
}

impl RouteInfo {
    /// No backend reached, with why.
    pub fn unrouted(explanation: impl Into<String>) -> Self {
        Self {
            backend: String::new(),
            explanation: explanation.into(),
            mode: "none",
            fallbacks: 0,
            cache: None,
            tried: Vec::new(),
            privacy: None,
        }
    }

    /// Answered by an in-process model (`backend`) without a plan: the code model.
    pub fn local(backend: impl Into<String>, explanation: impl Into<String>) -> Self {
        let backend = backend.into();
        Self {
            tried: if backend.is_empty() {
                Vec::new()
            } else {
                vec![backend.clone()]
            },
            backend,
            explanation: explanation.into(),
            mode: "local",
            ..Self::unrouted("")
        }
    }

    /// What the audit log keeps of it.
    pub fn audited(&self) -> crate::audit::AuditRoute {
        crate::audit::AuditRoute {
            explanation: self.explanation.clone(),
            answered_by: self.backend.clone(),
            backends: self.tried.clone(),
            privacy: self.privacy.as_ref().map(PrivacyNote::to_json),
        }
    }

    /// The header value: printable ASCII only.
    pub fn header_value(&self) -> http::HeaderValue {
        let printable = |c: char| c.is_ascii_graphic() || c == ' ';
        // The usual explanation is printable already and is copied once, not rebuilt.
        let text = if self.explanation.chars().all(printable) {
            Cow::Borrowed(self.explanation.as_str())
        } else {
            Cow::Owned(
                self.explanation
                    .chars()
                    .map(|c| if printable(c) { c } else { '?' })
                    .collect(),
            )
        };
        http::HeaderValue::from_str(&text)
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
    }
}

/// The executors a model id is routed to, in config order, with whether fallback is on. Backends
/// the request's placement rules out are left out (all of them: a 400 naming the rule), and so are
/// backends that could not start (all of them: a 503).
fn route_for(
    state: &AppState,
    model: &str,
    hints: &RequestHints,
) -> Result<(Vec<Arc<dyn Executor>>, bool), Error> {
    let route = state
        .config
        .routes
        .get(model)
        .ok_or_else(|| Error::ModelNotFound(model.to_owned()))?;
    let placement = placement_for(&state.config.router, model, route, hints);
    let allowed: Vec<&String> = route
        .backends
        .iter()
        .filter(|b| {
            let kind = state.config.backends.get(b.as_str()).map(|c| c.kind);
            match (&placement, kind) {
                (Some((p, _)), Some(kind)) => placement_allows(*p, kind),
                (_, kind) => kind.is_some(),
            }
        })
        .collect();
    if allowed.is_empty()
        && let Some((p, source)) = placement
    {
        return Err(placement_error(model, p, &source));
    }
    let executors = runnable(state, allowed.iter().map(|b| b.as_str()))?;
    Ok((executors, route.fallback))
}

/// The 400 for a placement none of a route's backends can keep.
fn placement_error(model: &str, placement: Placement, source: &str) -> Error {
    Error::InvalidRequest {
        message: format!(
            "no backend of model `{model}` may serve this request: placement {} (from {source}) rules them all out",
            placement.as_str()
        ),
        param: None,
        code: Some("no_backend_allowed"),
    }
}

/// The executors of `names` that exist; one whose backend could not start is skipped (it was
/// logged at startup), and none at all is a 503.
fn runnable<'a>(
    state: &AppState,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Arc<dyn Executor>>, Error> {
    let mut missing = Vec::new();
    let mut executors = Vec::new();
    for name in names {
        match state.executors.get(name) {
            Some(e) => executors.push(e.clone()),
            None => missing.push(name.to_owned()),
        }
    }
    if executors.is_empty() {
        return Err(Error::NotReady(format!(
            "no backend of this route can serve now ({} not running)",
            missing.join(", ")
        )));
    }
    Ok(executors)
}

/// How a backend of `kind` serves a request.
fn mode_of(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Local => "local",
        BackendKind::Speculative => "speculative",
        _ => "cloud",
    }
}

/// Runs one try on `executor` in the request's scope, under its own span (retries and
/// fallbacks each show as one), and counts the wait for the backend as not Tandem's overhead.
async fn metered<T, Fut>(
    meter: Option<&Arc<RequestMeter>>,
    route: &str,
    executor: &Arc<dyn Executor>,
    index: usize,
    work: Fut,
) -> (Result<T, Error>, Option<LiveSpan>)
where
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let Some(meter) = meter else {
        return (work.await, None);
    };
    let span = meter.attempt_span(route, executor.backend(), index);
    let scope = meter.root_scope().under(span.as_ref());
    let started = StdInstant::now();
    let result = scope.run(work).await;
    meter.add_wait(started.elapsed());
    (result, span)
}

/// The executors of one request's plan and how to move between them.
struct Tries {
    executors: Vec<Arc<dyn Executor>>,
    /// Whether a retryable failure moves on to the next executor.
    fallback: bool,
    /// Whether the last executor is the local model, added because the route's cloud backends
    /// may all fail (`resilience.local_fallback`).
    local_fallback: bool,
    /// Whether a slow first try gets a hedge on the second executor, and after how long (`None`:
    /// the first backend's p95).
    hedge: Option<Option<std::time::Duration>>,
    /// The explanation so far.
    reason: String,
    /// Whether the policy decided the order (the header then reads `reason; backend=...`).
    decided: bool,
}

/// Runs `attempt` on each of the executors in turn until one succeeds or fails for good. A
/// backend whose breaker is open is skipped at once; a retryable failure is retried on the same
/// backend while the settings and the retry budget allow, with backoff, then moves to the next
/// backend when fallback is on. On a hedged route a first try slower than its delay gets a
/// second one on the next backend; the first answer wins and the other is dropped (cancelled
/// upstream, never accounted). A backend that cannot honour the request (an unsupported
/// parameter) is skipped whatever the fallback setting, since it never ran it. `attempt` is
/// told whether its try is the last one there can be, so it can hand over the request instead
/// of a copy.
async fn with_fallback<T, F, Fut>(
    state: &AppState,
    tries: Tries,
    slot: Option<&RouteSlot>,
    (meter, route): (Option<&Arc<RequestMeter>>, &str),
    tried: &mut Vec<String>,
    mut attempt: F,
) -> (Result<T, Error>, RouteInfo)
where
    F: FnMut(Arc<dyn Executor>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let Tries {
        executors,
        fallback,
        local_fallback,
        hedge,
        mut reason,
        decided,
    } = tries;
    let resilience = &state.resilience;
    resilience.deposit();
    let count = executors.len();
    let retries = resilience.settings.retries;
    let success = |backend: String, index: usize, reason: &str, fallbacks: u32| {
        let mode = mode_of(executors[index].kind());
        let mut explanation = if decided {
            format!("{reason}; backend={backend}")
        } else {
            format!("{backend}; {reason}")
        };
        if local_fallback && index + 1 == count && index > 0 {
            explanation.push_str("; local fallback (every cloud backend failed)");
            state.metrics.local_fallbacks.inc();
        }
        RouteInfo {
            backend,
            explanation,
            mode,
            fallbacks,
            cache: None,
            tried: Vec::new(),
            privacy: None,
        }
    };
    // The last backend that failed in earnest, with the reason as it stood then: a later one
    // that cannot honour the request does not hide it.
    let mut failed: Option<(String, String, Error)> = None;
    let mut fallbacks = 0u32;
    let mut i = 0;
    while i < count {
        let executor = executors[i].clone();
        let backend = executor.backend().to_owned();
        let last = i + 1 == count;
        if let Some(slot) = slot {
            slot.note_backend(&backend);
        }
        if let Admission::Refused(wait) = resilience.admit(&backend) {
            let e = Error::CircuitOpen {
                backend: backend.clone(),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
            let earlier = reason.clone();
            reason = format!("{reason}; skipped {backend} (circuit open)");
            if !last && fallback {
                failed.get_or_insert((backend, earlier, e));
                i += 1;
                continue;
            }
            let (backend, reason, e) = failed.take().unwrap_or((backend, earlier, e));
            return failure(reason, backend, e, decided, fallbacks);
        }
        // Every backend the request reaches is kept for the audit log.
        if !tried.contains(&backend) {
            tried.push(backend.clone());
        }
        // A hedge races the first try against one on the next backend.
        let mut first_result = None;
        let hedge_delay = hedge
            .filter(|_| i == 0 && !last)
            .and_then(|configured| resilience.hedge_delay(&backend, configured));
        if let Some(delay) = hedge_delay {
            let next = executors[i + 1].clone();
            // The hedge may reach the next backend too.
            if !tried.iter().any(|b| b == next.backend()) {
                tried.push(next.backend().to_owned());
            }
            let first = metered(
                meter,
                route,
                &executor,
                i,
                timed(resilience, &backend, attempt(executor.clone(), false)),
            );
            match hedged(
                state,
                &backend,
                first,
                delay,
                &next,
                (meter, route, i + 1),
                &mut attempt,
            )
            .await
            {
                Raced::Alone(result, span) => first_result = Some((result, span)),
                Raced::Won { second, value } => {
                    let winner = if second { next.backend() } else { &backend }.to_owned();
                    let reason = format!("{reason}; hedged on {}", next.backend());
                    let index = if second { i + 1 } else { i };
                    return (Ok(value), success(winner, index, &reason, fallbacks));
                }
                Raced::BothFailed { first, second } => {
                    let next_backend = next.backend().to_owned();
                    reason = format!(
                        "{reason}; hedged on {next_backend}; both failed ({}, {})",
                        first.what(),
                        second.what()
                    );
                    let go_on = i + 2 < count && fallback && second.retryable();
                    let e = with_retry_after(resilience, second);
                    if !go_on {
                        return failure(reason, next_backend, e, decided, fallbacks);
                    }
                    fallbacks += 1;
                    failed = Some((next_backend, reason.clone(), e));
                    i += 2;
                    continue;
                }
            }
        }
        let mut retry = 0;
        loop {
            let final_try = last && retry >= retries;
            let (result, mut span) = match first_result.take() {
                Some(raced) => raced,
                None => {
                    metered(
                        meter,
                        route,
                        &executor,
                        i,
                        timed(resilience, &backend, attempt(executor.clone(), final_try)),
                    )
                    .await
                }
            };
            resilience.record(&backend, Outcome::of(&result), &state.metrics);
            let e = match result {
                Ok(value) => {
                    close_span(span, "ok");
                    return (Ok(value), success(backend, i, &reason, fallbacks));
                }
                Err(e) => e,
            };
            if let Some(span) = &mut span {
                span.fail(e.to_string());
                span.set("error.type", e.metric_label());
            }
            let asked = match &e {
                Error::Upstream(u) => u.retry_after_secs.map(std::time::Duration::from_secs),
                _ => None,
            };
            // An upstream's `retry-after` is waited for before a retry there, or, when it is
            // longer than the largest backoff, the next backend is tried instead.
            if e.retryable()
                && !final_try
                && let Some(wait) = resilience.retry_wait(retry, asked)
            {
                tracing::info!(backend = %backend, error = %e, retry = retry + 1, wait_ms = wait.as_millis() as u64, "retrying");
                state
                    .metrics
                    .retries
                    .get_or_create(&BackendLabels {
                        backend: backend.clone(),
                    })
                    .inc();
                reason = format!("{reason}; retried {backend} ({})", e.what());
                close_span(span, "retry");
                tokio::time::sleep(wait).await;
                retry += 1;
                continue;
            }
            let outcome = match &e {
                Error::Unsupported { .. } if !last => "skipped",
                e if !last && fallback && e.retryable() => "fallback",
                _ => "failed",
            };
            close_span(span, outcome);
            match e {
                Error::Unsupported { message, param } if !last => {
                    tracing::debug!(backend = %backend, reason = %message, "backend cannot honour the request, trying the next one");
                    reason = format!("{reason}; skipped {backend} ({param} unsupported)");
                }
                // Only a retryable failure with fallback on and backends left leads to another
                // backend.
                e if !last && fallback && e.retryable() => {
                    tracing::warn!(backend = %backend, error = %e, "backend failed, trying the next one");
                    state
                        .metrics
                        .fallbacks
                        .get_or_create(&BackendLabels {
                            backend: backend.clone(),
                        })
                        .inc();
                    fallbacks += 1;
                    let earlier = reason.clone();
                    reason = format!("{reason}; fallback after {backend} failed ({})", e.what());
                    failed = Some((backend.clone(), earlier, with_retry_after(resilience, e)));
                }
                e => {
                    // The last backend cannot honour the request, but an earlier one failed for
                    // a reason that may pass (429, 5xx): that failure is the answer, with its
                    // status and retry-after.
                    let (backend, reason, e) = match (e, failed.take()) {
                        (Error::Unsupported { .. }, Some(earlier)) => earlier,
                        (e, _) => (
                            backend.clone(),
                            reason.clone(),
                            with_retry_after(resilience, e),
                        ),
                    };
                    return failure(reason, backend, e, decided, fallbacks);
                }
            }
            break;
        }
        i += 1;
    }
    match failed {
        Some((backend, reason, e)) => failure(reason, backend, e, decided, fallbacks),
        None => (
            Err(Error::Internal("route has no backends".into())),
            RouteInfo::unrouted(reason),
        ),
    }
}

/// Ends a try's span with its outcome (`ok`, `retry`, `fallback`, `skipped`, `failed`, ...).
fn close_span(span: Option<LiveSpan>, outcome: &'static str) {
    if let Some(mut span) = span {
        span.set("tandem.outcome", outcome);
    }
}

/// A try on `backend`, counted in flight on its load while it runs, its latency observed when
/// it succeeds.
async fn timed<T>(
    resilience: &Resilience,
    backend: &str,
    attempt: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let load = resilience.load(backend).cloned();
    let _pending = load.as_ref().map(|l| l.start());
    let started = Instant::now();
    let result = attempt.await;
    if let (Ok(_), Some(load)) = (&result, &load) {
        load.observe(started.elapsed(), Instant::now());
    }
    result
}

/// How a hedged first try went.
enum Raced<T> {
    /// It finished before the hedge's delay, or no hedge could be sent: its result and span.
    Alone(Result<T, Error>, Option<LiveSpan>),
    /// One of the two answered first (`second`: the hedge did); the other was dropped.
    Won { second: bool, value: T },
    /// Both failed.
    BothFailed { first: Error, second: Error },
}

/// Runs `first` (a try on `first_backend`) and, if it has not finished after `delay`, a hedge on
/// `next` (when its breaker admits it); the first success wins and the other try is dropped.
/// The outcomes of a race reach the breakers here; a try that ran alone is the caller's to
/// record.
async fn hedged<T, F, Fut>(
    state: &AppState,
    first_backend: &str,
    first: impl std::future::Future<Output = (Result<T, Error>, Option<LiveSpan>)>,
    delay: std::time::Duration,
    next: &Arc<dyn Executor>,
    (meter, route, index): (Option<&Arc<RequestMeter>>, &str, usize),
    attempt: &mut F,
) -> Raced<T>
where
    F: FnMut(Arc<dyn Executor>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    use futures::future::{Either, select};
    let resilience = &state.resilience;
    let mut first = std::pin::pin!(first);
    let timer = std::pin::pin!(tokio::time::sleep(delay));
    if let Either::Left(((result, span), _)) = select(first.as_mut(), timer).await {
        return Raced::Alone(result, span);
    }
    if matches!(resilience.admit(next.backend()), Admission::Refused(_)) {
        let (result, span) = first.await;
        return Raced::Alone(result, span);
    }
    state
        .metrics
        .hedges
        .get_or_create(&BackendLabels {
            backend: next.backend().to_owned(),
        })
        .inc();
    let second = std::pin::pin!(metered(
        meter,
        route,
        next,
        index,
        timed(resilience, next.backend(), attempt(next.clone(), false)),
    ));
    // A raced try's span ends with the race: `ok` for the winner, the loser's when it failed or
    // was dropped.
    let first = async move {
        let (result, span) = first.await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        close_span(span, outcome);
        result
    };
    let second = async move {
        let (result, span) = second.await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        close_span(span, outcome);
        result
    };
    let (first, second) = (std::pin::pin!(first), std::pin::pin!(second));
    let record = |backend: &str, result: &Result<(), &Error>| {
        let outcome = match result {
            Ok(()) => Outcome::Healthy,
            Err(e) => Outcome::of::<()>(&Err((*e).clone())),
        };
        resilience.record(backend, outcome, &state.metrics);
    };
    // The loser of a race is dropped unfinished: it says nothing of its backend's health.
    let (raced, first_outcome, second_outcome) = match select(first, second).await {
        Either::Left((Ok(value), _)) => (
            Raced::Won {
                second: false,
                value,
            },
            Some(Ok(())),
            None,
        ),
        Either::Right((Ok(value), _)) => (
            Raced::Won {
                second: true,
                value,
            },
            None,
            Some(Ok(())),
        ),
        Either::Left((Err(a), second)) => match second.await {
            Ok(value) => (
                Raced::Won {
                    second: true,
                    value,
                },
                Some(Err(a)),
                Some(Ok(())),
            ),
            Err(b) => (
                Raced::BothFailed {
                    first: a.clone(),
                    second: b.clone(),
                },
                Some(Err(a)),
                Some(Err(b)),
            ),
        },
        Either::Right((Err(b), first)) => match first.await {
            Ok(value) => (
                Raced::Won {
                    second: false,
                    value,
                },
                Some(Ok(())),
                Some(Err(b)),
            ),
            Err(a) => (
                Raced::BothFailed {
                    first: a.clone(),
                    second: b.clone(),
                },
                Some(Err(a)),
                Some(Err(b)),
            ),
        },
    };
    for (backend, outcome) in [
        (first_backend, first_outcome),
        (next.backend(), second_outcome),
    ] {
        match outcome {
            Some(Ok(())) => record(backend, &Ok(())),
            Some(Err(e)) => record(backend, &Err(&e)),
            None => resilience.record(backend, Outcome::Untried, &state.metrics),
        }
    }
    raced
}

/// The answer of a request whose tries all failed, `e` the failure that stands.
fn failure<T>(
    reason: String,
    backend: String,
    e: Error,
    decided: bool,
    fallbacks: u32,
) -> (Result<T, Error>, RouteInfo) {
    let explanation = if decided {
        format!("{reason}; backend={backend}; failed ({})", e.what())
    } else {
        format!("{backend}; {reason}; failed ({})", e.what())
    };
    (
        Err(e),
        RouteInfo {
            backend,
            explanation,
            mode: "none",
            fallbacks,
            cache: None,
            tried: Vec::new(),
            privacy: None,
        },
    )
}

/// An upstream's 429 that named no wait gets the one its backend's breaker now has, so a client
/// always learns when to come back.
fn with_retry_after(resilience: &Resilience, e: Error) -> Error {
    match e {
        Error::Upstream(mut u) if u.status == Some(429) && u.retry_after_secs.is_none() => {
            u.retry_after_secs = Some(resilience.retry_after_secs(&u.backend));
            Error::Upstream(u)
        }
        e => e,
    }
}

/// How one request will be run: the executors in order, and the policy's decision when the
/// route is learned.
struct Plan {
    executors: Vec<Arc<dyn Executor>>,
    fallback: bool,
    /// Whether the last executor is the local model added as the cloud's fallback.
    local_fallback: bool,
    /// The route's hedging.
    hedge: Option<Option<std::time::Duration>>,
    reason: String,
    planned: Option<Planned>,
    cascade: Option<Arc<CascadeExecutor>>,
    /// What the privacy step did, noted in the header and the logs.
    privacy: Option<PrivacyNote>,
}

impl Plan {
    /// Runs `attempt` on the plan's executors in order, with its fallback rule and reason; the
    /// route `model` and each backend tried are noted where a timeout's answer can read them.
    async fn run<T, F, Fut>(
        &self,
        state: &AppState,
        hints: &RequestHints,
        model: &str,
        attempt: F,
    ) -> (Result<T, Error>, RouteInfo)
    where
        F: FnMut(Arc<dyn Executor>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let slot = hints.route_slot.as_ref();
        if let Some(slot) = slot {
            slot.note_route(model);
        }
        let tries = Tries {
            executors: self.executors.clone(),
            fallback: self.fallback,
            local_fallback: self.local_fallback,
            hedge: self.hedge,
            reason: self.reason.clone(),
            decided: self.planned.is_some(),
        };
        let mut tried = Vec::new();
        let (result, mut route) = with_fallback(
            state,
            tries,
            slot,
            (hints.meter.as_ref(), model),
            &mut tried,
            attempt,
        )
        .await;
        route.tried = tried;
        if let Some(note) = &self.privacy {
            route.explanation = format!("{}; {}", route.explanation, note.header());
            route.privacy = Some(note.clone());
        }
        (result, route)
    }

    /// Puts every executor that may send the request off this host (a cloud backend, a
    /// cascade that escalates to one) behind the redaction of `screened`.
    fn redact(&mut self, screened: Screened) {
        let Some((redaction, redacted)) = screened.redacted else {
            return;
        };
        let cascade = self.cascade.as_ref().map(|c| Arc::as_ptr(c) as *const ());
        for executor in &mut self.executors {
            let is_cascade = cascade == Some(Arc::as_ptr(executor) as *const ());
            if executor.kind() != BackendKind::Local || is_cascade {
                *executor = Arc::new(RedactingExecutor::new(
                    executor.clone(),
                    redaction.clone(),
                    redacted.clone(),
                ));
            }
        }
    }
}

/// Puts first the deployment power-of-two-choices picks on load (`balance = "p2c"`); the others
/// keep config order after it, as fallbacks.
fn balance(
    state: &AppState,
    route: &crate::config::RouteConfig,
    weights: &[f64],
    executors: &mut [Arc<dyn Executor>],
) {
    let names: Vec<&str> = executors.iter().map(|e| e.backend()).collect();
    let weights: Vec<f64> = names
        .iter()
        .map(|n| {
            route
                .backends
                .iter()
                .position(|b| b == n)
                .and_then(|i| weights.get(i).copied())
                .unwrap_or(1.0)
        })
        .collect();
    let first = state.resilience.pick_first(&names, &weights);
    executors[..=first].rotate_right(1);
}

/// With `resilience.local_fallback` on, puts the local model after a route's cloud backends
/// when none of them is it and the request's placement allows it, so it answers when they all
/// fail. Returns whether it did.
fn add_local_fallback(
    state: &AppState,
    model: &str,
    hints: &RequestHints,
    executors: &mut Vec<Arc<dyn Executor>>,
) -> bool {
    if !state.resilience.settings.local_fallback
        || executors.iter().any(|e| e.kind() == BackendKind::Local)
    {
        return false;
    }
    let placement_ok = state.config.routes.get(model).is_none_or(|route| {
        placement_for(&state.config.router, model, route, hints)
            .is_none_or(|(p, _)| placement_allows(p, BackendKind::Local))
    });
    let local = state
        .executors
        .values()
        .find(|e| e.kind() == BackendKind::Local);
    match local {
        Some(local) if placement_ok => {
            executors.push(local.clone());
            true
        }
        _ => false,
    }
}

/// A request's plan (see [`screened_plan`]), the request noted on its meter; one that cannot be
/// planned has its route noted there too.
async fn metered_plan(
    state: &AppState,
    request: &ChatRequest,
    hints: &RequestHints,
    legacy: bool,
) -> Result<Plan, (Error, RouteInfo)> {
    if let Some(meter) = &hints.meter {
        meter.note_request(request);
    }
    screened_plan(state, request, hints, legacy)
        .await
        .inspect_err(|(_, route)| note_route(hints, &request.model, route))
}

fn no_route(e: Error) -> (Error, RouteInfo) {
    (e, RouteInfo::unrouted("no route"))
}

/// The privacy step, then the plan: a blocked request ends here, a forced-local one is planned
/// on the local model alone, a redacted one puts its off-host backends behind the redaction.
async fn screened_plan(
    state: &AppState,
    request: &ChatRequest,
    hints: &RequestHints,
    legacy: bool,
) -> Result<Plan, (Error, RouteInfo)> {
    let screened = match crate::privacy::screen(&state.config, request, hints, legacy) {
        Ok(s) => s,
        Err((e, note)) => {
            log_privacy(state, hints, &request.model, &note);
            return Err((
                e,
                RouteInfo {
                    explanation: format!("no backend; {}", note.header()),
                    privacy: Some(note),
                    ..RouteInfo::default()
                },
            ));
        }
    };
    let note = screened.note();
    let mut plan = if screened.force_local() {
        local_plan(state, &request.model).map_err(no_route)?
    } else {
        plan(state, request, hints).await?
    };
    if plan.planned.is_none()
        && let Some(note) = &note
    {
        log_privacy(state, hints, &request.model, note);
    }
    plan.privacy = note;
    plan.redact(screened);
    Ok(plan)
}

/// A decision-log line for a request the policy did not decide on, when the route is learned.
fn log_privacy(state: &AppState, hints: &RequestHints, model: &str, note: &PrivacyNote) {
    let learned = state
        .config
        .routes
        .get(model)
        .is_some_and(|r| r.policy == RoutePolicy::Learned);
    if let (Some(policy), true) = (&state.policy, learned) {
        policy.log_event(
            &hints.request_id,
            json!({"model": model, "privacy": note.to_json()}),
        );
    }
}

/// The refusal of a request the privacy step keeps on this host when no local model serves it.
fn no_local_backend(model: &str) -> Error {
    Error::InvalidRequest {
        message: format!(
            "the request holds sensitive data that must stay on this host, and no local model is configured to serve model `{model}`"
        ),
        param: None,
        code: Some("no_backend_allowed"),
    }
}

/// The plan of a request the privacy step keeps on this host: the local model alone, whatever
/// the route's backends (a route without a local model still gets an answer that never left).
fn local_plan(state: &AppState, model: &str) -> Result<Plan, Error> {
    if !state.config.routes.contains_key(model) {
        return Err(Error::ModelNotFound(model.to_owned()));
    }
    let local = state
        .executors
        .values()
        .find(|e| e.kind() == BackendKind::Local)
        .cloned()
        .ok_or_else(|| no_local_backend(model))?;
    Ok(Plan {
        executors: vec![local],
        fallback: false,
        local_fallback: false,
        hedge: None,
        reason: format!("route {model}"),
        planned: None,
        cascade: None,
        privacy: None,
    })
}

async fn plan(
    state: &AppState,
    request: &ChatRequest,
    hints: &RequestHints,
) -> Result<Plan, (Error, RouteInfo)> {
    let model = request.model.as_str();
    let route = state
        .config
        .routes
        .get(model)
        .ok_or_else(|| no_route(Error::ModelNotFound(model.to_owned())))?;
    let policy = match (&state.policy, route.policy) {
        (Some(p), RoutePolicy::Learned) => p,
        _ => {
            let (mut executors, fallback) = route_for(state, model, hints).map_err(no_route)?;
            let mut reason = format!("route {model}");
            if let Some(weights) = &route.balance {
                balance(state, route, weights, &mut executors);
                reason.push_str("; balanced (p2c)");
            }
            let local_fallback = add_local_fallback(state, model, hints, &mut executors);
            return Ok(Plan {
                executors,
                fallback,
                local_fallback,
                hedge: route.hedge,
                reason,
                planned: None,
                cascade: None,
                privacy: None,
            });
        }
    };
    let local_ready = state.local.as_ref().is_some_and(|l| l.is_ready());
    let mut span = hints
        .meter
        .as_ref()
        .and_then(|m| m.span(None, "tandem.policy", SpanKind::Internal));
    let planned = policy.plan(model, route, request, hints, local_ready).await;
    let header = planned.decision.explanation.header_value();
    if let Some(span) = &mut span {
        span.set("tandem.decision", choice_kind(&planned.decision.choice));
        span.set("tandem.reasons", header.clone());
        span.set("tandem.route", model);
    }
    drop(span);
    if planned.decision.choice == Choice::Reject {
        policy.log(
            &hints.request_id,
            &planned.decision,
            json!({"model": model, "status": "rejected"}),
        );
        count_decision(state, "reject");
        // A placement nothing can keep is the client's (or its key's) rule: 400. Otherwise the
        // allowed backends are down or too slow right now: 503, try again shortly.
        let placement = placement_for(&state.config.router, model, route, hints);
        let error = match placement {
            Some((p, source))
                if !route.backends.iter().any(|b| {
                    state
                        .config
                        .backends
                        .get(b)
                        .is_some_and(|c| placement_allows(p, c.kind))
                }) =>
            {
                placement_error(model, p, &source)
            }
            _ => Error::NotReady(format!(
                "no backend of model `{model}` can serve this request now (excluded: {})",
                planned.decision.explanation.excluded.join(", ")
            )),
        };
        return Err((error, RouteInfo::unrouted(header)));
    }
    let executor = |name: &str| -> Option<Arc<dyn Executor>> {
        let found = state.executors.get(name).cloned();
        if found.is_none() {
            tracing::warn!(backend = %name, "backend is not running; skipped");
        }
        found
    };
    let mut executors = Vec::new();
    let mut cascade = None;
    if let Choice::Cascade {
        local,
        cloud,
        threshold,
    } = &planned.decision.choice
    {
        let local_config = state.config.backends.get(local);
        match (local_config, &state.local, executor(cloud)) {
            (Some(cfg), Some(model), Some(cloud_executor)) if cfg.kind == BackendKind::Local => {
                let run = Arc::new(CascadeExecutor::new(
                    LocalExecutor::new(cfg.clone(), model.clone()),
                    cloud_executor,
                    policy.cascade_judge(*threshold),
                    // Half the first-token budget to judge, half left for the cloud.
                    state.config.limits.first_token_timeout / 2,
                ));
                cascade = Some(run.clone());
                executors.push(run as Arc<dyn Executor>);
                executors.extend(
                    planned
                        .order
                        .iter()
                        .skip(1)
                        .filter(|name| *name != cloud)
                        .filter_map(|name| executor(name)),
                );
            }
            // No cascade to run: its two backends in turn, then the rest.
            _ => executors.extend(planned.order.iter().filter_map(|name| executor(name))),
        }
    } else {
        executors.extend(planned.order.iter().filter_map(|name| executor(name)));
    }
    if executors.is_empty() {
        return Err(no_route(Error::NotReady(format!(
            "no backend of model `{model}` is running"
        ))));
    }
    let local_fallback = add_local_fallback(state, model, hints, &mut executors);
    Ok(Plan {
        executors,
        fallback: route.fallback,
        local_fallback,
        hedge: route.hedge,
        reason: header,
        planned: Some(planned),
        cascade,
        privacy: None,
    })
}

/// The kind of a policy's choice.
fn choice_kind(choice: &Choice) -> &'static str {
    match choice {
        Choice::Local { .. } => "local",
        Choice::Cloud { .. } => "cloud",
        Choice::Cascade { .. } => "cascade",
        Choice::Speculative { .. } => "speculative",
        Choice::Reject => "reject",
    }
}

fn count_decision(state: &AppState, choice: &'static str) {
    state
        .metrics
        .route_decisions
        .get_or_create(&crate::metrics::DecisionLabels { choice })
        .inc();
}

/// A decision log line waiting for its request's outcome.
struct PendingLog {
    policy: Arc<crate::routing::LearnedRouting>,
    request_id: Arc<str>,
    decision: tandem_router_policy::Decision,
    line: serde_json::Value,
}

impl PendingLog {
    /// Writes the line.
    fn write(self) {
        self.policy.log(&self.request_id, &self.decision, self.line);
    }

    /// Adds what the answer cost against its route's reference, and the local compute it took.
    fn add_bill(&mut self, bill: Bill, meter: Option<&Arc<RequestMeter>>) {
        self.line["cost_paid"] = bill.paid.into();
        self.line["cost_reference"] = bill.reference.into();
        self.line["cost_saved"] = bill.saved().into();
        if let Some((cpu, joules)) = meter.map(|m| m.local_compute()).filter(|c| c.0 > 0.0) {
            self.line["cpu_seconds"] = cpu.into();
            self.line["energy_joules"] = joules.into();
        }
    }
}

/// After a learned decision ran: the header, the metric and, for an escalated cascade, the
/// implicit feedback. Returns the decision log line (its status as of now) for the caller to
/// write: at once for a whole answer, when the stream ends for a stream.
fn finish_plan<T>(
    state: &AppState,
    plan: &Plan,
    hints: &RequestHints,
    model: &str,
    result: &Result<T, Error>,
    route: &mut RouteInfo,
) -> Option<PendingLog> {
    let (Some(planned), Some(policy)) = (&plan.planned, &state.policy) else {
        return None;
    };
    // The cascade's outcome counts only when the cascade answered, not a backend after it.
    let outcome: Option<CascadeOutcome> = plan
        .cascade
        .as_ref()
        .filter(|c| route.backend == c.backend())
        .and_then(|c| c.outcome());
    let kind = choice_kind(&planned.decision.choice);
    count_decision(state, kind);
    if outcome.is_some() && result.is_ok() {
        route.mode = "cascade";
    }
    if let Some(o) = &outcome {
        if !route.backend.is_empty() && route.backend != o.answered_by {
            // The cascade ran under the local backend's name; the header names who answered.
            route.explanation = route.explanation.replace(
                &format!("; backend={}", route.backend),
                &format!("; backend={}", o.answered_by),
            );
            route.backend = o.answered_by.clone();
        }
        let conf = o
            .confidence
            .map(|c| format!("{:.3}", c.score()))
            .unwrap_or_else(|| "none".into());
        route.explanation = format!(
            "{}; escalated={}; confidence={conf}",
            route.explanation, o.escalated
        );
        if let Some(score) = o.answer_score {
            route.explanation = format!("{}; answer_check={score:.3}", route.explanation);
        }
        if o.escalated {
            let feedback = Feedback {
                request_id: hints.request_id.to_string(),
                escalated: true,
                ..Feedback::default()
            };
            if policy.router.apply_feedback(&feedback).is_ok() {
                policy.note_update();
            }
        }
    }
    // Feedback on the answer teaches the arm of the backend that gave it.
    if result.is_ok() && !route.backend.is_empty() {
        policy.router.answered_by(&hints.request_id, &route.backend);
    }
    let mut line = json!({
        "model": model,
        "answered_by": route.backend,
        "status": if result.is_ok() { "ok" } else { "error" },
    });
    if let Some(o) = &outcome {
        line["escalated"] = o.escalated.into();
        line["confidence"] = json!(o.confidence);
        if let Some(score) = o.answer_score {
            line["answer_check"] = json!(score);
        }
        if let Some(e) = &o.local_error {
            line["local_error"] = e.clone().into();
        }
    }
    if let Err(e) = result {
        line["error"] = e.metric_label().into();
    }
    if let Some(note) = &plan.privacy {
        line["privacy"] = note.to_json();
    }
    Some(PendingLog {
        policy: policy.clone(),
        request_id: hints.request_id.clone(),
        decision: planned.decision.clone(),
        line,
    })
}

/// A stream whose plan's decision log line (if it has one) is written when it ends, with its
/// usage.
fn log_at_stream_end(
    state: &AppState,
    hints: &RequestHints,
    (model, route): (&str, &RouteInfo),
    log: Option<PendingLog>,
    events: EventStream,
) -> EventStream {
    match log {
        Some(log) => logged_at_end(
            events,
            log,
            state.config.clone(),
            (model.to_owned(), route.backend.clone()),
            hints.meter.clone(),
        ),
        None => events,
    }
}

/// Writes a stream's decision log line when the stream ends: `ok` after its finish event,
/// `error` after an error event, `cancelled` when the client left before either.
fn logged_at_end(
    events: EventStream,
    log: PendingLog,
    config: Arc<crate::config::Config>,
    (route, backend): (String, String),
    meter: Option<Arc<RequestMeter>>,
) -> EventStream {
    struct LogOnEnd {
        log: Option<PendingLog>,
        status: &'static str,
        error: Option<String>,
        usage: Option<Usage>,
        config: Arc<crate::config::Config>,
        route: String,
        backend: String,
        meter: Option<Arc<RequestMeter>>,
    }
    impl Drop for LogOnEnd {
        fn drop(&mut self) {
            if let Some(mut log) = self.log.take() {
                log.line["status"] = self.status.into();
                if let Some(e) = self.error.take() {
                    log.line["error"] = e.into();
                }
                if let Some(usage) = &self.usage {
                    let bill = bill(&self.config, &self.route, &self.backend, usage);
                    log.add_bill(bill, self.meter.as_ref());
                }
                log.write();
            }
        }
    }
    let mut guard = LogOnEnd {
        log: Some(log),
        status: "cancelled",
        error: None,
        usage: None,
        config,
        route,
        backend,
        meter,
    };
    events
        .inspect(move |event| match event {
            ChatEvent::Finish { .. } if guard.status == "cancelled" => guard.status = "ok",
            ChatEvent::Usage(u) => guard.usage = Some(*u),
            ChatEvent::Error(e) => {
                guard.status = "error";
                guard.error = Some(e.kind.as_str().to_owned());
            }
            _ => {}
        })
        .boxed()
}

/// Notes where the request went on its meter.
fn note_route(hints: &RequestHints, model: &str, route: &RouteInfo) {
    if let Some(meter) = &hints.meter {
        meter.note_route(
            model,
            &route.backend,
            route.mode,
            &route.explanation,
            route.fallbacks,
        );
    }
}

/// Records a backend's timings (and errors) as the policy's live state, and counts the request
/// on it while its stream runs.
fn measured(events: EventStream, live: Arc<LiveBackend>, started: StdInstant) -> EventStream {
    struct Timing {
        live: Arc<LiveBackend>,
        _in_flight: crate::routing::InFlight,
        started: StdInstant,
        first: Option<StdInstant>,
        tokens: u32,
        done: bool,
    }
    let mut t = Timing {
        _in_flight: live.enter(),
        live,
        started,
        first: None,
        tokens: 0,
        done: false,
    };
    events
        .inspect(move |event| match event {
            ChatEvent::TextDelta { .. } | ChatEvent::ToolCallDelta { .. } => {
                t.first.get_or_insert_with(StdInstant::now);
                t.tokens += 1;
            }
            ChatEvent::Finish { .. } if !t.done => {
                t.done = true;
                let now = StdInstant::now();
                let first = t.first.unwrap_or(now);
                let ttft = (first - t.started).as_secs_f64() * 1000.0;
                let itl = (t.tokens > 1)
                    .then(|| (now - first).as_secs_f64() * 1000.0 / f64::from(t.tokens - 1));
                t.live.state.record_success(ttft, itl);
            }
            ChatEvent::Error(_) if !t.done => {
                t.done = true;
                t.live.state.record_error();
            }
            _ => {}
        })
        .boxed()
}

fn record_chat(
    state: &AppState,
    backend: &str,
    started: StdInstant,
    result: Result<&Usage, &Error>,
) {
    let Some(live) = state.policy.as_ref().and_then(|p| p.backend(backend)) else {
        return;
    };
    match result {
        Ok(usage) => {
            let total = started.elapsed().as_secs_f64() * 1000.0;
            let n = usage.completion_tokens.max(1) as f64;
            let itl = live.snapshot().itl_ms;
            live.state
                .record_success((total - itl * (n - 1.0)).max(0.0), None);
        }
        Err(e) if e.retryable() => live.state.record_error(),
        Err(_) => {}
    }
}

/// The cache step, before planning: the route's cache rule, the request's `cache-control` and
/// the router's encoder (for a semantic route) go to the response cache.
async fn cache_lookup(state: &AppState, request: &ChatRequest, hints: &RequestHints) -> Lookup {
    let rule = state
        .config
        .routes
        .get(&request.model)
        .and_then(|r| r.cache.as_ref());
    if rule.is_none() {
        return Lookup::Off;
    }
    let encoder = state.policy.as_ref().and_then(|p| p.encoder());
    state
        .cache
        .lookup(request, rule, hints.cache, encoder)
        .await
}

/// The route of an answer from the cache: `cache; route X; exact hit`.
fn cached_route(hit: &Hit, model: &str) -> RouteInfo {
    RouteInfo {
        backend: CACHE_BACKEND.into(),
        explanation: hit.explanation(model),
        mode: "cache",
        fallbacks: 0,
        cache: Some(CacheStatus::Hit),
        tried: Vec::new(),
        privacy: None,
    }
}

/// A lookup that did not answer: the fill for the backends' answer and the header's status.
type CacheMiss = (Option<Fill>, Option<CacheStatus>);

/// The cache's answer (`Err`, returned at once), or what the backends' answer needs (`Ok`).
async fn cache_step(
    state: &AppState,
    request: &ChatRequest,
    hints: &RequestHints,
) -> Result<CacheMiss, (Hit, RouteInfo)> {
    match cache_lookup(state, request, hints).await {
        Lookup::Hit(hit) => {
            let route = cached_route(&hit, &request.model);
            // The dashboard's routing mix and the savings count the hit.
            if let Some(meter) = &hints.meter {
                meter.note_cache_hit(&request.model);
            }
            Err((hit, route))
        }
        Lookup::Pass { status, fill } => Ok((fill, Some(status))),
        Lookup::Off => Ok((None, None)),
    }
}

/// Runs a non-streaming request (fixed route, or the policy's decision on a learned one).
pub async fn run_chat(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
) -> (Result<ChatResponse, Error>, RouteInfo) {
    let (fill, status) = match cache_step(state, &request, hints).await {
        Ok(miss) => miss,
        Err((hit, route)) => return (Ok(hit.answer), route),
    };
    let (result, mut route) = run_whole(
        state,
        request,
        hints,
        |executor, request| async move { executor.chat(request).await },
        |answer| &answer.usage,
    )
    .await;
    route.cache = status;
    if let (Ok(answer), Some(fill)) = (&result, fill) {
        fill.whole(answer).await;
    }
    (result, route)
}

/// Runs a non-streaming request like [`run_chat`], for an OpenAI client: a backend that speaks
/// OpenAI's format upstream hands its answer on as it came, without decoding and encoding it.
pub async fn run_chat_completion(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
) -> (Result<ChatCompletion, Error>, RouteInfo) {
    let (fill, status) = match cache_step(state, &request, hints).await {
        Ok(miss) => miss,
        Err((hit, route)) => return (Ok(ChatCompletion::encode(&hit.answer)), route),
    };
    let (result, mut route) = run_whole(
        state,
        request,
        hints,
        |executor, request| async move { executor.chat_completion(request).await },
        |answer| &answer.usage,
    )
    .await;
    route.cache = status;
    // The answer passed on as sent is read into the normalized one the cache keeps.
    if let (Ok(answer), Some(fill)) = (&result, fill)
        && let Ok(normalized) = openai::parse_chat_response(&answer.body, &route.backend)
    {
        fill.whole(&normalized).await;
    }
    (result, route)
}

/// Plans a non-streaming request and runs `answer` on its backends in turn, with the plan's
/// fallback, timing and decision log; `usage` reads the token counts of an answer.
async fn run_whole<T, F, Fut>(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
    answer: F,
    usage: fn(&T) -> &Usage,
) -> (Result<T, Error>, RouteInfo)
where
    F: Fn(Arc<dyn Executor>, ChatRequest) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let model = request.model.clone();
    let plan = match metered_plan(state, &request, hints, false).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let measure = plan.cascade.is_none();
    let mut request = Some(request);
    let answer = &answer;
    let (result, mut route) = plan
        .run(state, hints, &model, |executor, last| {
            let request = attempt_request(&mut request, last);
            async move {
                let request = request?;
                let started = StdInstant::now();
                let _in_flight = state
                    .policy
                    .as_ref()
                    .and_then(|p| p.backend(executor.backend()))
                    .map(|l| l.enter());
                let result = answer(executor.clone(), request).await;
                if measure {
                    record_chat(
                        state,
                        executor.backend(),
                        started,
                        result.as_ref().map(usage),
                    );
                }
                result
            }
        })
        .await;
    if let Some(mut log) = finish_plan(state, &plan, hints, &model, &result, &mut route) {
        if let Ok(answer) = &result {
            let bill = bill(&state.config, &model, &route.backend, usage(answer));
            log.add_bill(bill, hints.meter.as_ref());
        }
        log.write();
    }
    note_route(hints, &model, &route);
    (result, route)
}

/// The request for one try: a copy while a later try may still need it, the request itself on
/// the last try (a long conversation is not copied for nothing).
fn attempt_request(request: &mut Option<ChatRequest>, last: bool) -> Result<ChatRequest, Error> {
    let taken = if last {
        request.take()
    } else {
        request.clone()
    };
    taken.ok_or_else(|| Error::Internal("the request was already sent on its last try".into()))
}

/// Runs a legacy completion: planned like a chat request (the policy reads the prompt as one user
/// turn), then tried on the plan's backends in turn; one without the legacy API is skipped. A
/// stream's every try stops waiting for its upstream after the first-token timeout (the next
/// backend then gets its own), and its decision is logged
/// once it starts (the local model's stream carries engine events, not chat events to watch).
pub async fn run_completion(
    state: &AppState,
    call: &CompletionCall,
    hints: &RequestHints,
    first_token: Option<FirstTokenDeadline>,
) -> (Result<CompletionOutput, Error>, RouteInfo) {
    let model = call.request.model.as_str();
    if let Some(mut route) = code_model_route(state, call) {
        let cloud = state.config.ide.as_ref().and_then(|i| i.cloud.as_ref());
        // The prompt as the code model computes it, built once for the policy and the run.
        let local = code_engine(state).and_then(|engine| {
            let tokens = local_completion::prompt_tokens(&engine, &call.request)?;
            Ok((engine, tokens))
        });
        if let Some(cloud) = cloud.filter(|_| call.request.suffix.is_some()) {
            // The prompt's tokens the code model would compute: those its prefix cache lacks;
            // a prompt it cannot take at all (longer than its context) is the cloud's to answer.
            let computed = local
                .as_ref()
                .map_or(UNFIT_TOKENS, |(engine, tokens)| uncached(engine, tokens));
            let shape = IdeShape {
                single_line: call.request.stop.iter().any(|s| s == "\n"),
                n_predict: call.request.max_tokens,
                prompt_tokens: computed,
                budget_ms: None,
            };
            match ide_decision(state, cloud, shape, &call.policy_view(), hints) {
                IdeDecision::Cloud(why) => {
                    let mut call = call.clone();
                    call.request.model = cloud.model.clone();
                    call.body.insert("model".into(), json!(cloud.model));
                    match call_cloud(state, cloud, &call, None).await {
                        Ok(output) => return (Ok(output), cloud_route(cloud, &why)),
                        Err(e) => fell_back(&mut route, cloud, &e),
                    }
                }
                IdeDecision::Local(why) | IdeDecision::LocalFirst(why) => {
                    route.explanation = format!("{}; {why}", route.explanation)
                }
            }
        }
        let result = match local {
            Ok((engine, tokens)) => {
                local_completion::complete_prompt(&engine, &call.request, tokens, &route.backend)
                    .await
            }
            Err(e) => Err(e),
        };
        return (result, route);
    }
    let view = call.policy_view();
    let plan = match metered_plan(state, &view, hints, true).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let stream = call.request.stream;
    let (result, mut route) = plan
        .run(state, hints, model, |executor, _last| {
            let deadline = first_token.filter(|_| stream);
            async move { within(deadline, executor.completion(call)).await }
        })
        .await;
    if let Some(log) = finish_plan(state, &plan, hints, model, &result, &mut route) {
        log.write();
    }
    note_route(hints, model, &route);
    (result, route)
}

/// Runs a request for another of the upstreams' APIs (`api`: embeddings, a Responses request
/// passed through) on the route's backends in config order, placement applied: the first that
/// serves the API answers with its body as it came (streamed when `stream`); one without the API
/// is skipped.
pub async fn run_forward(
    state: &AppState,
    api: Api,
    view: &ChatRequest,
    body: &Map<String, Value>,
    stream: bool,
    hints: &RequestHints,
) -> (Result<Forwarded, Error>, RouteInfo) {
    run_in_config_order(state, view, hints, |executor| async move {
        executor.forward(api, body, stream).await
    })
    .await
}

/// Counts the input tokens of `request` on the route's backends in config order: the local
/// model exactly, an Anthropic backend by asking it, others by estimate.
pub async fn run_count_tokens(
    state: &AppState,
    request: &ChatRequest,
    body: &Map<String, Value>,
    hints: &RequestHints,
) -> (Result<TokenCount, Error>, RouteInfo) {
    run_in_config_order(state, request, hints, |executor| async move {
        executor.count_tokens(request, body).await
    })
    .await
}

/// Runs `attempt` on the route's backends in config order with its fallback rule, after the
/// privacy step over `view` (the request's text as the policy reads it). The body goes upstream
/// as the client wrote it, so nothing is redacted: `block` refuses, and `redact` and
/// `force-local` keep the request on this host (the local model, or a 400 without one).
async fn run_in_config_order<T, F, Fut>(
    state: &AppState,
    view: &ChatRequest,
    hints: &RequestHints,
    mut attempt: F,
) -> (Result<T, Error>, RouteInfo)
where
    F: FnMut(Arc<dyn Executor>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let model = view.model.as_str();
    let (mut executors, fallback) = match route_for(state, model, hints) {
        Ok(r) => r,
        Err(e) => {
            let (e, route) = no_route(e);
            return (Err(e), route);
        }
    };
    let privacy = match crate::privacy::screen(&state.config, view, hints, false) {
        Ok(mut screened) => {
            // The body goes upstream as written: what would be redacted stays here instead.
            if screened.redacted.take().is_some() {
                screened.action = PrivacyAction::ForceLocal;
            }
            if screened.force_local() {
                executors.retain(|e| e.kind() == BackendKind::Local);
                if executors.is_empty() {
                    let note = screened.note();
                    let route = RouteInfo {
                        explanation: note
                            .as_ref()
                            .map_or_else(String::new, |n| format!("no backend; {}", n.header())),
                        privacy: note,
                        ..RouteInfo::default()
                    };
                    return (Err(no_local_backend(model)), route);
                }
            }
            screened.note()
        }
        Err((e, note)) => {
            log_privacy(state, hints, model, &note);
            let route = RouteInfo {
                explanation: format!("no backend; {}", note.header()),
                privacy: Some(note),
                ..RouteInfo::default()
            };
            return (Err(e), route);
        }
    };
    let slot = hints.route_slot.as_ref();
    if let Some(slot) = slot {
        slot.note_route(model);
    }
    let tries = Tries {
        executors,
        fallback,
        local_fallback: false,
        hedge: None,
        reason: format!("route {model}"),
        decided: false,
    };
    let mut tried = Vec::new();
    let (result, mut route) = with_fallback(
        state,
        tries,
        slot,
        (hints.meter.as_ref(), model),
        &mut tried,
        |executor, _last| attempt(executor),
    )
    .await;
    route.tried = tried;
    if route.privacy.is_none() {
        route.privacy = privacy;
    }
    (result, route)
}

/// What answered a Responses request.
pub enum ResponsesOutput {
    /// OpenAI's own Responses API, its answer as it came.
    Passed(Forwarded),
    /// A chat backend's stream, to encode as Responses events.
    Events(EventStream),
    /// A chat backend's whole answer, to encode as a `response` object.
    Whole(Box<ChatResponse>),
}

impl std::fmt::Debug for ResponsesOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Passed(_) => "Passed",
            Self::Events(_) => "Events",
            Self::Whole(_) => "Whole",
        })
    }
}

/// How a Responses request may reach OpenAI's own Responses API.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeResponses<'a> {
    /// The client's body, when it may go to OpenAI's own API as it came (not when it continues
    /// a response stored here, which that API does not hold).
    pub body: Option<&'a Map<String, Value>>,
    /// What only that API can run (a built-in tool, a file), by parameter and kind: every other
    /// backend is skipped with a 400 naming it.
    pub openai_only: Option<&'a (String, String)>,
}

/// Runs a Responses request like a chat request (the privacy step, the route's policy, cascade,
/// speculative backends, placement, fallback, timings and decision log), each backend taking it
/// in its own way: OpenAI's own Responses API as the client sent it, the others the normalized
/// request (a redacted request's copy included).
pub async fn run_responses(
    state: &AppState,
    request: ChatRequest,
    native: NativeResponses<'_>,
    hints: &RequestHints,
    first_token: Option<FirstTokenDeadline>,
) -> (Result<ResponsesOutput, Error>, RouteInfo) {
    let model = request.model.clone();
    let stream = request.stream;
    // The privacy step as for chat: a redacted request's off-host backends are wrapped, and a
    // wrapped one takes the redacted copy as chat, never the client's body as it came.
    let plan = match metered_plan(state, &request, hints, false).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let measure = plan.cascade.is_none();
    let mut request = Some(request);
    let (result, mut route) = plan
        .run(state, hints, &model, |executor, last| {
            let request = attempt_request(&mut request, last);
            let deadline = first_token.filter(|_| stream);
            async move {
                if let Some(body) = native.body
                    && executor.passes_through(Api::Responses)
                {
                    let forwarded = executor.forward(Api::Responses, body, stream);
                    return within(deadline, forwarded)
                        .await
                        .map(ResponsesOutput::Passed);
                }
                if let Some((param, what)) = native.openai_only {
                    return Err(crate::executor::cannot_honour(
                        executor.backend(),
                        param,
                        &format!("cannot run `{what}`: only OpenAI's own Responses API can"),
                    ));
                }
                let request = request?;
                if stream {
                    return start_stream(state, &executor, request, deadline, measure)
                        .await
                        .map(ResponsesOutput::Events);
                }
                let started = StdInstant::now();
                let _in_flight = state
                    .policy
                    .as_ref()
                    .and_then(|p| p.backend(executor.backend()))
                    .map(|l| l.enter());
                let result = executor.chat(request).await;
                if measure {
                    record_chat(
                        state,
                        executor.backend(),
                        started,
                        result.as_ref().map(|a| &a.usage),
                    );
                }
                result.map(|a| ResponsesOutput::Whole(Box::new(a)))
            }
        })
        .await;
    let log = finish_plan(state, &plan, hints, &model, &result, &mut route);
    note_route(hints, &model, &route);
    let result = match result {
        Ok(ResponsesOutput::Events(events)) => Ok(ResponsesOutput::Events(log_at_stream_end(
            state,
            hints,
            (&model, &route),
            log,
            events,
        ))),
        other => {
            if let Some(log) = log {
                log.write();
            }
            other
        }
    };
    (result, route)
}

/// Starts a streaming request. Each try has its own first-token budget (the first-token timeout
/// from when it starts): a backend that stalls before its first token, or fails before it, is a
/// failed try, and the next backend gets the request with a budget of its own.
pub async fn run_stream(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
    first_token: Option<FirstTokenDeadline>,
) -> (Result<EventStream, Error>, RouteInfo) {
    let (fill, status) = match cache_step(state, &request, hints).await {
        Ok(miss) => miss,
        Err((hit, route)) => return (Ok(hit.events()), route),
    };
    let model = request.model.clone();
    let plan = match metered_plan(state, &request, hints, false).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let measure = plan.cascade.is_none();
    let mut request = Some(request);
    let (result, mut route) = plan
        .run(state, hints, &model, |executor, last| {
            let request = attempt_request(&mut request, last);
            async move { start_stream(state, &executor, request?, first_token, measure).await }
        })
        .await;
    let log = finish_plan(state, &plan, hints, &model, &result, &mut route);
    note_route(hints, &model, &route);
    let result = match result {
        Ok(events) => Ok(log_at_stream_end(
            state,
            hints,
            (&model, &route),
            log,
            events,
        )),
        Err(e) => {
            if let Some(log) = log {
                log.write();
            }
            Err(e)
        }
    };
    route.cache = status;
    let result = match (result, fill) {
        (Ok(events), Some(fill)) => Ok(fill.stream(events)),
        (result, _) => result,
    };
    (result, route)
}

/// Starts `request` streaming on `executor` within its try's own first-token budget, up to its
/// first content (see [`run_stream`]); with `measure`, its timings and errors go to the policy's
/// live state of the backend.
async fn start_stream(
    state: &AppState,
    executor: &Arc<dyn Executor>,
    request: ChatRequest,
    first_token: Option<FirstTokenDeadline>,
    measure: bool,
) -> Result<EventStream, Error> {
    let started = StdInstant::now();
    let live = state
        .policy
        .as_ref()
        .and_then(|p| p.backend(executor.backend()))
        .cloned();
    let started_stream = async {
        let events = executor.chat_stream(request).await?;
        let events = match &live {
            Some(live) if measure => measured(events, live.clone(), started),
            _ => events,
        };
        first_content(events, executor.backend()).await
    };
    let result = within(first_token, started_stream).await;
    if let (Err(e), Some(live)) = (&result, live)
        && measure
        && e.retryable()
    {
        live.state.record_error();
    }
    result
}

/// `future`'s outcome, or the first-token timeout's error once this try's own budget (the
/// configured timeout from now) runs out first.
async fn within<T>(
    first_token: Option<FirstTokenDeadline>,
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match first_token.map(per_try) {
        Some(d) => tokio::time::timeout_at(d.at, future)
            .await
            .unwrap_or_else(|_| Err(d.error())),
        None => future.await,
    }
}

/// A try's own first-token deadline: the configured timeout from now.
fn per_try(configured: FirstTokenDeadline) -> FirstTokenDeadline {
    FirstTokenDeadline {
        at: Instant::now() + std::time::Duration::from_millis(configured.millis),
        millis: configured.millis,
    }
}

/// Reads a stream up to its first event with content (anything but `Start`) and puts what it
/// read back in front. A retryable failure before any content is the try's failure, so the next
/// backend can take the request; one that is not stays in the stream for the client to see.
async fn first_content(mut events: EventStream, backend: &str) -> Result<EventStream, Error> {
    let mut head = Vec::with_capacity(2);
    while let Some(event) = events.next().await {
        match event {
            start @ ChatEvent::Start { .. } => head.push(start),
            ChatEvent::Error(e) if e.retryable => {
                return Err(crate::executor::upstream_error(backend, e));
            }
            other => {
                head.push(other);
                break;
            }
        }
    }
    Ok(futures::stream::iter(head).chain(events).boxed())
}

/// Where `/v1/completions` goes to the code model (`[ide]`): a request that names it, or one with
/// a `suffix` on a route served by the local model alone.
fn code_model_route(state: &AppState, call: &CompletionCall) -> Option<RouteInfo> {
    let ide = state.config.ide.as_ref()?;
    let model = call.request.model.as_str();
    let local_route = || {
        state.config.routes.get(model).is_some_and(|r| {
            r.backends.iter().all(|b| {
                state
                    .config
                    .backends
                    .get(b)
                    .is_some_and(|b| b.kind == BackendKind::Local)
            })
        })
    };
    let why = if ide.is_named(model) {
        "code model"
    } else if call.request.suffix.is_some() && local_route() {
        "fill in the middle on the code model"
    } else {
        return None;
    };
    Some(RouteInfo::local(
        CODE_BACKEND,
        format!("{CODE_BACKEND}; {why} ({})", ide.model),
    ))
}

/// The backend name the code model answers as (`x-tandem-route`, metrics).
pub const CODE_BACKEND: &str = "ide";

/// The engine that fills in the middle: the `[ide]` code model, else the local model.
fn code_engine(state: &AppState) -> Result<tandem_local_model::Engine, Error> {
    match (&state.ide, &state.local) {
        (Some(code), _) | (None, Some(code)) => code.engine(),
        (None, None) => Err(Error::Unsupported {
            message: "no local model is configured to fill in the middle; add [ide] or run `tandem serve --ide`".into(),
            param: "input_prefix".into(),
        }),
    }
}

/// Runs an `/infill` request: on the `[ide] cloud` FIM backend where the IDE policy
/// ([`crate::routing::ide::decide`]) sends it, else (and whenever the cloud fails) on the code
/// model, where a newer request of the same editor session stops the older. With `chunks` it
/// streams; `route_ready` hears the route before the first chunk is sent.
pub async fn run_infill(
    state: &AppState,
    request: &InfillRequest,
    hints: &RequestHints,
    chunks: Option<tokio::sync::mpsc::Sender<InfillChunk>>,
    route_ready: Option<tokio::sync::oneshot::Sender<RouteInfo>>,
) -> (Result<InfillOutcome, Error>, RouteInfo) {
    let mut sink = InfillSink {
        route_ready,
        chunks,
    };
    let (backend, model) = match (&state.config.ide, &state.config.local) {
        (Some(ide), _) => (CODE_BACKEND, ide.model.as_str()),
        (None, Some(local)) => ("local", local.model.as_str()),
        (None, None) => ("", ""),
    };
    let mut route = RouteInfo::local(backend, format!("{backend}; infill ({model})"));
    let engine = match code_engine(state) {
        Ok(e) => e,
        Err(e) => return (Err(e), route),
    };
    let ide = state.config.ide.as_ref();
    let prepared = match infill::Prepared::new(&engine, request, ide) {
        Ok(p) => p,
        Err(e) => return (Err(e), route),
    };
    let cloud = ide.and_then(|i| i.cloud.as_ref());
    // Where the local model starts multi-line work the cloud may take: the confidence under
    // which it does.
    let mut unsure_below = 0.0;
    if let Some(cloud) = cloud {
        let computed = uncached(&engine, &prepared.prompt.tokens);
        let (shape, view) = infill_shape(state, request, computed);
        match ide_decision(state, cloud, shape, &view, hints) {
            IdeDecision::Cloud(why) => match cloud_infill(state, cloud, request).await {
                Ok(outcome) => return sink.cloud(outcome, cloud_route(cloud, &why)).await,
                Err(e) => fell_back(&mut route, cloud, &e),
            },
            IdeDecision::Local(why) => route.explanation = format!("{}; {why}", route.explanation),
            IdeDecision::LocalFirst(why) => {
                route.explanation = format!("{}; {why}", route.explanation);
                unsure_below = cloud.confidence;
            }
        }
    }
    let run = async |request: &InfillRequest, chunks, unsure_below| {
        infill::run(
            &engine,
            request,
            &prepared,
            &state.editors,
            chunks,
            unsure_below,
        )
        .await
    };
    let mut unsure = None;
    if sink.chunks.is_some() && unsure_below > 0.0 {
        // A stream shows its first words as they come (and is not stopped midway), so its
        // first tokens are judged in a probe before anything is sent; the run that follows
        // takes the probe's prompt and tokens from the cache (its answer as drafts), so a sure
        // stream costs about one pass more.
        let probe = InfillRequest {
            n_predict: Some(infill::CONFIDENCE_TOKENS as u32),
            ..request.clone()
        };
        match run(&probe, None, unsure_below).await {
            Ok(o) => unsure = o.unsure,
            Err(e) => return (Err(e), route),
        }
    }
    let mut result = match unsure {
        Some(confidence) => Ok(InfillOutcome {
            unsure: Some(confidence),
            ..InfillOutcome::default()
        }),
        None => {
            sink.route(&route);
            run(request, sink.chunks.clone(), unsure_below).await
        }
    };
    if let (
        Some(cloud),
        Ok(InfillOutcome {
            unsure: Some(confidence),
            ..
        }),
    ) = (cloud, &result)
    {
        let why = format!(
            "local unsure (confidence {confidence:.2} < {:.2})",
            cloud.confidence
        );
        let asked = match state.resilience.admit(&cloud.backend) {
            Admission::Refused(wait) => Err(Error::CircuitOpen {
                backend: cloud.backend.clone(),
                retry_after_secs: wait.as_secs().max(1),
            }),
            _ => cloud_infill(state, cloud, request).await,
        };
        match asked {
            Ok(outcome) => return sink.cloud(outcome, cloud_route(cloud, &why)).await,
            Err(e) => {
                fell_back(&mut route, cloud, &e);
                sink.route(&route);
                // The prompt is cached: the local answer costs its tokens again, not the prompt.
                result = run(request, sink.chunks.clone(), 0.0).await;
            }
        }
    }
    // A warm-up (`n_predict: 0`) answers before its prompt is computed: nothing to time.
    if let Ok(o) = &result
        && !o.superseded
        && request.n_predict != Some(0)
    {
        state.ide_rates.local(
            o.tokens_predicted,
            o.predicted_ms,
            o.computed_tokens(),
            o.prompt_ms,
        );
    }
    (result, route)
}

/// Where an `/infill` answer goes besides its return value: the route, heard once before the
/// first chunk, and the chunks of a stream.
struct InfillSink {
    route_ready: Option<tokio::sync::oneshot::Sender<RouteInfo>>,
    chunks: Option<tokio::sync::mpsc::Sender<InfillChunk>>,
}

impl InfillSink {
    /// Tells the route, the first time only.
    fn route(&mut self, route: &RouteInfo) {
        if let Some(tx) = self.route_ready.take() {
            let _ = tx.send(route.clone());
        }
    }

    /// Hands on a cloud answer: its route, then (streaming) its text as one chunk.
    async fn cloud(
        &mut self,
        outcome: InfillOutcome,
        route: RouteInfo,
    ) -> (Result<InfillOutcome, Error>, RouteInfo) {
        self.route(&route);
        if let Some(tx) = &self.chunks
            && !outcome.content.is_empty()
        {
            let _ = tx.send(InfillChunk::Text(outcome.content.clone())).await;
        }
        (Ok(outcome), route)
    }
}

/// The `x-tandem-route` word for a completion the cloud code model answered.
pub const IDE_CLOUD: &str = "ide-cloud";

/// The route of a completion the cloud code model answered.
fn cloud_route(cloud: &crate::config::IdeCloud, why: &str) -> RouteInfo {
    RouteInfo {
        backend: cloud.backend.clone(),
        explanation: format!("{IDE_CLOUD}; {}: {why}", cloud.backend),
        mode: "cloud",
        tried: vec![cloud.backend.clone()],
        ..RouteInfo::default()
    }
}

/// Notes on the code model's route that the cloud failed first.
fn fell_back(route: &mut RouteInfo, cloud: &crate::config::IdeCloud, e: &Error) {
    route.explanation = format!(
        "{}; {IDE_CLOUD} {} failed ({}), fell back to the code model",
        route.explanation,
        cloud.backend,
        e.metric_label()
    );
    route.fallbacks = 1;
    route.tried.insert(0, cloud.backend.clone());
}

/// The prompt's tokens the code model would compute: those its prefix cache lacks.
fn uncached(engine: &tandem_local_model::Engine, tokens: &[u32]) -> usize {
    tokens.len() - engine.cached_prefix(tokens).min(tokens.len())
}

/// Prompt tokens the IDE policy counts for a prompt the code model cannot take: more than any
/// context, so a cloud that is up answers it.
const UNFIT_TOKENS: usize = 1 << 20;

/// What the IDE policy reads of an `/infill` request whose prompt leaves `computed` tokens to
/// compute, and its text for the privacy step.
fn infill_shape(
    state: &AppState,
    request: &InfillRequest,
    computed: usize,
) -> (IdeShape, ChatRequest) {
    let extra: String = request
        .input_extra
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    let text = format!(
        "{extra}{}{}{}",
        request.input_prefix, request.prompt, request.input_suffix
    );
    let budget_ms = match (request.t_max_prompt_ms, request.t_max_predict_ms) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    let shape = IdeShape {
        single_line: infill::single_line(request),
        n_predict: request.n_predict.unwrap_or(TYPICAL_TOKENS),
        prompt_tokens: computed,
        budget_ms,
    };
    let view = ChatRequest {
        model: state
            .config
            .ide
            .as_ref()
            .map(|i| i.model.clone())
            .unwrap_or_default(),
        messages: vec![tandem_cloud_adapters::Message::text(
            tandem_cloud_adapters::Role::User,
            text,
        )],
        ..ChatRequest::default()
    };
    (shape, view)
}

/// The IDE policy's decision for a request of `shape` whose text `view` holds, with what bars
/// the cloud: privacy (the route's or key's rule found something: the text stays here), then
/// an open breaker.
fn ide_decision(
    state: &AppState,
    cloud: &crate::config::IdeCloud,
    shape: IdeShape,
    view: &ChatRequest,
    hints: &RequestHints,
) -> IdeDecision {
    let private = match crate::privacy::screen(&state.config, view, hints, true) {
        Ok(screened) => screened.action != PrivacyAction::Off,
        Err(_) => true,
    };
    let rates = state.ide_rates.get();
    let barred = private.then_some(Barred::Privacy);
    match decide(shape, rates, barred) {
        IdeDecision::Cloud(why) => match state.resilience.admit(&cloud.backend) {
            Admission::Refused(_) => decide(shape, rates, Some(Barred::BreakerOpen)),
            _ => IdeDecision::Cloud(why),
        },
        local => local,
    }
}

/// `call` on the cloud FIM backend within `timeout_ms` (its `[ide] cloud_timeout_ms` when
/// none), its outcome fed to the backend's breaker, and a whole answer's latency to the cloud's
/// average.
async fn call_cloud(
    state: &AppState,
    cloud: &crate::config::IdeCloud,
    call: &CompletionCall,
    timeout_ms: Option<u64>,
) -> Result<CompletionOutput, Error> {
    let executor = state
        .executors
        .get(&cloud.backend)
        .ok_or_else(|| Error::Internal(format!("backend {} did not start", cloud.backend)))?;
    let timeout = timeout_ms.unwrap_or(cloud.timeout_ms);
    let started = StdInstant::now();
    let result = match tokio::time::timeout(
        std::time::Duration::from_millis(timeout),
        executor.completion(call),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::FirstTokenTimeout(timeout)),
    };
    state
        .resilience
        .record(&cloud.backend, Outcome::of(&result), &state.metrics);
    if let Ok(CompletionOutput::Answer(_)) = &result {
        state
            .ide_rates
            .cloud(started.elapsed().as_secs_f64() * 1000.0);
    }
    result
}

/// One completion on the cloud FIM backend (`/v1/completions` with `suffix`), within its
/// timeout (and the request's budget), the code model's stop rules applied to its text; how it
/// went feeds the backend's breaker and, when it answered, the cloud's latency average.
async fn cloud_infill(
    state: &AppState,
    cloud: &crate::config::IdeCloud,
    request: &InfillRequest,
) -> Result<InfillOutcome, Error> {
    let mut body = Map::new();
    body.insert("model".into(), json!(cloud.model));
    // The editor's other files go before the prefix: the API has no field for them.
    body.insert(
        "prompt".into(),
        json!(format!(
            "{}{}{}",
            infill::extra_as_text(&request.input_extra),
            request.input_prefix,
            request.prompt
        )),
    );
    body.insert("suffix".into(), json!(request.input_suffix));
    body.insert(
        "max_tokens".into(),
        json!(request.n_predict.unwrap_or(TYPICAL_TOKENS)),
    );
    body.insert("temperature".into(), json!(request.params.temperature));
    body.insert("top_p".into(), json!(request.params.top_p));
    if !request.params.stop.is_empty() {
        // OpenAI's API takes at most 4; the rest are applied here.
        let stop: Vec<&String> = request.params.stop.iter().take(4).collect();
        body.insert("stop".into(), json!(stop));
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    let decoded = openai::decode_completion_request(&bytes)
        .map_err(|e| Error::Internal(format!("the cloud FIM request: {e}")))?;
    let call = CompletionCall {
        request: decoded,
        body,
    };
    let timeout = request
        .t_max_predict_ms
        .map(|b| b.min(cloud.timeout_ms) + request.t_max_prompt_ms.unwrap_or(0));
    let started = StdInstant::now();
    let answer = match call_cloud(state, cloud, &call, timeout).await? {
        CompletionOutput::Answer(a) => a,
        other => {
            return Err(Error::Internal(format!(
                "the cloud FIM backend answered {other:?}"
            )));
        }
    };
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let finished = answer.finish_reason == tandem_cloud_adapters::FinishReason::Stop;
    let (content, stop_type, stopping_word) = infill::stop_text(request, &answer.text, finished);
    Ok(InfillOutcome {
        content,
        tokens_predicted: answer.usage.completion_tokens as usize,
        prompt_tokens: answer.usage.prompt_tokens as usize,
        stop_type: Some(stop_type),
        stopping_word,
        prompt_ms: elapsed,
        ..InfillOutcome::default()
    })
}

#[cfg(test)]
mod tests {
    use tandem_cloud_adapters::ChatRequest;

    use super::{RouteInfo, attempt_request};

    #[test]
    fn a_request_is_copied_for_tries_before_the_last_and_handed_over_on_it() {
        let mut request = Some(ChatRequest {
            model: "m".into(),
            ..ChatRequest::default()
        });
        let first = attempt_request(&mut request, false).map(|r| r.model);
        assert_eq!(first.ok().as_deref(), Some("m"));
        assert!(request.is_some(), "a later try still needs the request");
        let last = attempt_request(&mut request, true).map(|r| r.model);
        assert_eq!(last.ok().as_deref(), Some("m"));
        assert!(request.is_none(), "the last try takes the request itself");
        assert!(attempt_request(&mut request, true).is_err());
    }

    fn header(explanation: &str) -> String {
        let route = RouteInfo {
            backend: "cloud".into(),
            explanation: explanation.into(),
            mode: "cloud",
            fallbacks: 0,
            cache: None,
            tried: Vec::new(),
            privacy: None,
        };
        route
            .header_value()
            .to_str()
            .map(str::to_owned)
            .unwrap_or_default()
    }

    #[test]
    fn the_route_header_keeps_printable_text_and_masks_the_rest() {
        assert_eq!(header("cloud; configured route"), "cloud; configured route");
        assert_eq!(header("café\tlocal\n"), "caf??local?");
    }
}
