//! Request ids: takes `x-request-id` from the client (or makes a UUIDv7), puts it in the request's
//! extensions for handlers and logs, and echoes it on the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::{REQUEST_ID_HEADER, RequestId};

/// Client ids are kept only when short and printable, so they are safe in logs and headers.
fn acceptable(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

// ===== impl RequestIdLayer =====

/// Adds [`RequestIdService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

// ===== impl RequestIdService =====

/// Ensures every request has an id and every response echoes it.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestIdService<S>
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
        let id = match request
            .headers()
            .get(&REQUEST_ID_HEADER)
            .and_then(acceptable)
        {
            Some(s) => RequestId(s.into()),
            None => RequestId::generate(),
        };
        let header = HeaderValue::from_str(id.as_str()).ok();
        if let Some(h) = &header {
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER.clone(), h.clone());
        }
        request.extensions_mut().insert(id);
        ResponseFuture {
            inner: self.inner.call(request),
            header,
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// Adds the id header to the inner response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        header: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(h) = this.header.take() {
            response.headers_mut().insert(REQUEST_ID_HEADER.clone(), h);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    #[tokio::test]
    async fn echoes_client_id_and_generates_missing_ones() {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<()>, _>(RequestIdLayer);

        assert!(service.poll_ready().is_ready());
        let fut = service.call(
            Request::builder()
                .header("x-request-id", "abc-1")
                .body(())
                .unwrap(),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            req.extensions().get::<RequestId>().unwrap().as_str(),
            "abc-1"
        );
        send.send_response(Response::new(()));
        assert_eq!(fut.await.unwrap().headers()["x-request-id"], "abc-1");

        assert!(service.poll_ready().is_ready());
        let fut = service.call(Request::new(()));
        let (req, send) = handle.next_request().await.unwrap();
        let generated = req.extensions().get::<RequestId>().unwrap().clone();
        assert_eq!(generated.as_str().len(), 36);
        send.send_response(Response::new(()));
        assert_eq!(
            fut.await.unwrap().headers()["x-request-id"],
            generated.as_str()
        );
    }
}
