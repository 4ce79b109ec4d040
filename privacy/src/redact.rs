//! Reversible redaction: findings replaced by numbered placeholders (`<EMAIL_1>`), the originals
//! kept in the request's [`Redaction`], and a [`Restorer`] that puts them back into an answer,
//! whole or streamed in pieces.

use std::collections::HashMap;
use std::sync::Arc;

use crate::detector::Detector;
use crate::kind::{Finding, Kind};

/// The placeholders of one request and the values they stand for. The same value gets the same
/// placeholder wherever it appears in the request.
#[derive(Debug, Default, Clone)]
pub struct Redaction {
    /// Placeholder -> original.
    originals: HashMap<String, String>,
    /// Original -> placeholder.
    placeholders: HashMap<String, String>,
    /// Per label, the last number given.
    counters: HashMap<String, u32>,
    /// The kinds replaced, each once, in the order first seen.
    kinds: Vec<Kind>,
    /// The longest placeholder, which bounds what a streamed restorer holds back.
    longest: usize,
}

impl Redaction {
    /// An empty redaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// `text` with every finding (from `detector.scan(text)`) replaced by its placeholder.
    pub fn apply(&mut self, detector: &Detector, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            out.push_str(&text[at..f.start]);
            let value = &text[f.start..f.end];
            let placeholder = match self.placeholders.get(value) {
                Some(p) => p.clone(),
                None => {
                    let label = detector.label(f.kind);
                    let n = self.counters.entry(label.to_owned()).or_insert(0);
                    *n += 1;
                    let p = format!("<{label}_{n}>");
                    self.longest = self.longest.max(p.len());
                    self.placeholders.insert(value.to_owned(), p.clone());
                    self.originals.insert(p.clone(), value.to_owned());
                    p
                }
            };
            if !self.kinds.contains(&f.kind) {
                self.kinds.push(f.kind);
            }
            out.push_str(&placeholder);
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Whether anything was replaced.
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// The kinds replaced.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// `text` with every placeholder of this redaction put back.
    pub fn restore(&self, text: &str) -> String {
        self.restore_as(text, false)
    }

    /// `json_text` (JSON, such as a tool call's arguments) with every placeholder put back as
    /// the inside of a JSON string: quotes, backslashes and control characters escaped.
    pub fn restore_json(&self, json_text: &str) -> String {
        self.restore_as(json_text, true)
    }

    fn restore_as(&self, text: &str, json: bool) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(lt) = rest.find('<') {
            out.push_str(&rest[..lt]);
            let candidate = &rest[lt..];
            let close = candidate.bytes().take(self.longest).position(|c| c == b'>');
            match close.and_then(|c| self.originals.get(&candidate[..=c]).map(|o| (o, c + 1))) {
                Some((original, len)) => {
                    if json {
                        escape_json_into(original, &mut out);
                    } else {
                        out.push_str(original);
                    }
                    rest = &candidate[len..];
                }
                None => {
                    out.push('<');
                    rest = &candidate[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// A restorer for an answer streamed in pieces.
    pub fn restorer(self: &Arc<Self>) -> Restorer {
        Restorer {
            redaction: self.clone(),
            held: String::new(),
            json: false,
        }
    }

    /// A restorer for JSON streamed in pieces (see [`Redaction::restore_json`]).
    pub fn json_restorer(self: &Arc<Self>) -> Restorer {
        Restorer {
            json: true,
            ..self.restorer()
        }
    }
}

/// Appends `s` as the inside of a JSON string.
fn escape_json_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

/// Restores placeholders in text that arrives in pieces. A piece that ends inside what may be a
/// placeholder (`<EMA`) is held back until the next piece completes it or shows it is not one.
#[derive(Debug)]
pub struct Restorer {
    redaction: Arc<Redaction>,
    held: String,
    /// Whether the text is JSON (originals go in escaped).
    json: bool,
}

impl Restorer {
    /// The restored text that can be released after `piece`.
    pub fn push(&mut self, piece: &str) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(piece);
        let keep_from = self.partial_tail(&text);
        self.held = text.split_off(keep_from);
        self.redaction.restore_as(&text, self.json)
    }

    /// Whatever is still held back, restored as far as it can be (the answer ended).
    pub fn finish(&mut self) -> String {
        let text = std::mem::take(&mut self.held);
        self.redaction.restore_as(&text, self.json)
    }

    /// Whether text is held back.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Where a possible unfinished placeholder starts at the end of `text` (its length if none).
    fn partial_tail(&self, text: &str) -> usize {
        let Some(lt) = text.rfind('<') else {
            return text.len();
        };
        let tail = &text[lt + 1..];
        let could_be = tail.len() < self.redaction.longest
            && tail
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        if could_be { lt } else { text.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_reversibly_with_one_placeholder_per_value() {
        let d = Detector::builtin();
        let text = "mail a@b.io or a@b.io, card 4111111111111111; x<y";
        let mut r = Redaction::new();
        let redacted = r.apply(&d, text, &d.scan(text));
        assert_eq!(redacted, "mail <EMAIL_1> or <EMAIL_1>, card <CARD_1>; x<y");
        assert_eq!(r.kinds(), [Kind::Email, Kind::PaymentCard]);
        assert_eq!(r.restore(&redacted), text);
    }

    #[test]
    fn json_restoration_escapes_the_original() {
        let d = Detector::builtin();
        let key = "-----BEGIN PRIVATE KEY-----\nMII\"x\n-----END PRIVATE KEY-----";
        let mut r = Redaction::new();
        let redacted = r.apply(&d, key, &d.scan(key));
        assert_eq!(redacted, "<SECRET_1>");
        let json = format!("{{\"k\":\"{redacted}\"}}");
        assert_eq!(
            r.restore_json(&json),
            r#"{"k":"-----BEGIN PRIVATE KEY-----\nMII\"x\n-----END PRIVATE KEY-----"}"#
        );
    }

    #[test]
    fn a_placeholder_split_across_pieces_is_restored() {
        let d = Detector::builtin();
        let text = "to a@b.io and c@d.io <3 <EMAIL_9> <";
        let mut r = Redaction::new();
        let redacted = r.apply(&d, text, &d.scan(text));
        let r = Arc::new(r);
        // Every split into pieces of every size gives the original back.
        for size in 1..redacted.len() {
            let mut restorer = r.restorer();
            let mut out = String::new();
            let bytes = redacted.as_bytes();
            for chunk in bytes.chunks(size) {
                out.push_str(&restorer.push(std::str::from_utf8(chunk).unwrap()));
            }
            out.push_str(&restorer.finish());
            assert_eq!(out, text, "pieces of {size}");
        }
    }
}
