//! Dispatch: picks the backends for a request's model and runs it on them in order, moving to the
//! next one on a retryable error when the route allows fallback. Every answer says which backend
//! answered and why (`x-tandem-route`).

use std::sync::Arc;

use tandem_cloud_adapters::{ChatRequest, ChatResponse, EventStream};
use tokio::time::Instant;

use crate::error::Error;
use crate::executor::Executor;
use crate::metrics::BackendLabels;
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
        let text: String = self
            .explanation
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        http::HeaderValue::from_str(&text)
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
    }
}

/// The executors a model id is routed to, with whether fallback is on.
pub fn route_for(state: &AppState, model: &str) -> Result<(Vec<Arc<dyn Executor>>, bool), Error> {
    let route = state
        .config
        .routes
        .get(model)
        .ok_or_else(|| Error::ModelNotFound(model.to_owned()))?;
    let executors = route
        .backends
        .iter()
        .map(|b| {
            state
                .executors
                .get(b)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("backend `{b}` has no executor")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((executors, route.fallback))
}

/// Runs `attempt` on each backend of the model's route until one succeeds or fails for good.
async fn with_fallback<T, F, Fut>(
    state: &AppState,
    model: &str,
    mut attempt: F,
) -> (Result<T, Error>, RouteInfo)
where
    F: FnMut(Arc<dyn Executor>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let (executors, fallback) = match route_for(state, model) {
        Ok(r) => r,
        Err(e) => {
            return (
                Err(e),
                RouteInfo {
                    backend: String::new(),
                    explanation: "no route".into(),
                },
            );
        }
    };
    let mut reason = format!("route {model}");
    let count = executors.len();
    let mut last_error = Error::Internal("route has no backends".into());
    for (i, executor) in executors.into_iter().enumerate() {
        let backend = executor.backend().to_owned();
        match attempt(executor).await {
            Ok(value) => {
                let explanation = format!("{backend}; {reason}");
                return (
                    Ok(value),
                    RouteInfo {
                        backend,
                        explanation,
                    },
                );
            }
            Err(e) if fallback && e.retryable() && i + 1 < count => {
                tracing::warn!(backend = %backend, error = %e, "backend failed, trying the next one");
                state
                    .metrics
                    .fallbacks
                    .get_or_create(&BackendLabels {
                        backend: backend.clone(),
                    })
                    .inc();
                reason = format!(
                    "{reason}; fallback after {backend} failed ({})",
                    e.metric_label()
                );
                last_error = e;
            }
            Err(e) => {
                let explanation = format!("{backend}; {reason}; failed ({})", e.metric_label());
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
        Err(last_error),
        RouteInfo {
            backend: String::new(),
            explanation: reason,
        },
    )
}

/// Runs a non-streaming request.
pub async fn run_chat(
    state: &AppState,
    request: ChatRequest,
) -> (Result<ChatResponse, Error>, RouteInfo) {
    let model = request.model.clone();
    with_fallback(state, &model, |executor| {
        let request = request.clone();
        async move { executor.chat(request).await }
    })
    .await
}

/// Starts a streaming request; waiting for the upstream stops at `first_token_deadline`.
pub async fn run_stream(
    state: &AppState,
    request: ChatRequest,
    first_token_deadline: Option<(Instant, Error)>,
) -> (Result<EventStream, Error>, RouteInfo) {
    let model = request.model.clone();
    with_fallback(state, &model, |executor| {
        let request = request.clone();
        let deadline = first_token_deadline.clone();
        async move {
            match deadline {
                Some((at, error)) => tokio::time::timeout_at(at, executor.chat_stream(request))
                    .await
                    .unwrap_or(Err(error)),
                None => executor.chat_stream(request).await,
            }
        }
    })
    .await
}
