//! A small OTLP/HTTP trace collector for tests and benches: accepts `POST /v1/traces` with an
//! `application/x-protobuf` `ExportTraceServiceRequest`, decodes it with its own protobuf reader
//! (independent of the gateway's encoder, so a test checks one against the other) and keeps the
//! spans.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::Value;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id, lowercase hex; none for a root.
    pub parent: Option<String>,
    /// Name.
    pub name: String,
    /// OTLP kind (1 internal, 2 server, 3 client).
    pub kind: u64,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End, ns since the epoch.
    pub end_ns: u64,
    /// Attributes: strings, integers, floats and booleans as JSON values.
    pub attrs: BTreeMap<String, Value>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status: u64,
    /// The resource's `service.name`.
    pub service: String,
}

impl ReceivedSpan {
    /// An attribute as a string, if it is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).and_then(Value::as_str)
    }

    /// An attribute as an integer, if it is one.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attrs.get(key).and_then(Value::as_i64)
    }
}

/// The running collector.
#[derive(Debug, Clone)]
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
}

impl Collector {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let collector = Self {
            addr,
            spans: Arc::default(),
            requests: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(collector)
    }

    /// The traces URL to configure as the OTLP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().clone()
    }

    /// Export requests received.
    pub fn requests(&self) -> u64 {
        *self.requests.lock()
    }

    /// Waits up to `limit` until `done` holds for the spans received; the spans then.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(State(c): State<Collector>, body: Bytes) -> (http::StatusCode, &'static str) {
    *c.requests.lock() += 1;
    match decode_request(&body) {
        Ok(spans) => {
            c.spans.lock().extend(spans);
            (http::StatusCode::OK, "")
        }
        Err(e) => {
            tracing::warn!(error = %e, "undecodable OTLP request");
            (http::StatusCode::BAD_REQUEST, "undecodable")
        }
    }
}

// ===== protobuf reading =====

/// One field of a message: its number and value.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// Skipped (span flags).
    Fixed32,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).context("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

/// The fields of a message, in order.
fn fields(buf: &[u8]) -> anyhow::Result<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let field = match key & 7 {
            0 => Field::Varint(read_varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8).context("truncated fixed64")?;
                pos += 8;
                Field::Fixed64(u64::from_le_bytes(b.try_into()?))
            }
            2 => {
                let n = read_varint(buf, &mut pos)? as usize;
                let b = buf.get(pos..pos + n).context("truncated bytes")?;
                pos += n;
                Field::Bytes(b)
            }
            5 => {
                buf.get(pos..pos + 4).context("truncated fixed32")?;
                pos += 4;
                Field::Fixed32
            }
            w => bail!("unsupported wire type {w}"),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn text(b: &[u8]) -> anyhow::Result<String> {
    Ok(std::str::from_utf8(b)?.to_owned())
}

/// `KeyValue { key 1; AnyValue value 2 }`.
fn key_value(buf: &[u8]) -> anyhow::Result<(String, Value)> {
    let mut key = String::new();
    let mut value = Value::Null;
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) => value = any_value(b)?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// `AnyValue { string 1; bool 2; int64 3; double 4; ... }`.
fn any_value(buf: &[u8]) -> anyhow::Result<Value> {
    let Some((n, f)) = fields(buf)?.into_iter().next() else {
        return Ok(Value::Null);
    };
    Ok(match (n, f) {
        (1, Field::Bytes(b)) => Value::String(text(b)?),
        (2, Field::Varint(v)) => Value::Bool(v != 0),
        (3, Field::Varint(v)) => Value::from(v as i64),
        (4, Field::Fixed64(v)) => Value::from(f64::from_bits(v)),
        _ => Value::Null,
    })
}

/// Decodes an `ExportTraceServiceRequest` into its spans.
pub fn decode_request(buf: &[u8]) -> anyhow::Result<Vec<ReceivedSpan>> {
    let mut spans = Vec::new();
    for (n, f) in fields(buf)? {
        let (1, Field::Bytes(resource_spans)) = (n, f) else {
            continue;
        };
        let mut service = String::new();
        let mut scopes = Vec::new();
        for (n, f) in fields(resource_spans)? {
            match (n, f) {
                (1, Field::Bytes(resource)) => {
                    for (n, f) in fields(resource)? {
                        if let (1, Field::Bytes(kv)) = (n, f) {
                            let (k, v) = key_value(kv)?;
                            if k == "service.name" {
                                service = v.as_str().unwrap_or_default().to_owned();
                            }
                        }
                    }
                }
                (2, Field::Bytes(scope_spans)) => scopes.push(scope_spans),
                _ => {}
            }
        }
        for scope_spans in scopes {
            for (n, f) in fields(scope_spans)? {
                if let (2, Field::Bytes(span)) = (n, f) {
                    spans.push(decode_span(span, &service)?);
                }
            }
        }
    }
    Ok(spans)
}

fn decode_span(buf: &[u8], service: &str) -> anyhow::Result<ReceivedSpan> {
    let mut span = ReceivedSpan {
        trace_id: String::new(),
        span_id: String::new(),
        parent: None,
        name: String::new(),
        kind: 0,
        start_ns: 0,
        end_ns: 0,
        attrs: BTreeMap::new(),
        status: 0,
        service: service.to_owned(),
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => span.trace_id = hex(b),
            (2, Field::Bytes(b)) => span.span_id = hex(b),
            (4, Field::Bytes(b)) if !b.is_empty() => span.parent = Some(hex(b)),
            (5, Field::Bytes(b)) => span.name = text(b)?,
            (6, Field::Varint(v)) => span.kind = v,
            (7, Field::Fixed64(v)) => span.start_ns = v,
            (8, Field::Fixed64(v)) => span.end_ns = v,
            (9, Field::Bytes(kv)) => {
                let (k, v) = key_value(kv)?;
                span.attrs.insert(k, v);
            }
            (15, Field::Bytes(status)) => {
                for (n, f) in fields(status)? {
                    if let (3, Field::Varint(code)) = (n, f) {
                        span.status = code;
                    }
                }
            }
            _ => {}
        }
    }
    if span.trace_id.len() != 32 || span.span_id.len() != 16 {
        bail!("span `{}` without valid ids", span.name);
    }
    Ok(span)
}
