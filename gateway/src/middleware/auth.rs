//! API-key auth: when keys are configured, a request must carry one in `Authorization: Bearer` or
//! `x-api-key`; keys are compared by their sha256 digest, so the config never holds them in clear.
//! The digest of the key a request presented goes into its extensions as [`ApiKeyDigest`], so the
//! routing rules keyed by API key read exactly the key auth checked. Virtual keys (made through
//! the admin API) are looked up in the in-memory [`KeyRegistry`]: a live one passes with its
//! record in the extensions as [`CallerKey`], a revoked one is refused. Auth is on as soon as any
//! key exists, in the config or made at run time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderName, Request, Response, header};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::{error_response, is_operational_path};
use crate::context::ApiKeyDigest;
use crate::controls::keys::{KeyRegistry, VirtualKey};
use crate::error::Error;

/// The virtual key a request presented, in its extensions (set by [`AuthService`] only).
#[derive(Debug, Clone)]
pub struct CallerKey(pub Arc<VirtualKey>);

/// The key a request presents, if any.
fn presented_key<B>(request: &Request<B>) -> Option<&str> {
    // Made once: a lookup by `&str` parses and validates the name on every call.
    static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    if let Some(v) = request
        .headers()
        .get(&X_API_KEY)
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
    keys: Option<Arc<KeyRegistry>>,
}

impl AuthLayer {
    /// Accepts keys whose sha256 digest is in `hashes`; an empty list turns auth off.
    pub fn new(hashes: &[[u8; 32]]) -> Self {
        Self {
            hashes: hashes.into(),
            keys: None,
        }
    }

    /// Also accepts the live virtual keys of `keys` (and turns auth on once any exists).
    pub fn with_keys(mut self, keys: Arc<KeyRegistry>) -> Self {
        self.keys = Some(keys);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            hashes: self.hashes.clone(),
            keys: self.keys.clone(),
        }
    }
}

// ===== impl AuthService =====

/// Answers 401 to requests without a valid key.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    hashes: Arc<[[u8; 32]]>,
    keys: Option<Arc<KeyRegistry>>,
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

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let digest: Option<[u8; 32]> =
            presented_key(&request).map(|key| Sha256::digest(key.as_bytes()).into());
        let virtual_key = match (&self.keys, digest) {
            (Some(keys), Some(d)) => keys.lookup(&d),
            _ => None,
        };
        let enforced = !self.hashes.is_empty() || self.keys.as_ref().is_some_and(|k| k.enforced());
        let allowed = match &virtual_key {
            // A revoked key is refused even where auth is off for others.
            Some(k) => k.is_live() || is_operational_path(request.uri().path()),
            None => {
                !enforced
                    || is_operational_path(request.uri().path())
                    || digest.is_some_and(|d| self.hashes.contains(&d))
            }
        };
        if allowed {
            // Never trust a digest or key that did not come from this layer.
            request.extensions_mut().remove::<CallerKey>();
            match digest {
                Some(d) => request.extensions_mut().insert(ApiKeyDigest(d)),
                None => request.extensions_mut().remove::<ApiKeyDigest>(),
            };
            if let Some(k) = virtual_key {
                request.extensions_mut().insert(CallerKey(k));
            }
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
    async fn passes_on_the_digest_of_the_key_it_checked() {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<Body>, _>(layer());
        // x-api-key is what auth reads first, whatever else the request carries; a digest put
        // in by anything before auth is dropped.
        let mut req = Request::builder()
            .uri("/v1/chat/completions")
            .header("x-api-key", "secret")
            .header("authorization", "Bearer other")
            .body(())
            .unwrap();
        req.extensions_mut().insert(ApiKeyDigest([7; 32]));
        assert!(service.poll_ready().is_ready());
        let fut = service.call(req);
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(
            seen.extensions()
                .get::<ApiKeyDigest>()
                .map(ApiKeyDigest::to_hex),
            Some(hash_api_key("secret"))
        );
        send.send_response(Response::new(Body::empty()));
        assert_eq!(fut.await.unwrap().status(), 200);

        let mut req = Request::builder().uri("/healthz").body(()).unwrap();
        req.extensions_mut().insert(ApiKeyDigest([7; 32]));
        assert!(service.poll_ready().is_ready());
        let fut = service.call(req);
        let (seen, send) = handle.next_request().await.unwrap();
        assert!(seen.extensions().get::<ApiKeyDigest>().is_none());
        send.send_response(Response::new(Body::empty()));
        assert_eq!(fut.await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn virtual_keys_pass_with_their_record_and_revoked_ones_are_refused() {
        use crate::controls::keys::{KeyRegistry, KeySpec};
        use crate::store::embedded::EmbeddedStore;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.log")).unwrap();
        let keys = Arc::new(KeyRegistry::new(store, None));
        let layer = AuthLayer::new(&[]).with_keys(keys.clone());
        let (mut service, mut handle) = mock::spawn_layer::<Request<()>, Response<Body>, _>(layer);
        let req = |key: &str| {
            Request::builder()
                .uri("/v1/chat/completions")
                .header("authorization", format!("Bearer {key}"))
                .body(())
                .unwrap()
        };
        // No virtual key yet: auth is off.
        assert!(service.poll_ready().is_ready());
        let fut = service.call(req("any"));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::empty()));
        assert_eq!(fut.await.unwrap().status(), 200);

        let (record, key) = keys.create(KeySpec::default()).await.unwrap();
        assert!(service.poll_ready().is_ready());
        let fut = service.call(req(&key));
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(
            seen.extensions().get::<CallerKey>().unwrap().0.id,
            record.id
        );
        send.send_response(Response::new(Body::empty()));
        assert_eq!(fut.await.unwrap().status(), 200);
        // Now that a key exists, a request without one is refused.
        assert!(service.poll_ready().is_ready());
        assert_eq!(service.call(req("any")).await.unwrap().status(), 401);

        keys.revoke(&record.id).await.unwrap();
        assert!(service.poll_ready().is_ready());
        assert_eq!(service.call(req(&key)).await.unwrap().status(), 401);
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
