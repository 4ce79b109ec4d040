//! Anthropic's Messages wire format, one file per direction:
//!
//! - `ingress`: a client's Messages request decoded into a [`ChatRequest`](crate::ChatRequest);
//! - `egress`: an answer encoded for an Anthropic client (`message` JSON, SSE events), and the
//!   usage shape both directions share;
//! - `upstream`: the request body sent to an Anthropic server;
//! - `parse`: that server's answer and stream read back;
//! - `error`: Anthropic's error body, sent and read.
//!
//! Anthropic has no legacy completions API.

mod egress;
mod error;
mod ingress;
mod parse;
mod upstream;

pub use egress::{EventEncoder, WireUsage, encode_messages_response, stop_reason_str};
pub use error::{error_body, error_body_bytes, error_type_for_status, parse_error_body};
pub use ingress::decode_messages_request;
pub use parse::{EventDecoder, parse_messages_response, parse_stop_reason};
pub use upstream::{
    ImageSource, MessagesRequest, Metadata, TextBlock, UpstreamBlock, UpstreamMessage,
    UpstreamTool, UpstreamToolChoice,
};

/// The `anthropic-version` header value this module speaks.
pub const API_VERSION: &str = "2023-06-01";
