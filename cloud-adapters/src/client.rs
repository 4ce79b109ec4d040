//! The pooled upstream HTTP client: hyper's connection pool over rustls (system CA store, ALPN
//! `h2` then `http/1.1`), with connect and read timeouts, and the proxies the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`): HTTPS through a CONNECT tunnel,
//! plain HTTP as a forward proxy. Deliberately thin: a request goes out as built, with no URL
//! re-parsing, redirect handling or extra service layers on every call, since this sits on the
//! path of each proxied request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use crate::error::{Error, Result};

/// Connection settings for one provider's client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response head and between two reads of its body (a stalled stream
    /// fails after this).
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host. Generous: connections past the cap are closed when a
    /// burst ends, and the next burst pays a handshake for each, CPU that a gateway already
    /// behind on a stall can least afford.
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
        }
    }
}

/// What went wrong on the way to or from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// No connection could be made (refused, DNS, TLS handshake, connect timeout).
    Connect,
    /// The response head or the next body chunk did not come within the read timeout.
    Timeout,
    /// The connection failed after the request went out (reset, closed early).
    Request,
    /// The body broke off while it was being read.
    Body,
    /// The request could not be built (a body that does not encode).
    Build,
}

/// A transport failure, with the cause chain in its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// Which stage failed.
    pub kind: TransportErrorKind,
    /// What happened, causes included.
    pub message: String,
}

impl TransportError {
    fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        TransportError {
            kind,
            message: message.into(),
        }
    }

    /// Keeps the whole source chain: the top level alone rarely says why (refused, reset).
    fn from_chain(kind: TransportErrorKind, err: &dyn std::error::Error) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        TransportError::new(kind, message)
    }

    fn timeout(what: &str, after: Duration) -> Self {
        TransportError::new(
            TransportErrorKind::Timeout,
            format!("{what} timed out after {} ms", after.as_millis()),
        )
    }
}

/// Opens TCP connections: straight to the destination, or through the proxy the environment
/// names for it. An HTTPS destination gets a CONNECT tunnel (TLS then runs end to end inside it);
/// a plain-HTTP one a connection to the proxy itself, marked so that requests on it carry the
/// absolute URL.
#[derive(Debug, Clone)]
struct ProxyConnector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connection, marked when it goes to a forward proxy.
#[derive(Debug)]
struct Conn {
    io: TokioIo<TcpStream>,
    forward_proxy: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forward_proxy)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let https = dst.scheme() == Some(&http::uri::Scheme::HTTPS);
        let proxy = self.proxies.intercept(&dst);
        let forward_proxy = proxy.is_some() && !https;
        let mut direct = self.direct.clone();
        Box::pin(async move {
            let io = match proxy {
                Some(proxy) if https => {
                    let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                    if let Some(auth) = proxy.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    tunnel.call(dst).await?
                }
                Some(proxy) => direct.call(proxy.uri().clone()).await?,
                None => direct.call(dst).await?,
            };
            Ok(Conn { io, forward_proxy })
        })
    }
}

/// A pooled client; clones share the pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<ProxyConnector>, Full<Bytes>>,
    read_timeout: Duration,
    proxies: Arc<Matcher>,
}

impl HttpClient {
    /// Builds a client with the timeouts and pool settings of `config`, and the proxies the
    /// environment names.
    pub fn new(config: &HttpConfig) -> Result<Self> {
        Self::with_proxies(config, Matcher::from_env())
    }

    /// Builds a client whose destinations go through `proxies` where they match.
    pub fn with_proxies(config: &HttpConfig, proxies: Matcher) -> Result<Self> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(config.connect_timeout));
        let proxies = Arc::new(proxies);
        let connector = ProxyConnector {
            direct: tcp,
            proxies: proxies.clone(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Ok(HttpClient {
            inner,
            read_timeout: config.read_timeout,
            proxies,
        })
    }

    /// Starts a POST to `uri`.
    pub fn post(&self, uri: Uri) -> RequestBuilder<'_> {
        self.request(http::Method::POST, uri)
    }

    /// Starts a request with `method` to `uri`.
    pub fn request(&self, method: http::Method, uri: Uri) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            error: None,
        }
    }

    /// Starts a POST to `url`, parsed here; one that does not parse fails the send as a
    /// [`TransportErrorKind::Build`] error.
    pub fn post_url(&self, url: &str) -> RequestBuilder<'_> {
        self.request_url(http::Method::POST, url)
    }

    /// Starts a request with `method` to `url`, parsed as in [`HttpClient::post_url`].
    pub fn request_url(&self, method: http::Method, url: &str) -> RequestBuilder<'_> {
        match url.parse() {
            Ok(uri) => self.request(method, uri),
            Err(e) => self
                .request(method, Uri::default())
                .fail(format!("invalid url '{url}': {e}")),
        }
    }
}

