//! Ingress of OpenAI's Responses API (`POST /v1/responses`): the request decoded into the
//! normalized [`ChatRequest`] (input items to messages, function calls and their outputs to
//! tool use and results, `text.format` to the structured-output format), with what only OpenAI's
//! own API can run (built-in tools, files, item references) noted, and the input items kept in
//! the Responses shape with ids, for stored responses.

use serde_json::{Map, Value, json};

use crate::error::WireError;
use crate::types::{ChatRequest, ContentPart, Message, Role, Tool, ToolChoice};
use crate::wire::json::{self, arguments_value, opt};

/// Fields the normalized request holds or the answer echoes; the rest go to `extra`, where a
/// backend that has no place for them refuses them unless they are neutral.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "text",
    "metadata",
    "store",
    "previous_response_id",
    "stream",
    "user",
    // Echoed; the gateway never truncates a conversation.
    "truncation",
];

/// A decoded Responses request.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    /// The normalized request over this request's own input (no instructions, nothing from a
    /// previous response): see [`ResponsesRequest::chat_request`].
    pub chat: ChatRequest,
    /// `instructions`: a system message ahead of the conversation, not carried over.
    pub instructions: Option<String>,
    /// The input items in the Responses shape, each with an id.
    pub input_items: Vec<Value>,
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `store` (true unless the client says otherwise, as in OpenAI's API).
    pub store: bool,
    /// `metadata`, echoed.
    pub metadata: Value,
    /// `text` as the answer echoes it (`{"format":{"type":"text"}}` by default).
    pub text: Value,
    /// `tools` as sent, echoed.
    pub tools: Value,
    /// `tool_choice` as sent (`"auto"` by default), echoed.
    pub tool_choice: Value,
    /// `truncation`, echoed (`disabled` by default).
    pub truncation: Value,
    /// The first thing in the request that only OpenAI's own Responses API can run (a built-in
    /// tool, a file, an item reference), by its parameter name, with what it is.
    pub openai_only: Option<(String, String)>,
    /// The body as the client sent it, for OpenAI's own Responses API.
    pub body: Map<String, Value>,
}

impl ResponsesRequest {
    /// The request to run: the instructions as a system message, the conversation of the
    /// previous response (`previous`), then this request's input.
    pub fn chat_request(&self, previous: &[Message]) -> ChatRequest {
        let mut chat = self.chat.clone();
        let mut messages = Vec::with_capacity(previous.len() + chat.messages.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(Message::text(Role::System, instructions.clone()));
        }
        messages.extend(previous.iter().cloned());
        messages.append(&mut chat.messages);
        chat.messages = messages;
        chat
    }
}

