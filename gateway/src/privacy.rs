//! The privacy step of dispatch: before a request is planned, the detectors read its text (when
//! its route or API key has a privacy action) and the action is decided: `block` answers a 400
//! naming the kinds found, `force-local` serves it on the local model, `redact` makes the copy
//! with placeholders that cloud backends get (see [`crate::executor::redact`]). What was found
//! is reported by kind only: values never reach a header, a log or an error.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use tandem_cloud_adapters::{ChatRequest, ContentPart, Role, WireFormat};
use tandem_privacy::{Detector, Finding, Redaction};

use crate::config::{Config, PrivacyAction, RouteConfig};
use crate::error::Error;
use crate::routing::RequestHints;

/// What the privacy step decided for one request.
#[derive(Debug, Clone, Default)]
pub struct Screened {
    /// The action taken: `Off` when no rule applies or nothing was found.
    pub action: PrivacyAction,
    /// The kinds found, by name, sorted.
    pub kinds: Vec<String>,
    /// For `redact`: the placeholders and the request's copy that carries them.
    pub redacted: Option<(Arc<Redaction>, ChatRequest)>,
}

impl Screened {
    /// Whether the request must be served locally.
    pub fn force_local(&self) -> bool {
        self.action == PrivacyAction::ForceLocal
    }

    /// What was done, for the header and the logs; None when nothing was.
    pub fn note(&self) -> Option<PrivacyNote> {
        (self.action != PrivacyAction::Off).then(|| PrivacyNote {
            action: self.action,
            kinds: self.kinds.clone(),
        })
    }
}

/// What the privacy step did to a request: the action and the kinds found (never the values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyNote {
    /// The action taken.
    pub action: PrivacyAction,
    /// The kinds found, by name, sorted.
    pub kinds: Vec<String>,
}

impl PrivacyNote {
    /// The part of `x-tandem-route` that says it: `privacy=redact (email, payment_card)`.
    pub fn header(&self) -> String {
        format!(
            "privacy={} ({})",
            self.action.as_str(),
            self.kinds.join(", ")
        )
    }

    /// The decision log's and the audit log's field.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"action": self.action.as_str(), "kinds": self.kinds})
    }
}

/// The privacy action of a request on `route`: the stricter of the route's (or `[privacy]
/// default`) and its API key's.
pub fn action_for(
    config: &Config,
    route: Option<&RouteConfig>,
    hints: &RequestHints,
) -> PrivacyAction {
    let route_action = route
        .and_then(|r| r.privacy)
        .unwrap_or(config.privacy.default);
    route_action.max(key_action(config, hints))
}

/// The privacy action the request's API key carries. Keys from the config carry theirs in
/// `router.keys.<sha256>.privacy`; this is the one place a key's rule is read.
fn key_action(config: &Config, hints: &RequestHints) -> PrivacyAction {
    hints
        .key_hash
        .as_ref()
        .and_then(|h| config.router.keys.get(h))
        .and_then(|rules| rules.privacy)
        .unwrap_or_default()
}

