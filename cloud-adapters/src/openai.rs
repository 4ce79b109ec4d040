//! OpenAI chat/completions wire format: ingress decode, egress encode (JSON and SSE chunks),
//! upstream request structs, response and stream parsing.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::WireError;
use crate::json::{self, opt};
use crate::provider::{ProviderError, ProviderErrorKind};
use crate::scan;
use crate::sse::{self, SseEvent};
use crate::types::{
    ChatEvent, ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Role, TokenLogprob,
    Tool, ToolCall, ToolChoice, Usage, WireFormat, unix_now,
};

// ===== ingress: decode =====

/// Fields of a chat request this module understands; everything else goes to `extra`.
const KNOWN_CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "n",
    "user",
];

/// Decodes a client's `/v1/chat/completions` body.
pub fn decode_chat_request(body: &[u8]) -> Result<ChatRequest, WireError> {
    // The tree is taken apart, not copied: each text moves into the request.
    let mut obj = json::parse_object(body)?;
    let model = json::take_req_str(&mut obj, "model", "model")?;
    let messages = match json::take(&mut obj, "messages") {
        None => return Err(WireError::missing("messages")),
        Some(Value::Array(items)) => decode_messages(items)?,
        Some(_) => return Err(WireError::invalid_type("messages", "an array")),
    };
    if messages.is_empty() {
        return Err(WireError::invalid_value(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let n = json::opt_u32(&obj, "n", "n")?.unwrap_or(1);
    if n == 0 {
        return Err(WireError::invalid_value("n", "'n' must be at least 1"));
    }
    let max_completion_tokens = json::token_limit(
        json::opt_u32(&obj, "max_completion_tokens", "max_completion_tokens")?,
        "max_completion_tokens",
    )?;
    let limit_as_max_completion_tokens = max_completion_tokens.is_some();
    let max_tokens = match max_completion_tokens {
        Some(v) => Some(v),
        None => json::token_limit(
            json::opt_u32(&obj, "max_tokens", "max_tokens")?,
            "max_tokens",
        )?,
    };
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let include_usage = match opt(&obj, "stream_options") {
        None => false,
        Some(v) => {
            let so = json::as_object(v, "stream_options")?;
            json::opt_bool(so, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
        }
    };
    let tools = match opt(&obj, "tools") {
        None => Vec::new(),
        Some(v) => decode_tools(json::as_array(v, "tools")?)?,
    };
    let tool_choice = match opt(&obj, "tool_choice") {
        None => None,
        Some(v) => Some(decode_tool_choice(v)?),
    };
    let response_format = match opt(&obj, "response_format") {
        None => None,
        Some(v) => {
            json::as_object(v, "response_format")?;
            Some(v.clone())
        }
    };
    let logprobs = json::opt_bool(&obj, "logprobs", "logprobs")?.unwrap_or(false);
    let top_logprobs = json::opt_u32(&obj, "top_logprobs", "top_logprobs")?;
    if top_logprobs.is_some_and(|k| k > 20) {
        return Err(WireError::invalid_value(
            "top_logprobs",
            "'top_logprobs' must be at most 20",
        ));
    }
    // OpenAI's own ranges.
    let temperature = json::within(
        json::opt_f32(&obj, "temperature", "temperature")?,
        "temperature",
        0.0,
        2.0,
    )?;
    let top_p = json::within(json::opt_f32(&obj, "top_p", "top_p")?, "top_p", 0.0, 1.0)?;
    let top_k = json::opt_u32(&obj, "top_k", "top_k")?;
    let seed = json::opt_u64(&obj, "seed", "seed")?;
    let stop = json::stop_list(&obj, "stop", "stop")?;
    let parallel_tool_calls = json::opt_bool(&obj, "parallel_tool_calls", "parallel_tool_calls")?;
    let user = json::opt_str(&obj, "user", "user")?;
    let extra = obj
        .into_iter()
        .filter(|(key, _)| !KNOWN_CHAT_FIELDS.contains(&key.as_str()))
        .collect();
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        limit_as_max_completion_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        stream,
        include_usage: stream && include_usage,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        logprobs,
        top_logprobs,
        n,
        user,
        ingress: Some(WireFormat::OpenAi),
        extra,
    })
}

fn decode_messages(items: Vec<Value>) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let param = || format!("messages[{i}]");
        let Value::Object(mut obj) = item else {
            return Err(WireError::invalid_type(&param(), "an object"));
        };
        let obj = &mut obj;
        let role_param = || format!("messages[{i}].role");
        let role = match json::req_str_ref(obj, "role", &role_param)? {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                let role_param = role_param();
                return Err(WireError::invalid_value(
                    &role_param,
                    format!(
                        "invalid role '{other}' in '{role_param}': expected one of system, \
                         developer, user, assistant, tool"
                    ),
                ));
            }
        };
        let name = json::opt_str(obj, "name", &|| format!("messages[{i}].name"))?;
        let content_param = || format!("messages[{i}].content");
        let content_value = json::take(obj, "content");
        let has_content = content_value.is_some();
        let mut content = decode_content(content_value, &content_param)?;
        match role {
            Role::Tool => {
                let tool_call_id = json::req_str(obj, "tool_call_id", &|| {
                    format!("messages[{i}].tool_call_id")
                })?;
                let text = content
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("");
                content = vec![ContentPart::ToolResult {
                    tool_use_id: tool_call_id,
                    content: text,
                    is_error: false,
                }];
            }
            Role::Assistant => {
                if let Some(calls) = opt(obj, "tool_calls") {
                    let calls_param = format!("messages[{i}].tool_calls");
                    for (j, call) in json::as_array(calls, &calls_param)?.iter().enumerate() {
                        let cp = format!("{calls_param}[{j}]");
                        let call = json::as_object(call, &cp)?;
                        let id = json::req_str(call, "id", &format!("{cp}.id"))?;
                        let fp = format!("{cp}.function");
                        let function = match opt(call, "function") {
                            Some(f) => json::as_object(f, &fp)?,
                            None => return Err(WireError::missing(&fp)),
                        };
                        let name = json::req_str(function, "name", &format!("{fp}.name"))?;
                        let arguments =
                            json::opt_str(function, "arguments", &format!("{fp}.arguments"))?
                                .unwrap_or_default();
                        content.push(ContentPart::ToolUse {
                            id,
                            name,
                            input: arguments_value(&arguments),
                        });
                    }
                }
            }
            Role::System | Role::User => {
                if !has_content {
                    return Err(WireError::missing(&content_param()));
                }
            }
        }
        out.push(Message {
            role,
            content,
            name,
        });
    }
    Ok(out)
}

