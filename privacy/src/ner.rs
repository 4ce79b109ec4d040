//! The plug-in point for named-entity recognition (person names, postal addresses): kinds of
//! data a byte scanner cannot find. No model ships with Tandem for it; an implementation (an
//! ONNX token classifier, a service call) returns spans like the built-in scanners do.

use crate::kind::Finding;

/// Finds entities in text. Implementations must be cheap to share between requests; a model
/// run blocks, so the caller runs it off the async workers.
pub trait EntityRecognizer: Send + Sync {
    /// Spans of `text` that name a person, a place or an address, with the kind to report
    /// (typically a configured [`crate::Kind::Pattern`] slot or [`crate::Kind::Term`]).
    fn recognize(&self, text: &str) -> Vec<Finding>;
}
