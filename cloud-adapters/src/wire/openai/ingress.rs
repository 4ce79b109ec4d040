//! Ingress: a client's `/v1/chat/completions` body decoded into a [`ChatRequest`].

use serde_json::Value;

use crate::error::WireError;
use crate::types::{ChatRequest, ContentPart, Message, Role, Tool, ToolChoice, WireFormat};
use crate::wire::json::{self, arguments_value, opt};

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
                                    param: Some(pp),
                                });
                                continue;
                            }
                            Some(v) => json::as_object(v, &ip)?,
                            None => return Err(WireError::missing(&ip)),
                        };
                        out.push(ContentPart::Image {
                            url: json::req_str(image, "url", &format!("{ip}.url"))?,
                            detail: json::opt_str(image, "detail", &format!("{ip}.detail"))?,
                            param: Some(pp),
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