/// Tool-call arguments as JSON; text that is not JSON is kept as a JSON string.
pub(crate) fn arguments_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// Tool-call arguments as text (the inverse of [`arguments_value`]).
pub(crate) fn arguments_text(input: &Value) -> Cow<'_, str> {
    match input {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(json::to_string(other)),
    }
}

fn decode_content(
    value: Option<Value>,
    param: &(impl json::Param + ?Sized),
) -> Result<Vec<ContentPart>, WireError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ContentPart::text(s)]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            let param = param.name();
            for (i, part) in parts.iter().enumerate() {
                let pp = format!("{param}[{i}]");
                let obj = json::as_object(part, &pp)?;
                match json::req_str_ref(obj, "type", &format!("{pp}.type"))? {
                    "text" => out.push(ContentPart::text(json::req_str(
                        obj,
                        "text",
                        &format!("{pp}.text"),
                    )?)),
                    "image_url" => {
                        let ip = format!("{pp}.image_url");
                        let image = match opt(obj, "image_url") {
                            Some(Value::String(url)) => {
                                out.push(ContentPart::Image {
                                    url: url.clone(),
                                    detail: None,
                                });
                                continue;
                            }
                            Some(v) => json::as_object(v, &ip)?,
                            None => return Err(WireError::missing(&ip)),
                        };
                        out.push(ContentPart::Image {
                            url: json::req_str(image, "url", &format!("{ip}.url"))?,
                            detail: json::opt_str(image, "detail", &format!("{ip}.detail"))?,
                        });
                    }
                    other => {
                        return Err(WireError::new(
                            "unsupported_value",
                            Some(&format!("{pp}.type")),
                            format!("content part type '{other}' is not supported"),
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(WireError::invalid_type(
            &param.name(),
            "a string or an array of content parts",
        )),
    }
}

fn decode_tools(items: &[Value]) -> Result<Vec<Tool>, WireError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let obj = json::as_object(item, &tp)?;
        let kind = json::opt_str(obj, "type", &format!("{tp}.type"))?;
        if kind.as_deref().is_some_and(|k| k != "function") {
            return Err(WireError::new(
                "unsupported_value",
                Some(&format!("{tp}.type")),
                "only tools of type 'function' are supported",
            ));
        }
        let fp = format!("{tp}.function");
        let function = match opt(obj, "function") {
            Some(f) => json::as_object(f, &fp)?,
            None => return Err(WireError::missing(&fp)),
        };
        out.push(Tool {
            name: json::req_str(function, "name", &format!("{fp}.name"))?,
            description: json::opt_str(function, "description", &format!("{fp}.description"))?,
            parameters: opt(function, "parameters")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        });
    }
    Ok(out)
}

fn decode_tool_choice(value: &Value) -> Result<ToolChoice, WireError> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(WireError::invalid_value(
                "tool_choice",
                format!(
                    "invalid 'tool_choice' '{other}': expected auto, none, required or an object"
                ),
            )),
        },
        Value::Object(obj) => {
            let function = match opt(obj, "function") {
                Some(f) => json::as_object(f, "tool_choice.function")?,
                None => return Err(WireError::missing("tool_choice.function")),
            };
            Ok(ToolChoice::Tool(json::req_str(
                function,
                "name",
                "tool_choice.function.name",
            )?))
        }
        _ => Err(WireError::invalid_type(
            "tool_choice",
            "a string or an object",
        )),
    }
}

// ===== egress: encode =====

#[derive(Serialize)]
struct WireUsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    completion_tokens_details: ReasoningOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    speculative: Option<SpeculativeOut>,
}

/// `usage.speculative`: Tandem's extension for speculatively decoded answers.
#[derive(Serialize)]
struct SpeculativeOut {
    rounds: u64,
    drafted: u64,
    accepted: u64,
    acceptance_rate: f64,
    draft_length: f64,
    plain_tokens: u64,
    target_input_tokens: u64,
    target_cached_input_tokens: u64,
    target_output_tokens: u64,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl From<&Usage> for WireUsageOut {
    fn from(u: &Usage) -> Self {
        WireUsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cached_prompt_tokens,
            },
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: u.reasoning_tokens,
            },
            speculative: u.speculative.map(|s| SpeculativeOut {
                rounds: s.rounds,
                drafted: s.drafted,
                accepted: s.accepted,
                acceptance_rate: s.acceptance_rate(),
                draft_length: s.draft_length(),
                plain_tokens: s.plain_tokens,
                target_input_tokens: s.target_input_tokens,
                target_cached_input_tokens: s.target_cached_input_tokens,
                target_output_tokens: s.target_output_tokens,
            }),
        }
    }
}

#[derive(Serialize)]
struct LogprobsOut<'a> {
    content: Vec<TokenLogprobOut<'a>>,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct TokenLogprobOut<'a> {
    token: &'a str,
    logprob: f32,
    bytes: Cow<'a, [u8]>,
    top_logprobs: Vec<TopLogprobOut<'a>>,
}

#[derive(Serialize)]
struct TopLogprobOut<'a> {
    token: &'a str,
    logprob: f32,
    bytes: &'a [u8],
}

