//! A mock OpenAI/Anthropic upstream on loopback that replays recorded wire fixtures, for
//! end-to-end tests and the overhead benchmark.
//!
//! Routes: `POST .../chat/completions`, `POST .../completions`, `POST .../messages`,
//! `GET .../models`, `POST .../responses` (OpenAI's Responses API, whole or streamed; `cut`
//! stops after the first text delta; `GET`/`DELETE .../responses/{id}` and
//! `GET .../responses/{id}/input_items` answer as OpenAI's stored responses do),
//! `POST .../embeddings` (OpenAI's shape: one vector per input, float or base64, `dimensions`
//! long or 8), `POST .../messages/count_tokens` (Anthropic's
//! `{"input_tokens"}`, a quarter of the body's length). The request's `model` picks the behaviour:
//! `tool` (a tool-call answer), `cut` (a stream cut mid-way), `slow` (a pause before every
//! frame), `stall` (frames stop coming after the first ones), `hang` (headers, then no frame at
//! all), `whole` (a stream request answered with the whole JSON answer, as some OpenAI-compatible
//! servers do), `delay-<ms>` (a pause before the
//! answer), `error` (500), `ratelimit` (429), `overloaded` (529), `context-length` (OpenAI's
//! 400 for a prompt over the context window), `status-<code>`, `flaky` (every other request
//! fails with 503), `echo` (the answer is the last user message's text, streamed 5 bytes a
//! chunk, so a test can see what the upstream received come back); anything else gets the plain
//! text answer. 429 and 529 carry `retry-after`,
//! as the real APIs send it, unless the model also names `bare`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// A recorded response: status, content type and the body split into the frames it is sent in.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body; SSE bodies are split after every event so each goes out as its own write.
    pub frames: Arc<[Bytes]>,
}

impl Fixture {
    /// A JSON body.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Fixture {
            status,
            content_type: "application/json",
            frames: Arc::from(vec![body.into()]),
        }
    }

    /// An SSE body, split into one frame per event.
    pub fn sse(body: impl Into<Bytes>) -> Self {
        let body: Bytes = body.into();
        let mut frames = Vec::new();
        let mut start = 0;
        let bytes = body.as_ref();
        let mut i = 0;
        while i + 1 < bytes.len() {
            if bytes[i] == b'\n' && bytes[i + 1] == b'\n' {
                frames.push(body.slice(start..i + 2));
                start = i + 2;
                i += 2;
            } else {
                i += 1;
            }
        }
        if start < bytes.len() {
            frames.push(body.slice(start..));
        }
        Fixture {
            status: 200,
            content_type: "text/event-stream",
            frames: Arc::from(frames),
        }
    }

    /// The whole body.
    pub fn body(&self) -> Bytes {
        let mut out = Vec::new();
        for f in self.frames.iter() {
            out.extend_from_slice(f);
        }
        Bytes::from(out)
    }
}

/// The text of the mock's fill-in-the-middle answer: two lines of a function body, then a line
/// back at the outer level (which the editor's `n_indent` rule cuts off).
pub const FIM_TEXT: &str = "    total = a + b\n    return total\n\nprint(add(1, 2))\n";

