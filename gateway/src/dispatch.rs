//! Dispatch: picks the backends for a request's model and runs it on them in order, moving to the
//! next one on a retryable error when the route allows fallback. Fixed routes keep config order;
//! learned routes ask the routing policy (hard rules first, then predicted quality, cost and
//! latency) and run its choice first, a cascade included. Every answer says which backend
//! answered and why (`x-tandem-route`), and every policy decision is logged.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use futures::StreamExt;
use serde_json::json;
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::{ChatEvent, ChatRequest, ChatResponse, EventStream, Usage};
use tandem_router_policy::{Choice, Feedback, Placement};
use tokio::time::Instant;

use crate::config::{BackendKind, RoutePolicy, placement_allows};
use crate::context::{FirstTokenDeadline, RouteSlot};
use crate::error::Error;
use crate::executor::cascade::{CascadeExecutor, CascadeOutcome};
use crate::executor::infill::{self, InfillChunk, InfillOutcome, InfillRequest};
use crate::executor::local::LocalExecutor;
use crate::executor::local_completion;
use crate::executor::{CompletionCall, CompletionOutput, Executor};
use crate::metrics::BackendLabels;
use crate::resilience::{Admission, Outcome, Resilience};
use crate::routing::{LiveBackend, Planned, RequestHints, placement_for};
use crate::state::AppState;

/// Which backend answered and why.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The backend's config name (empty when none was reached).
    pub backend: String,
    /// The explanation sent in `x-tandem-route`.
    pub explanation: String,
}

impl RouteInfo {
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
    let success = |backend: String, index: usize, reason: &str| {
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
        }
    };
    // The last backend that failed in earnest, with the reason as it stood then: a later one
    // that cannot honour the request does not hide it.
    let mut failed: Option<(String, String, Error)> = None;
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
            return failure(reason, backend, e, decided);
        }
        // A hedge races the first try against one on the next backend.
        let mut first_result = None;
        let hedge_delay = hedge
            .filter(|_| i == 0 && !last)
            .and_then(|configured| resilience.hedge_delay(&backend, configured));
        if let Some(delay) = hedge_delay {
            let next = executors[i + 1].clone();
            let first = timed(resilience, &backend, attempt(executor.clone(), false));
            match hedged(state, &backend, first, delay, &next, &mut attempt).await {
                Raced::Alone(result) => first_result = Some(result),
                Raced::Won { second, value } => {
                    let winner = if second { next.backend() } else { &backend }.to_owned();
                    let reason = format!("{reason}; hedged on {}", next.backend());
                    let index = if second { i + 1 } else { i };
                    return (Ok(value), success(winner, index, &reason));
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
                        return failure(reason, next_backend, e, decided);
                    }
                    failed = Some((next_backend, reason.clone(), e));
                    i += 2;
                    continue;
                }
            }
        }
        let mut retry = 0;
        loop {
            let final_try = last && retry >= retries;
            let result = match first_result.take() {
                Some(result) => result,
                None => timed(resilience, &backend, attempt(executor.clone(), final_try)).await,
            };
            resilience.record(&backend, Outcome::of(&result), &state.metrics);
            let e = match result {
                Ok(value) => return (Ok(value), success(backend, i, &reason)),
                Err(e) => e,
            };
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
                tokio::time::sleep(wait).await;
                retry += 1;
                continue;
            }
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
                    return failure(reason, backend, e, decided);
                }
            }
            break;
        }
        i += 1;
    }
    match failed {
        Some((backend, reason, e)) => failure(reason, backend, e, decided),
        None => (
            Err(Error::Internal("route has no backends".into())),
            RouteInfo {
                backend: String::new(),
                explanation: reason,
            },
        ),
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
    /// It finished before the hedge's delay: no hedge was sent.
    Alone(Result<T, Error>),
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
    first: impl std::future::Future<Output = Result<T, Error>>,
    delay: std::time::Duration,
    next: &Arc<dyn Executor>,
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
    if let Either::Left((result, _)) = select(first.as_mut(), timer).await {
        return Raced::Alone(result);
    }
    if matches!(resilience.admit(next.backend()), Admission::Refused(_)) {
        return Raced::Alone(first.await);
    }
    state
        .metrics
        .hedges
        .get_or_create(&BackendLabels {
            backend: next.backend().to_owned(),
        })
        .inc();
    let second = std::pin::pin!(timed(
        resilience,
        next.backend(),
        attempt(next.clone(), false)
    ));
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
        with_fallback(state, tries, slot, attempt).await
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

fn no_route(e: Error) -> (Error, RouteInfo) {
    (
        e,
        RouteInfo {
            backend: String::new(),
            explanation: "no route".into(),
        },
    )
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
            });
        }
    };
    let local_ready = state.local.as_ref().is_some_and(|l| l.is_ready());
    let planned = policy.plan(model, route, request, hints, local_ready).await;
    let header = planned.decision.explanation.header_value();
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
        return Err((
            error,
            RouteInfo {
                backend: String::new(),
                explanation: header,
            },
        ));
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
    })
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
    let kind = match &planned.decision.choice {
        Choice::Local { .. } => "local",
        Choice::Cloud { .. } => "cloud",
        Choice::Cascade { .. } => "cascade",
        Choice::Speculative { .. } => "speculative",
        Choice::Reject => "reject",
    };
    count_decision(state, kind);
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
    Some(PendingLog {
        policy: policy.clone(),
        request_id: hints.request_id.clone(),
        decision: planned.decision.clone(),
        line,
    })
}

