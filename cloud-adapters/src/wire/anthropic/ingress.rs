//! Ingress: a client's `/v1/messages` body decoded into a [`ChatRequest`].

use serde_json::{Map, Value};

use crate::error::WireError;
use crate::types::{ChatRequest, ContentPart, Message, Role, Tool, ToolChoice, WireFormat};
use crate::wire::json::{self, opt};

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
];

/// Decodes a client's `/v1/messages` body.
pub fn decode_messages_request(body: &[u8]) -> Result<ChatRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let mut messages = Vec::new();
    match opt(&obj, "system") {
        None => {}
        Some(Value::String(s)) => messages.push(Message::text(Role::System, s.clone())),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                let bp = format!("system[{i}]");
                let block = json::as_object(block, &bp)?;
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&json::req_str(block, "text", &format!("{bp}.text"))?);
            }
            messages.push(Message::text(Role::System, text));
        }
        Some(_) => {
            return Err(WireError::invalid_type(
                "system",
                "a string or an array of text blocks",
            ));
        }
    }
    let items = match opt(&obj, "messages") {
        None => return Err(WireError::missing("messages")),
        Some(v) => json::as_array(v, "messages")?,
    };
    if items.is_empty() {
        return Err(WireError::invalid_value(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let last = items.len() - 1;
    for (i, item) in items.iter().enumerate() {
        let (message, sent_empty) = decode_message(item, i)?;
        // As the API itself: every turn says something but a final assistant one (an empty
        // prefill). An empty turn would be left out upstream, changing the conversation.
        if sent_empty && !(i == last && message.role == Role::Assistant) {
            return Err(WireError::invalid_value(
                &format!("messages[{i}].content"),
                format!(
                    "'messages[{i}].content' must not be empty (only a final assistant message may be)"
                ),
            ));
        }
        messages.push(message);
    }
    // Thinking blocks are not sent on; a conversation of nothing else has nothing to send.
    if messages
        .iter()
        .all(|m| m.role == Role::System || is_empty(m))
    {
        return Err(WireError::invalid_value(
            "messages",
            "'messages' has no content to send (thinking blocks alone are not sent)",
        ));
    }
    let tools = match opt(&obj, "tools") {
        None => Vec::new(),
        Some(v) => decode_tools(json::as_array(v, "tools")?)?,
    };
    let (tool_choice, parallel_tool_calls) = match opt(&obj, "tool_choice") {
        None => (None, None),
        Some(v) => decode_tool_choice(v)?,
    };
    let user = match opt(&obj, "metadata") {
        None => None,
        Some(v) => json::opt_str(
            json::as_object(v, "metadata")?,
            "user_id",
            "metadata.user_id",
        )?,
    };
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let mut extra = Map::new();
    for (key, value) in &obj {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        }
    }
    Ok(ChatRequest {
        model,
        messages,
        // Anthropic requires the limit, and takes sampling values within 0 and 1.
        max_tokens: json::token_limit(
            Some(
                json::opt_u32(&obj, "max_tokens", "max_tokens")?
                    .ok_or_else(|| WireError::missing("max_tokens"))?,
            ),
            "max_tokens",
        )?,
        limit_as_max_completion_tokens: false,
        temperature: json::within(
            json::opt_f32(&obj, "temperature", "temperature")?,
            "temperature",
            0.0,
            1.0,
        )?,
        top_p: json::within(json::opt_f32(&obj, "top_p", "top_p")?, "top_p", 0.0, 1.0)?,
        top_k: json::opt_u32(&obj, "top_k", "top_k")?,
        seed: None,
        stop: json::stop_list(&obj, "stop_sequences", "stop_sequences")?,
        stream,
        // Anthropic streams always carry usage.
        include_usage: stream,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format: None,
        logprobs: false,
        top_logprobs: None,
        n: 1,
        user,
        ingress: Some(WireFormat::Anthropic),
        extra,
    })
}

/// Whether a message carries nothing: no part, or only empty text.
fn is_empty(message: &Message) -> bool {
    is_empty_parts(&message.content)
}

fn is_empty_parts(parts: &[ContentPart]) -> bool {
    parts
        .iter()
        .all(|part| matches!(part, ContentPart::Text { text } if text.is_empty()))
}

/// One message, and whether it was sent with nothing in it (no block, or only empty text).
fn decode_message(item: &Value, i: usize) -> Result<(Message, bool), WireError> {
    let param = format!("messages[{i}]");
    let obj = json::as_object(item, &param)?;
    let role_param = format!("{param}.role");
    let role = match json::req_str(obj, "role", &role_param)?.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(WireError::invalid_value(
                &role_param,
                format!("invalid role '{other}' in '{role_param}': expected user or assistant"),
            ));
        }
    };
    let cp = format!("{param}.content");
    let content = match opt(obj, "content") {
        None => return Err(WireError::missing(&cp)),
        Some(Value::String(s)) => vec![ContentPart::text(s.clone())],
        Some(Value::Array(blocks)) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                if let Some(part) = decode_block(block, &format!("{cp}[{j}]"))? {
                    out.push(part);
                }
            }
            out
        }
        Some(_) => {
            return Err(WireError::invalid_type(
                &cp,
                "a string or an array of content blocks",
            ));
        }
    };
    let sent_empty = match opt(obj, "content") {
        Some(Value::Array(blocks)) => blocks.len() == content.len() && is_empty_parts(&content),
        _ => is_empty_parts(&content),
    };
    Ok((
        Message {
            role,
            content,
            name: None,
        },
        sent_empty,
    ))
}