fn logprobs_out(lps: &[TokenLogprob]) -> LogprobsOut<'_> {
    LogprobsOut {
        content: lps
            .iter()
            .map(|lp| TokenLogprobOut {
                token: &lp.token,
                logprob: lp.logprob,
                bytes: match &lp.bytes {
                    Some(b) => Cow::Borrowed(b.as_slice()),
                    None => Cow::Borrowed(lp.token.as_bytes()),
                },
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|(t, l)| TopLogprobOut {
                        token: t,
                        logprob: *l,
                        bytes: t.as_bytes(),
                    })
                    .collect(),
            })
            .collect(),
        refusal: None,
    }
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    usage: WireUsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: Option<LogprobsOut<'a>>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

/// The OpenAI spelling of a finish reason.
pub fn finish_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// Parses an OpenAI finish reason (unknown ones count as a natural stop).
pub fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn response_out(r: &ChatResponse) -> ResponseOut<'_> {
    ResponseOut {
        id: &r.id,
        object: "chat.completion",
        created: r.created,
        model: &r.model,
        choices: [ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: (!r.text.is_empty() || r.tool_calls.is_empty()).then_some(r.text.as_str()),
                refusal: None,
                tool_calls: r
                    .tool_calls
                    .iter()
                    .map(|c| ToolCallOut {
                        index: None,
                        id: Some(&c.id),
                        kind: Some("function"),
                        function: FunctionOut {
                            name: Some(&c.name),
                            arguments: &c.arguments,
                        },
                    })
                    .collect(),
            },
            logprobs: r.logprobs.as_deref().map(logprobs_out),
            finish_reason: finish_reason_str(r.finish_reason),
        }],
        usage: WireUsageOut::from(&r.usage),
    }
}

/// Encodes a complete answer as `chat.completion` JSON bytes, fields in OpenAI's order.
pub fn encode_chat_response(response: &ChatResponse) -> Bytes {
    Bytes::from(serde_json::to_vec(&response_out(response)).unwrap_or_default())
}

/// A whole answer in the form an OpenAI client receives it: the `chat.completion` body, and the
/// usage it reports for accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// The `chat.completion` JSON body.
    pub body: Bytes,
    /// Token counts, as the body reports them.
    pub usage: Usage,
}

impl ChatCompletion {
    /// A normalized answer encoded for an OpenAI client.
    pub fn encode(response: &ChatResponse) -> Self {
        ChatCompletion {
            body: encode_chat_response(response),
            usage: response.usage,
        }
    }
}

/// What a passed-on `chat.completion` must hold: at least one choice, each an object, and the
/// usage to account.
#[derive(Deserialize)]
struct CompletionCheck {
    #[serde(default)]
    choices: Vec<ChoiceCheck>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A choice: an object, its members the upstream's to shape.
#[derive(Deserialize)]
struct ChoiceCheck {}

/// Takes an upstream's non-streamed `chat.completion` body as it is, for an OpenAI client: every
/// field the upstream sent is kept in OpenAI's own shape (system fingerprint, service tier,
/// `refusal` beside a null `content`, annotations, every token detail), and nothing is decoded
/// into the normalized form and encoded again. The body must be UTF-8 JSON whose choices are
/// objects, at least one, as [`parse_chat_response`] requires; what a choice holds is not checked.
pub fn pass_chat_response(body: Bytes, provider: &str) -> Result<ChatCompletion, ProviderError> {
    let bad = |message: String| ProviderError::new(ProviderErrorKind::Decode, provider, message);
    let usage = match walk_completion(&body) {
        Some(usage) => usage,
        // The walk does not say what is wrong, or finds it too odd to vouch for; the full parse
        // decides, and says why.
        None => {
            let check: CompletionCheck = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("bad chat.completion: {e}")))?;
            if check.choices.is_empty() {
                return Err(bad("chat.completion has no choices".into()));
            }
            check.usage.map(Usage::from).unwrap_or_default()
        }
    };
    // Neither checks the UTF-8 of strings they skip, and a client's parser may.
    std::str::from_utf8(&body).map_err(|e| bad(format!("bad chat.completion: {e}")))?;
    Ok(ChatCompletion { body, usage })
}

/// The usage of a `chat.completion` that holds at least one choice, each an object, found by a
/// walk that checks the whole body against JSON's grammar but builds nothing, in well under a
/// full parse's instructions; `None` where the walk cannot vouch for the body, or where the full
/// parse might read the usage differently.
fn walk_completion(body: &[u8]) -> Option<Usage> {
    let (mut choices, mut seen_choices, mut usage) = (0, false, None);
    scan::walk_document(body, |key, at| match key {
        // A repeated member is the full parse's to refuse.
        b"choices" if !std::mem::replace(&mut seen_choices, true) => {
            scan::walk_array(body, at, |choice| {
                choices += 1;
                (body.get(choice) == Some(&b'{')).then_some(())?;
                scan::value_end(body, choice)
            })
        }
        b"usage" if usage.is_none() => {
            let (read, end) = walk_usage(body, at)?;
            usage = Some(read);
            Some(end)
        }
        b"choices" | b"usage" => None,
        _ => scan::value_end(body, at),
    })?;
    (choices > 0).then(|| usage.unwrap_or_default())
}

/// The counts of the OpenAI `usage` object (or `null`) at `at`, read as [`WireUsage`] reads
/// them: 0 for a count or details object that is absent, and for a detail that is null; and the
/// index just past it.
fn walk_usage(json: &[u8], at: usize) -> Option<(Usage, usize)> {
    if let Some(end) = scan::null_end(json, at) {
        return Some((Usage::default(), end));
    }
    let mut counts = [None; 4];
    let end = scan::walk_object(json, at, |key, at| {
        let (slot, detail) = match key {
            b"prompt_tokens" => (0, None),
            b"completion_tokens" => (1, None),
            b"prompt_tokens_details" => (2, Some(&b"cached_tokens"[..])),
            b"completion_tokens_details" => (3, Some(&b"reasoning_tokens"[..])),
            _ => return scan::value_end(json, at),
        };
        let (count, end) = match detail {
            None => scan::count_at(json, at)?,
            Some(name) => walk_detail(json, at, name)?,
        };
        // A repeated count is the full parse's to refuse.
        counts[slot].replace(count).is_none().then_some(end)
    })?;
    let [prompt, completion, cached, reasoning] = counts.map(|c| c.unwrap_or(0));
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: cached,
        reasoning_tokens: reasoning,
        ..Usage::default()
    };
    Some((usage, end))
}

