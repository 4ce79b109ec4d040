//! Concurrency limit with load shedding: a request over the limit is refused at once with 429 and
//! `retry-after` instead of queueing. A stream holds its slot until its body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::{error_response, is_operational_path};
use crate::error::Error;
use crate::metrics::Metrics;

// ===== impl LoadShedLayer =====

/// Adds [`LoadShedService`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    semaphore: Arc<Semaphore>,
    limit: usize,
    retry_after_secs: u64,
    metrics: Option<Arc<Metrics>>,
}

impl LoadShedLayer {
    /// At most `limit` requests in flight; others get 429 with `retry-after: retry_after_secs`.
    pub fn new(limit: usize, retry_after_secs: u64, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
            retry_after_secs,
            metrics,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShedService {
            inner,
            layer: self.clone(),
        }
    }
}

// ===== impl LoadShedService =====

/// Sheds requests over the concurrency limit.
#[derive(Debug, Clone)]
pub struct LoadShedService<S> {
    inner: S,
    layer: LoadShedLayer,
}

impl<S, ReqB> Service<Request<ReqB>> for LoadShedService<S>
where
    S: Service<Request<ReqB>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if is_operational_path(request.uri().path()) {
            return ResponseFuture::Admitted {
                future: self.inner.call(request),
                permit: None,
            };
        }
        match self.layer.semaphore.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture::Admitted {
                future: self.inner.call(request),
                permit: Some(permit),
            },
            Err(_) => {
                if let Some(m) = &self.layer.metrics {
                    m.shed.inc();
                }
                let error = Error::Overloaded {
                    limit: self.layer.limit,
                    retry_after_secs: self.layer.retry_after_secs,
                };
                ResponseFuture::Shed {
                    response: Some(error_response(&request, error)),
                }
            }
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// The inner response carrying its permit, or the 429.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)] // variant fields; pin-project-lite takes no docs on them
    pub enum ResponseFuture<F> {
        /// Within the limit.
        Admitted {
            #[pin]
            future: F,
            permit: Option<OwnedSemaphorePermit>,
        },
        /// Shed.
        Shed {
            response: Option<Response<Body>>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Admitted { future, permit } => {
                let response = ready!(future.poll(cx))?;
                match permit.take() {
                    Some(permit) => {
                        let (parts, body) = response.into_parts();
                        let body = Body::new(PermitBody {
                            inner: body,
                            _permit: permit,
                        });
                        Poll::Ready(Ok(Response::from_parts(parts, body)))
                    }
                    None => Poll::Ready(Ok(response)),
                }
            }
            ResponseFutureProj::Shed { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

// ===== impl PermitBody =====

/// A body that holds a concurrency slot until it is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    #[tokio::test]
    async fn sheds_over_limit_and_frees_slot_when_body_drops() {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<Body>, _>(LoadShedLayer::new(1, 2, None));
        let req = || {
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap()
        };

        assert!(service.poll_ready().is_ready());
        let first = service.call(req());
        let (_r, send) = handle.next_request().await.unwrap();

        assert!(service.poll_ready().is_ready());
        let shed = service.call(req()).await.unwrap();
        assert_eq!(shed.status(), 429);
        assert_eq!(shed.headers()["retry-after"], "2");

        // Probes are never shed.
        assert!(service.poll_ready().is_ready());
        let probe = service.call(Request::builder().uri("/healthz").body(()).unwrap());
        let (_r, probe_send) = handle.next_request().await.unwrap();
        probe_send.send_response(Response::new(Body::empty()));
        assert_eq!(probe.await.unwrap().status(), 200);

        send.send_response(Response::new(Body::empty()));
        let response = first.await.unwrap();
        // Still held by the body.
        assert!(service.poll_ready().is_ready());
        assert_eq!(service.call(req()).await.unwrap().status(), 429);
        drop(response);
        assert!(service.poll_ready().is_ready());
        let third = service.call(req());
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::empty()));
        assert_eq!(third.await.unwrap().status(), 200);
    }
}
