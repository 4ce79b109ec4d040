//! The pooled upstream HTTP client (rustls with the system CA store, HTTP/2 where the server
//! offers it) and the plumbing that turns an SSE response into a stream of [`ChatEvent`]s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use crate::anthropic::EventDecoder;
use crate::error::{Error, Result};
use crate::openai::ChunkDecoder;
use crate::provider::{EventStream, ProviderError, ProviderErrorKind};
use crate::sse::{SseEvent, SseParser};
use crate::types::ChatEvent;

/// Connection settings for one provider's client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait between two reads of a response (a stalled stream fails after this).
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// Builds a pooled client: rustls (ring) trusting the system CA store, ALPN `h2` then
/// `http/1.1`, and the timeouts of `config`.
pub fn build_client(config: &HttpConfig) -> Result<reqwest::Client> {
    let tls = tls_config()?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .tcp_nodelay(true)
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::HttpClient(e.to_string()))
}

/// Installs ring as the process-wide rustls crypto provider (once; later calls do nothing), so
/// that clients built elsewhere with `reqwest::Client::new()` work too.
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::HttpClient(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Maps a transport failure to a [`ProviderError`] (connect and timeout failures are retryable).
pub fn transport_error(err: &reqwest::Error, provider: &str) -> ProviderError {
    let kind = if err.is_timeout() {
        ProviderErrorKind::Timeout
    } else if err.is_connect() {
        ProviderErrorKind::Connect
    } else if err.is_body() || err.is_decode() {
        ProviderErrorKind::StreamCut
    } else {
        ProviderErrorKind::Connect
    };
    // The source chain says why (refused, reset, DNS); the top level alone rarely does.
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ProviderError::new(kind, provider, message)
}

/// A JSON POST of `body` to `url` for `req`, after the checks every provider shares (one choice
/// per request: `n>1` is refused before anything is sent).
pub(crate) fn post_json<T: serde::Serialize>(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
    provider: &str,
    req: &crate::types::ChatRequest,
    body: &T,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    if req.n > 1 {
        return Err(ProviderError::new(
            ProviderErrorKind::Unsupported,
            provider,
            "n>1 is not supported",
        ));
    }
    let body = serde_json::to_vec(body).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Unsupported,
            provider,
            format!("cannot encode request: {e}"),
        )
    })?;
    Ok(client.post(url.clone()).headers(headers.clone()).body(body))
}

/// Sends a prepared request; error statuses come back as `Err` with the upstream's error body
/// parsed by `parse_error`.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    provider: &str,
    parse_error: fn(u16, &[u8], &str) -> ProviderError,
) -> Result<reqwest::Response, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, provider))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(parse_error(status.as_u16(), &body, provider))
}

/// Reads a whole response body.
pub(crate) async fn read_body(
    response: reqwest::Response,
    provider: &str,
) -> Result<Bytes, ProviderError> {
    response
        .bytes()
        .await
        .map_err(|e| transport_error(&e, provider))
}

/// A decoder from one wire format's SSE events to [`ChatEvent`]s.
pub trait StreamDecode: Send + 'static {
    /// Decodes one SSE event into `out`.
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>);
    /// Whether the stream reached its end marker (or already failed).
    fn is_complete(&self) -> bool;
}

impl StreamDecode for ChunkDecoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>) {
        ChunkDecoder::decode(self, event, out);
    }
    fn is_complete(&self) -> bool {
        ChunkDecoder::is_complete(self)
    }
}

impl StreamDecode for EventDecoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>) {
        EventDecoder::decode(self, event, out);
    }
    fn is_complete(&self) -> bool {
        EventDecoder::is_complete(self)
    }
}

struct SseState<D> {
    body: BoxStream<'static, Result<Bytes, ProviderError>>,
    parser: SseParser,
    decoder: D,
    pending: VecDeque<ChatEvent>,
    scratch: Vec<ChatEvent>,
    ended: bool,
    provider: String,
}

/// Turns a byte stream of SSE into [`ChatEvent`]s. A stream that ends before its end marker
/// yields a final [`ChatEvent::Error`] of kind `StreamCut`; nothing follows an error.
pub fn decode_sse<D: StreamDecode>(
    body: BoxStream<'static, Result<Bytes, ProviderError>>,
    decoder: D,
    provider: impl Into<String>,
) -> EventStream {
    let state = SseState {
        body,
        parser: SseParser::new(),
        decoder,
        pending: VecDeque::new(),
        scratch: Vec::new(),
        ended: false,
        provider: provider.into(),
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((event, st));
            }
            if st.ended {
                return None;
            }
            match st.body.next().await {
                Some(Ok(chunk)) => {
                    st.parser.push(&chunk);
                    while let Some(event) = st.parser.next_event() {
                        st.decoder.decode(&event, &mut st.scratch);
                    }
                    for event in st.scratch.drain(..) {
                        let failed = matches!(event, ChatEvent::Error(_));
                        st.pending.push_back(event);
                        if failed {
                            st.ended = true;
                            break;
                        }
                    }
                }
                Some(Err(err)) => {
                    st.ended = true;
                    st.pending.push_back(ChatEvent::Error(err));
                }
                None => {
                    st.ended = true;
                    if !st.decoder.is_complete() {
                        st.pending
                            .push_back(ChatEvent::Error(ProviderError::stream_cut(&*st.provider)));
                    }
                }
            }
        }
    })
    .boxed()
}

/// The body of an upstream response as a stream of chunks with transport errors mapped.
pub(crate) fn body_stream(
    response: reqwest::Response,
    provider: &str,
) -> BoxStream<'static, Result<Bytes, ProviderError>> {
    let provider = provider.to_owned();
    response
        .bytes_stream()
        .map(move |r| {
            r.map_err(|e| {
                let mut err = transport_error(&e, &provider);
                if err.kind != ProviderErrorKind::Timeout {
                    err.kind = ProviderErrorKind::StreamCut;
                    err.retryable = true;
                }
                err
            })
        })
        .boxed()
}
