//! Stored Responses API answers, in the shared state store (Redis, or the embedded store in the
//! cache directory) so any replica can read or continue them and they survive a restart. Each
//! is kept for [`RESPONSE_TTL`] and only up to [`MAX_STORED_BYTES`] (a larger one is answered
//! but not kept): the `response` object, the input items of its conversation, and the
//! conversation so far in normalized form, which `previous_response_id` continues.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_cloud_adapters::{ContentPart, Message, Role};

use crate::error::Error;
use crate::store::Store;

/// How long a stored response is kept (as long as OpenAI keeps them).
pub const RESPONSE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest stored response, all of it (conversation included): a conversation longer than
/// this is answered but cannot be continued by id.
pub const MAX_STORED_BYTES: usize = 4 << 20;

/// One stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The `response` object as the client received it.
    pub response: Value,
    /// The input items of the conversation it ends, oldest first (the Responses shape, with
    /// ids): those of the responses it continues, each followed by that response's output
    /// items, then its own.
    pub input_items: Vec<Value>,
    /// The conversation up to and including this response's output, without instructions.
    pub conversation: Vec<Message>,
}

fn key(id: &str) -> String {
    format!("resp:{id}")
}

/// The stored response `id`, if it is kept.
pub async fn load(store: &dyn Store, id: &str) -> Result<Option<StoredResponse>, Error> {
    crate::store::get_json(store, &key(id)).await
}

/// Keeps `stored` under its response's id; one over [`MAX_STORED_BYTES`] is not kept (logged).
pub async fn save(store: &dyn Store, stored: &StoredResponse) -> Result<(), Error> {
    let Some(id) = stored.response.get("id").and_then(Value::as_str) else {
        return Err(Error::Internal("a response without an id".into()));
    };
    let bytes = serde_json::to_vec(stored).map_err(|e| Error::Internal(e.to_string()))?;
    if bytes.len() > MAX_STORED_BYTES {
        tracing::warn!(response = %id, bytes = bytes.len(), "response too large to store");
        return Ok(());
    }
    store
        .set(&key(id), Bytes::from(bytes), Some(RESPONSE_TTL))
        .await
}

/// Forgets the stored response `id`; whether it was kept.
pub async fn delete(store: &dyn Store, id: &str) -> Result<bool, Error> {
    store.delete(&key(id)).await
}

/// Where a response OpenAI's own Responses API keeps came from: the backend that answered it
/// and the model id asked for, so `GET`/`DELETE /v1/responses/{id}` reach that API with that
/// backend's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldUpstream {
    /// The backend's name.
    pub backend: String,
    /// The model id the client asked for (mapped to the upstream's by the backend).
    pub model: String,
}

fn upstream_key(id: &str) -> String {
    format!("resp-up:{id}")
}

/// Notes that the upstream behind `held` keeps response `id` (for as long as one kept here).
pub async fn note_upstream(store: &dyn Store, id: &str, held: &HeldUpstream) -> Result<(), Error> {
    let bytes = serde_json::to_vec(held).map_err(|e| Error::Internal(e.to_string()))?;
    store
        .set(&upstream_key(id), Bytes::from(bytes), Some(RESPONSE_TTL))
        .await
}

/// The upstream that keeps response `id`, when one answered it through here.
pub async fn upstream(store: &dyn Store, id: &str) -> Result<Option<HeldUpstream>, Error> {
    crate::store::get_json(store, &upstream_key(id)).await
}

/// Forgets where response `id` is kept.
pub async fn forget_upstream(store: &dyn Store, id: &str) -> Result<bool, Error> {
    store.delete(&upstream_key(id)).await
}

/// The assistant turn a `response` object's output makes: its text and function calls.
pub fn output_message(response: &Value) -> Option<Message> {
    let mut content = Vec::new();
    for item in response.get("output")?.as_array()? {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        content.push(ContentPart::text(text));
                    }
                }
            }
            Some("function_call") => {
                let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
                let arguments = field("arguments");
                content.push(ContentPart::ToolUse {
                    id: field("call_id").to_owned(),
                    name: field("name").to_owned(),
                    input: serde_json::from_str(arguments)
                        .unwrap_or_else(|_| Value::String(arguments.to_owned())),
                });
            }
            _ => {}
        }
    }
    (!content.is_empty()).then_some(Message {
        role: Role::Assistant,
        content,
        name: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_output_is_the_assistant_turn() {
        let r = json!({"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"}]});
        let m = output_message(&r).unwrap();
        assert_eq!(m.role, Role::Assistant);
        assert_eq!(m.content[0], ContentPart::text("Hi"));
        assert!(
            matches!(&m.content[1], ContentPart::ToolUse { id, input, .. } if id == "c" && input["a"] == 1)
        );
        assert!(output_message(&json!({"output": []})).is_none());
    }
}
