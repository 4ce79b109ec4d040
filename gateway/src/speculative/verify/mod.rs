//! Verify protocols: remote targets that score draft tokens after a prefix (vLLM, SGLang, Tandem).
//!
//! A [`Verifier`] sends the committed tokens plus a block of draft tokens to a target model and
//! gets back, for each draft position and for the position after the draft (the bonus), the
//! target's most likely tokens with their log probabilities. The speculative decoder turns those
//! into accepted tokens with `tandem_kernels::spec`.
//!
//! [`RemoteVerifier`] is the one client over HTTP: it dispatches on the backend's
//! [`VerifyProtocol`], and each protocol's request body and answer parsing live in its own file.
//!
//! | protocol | endpoint | prefix reuse |
//! |---|---|---|
//! | [`VerifyProtocol::Vllm`] ([`vllm`]) | `POST /v1/completions` with `prompt_logprobs` | vLLM's prefix cache (when enabled for prompt logprobs) |
//! | [`VerifyProtocol::Sglang`] ([`sglang`]) | `POST /generate` with `logprob_start_len` | SGLang's radix cache keeps the prefix |
//! | [`VerifyProtocol::Tandem`] ([`tandem`]) | `POST /v1/tandem/verify` with a session id | the target keeps the session's KV between rounds |
//!
//! Hosted chat APIs (OpenAI, Anthropic) return no prompt log probabilities and are never offered
//! to the speculative path: their backends are configured with [`VerifyProtocol::None`].

pub mod sglang;
pub mod tandem;
pub mod vllm;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tandem_cloud_adapters::client::{HttpClient, RequestBuilder};
use tandem_cloud_adapters::http::transport_error;
use tandem_cloud_adapters::{ProviderError, ProviderErrorKind, Usage};

use crate::error::Error;

/// How a backend can verify draft tokens (the `verify` field of a backend's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyProtocol {
    /// vLLM's OpenAI-compatible `/v1/completions` with `prompt_logprobs`.
    Vllm,
    /// SGLang's native `/generate` with input log probabilities.
    Sglang,
    /// Another Tandem: session-aware `/v1/tandem/verify` (and the vLLM form on `/v1/completions`).
    Tandem,
    /// The backend cannot verify (hosted chat APIs); it is never a speculative target.
    #[default]
    None,
}

impl VerifyProtocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Tandem => "tandem",
            Self::None => "none",
        }
    }

    /// Whether a backend with this protocol may serve as a speculative target.
    pub fn can_verify(self) -> bool {
        self != Self::None
    }
}

impl fmt::Display for VerifyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VerifyProtocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "vllm" => Ok(Self::Vllm),
            "sglang" => Ok(Self::Sglang),
            "tandem" => Ok(Self::Tandem),
            "none" => Ok(Self::None),
            other => Err(Error::invalid(
                format!(
                    "unknown verify protocol `{other}` (expected vllm, sglang, tandem or none)"
                ),
                Some("verify"),
            )),
        }
    }
}

/// One verification round: score `draft` after `prefix`.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The target model's name as the backend knows it.
    pub model: &'a str,
    /// A stable id for the conversation, so a session-aware target can keep its KV cache.
    pub session: Option<&'a str>,
    /// Committed tokens (prompt plus accepted output), in the target's vocabulary.
    pub prefix: &'a [u32],
    /// Draft tokens to check, in the target's vocabulary.
    pub draft: &'a [u32],
    /// How many of the most likely tokens to return per position (at least 1).
    pub top_k: u32,
    /// Greedy verification: a target may stop scoring at the first position whose argmax
    /// differs from the draft (later positions cannot matter).
    pub greedy: bool,
}

/// The target's most likely tokens at one position: `(token id, logprob)`, best first.
pub type TopLogprobs = Vec<(u32, f32)>;

/// The target's answer to one round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifyResponse {
    /// `draft.len() + 1` entries: the distribution predicting each draft token, then the one
    /// after the whole draft (the bonus position). Each is best first and non-empty. For a
    /// greedy request a target may stop early: then the last entry is the first position whose
    /// argmax differs from the draft.
    pub positions: Vec<TopLogprobs>,
    /// What the backend billed for this round (input = prefix + draft, output = the bonus).
    pub usage: Usage,
}

impl VerifyResponse {
    /// The target's argmax at each position.
    pub fn argmax(&self) -> Vec<u32> {
        self.positions
            .iter()
            .filter_map(|p| p.first().map(|(id, _)| *id))
            .collect()
    }

    /// Checks the shape against the request: `draft_len + 1` non-empty positions (fewer when
    /// the target stopped at a greedy mismatch, which [`Self::check_early_exit`] verifies).
    pub fn check(self, draft_len: usize, provider: &str) -> Result<Self, ProviderError> {
        if self.positions.is_empty() || self.positions.len() > draft_len + 1 {
            return Err(decode_error(
                provider,
                format!(
                    "verify response has {} positions, expected {}",
                    self.positions.len(),
                    draft_len + 1
                ),
            ));
        }
        if self.positions.iter().any(Vec::is_empty) {
            return Err(decode_error(
                provider,
                "verify response has a position without log probabilities",
            ));
        }
        Ok(self)
    }

