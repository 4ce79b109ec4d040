//! The one HTTP provider: a [`Codec`] says what the wire format is; this file sends, maps
//! statuses and transport failures, reads bodies and decodes streams for every format alike.

use ::http::Uri;
use ::http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::codec::Codec;
use super::{checked_base, endpoint, header_map};
use crate::client::{HttpClient, RequestBuilder};
use crate::error::Result;
use crate::http;
use crate::provider::{
    Api, ByteStream, Capabilities, EventStream, Provider, ProviderError, ProviderErrorKind,
};
use crate::types::{ChatRequest, ChatResponse, WireFormat, response_events};
use crate::wire::openai::ChatCompletion;

/// What every HTTP provider is configured with, whatever its format.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProviderConfig {
    /// The provider's name in errors, metrics and route headers.
    pub name: String,
    /// The base URL the codec's paths go under.
    pub base_url: String,
    /// The API key, if the upstream needs one; the codec says which header carries it.
    pub api_key: Option<String>,
    /// Headers added to every request.
    pub extra_headers: Vec<(String, String)>,
    /// The upstream model name; `None` forwards the client's.
    pub model: Option<String>,
    /// What the API honours; `None` takes what the codec's format can carry.
    pub capabilities: Option<Capabilities>,
}

impl HttpProviderConfig {
    /// A config for `base_url` with defaults elsewhere.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        HttpProviderConfig {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            extra_headers: Vec::new(),
            model: None,
            capabilities: None,
        }
    }
}

/// A provider that speaks `C`'s wire format over HTTP. URLs and headers are built once, when
/// the provider is.
#[derive(Debug, Clone)]
pub struct HttpProvider<C> {
    name: String,
    model: Option<String>,
    capabilities: Capabilities,
    url: Uri,
    completions_url: Option<Uri>,
    /// The codec's other endpoints, in [`Api::ALL`] order.
    api_urls: [Option<Uri>; 3],
    headers: ::http::HeaderMap,
    client: HttpClient,
    codec: C,
}

impl<C: Codec> HttpProvider<C> {
    /// A provider over `codec`, sending through `client`.
    pub fn with_codec(codec: C, config: HttpProviderConfig, client: HttpClient) -> Result<Self> {
        let base = checked_base(&config.name, &config.base_url)?;
        let url = endpoint(&config.name, codec.chat_url(base))?;
        let completions_url = codec
            .completions_url(base)
            .map(|u| endpoint(&config.name, u))
            .transpose()?;
        let mut api_urls: [Option<Uri>; 3] = Default::default();
        for (slot, api) in api_urls.iter_mut().zip(Api::ALL) {
            *slot = codec
                .api_url(base, api)
                .map(|u| endpoint(&config.name, u))
                .transpose()?;
        }
        let mut headers = header_map(&config.name, &config.extra_headers)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        codec.add_headers(&config.name, config.api_key.as_deref(), &mut headers)?;
        Ok(HttpProvider {
            capabilities: config
                .capabilities
                .unwrap_or_else(|| Capabilities::for_format(codec.format())),
            name: config.name,
            model: config.model,
            url,
            completions_url,
            api_urls,
            headers,
            client,
            codec,
        })
    }