/// Writes a stream's decision log line when the stream ends: `ok` after its finish event,
/// `error` after an error event, `cancelled` when the client left before either.
fn logged_at_end(events: EventStream, log: PendingLog) -> EventStream {
    struct LogOnEnd {
        log: Option<PendingLog>,
        status: &'static str,
        error: Option<String>,
    }
    impl Drop for LogOnEnd {
        fn drop(&mut self) {
            if let Some(mut log) = self.log.take() {
                log.line["status"] = self.status.into();
                if let Some(e) = self.error.take() {
                    log.line["error"] = e.into();
                }
                log.write();
            }
        }
    }
    let mut guard = LogOnEnd {
        log: Some(log),
        status: "cancelled",
        error: None,
    };
    events
        .inspect(move |event| match event {
            ChatEvent::Finish { .. } if guard.status == "cancelled" => guard.status = "ok",
            ChatEvent::Error(e) => {
                guard.status = "error";
                guard.error = Some(e.kind.as_str().to_owned());
            }
            _ => {}
        })
        .boxed()
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

/// Runs a non-streaming request (fixed route, or the policy's decision on a learned one).
pub async fn run_chat(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
) -> (Result<ChatResponse, Error>, RouteInfo) {
    run_whole(
        state,
        request,
        hints,
        |executor, request| async move { executor.chat(request).await },
        |answer| &answer.usage,
    )
    .await
}

/// Runs a non-streaming request like [`run_chat`], for an OpenAI client: a backend that speaks
/// OpenAI's format upstream hands its answer on as it came, without decoding and encoding it.
pub async fn run_chat_completion(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
) -> (Result<ChatCompletion, Error>, RouteInfo) {
    run_whole(
        state,
        request,
        hints,
        |executor, request| async move { executor.chat_completion(request).await },
        |answer| &answer.usage,
    )
    .await
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
    let plan = match plan(state, &request, hints).await {
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
    if let Some(log) = finish_plan(state, &plan, hints, &model, &result, &mut route) {
        log.write();
    }
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
    if let Some(route) = code_model_route(state, call) {
        let result = match code_engine(state) {
            Ok(engine) => local_completion::complete(&engine, &call.request).await,
            Err(e) => Err(e),
        };
        return (result, route);
    }
    let plan = match plan(state, &call.policy_view(), hints).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let stream = call.request.stream;
    let (result, mut route) = plan
        .run(state, hints, model, |executor, _last| {
            let deadline = first_token.filter(|_| stream).map(per_try);
            async move {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.at, executor.completion(call))
                        .await
                        .unwrap_or_else(|_| Err(d.error())),
                    None => executor.completion(call).await,
                }
            }
        })
        .await;
    if let Some(log) = finish_plan(state, &plan, hints, model, &result, &mut route) {
        log.write();
    }
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
    let model = request.model.clone();
    let plan = match plan(state, &request, hints).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let measure = plan.cascade.is_none();
    let mut request = Some(request);
    let (result, mut route) = plan
        .run(state, hints, &model, |executor, last| {
            let request = attempt_request(&mut request, last);
            let deadline = first_token.map(per_try);
            async move {
                let request = request?;
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
                let result = match deadline {
                    Some(d) => tokio::time::timeout_at(d.at, started_stream)
                        .await
                        .unwrap_or_else(|_| Err(d.error())),
                    None => started_stream.await,
                };
                if let (Err(e), Some(live)) = (&result, live)
                    && measure
                    && e.retryable()
                {
                    live.state.record_error();
                }
                result
            }
        })
        .await;
    let log = finish_plan(state, &plan, hints, &model, &result, &mut route);
    let result = match (result, log) {
        (Ok(events), Some(log)) => Ok(logged_at_end(events, log)),
        (result, log) => {
            if let Some(log) = log {
                log.write();
            }
            result
        }
    };
    (result, route)
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
    Some(RouteInfo {
        backend: CODE_BACKEND.into(),
        explanation: format!("{CODE_BACKEND}; {why} ({})", ide.model),
    })
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

/// Runs an `/infill` request on the code model (a newer request of the same editor session
/// stops the older); with `chunks` it streams.
pub async fn run_infill(
    state: &AppState,
    request: &InfillRequest,
    chunks: Option<tokio::sync::mpsc::Sender<InfillChunk>>,
) -> (Result<InfillOutcome, Error>, RouteInfo) {
    let (backend, model) = match (&state.config.ide, &state.config.local) {
        (Some(ide), _) => (CODE_BACKEND, ide.model.as_str()),
        (None, Some(local)) => ("local", local.model.as_str()),
        (None, None) => ("", ""),
    };
    let route = RouteInfo {
        backend: backend.into(),
        explanation: format!("{backend}; infill ({model})"),
    };
    let engine = match code_engine(state) {
        Ok(e) => e,
        Err(e) => return (Err(e), route),
    };
    let result = infill::run(
        &engine,
        request,
        state.config.ide.as_ref(),
        &state.editors,
        chunks,
    )
    .await;
    (result, route)
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
