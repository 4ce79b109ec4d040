//! An upstream's error response read into a [`ProviderError`]: the part both wire formats share.
//! Each format reads its own JSON shape (`openai::parse_error_body`,
//! `anthropic::parse_error_body`) and hands the result to [`error_from_body`].

use serde_json::Value;

use crate::error::{ProviderError, ProviderErrorKind};

/// Most bytes of a non-JSON error body quoted in the message.
const QUOTED_BODY: usize = 500;

/// Reads an upstream's error response with status `status`: a JSON body through `read` (the
/// format's own shape), anything else quoted (cut at 500 bytes) in a message that names the
/// status. Retryability follows the status.
pub(crate) fn parse_error_body(
    status: u16,
    body: &[u8],
    provider: &str,
    read: fn(Option<u16>, Value, &str) -> ProviderError,
) -> ProviderError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => read(Some(status), value, provider),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("upstream returned status {status}")
            } else {
                format!(
                    "upstream returned status {status}: {}",
                    truncate(text, QUOTED_BODY)
                )
            };
            ProviderError::status(status, provider, message)
        }
    }
}

/// The error a JSON error body describes, the body kept. `message` is what the body said, if it
/// said anything; otherwise the message names the status. With a status (an error response) its
/// retryability follows the status; without one (an error event inside a stream) `in_stream`
/// decides what the event's own type means.
pub(crate) fn error_from_body(
    status: Option<u16>,
    value: Value,
    provider: &str,
    message: Option<String>,
    in_stream: impl FnOnce(&mut ProviderError),
) -> ProviderError {
    let message = message.unwrap_or_else(|| match status {
        Some(s) => format!("upstream returned status {s}"),
        None => "upstream reported an error".to_owned(),
    });
    let mut err = match status {
        Some(s) => ProviderError::status(s, provider, message),
        None => {
            let mut e = ProviderError::new(ProviderErrorKind::Status, provider, message);
            in_stream(&mut e);
            e
        }
    };
    err.upstream_body = Some(value);
    err
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