/// `name` in the details object (or `null`) at `at`, 0 where it or the object is null or absent;
/// and the index just past the object.
fn walk_detail(json: &[u8], at: usize, name: &[u8]) -> Option<(u64, usize)> {
    if let Some(end) = scan::null_end(json, at) {
        return Some((0, end));
    }
    let mut count = None;
    let end = scan::walk_object(json, at, |key, at| {
        if key != name {
            return scan::value_end(json, at);
        }
        let (n, end) = match scan::null_end(json, at) {
            Some(end) => (0, end),
            None => scan::count_at(json, at)?,
        };
        count.replace(n).is_none().then_some(end)
    })?;
    Some((count.unwrap_or(0), end))
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: &'static str,
}

/// The OpenAI error body for an upstream failure: `{"error":{"message","type","param","code"}}`.
pub fn error_body(err: &ProviderError) -> Value {
    serde_json::to_value(error_out(err)).unwrap_or(Value::Null)
}

/// [`error_body`] as bytes with the fields in OpenAI's order.
pub fn error_body_bytes(err: &ProviderError) -> Bytes {
    Bytes::from(json::to_string(&error_out(err)))
}

fn error_out(err: &ProviderError) -> ErrorOut<'_> {
    let kind = match (err.kind, err.status) {
        (_, Some(429)) => "rate_limit_error",
        (_, Some(400 | 404 | 422)) => "invalid_request_error",
        (_, Some(401)) => "authentication_error",
        (_, Some(403)) => "permission_error",
        (ProviderErrorKind::Unsupported, _) => "invalid_request_error",
        _ => "server_error",
    };
    ErrorOut {
        error: ErrorInner {
            message: &err.message,
            kind,
            param: None,
            code: err.kind.as_str(),
        },
    }
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoiceOut<'a>>,
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

/// `usage` in a chunk: absent, `null` (include_usage, not the last chunk), or the counts.
enum UsageField {
    Absent,
    Null,
    Counts(WireUsageOut),
}

impl UsageField {
    fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }
}

impl Serialize for UsageField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Counts(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<LogprobsOut<'a>>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

/// Turns [`ChatEvent`]s into `chat.completion.chunk` SSE frames.
///
/// Usage is held back and sent once, as the last chunk before `data: [DONE]`, when the client
/// asked for it (`stream_options.include_usage`).
#[derive(Debug)]
pub struct ChunkEncoder {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    started: bool,
    usage: Option<Usage>,
    failed: bool,
}

impl ChunkEncoder {
    /// An encoder; `include_usage` sends the final usage chunk (the client asked for it).
    pub fn new(include_usage: bool) -> Self {
        ChunkEncoder {
            include_usage,
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: String::new(),
            created: unix_now(),
            started: false,
            usage: None,
            failed: false,
        }
    }

    /// Sets the model name used before (or without) a `Start` event.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    fn chunk(&self, choice: Option<ChunkChoiceOut<'_>>, usage: UsageField, out: &mut BytesMut) {
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: choice.into_iter().collect(),
            usage,
        };
        sse::write_event(out, None, &json::to_string(&chunk));
    }

    fn usage_placeholder(&self) -> UsageField {
        if self.include_usage {
            UsageField::Null
        } else {
            UsageField::Absent
        }
    }

    fn start_frame(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let delta = DeltaOut {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
            ..DeltaOut::default()
        };
        let choice = ChunkChoiceOut {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: None,
        };
        self.chunk(Some(choice), self.usage_placeholder(), out);
    }

    /// The frames for one event (possibly none).
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.failed {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { id, model, created } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.created = *created;
                self.start_frame(&mut out);
            }
            ChatEvent::TextDelta {
                index,
                text,
                logprobs,
            } => {
                self.start_frame(&mut out);
                let choice = ChunkChoiceOut {
                    index: *index,
                    delta: DeltaOut {
                        content: Some(text),
                        ..DeltaOut::default()
                    },
                    logprobs: logprobs.as_deref().map(logprobs_out),
                    finish_reason: None,
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                self.start_frame(&mut out);
                let call = ToolCallOut {
                    index: Some(*index),
                    id: id.as_deref(),
                    kind: id.as_ref().map(|_| "function"),
                    function: FunctionOut {
                        name: name.as_deref(),
                        arguments,
                    },
                };
                let choice = ChunkChoiceOut {
                    index: 0,
                    delta: DeltaOut {
                        tool_calls: vec![call],
                        ..DeltaOut::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::Usage(usage) => self.usage = Some(*usage),
            ChatEvent::Finish { reason } => {
                self.start_frame(&mut out);
                let choice = ChunkChoiceOut {
                    index: 0,
                    delta: DeltaOut::default(),
                    logprobs: None,
                    finish_reason: Some(finish_reason_str(*reason)),
                };
                self.chunk(Some(choice), self.usage_placeholder(), &mut out);
            }
            ChatEvent::Error(err) => {
                self.failed = true;
                // What was served before the failure, when the client asked for usage and the
                // backend reported it.
                if let (true, Some(usage)) = (self.include_usage, self.usage) {
                    self.chunk(
                        None,
                        UsageField::Counts(WireUsageOut::from(&usage)),
                        &mut out,
                    );
                }
                sse::write_event(&mut out, None, &json::to_string(&error_out(err)));
            }
        }
        out.freeze()
    }

    /// The closing frames: the usage chunk when asked for, then `data: [DONE]`. After an error
    /// event nothing more is sent, so the client can tell the stream failed (a usage chunk the
    /// backend reported before failing comes just before the error event).
    pub fn finish(&mut self) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        if self.include_usage {
            let usage = self.usage.unwrap_or_default();
            self.chunk(
                None,
                UsageField::Counts(WireUsageOut::from(&usage)),
                &mut out,
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out.freeze()
    }
}

// ===== upstream: request structs =====

/// A `/chat/completions` request body, borrowed from a [`ChatRequest`].
#[derive(Debug, Serialize)]
pub struct ChatCompletionsRequest<'a> {
    /// The upstream model name.
    pub model: &'a str,
    /// The conversation.
    pub messages: Vec<UpstreamMessage<'a>>,
    /// Most tokens to generate, under the older name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate, under the name the client used when it was this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling, which OpenAI-compatible servers take (the gateway refuses it for OpenAI's
    /// own API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Choices to generate, when more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    /// Whether to stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Always asks for usage when streaming, so it is counted even if the client did not ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<UpstreamTool<'a>>,
    /// Tool choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Parallel tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Response format, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<&'a Value>,
    /// Log-probabilities.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// Alternatives per token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// End-user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Fields the client sent in OpenAI format that this module does not model.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<&'a Map<String, Value>>,
}

/// `stream_options`.
#[derive(Debug, Serialize)]
pub struct StreamOptions {
    /// Ask for a final usage chunk.
    pub include_usage: bool,
}

/// One upstream message.
#[derive(Debug, Serialize)]
pub struct UpstreamMessage<'a> {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'static str,
    /// Text or parts; `null` for an assistant message that only calls tools.
    pub content: Option<UpstreamContent<'a>>,
    /// Participant name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Tool calls made by the assistant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<UpstreamToolCall<'a>>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
}