/// A fresh item id with the prefix OpenAI uses for its kind (`msg`, `fc`, ...).
pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Decodes a client's `/v1/responses` body.
pub fn decode_responses_request(body: &[u8]) -> Result<ResponsesRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let mut openai_only = None;
    let mut note = |param: String, what: &str| {
        if openai_only.is_none() {
            openai_only = Some((param, what.to_owned()));
        }
    };
    let (messages, input_items) = match opt(&obj, "input") {
        None => return Err(WireError::missing("input")),
        Some(Value::String(s)) => (
            vec![Message::text(Role::User, s.clone())],
            vec![
                json!({"type": "message", "id": item_id("msg"), "role": "user",
                        "content": [{"type": "input_text", "text": s}]}),
            ],
        ),
        Some(Value::Array(items)) => decode_items(items, &mut note)?,
        Some(_) => {
            return Err(WireError::invalid_type(
                "input",
                "a string or an array of input items",
            ));
        }
    };
    let instructions = json::opt_str(&obj, "instructions", "instructions")?;
    let tools = match opt(&obj, "tools") {
        None => Vec::new(),
        Some(v) => decode_tools(json::as_array(v, "tools")?, &mut note)?,
    };
    let tool_choice = match opt(&obj, "tool_choice") {
        None => None,
        Some(v) => decode_tool_choice(v, &mut note)?,
    };
    let (text, response_format) = match opt(&obj, "text") {
        None => (json!({"format": {"type": "text"}}), None),
        Some(v) => decode_text(v)?,
    };
    let metadata = match opt(&obj, "metadata") {
        None => json!({}),
        Some(v) => {
            let m = json::as_object(v, "metadata")?;
            for (k, value) in m {
                if !value.is_string() {
                    return Err(WireError::invalid_type(
                        &format!("metadata.{k}"),
                        "a string",
                    ));
                }
            }
            v.clone()
        }
    };
    let previous_response_id = json::opt_str(&obj, "previous_response_id", "previous_response_id")?;
    let store = json::opt_bool(&obj, "store", "store")?.unwrap_or(true);
    let stream = json::opt_bool(&obj, "stream", "stream")?.unwrap_or(false);
    let truncation = match json::opt_str_ref(&obj, "truncation", "truncation")? {
        None => json!("disabled"),
        Some(t @ ("auto" | "disabled")) => json!(t),
        Some(other) => {
            return Err(WireError::invalid_value(
                "truncation",
                format!("invalid 'truncation' '{other}': expected auto or disabled"),
            ));
        }
    };
    let extra = obj
        .iter()
        .filter(|(key, _)| !KNOWN_FIELDS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let chat = ChatRequest {
        model,
        messages,
        max_tokens: json::token_limit(
            json::opt_u32(&obj, "max_output_tokens", "max_output_tokens")?,
            "max_output_tokens",
        )?,
        temperature: json::within(
            json::opt_f32(&obj, "temperature", "temperature")?,
            "temperature",
            0.0,
            2.0,
        )?,
        top_p: json::within(json::opt_f32(&obj, "top_p", "top_p")?, "top_p", 0.0, 1.0)?,
        stream,
        include_usage: stream,
        tools,
        tool_choice,
        parallel_tool_calls: json::opt_bool(&obj, "parallel_tool_calls", "parallel_tool_calls")?,
        response_format,
        user: json::opt_str(&obj, "user", "user")?,
        // Not a chat body: nothing in `extra` may go upstream as a chat field.
        ingress: None,
        extra,
        ..ChatRequest::default()
    };
    Ok(ResponsesRequest {
        chat,
        instructions,
        input_items,
        previous_response_id,
        store,
        metadata,
        text,
        tools: opt(&obj, "tools").cloned().unwrap_or_else(|| json!([])),
        tool_choice: opt(&obj, "tool_choice")
            .cloned()
            .unwrap_or_else(|| json!("auto")),
        truncation,
        openai_only,
        body: obj,
    })
}

type Note<'a> = dyn FnMut(String, &str) + 'a;

/// Input items to messages (function calls joined onto the assistant turn before them) and to
/// the Responses shape with ids.
fn decode_items(
    items: &[Value],
    note: &mut Note<'_>,
) -> Result<(Vec<Message>, Vec<Value>), WireError> {
    let mut messages: Vec<Message> = Vec::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ip = format!("input[{i}]");
        let obj = json::as_object(item, &ip)?;
        let mut item = obj.clone();
        let kind = match json::opt_str_ref(obj, "type", &format!("{ip}.type"))? {
            Some(k) => k,
            None if obj.contains_key("role") => "message",
            None => return Err(WireError::missing(&format!("{ip}.type"))),
        };
        match kind {
            "message" => {
                let (message, content) = decode_message(obj, &ip, note)?;
                item.insert("type".into(), json!("message"));
                item.insert("content".into(), Value::Array(content));
                item.entry("id").or_insert_with(|| json!(item_id("msg")));
                messages.push(message);
            }
            "function_call" => {
                let call_id = json::req_str(obj, "call_id", &format!("{ip}.call_id"))?;
                let name = json::req_str(obj, "name", &format!("{ip}.name"))?;
                let arguments = json::req_str(obj, "arguments", &format!("{ip}.arguments"))?;
                let part = ContentPart::ToolUse {
                    id: call_id,
                    name,
                    input: arguments_value(&arguments),
                };
                match messages.last_mut() {
                    Some(m) if m.role == Role::Assistant => m.content.push(part),
                    _ => messages.push(Message {
                        role: Role::Assistant,
                        content: vec![part],
                        name: None,
                    }),
                }
                item.entry("id").or_insert_with(|| json!(item_id("fc")));
                item.entry("status").or_insert_with(|| json!("completed"));
            }
            "function_call_output" => {
                let call_id = json::req_str(obj, "call_id", &format!("{ip}.call_id"))?;
                let op = format!("{ip}.output");
                let output =
                    match opt(obj, "output") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => {
                            let mut text = String::new();
                            for (j, p) in parts.iter().enumerate() {
                                let pp = format!("{op}[{j}]");
                                let p = json::as_object(p, &pp)?;
                                match json::req_str_ref(p, "type", &format!("{pp}.type"))? {
                                    "input_text" | "output_text" => text.push_str(
                                        json::req_str_ref(p, "text", &format!("{pp}.text"))?,
                                    ),
                                    other => note(pp.clone(), other),
                                }
                            }
                            text
                        }
                        Some(_) => return Err(WireError::invalid_type(&op, "a string")),
                        None => return Err(WireError::missing(&op)),
                    };
                messages.push(Message {
                    role: Role::Tool,
                    content: vec![ContentPart::ToolResult {
                        tool_use_id: call_id,
                        content: output,
                        is_error: false,
                    }],
                    name: None,
                });
                item.entry("id").or_insert_with(|| json!(item_id("fco")));
            }
            // Earlier reasoning carries nothing another backend could use.
            "reasoning" => continue,
            other => {
                // Built-in tool calls, item references: state only OpenAI holds.
                note(ip.clone(), other);
                continue;
            }
        }
        kept.push(Value::Object(item));
    }
    Ok((messages, kept))
}

