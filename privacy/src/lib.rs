//! Sensitive-data detection and reversible redaction for prompts, with no dependency on the rest
//! of Tandem.
//!
//! A [`Detector`] is built once from a [`DetectorConfig`] (which built-in kinds, custom regexes,
//! dictionary terms) and scans text in one pass of hand-written byte scanners (the `regex` crate
//! runs only the configured patterns). [`Detector::scan`] returns [`Finding`]s: a kind and a byte
//! range, never a copy of the value. A [`Redaction`] replaces findings by placeholders
//! (`<EMAIL_1>`) and remembers the originals; its [`Restorer`] puts them back into an answer,
//! streamed in pieces included (a placeholder split across chunks is held back until it is whole).
//! Names and postal addresses need a model: [`ner::EntityRecognizer`] is the plug-in point.

#![forbid(unsafe_code)]

mod checksum;
mod detector;
mod kind;
pub mod ner;
mod redact;
mod scan;

pub use checksum::{iban_valid, luhn_valid};
pub use detector::{Detector, DetectorConfig};
pub use kind::{Finding, Kind};
pub use redact::{Redaction, Restorer};

/// What can go wrong building a detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A custom pattern does not compile.
    #[error("pattern `{name}`: {message}")]
    Pattern {
        /// The pattern's name.
        name: String,
        /// Why it does not compile.
        message: String,
    },
    /// A pattern name that cannot appear in a placeholder.
    #[error("pattern name `{0}` must be 1 to 32 ASCII letters, digits or underscores")]
    PatternName(String),
    /// An unknown built-in kind.
    #[error("unknown detector `{0}` (known: {known})", known = Kind::BUILTIN_NAMES.join(", "))]
    UnknownKind(String),
    /// An empty dictionary term.
    #[error("dictionary term {0} is empty")]
    EmptyTerm(usize),
}
