//! Another Tandem as the target: the session-aware `POST /v1/tandem/verify`, and the vLLM
//! scoring form on `/v1/completions` for calls without a session.
//!
//! The session form keeps the target's KV cache between rounds. Each request names the session
//! and sends only the tokens after `base_len` (the length of the sequence both sides agree on);
//! the target truncates its session to `base_len`, appends the new tokens, and scores the last
//! `draft_len` of them plus the position after. When the target no longer holds `base_len` tokens
//! for the session (restart, eviction) it answers 409 with code `session_mismatch`, and the client
//! sends the whole sequence again.
//!
//! Request: `{"model", "session_id", "base_len", "tokens", "draft_len", "top_k"}`, or
//! `{"session_id", "close": true}` to end a session.
//! Answer: `{"session_id", "positions": [[[id, logprob], ...], ...], "usage": {...}}`.
//!
//! `POST /v1/tandem/generate` (`{"tokens", "max_tokens", "session_id"}`) streams greedy token ids
//! as SSE (`data: <id>`, then `data: [DONE]`, or an `error` event): the plain stream a speculative
//! client falls back to, read by [`TandemStreamer`]. The server side of both is
//! `speculative::service`.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tandem_cloud_adapters::client::HttpClient;
use tandem_cloud_adapters::http::transport_error;
use tandem_cloud_adapters::{ProviderError, ProviderErrorKind, Usage};

use super::{
    Endpoint, PlainStreamer, TopLogprobs, VerifyRequest, VerifyResponse, decode_error, vllm,
};

/// The error code a target answers when it cannot continue a session from `base_len`.
pub const SESSION_MISMATCH: &str = "session_mismatch";

/// The path of the session-aware verify endpoint.
pub const VERIFY_PATH: &str = "/v1/tandem/verify";

/// The path of the plain token stream.
pub const GENERATE_PATH: &str = "/v1/tandem/generate";

/// A request to `/v1/tandem/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TandemVerifyRequest {
    /// The target model's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The session.
    pub session_id: String,
    /// How many leading tokens of the session's sequence to keep.
    #[serde(default)]
    pub base_len: usize,
    /// The tokens after `base_len`: newly committed ones, then the draft.
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// How many of `tokens` are draft tokens (at the end).
    #[serde(default)]
    pub draft_len: usize,
    /// Alternatives per position (at least 1).
    #[serde(default = "one")]
    pub top_k: u32,
    /// Greedy verification: the target may stop at the first mismatch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub greedy: bool,
    /// End the session instead of verifying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close: bool,
}

fn one() -> u32 {
    1
}

impl From<TandemVerifyResponse> for VerifyResponse {
    /// The round in the decoder's terms; the target's cached tokens count as prompt tokens too,
    /// as an upstream bills them.
    fn from(answer: TandemVerifyResponse) -> Self {
        VerifyResponse {
            positions: answer.positions,
            usage: Usage {
                prompt_tokens: answer.usage.prompt_tokens + answer.usage.cached_tokens,
                completion_tokens: answer.usage.completion_tokens,
                cached_prompt_tokens: answer.usage.cached_tokens,
                ..Usage::default()
            },
        }
    }
}

impl TandemVerifyRequest {
    /// The request that ends `session` and frees its state on the target.
    pub fn close(session: &str) -> Self {
        Self {
            model: String::new(),
            session_id: session.to_owned(),
            base_len: 0,
            tokens: Vec::new(),
            draft_len: 0,
            top_k: 1,
            greedy: false,
            close: true,
        }
    }
}

/// Usage as the target reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TandemVerifyUsage {
    /// Tokens processed as input this round (the new tokens).
    pub prompt_tokens: u64,
    /// The bonus position (1).
    pub completion_tokens: u64,
    /// Tokens served from the session's KV.
    pub cached_tokens: u64,
}

/// The answer of `/v1/tandem/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TandemVerifyResponse {
    /// The session.
    pub session_id: String,
    /// `draft_len + 1` lists of `(id, logprob)`, best first.
    pub positions: Vec<TopLogprobs>,
    /// What the round cost.
    pub usage: TandemVerifyUsage,
}

/// The client side of Tandem's sessions: the full sequence last sent per session, to send only
/// what is new.
#[derive(Debug)]
pub(super) struct Sessions {
    /// The vLLM scoring form, served under `/v1`, for calls without a session.
    stateless: Endpoint,
    sent: Mutex<HashMap<String, Vec<u32>>>,
}

fn is_session_mismatch(err: &ProviderError) -> bool {
    err.status == Some(409)
        && err
            .upstream_body
            .as_ref()
            .and_then(|b| b.pointer("/error/code"))
            .and_then(|c| c.as_str())
            == Some(SESSION_MISMATCH)
}