    /// Whether a short answer ends at a real mismatch with `draft` (so stopping was allowed).
    pub fn check_early_exit(&self, draft: &[u32], provider: &str) -> Result<(), ProviderError> {
        let n = self.positions.len();
        if n == draft.len() + 1 {
            return Ok(());
        }
        let argmax = self.argmax();
        let agrees = argmax[..n - 1].iter().zip(draft).all(|(a, d)| a == d);
        if agrees && argmax.get(n - 1) != draft.get(n - 1) {
            Ok(())
        } else {
            Err(decode_error(
                provider,
                format!(
                    "verify response stopped after {n} of {} positions without a mismatch",
                    draft.len() + 1
                ),
            ))
        }
    }
}

/// A target that scores draft tokens.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// The backend's configured name (for errors and metrics).
    fn name(&self) -> &str;
    /// The protocol spoken.
    fn protocol(&self) -> VerifyProtocol;
    /// Scores one block of draft tokens.
    async fn verify(&self, req: &VerifyRequest<'_>) -> Result<VerifyResponse, ProviderError>;
    /// Tells the target a session is over so it can free its state (default: nothing to do).
    async fn end_session(&self, _session: &str) {}
}

/// A target that can also stream plainly (the fallback when speculation does not pay).
#[async_trait]
pub trait PlainStreamer: Send + Sync {
    /// Streams up to `max_tokens` greedy tokens after `context`, in the target's ids,
    /// continuing `session`'s state on the target when it holds one.
    async fn stream(
        &self,
        context: &[u32],
        max_tokens: usize,
        session: Option<&str>,
    ) -> Result<BoxStream<'static, Result<u32, ProviderError>>, ProviderError>;
}

/// The one HTTP client of the verify protocols: the backend's endpoint, and what its protocol
/// needs (Tandem keeps the sequence last sent per session).
#[derive(Debug)]
pub struct RemoteVerifier {
    endpoint: Endpoint,
    protocol: Protocol,
}

/// The protocol spoken, with its state.
#[derive(Debug)]
enum Protocol {
    Vllm,
    Sglang,
    /// Boxed: its sessions and second endpoint outweigh the other variants.
    Tandem(Box<tandem::Sessions>),
}

impl RemoteVerifier {
    /// A verifier for the backend `name` at `base_url` (as configured: vLLM's ends in `/v1`;
    /// SGLang and Tandem post under the server root, so a trailing `/v1` is dropped for them).
    /// Errors for [`VerifyProtocol::None`]: such a backend cannot verify.
    pub fn new(
        protocol: VerifyProtocol,
        name: impl Into<String>,
        base_url: impl Into<String>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> Result<Self, Error> {
        let name = name.into();
        let base_url: String = base_url.into();
        let (endpoint, protocol) = match protocol {
            VerifyProtocol::Vllm => (
                Endpoint::new(name, base_url, api_key, client),
                Protocol::Vllm,
            ),
            VerifyProtocol::Sglang => (
                Endpoint::new(name, server_root(&base_url), api_key, client),
                Protocol::Sglang,
            ),
            VerifyProtocol::Tandem => {
                let endpoint = Endpoint::new(name, server_root(&base_url), api_key, client);
                let sessions = Box::new(tandem::Sessions::new(&endpoint));
                (endpoint, Protocol::Tandem(sessions))
            }
            VerifyProtocol::None => {
                return Err(Error::Internal(format!("target `{name}` cannot verify")));
            }
        };
        Ok(Self { endpoint, protocol })
    }

    /// The plain token stream of the same target, for the protocols that have one (Tandem's
    /// `/v1/tandem/generate`): the fallback when speculation does not pay.
    pub fn plain_streamer(&self) -> Option<tandem::TandemStreamer> {
        match self.protocol {
            Protocol::Tandem(_) => Some(tandem::TandemStreamer::at(self.endpoint.clone())),
            Protocol::Vllm | Protocol::Sglang => None,
        }
    }
}

#[async_trait]
impl Verifier for RemoteVerifier {
    fn name(&self) -> &str {
        self.endpoint.name()
    }

    fn protocol(&self) -> VerifyProtocol {
        match self.protocol {
            Protocol::Vllm => VerifyProtocol::Vllm,
            Protocol::Sglang => VerifyProtocol::Sglang,
            Protocol::Tandem(_) => VerifyProtocol::Tandem,
        }
    }

    async fn verify(&self, req: &VerifyRequest<'_>) -> Result<VerifyResponse, ProviderError> {
        match &self.protocol {
            Protocol::Vllm => vllm::verify(&self.endpoint, req).await,
            Protocol::Sglang => sglang::verify(&self.endpoint, req).await,
            Protocol::Tandem(sessions) => sessions.verify(&self.endpoint, req).await,
        }
    }

    async fn end_session(&self, session: &str) {
        if let Protocol::Tandem(sessions) = &self.protocol {
            sessions.end(&self.endpoint, session).await;
        }
    }
}

/// A server's root from its configured base URL: a trailing `/v1` dropped.
fn server_root(base_url: &str) -> String {
    base_url
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_owned()
}

/// Sorts `(id, logprob)` pairs best first; NaNs last.
pub(crate) fn sort_best_first(top: &mut TopLogprobs) {
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
}

/// A malformed answer from `provider`.
pub(crate) fn decode_error(provider: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Decode, provider, message)
}

