//! The prompt text the policy reads from a request: the predictor was trained on the last user
//! message, and the cascade's answer check scores against the same text.

use tandem_cloud_adapters::{ChatRequest, ContentPart, Role};

/// The text of the last user message (what the predictor was trained on).
pub fn last_user_text(request: &ChatRequest) -> String {
    let last = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .or(request.messages.last());
    let mut text = String::new();
    for part in last.map(|m| m.content.as_slice()).unwrap_or_default() {
        if let ContentPart::Text { text: t } = part {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(t);
        }
    }
    text
}