fn decode_block(block: &Value, bp: &str) -> Result<Option<ContentPart>, WireError> {
    let obj = json::as_object(block, bp)?;
    let part = match json::req_str(obj, "type", &format!("{bp}.type"))?.as_str() {
        "text" => ContentPart::text(json::req_str(obj, "text", &format!("{bp}.text"))?),
        "image" => {
            let sp = format!("{bp}.source");
            let source = match opt(obj, "source") {
                Some(s) => json::as_object(s, &sp)?,
                None => return Err(WireError::missing(&sp)),
            };
            let url = match json::req_str(source, "type", &format!("{sp}.type"))?.as_str() {
                "base64" => format!(
                    "data:{};base64,{}",
                    json::req_str(source, "media_type", &format!("{sp}.media_type"))?,
                    json::req_str(source, "data", &format!("{sp}.data"))?
                ),
                "url" => json::req_str(source, "url", &format!("{sp}.url"))?,
                other => {
                    return Err(WireError::new(
                        "unsupported_value",
                        Some(&format!("{sp}.type")),
                        format!("image source type '{other}' is not supported"),
                    ));
                }
            };
            ContentPart::Image {
                url,
                detail: None,
                param: Some(bp.to_owned()),
            }
        }
        "tool_use" => ContentPart::ToolUse {
            id: json::req_str(obj, "id", &format!("{bp}.id"))?,
            name: json::req_str(obj, "name", &format!("{bp}.name"))?,
            input: opt(obj, "input")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        },
        "tool_result" => {
            let rp = format!("{bp}.content");
            let content = match opt(obj, "content") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (k, p) in parts.iter().enumerate() {
                        let pp = format!("{rp}[{k}]");
                        let p = json::as_object(p, &pp)?;
                        if json::opt_str(p, "type", &format!("{pp}.type"))?.as_deref()
                            == Some("text")
                        {
                            text.push_str(&json::req_str(p, "text", &format!("{pp}.text"))?);
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(WireError::invalid_type(
                        &rp,
                        "a string or an array of blocks",
                    ));
                }
            };
            ContentPart::ToolResult {
                tool_use_id: json::req_str(obj, "tool_use_id", &format!("{bp}.tool_use_id"))?,
                content,
                is_error: json::opt_bool(obj, "is_error", &format!("{bp}.is_error"))?
                    .unwrap_or(false),
            }
        }
        // Earlier reasoning carries nothing another backend could use.
        "thinking" | "redacted_thinking" => return Ok(None),
        other => {
            return Err(WireError::new(
                "unsupported_value",
                Some(&format!("{bp}.type")),
                format!("content block type '{other}' is not supported"),
            ));
        }
    };
    Ok(Some(part))
}

fn decode_tools(items: &[Value]) -> Result<Vec<Tool>, WireError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let obj = json::as_object(item, &tp)?;
        out.push(Tool {
            name: json::req_str(obj, "name", &format!("{tp}.name"))?,
            description: json::opt_str(obj, "description", &format!("{tp}.description"))?,
            parameters: match opt(obj, "input_schema") {
                Some(v) => v.clone(),
                None => return Err(WireError::missing(&format!("{tp}.input_schema"))),
            },
        });
    }
    Ok(out)
}

fn decode_tool_choice(value: &Value) -> Result<(Option<ToolChoice>, Option<bool>), WireError> {
    let obj = json::as_object(value, "tool_choice")?;
    let choice = match json::req_str(obj, "type", "tool_choice.type")?.as_str() {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool(json::req_str(obj, "name", "tool_choice.name")?),
        other => {
            return Err(WireError::invalid_value(
                "tool_choice.type",
                format!("invalid 'tool_choice.type' '{other}': expected auto, any, tool or none"),
            ));
        }
    };
    let disable = json::opt_bool(
        obj,
        "disable_parallel_tool_use",
        "tool_choice.disable_parallel_tool_use",
    )?;
    Ok((Some(choice), disable.map(|d| !d)))
}
