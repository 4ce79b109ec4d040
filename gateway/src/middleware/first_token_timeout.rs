//! Time-to-first-token timeout for streams. The layer puts a [`FirstTokenDeadline`] in the request
//! extensions (stream handlers stop waiting for upstream headers at it) and wraps event-stream
//! responses so that a stream whose first event is late gets an error event and ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::deadline_body::{DeadlineBody, DeadlineMode};
use super::is_event_stream;
use crate::context::FirstTokenDeadline;
use crate::error::ApiFlavor;

// ===== impl FirstTokenTimeoutLayer =====

/// Adds [`FirstTokenTimeoutService`].
#[derive(Debug, Clone, Copy)]
pub struct FirstTokenTimeoutLayer {
    duration: Duration,
}

impl FirstTokenTimeoutLayer {
    /// Streams must start within `duration`.
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }
}

impl<S> Layer<S> for FirstTokenTimeoutLayer {
    type Service = FirstTokenTimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FirstTokenTimeoutService {
            inner,
            duration: self.duration,
        }
    }
}

// ===== impl FirstTokenTimeoutService =====

/// Bounds the time to a stream's first event.
#[derive(Debug, Clone)]
pub struct FirstTokenTimeoutService<S> {
    inner: S,
    duration: Duration,
}

impl<S, ReqB> Service<Request<ReqB>> for FirstTokenTimeoutService<S>
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
        let deadline = FirstTokenDeadline {
            at: Instant::now() + self.duration,
            millis: self.duration.as_millis() as u64,
        };
        let flavor = ApiFlavor::from_path(request.uri().path());
        request.extensions_mut().insert(deadline);
        ResponseFuture {
            inner: self.inner.call(request),
            deadline,
            flavor,
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// Wraps an event-stream body with the first-frame deadline.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        deadline: FirstTokenDeadline,
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
        let response = ready!(this.inner.poll(cx))?;
        if !is_event_stream(&response) {
            return Poll::Ready(Ok(response));
        }
        let frame = this.deadline.error().sse_frame(*this.flavor);
        let (parts, body) = response.into_parts();
        // Dispatch gives each try its own budget, so a fallback's stream may start after the
        // first try's deadline: the first frame is due by the later of the two.
        let due = this.deadline.at.max(Instant::now());
        let body = Body::new(DeadlineBody::new(
            body,
            due,
            DeadlineMode::FirstFrame,
            frame,
        ));
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tower_test::mock;

    fn sse(body: Body) -> Response<Body> {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn late_first_event_gets_error_event() {
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            FirstTokenTimeoutLayer::new(Duration::from_millis(50)),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<FirstTokenDeadline>().is_some());
        send.send_response(sse(Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >())));
        let body = axum::body::to_bytes(fut.await.unwrap().into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.starts_with("data: {\"error\""), "{text}");
        assert!(text.contains("first_token_timeout"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_events_after_the_first_are_fine() {
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(
            FirstTokenTimeoutLayer::new(Duration::from_millis(50)),
        );
        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .uri("/v1/chat/completions")
                .body(())
                .unwrap(),
        );
        let (_req, send) = handle.next_request().await.unwrap();
        let stream = futures::stream::iter(["data: a\n\n", "data: b\n\n"]).then(|s| async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok::<_, std::io::Error>(bytes::Bytes::from(s))
        });
        send.send_response(sse(Body::from_stream(stream)));
        let body = axum::body::to_bytes(fut.await.unwrap().into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"data: a\n\ndata: b\n\n");
    }
}
