//! Production controls on the model endpoints: the virtual key's allowed models and budget, and
//! the rate limiters of the key and the route, decided before the handler runs (so before any
//! upstream call). It reads the body once to learn the model and the completion limit, passes
//! the same bytes on, puts the request's [`Ticket`] in its extensions for the handler's usage
//! hook, and writes OpenAI's `x-ratelimit-*` headers on the answer. A request with no virtual
//! key on a route without limits passes untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::{Layer, Service};

use super::auth::CallerKey;
use super::error_response;
use crate::controls::limits::estimate_tokens;
use crate::controls::{Controls, Ticket};
use crate::handlers::read_body;

/// The endpoints that run a model, and so are limited and billed.
pub const CONTROLLED_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
];

/// What the controls read of a request body.
#[derive(Debug, Default, Deserialize)]
struct Head {
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

// ===== impl ControlsLayer =====

/// Adds [`ControlsService`].
#[derive(Debug, Clone)]
pub struct ControlsLayer {
    controls: Arc<Controls>,
}

impl ControlsLayer {
    /// Applies `controls`.
    pub fn new(controls: Arc<Controls>) -> Self {
        Self { controls }
    }
}

impl<S> Layer<S> for ControlsLayer {
    type Service = ControlsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ControlsService {
            inner,
            controls: self.controls.clone(),
        }
    }
}

// ===== impl ControlsService =====

/// Refuses requests over a key's budget or a rate limit; see the module docs.
#[derive(Debug, Clone)]
pub struct ControlsService<S> {
    inner: S,
    controls: Arc<Controls>,
}

impl<S> Service<Request<Body>> for ControlsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // Never trust a ticket that did not come from this layer.
        request.extensions_mut().remove::<Ticket>();
        let caller = request.extensions().get::<CallerKey>().cloned();
        let controlled = CONTROLLED_PATHS.contains(&request.uri().path())
            && (caller.is_some() || self.controls.has_route_limits());
        if !controlled {
            return ResponseFuture::Inner {
                future: self.inner.call(request),
            };
        }
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let controls = self.controls.clone();
        ResponseFuture::Checked {
            future: Box::pin(async move {
                let (mut parts, body) = request.into_parts();
                let bytes = match read_body(&parts, body).await {
                    Ok(b) => b,
                    Err(e) => {
                        let request = Request::from_parts(parts, ());
                        return Ok(error_response(&request, e));
                    }
                };
                let head: Head = serde_json::from_slice(&bytes).unwrap_or_default();
                // No model: the handler answers the 400 that names it.
                let Some(model) = head.model else {
                    return inner
                        .call(Request::from_parts(parts, Body::from(bytes)))
                        .await;
                };
                let tokens =
                    estimate_tokens(bytes.len(), head.max_completion_tokens.or(head.max_tokens));
                match controls
                    .admit(caller.as_ref().map(|c| &c.0), &model, tokens)
                    .await
                {
                    Ok(admitted) => {
                        parts.extensions.insert(admitted.ticket);
                        let mut response = inner
                            .call(Request::from_parts(parts, Body::from(bytes)))
                            .await?;
                        admitted.headers.apply(response.headers_mut());
                        Ok(response)
                    }
                    Err(refused) => {
                        let request = Request::from_parts(parts, ());
                        let mut response = error_response(&request, refused.error);
                        refused.headers.apply(response.headers_mut());
                        Ok(response)
                    }
                }
            }),
        }
    }
}

// ===== impl ResponseFuture =====

/// The checked call, boxed: it reads the body and waits on the store before the inner call.
type Checked<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project! {
    /// The inner response untouched, or the checked call.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)] // variant fields; pin-project-lite takes no docs on them
    pub enum ResponseFuture<F, E> {
        /// Not controlled.
        Inner {
            #[pin]
            future: F,
        },
        /// Controlled.
        Checked {
            future: Checked<E>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => future.poll(cx),
            ResponseFutureProj::Checked { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};
    use crate::controls::keys::KeySpec;
    use crate::metrics::Metrics;
    use crate::store::embedded::EmbeddedStore;
    use tower_test::mock;

    async fn controls(extra: &str) -> (Arc<Controls>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[backends.openai]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = {{ \"gpt\" = \"gpt-4o-mini\" }}\n{extra}"
        );
        let config = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.log")).unwrap();
        let c = Controls::start(&config, store, Arc::new(Metrics::new()), &MapEnv::default());
        (c, dir)
    }

    fn chat(model: &str) -> Request<Body> {
        Request::builder()
            .uri("/v1/chat/completions")
            .body(Body::from(format!(
                r#"{{"model":"{model}","max_tokens":10,"messages":[]}}"#
            )))
            .unwrap()
    }

    #[tokio::test]
    async fn a_route_limit_refuses_with_openai_headers_and_passes_the_body_on() {
        let (c, _dir) =
            controls("[routes.gpt]\nbackends = [\"openai\"]\nrequests_per_minute = 2\n").await;
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<Body>, Response<Body>, _>(ControlsLayer::new(c));
        for remaining in ["1", "0"] {
            assert!(service.poll_ready().is_ready());
            // The checked call reads the body and asks the store before the inner call.
            let fut = tokio::spawn(service.call(chat("gpt")));
            let (seen, send) = handle.next_request().await.unwrap();
            assert!(seen.extensions().get::<Ticket>().is_some());
            let body = axum::body::to_bytes(seen.into_body(), 1 << 16)
                .await
                .unwrap();
            assert!(body.starts_with(br#"{"model":"gpt""#));
            send.send_response(Response::new(Body::empty()));
            let r = fut.await.unwrap().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
            assert_eq!(r.headers()["x-ratelimit-remaining-requests"], remaining);
        }
        assert!(service.poll_ready().is_ready());
        let r = service.call(chat("gpt")).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
        let v: serde_json::Value =
            serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap())
                .unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "requests");
        // Another route has no limit: untouched.
        assert!(service.poll_ready().is_ready());
        let fut = tokio::spawn(service.call(chat("other")));
        let (seen, send) = handle.next_request().await.unwrap();
        assert!(seen.extensions().get::<Ticket>().is_some());
        send.send_response(Response::new(Body::empty()));
        let r = fut.await.unwrap().unwrap();
        assert!(r.headers().get("x-ratelimit-limit-requests").is_none());
    }

    #[tokio::test]
    async fn a_key_out_of_budget_or_off_its_models_never_reaches_the_handler() {
        let (c, _dir) = controls("").await;
        let (key, _) = c
            .keys
            .create(KeySpec {
                models: vec!["gpt".into()],
                budget_daily_usd: Some(0.0),
                ..KeySpec::default()
            })
            .await
            .unwrap();
        let caller = CallerKey(Arc::new(key));
        let (mut service, _handle) =
            mock::spawn_layer::<Request<Body>, Response<Body>, _>(ControlsLayer::new(c));
        let mut req = chat("gpt");
        req.extensions_mut().insert(caller.clone());
        assert!(service.poll_ready().is_ready());
        let r = service.call(req).await.unwrap();
        assert_eq!(r.status(), 429);
        let v: serde_json::Value =
            serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap())
                .unwrap();
        assert_eq!(v["error"]["code"], "insufficient_quota");
        let mut req = Request::builder()
            .uri("/v1/messages")
            .body(Body::from(r#"{"model":"claude","max_tokens":5}"#))
            .unwrap();
        req.extensions_mut().insert(caller);
        assert!(service.poll_ready().is_ready());
        let r = service.call(req).await.unwrap();
        assert_eq!(r.status(), 403);
        let v: serde_json::Value =
            serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap())
                .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "permission_error");
    }
}