/// Message content: a string, or parts.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum UpstreamContent<'a> {
    /// Plain text.
    Text(&'a str),
    /// Text and image parts.
    Parts(Vec<UpstreamPart<'a>>),
}

/// One content part.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamPart<'a> {
    /// Text.
    Text {
        /// The text.
        text: &'a str,
    },
    /// An image.
    ImageUrl {
        /// The image.
        image_url: UpstreamImage<'a>,
    },
}

/// An image reference.
#[derive(Debug, Serialize)]
pub struct UpstreamImage<'a> {
    /// URL or data URL.
    pub url: &'a str,
    /// Detail hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// An assistant's tool call.
#[derive(Debug, Serialize)]
pub struct UpstreamToolCall<'a> {
    /// Call id.
    pub id: &'a str,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: UpstreamFunctionCall<'a>,
}

/// A function call's name and JSON arguments text.
#[derive(Debug, Serialize)]
pub struct UpstreamFunctionCall<'a> {
    /// Function name.
    pub name: &'a str,
    /// Arguments as JSON text.
    pub arguments: Cow<'a, str>,
}

/// A tool definition.
#[derive(Debug, Serialize)]
pub struct UpstreamTool<'a> {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function.
    pub function: UpstreamFunction<'a>,
}

/// A function definition.
#[derive(Debug, Serialize)]
pub struct UpstreamFunction<'a> {
    /// Name.
    pub name: &'a str,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// JSON Schema.
    pub parameters: &'a Value,
}

impl<'a> ChatCompletionsRequest<'a> {
    /// The upstream body for `req`, sent to model `model`. `stream` asks for SSE (and usage).
    pub fn new(req: &'a ChatRequest, model: &'a str, stream: bool) -> Self {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            push_upstream_messages(m, &mut messages);
        }
        let (max_tokens, max_completion_tokens) = if req.limit_as_max_completion_tokens {
            (None, req.max_tokens)
        } else {
            (req.max_tokens, None)
        };
        ChatCompletionsRequest {
            model,
            messages,
            max_tokens,
            max_completion_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            n: (req.n > 1).then_some(req.n),
            stop: &req.stop,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            tools: req
                .tools
                .iter()
                .map(|t| UpstreamTool {
                    kind: "function",
                    function: UpstreamFunction {
                        name: &t.name,
                        description: t.description.as_deref(),
                        parameters: &t.parameters,
                    },
                })
                .collect(),
            tool_choice: req.tool_choice.as_ref().map(|c| match c {
                ToolChoice::Auto => Value::from("auto"),
                ToolChoice::None => Value::from("none"),
                ToolChoice::Required => Value::from("required"),
                ToolChoice::Tool(name) => {
                    serde_json::json!({"type": "function", "function": {"name": name}})
                }
            }),
            parallel_tool_calls: req.parallel_tool_calls,
            response_format: req.response_format.as_ref(),
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs.filter(|_| req.logprobs),
            user: req.user.as_deref(),
            extra: req.extra_for(WireFormat::OpenAi),
        }
    }
}

fn push_upstream_messages<'a>(m: &'a Message, out: &mut Vec<UpstreamMessage<'a>>) {
    // Tool results become one `tool` message each, ahead of the rest of the message.
    for part in &m.content {
        if let ContentPart::ToolResult {
            tool_use_id,
            content,
            ..
        } = part
        {
            out.push(UpstreamMessage {
                role: "tool",
                content: Some(UpstreamContent::Text(content)),
                name: None,
                tool_calls: Vec::new(),
                tool_call_id: Some(tool_use_id),
            });
        }
    }
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for part in &m.content {
        match part {
            ContentPart::Text { text } => parts.push(UpstreamPart::Text { text }),
            ContentPart::Image { url, detail } => parts.push(UpstreamPart::ImageUrl {
                image_url: UpstreamImage {
                    url,
                    detail: detail.as_deref(),
                },
            }),
            ContentPart::ToolUse { id, name, input } => tool_calls.push(UpstreamToolCall {
                id,
                kind: "function",
                function: UpstreamFunctionCall {
                    name,
                    arguments: arguments_text(input),
                },
            }),
            ContentPart::ToolResult { .. } => {}
        }
    }
    if m.role == Role::Tool {
        return;
    }
    let has_results = m
        .content
        .iter()
        .any(|p| matches!(p, ContentPart::ToolResult { .. }));
    if parts.is_empty() && tool_calls.is_empty() && has_results {
        return;
    }
    let content = match parts.as_slice() {
        [] if !tool_calls.is_empty() => None,
        [] => Some(UpstreamContent::Text("")),
        [UpstreamPart::Text { text }] => Some(UpstreamContent::Text(text)),
        _ => Some(UpstreamContent::Parts(parts)),
    };
    out.push(UpstreamMessage {
        role: m.role.as_str(),
        content,
        name: m.name.as_deref(),
        tool_calls,
        tool_call_id: None,
    });
}