/// One message item: its normalized message, and its content as Responses parts.
fn decode_message(
    obj: &Map<String, Value>,
    ip: &str,
    note: &mut Note<'_>,
) -> Result<(Message, Vec<Value>), WireError> {
    let rp = format!("{ip}.role");
    let role = match json::req_str_ref(obj, "role", &rp)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" | "developer" => Role::System,
        other => {
            return Err(WireError::invalid_value(
                &rp,
                format!(
                    "invalid role '{other}' in '{rp}': expected user, assistant, system or developer"
                ),
            ));
        }
    };
    let text_type = if role == Role::Assistant {
        "output_text"
    } else {
        "input_text"
    };
    let cp = format!("{ip}.content");
    let mut parts = Vec::new();
    let mut content = Vec::new();
    match opt(obj, "content") {
        None => return Err(WireError::missing(&cp)),
        Some(Value::String(s)) => {
            parts.push(ContentPart::text(s.clone()));
            content.push(json!({"type": text_type, "text": s}));
        }
        Some(Value::Array(items)) => {
            for (j, part) in items.iter().enumerate() {
                let pp = format!("{cp}[{j}]");
                let p = json::as_object(part, &pp)?;
                match json::req_str_ref(p, "type", &format!("{pp}.type"))? {
                    "input_text" | "output_text" | "text" => {
                        parts.push(ContentPart::text(json::req_str(
                            p,
                            "text",
                            &format!("{pp}.text"),
                        )?));
                    }
                    "refusal" => parts.push(ContentPart::text(json::req_str(
                        p,
                        "refusal",
                        &format!("{pp}.refusal"),
                    )?)),
                    "input_image" => {
                        match json::opt_str(p, "image_url", &format!("{pp}.image_url"))? {
                            Some(url) => parts.push(ContentPart::Image {
                                url,
                                detail: json::opt_str(p, "detail", &format!("{pp}.detail"))?,
                                param: Some(pp.clone()),
                            }),
                            // A file id names a file only OpenAI holds.
                            None => note(pp.clone(), "input_image"),
                        }
                    }
                    other => note(pp.clone(), other),
                }
                content.push(part.clone());
            }
        }
        Some(_) => {
            return Err(WireError::invalid_type(
                &cp,
                "a string or an array of content parts",
            ));
        }
    }
    let message = Message {
        role,
        content: parts,
        name: None,
    };
    Ok((message, content))
}

