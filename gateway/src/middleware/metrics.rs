//! Request metrics: counts, time to response headers and errors, by endpoint, answering backend
//! (from the [`AnsweredBy`] response extension) and status class.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::AnsweredBy;
use crate::error::ErrorLabel;
use crate::metrics::{ENDPOINTS, ErrorLabels, Metrics, endpoint_index};

// ===== impl MetricsLayer =====

/// Adds [`MetricsService`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

// ===== impl MetricsService =====

/// Records each request.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for MetricsService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let endpoint = endpoint_index(request.uri().path());
        self.metrics.in_flight.inc();
        ResponseFuture {
            inner: self.inner.call(request),
            guard: InFlight(self.metrics.clone()),
            endpoint,
            start: Instant::now(),
        }
    }
}

/// Decrements the in-flight gauge however the future ends (including when dropped).
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// Records the response when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: InFlight,
        endpoint: usize,
        start: Instant,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let metrics = &this.guard.0;
            let pair = match response.extensions().get::<AnsweredBy>() {
                Some(a) => metrics.pair(&a.route, &a.backend),
                None => metrics.pair("none", "none"),
            };
            let endpoint = *this.endpoint;
            let seconds = this.start.elapsed().as_secs_f64();
            pair.record_request(metrics, endpoint, response.status(), seconds);
            if let Some(ErrorLabel(kind)) = response.extensions().get::<ErrorLabel>() {
                metrics
                    .errors
                    .get_or_create(&ErrorLabels {
                        endpoint: ENDPOINTS[endpoint],
                        kind,
                    })
                    .inc();
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use axum::body::Body;
    use tower_test::mock;

    #[tokio::test]
    async fn counts_requests_errors_and_backend() {
        let metrics = Arc::new(Metrics::new());
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<Body>, _>(MetricsLayer::new(metrics.clone()));
        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (_r, send) = handle.next_request().await.unwrap();
        assert_eq!(metrics.in_flight.get(), 1);
        let mut ok = Response::new(Body::empty());
        ok.extensions_mut().insert(AnsweredBy {
            route: "gpt".into(),
            backend: "openai".into(),
        });
        send.send_response(ok);
        fut.await.unwrap();

        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(
            Error::ModelNotFound("x".into()).into_response_for(crate::error::ApiFlavor::OpenAi),
        );
        fut.await.unwrap();

        assert_eq!(metrics.in_flight.get(), 0);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"tandem_requests_total{endpoint="chat",route="gpt",backend="openai",status="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_errors_total{endpoint="chat",kind="model_not_found"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("tandem_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