// ===== upstream: response parsing =====

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<WireCached>,
    completion_tokens_details: Option<WireReasoning>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireCached {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireReasoning {
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        Usage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            cached_prompt_tokens: w
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
            reasoning_tokens: w
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            speculative: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct WireTokenLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTopLogprob>,
}

#[derive(Debug, Deserialize)]
struct WireTopLogprob {
    token: String,
    logprob: f32,
}

fn convert_logprobs(w: Option<WireLogprobs>) -> Option<Vec<TokenLogprob>> {
    let content = w?.content?;
    Some(
        content
            .into_iter()
            .map(|t| TokenLogprob {
                token: t.token,
                logprob: t.logprob,
                bytes: t.bytes,
                top: t
                    .top_logprobs
                    .into_iter()
                    .map(|x| (x.token, x.logprob))
                    .collect(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: WireMessage,
    /// Legacy `text_completion` choices carry `text` instead of a message.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireMessage {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// Parses a non-streamed `chat.completion` body.
pub fn parse_chat_response(body: &[u8], provider: &str) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Decode,
            provider,
            format!("bad chat.completion: {e}"),
        )
    })?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ProviderError::new(
            ProviderErrorKind::Decode,
            provider,
            "chat.completion has no choices",
        ));
    };
    let refused = choice.message.refusal.is_some();
    let text = choice
        .message
        .content
        .or(choice.message.refusal)
        .or(choice.text)
        .unwrap_or_default();
    let tool_calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let f = c.function.unwrap_or_default();
            ToolCall {
                id: c.id.unwrap_or_default(),
                name: f.name.unwrap_or_default(),
                arguments: f.arguments.unwrap_or_default(),
            }
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(r) => parse_finish_reason(r),
        None if refused => FinishReason::ContentFilter,
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: wire.created,
        text,
        tool_calls,
        finish_reason,
        logprobs: convert_logprobs(choice.logprobs),
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    /// Legacy `text_completion` chunks carry `text` instead of a delta.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct WireDelta {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

/// Turns an upstream's `chat.completion.chunk` SSE events into [`ChatEvent`]s.
#[derive(Debug)]
pub struct ChunkDecoder {
    provider: String,
    started: bool,
    finished: bool,
    usage_seen: bool,
    done: bool,
    failed: bool,
}

impl ChunkDecoder {
    /// A decoder for a stream from `provider`.
    pub fn new(provider: impl Into<String>) -> Self {
        ChunkDecoder {
            provider: provider.into(),
            started: false,
            finished: false,
            usage_seen: false,
            done: false,
            failed: false,
        }
    }

    /// Decodes one SSE event, appending the resulting events to `out`.
    pub fn decode(&mut self, event: &SseEvent, out: &mut Vec<ChatEvent>) {
        if self.done || self.failed {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => {
                self.failed = true;
                out.push(ChatEvent::Error(ProviderError::new(
                    ProviderErrorKind::Decode,
                    self.provider.clone(),
                    format!("bad chat.completion.chunk: {e}"),
                )));
                return;
            }
        };
        if let Some(error) = chunk.error {
            self.failed = true;
            let body = serde_json::json!({ "error": error });
            out.push(ChatEvent::Error(error_from_value(
                None,
                body,
                &self.provider,
            )));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(ChatEvent::Start {
                id: chunk.id,
                model: chunk.model,
                created: chunk.created,
            });
        }
        for choice in chunk.choices {
            let text = choice
                .delta
                .content
                .or(choice.delta.refusal)
                .or(choice.text);
            let logprobs = convert_logprobs(choice.logprobs);
            if text.as_deref().is_some_and(|t| !t.is_empty()) || logprobs.is_some() {
                out.push(ChatEvent::TextDelta {
                    index: choice.index,
                    text: text.unwrap_or_default(),
                    logprobs,
                });
            }
            for (pos, call) in choice
                .delta
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let f = call.function.unwrap_or_default();
                out.push(ChatEvent::ToolCallDelta {
                    index: call.index.unwrap_or(pos as u32),
                    id: call.id,
                    name: f.name,
                    arguments: f.arguments.unwrap_or_default(),
                });
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(ChatEvent::Finish {
                    reason: parse_finish_reason(&reason),
                });
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage_seen = true;
            out.push(ChatEvent::Usage(usage.into()));
        }
    }

    /// Whether the stream reached its end or already failed. The end is `[DONE]`, or a finish
    /// reason and the usage: the usage comes in a chunk after the finish reason, so a stream that
    /// ends between the two was cut, and its usage would be lost without a word.
    pub fn is_complete(&self) -> bool {
        self.done || self.failed || (self.finished && self.usage_seen)
    }
}

// ===== upstream: errors =====

/// Parses an upstream error response (`{"error":{"message","type","code"}}`) into a
/// [`ProviderError`] with the status's retryability.
pub fn parse_error_body(status: u16, body: &[u8], provider: &str) -> ProviderError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => error_from_value(Some(status), value, provider),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("upstream returned status {status}")
            } else {
                format!("upstream returned status {status}: {}", truncate(text, 500))
            };
            ProviderError::status(status, provider, message)
        }
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn error_from_value(status: Option<u16>, value: Value, provider: &str) -> ProviderError {
    let inner = value.get("error");
    let message = inner
        .and_then(|e| {
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
        })
        .or_else(|| value.get("message").and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| match status {
            Some(s) => format!("upstream returned status {s}"),
            None => "upstream reported an error".to_owned(),
        });
    let mut err = match status {
        Some(s) => ProviderError::status(s, provider, message),
        None => {
            // An error inside a stream: retryable when it says the server failed or is busy.
            let kind = inner
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut e = ProviderError::new(ProviderErrorKind::Status, provider, message);
            e.retryable = matches!(
                kind,
                "server_error" | "rate_limit_error" | "overloaded_error"
            );
            e
        }
    };
    err.upstream_body = Some(value);
    err
}

