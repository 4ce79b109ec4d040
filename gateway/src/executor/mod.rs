//! Executors: what runs a normalized chat request on one backend and streams [`ChatEvent`]s back.
//! The local model and cloud providers sit behind the one [`Executor`] trait, so cascade and
//! speculative execution slot in beside them.

pub mod cascade;
pub mod cloud;
pub mod completion;
pub mod embeddings;
pub mod engine;
pub mod infill;
pub mod local;
pub mod local_completion;
pub mod redact;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::{
    Api, ByteStream, ChatEvent, ChatRequest, ChatResponse, ContentPart, EventStream, ProviderError,
    ResponseBuilder, WireFormat,
};

use crate::config::{BackendKind, Price};
use crate::error::{Error, UpstreamError};

pub use completion::{CompletionCall, CompletionOutput};

/// Runs chat requests on one backend.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The backend's config name.
    fn backend(&self) -> &str;

    /// What kind of backend it is.
    fn kind(&self) -> BackendKind;

    /// Its prices, for cost accounting.
    fn price(&self) -> Price;

    /// Starts the request and streams its events. Errors before the first event come back as
    /// `Err` (and may be retried on another backend); later ones as a final [`ChatEvent::Error`].
    /// Dropping the stream cancels the work.
    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error>;

    /// Runs the request to completion.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Error> {
        let mut stream = self.chat_stream(request).await?;
        let mut builder = ResponseBuilder::new();
        while let Some(event) = stream.next().await {
            builder.push(event);
        }
        builder
            .finish()
            .map_err(|e| upstream_error(self.backend(), e))
    }

    /// Runs the request to completion and answers in the form an OpenAI client receives it. A
    /// backend speaking OpenAI's format upstream passes its body on as it came; the others encode
    /// their normalized answer.
    async fn chat_completion(&self, request: ChatRequest) -> Result<ChatCompletion, Error> {
        self.chat(request)
            .await
            .map(|answer| ChatCompletion::encode(&answer))
    }

    /// Runs a legacy `/v1/completions` request. The local model answers itself; a backend
    /// speaking OpenAI's API upstream is sent the client's body (model mapped); the others answer
    /// [`Error::Unsupported`], so dispatch moves on to the route's next backend.
    async fn completion(&self, call: &CompletionCall) -> Result<CompletionOutput, Error> {
        let _ = call;
        Err(no_legacy_completions(self.backend()))
    }

    /// Sends the client's `body` (model mapped) to the upstream's `api` and hands back its
    /// answer as it came, streamed when `stream`. Backends without that API answer
    /// [`Error::Unsupported`], so dispatch moves on to the route's next backend.
    async fn forward(
        &self,
        api: Api,
        body: &Map<String, Value>,
        stream: bool,
    ) -> Result<Forwarded, Error> {
        let _ = (body, stream);
        Err(no_api(self.backend(), api))
    }

    /// Reads or deletes (`method`) what this backend's upstream `api` keeps at `path` under
    /// that API's URL (a response OpenAI stored: `/resp_1`, `/resp_1/input_items`), for model
    /// `model` (the client's id): the answer as it came. Backends without that API answer
    /// [`Error::Unsupported`].
    async fn fetch(
        &self,
        api: Api,
        model: &str,
        method: http::Method,
        path: &str,
    ) -> Result<Bytes, Error> {
        let _ = (model, method, path);
        Err(no_api(self.backend(), api))
    }

    /// Whether this backend takes a request for `api` in the client's own body, as it came
    /// (OpenAI's own Responses API), rather than translated to chat.
    fn passes_through(&self, api: Api) -> bool {
        let _ = api;
        false
    }

    /// Counts the input tokens of `request` (whose client body is `body`) as this backend would
    /// bill them: by default an estimate, marked as such.
    async fn count_tokens(
        &self,
        request: &ChatRequest,
        body: &Map<String, Value>,
    ) -> Result<TokenCount, Error> {
        let _ = body;
        Ok(estimate_tokens(request))
    }
}

/// The error of a backend that does not serve `api`.
pub fn no_api(backend: &str, api: Api) -> Error {
    Error::Unsupported {
        message: format!("backend `{backend}` does not serve {}", api.path()),
        param: "model".into(),
    }
}

