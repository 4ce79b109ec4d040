//! The default route header: an answer that leaves the stack without `x-tandem-route` (a 400
//! before routing, a 401, 404, 405, 413, a shed request, the operational endpoints) gets one
//! saying that no backend answered, and why: `gateway; no backend (<why>)`, where the why is
//! the answer's [`ErrorLabel`] or else its endpoint's metric label. Answers that went through
//! routing keep the header their handler set.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::ROUTE_HEADER;
use crate::error::ErrorLabel;
use crate::metrics::{ENDPOINTS, endpoint_index};

/// The route header's name, built once.
static ROUTE_HEADER_NAME: HeaderName = HeaderName::from_static(ROUTE_HEADER);

/// The backend named in a default route header: the gateway itself.
pub const GATEWAY_BACKEND: &str = "gateway";

/// The default values of answers without an error, one per endpoint label, made once.
static ENDPOINT_VALUES: LazyLock<[HeaderValue; ENDPOINTS.len()]> =
    LazyLock::new(|| ENDPOINTS.map(default_value));

/// The default route header value for an answer labelled `label`. Made per answer only for
/// errors, which are off the hot path; answers without one take their endpoint's, made once.
pub fn default_value(label: &str) -> HeaderValue {
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    HeaderValue::from_str(&format!("{GATEWAY_BACKEND}; no backend ({label})"))
        .unwrap_or_else(|_| HeaderValue::from_static("gateway; no backend"))
}

// ===== impl RouteHeaderLayer =====

/// Adds [`RouteHeaderService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteHeaderLayer;

impl<S> Layer<S> for RouteHeaderLayer {
    type Service = RouteHeaderService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteHeaderService { inner }
    }
}

// ===== impl RouteHeaderService =====

/// Gives every response a route header, saying no backend answered where none was set.
#[derive(Debug, Clone)]
pub struct RouteHeaderService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RouteHeaderService<S>
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
        ResponseFuture {
            endpoint: endpoint_index(request.uri().path()),
            inner: self.inner.call(request),
        }
    }
}

// ===== impl ResponseFuture =====

pin_project! {
    /// Adds the default route header to the inner response when it has none.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
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
        let mut response = ready!(this.inner.poll(cx))?;
        if !response.headers().contains_key(&ROUTE_HEADER_NAME) {
            let value = match response.extensions().get::<ErrorLabel>() {
                Some(ErrorLabel(label)) => default_value(label),
                None => ENDPOINT_VALUES
                    .get(*this.endpoint)
                    .cloned()
                    .unwrap_or_else(|| default_value("other")),
            };
            response
                .headers_mut()
                .insert(ROUTE_HEADER_NAME.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ApiFlavor, Error};
    use axum::body::Body;
    use tower_test::mock;

    /// Sends `response` through the layer for a request to `path`; the header it leaves with.
    async fn header_for(path: &str, response: Response<Body>) -> Option<String> {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<()>, Response<Body>, _>(RouteHeaderLayer);
        assert!(service.poll_ready().is_ready());
        let fut = service.call(Request::builder().uri(path).body(()).unwrap());
        let (_request, send) = handle.next_request().await.unwrap();
        send.send_response(response);
        let response = fut.await.unwrap();
        response
            .headers()
            .get(ROUTE_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn an_error_answer_without_a_route_names_its_error() {
        let r = Error::Unauthorized.into_response_for(ApiFlavor::OpenAi);
        assert_eq!(
            header_for("/v1/chat/completions", r).await.as_deref(),
            Some("gateway; no backend (unauthorized)")
        );
        let r = Error::PayloadTooLarge { limit: 1 }.into_response_for(ApiFlavor::Anthropic);
        assert_eq!(
            header_for("/v1/messages", r).await.as_deref(),
            Some("gateway; no backend (payload_too_large)")
        );
    }

    #[tokio::test]
    async fn an_answer_without_an_error_names_its_endpoint() {
        for (path, expected) in [
            ("/healthz", "gateway; no backend (health)"),
            ("/readyz", "gateway; no backend (health)"),
            ("/v1/models", "gateway; no backend (models)"),
            ("/metrics", "gateway; no backend (metrics)"),
            ("/somewhere", "gateway; no backend (other)"),
        ] {
            let r = Response::new(Body::empty());
            assert_eq!(header_for(path, r).await.as_deref(), Some(expected));
        }
    }

    #[tokio::test]
    async fn a_route_header_already_set_is_kept() {
        let mut r = Error::ModelNotFound("x".into()).into_response_for(ApiFlavor::OpenAi);
        r.headers_mut()
            .insert(ROUTE_HEADER, HeaderValue::from_static("openai; route gpt"));
        assert_eq!(
            header_for("/v1/chat/completions", r).await.as_deref(),
            Some("openai; route gpt")
        );
    }

    #[test]
    fn every_label_makes_its_value() {
        for (label, value) in ENDPOINTS.iter().zip(ENDPOINT_VALUES.iter()) {
            assert_eq!(value, &format!("gateway; no backend ({label})"));
        }
        let errors = [
            Error::invalid("x", None),
            Error::Unsupported {
                message: "x".into(),
                param: "n".into(),
            },
            Error::ModelNotFound("x".into()),
            Error::EndpointNotFound("x".into()),
            Error::MethodNotAllowed {
                method: "GET".into(),
                path: "/x".into(),
            },
            Error::UnknownRequestId("x".into()),
            Error::Unauthorized,
            Error::PayloadTooLarge { limit: 1 },
            Error::Overloaded {
                limit: 1,
                retry_after_secs: 1,
            },
            Error::Timeout(1),
            Error::FirstTokenTimeout(1),
            Error::NotReady("x".into()),
            Error::LocalModel("x".into()),
            Error::Internal("x".into()),
        ];
        for e in errors {
            let label = e.metric_label();
            assert_eq!(
                default_value(label),
                format!("gateway; no backend ({label})"),
                "{e:?}"
            );
        }
        assert_eq!(default_value("upstream"), "gateway; no backend (upstream)");
        assert_eq!(
            default_value("odd label\n"),
            "gateway; no backend (odd?label?)"
        );
    }
}
