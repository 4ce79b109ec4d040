//! Total request timeout: a response not started in time becomes a 504 that names the backend it
//! was waiting on; a stream still running at the deadline is cut with an error event (and its
//! upstream work dropped).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::deadline_body::{DeadlineBody, DeadlineMode};
use super::is_event_stream;
use crate::context::RouteSlot;
use crate::error::{ApiFlavor, Error};

// ===== impl TimeoutLayer =====

/// Adds [`TimeoutService`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    duration: Duration,
}

impl TimeoutLayer {
    /// Requests get `duration` in all.
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            duration: self.duration,
        }
    }
}

// ===== impl TimeoutService =====

/// Bounds each request's total time.
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    duration: Duration,
}

impl<S, ReqB> Service<Request<ReqB>> for TimeoutService<S>
where
    S: Service<Request<ReqB>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let deadline = Instant::now() + self.duration;
        let flavor = ApiFlavor::from_path(request.uri().path());
        let slot = RouteSlot::default();
        request.extensions_mut().insert(slot.clone());
        ResponseFuture {
            inner: self.inner.call(request),
            slot,
            sleep: tokio::time::sleep_until(deadline),
            deadline,
            millis: self.duration.as_millis() as u64,
            flavor,
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// The inner response with a deadline.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        slot: RouteSlot,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        millis: u64,
        flavor: ApiFlavor,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let response = result?;
            if !is_event_stream(&response) {
                return Poll::Ready(Ok(response));
            }
            let frame = Error::Timeout(*this.millis).sse_frame(*this.flavor);
            let (parts, body) = response.into_parts();
            let body = Body::new(DeadlineBody::new(
                body,
                *this.deadline,
                DeadlineMode::WholeBody,
                frame,
            ));
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                let mut response = Error::Timeout(*this.millis).into_response_for(*this.flavor);
                this.slot.mark_timed_out(&mut response);
                Poll::Ready(Ok(response))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{AnsweredBy, ROUTE_HEADER};
    use tower_test::mock;

    #[tokio::test(start_paused = true)]
    async fn slow_response_is_504() {
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            TimeoutLayer::new(Duration::from_millis(100)),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (req, _send) = handle.next_request().await.unwrap();
        let slot = req.extensions().get::<RouteSlot>().unwrap().clone();
        slot.note_route("gpt");
        slot.note_backend("openai");
        let r = fut.await.unwrap();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()[ROUTE_HEADER], "openai; route gpt; timed out");
        assert_eq!(
            &*r.extensions().get::<AnsweredBy>().unwrap().backend,
            "openai"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn long_stream_is_cut_with_error_event() {
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            TimeoutLayer::new(Duration::from_millis(100)),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(Request::builder().uri("/v1/messages").body(()).unwrap());
        let (_req, send) = handle.next_request().await.unwrap();
        let body = Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        send.send_response(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap(),
        );
        let r = fut.await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("event: error\ndata: "), "{text}");
        assert!(text.contains("timed out"), "{text}");
    }
}
