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
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::{Api, ChatEvent, ChatRequest, ChatResponse, EventStream, Usage};
use tandem_router_policy::{Choice, Feedback, Placement};
use tokio::time::Instant;

use crate::config::{BackendKind, RoutePolicy, placement_allows};
use crate::context::RouteSlot;
use crate::error::Error;
use crate::executor::cascade::{CascadeExecutor, CascadeOutcome};
use crate::executor::local::LocalExecutor;
use crate::executor::{CompletionCall, CompletionOutput, Executor, Forwarded, TokenCount};
use crate::metrics::BackendLabels;
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

/// Runs `attempt` on each of `executors` until one succeeds or fails for good. A backend that
/// cannot honour the request (an unsupported parameter) is skipped whatever the fallback
/// setting, since it never ran it. `attempt` is told whether its try is the last one there can
/// be, so it can hand over the request instead of a copy.
async fn with_fallback<T, F, Fut>(
    state: &AppState,
    executors: Vec<Arc<dyn Executor>>,
    fallback: bool,
    mut reason: String,
    decided: bool,
    slot: Option<&RouteSlot>,
    mut attempt: F,
) -> (Result<T, Error>, RouteInfo)
where
    F: FnMut(Arc<dyn Executor>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let count = executors.len();
    // The last backend that failed in earnest, with the reason as it stood then: a later one
    // that cannot honour the request does not hide it.
    let mut failed: Option<(String, String, Error)> = None;
    for (i, executor) in executors.into_iter().enumerate() {
        let backend = executor.backend().to_owned();
        let last = i + 1 == count;
        if let Some(slot) = slot {
            slot.note_backend(&backend);
        }
        match attempt(executor, last).await {
            Ok(value) => {
                let explanation = if decided {
                    format!("{reason}; backend={backend}")
                } else {
                    format!("{backend}; {reason}")
                };
                return (
                    Ok(value),
                    RouteInfo {
                        backend,
                        explanation,
                    },
                );
            }
            Err(Error::Unsupported { message, param }) if !last => {
                tracing::debug!(backend = %backend, reason = %message, "backend cannot honour the request, trying the next one");
                reason = format!("{reason}; skipped {backend} ({param} unsupported)");
            }
            // Only a retryable failure with fallback on and backends left leads to another try.
            Err(e) if !last && fallback && e.retryable() => {
                tracing::warn!(backend = %backend, error = %e, "backend failed, trying the next one");
                state
                    .metrics
                    .fallbacks
                    .get_or_create(&BackendLabels {
                        backend: backend.clone(),
                    })
                    .inc();
                let earlier = reason.clone();
                reason = format!(
                    "{reason}; fallback after {backend} failed ({})",
                    e.metric_label()
                );
                failed = Some((backend, earlier, e));
            }
            Err(e) => {
                // The last backend cannot honour the request, but an earlier one failed for a
                // reason that may pass (429, 5xx): that failure is the answer, with its status
                // and retry-after.
                let (backend, reason, e) = match (e, failed.take()) {
                    (Error::Unsupported { .. }, Some(earlier)) => earlier,
                    (e, _) => (backend, reason, e),
                };
                let explanation = if decided {
                    format!("{reason}; backend={backend}; failed ({})", e.metric_label())
                } else {
                    format!("{backend}; {reason}; failed ({})", e.metric_label())
                };
                return (
                    Err(e),
                    RouteInfo {
                        backend,
                        explanation,
                    },
                );
            }
        }
    }
    (
        Err(Error::Internal("route has no backends".into())),
        RouteInfo {
            backend: String::new(),
            explanation: reason,
        },
    )
}

