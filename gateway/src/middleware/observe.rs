//! Per-request observability: opens the request's [`RequestMeter`] (continuing the client's
//! `traceparent` when traces are exported) and puts it in the request's extensions for dispatch
//! and the handlers to fill; when the response head is ready, notes its status and adds
//! `x-tandem-overhead-ms` (Tandem's own time: to the head, less the waits for a backend) and,
//! when enabled, `x-tandem-cost` (paid, reference and saved dollars of a whole answer). The
//! meter settles when its last holder lets go (the body, for a stream).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::RequestId;
use crate::error::ErrorLabel;
use crate::metrics::{ENDPOINTS, EndpointLabels, endpoint_index};
use crate::observe::{Observer, RequestMeter};

/// Tandem's own time for the request, ms.
pub static OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-tandem-overhead-ms");
/// A whole answer's cost: `paid=...; reference=...; saved=...` (US dollars).
pub static COST_HEADER: HeaderName = HeaderName::from_static("x-tandem-cost");

// ===== impl ObserveLayer =====

/// Adds [`ObserveService`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    observer: Arc<Observer>,
}

impl ObserveLayer {
    /// Meters requests into `observer`.
    pub fn new(observer: Arc<Observer>) -> Self {
        Self { observer }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            observer: self.observer.clone(),
        }
    }
}

// ===== impl ObserveService =====

/// Opens a meter per request.
#[derive(Debug, Clone)]
pub struct ObserveService<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ObserveService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let started = Instant::now();
        let id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let endpoint = endpoint_index(request.uri().path());
        let meter = Arc::new(RequestMeter::new(
            self.observer.clone(),
            id.0,
            endpoint,
            request.method().clone(),
            request.headers(),
            started,
        ));
        request.extensions_mut().insert(meter.clone());
        ResponseFuture {
            inner: self.inner.call(request),
            meter: Some(meter),
            observer: self.observer.clone(),
            endpoint,
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// Notes the response head and adds the overhead and cost headers.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        meter: Option<Arc<RequestMeter>>,
        observer: Arc<Observer>,
        endpoint: usize,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        // Taken, so the meter settles here unless the body still holds it.
        let Some(meter) = this.meter.take() else {
            return Poll::Ready(result);
        };
        if let Ok(response) = &mut result {
            let error = response.extensions().get::<ErrorLabel>().map(|l| l.0);
            meter.note_response(response.status(), error);
            let overhead = meter.overhead();
            this.observer
                .metrics
                .overhead
                .get_or_create(&EndpointLabels {
                    endpoint: ENDPOINTS[*this.endpoint],
                })
                .observe(overhead.as_secs_f64());
            let config = &this.observer.config;
            if config.overhead_header
                && let Ok(v) =
                    HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1e3))
            {
                response.headers_mut().insert(OVERHEAD_HEADER.clone(), v);
            }
            if config.cost_header
                && let Some(bill) = meter.bill()
                && let Ok(v) = HeaderValue::from_str(&format!(
                    "paid={:.8}; reference={:.8}; saved={:.8}",
                    bill.paid,
                    bill.reference,
                    bill.saved()
                ))
            {
                response.headers_mut().insert(COST_HEADER.clone(), v);
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};
    use crate::metrics::Metrics;
    use crate::observe::Bill;
    use axum::body::Body;
    use tower_test::mock;

    fn observer(cost_header: bool) -> Arc<Observer> {
        let mut config = Config::default_local_with(&MapEnv::default()).unwrap();
        config.observability.cost_header = cost_header;
        config.observability.rapl = false;
        Observer::start(Arc::new(config), Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn a_whole_answer_gets_its_overhead_and_cost_and_settles_in_the_ledger() {
        let observer = observer(true);
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            ObserveLayer::new(observer.clone()),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (request, send) = handle.next_request().await.unwrap();
        let meter = request
            .extensions()
            .get::<Arc<RequestMeter>>()
            .unwrap()
            .clone();
        // The backend took 30 ms of the request's time; that is not overhead.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        meter.add_wait(std::time::Duration::from_millis(30));
        meter.note_usage(
            &tandem_cloud_adapters::Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Default::default()
            },
            Bill {
                paid: 0.25,
                reference: 1.0,
            },
        );
        drop(meter);
        drop(request);
        send.send_response(Response::new(Body::empty()));
        let response = fut.await.unwrap();
        let overhead: f64 = response.headers()[&OVERHEAD_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..35.0).contains(&overhead), "{overhead} ms");
        assert!(overhead >= 9.0, "40 ms elapsed, 30 waited: {overhead} ms");
        assert_eq!(
            response.headers()[&COST_HEADER],
            "paid=0.25000000; reference=1.00000000; saved=0.75000000"
        );
        let totals = observer.ledger.totals();
        assert_eq!(totals.requests, 1);
        assert_eq!(totals.saved, 0.75);
        assert_eq!(totals.input_tokens, 10);
        assert!(
            observer
                .metrics
                .render()
                .contains("tandem_overhead_seconds_count{endpoint=\"chat\"} 1")
        );
    }

    #[tokio::test]
    async fn no_cost_header_unless_enabled_and_probes_stay_out_of_the_ledger() {
        let observer = observer(false);
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            ObserveLayer::new(observer.clone()),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(Request::builder().uri("/healthz").body(()).unwrap());
        let (request, send) = handle.next_request().await.unwrap();
        let meter = request
            .extensions()
            .get::<Arc<RequestMeter>>()
            .unwrap()
            .clone();
        meter.note_usage(&Default::default(), Bill::default());
        drop((meter, request));
        send.send_response(Response::new(Body::empty()));
        let response = fut.await.unwrap();
        assert!(response.headers().get(&COST_HEADER).is_none());
        assert!(response.headers().get(&OVERHEAD_HEADER).is_some());
        assert_eq!(observer.ledger.totals().requests, 0);
    }
}
