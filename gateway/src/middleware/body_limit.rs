//! Request body size limit: a declared `content-length` over the limit is answered with an
//! OpenAI-shaped 413 at once; other bodies are wrapped so that reading past the limit fails, and
//! the body reader turns that failure into the same 413.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, header};
use http_body_util::Limited;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::error_response;
use crate::context::BodyLimit;
use crate::error::Error;

// ===== impl BodyLimitLayer =====

/// Adds [`BodyLimitService`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    /// Limits bodies to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService {
            inner,
            limit: self.limit,
        }
    }
}

// ===== impl BodyLimitService =====

/// Refuses or caps bodies larger than the limit.
#[derive(Debug, Clone)]
pub struct BodyLimitService<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<Request<Body>> for BodyLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limit as u64) {
            let response = error_response(&request, Error::PayloadTooLarge { limit: self.limit });
            return ResponseFuture::Rejected {
                response: Some(response),
            };
        }
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(BodyLimit(self.limit));
        let request = Request::from_parts(parts, Body::new(Limited::new(body, self.limit)));
        ResponseFuture::Inner {
            future: self.inner.call(request),
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// The inner response, or the 413.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)] // variant fields; pin-project-lite takes no docs on them
    pub enum ResponseFuture<F> {
        /// Within the limit (so far).
        Inner {
            #[pin]
            future: F,
        },
        /// Refused with this response.
        Rejected {
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
            ResponseFutureProj::Inner { future } => future.poll(cx),
            ResponseFutureProj::Rejected { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    #[tokio::test]
    async fn declared_oversize_is_413_openai_shaped() {
        let (mut service, _handle) =
            mock::spawn_layer::<Request<Body>, Response<Body>, _>(BodyLimitLayer::new(8));
        assert!(service.poll_ready().is_ready());
        let req = Request::builder()
            .uri("/v1/chat/completions")
            .header("content-length", "9")
            .body(Body::from("123456789"))
            .unwrap();
        let r = service.call(req).await.unwrap();
        assert_eq!(r.status(), 413);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_too_large");
    }

    #[tokio::test]
    async fn undeclared_oversize_fails_when_read() {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<Body>, Response<Body>, _>(BodyLimitLayer::new(8));
        assert!(service.poll_ready().is_ready());
        let stream =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("123456789"))]);
        let fut = service.call(
            Request::builder()
                .uri("/x")
                .body(Body::from_stream(stream))
                .unwrap(),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert!(
            axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .is_err()
        );
        send.send_response(Response::new(Body::empty()));
        fut.await.unwrap();
    }
}