/// How one request will be run: the executors in order, and the policy's decision when the
/// route is learned.
struct Plan {
    executors: Vec<Arc<dyn Executor>>,
    fallback: bool,
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
        with_fallback(
            state,
            self.executors.clone(),
            self.fallback,
            self.reason.clone(),
            self.planned.is_some(),
            slot,
            attempt,
        )
        .await
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
            let (executors, fallback) = route_for(state, model, hints).map_err(no_route)?;
            return Ok(Plan {
                executors,
                fallback,
                reason: format!("route {model}"),
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
    Ok(Plan {
        executors,
        fallback: route.fallback,
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
/// stream stops waiting for its upstream at `first_token_deadline`, and its decision is logged
/// once it starts (the local model's stream carries engine events, not chat events to watch).
pub async fn run_completion(
    state: &AppState,
    call: &CompletionCall,
    hints: &RequestHints,
    first_token_deadline: Option<(Instant, Error)>,
) -> (Result<CompletionOutput, Error>, RouteInfo) {
    let model = call.request.model.as_str();
    let plan = match plan(state, &call.policy_view(), hints).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let stream = call.request.stream;
    let (result, mut route) = plan
        .run(state, hints, model, |executor, _last| {
            let deadline = first_token_deadline.clone().filter(|_| stream);
            async move { within(deadline, executor.completion(call)).await }
        })
        .await;
    if let Some(log) = finish_plan(state, &plan, hints, model, &result, &mut route) {
        log.write();
    }
    (result, route)
}

/// Runs a request for another of the upstreams' APIs (`api`: embeddings, a Responses request
/// passed through) on the route's backends in config order, placement applied: the first that
/// serves the API answers with its body as it came (streamed when `stream`); one without the API
/// is skipped.
pub async fn run_forward(
    state: &AppState,
    api: Api,
    model: &str,
    body: &Map<String, Value>,
    stream: bool,
    hints: &RequestHints,
) -> (Result<Forwarded, Error>, RouteInfo) {
    run_in_config_order(state, model, hints, |executor| async move {
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
    run_in_config_order(state, &request.model, hints, |executor| async move {
        executor.count_tokens(request, body).await
    })
    .await
}

/// Runs `attempt` on the route's backends in config order with its fallback rule.
async fn run_in_config_order<T, F, Fut>(
    state: &AppState,
    model: &str,
    hints: &RequestHints,
    mut attempt: F,
) -> (Result<T, Error>, RouteInfo)
where
    F: FnMut(Arc<dyn Executor>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let (executors, fallback) = match route_for(state, model, hints) {
        Ok(r) => r,
        Err(e) => {
            let (e, route) = no_route(e);
            return (Err(e), route);
        }
    };
    let slot = hints.route_slot.as_ref();
    if let Some(slot) = slot {
        slot.note_route(model);
    }
    with_fallback(
        state,
        executors,
        fallback,
        format!("route {model}"),
        false,
        slot,
        |executor, _last| attempt(executor),
    )
    .await
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

/// Runs a Responses request like a chat request (the route's policy, cascade, speculative
/// backends, placement, fallback, timings and decision log), each backend taking it in its own
/// way: OpenAI's own Responses API as the client sent it, the others the normalized request.
pub async fn run_responses(
    state: &AppState,
    request: ChatRequest,
    native: NativeResponses<'_>,
    hints: &RequestHints,
    first_token_deadline: Option<(Instant, Error)>,
) -> (Result<ResponsesOutput, Error>, RouteInfo) {
    let model = request.model.clone();
    let stream = request.stream;
    let plan = match plan(state, &request, hints).await {
        Ok(p) => p,
        Err((e, route)) => return (Err(e), route),
    };
    let measure = plan.cascade.is_none();
    let mut request = Some(request);
    let (result, mut route) = plan
        .run(state, hints, &model, |executor, last| {
            let request = attempt_request(&mut request, last);
            let deadline = first_token_deadline.clone().filter(|_| stream);
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
    let result = match result {
        Ok(ResponsesOutput::Events(events)) => {
            log_when_done(Ok(events), log).map(ResponsesOutput::Events)
        }
        other => {
            if let Some(log) = log {
                log.write();
            }
            other
        }
    };
    (result, route)
}

/// Starts a streaming request; waiting for the upstream stops at `first_token_deadline`.
pub async fn run_stream(
    state: &AppState,
    request: ChatRequest,
    hints: &RequestHints,
    first_token_deadline: Option<(Instant, Error)>,
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
            let deadline = first_token_deadline.clone();
            async move { start_stream(state, &executor, request?, deadline, measure).await }
        })
        .await;
    let log = finish_plan(state, &plan, hints, &model, &result, &mut route);
    let result = log_when_done(result, log);
    (result, route)
}

/// Starts `request` streaming on `executor`, waiting for its upstream until `deadline`; with
/// `measure`, its timings and errors go to the policy's live state of the backend.
async fn start_stream(
    state: &AppState,
    executor: &Arc<dyn Executor>,
    request: ChatRequest,
    deadline: Option<(Instant, Error)>,
    measure: bool,
) -> Result<EventStream, Error> {
    let started = StdInstant::now();
    let live = state
        .policy
        .as_ref()
        .and_then(|p| p.backend(executor.backend()))
        .cloned();
    let result = within(deadline, executor.chat_stream(request)).await;
    match (result, live) {
        (Ok(events), Some(live)) if measure => Ok(measured(events, live, started)),
        (Err(e), Some(live)) if measure && e.retryable() => {
            live.state.record_error();
            Err(e)
        }
        (other, _) => other,
    }
}

/// `future`'s outcome, or the deadline's error once it passes first.
async fn within<T>(
    deadline: Option<(Instant, Error)>,
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some((at, error)) => tokio::time::timeout_at(at, future)
            .await
            .unwrap_or(Err(error)),
        None => future.await,
    }
}

/// A started stream writes its decision log line when it ends; anything else writes it now.
fn log_when_done(
    result: Result<EventStream, Error>,
    log: Option<PendingLog>,
) -> Result<EventStream, Error> {
    match (result, log) {
        (Ok(events), Some(log)) => Ok(logged_at_end(events, log)),
        (result, log) => {
            if let Some(log) = log {
                log.write();
            }
            result
        }
    }
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