impl Sessions {
    /// No sessions yet, for the Tandem at `endpoint` (the server root).
    pub(super) fn new(endpoint: &Endpoint) -> Self {
        Self {
            stateless: endpoint.under("v1"),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Scores one round on the Tandem at `endpoint` (the server root): the session form when the
    /// request names a session, else the vLLM scoring form under `/v1`.
    pub(super) async fn verify(
        &self,
        endpoint: &Endpoint,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifyResponse, ProviderError> {
        let Some(session) = req.session else {
            return vllm::verify(&self.stateless, req).await;
        };
        let mut full = Vec::with_capacity(req.prefix.len() + req.draft.len());
        full.extend_from_slice(req.prefix);
        full.extend_from_slice(req.draft);
        let base_len = {
            let sent = self.sent.lock();
            sent.get(session).map_or(0, |prev| {
                prev.iter().zip(&full).take_while(|(a, b)| a == b).count()
            })
        };
        // Never send an empty block: the target needs at least one token to score from.
        let base_len = base_len.min(full.len().saturating_sub(req.draft.len().max(1)));
        let mut body = TandemVerifyRequest {
            model: req.model.to_owned(),
            session_id: session.to_owned(),
            base_len,
            tokens: full[base_len..].to_vec(),
            draft_len: req.draft.len(),
            top_k: req.top_k.max(1),
            greedy: req.greedy,
            close: false,
        };
        let answer = match endpoint.post(VERIFY_PATH, &body).await {
            Err(e) if is_session_mismatch(&e) && base_len > 0 => {
                body.base_len = 0;
                body.tokens = full.clone();
                endpoint.post(VERIFY_PATH, &body).await?
            }
            other => other?,
        };
        let parsed: TandemVerifyResponse = serde_json::from_value(answer)
            .map_err(|e| decode_error(endpoint.name(), format!("tandem verify response: {e}")))?;
        self.sent.lock().insert(session.to_owned(), full);
        let response = VerifyResponse::from(parsed);
        let response = response.check(req.draft.len(), endpoint.name())?;
        response.check_early_exit(req.draft, endpoint.name())?;
        Ok(response)
    }

    /// Forgets `session` and tells the target to free it.
    pub(super) async fn end(&self, endpoint: &Endpoint, session: &str) {
        self.sent.lock().remove(session);
        let body = TandemVerifyRequest::close(session);
        if let Err(e) = endpoint.post(VERIFY_PATH, &body).await {
            tracing::debug!(error = %e, "closing a verify session failed");
        }
    }
}

/// A request to `/v1/tandem/generate`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// The context, in token ids.
    pub tokens: Vec<u32>,
    /// Most tokens to stream.
    pub max_tokens: usize,
    /// Continue this verify session's KV instead of starting fresh (the fallback from
    /// speculation: the same passes plain decoding would have run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// The client of `/v1/tandem/generate`: plain streaming from a Tandem target.
#[derive(Debug, Clone)]
pub struct TandemStreamer {
    endpoint: Endpoint,
}

impl TandemStreamer {
    /// A streamer for the Tandem at `base_url` (the server root).
    pub fn new(name: impl Into<String>, base_url: impl Into<String>, client: HttpClient) -> Self {
        Self::at(Endpoint::new(name, base_url, None, client))
    }

    /// A streamer posting under `endpoint` (the server root).
    pub(super) fn at(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// The same streamer sending `key` as a bearer token.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.endpoint.api_key = key;
        self
    }
}

#[async_trait]
impl PlainStreamer for TandemStreamer {
    async fn stream(
        &self,
        context: &[u32],
        max_tokens: usize,
        session: Option<&str>,
    ) -> Result<BoxStream<'static, Result<u32, ProviderError>>, ProviderError> {
        let name = self.endpoint.name().to_owned();
        let resp = self
            .endpoint
            .request(GENERATE_PATH)
            .json(&GenerateBody {
                tokens: context.to_vec(),
                max_tokens,
                session_id: session.map(str::to_owned),
            })
            .send()
            .await
            .map_err(|e| transport_error(&e, &name))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            return Err(ProviderError::status(status, name, text));
        }
        let mut bytes = resp.bytes_stream();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut buf = Vec::<u8>::new();
            loop {
                let chunk = match bytes.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        let err =
                            ProviderError::new(ProviderErrorKind::StreamCut, &name, e.to_string());
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Err(ProviderError::stream_cut(&name))).await;
                        return;
                    }
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..pos + 2).collect();
                    match parse_frame(&name, &String::from_utf8_lossy(&frame)) {
                        Frame::Token(id) => {
                            if tx.send(Ok(id)).await.is_err() {
                                return;
                            }
                        }
                        Frame::Done => return,
                        Frame::Skip => {}
                        Frame::Fail(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }
}

enum Frame {
    Token(u32),
    Done,
    Skip,
    Fail(ProviderError),
}

/// One SSE frame of `/v1/tandem/generate`: `data: <id>`, `data: [DONE]` or an `error` event.
fn parse_frame(name: &str, frame: &str) -> Frame {
    let is_error = frame.lines().any(|l| l.trim() == "event: error");
    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
        return Frame::Skip;
    };
    let data = data.trim();
    if is_error {
        return Frame::Fail(ProviderError::new(ProviderErrorKind::Status, name, data));
    }
    if data == "[DONE]" {
        return Frame::Done;
    }
    match data.parse() {
        Ok(id) => Frame::Token(id),
        Err(_) => Frame::Fail(ProviderError::new(
            ProviderErrorKind::Decode,
            name,
            format!("bad token frame `{data}`"),
        )),
    }
}
