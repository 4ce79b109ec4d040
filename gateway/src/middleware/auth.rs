//! API-key auth: when keys are configured, a request must carry one in `Authorization: Bearer` or
//! `x-api-key`; keys are compared by their sha256 digest, so the config never holds them in clear.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, header};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::{error_response, is_operational_path};
use crate::error::Error;

/// The key a request presents, if any.
fn presented_key<B>(request: &Request<B>) -> Option<&str> {
    if let Some(v) = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.trim());
    }
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

// ===== impl AuthLayer =====

/// Adds [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    hashes: Arc<[[u8; 32]]>,
}

impl AuthLayer {
    /// Accepts keys whose sha256 digest is in `hashes`; an empty list turns auth off.
    pub fn new(hashes: &[[u8; 32]]) -> Self {
        Self {
            hashes: hashes.into(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            hashes: self.hashes.clone(),
        }
    }
}

// ===== impl AuthService =====

/// Answers 401 to requests without a valid key.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    hashes: Arc<[[u8; 32]]>,
}

impl<S, ReqB> Service<Request<ReqB>> for AuthService<S>
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
        let allowed = self.hashes.is_empty()
            || is_operational_path(request.uri().path())
            || presented_key(&request).is_some_and(|key| {
                let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                self.hashes.contains(&digest)
            });
        if allowed {
            ResponseFuture::Inner {
                future: self.inner.call(request),
            }
        } else {
            ResponseFuture::Rejected {
                response: Some(error_response(&request, Error::Unauthorized)),
            }
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// The inner response, or the 401.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)] // variant fields; pin-project-lite takes no docs on them
    pub enum ResponseFuture<F> {
        /// Authorized.
        Inner {
            #[pin]
            future: F,
        },
        /// Rejected with this response.
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
    use crate::config::hash_api_key;
    use tower_test::mock;

    fn layer() -> AuthLayer {
        let hash: [u8; 32] = hex::decode(hash_api_key("secret"))
            .unwrap()
            .try_into()
            .unwrap();
        AuthLayer::new(&[hash])
    }

    #[tokio::test]
    async fn rejects_missing_and_wrong_keys() {
        let (mut service, _handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(layer());
        assert!(service.poll_ready().is_ready());
        let r = service
            .call(
                Request::builder()
                    .uri("/v1/chat/completions")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(service.poll_ready().is_ready());
        let r = service
            .call(
                Request::builder()
                    .uri("/v1/messages")
                    .header("x-api-key", "wrong")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
    }

    #[tokio::test]
    async fn accepts_bearer_and_x_api_key_and_probes() {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<Body>, _>(layer());
        for req in [
            Request::builder()
                .uri("/v1/models")
                .header("authorization", "Bearer secret")
                .body(())
                .unwrap(),
            Request::builder()
                .uri("/v1/models")
                .header("x-api-key", "secret")
                .body(())
                .unwrap(),
            Request::builder().uri("/healthz").body(()).unwrap(),
        ] {
            assert!(service.poll_ready().is_ready());
            let fut = service.call(req);
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::new(Body::empty()));
            assert_eq!(fut.await.unwrap().status(), 200);
        }
    }
}