    /// The chat URL requests go to.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The codec the provider speaks.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// A POST of `body` to `url`, asking for SSE when `stream`.
    fn post(&self, url: &Uri, body: impl Into<Bytes>, stream: bool) -> RequestBuilder<'_> {
        let request = self
            .client
            .post(url.clone())
            .headers(&self.headers)
            .body(body);
        if stream {
            request.header(ACCEPT, HeaderValue::from_static("text/event-stream"))
        } else {
            request
        }
    }

    /// The chat request for `req`, its model replaced by the configured one.
    fn chat_request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<RequestBuilder<'_>, ProviderError> {
        let model = self.model.as_deref().unwrap_or(&req.model);
        let body = self.codec.encode(req, model, stream).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Unsupported,
                &*self.name,
                format!("cannot encode request: {e}"),
            )
        })?;
        Ok(self.post(&self.url, body, stream))
    }

    /// A legacy `/completions` request, its body sent as the client wrote it.
    fn completions_request(
        &self,
        body: Bytes,
        stream: bool,
    ) -> Result<RequestBuilder<'_>, ProviderError> {
        let url = self
            .completions_url
            .as_ref()
            .ok_or_else(|| self.no_legacy_completions())?;
        Ok(self.post(url, body, stream))
    }

    /// A request to another of the upstream's endpoints, its body sent as the client wrote it.
    fn api_request(
        &self,
        api: Api,
        body: Bytes,
        stream: bool,
    ) -> Result<RequestBuilder<'_>, ProviderError> {
        let index = Api::ALL.iter().position(|a| *a == api).unwrap_or(0);
        let url = self.api_urls[index]
            .as_ref()
            .ok_or_else(|| self.no_api(api))?;
        Ok(self.post(url, body, stream))
    }

    /// The URL of `path` under `api`'s (its query after the API's own, as Azure's carries
    /// `api-version`).
    fn api_sub_url(&self, api: Api, path: &str) -> Result<Uri, ProviderError> {
        let index = Api::ALL.iter().position(|a| *a == api).unwrap_or(0);
        let url = self.api_urls[index]
            .as_ref()
            .ok_or_else(|| self.no_api(api))?;
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut joined = format!(
            "{}://{}{}{path}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str()),
            url.path()
        );
        let queries: Vec<&str> = [url.query().unwrap_or(""), query]
            .into_iter()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            joined.push('?');
            joined.push_str(&queries.join("&"));
        }
        endpoint(&self.name, joined).map_err(|e| {
            ProviderError::new(ProviderErrorKind::Unsupported, &*self.name, e.to_string())
        })
    }

    /// Sends `request` and reads the whole answer's body.
    async fn answer(&self, request: RequestBuilder<'_>) -> Result<Bytes, ProviderError> {
        let response = http::send(request, &self.name, |status, body, provider| {
            self.codec.parse_error(status, body, provider)
        })
        .await?;
        http::read_body(response, &self.name).await
    }

    /// Sends `request` and decodes its SSE answer. An upstream that answers the stream request
    /// with the whole answer as JSON (some OpenAI-compatible servers do, for tool calls say) has
    /// answered all the same: its answer becomes the stream that was asked for.
    async fn stream(&self, request: RequestBuilder<'_>) -> Result<EventStream, ProviderError> {
        let response = http::send(request, &self.name, |status, body, provider| {
            self.codec.parse_error(status, body, provider)
        })
        .await?;
        if http::is_json(response.headers()) {
            let body = http::read_body(response, &self.name).await?;
            let answer = self.codec.parse_response(&body, &self.name)?;
            return Ok(futures::stream::iter(response_events(&answer)).boxed());
        }
        let body = http::body_stream(response, &self.name);
        Ok(http::decode_sse(
            body,
            self.codec.decoder(&self.name),
            &*self.name,
        ))
    }
}

#[async_trait]
impl<C: Codec> Provider for HttpProvider<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        self.codec.format()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = self.answer(self.chat_request(req, false)?).await?;
        self.codec.parse_response(&body, &self.name)
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let body = self.answer(self.chat_request(req, false)?).await?;
        self.codec.pass_response(body, &self.name)
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        self.stream(self.chat_request(req, true)?).await
    }

    async fn completions(&self, _model: &str, body: Bytes) -> Result<ChatResponse, ProviderError> {
        let body = self.answer(self.completions_request(body, false)?).await?;
        self.codec.parse_response(&body, &self.name)
    }

    async fn completions_stream(
        &self,
        _model: &str,
        body: Bytes,
    ) -> Result<EventStream, ProviderError> {
        self.stream(self.completions_request(body, true)?).await
    }

    async fn forward(&self, api: Api, _model: &str, body: Bytes) -> Result<Bytes, ProviderError> {
        self.answer(self.api_request(api, body, false)?).await
    }

    async fn forward_stream(
        &self,
        api: Api,
        _model: &str,
        body: Bytes,
    ) -> Result<ByteStream, ProviderError> {
        let request = self.api_request(api, body, true)?;
        let response = http::send(request, &self.name, |status, body, provider| {
            self.codec.parse_error(status, body, provider)
        })
        .await?;
        Ok(http::body_stream(response, &self.name))
    }

    async fn fetch(
        &self,
        api: Api,
        _model: &str,
        method: ::http::Method,
        path: &str,
    ) -> Result<Bytes, ProviderError> {
        let url = self.api_sub_url(api, path)?;
        self.answer(self.client.request(method, url).headers(&self.headers))
            .await
    }
}