/// Where a verifier posts: what every protocol shares (the backend's name for errors, its base
/// URL, key and pooled client). The protocols differ in the body they send and the answer they
/// read, which stay in their own files.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    name: String,
    base_url: String,
    api_key: Option<String>,
    client: HttpClient,
}

impl Endpoint {
    /// The server at `base_url`, named `name` in errors.
    pub(crate) fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> Self {
        Endpoint {
            name: name.into(),
            base_url: base_url.into(),
            api_key,
            client,
        }
    }

    /// The backend's configured name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The same server, its base URL extended by `path`.
    pub(crate) fn under(&self, path: &str) -> Self {
        Endpoint {
            base_url: join_url(&self.base_url, path),
            ..self.clone()
        }
    }

    /// A POST to `{base_url}/{path}`, with the key as a bearer token when there is one.
    pub(crate) fn request(&self, path: &str) -> RequestBuilder<'_> {
        let req = self.client.post_url(&join_url(&self.base_url, path));
        match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// Posts `body` as JSON to `{base_url}/{path}` and returns the JSON answer, mapping failures
    /// to [`ProviderError`]s.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<serde_json::Value, ProviderError> {
        let provider = self.name.as_str();
        let body = serde_json::to_value(body).map_err(|e| decode_error(provider, e.to_string()))?;
        let resp = self
            .request(path)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e, provider))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&e, provider))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            if status >= 400 {
                ProviderError::status(
                    status,
                    provider,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            } else {
                decode_error(provider, format!("verify response is not JSON: {e}"))
            }
        })?;
        if status >= 400 {
            let message = value
                .pointer("/error/message")
                .or_else(|| value.get("message"))
                .or_else(|| value.get("error"))
                .and_then(|m| m.as_str())
                .unwrap_or("verify request failed")
                .to_owned();
            let mut err = ProviderError::status(status, provider, message);
            err.upstream_body = Some(value);
            return Err(err);
        }
        Ok(value)
    }
}

/// Joins a base URL and a path without doubling the slash.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_parses_and_prints() {
        for p in [
            VerifyProtocol::Vllm,
            VerifyProtocol::Sglang,
            VerifyProtocol::Tandem,
            VerifyProtocol::None,
        ] {
            assert_eq!(p.as_str().parse::<VerifyProtocol>().unwrap(), p);
        }
        assert!("openai".parse::<VerifyProtocol>().is_err());
        assert!(!VerifyProtocol::None.can_verify());
        assert!(VerifyProtocol::Vllm.can_verify());
    }

    #[test]
    fn response_shape_is_checked() {
        let ok = VerifyResponse {
            positions: vec![vec![(1, -0.1)], vec![(2, -0.2)]],
            usage: Usage::default(),
        };
        assert_eq!(ok.clone().check(1, "t").unwrap().argmax(), vec![1, 2]);
        assert!(ok.clone().check(0, "t").is_err());
        // A greedy early exit: position 1 disagrees with the draft's second token.
        let short = ok.clone().check(3, "t").unwrap();
        assert!(short.check_early_exit(&[1, 5, 6], "t").is_ok());
        assert!(short.check_early_exit(&[1, 2, 6], "t").is_err());
        let hole = VerifyResponse {
            positions: vec![vec![], vec![(2, -0.2)]],
            usage: Usage::default(),
        };
        assert!(hole.check(1, "t").is_err());
    }

    #[test]
    fn one_verifier_per_protocol_and_a_plain_stream_for_tandem() {
        let client =
            HttpClient::new(&tandem_cloud_adapters::client::HttpConfig::default()).unwrap();
        let at = |p| RemoteVerifier::new(p, "t", "http://h:1/v1", None, client.clone());
        for p in [
            VerifyProtocol::Vllm,
            VerifyProtocol::Sglang,
            VerifyProtocol::Tandem,
        ] {
            let v = at(p).unwrap();
            assert_eq!(v.protocol(), p);
            assert_eq!(v.plain_streamer().is_some(), p == VerifyProtocol::Tandem);
        }
        assert_eq!(
            at(VerifyProtocol::Vllm).unwrap().endpoint.base_url,
            "http://h:1/v1"
        );
        assert_eq!(
            at(VerifyProtocol::Sglang).unwrap().endpoint.base_url,
            "http://h:1"
        );
        assert!(at(VerifyProtocol::None).is_err());
    }

    #[test]
    fn server_root_drops_v1() {
        assert_eq!(server_root("http://h:1/v1/"), "http://h:1");
        assert_eq!(server_root("http://h:1"), "http://h:1");
    }

    #[test]
    fn urls_join_cleanly() {
        assert_eq!(join_url("http://h:1/", "/v1/x"), "http://h:1/v1/x");
        assert_eq!(
            join_url("http://h:1/v1", "completions"),
            "http://h:1/v1/completions"
        );
    }
}