/// An upstream's answer on another of its APIs, as it came.
pub enum Forwarded {
    /// A whole JSON body.
    Whole(Bytes),
    /// An SSE body, chunk by chunk.
    Stream(ByteStream),
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Whole(_) => "Whole",
            Self::Stream(_) => "Stream",
        })
    }
}

/// How a token count was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountSource {
    /// The local model's own tokenizer and chat template.
    Exact,
    /// The upstream counted (Anthropic's `count_tokens`).
    Upstream,
    /// Estimated from the text's length: the backend has no way to count.
    Estimate,
}

impl CountSource {
    /// The word for it in `x-tandem-token-count`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Upstream => "upstream",
            Self::Estimate => "estimate",
        }
    }
}

/// The input tokens of a request on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// Input tokens.
    pub input_tokens: u64,
    /// How they were counted.
    pub source: CountSource,
}

/// Characters per token of the estimate: the usual ratio of English text under BPE tokenizers.
const CHARS_PER_TOKEN: usize = 4;

/// An estimate of `request`'s input tokens from its length, for backends that cannot count:
/// every text, tool call, result and tool definition at [`CHARS_PER_TOKEN`] characters a token,
/// plus a few tokens of framing per message.
pub fn estimate_tokens(request: &ChatRequest) -> TokenCount {
    let mut chars = 0usize;
    for message in &request.messages {
        chars += 4 * CHARS_PER_TOKEN;
        for part in &message.content {
            chars += match part {
                ContentPart::Text { text } => text.chars().count(),
                ContentPart::ToolResult { content, .. } => content.chars().count(),
                ContentPart::ToolUse { name, input, .. } => name.len() + input.to_string().len(),
                // Images are billed by size, which only the provider knows: a typical tile.
                ContentPart::Image { .. } => 85 * CHARS_PER_TOKEN,
            };
        }
    }
    for tool in &request.tools {
        chars += tool.name.len()
            + tool.description.as_deref().map_or(0, str::len)
            + tool.parameters.to_string().len();
    }
    TokenCount {
        input_tokens: chars.div_ceil(CHARS_PER_TOKEN) as u64,
        source: CountSource::Estimate,
    }
}

/// The error of a backend that does not serve `/v1/completions`.
pub fn no_legacy_completions(backend: &str) -> Error {
    Error::Unsupported {
        message: format!("backend `{backend}` does not serve /v1/completions"),
        param: "model".into(),
    }
}

/// Whether `request` asks for structured output (`response_format` other than plain text), which
/// a backend without constrained decoding cannot guarantee.
pub fn wants_structured_output(request: &ChatRequest) -> bool {
    request
        .response_format
        .as_ref()
        .is_some_and(|f| f.get("type").and_then(serde_json::Value::as_str) != Some("text"))
}

/// Refuses what decoding on the local model cannot do, for the backends that decode with it
/// (local and speculative): several choices, tool calls, structured output it cannot guarantee,
/// and fields it has no place for.
pub fn refuse_beyond_local_decoding(backend: &str, request: &ChatRequest) -> Result<(), Error> {
    refuse_several_choices(backend, request)?;
    // The local model reads text only: an image it would drop is refused by its position, and
    // a route with a backend that reads images moves on to it.
    if let Some(param) = request.first_image_param() {
        return Err(cannot_honour(
            backend,
            &param,
            &format!("reads text only and cannot see the image at `{param}`"),
        ));
    }
    let wants_tools = !request.tools.is_empty()
        && !matches!(
            request.tool_choice,
            Some(tandem_cloud_adapters::ToolChoice::None)
        );
    if wants_tools {
        return Err(cannot_honour(backend, "tools", "cannot call tools"));
    }
    if wants_structured_output(request) {
        return Err(cannot_honour(
            backend,
            "response_format",
            "has no constrained decoding to guarantee structured output",
        ));
    }
    refuse_dropped_fields(backend, request, None)
}