// ===== legacy completions =====

/// The prompt of a legacy completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// A legacy `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The model name.
    pub model: String,
    /// The prompt (one; batches are refused).
    pub prompt: Prompt,
    /// Text after the insertion point.
    pub suffix: Option<String>,
    /// Whether to repeat the prompt before the completion.
    pub echo: bool,
    /// Log-probabilities of this many alternatives per token.
    pub logprobs: Option<u32>,
    /// Log-probabilities of the prompt tokens (vLLM).
    pub prompt_logprobs: Option<u32>,
    /// Most tokens to generate (the API's default is 16).
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling (vLLM).
    pub top_k: Option<u32>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether the client asked for a final usage chunk.
    pub include_usage: bool,
    /// End-user id.
    pub user: Option<String>,
    /// Other fields, untouched.
    pub extra: Map<String, Value>,
}

const KNOWN_COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "suffix",
    "echo",
    "logprobs",
    "prompt_logprobs",
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stream",
    "stream_options",
    "user",
    "n",
    "best_of",
];

/// Decodes a client's `/v1/completions` body.
pub fn decode_completion_request(body: &[u8]) -> Result<CompletionRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let prompt = match opt(&obj, "prompt") {
        None => return Err(WireError::missing("prompt")),
        Some(v) => decode_prompt(v)?,
    };
    for key in ["n", "best_of"] {
        if json::opt_u32(&obj, key, key)?.unwrap_or(1) > 1 {
            return Err(WireError::new(
                "unsupported_value",
                Some(key),
                format!("{key}>1 is not supported"),
            ));
        }
    }
    let logprobs = match opt(&obj, "logprobs") {
        // Some clients send a boolean; `true` means the top-1 token.
        Some(Value::Bool(b)) => b.then_some(0),
        _ => json::opt_u32(&obj, "logprobs", "logprobs")?,
    };
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let include_usage = match opt(&obj, "stream_options") {
        None => false,
        Some(v) => {
            let so = json::as_object(v, "stream_options")?;
            json::opt_bool(so, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
        }
    };
    let mut extra = Map::new();
    for (key, value) in &obj {
        if !KNOWN_COMPLETION_FIELDS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        }
    }
    Ok(CompletionRequest {
        model,
        prompt,
        suffix: json::opt_str(&obj, "suffix", "suffix")?,
        echo: json::opt_bool(&obj, "echo", "echo")?.unwrap_or(false),
        logprobs,
        prompt_logprobs: json::opt_u32(&obj, "prompt_logprobs", "prompt_logprobs")?,
        max_tokens: json::opt_u32(&obj, "max_tokens", "max_tokens")?,
        stop: json::stop_list(&obj, "stop", "stop")?,
        temperature: json::opt_f32(&obj, "temperature", "temperature")?,
        top_p: json::opt_f32(&obj, "top_p", "top_p")?,
        top_k: match opt(&obj, "top_k") {
            // vLLM's "off".
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => None,
            _ => json::opt_u32(&obj, "top_k", "top_k")?,
        },
        seed: json::opt_u64(&obj, "seed", "seed")?,
        stream,
        include_usage: stream && include_usage,
        user: json::opt_str(&obj, "user", "user")?,
        extra,
    })
}

fn decode_prompt(value: &Value) -> Result<Prompt, WireError> {
    let batch_error = || {
        WireError::new(
            "unsupported_value",
            Some("prompt"),
            "a batch of several prompts is not supported",
        )
    };
    let token = |v: &Value, param: &str| -> Result<u32, WireError> {
        v.as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| WireError::invalid_type(param, "a token id (non-negative integer)"))
    };
    match value {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(items) => match items.first() {
            None => Err(WireError::invalid_value(
                "prompt",
                "'prompt' must not be empty",
            )),
            Some(Value::String(s)) => {
                if items.len() > 1 {
                    return Err(batch_error());
                }
                Ok(Prompt::Text(s.clone()))
            }
            Some(Value::Array(inner)) => {
                if items.len() > 1 {
                    return Err(batch_error());
                }
                let ids = inner
                    .iter()
                    .enumerate()
                    .map(|(i, v)| token(v, &format!("prompt[0][{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Prompt::Tokens(ids))
            }
            Some(_) => {
                let ids = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| token(v, &format!("prompt[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Prompt::Tokens(ids))
            }
        },
        _ => Err(WireError::invalid_type(
            "prompt",
            "a string, an array of strings or token ids",
        )),
    }
}

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoiceOut<'a>; 1],
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

#[derive(Serialize)]
struct CompletionChoiceOut<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<CompletionLogprobsOut<'a>>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct CompletionLogprobsOut<'a> {
    tokens: Vec<&'a str>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
}

fn completion_logprobs(lps: &[TokenLogprob], start_offset: usize) -> CompletionLogprobsOut<'_> {
    let mut offset = start_offset;
    let mut text_offset = Vec::with_capacity(lps.len());
    for lp in lps {
        text_offset.push(offset);
        offset += lp.token.len();
    }
    CompletionLogprobsOut {
        tokens: lps.iter().map(|l| l.token.as_str()).collect(),
        token_logprobs: lps.iter().map(|l| l.logprob).collect(),
        top_logprobs: lps
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|(t, p)| (t.clone(), Value::from(*p)))
                    .collect()
            })
            .collect(),
        text_offset,
    }
}

