//! What the HTTP provider does with the upstream client (send, map statuses and transport
//! failures, read bodies) and the plumbing that turns an SSE response into a stream of
//! [`ChatEvent`]s.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use http::HeaderMap;

use crate::client::{RequestBuilder, Response, TransportError, TransportErrorKind};
use crate::provider::{EventStream, ProviderError, ProviderErrorKind};
use crate::types::ChatEvent;
use crate::wire::anthropic::EventDecoder;
use crate::wire::openai::ChunkDecoder;
use crate::wire::sse::{SseEvent, SseParser};

/// Maps a transport failure to a [`ProviderError`] (connect and timeout failures are retryable).
pub fn transport_error(err: &TransportError, provider: &str) -> ProviderError {
    let kind = match err.kind {
        TransportErrorKind::Timeout => ProviderErrorKind::Timeout,
        TransportErrorKind::Body => ProviderErrorKind::StreamCut,
        TransportErrorKind::Build => ProviderErrorKind::Unsupported,
        TransportErrorKind::Connect | TransportErrorKind::Request => ProviderErrorKind::Connect,
    };
    ProviderError::new(kind, provider, err.message.clone())
}

/// Sends a prepared request; error statuses come back as `Err` with the upstream's error body
/// parsed by `parse_error`.
pub async fn send(
    request: RequestBuilder<'_>,
    provider: &str,
    parse_error: impl FnOnce(u16, &[u8], &str) -> ProviderError,
) -> Result<Response, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, provider))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after_secs = retry_after_secs(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    let mut err = parse_error(status.as_u16(), &body, provider);
    err.retry_after_secs = retry_after_secs;
    Err(err)
}

/// A `retry-after` given in seconds (the form OpenAI, Azure and Anthropic send); a date is
/// ignored.
fn retry_after_secs(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a response's `content-type` is JSON (`application/json`, or a `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

/// Reads a whole response body.
pub async fn read_body(response: Response, provider: &str) -> Result<Bytes, ProviderError> {
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
pub fn body_stream(
    response: Response,
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
