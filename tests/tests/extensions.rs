//! The three extension points, each shown with a toy: a provider for an API that speaks an
//! existing wire format, a routing policy, and a middleware. Each toy is the whole of the new
//! file such an addition needs; the test around it is what registering it does.
//!
//! - A provider over OpenAI's format is one file under `cloud-adapters/src/providers/` built
//!   from the shared HTTP helpers and the format's codec, plus its arm in
//!   `gateway/src/providers.rs` (a server that needs nothing of its own is one line in
//!   `providers/presets.rs`). Here the gateway is handed the toy through
//!   `GatewayOptions::providers`, the seam the config's arm fills.
//! - A policy is one file under `router-policy/src/policy/` plus its `PolicyKind` variant
//!   (`router-policy/tests/toy_policy.rs` runs a toy through the router).
//! - A middleware is one module under `gateway/src/middleware/` (Layer, Service,
//!   ResponseFuture), its `pub mod` line, and its line in `server.rs`'s `ServiceBuilder`.

// Test code fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_cloud_adapters::openai::{self, ChatCompletionsRequest, ChunkDecoder};
use tandem_cloud_adapters::{
    ChatRequest, ChatResponse, EventStream, Provider, ProviderError, WireFormat, http as upstream,
};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockUpstream};
use tower::{Layer, Service, ServiceExt};

// ===== a toy provider =====

/// An API that speaks OpenAI's chat format but takes its key in `x-toy-key`.
struct ToyProvider {
    name: String,
    url: Uri,
    headers: HeaderMap,
    client: HttpClient,
}

impl ToyProvider {
    fn new(name: &str, base_url: &str, key: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-toy-key"),
            HeaderValue::from_str(key).unwrap(),
        );
        Self {
            name: name.to_owned(),
            url: format!("{base_url}/chat/completions").parse().unwrap(),
            headers,
            client: HttpClient::new(&HttpConfig::default()).unwrap(),
        }
    }
}

#[async_trait]
impl Provider for ToyProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = ChatCompletionsRequest::new(req, &req.model, false);
        let request =
            upstream::post_json(&self.client, &self.url, &self.headers, &self.name, &body)?;
        let response = upstream::send(request, &self.name, openai::parse_error_body).await?;
        let bytes = upstream::read_body(response, &self.name).await?;
        openai::parse_chat_response(&bytes, &self.name)
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let body = ChatCompletionsRequest::new(req, &req.model, true);
        let request =
            upstream::post_json(&self.client, &self.url, &self.headers, &self.name, &body)?;
        let response = upstream::send(request, &self.name, openai::parse_error_body).await?;
        let chunks = upstream::body_stream(response, &self.name);
        Ok(upstream::decode_sse(
            chunks,
            ChunkDecoder::new(&*self.name),
            &*self.name,
        ))
    }
}

#[tokio::test]
async fn a_toy_provider_serves_a_route_through_the_gateway() {
    let (_addr, mock) = MockUpstream::start(Fixtures::builtin()).await.unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[backends.toy]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = {{ \"toy-model\" = \"gpt-4o-mini\" }}\n",
        mock.base_url()
    );
    let config = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
    let toy: Arc<dyn Provider> = Arc::new(ToyProvider::new("toy", &mock.base_url(), "secret"));
    let options = GatewayOptions {
        local: LocalLoad::Offline,
        quiet: true,
        providers: BTreeMap::from([("toy".to_owned(), toy)]),
        ..GatewayOptions::default()
    };
    let gateway = Gateway::start(config, options).await.unwrap();
    let client = tandem_tests::client();
    for stream in [false, true] {
        let response = client
            .post(format!("{}/v1/chat/completions", gateway.url()))
            .json(&json!({"model": "toy-model", "stream": stream,
                          "messages": [{"role": "user", "content": "Say hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let route = response.headers()["x-tandem-route"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(route.starts_with("toy; route toy-model"), "{route}");
        let body = response.text().await.unwrap();
        if stream {
            let events = tandem_tests::parse_sse(&body);
            assert!(
                tandem_tests::streamed_text(&events).starts_with("Hello"),
                "{body}"
            );
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("Hello")
            );
        }
    }
    // The toy's own header reached the upstream, with the mapped model.
    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.header("x-toy-key"), Some("secret"));
        assert_eq!(r.json().unwrap()["model"], "gpt-4o-mini");
    }
}

// ===== a toy middleware =====

/// Adds [`StampService`]: every response carries `x-stamp`.
#[derive(Debug, Clone, Copy)]
struct StampLayer;

impl<S> Layer<S> for StampLayer {
    type Service = StampService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StampService { inner }
    }
}

/// Stamps each response.
#[derive(Debug, Clone)]
struct StampService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for StampService<S>
where
    S: Service<Request<B>, Response = Response<String>>,
{
    type Response = Response<String>;
    type Error = S::Error;
    type Future = StampFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        StampFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The inner service's response, stamped.
    struct StampFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for StampFuture<F>
where
    F: Future<Output = Result<Response<String>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        response
            .headers_mut()
            .insert("x-stamp", HeaderValue::from_static("toy"));
        Poll::Ready(Ok(response))
    }
}

#[tokio::test]
async fn a_toy_middleware_wraps_a_service() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<String>>();
    let service = StampLayer.layer(mock);
    let call = tokio::spawn(service.oneshot(Request::new(())));
    let (_request, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new("ok".to_owned()));
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.headers()["x-stamp"], "toy");
    assert_eq!(response.body(), "ok");
}