/// Runs the detectors over `request` when a privacy action applies to it, and decides: a
/// blocked request is the 400 `sensitive_data`, naming the kinds and the first message that
/// holds them (with the note to log). A `legacy` request (`/v1/completions`, its prompt as one
/// user message) is never redacted, since its body goes upstream as the client wrote it:
/// `redact` keeps it on this host instead.
pub fn screen(
    config: &Config,
    request: &ChatRequest,
    hints: &RequestHints,
    legacy: bool,
) -> Result<Screened, (Error, PrivacyNote)> {
    let action = action_for(config, config.routes.get(&request.model), hints);
    if action == PrivacyAction::Off {
        return Ok(Screened::default());
    }
    let detector = &config.privacy.detector;
    let mut kinds = BTreeSet::new();
    let mut first: Option<usize> = None;
    for (i, message) in request.messages.iter().enumerate() {
        for_each_text(message_texts(&message.content), |text| {
            for f in detector.scan(text) {
                kinds.insert(detector.kind_name(f.kind));
                first.get_or_insert(i);
            }
        });
    }
    let Some(first) = first else {
        return Ok(Screened::default());
    };
    let kinds: Vec<String> = kinds.into_iter().collect();
    let param = if legacy {
        "prompt".to_owned()
    } else {
        message_param(request, first)
    };
    match action {
        PrivacyAction::Block => Err((
            Error::InvalidRequest {
                message: format!(
                    "the request holds sensitive data ({}) in {param}, and this route's privacy rule blocks such requests; remove it and try again",
                    kinds.join(", "),
                ),
                param: Some(param),
                code: Some("sensitive_data"),
            },
            PrivacyNote { action, kinds },
        )),
        PrivacyAction::Redact if legacy => Ok(Screened {
            action: PrivacyAction::ForceLocal,
            kinds,
            redacted: None,
        }),
        PrivacyAction::Redact => {
            let mut redaction = Redaction::new();
            let mut copy = request.clone();
            for message in &mut copy.messages {
                for part in &mut message.content {
                    redact_part(detector, &mut redaction, part);
                }
            }
            Ok(Screened {
                action,
                kinds,
                redacted: Some((Arc::new(redaction), copy)),
            })
        }
        PrivacyAction::ForceLocal | PrivacyAction::Off => Ok(Screened {
            action,
            kinds,
            redacted: None,
        }),
    }
}

/// The client's name for message `i`: Anthropic's system prompt is its own field, and its
/// messages are counted without it.
fn message_param(request: &ChatRequest, i: usize) -> String {
    if request.ingress == Some(WireFormat::Anthropic) {
        if request.messages[i].role == Role::System {
            return "system".into();
        }
        let skipped = request.messages[..i]
            .iter()
            .filter(|m| m.role == Role::System)
            .count();
        return format!("messages[{}].content", i - skipped);
    }
    format!("messages[{i}].content")
}

/// The texts of a message's parts that can carry data to a backend: text, tool results and the
/// string values of tool-call arguments (images are not read).
fn message_texts(parts: &[ContentPart]) -> impl Iterator<Item = Text<'_>> {
    parts.iter().filter_map(|part| match part {
        ContentPart::Text { text } => Some(Text::Plain(text)),
        ContentPart::ToolResult { content, .. } => Some(Text::Plain(content)),
        ContentPart::ToolUse { input, .. } => Some(Text::Json(input)),
        ContentPart::Image { .. } => None,
    })
}

enum Text<'a> {
    Plain(&'a str),
    Json(&'a Value),
}

fn for_each_text<'a>(texts: impl Iterator<Item = Text<'a>>, mut f: impl FnMut(&str)) {
    fn walk(v: &Value, f: &mut dyn FnMut(&str)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(a) => a.iter().for_each(|v| walk(v, f)),
            Value::Object(o) => o.values().for_each(|v| walk(v, f)),
            _ => {}
        }
    }
    for t in texts {
        match t {
            Text::Plain(s) => f(s),
            Text::Json(v) => walk(v, &mut f),
        }
    }
}

fn redact_text(detector: &Detector, redaction: &mut Redaction, text: &mut String) {
    let findings: Vec<Finding> = detector.scan(text);
    if !findings.is_empty() {
        *text = redaction.apply(detector, text, &findings);
    }
}

fn redact_part(detector: &Detector, redaction: &mut Redaction, part: &mut ContentPart) {
    fn walk(detector: &Detector, redaction: &mut Redaction, v: &mut Value) {
        match v {
            Value::String(s) => redact_text(detector, redaction, s),
            Value::Array(a) => a.iter_mut().for_each(|v| walk(detector, redaction, v)),
            Value::Object(o) => o.values_mut().for_each(|v| walk(detector, redaction, v)),
            _ => {}
        }
    }
    match part {
        ContentPart::Text { text } => redact_text(detector, redaction, text),
        ContentPart::ToolResult { content, .. } => redact_text(detector, redaction, content),
        ContentPart::ToolUse { input, .. } => walk(detector, redaction, input),
        ContentPart::Image { .. } => {}
    }
}