/// The answers the mock gives, one per route and behaviour.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// OpenAI chat, text, JSON.
    pub openai_text: Fixture,
    /// OpenAI chat, text, SSE (with the usage chunk).
    pub openai_text_stream: Fixture,
    /// OpenAI chat, tool call, JSON.
    pub openai_tool: Fixture,
    /// OpenAI chat, tool call, SSE.
    pub openai_tool_stream: Fixture,
    /// OpenAI chat, SSE cut mid-frame.
    pub openai_cut_stream: Fixture,
    /// OpenAI 429 body.
    pub openai_rate_limit: Fixture,
    /// OpenAI 500 body.
    pub openai_server_error: Fixture,
    /// Legacy completion, JSON.
    pub completion_text: Fixture,
    /// Legacy completion, SSE.
    pub completion_stream: Fixture,
    /// Legacy completion with `suffix` (fill in the middle), JSON: [`FIM_TEXT`].
    pub completion_fim: Fixture,
    /// `/v1/models`.
    pub models: Fixture,
    /// OpenAI Responses API, text, JSON.
    pub openai_responses: Fixture,
    /// OpenAI Responses API, text, SSE (typed events with sequence numbers).
    pub openai_responses_stream: Fixture,
    /// Anthropic message, text, JSON.
    pub anthropic_text: Fixture,
    /// Anthropic message, text, SSE.
    pub anthropic_text_stream: Fixture,
    /// Anthropic message, tool use, JSON.
    pub anthropic_tool: Fixture,
    /// Anthropic message, tool use, SSE.
    pub anthropic_tool_stream: Fixture,
    /// Anthropic SSE cut before `message_stop`.
    pub anthropic_cut_stream: Fixture,
    /// Anthropic 529 body.
    pub anthropic_overloaded: Fixture,
}

macro_rules! fixture_bytes {
    ($path:literal) => {
        Bytes::from_static(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            // Recorded beside the wire formats they exercise.
            "/../cloud-adapters/tests/fixtures/",
            $path
        )))
    };
}

impl Fixtures {
    /// The recorded fixtures of the wire formats (`cloud-adapters/tests/fixtures/`).
    pub fn builtin() -> Self {
        Fixtures {
            openai_text: Fixture::json(200, fixture_bytes!("openai/chat_text.json")),
            openai_text_stream: Fixture::sse(fixture_bytes!("openai/chat_text_stream.sse")),
            openai_tool: Fixture::json(200, fixture_bytes!("openai/chat_tool.json")),
            openai_tool_stream: Fixture::sse(fixture_bytes!("openai/chat_tool_stream.sse")),
            openai_cut_stream: Fixture::sse(fixture_bytes!("openai/chat_cut_stream.sse")),
            openai_rate_limit: Fixture::json(429, fixture_bytes!("openai/error_rate_limit.json")),
            openai_server_error: Fixture::json(500, fixture_bytes!("openai/error_server.json")),
            completion_text: Fixture::json(200, fixture_bytes!("openai/completion_text.json")),
            completion_fim: Fixture::json(
                200,
                serde_json::json!({
                    "id": "cmpl-fim-mock",
                    "object": "text_completion",
                    "created": 1_750_171_094,
                    "model": "codestral-2501",
                    "choices": [{"text": FIM_TEXT, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 21, "completion_tokens": 17, "total_tokens": 38},
                })
                .to_string(),
            ),
            completion_stream: Fixture::sse(fixture_bytes!("openai/completion_stream.sse")),
            models: Fixture::json(200, fixture_bytes!("openai/models.json")),
            openai_responses: Fixture::json(200, fixture_bytes!("openai/responses_text.json")),
            openai_responses_stream: Fixture::sse(fixture_bytes!(
                "openai/responses_text_stream.sse"
            )),
            anthropic_text: Fixture::json(200, fixture_bytes!("anthropic/messages_text.json")),
            anthropic_text_stream: Fixture::sse(fixture_bytes!(
                "anthropic/messages_text_stream.sse"
            )),
            anthropic_tool: Fixture::json(200, fixture_bytes!("anthropic/messages_tool.json")),
            anthropic_tool_stream: Fixture::sse(fixture_bytes!(
                "anthropic/messages_tool_stream.sse"
            )),
            anthropic_cut_stream: Fixture::sse(fixture_bytes!("anthropic/messages_cut_stream.sse")),
            anthropic_overloaded: Fixture::json(
                529,
                fixture_bytes!("anthropic/error_overloaded.json"),
            ),
        }
    }
}

impl Default for Fixtures {
    fn default() -> Self {
        Self::builtin()
    }
}

/// Settings of the mock.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Keep every request (method, path, headers, body) for inspection. Off for load tests.
    pub record: bool,
    /// The pause before each frame for `slow` models.
    pub slow_delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            record: true,
            slow_delay: Duration::from_millis(20),
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    completed_bodies: AtomicU64,
    dropped_bodies: AtomicU64,
    flaky: AtomicU64,
}

