//! The three extension points, each shown with a toy: a provider for an API that speaks an
//! existing wire format, a routing policy, and a middleware. Each toy is the whole of the new
//! file such an addition needs; the test around it is what registering it does.
//!
//! - A provider for an API with an existing wire format is one file under
//!   `cloud-adapters/src/providers/`: a `Codec` (URL, headers, and the format's body, answer,
//!   error and stream readers) and a constructor of the generic `HttpProvider` over it, plus its
//!   arm in `gateway/src/providers.rs` (a server that needs nothing of its own is one line in
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

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_cloud_adapters::openai::{self, ChatCompletionsRequest, ChunkDecoder};
use tandem_cloud_adapters::providers::codec::Codec;
use tandem_cloud_adapters::providers::generic::{HttpProvider, HttpProviderConfig};
use tandem_cloud_adapters::{
    ChatRequest, ChatResponse, Error, Provider, ProviderError, WireFormat,
};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockUpstream};
use tower::{Layer, Service, ServiceExt};

// ===== a toy provider =====

/// An API that speaks OpenAI's chat format but takes its key in `x-toy-key`: a codec that says
/// so, over OpenAI's existing request, answer, error and stream readers. The generic provider
/// does the sending, status mapping and stream plumbing.
#[derive(Debug)]
struct ToyCodec;

impl Codec for ToyCodec {
    type Decoder = ChunkDecoder;

    fn format(&self) -> WireFormat {
        WireFormat::OpenAi
    }

    fn chat_url(&self, base: &str) -> String {
        format!("{base}/chat/completions")
    }

    fn add_headers(
        &self,
        provider: &str,
        api_key: Option<&str>,
        headers: &mut HeaderMap,
    ) -> tandem_cloud_adapters::Result<()> {
        if let Some(key) = api_key {
            let value = HeaderValue::from_str(key)
                .map_err(|_| Error::Config(format!("{provider}: bad key")))?;
            headers.insert(HeaderName::from_static("x-toy-key"), value);
        }
        Ok(())
    }

    fn encode(&self, req: &ChatRequest, model: &str, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ChatCompletionsRequest::new(req, model, stream))
    }

    fn parse_response(&self, body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
        openai::parse_chat_response(body, provider)
    }

    fn parse_error(&self, status: u16, body: &[u8], provider: &str) -> ProviderError {
        openai::parse_error_body(status, body, provider)
    }

    fn decoder(&self, provider: &str) -> ChunkDecoder {
        ChunkDecoder::new(provider)
    }
}

/// The toy provider: the generic HTTP provider configured with the toy codec.
fn toy_provider(name: &str, base_url: &str, key: &str) -> HttpProvider<ToyCodec> {
    let mut config = HttpProviderConfig::new(name, base_url);
    config.api_key = Some(key.to_owned());
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    HttpProvider::with_codec(ToyCodec, config, client).unwrap()
}

#[tokio::test]
async fn a_toy_provider_serves_a_route_through_the_gateway() {
    let (_addr, mock) = MockUpstream::start(Fixtures::builtin()).await.unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[backends.toy]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = {{ \"toy-model\" = \"gpt-4o-mini\" }}\n",
        mock.base_url()
    );
    let config = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
    let toy: Arc<dyn Provider> = Arc::new(toy_provider("toy", &mock.base_url(), "secret"));
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