/// Fields a client may send that change nothing in the answer, so a backend that has no place
/// for them loses nothing.
const INERT_FIELDS: &[&str] = &[
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// Refuses a request with fields `backend` would otherwise drop without a word: those the
/// client sent beyond what the gateway models, which reach an upstream only in the client's own
/// wire format (`upstream`; `None` for a backend with no upstream). Inert fields pass, and so do
/// fields left at a neutral value (null, false, zero, empty).
pub fn refuse_dropped_fields(
    backend: &str,
    request: &ChatRequest,
    upstream: Option<WireFormat>,
) -> Result<(), Error> {
    // In the client's own format they go upstream as they came.
    if upstream.is_some_and(|format| request.ingress == Some(format)) {
        return Ok(());
    }
    let dropped = request
        .extra
        .iter()
        .find(|(key, value)| !INERT_FIELDS.contains(&key.as_str()) && !is_neutral(value));
    match dropped {
        Some((key, _)) => Err(cannot_honour(
            backend,
            key,
            &format!("has no place for `{key}`"),
        )),
        None => Ok(()),
    }
}

/// A value that asks for nothing: null, false, zero, or empty.
fn is_neutral(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Refuses `n > 1` on a backend, or a path through it, that makes one choice.
pub fn refuse_several_choices(backend: &str, request: &ChatRequest) -> Result<(), Error> {
    if request.n > 1 {
        return Err(cannot_honour(
            backend,
            "n",
            "makes one choice per request here; several come only in a whole answer from an \
             OpenAI-format upstream",
        ));
    }
    Ok(())
}

/// The error of a backend that cannot honour `param` of a request.
pub fn cannot_honour(backend: &str, param: &str, why: &str) -> Error {
    Error::Unsupported {
        message: format!("backend `{backend}` {why}; route this model to a backend that can"),
        param: param.into(),
    }
}

/// A provider's error as the gateway's edge error, with the upstream's own type, code and
/// blamed parameter where its error body gave them.
pub fn upstream_error(backend: &str, e: ProviderError) -> Error {
    let field = |name: &str| {
        let value = e.upstream_body.as_ref()?.get("error")?.get(name)?;
        match value {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            // Some OpenAI-compatible servers send numeric codes.
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    // An upstream that refuses the gateway's own credentials says nothing about the client's:
    // its `invalid_api_key` would read as the gateway refusing the client.
    let own_credentials = matches!(e.status, Some(401 | 403));
    let upstream_code = field("code").filter(|_| !own_credentials);
    let (upstream_type, upstream_param) = (field("type"), field("param"));
    Error::Upstream(Box::new(UpstreamError {
        backend: backend.to_owned(),
        status: e.status,
        message: e.message,
        kind: e.kind.as_str(),
        retryable: e.retryable,
        upstream_type,
        upstream_code,
        upstream_param,
        retry_after_secs: e.retry_after_secs,
    }))
}

/// The edge error for a mid-stream [`ChatEvent::Error`].
pub fn event_error(backend: &str, event: &ChatEvent) -> Option<Error> {
    match event {
        ChatEvent::Error(e) => Some(upstream_error(backend, e.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tandem_cloud_adapters::{WireFormat, anthropic, openai};

    use super::*;

    fn openai_request(extra: &str) -> ChatRequest {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        openai::decode_chat_request(body.as_bytes()).unwrap()
    }

    #[test]
    fn fields_reach_an_upstream_in_their_own_format_or_are_refused() {
        let penalty = openai_request(r#","presence_penalty":0.5"#);
        assert!(refuse_dropped_fields("b", &penalty, Some(WireFormat::OpenAi)).is_ok());
        for upstream in [None, Some(WireFormat::Anthropic)] {
            let err = refuse_dropped_fields("b", &penalty, upstream).unwrap_err();
            assert!(
                matches!(&err, Error::Unsupported { param, .. } if param == "presence_penalty"),
                "{err:?}"
            );
        }
        let harmless = openai_request(
            r#","presence_penalty":0,"logit_bias":{},"modalities":[],"store":true,"metadata":{"a":"b"}"#,
        );
        assert!(refuse_dropped_fields("b", &harmless, None).is_ok());

        let thinking = anthropic::decode_messages_request(
            br#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}],
                "thinking":{"type":"enabled","budget_tokens":1024}}"#,
        )
        .unwrap();
        assert!(refuse_dropped_fields("b", &thinking, Some(WireFormat::Anthropic)).is_ok());
        assert!(refuse_dropped_fields("b", &thinking, Some(WireFormat::OpenAi)).is_err());
    }

    #[test]
    fn local_decoding_refuses_several_choices() {
        let several = openai_request(r#","n":3"#);
        let err = refuse_beyond_local_decoding("local", &several).unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { param, .. } if param == "n"),
            "{err:?}"
        );
        assert!(refuse_beyond_local_decoding("local", &openai_request("")).is_ok());
    }
}