struct State {
    fixtures: Fixtures,
    config: MockConfig,
    counters: Counters,
    recorded: Mutex<Vec<RecordedRequest>>,
}

/// The running mock; dropping it stops accepting connections.
pub struct MockHandle {
    addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockHandle {
    /// Where the mock listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}/v1`, the base URL to configure a provider with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests received so far (empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorded.lock().clone()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> u64 {
        self.state.counters.requests.load(Ordering::Relaxed)
    }

    /// How many TCP connections were accepted.
    pub fn connection_count(&self) -> u64 {
        self.state.counters.connections.load(Ordering::Relaxed)
    }

    /// How many response bodies were sent to the end.
    pub fn completed_count(&self) -> u64 {
        self.state.counters.completed_bodies.load(Ordering::Relaxed)
    }

    /// How many response bodies were abandoned before their end (the client went away).
    pub fn disconnect_count(&self) -> u64 {
        self.state.counters.dropped_bodies.load(Ordering::Relaxed)
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.accept.abort();
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The mock upstream server.
#[derive(Debug)]
pub struct MockUpstream;

impl MockUpstream {
    /// Starts the mock on `127.0.0.1:0` with default settings.
    pub async fn start(fixtures: Fixtures) -> std::io::Result<(SocketAddr, MockHandle)> {
        Self::start_with(fixtures, MockConfig::default()).await
    }

    /// Starts the mock on `127.0.0.1:0`.
    pub async fn start_with(
        fixtures: Fixtures,
        config: MockConfig,
    ) -> std::io::Result<(SocketAddr, MockHandle)> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            fixtures,
            config,
            counters: Counters::default(),
            recorded: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accept_state
                    .counters
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((
            addr,
            MockHandle {
                addr,
                state,
                accept,
            },
        ))
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stream: bool,
    /// A legacy completion's `suffix`: fill in the middle.
    #[serde(default)]
    suffix: Option<serde_json::Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Messages,
    Models,
    Embeddings,
    CountTokens,
    Responses,
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if state.config.record {
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        state.recorded.lock().push(RecordedRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string()),
            headers,
            body: body.clone(),
        });
    }
    let path = parts.uri.path();
    if let Some((_, rest)) = path.split_once("/responses/") {
        return Ok(stored_response(&state, &parts.method, rest));
    }
    let route = if path.ends_with("/chat/completions") {
        Route::Chat
    } else if path.ends_with("/completions") {
        Route::Completions
    } else if path.ends_with("/messages") {
        Route::Messages
    } else if path.ends_with("/models") {
        Route::Models
    } else if path.ends_with("/responses") {
        Route::Responses
    } else if path.ends_with("/embeddings") {
        Route::Embeddings
    } else if path.ends_with("/count_tokens") {
        Route::CountTokens
    } else {
        return Ok(plain(StatusCode::NOT_FOUND, Bytes::from_static(br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#)));
    };
    let expected = if route == Route::Models {
        Method::GET
    } else {
        Method::POST
    };
    if parts.method != expected {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()));
    }
    if route == Route::Models {
        return Ok(respond(&state, &state.fixtures.models, Behaviour::Plain));
    }
    let probe: Probe<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(_) => {
            return Ok(plain(StatusCode::BAD_REQUEST, Bytes::from_static(br#"{"error":{"message":"invalid JSON body","type":"invalid_request_error","param":null,"code":null}}"#)));
        }
    };
    let model = probe.model.as_deref().unwrap_or("");
    let fx = &state.fixtures;
    let anthropic = matches!(route, Route::Messages | Route::CountTokens);

    if let Some(ms) = number_after(model, "delay-") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let error_fixture = |status: u16| -> Fixture {
        if anthropic {
            if status == 529 {
                return fx.anthropic_overloaded.clone();
            }
            let kind = tandem_cloud_adapters::anthropic::error_type_for_status(status);
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{kind}","message":"mock status {status}"}}}}"#
            );
            return Fixture::json(status, body);
        }
        match status {
            429 => fx.openai_rate_limit.clone(),
            500 => fx.openai_server_error.clone(),
            _ => Fixture::json(
                status,
                format!(
                    r#"{{"error":{{"message":"mock status {status}","type":"invalid_request_error","param":null,"code":null}}}}"#
                ),
            ),
        }
    };
    let retry_after = !model.contains("bare");
    if let Some(code) = number_after(model, "status-") {
        let status = u16::try_from(code).unwrap_or(500);
        return Ok(respond_with(
            &state,
            &error_fixture(status),
            Behaviour::Plain,
            retry_after,
        ));
    }
    if model.contains("context-length") && !anthropic {
        let body = r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        return Ok(respond(&state, &Fixture::json(400, body), Behaviour::Plain));
    }
    if model.contains("error") {
        return Ok(respond(&state, &error_fixture(500), Behaviour::Plain));
    }
    if model.contains("ratelimit") {
        return Ok(respond_with(
            &state,
            &error_fixture(429),
            Behaviour::Plain,
            retry_after,
        ));
    }
    if model.contains("overloaded") {
        return Ok(respond(&state, &error_fixture(529), Behaviour::Plain));
    }
    if model.contains("flaky")
        && state
            .counters
            .flaky
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(2)
    {
        return Ok(respond(&state, &error_fixture(503), Behaviour::Plain));
    }
    match route {
        Route::Embeddings => return Ok(respond(&state, &embeddings(&body), Behaviour::Plain)),
        Route::CountTokens => {
            let answer = format!(r#"{{"input_tokens":{}}}"#, body.len().div_ceil(4));
            return Ok(respond(
                &state,
                &Fixture::json(200, answer),
                Behaviour::Plain,
            ));
        }
        _ => {}
    }
    if model.contains("echo") && route != Route::Completions {
        let text = last_user_text(&body);
        return Ok(respond(
            &state,
            &echo(model, &text, anthropic, probe.stream),
            Behaviour::Plain,
        ));
    }
    let behaviour = if model.contains("slow") {
        Behaviour::Slow(state.config.slow_delay)
    } else if model.contains("hang") {
        Behaviour::Hang
    } else if model.contains("stall") {
        Behaviour::Stall
    } else if model.contains("cut") && !probe.stream {
        Behaviour::CutBody
    } else {
        Behaviour::Plain
    };
    let tool = model.contains("tool");
    let cut = model.contains("cut");
    // `whole`: the stream request gets the whole answer's JSON.
    let stream = probe.stream && !model.contains("whole");
    let fixture = match (route, stream) {
        (Route::Chat, false) if tool => &fx.openai_tool,
        (Route::Chat, false) => &fx.openai_text,
        (Route::Chat, true) if cut => &fx.openai_cut_stream,
        (Route::Chat, true) if tool => &fx.openai_tool_stream,
        (Route::Chat, true) => &fx.openai_text_stream,
        (Route::Completions, false) if probe.suffix.is_some() => &fx.completion_fim,
        (Route::Completions, false) => &fx.completion_text,
        (Route::Completions, true) => &fx.completion_stream,
        (Route::Messages, false) if tool => &fx.anthropic_tool,
        (Route::Messages, false) => &fx.anthropic_text,
        (Route::Messages, true) if cut => &fx.anthropic_cut_stream,
        (Route::Messages, true) if tool => &fx.anthropic_tool_stream,
        (Route::Messages, true) => &fx.anthropic_text_stream,
        (Route::Responses, false) => &fx.openai_responses,
        (Route::Responses, true) if cut => {
            // The head of the stream, through the first text delta, then the end.
            let head = Fixture {
                frames: fx.openai_responses_stream.frames[..5].into(),
                ..fx.openai_responses_stream.clone()
            };
            return Ok(respond(&state, &head, behaviour));
        }
        (Route::Responses, true) => &fx.openai_responses_stream,
        (Route::Models | Route::Embeddings | Route::CountTokens, _) => &fx.models,
    };
    Ok(respond(&state, fixture, behaviour))
}

/// OpenAI's embeddings answer for a request body: input `i` gets a vector of `dimensions`
/// (default 8) values `i + 1, 1/2, 1/3, ...`, as floats or base64 as asked.
fn embeddings(body: &[u8]) -> Fixture {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let inputs = match &request["input"] {
        serde_json::Value::Array(items)
            if items.first().is_some_and(serde_json::Value::is_number) =>
        {
            1
        }
        serde_json::Value::Array(items) => items.len(),
        _ => 1,
    };
    let dims = request["dimensions"].as_u64().unwrap_or(8) as usize;
    let base64 = request["encoding_format"] == "base64";
    let data: Vec<serde_json::Value> = (0..inputs)
        .map(|i| {
            let v: Vec<f32> = (0..dims)
                .map(|d| {
                    if d == 0 {
                        (i + 1) as f32
                    } else {
                        1.0 / (d + 1) as f32
                    }
                })
                .collect();
            let embedding = if base64 {
                serde_json::Value::String(tandem_cloud_adapters::openai::base64_f32(&v))
            } else {
                serde_json::json!(v)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = 3 * inputs;
    let answer = serde_json::json!({"object": "list", "data": data,
        "model": request["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    Fixture::json(200, answer.to_string())
}

/// The text of the last user message of an OpenAI or Anthropic request body (its text parts
/// joined).
fn last_user_text(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let Some(message) = v["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &message["content"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// An answer that repeats `text`, in the route's format, whole or as a stream of 5-byte deltas
/// (cut on character boundaries).
fn echo(model: &str, text: &str, anthropic: bool, stream: bool) -> Fixture {
    use serde_json::json;
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 5).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    let output_tokens = pieces.len().max(1);
    let frame = |event: Option<&str>, data: serde_json::Value| match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    match (anthropic, stream) {
        (false, false) => Fixture::json(
            200,
            json!({
                "id": "chatcmpl-echo", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": output_tokens, "total_tokens": 10 + output_tokens},
            })
            .to_string(),
        ),
        (false, true) => {
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                frame(None, json!({
                    "id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }))
            };
            let mut body = chunk(json!({"role": "assistant", "content": ""}), None);
            for p in &pieces {
                body.push_str(&chunk(json!({"content": p}), None));
            }
            body.push_str(&chunk(json!({}), Some("stop")));
            body.push_str(&frame(None, json!({
                "id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": output_tokens, "total_tokens": 10 + output_tokens},
            })));
            body.push_str("data: [DONE]\n\n");
            Fixture::sse(body)
        }
        (true, false) => Fixture::json(
            200,
            json!({
                "id": "msg_echo", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": output_tokens},
            })
            .to_string(),
        ),
        (true, true) => {
            let mut body = frame(Some("message_start"), json!({"type": "message_start", "message": {
                "id": "msg_echo", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1},
            }}));
            body.push_str(&frame(Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for p in &pieces {
                body.push_str(&frame(Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
            }
            body.push_str(&frame(Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})));
            body.push_str(&frame(Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
            body.push_str(&frame(Some("message_stop"), json!({"type": "message_stop"})));
            Fixture::sse(body)
        }
    }
}

/// The number right after `prefix` in `model` (`delay-250` gives 250).
fn number_after(model: &str, prefix: &str) -> Option<u64> {
    let start = model.find(prefix)? + prefix.len();
    let digits: &str = &model[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[derive(Clone, Copy)]
enum Behaviour {
    Plain,
    Slow(Duration),
    Stall,
    Hang,
    CutBody,
}

/// OpenAI's stored responses: `GET .../responses/{id}` (the Responses fixture under that id),
/// `DELETE .../responses/{id}`, `GET .../responses/{id}/input_items` (one user message).
fn stored_response(state: &Arc<State>, method: &Method, rest: &str) -> Response<MockBody> {
    let json = |v: serde_json::Value| plain(StatusCode::OK, Bytes::from(v.to_string()));
    let (id, items) = match rest.strip_suffix("/input_items") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    match (method, items) {
        (&Method::GET, true) => json(serde_json::json!({
            "object": "list",
            "data": [{"id": "msg_mock_input", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "Say hello"}]}],
            "first_id": "msg_mock_input", "last_id": "msg_mock_input", "has_more": false})),
        (&Method::GET, false) => {
            let mut v: serde_json::Value =
                serde_json::from_slice(&state.fixtures.openai_responses.body()).unwrap_or_default();
            v["id"] = serde_json::Value::String(id.to_owned());
            json(v)
        }
        (&Method::DELETE, false) => {
            json(serde_json::json!({"id": id, "object": "response.deleted", "deleted": true}))
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
}

fn plain(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn respond(state: &Arc<State>, fixture: &Fixture, behaviour: Behaviour) -> Response<MockBody> {
    respond_with(state, fixture, behaviour, true)
}

/// [`respond`], with `retry_after` saying whether a 429 or 529 carries `retry-after`.
fn respond_with(
    state: &Arc<State>,
    fixture: &Fixture,
    behaviour: Behaviour,
    retry_after: bool,
) -> Response<MockBody> {
    let mut frames = fixture.frames.clone();
    let mut end = frames.len();
    if let Behaviour::CutBody = behaviour {
        // Half of the JSON, then the connection's body ends.
        let whole = fixture.body();
        frames = Arc::from(vec![whole.slice(..whole.len() / 2)]);
        end = 1;
    }
    let (delay, stall_after) = match behaviour {
        Behaviour::Slow(d) => (Some(d), None),
        Behaviour::Stall => (None, Some(2.min(end))),
        Behaviour::Hang => (None, Some(0)),
        _ => (None, None),
    };
    let exact_len = matches!(behaviour, Behaviour::Plain) && frames.len() == 1;
    let body = MockBody {
        frames,
        next: 0,
        end,
        delay,
        sleep: None,
        stall_after,
        exact_len,
        state: Some(state.clone()),
        finished: false,
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(fixture.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fixture.content_type),
    );
    if fixture.content_type == "text/event-stream" {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if retry_after && matches!(fixture.status, 429 | 529) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
    }
    response
}

/// A response body sent frame by frame; notes whether it reached its end or was dropped.
pub struct MockBody {
    frames: Arc<[Bytes]>,
    next: usize,
    end: usize,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    stall_after: Option<usize>,
    exact_len: bool,
    state: Option<Arc<State>>,
    finished: bool,
}

impl MockBody {
    fn full(body: Bytes) -> Self {
        MockBody {
            frames: Arc::from(vec![body]),
            next: 0,
            end: 1,
            delay: None,
            sleep: None,
            stall_after: None,
            exact_len: true,
            state: None,
            finished: false,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next >= this.end {
            if !this.finished {
                this.finished = true;
                if let Some(state) = &this.state {
                    state
                        .counters
                        .completed_bodies
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return Poll::Ready(None);
        }
        if this.stall_after.is_some_and(|n| this.next >= n) {
            // Never wakes: the body ends only when the client goes away.
            return Poll::Pending;
        }
        if let Some(delay) = this.delay {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let frame = this.frames[this.next].clone();
        this.next += 1;
        if this.next >= this.end {
            this.finished = true;
            if let Some(state) = &this.state {
                state
                    .counters
                    .completed_bodies
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_len && self.next == 0 {
            SizeHint::with_exact(self.frames.first().map_or(0, |f| f.len() as u64))
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if let (false, Some(state)) = (self.finished, &self.state) {
            state
                .counters
                .dropped_bodies
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