/// Installs ring as the process-wide rustls crypto provider (once; later calls do nothing), so
/// that clients built elsewhere with default settings work too.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls_config() -> Result<rustls::ClientConfig> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "could not read a system CA certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no system CA certificates found; TLS upstreams will fail"
        );
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (`h2`, then `http/1.1`) is set by the connector from the versions it enables.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::HttpClient(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A request being built; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
pub struct RequestBuilder<'a> {
    client: &'a HttpClient,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// The first thing that went wrong while building; `send` reports it.
    error: Option<String>,
}

impl RequestBuilder<'_> {
    fn fail(mut self, message: String) -> Self {
        self.error.get_or_insert(message);
        self
    }

    /// Adds every header of `headers` (a name given twice keeps both values).
    pub fn headers(mut self, headers: &HeaderMap) -> Self {
        self.headers.reserve(headers.len());
        for (name, value) in headers {
            self.headers.append(name, value.clone());
        }
        self
    }

    /// Sets one header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sends `key` as a bearer token.
    pub fn bearer_auth(self, key: &str) -> Self {
        match HeaderValue::from_str(&format!("Bearer {key}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.header(AUTHORIZATION, value)
            }
            Err(_) => self.fail("the api key is not a valid header value".into()),
        }
    }

    /// Sets `body` as the request body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets `value` encoded as JSON as the body, with its content type.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes),
            Err(e) => self.fail(format!("cannot encode request body: {e}")),
        }
    }

    /// Sends the request and waits for the response head.
    pub async fn send(self) -> std::result::Result<Response, TransportError> {
        if let Some(message) = self.error {
            return Err(TransportError::new(TransportErrorKind::Build, message));
        }
        let mut request = http::Request::new(Full::new(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
            .headers_mut()
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "tandem/",
                env!("CARGO_PKG_VERSION")
            )));
        // A forward proxy sees each plain-HTTP request, so its credentials go on every one.
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP)
            && let Some(proxy) = self.client.proxies.intercept(request.uri())
            && let Some(auth) = proxy.basic_auth()
        {
            let mut auth = auth.clone();
            auth.set_sensitive(true);
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        let read_timeout = self.client.read_timeout;
        let response = tokio::time::timeout(read_timeout, self.client.inner.request(request))
            .await
            .map_err(|_| TransportError::timeout("waiting for the response", read_timeout))?
            .map_err(|e| {
                let kind = if e.is_connect() {
                    TransportErrorKind::Connect
                } else {
                    TransportErrorKind::Request
                };
                TransportError::from_chain(kind, &e)
            })?;
        let (parts, body) = response.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            read_timeout,
        })
    }
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    read_timeout: Duration,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next chunk of the body; `None` at its end. Trailers are skipped.
    async fn next_chunk(
        body: &mut Incoming,
        read_timeout: Duration,
    ) -> Option<std::result::Result<Bytes, TransportError>> {
        loop {
            let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
                Err(_) => {
                    return Some(Err(TransportError::timeout(
                        "reading the response body",
                        read_timeout,
                    )));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    return Some(Err(TransportError::from_chain(
                        TransportErrorKind::Body,
                        &e,
                    )));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                return Some(Ok(data));
            }
        }
    }

    /// Reads the whole body.
    pub async fn bytes(mut self) -> std::result::Result<Bytes, TransportError> {
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        while let Some(chunk) = Self::next_chunk(&mut self.body, self.read_timeout).await {
            let chunk = chunk?;
            // One chunk (the usual case for a small answer) is returned without a copy.
            match first.take() {
                None if rest.is_empty() => first = Some(chunk),
                Some(f) => {
                    rest.extend_from_slice(&f);
                    rest.extend_from_slice(&chunk);
                }
                None => rest.extend_from_slice(&chunk),
            }
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    }

    /// Reads the whole body as text (lossy).
    pub async fn text(self) -> std::result::Result<String, TransportError> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The body as a stream of chunks.
    pub fn bytes_stream(self) -> BoxStream<'static, std::result::Result<Bytes, TransportError>> {
        let read_timeout = self.read_timeout;
        futures::stream::unfold(Some(self.body), move |body| async move {
            let mut body = body?;
            let chunk = Self::next_chunk(&mut body, read_timeout).await?;
            // Nothing follows an error.
            let next = chunk.is_ok().then_some(body);
            Some((chunk, next))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let uri: Uri = format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap();
        let err = client.post(uri).body("{}").send().await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Connect, "{err}");
        assert!(err.message.to_lowercase().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn a_url_that_does_not_parse_fails_the_send() {
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let err = client
            .post_url("http://bad host/")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Build, "{err}");
        assert!(err.message.contains("bad host"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_and_a_cut_body_is_a_body_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: never answers. Second: promises 100 bytes, sends 5, hangs up.
            let (mut silent, _) = listener.accept().await.unwrap();
            let (mut cut, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = cut.read(&mut buf).await;
            cut.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                .await
                .unwrap();
            drop(cut);
            let _ = silent.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let client = HttpClient::new(&HttpConfig {
            read_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        })
        .unwrap();
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let err = client.post(uri.clone()).send().await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Timeout, "{err}");
        let response = client.post(uri).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let err = response.bytes().await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Body, "{err}");
    }

    #[tokio::test]
    async fn https_goes_through_the_proxy_by_connect_unless_no_proxy_says_otherwise() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                seen_tx
                    .send(String::from_utf8_lossy(&head).to_lowercase())
                    .unwrap();
                // Tunnel granted, then hung up: the TLS handshake inside it fails.
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
            }
        });
        let proxies = || {
            Matcher::builder()
                .https(format!("http://user:secret@{proxy}"))
                .no("bypass.example.test")
        };
        let client = HttpClient::with_proxies(&HttpConfig::default(), proxies().build()).unwrap();
        let uri: Uri = "https://api.example.test/v1/chat/completions"
            .parse()
            .unwrap();
        let err = client.post(uri).body("{}").send().await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Connect, "{err}");
        let head = seen_rx.recv().await.unwrap();
        assert!(
            head.starts_with("connect api.example.test:443 http/1.1\r\n"),
            "{head}"
        );
        // user:secret in base64.
        assert!(
            head.contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{head}"
        );

        // NO_PROXY hosts do not use the proxy.
        let uri = "https://bypass.example.test/".parse().unwrap();
        let err = client.post(uri).send().await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Connect, "{err}");
        assert!(seen_rx.try_recv().is_err());
    }

    /// A server that answers one request with `200 ok` once it has read `body`, and returns the
    /// request as it arrived, lowercased.
    async fn one_shot_server(
        body: &'static str,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).ends_with(body) {
                let n = tcp.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8_lossy(&seen).to_lowercase()
        });
        (addr, server)
    }

    #[tokio::test]
    async fn plain_http_goes_to_the_forward_proxy_with_the_absolute_url() {
        let (proxy, server) = one_shot_server("{}").await;
        let proxies = Matcher::builder()
            .http(format!("http://user:secret@{proxy}"))
            .build();
        let client = HttpClient::with_proxies(&HttpConfig::default(), proxies).unwrap();
        let uri: Uri = "http://api.example.test:8000/v1/x".parse().unwrap();
        let response = client.post(uri).body("{}").send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("post http://api.example.test:8000/v1/x http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{request}"
        );
    }

    #[tokio::test]
    async fn headers_body_and_user_agent_go_out_as_built() {
        let (addr, server) = one_shot_server("{\"a\":1}").await;
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let uri: Uri = format!("http://{addr}/x?y=1").parse().unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("x-extra", HeaderValue::from_static("1"));
        let response = client
            .post(uri)
            .headers(&extra)
            .bearer_auth("sk-test")
            .json(&serde_json::json!({"a": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
        let request = server.await.unwrap();
        assert!(request.starts_with("post /x?y=1 http/1.1\r\n"), "{request}");
        for line in [
            "x-extra: 1",
            "authorization: bearer sk-test",
            "content-type: application/json",
            "user-agent: tandem/",
        ] {
            assert!(request.contains(line), "{line} missing from {request}");
        }
    }
}