/// Function tools; built-in ones (web search, file search, code interpreter, computer use, ...)
/// are noted for OpenAI's own API.
fn decode_tools(items: &[Value], note: &mut Note<'_>) -> Result<Vec<Tool>, WireError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let obj = json::as_object(item, &tp)?;
        match json::req_str_ref(obj, "type", &format!("{tp}.type"))? {
            "function" => out.push(Tool {
                name: json::req_str(obj, "name", &format!("{tp}.name"))?,
                description: json::opt_str(obj, "description", &format!("{tp}.description"))?,
                parameters: opt(obj, "parameters")
                    .filter(|p| !p.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            other => note(tp, other),
        }
    }
    Ok(out)
}

fn decode_tool_choice(value: &Value, note: &mut Note<'_>) -> Result<Option<ToolChoice>, WireError> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(WireError::invalid_value(
                "tool_choice",
                format!(
                    "invalid 'tool_choice' '{other}': expected auto, none, required or an object"
                ),
            )),
        },
        Value::Object(obj) => match json::req_str_ref(obj, "type", "tool_choice.type")? {
            "function" => Ok(Some(ToolChoice::Tool(json::req_str(
                obj,
                "name",
                "tool_choice.name",
            )?))),
            other => {
                note("tool_choice".into(), other);
                Ok(None)
            }
        },
        _ => Err(WireError::invalid_type(
            "tool_choice",
            "a string or an object",
        )),
    }
}

/// `text`: its echo, and `text.format` as the chat format (`json_schema`'s fields nested as in
/// chat completions).
fn decode_text(value: &Value) -> Result<(Value, Option<Value>), WireError> {
    let obj = json::as_object(value, "text")?;
    let Some(format) = opt(obj, "format") else {
        let mut echo = obj.clone();
        echo.insert("format".into(), json!({"type": "text"}));
        return Ok((Value::Object(echo), None));
    };
    let f = json::as_object(format, "text.format")?;
    let chat_format = match json::req_str_ref(f, "type", "text.format.type")? {
        "text" => None,
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let schema =
                opt(f, "schema").ok_or_else(|| WireError::missing("text.format.schema"))?;
            let mut inner = Map::new();
            inner.insert(
                "name".into(),
                json!(json::req_str(f, "name", "text.format.name")?),
            );
            inner.insert("schema".into(), schema.clone());
            for key in ["strict", "description"] {
                if let Some(v) = opt(f, key) {
                    inner.insert(key.into(), v.clone());
                }
            }
            Some(json!({"type": "json_schema", "json_schema": inner}))
        }
        other => {
            return Err(WireError::invalid_value(
                "text.format.type",
                format!(
                    "invalid 'text.format.type' '{other}': expected text, json_object or json_schema"
                ),
            ));
        }
    };
    Ok((value.clone(), chat_format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_the_conversation() {
        let r = decode_responses_request(
            br#"{"model":"m","instructions":"Be brief.","input":[
                {"role":"user","content":"What is the weather?"},
                {"type":"function_call","call_id":"call_1","name":"weather","arguments":"{\"city\":\"Paris\"}"},
                {"type":"function_call_output","call_id":"call_1","output":"sunny"},
                {"type":"message","role":"user","content":[{"type":"input_text","text":"And?"},
                  {"type":"input_image","image_url":"https://x/y.png"}]}],
              "tools":[{"type":"function","name":"weather","parameters":{"type":"object"}}],
              "text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"}}},
              "max_output_tokens":64,"store":false}"#,
        )
        .unwrap();
        assert!(!r.store);
        assert_eq!(r.chat.max_tokens, Some(64));
        let chat = r.chat_request(&[]);
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            chat.first_image_param().as_deref(),
            Some("input[3].content[1]")
        );
        assert_eq!(chat.response_format.unwrap()["json_schema"]["name"], "w");
        assert_eq!(r.input_items.len(), 4);
        assert!(r.input_items.iter().all(|i| i["id"].is_string()));
        assert!(r.openai_only.is_none());
    }

    #[test]
    fn built_in_tools_are_noted_for_openai() {
        let r = decode_responses_request(
            br#"{"model":"m","input":"hi","tools":[{"type":"function","name":"f"},{"type":"web_search_preview"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.openai_only,
            Some(("tools[1]".to_owned(), "web_search_preview".to_owned()))
        );
        for (body, param) in [
            (r#"{"model":"m"}"#, "input"),
            (
                r#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"yaml"}}}"#,
                "text.format.type",
            ),
            (
                r#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#,
                "input[0].call_id",
            ),
        ] {
            let err = decode_responses_request(body.as_bytes()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {err:?}");
        }
    }
}