/// Encodes a complete answer as a legacy `text_completion` object; `echo` is the prompt text to
/// repeat before the completion (when the client asked for `echo`).
pub fn encode_completion_response(response: &ChatResponse, echo: Option<&str>) -> Bytes {
    let text: Cow<'_, str> = match echo {
        Some(prompt) => Cow::Owned(format!("{prompt}{}", response.text)),
        None => Cow::Borrowed(&response.text),
    };
    let out = CompletionOut {
        id: &response.id,
        object: "text_completion",
        created: response.created,
        model: &response.model,
        choices: [CompletionChoiceOut {
            text: &text,
            index: 0,
            logprobs: response
                .logprobs
                .as_deref()
                .map(|l| completion_logprobs(l, echo.map_or(0, str::len))),
            finish_reason: Some(finish_reason_str(response.finish_reason)),
        }],
        usage: UsageField::Counts(WireUsageOut::from(&response.usage)),
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// Turns [`ChatEvent`]s into legacy `text_completion` SSE chunks.
#[derive(Debug)]
pub struct CompletionChunkEncoder {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    offset: usize,
    usage: Option<Usage>,
    failed: bool,
}

impl CompletionChunkEncoder {
    /// An encoder; `include_usage` sends the final usage chunk.
    pub fn new(include_usage: bool) -> Self {
        CompletionChunkEncoder {
            include_usage,
            id: format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
            model: String::new(),
            created: unix_now(),
            offset: 0,
            usage: None,
            failed: false,
        }
    }

    fn chunk(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprob]>,
        finish: Option<FinishReason>,
        out: &mut BytesMut,
    ) {
        let c = CompletionOut {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices: [CompletionChoiceOut {
                text,
                index: 0,
                logprobs: logprobs.map(|l| completion_logprobs(l, self.offset)),
                finish_reason: finish.map(finish_reason_str),
            }],
            usage: if self.include_usage {
                UsageField::Null
            } else {
                UsageField::Absent
            },
        };
        sse::write_event(out, None, &json::to_string(&c));
    }

    /// The frames for one event (possibly none). Tool-call deltas have no legacy form and are
    /// dropped.
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.failed {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { id, model, created } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.created = *created;
            }
            ChatEvent::TextDelta { text, logprobs, .. } => {
                self.chunk(text, logprobs.as_deref(), None, &mut out);
                self.offset += text.len();
            }
            ChatEvent::ToolCallDelta { .. } => {}
            ChatEvent::Usage(u) => self.usage = Some(*u),
            ChatEvent::Finish { reason } => self.chunk("", None, Some(*reason), &mut out),
            ChatEvent::Error(err) => {
                self.failed = true;
                sse::write_event(&mut out, None, &json::to_string(&error_out(err)));
            }
        }
        out.freeze()
    }

    /// The closing frames: usage chunk when asked for, then `data: [DONE]`.
    pub fn finish(&mut self) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        if self.include_usage {
            #[derive(Serialize)]
            struct UsageChunk<'a> {
                id: &'a str,
                object: &'static str,
                created: u64,
                model: &'a str,
                choices: [(); 0],
                usage: WireUsageOut,
            }
            let usage = self.usage.unwrap_or_default();
            let c = UsageChunk {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: [],
                usage: WireUsageOut::from(&usage),
            };
            sse::write_event(&mut out, None, &json::to_string(&c));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_completion_is_vouched_for_by_the_walk() {
        let body = include_bytes!("../tests/fixtures/openai/chat_text.json");
        let usage = walk_completion(body).unwrap();
        let parsed: CompletionCheck = serde_json::from_slice(body).unwrap();
        assert_eq!(usage, Usage::from(parsed.usage.unwrap()));
        assert_eq!(usage.cached_prompt_tokens, 1024);
    }

    /// What the full parse of a body makes of it: its usage, or that it refuses it.
    fn fully_parsed(body: &[u8]) -> Option<Usage> {
        let check: CompletionCheck = serde_json::from_slice(body).ok()?;
        (!check.choices.is_empty()).then(|| check.usage.map(Usage::from).unwrap_or_default())
    }

    #[test]
    fn the_walk_reads_usage_as_the_full_parse_does_or_leaves_it_to_it() {
        let body =
            |usage: &str| format!(r#"{{"id":"x","choices":[{{"index":0}}],"usage":{usage}}}"#);
        let read = [
            r#"null"#,
            r#"{}"#,
            r#"{"prompt_tokens":3}"#,
            r#"{"completion_tokens":4,"total_tokens":7,"prompt_tokens":3}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{}}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "prompt_tokens_details":{"audio_tokens":0,"cached_tokens":null}}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "prompt_tokens_details":{"cached_tokens":2},
                "completion_tokens_details":{"reasoning_tokens":1,"audio_tokens":0}}"#,
        ];
        for usage in read {
            let body = body(usage);
            let full = fully_parsed(body.as_bytes());
            assert!(full.is_some(), "{body}");
            assert_eq!(walk_completion(body.as_bytes()), full, "{body}");
        }
        // Refused by the full parse, or read by it in a way the walk leaves to it: a usage
        // given as an array reads its counts by position.
        let left = [
            r#"{"prompt_tokens":null,"completion_tokens":4}"#,
            r#"{"prompt_tokens":-3,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3.0,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3,"prompt_tokens":3,"completion_tokens":4}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":7}"#,
            r#"{"prompt_tokens":3,"completion_tokens":4,
                "completion_tokens_details":{"reasoning_tokens":1,"reasoning_tokens":1}}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":4}"#,
            r#"[3, 4]"#,
        ];
        for usage in left {
            let body = body(usage);
            assert_eq!(walk_completion(body.as_bytes()), None, "{body}");
        }
        let others = [
            r#"{"choices":[{}],"choices":[{}]}"#,
            r#"{"choices":[{},7]}"#,
            r#"{"choices":{}}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[]}"#,
        ];
        for body in others {
            assert_eq!(walk_completion(body.as_bytes()), None, "{body}");
        }
    }
}
