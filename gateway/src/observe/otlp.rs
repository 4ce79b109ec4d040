//! OTLP/HTTP trace export: finished spans queue on a bounded channel (a full queue drops the
//! span and counts it, so a request never waits), a background task batches them, encodes an
//! `ExportTraceServiceRequest` as protobuf by hand (the handful of messages it needs, see
//! `opentelemetry/proto/trace/v1/trace.proto`) and posts it to the collector with the pooled
//! upstream client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tokio::sync::mpsc;

use super::trace::{AttrValue, SpanRecord, SpanSink};
use crate::config::OtlpConfig;

/// Spans export counters.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped at a full queue.
    pub dropped: AtomicU64,
    /// Spans in batches the collector refused or could not be reached for.
    pub failed: AtomicU64,
}

/// The exporter's handle: spans go in, a background task sends them.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    /// Put prompt and answer text on spans.
    pub capture_content: bool,
    /// Counters.
    pub stats: Arc<ExportStats>,
}

impl Exporter {
    /// Starts the export task on the current tokio runtime.
    pub fn start(config: &OtlpConfig) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(ExportStats::default());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (name, value) in &config.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        let sender = Sender {
            endpoint: config.endpoint.clone(),
            headers,
            resource: encode_resource(&config.service_name),
            batch_size: config.batch_size.max(1),
            flush_interval: config.flush_interval,
            stats: stats.clone(),
        };
        tokio::spawn(sender.run(rx));
        Arc::new(Self {
            tx,
            capture_content: config.capture_content,
            stats,
        })
    }
}

impl SpanSink for Exporter {
    /// Queues a finished span; a full queue drops it and counts it.
    fn export(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Sender {
    endpoint: String,
    headers: HeaderMap,
    resource: Vec<u8>,
    batch_size: usize,
    flush_interval: Duration,
    stats: Arc<ExportStats>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<SpanRecord>) {
        let client = match HttpClient::new(&HttpConfig {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 4,
            ..HttpConfig::default()
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the trace exporter cannot start; spans are dropped");
                return;
            }
        };
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.batch_size);
        loop {
            // Wait for a first span, then gather until the batch is full or the interval passes.
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            let mut closed = false;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.send(&client, &batch).await;
            batch.clear();
            if closed {
                return;
            }
        }
    }

    async fn send(&self, client: &HttpClient, batch: &[SpanRecord]) {
        let body = Bytes::from(encode_request(&self.resource, batch));
        let n = batch.len() as u64;
        let sent = client
            .post_url(&self.endpoint)
            .headers(&self.headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(response) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(status = %response.status(), spans = n, "the trace collector refused a batch");
            }
            Err(e) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, spans = n, "the trace collector cannot be reached");
            }
        }
    }
}

// ===== protobuf encoding =====

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, VARINT);
    varint(out, v);
}

/// A nested message: encoded into `scratch`, then written length-prefixed.
fn message_field(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string 1; bool 2; int64 3; double 4 }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &AttrValue) {
    message_field(out, field, |kv| {
        bytes_field(kv, 1, key.as_bytes());
        message_field(kv, 2, |any| match value {
            AttrValue::Str(s) => bytes_field(any, 1, s.as_bytes()),
            AttrValue::Bool(b) => varint_field(any, 2, u64::from(*b)),
            AttrValue::Int(i) => varint_field(any, 3, *i as u64),
            AttrValue::F64(f) => fixed64_field(any, 4, f.to_bits()),
        });
    });
}

/// `Resource { repeated KeyValue attributes = 1 }` with `service.name`.
fn encode_resource(service_name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    key_value(
        &mut out,
        1,
        "service.name",
        &AttrValue::Str(service_name.to_owned()),
    );
    key_value(
        &mut out,
        1,
        "service.version",
        &AttrValue::Str(env!("CARGO_PKG_VERSION").to_owned()),
    );
    out
}

/// `Span`: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8,
/// attributes 9, status 15 (`Status { message 2; code 3 }`).
fn encode_span(out: &mut Vec<u8>, span: &SpanRecord) {
    message_field(out, 2, |s| {
        bytes_field(s, 1, &span.trace_id.0);
        bytes_field(s, 2, &span.span_id.0);
        if let Some(parent) = span.parent {
            bytes_field(s, 4, &parent.0);
        }
        bytes_field(s, 5, span.name.as_bytes());
        varint_field(s, 6, span.kind as u64);
        fixed64_field(s, 7, span.start_unix_ns);
        fixed64_field(s, 8, span.end_unix_ns.max(span.start_unix_ns));
        for (key, value) in &span.attrs {
            key_value(s, 9, key, value);
        }
        if let Some(message) = &span.error {
            message_field(s, 15, |st| {
                bytes_field(st, 2, message.as_bytes());
                varint_field(st, 3, 2);
            });
        }
    });
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`, one resource and
/// one scope (`InstrumentationScope { name 1; version 2 }`) holding every span.
pub fn encode_request(resource: &[u8], spans: &[SpanRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * spans.len() + 64);
    message_field(&mut out, 1, |rs| {
        bytes_field(rs, 1, resource);
        message_field(rs, 2, |ss| {
            message_field(ss, 1, |scope| {
                bytes_field(scope, 1, b"tandem");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for span in spans {
                encode_span(ss, span);
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::{SpanId, SpanKind, TraceId};

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 1);
        varint(&mut out, 300);
        varint(&mut out, u64::MAX);
        assert_eq!(&out[..3], &[0x01, 0xAC, 0x02]);
        assert_eq!(out.len(), 3 + 10);
    }

    #[test]
    fn a_span_encodes_to_the_bytes_protobuf_would_write() {
        let span = SpanRecord {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent: None,
            name: "chat".into(),
            kind: SpanKind::Server,
            start_unix_ns: 5,
            end_unix_ns: 7,
            attrs: vec![("k", AttrValue::Int(3))],
            error: None,
        };
        let mut out = Vec::new();
        encode_span(&mut out, &span);
        let mut expected = vec![0x12]; // field 2 (spans), length-delimited
        let mut body = vec![0x0A, 16];
        body.extend([1u8; 16]);
        body.extend([0x12, 8]);
        body.extend([2u8; 8]);
        body.extend([0x2A, 4]);
        body.extend(b"chat");
        body.extend([0x30, 2]); // kind = SERVER
        body.push(0x39); // field 7, fixed64
        body.extend(5u64.to_le_bytes());
        body.push(0x41); // field 8, fixed64
        body.extend(7u64.to_le_bytes());
        // attributes: KeyValue { key "k", value AnyValue { int_value 3 } }
        body.extend([0x4A, 7, 0x0A, 1, b'k', 0x12, 2, 0x18, 3]);
        expected.push(body.len() as u8);
        expected.extend(body);
        assert_eq!(out, expected);
    }
}
