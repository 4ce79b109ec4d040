//! Upstream: the `/v1/messages` request body sent to an Anthropic server, borrowed from a
//! [`ChatRequest`].

use serde::Serialize;
use serde_json::{Map, Value};

use crate::types::{ChatRequest, ContentPart, Role, ToolChoice, WireFormat};

/// A `/v1/messages` request body, borrowed from a [`ChatRequest`].
#[derive(Debug, Serialize)]
pub struct MessagesRequest<'a> {
    /// The upstream model name.
    pub model: &'a str,
    /// Most tokens to generate (required by the API).
    pub max_tokens: u32,
    /// The conversation (user and assistant turns).
    pub messages: Vec<UpstreamMessage<'a>>,
    /// System prompt blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<TextBlock<'a>>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    /// Whether to stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Sampling temperature (Anthropic accepts 0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<UpstreamTool<'a>>,
    /// Tool choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<UpstreamToolChoice<'a>>,
    /// End-user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata<'a>>,
    /// Fields the client sent in Anthropic format that this module does not model.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<&'a Map<String, Value>>,
}

/// A text block.
#[derive(Debug, Serialize)]
pub struct TextBlock<'a> {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: &'a str,
}

/// `metadata`.
#[derive(Debug, Serialize)]
pub struct Metadata<'a> {
    /// End-user id.
    pub user_id: &'a str,
}

/// One upstream turn.
#[derive(Debug, Serialize)]
pub struct UpstreamMessage<'a> {
    /// `user` or `assistant`.
    pub role: &'static str,
    /// Content blocks.
    pub content: Vec<UpstreamBlock<'a>>,
}

/// A content block.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamBlock<'a> {
    /// Text.
    Text {
        /// The text.
        text: &'a str,
    },
    /// An image.
    Image {
        /// Where the image is.
        source: ImageSource<'a>,
    },
    /// A tool call made by the assistant.
    ToolUse {
        /// Call id.
        id: &'a str,
        /// Tool name.
        name: &'a str,
        /// Arguments.
        input: &'a Value,
    },
    /// A tool's result.
    ToolResult {
        /// The call answered.
        tool_use_id: &'a str,
        /// The result text.
        content: &'a str,
        /// Whether the tool failed.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// An image source.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource<'a> {
    /// Inline data.
    Base64 {
        /// MIME type.
        media_type: &'a str,
        /// Base64 data.
        data: &'a str,
    },
    /// A URL.
    Url {
        /// The URL.
        url: &'a str,
    },
}

/// A tool definition.
#[derive(Debug, Serialize)]
pub struct UpstreamTool<'a> {
    /// Name.
    pub name: &'a str,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// JSON Schema of the input.
    pub input_schema: &'a Value,
}

/// `tool_choice`.
#[derive(Debug, Serialize)]
pub struct UpstreamToolChoice<'a> {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The tool, for `tool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// At most one tool call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

impl<'a> MessagesRequest<'a> {
    /// The upstream body for `req`, sent to `model`; `default_max_tokens` fills in the
    /// required `max_tokens` when the client gave none.
    pub fn new(
        req: &'a ChatRequest,
        model: &'a str,
        stream: bool,
        default_max_tokens: u32,
    ) -> Self {
        let mut system = Vec::new();
        let mut messages: Vec<UpstreamMessage<'a>> = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            if m.role == Role::System {
                for part in &m.content {
                    if let ContentPart::Text { text } = part
                        && !text.is_empty()
                    {
                        system.push(TextBlock { kind: "text", text });
                    }
                }
                continue;
            }
            let role = if m.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            let mut blocks: Vec<UpstreamBlock<'a>> = Vec::with_capacity(m.content.len());
            // Tool results must open the user turn that answers the calls.
            for part in &m.content {
                if let ContentPart::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = part
                {
                    blocks.push(UpstreamBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error: *is_error,
                    });
                }
            }
            for part in &m.content {
                match part {
                    // The API refuses empty text blocks.
                    ContentPart::Text { text } if text.is_empty() => {}
                    ContentPart::Text { text } => blocks.push(UpstreamBlock::Text { text }),
                    ContentPart::Image { url, .. } => blocks.push(UpstreamBlock::Image {
                        source: image_source(url),
                    }),
                    ContentPart::ToolUse { id, name, input } => {
                        blocks.push(UpstreamBlock::ToolUse { id, name, input })
                    }
                    ContentPart::ToolResult { .. } => {}
                }
            }
            if blocks.is_empty() {
                continue;
            }
            // Consecutive turns of one role (several `tool` messages) merge into one turn.
            match messages.last_mut() {
                Some(last) if last.role == role => last.content.extend(blocks),
                _ => messages.push(UpstreamMessage {
                    role,
                    content: blocks,
                }),
            }
        }
        let tool_choice = match (&req.tool_choice, req.parallel_tool_calls) {
            (None, None) | (None, Some(true)) => None,
            (choice, parallel) => {
                let (kind, name) = match choice {
                    None | Some(ToolChoice::Auto) => ("auto", None),
                    Some(ToolChoice::None) => ("none", None),
                    Some(ToolChoice::Required) => ("any", None),
                    Some(ToolChoice::Tool(name)) => ("tool", Some(name.as_str())),
                };
                let disable = match (kind, parallel) {
                    ("none", _) => None,
                    (_, Some(p)) => Some(!p),
                    (_, None) => None,
                };
                Some(UpstreamToolChoice {
                    kind,
                    name,
                    disable_parallel_tool_use: disable,
                })
            }
        };
        MessagesRequest {
            model,
            max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
            messages,
            system,
            stop_sequences: &req.stop,
            stream,
            temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
            top_p: req.top_p,
            top_k: req.top_k,
            tools: req
                .tools
                .iter()
                .map(|t| UpstreamTool {
                    name: &t.name,
                    description: t.description.as_deref(),
                    input_schema: &t.parameters,
                })
                .collect(),
            tool_choice,
            metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
            extra: req.extra_for(WireFormat::Anthropic),
        }
    }
}

fn image_source(url: &str) -> ImageSource<'_> {
    if let Some((media_type, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return ImageSource::Base64 { media_type, data };
    }
    ImageSource::Url { url }
}
