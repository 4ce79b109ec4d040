//! The trace model: ids, W3C `traceparent`, attribute values and finished spans, and the live
//! span that reports itself to the exporter when it ends.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// Where finished spans go (the OTLP exporter).
pub trait SpanSink: Send + Sync {
    /// Takes a finished span; never waits.
    fn export(&self, span: SpanRecord);
}

/// The header carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A 16-byte trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero id.
    pub fn random() -> Self {
        let mut bytes = uuid::Uuid::new_v4().into_bytes();
        bytes[0] |= 1;
        Self(bytes)
    }
}

impl SpanId {
    /// A random, non-zero id.
    pub fn random() -> Self {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..]);
        id[0] |= 1;
        Self(id)
    }
}

/// The trace context a client sent, read from `traceparent` (version 00 or a later one read as
/// 00); None for a malformed or all-zero value, which starts a new trace.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2)
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    hex::decode_to_slice(trace, &mut t).ok()?;
    hex::decode_to_slice(parent, &mut p).ok()?;
    if t == [0; 16] || p == [0; 8] {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((TraceId(t), SpanId(p), sampled))
}

/// The `traceparent` value naming `span` of `trace` as the parent (sampled).
pub fn traceparent(trace: TraceId, span: SpanId) -> HeaderValue {
    let text = format!("00-{}-{}-01", hex::encode(trace.0), hex::encode(span.0));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::Str(v.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        Self::Int(v.min(i64::MAX as u64) as i64)
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        Self::F64(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A span's kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside Tandem.
    Internal = 1,
    /// The request Tandem serves.
    Server = 2,
    /// A call Tandem makes to a backend.
    Client = 3,
}

/// A finished span, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent, none for a root.
    pub parent: Option<SpanId>,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// End, ns since the Unix epoch.
    pub end_unix_ns: u64,
    /// Attributes.
    pub attrs: Vec<(&'static str, AttrValue)>,
    /// An error's description (status ERROR), none for a span that went well.
    pub error: Option<String>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The wall-clock time of `at`, an instant in the past or present.
pub fn unix_ns_at(at: Instant) -> u64 {
    unix_ns().saturating_sub(at.elapsed().as_nanos() as u64)
}

/// A span being timed; it is exported when it ends (on [`LiveSpan::end`] or drop).
pub struct LiveSpan {
    record: Option<SpanRecord>,
    started: Instant,
    exporter: Arc<dyn SpanSink>,
}

impl LiveSpan {
    /// Starts a span now.
    pub fn start(
        exporter: Arc<dyn SpanSink>,
        trace_id: TraceId,
        parent: Option<SpanId>,
        name: impl Into<String>,
        kind: SpanKind,
    ) -> Self {
        Self {
            record: Some(SpanRecord {
                trace_id,
                span_id: SpanId::random(),
                parent,
                name: name.into(),
                kind,
                start_unix_ns: unix_ns(),
                end_unix_ns: 0,
                attrs: Vec::new(),
                error: None,
            }),
            started: Instant::now(),
            exporter,
        }
    }

    /// Its id (children name it as their parent).
    pub fn id(&self) -> SpanId {
        self.record.as_ref().map_or(SpanId([0; 8]), |r| r.span_id)
    }

    /// Its trace.
    pub fn trace_id(&self) -> TraceId {
        self.record
            .as_ref()
            .map_or(TraceId([0; 16]), |r| r.trace_id)
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(r) = &mut self.record {
            r.attrs.push((key, value.into()));
        }
    }

    /// Marks the span failed.
    pub fn fail(&mut self, error: impl Into<String>) {
        if let Some(r) = &mut self.record {
            r.error = Some(error.into());
        }
    }

    /// Ends the span now.
    pub fn end(self) {}
}

impl Drop for LiveSpan {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.end_unix_ns = r.start_unix_ns + self.started.elapsed().as_nanos() as u64;
            self.exporter.export(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, sampled) = parse_traceparent(value).unwrap();
        assert!(sampled);
        assert_eq!(traceparent(t, p).to_str().unwrap(), value);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn random_ids_are_never_zero() {
        for _ in 0..100 {
            assert_ne!(TraceId::random().0, [0; 16]);
            assert_ne!(SpanId::random().0, [0; 8]);
        }
    }
}
