//! Server-sent events: an incremental frame parser and the encoder, shared by both wire formats.

use bytes::{BufMut, Bytes, BytesMut};

/// One parsed server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name, if the frame had one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// An incremental SSE parser: feed it bytes as they arrive, split anywhere.
///
/// Handles `\n`, `\r\n` and `\r` line ends, comments (`: ping`), multi-line `data:`, `event:`
/// and `id:` fields, and a leading byte-order mark.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    pos: usize,
    /// How far `buf` is known to hold no line end, so that a long line arriving in many small
    /// chunks is scanned once, not again from its start on every chunk.
    scanned: usize,
    /// A `\r` ended the last line; a `\n` right after it belongs to it.
    after_cr: bool,
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the wire.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scanned = 0;
        } else if self.pos > 4096 {
            self.buf.drain(..self.pos);
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the bytes so far hold one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if !self.started {
                if self.buf.len() - self.pos < 3
                    && b"\xEF\xBB\xBF".starts_with(&self.buf[self.pos..])
                {
                    return None;
                }
                if self.buf[self.pos..].starts_with(b"\xEF\xBB\xBF") {
                    self.pos += 3;
                }
                self.started = true;
            }
            if self.after_cr && self.pos < self.buf.len() {
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
                self.after_cr = false;
            }
            let from = self.scanned.max(self.pos);
            let Some(end) = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                self.scanned = self.buf.len();
                return None;
            };
            let line_end = from + end;
            if self.buf[line_end] == b'\r' {
                self.after_cr = true;
            }
            let line = String::from_utf8_lossy(&self.buf[self.pos..line_end]).into_owned();
            self.pos = line_end + 1;
            if let Some(event) = self.take_line(&line) {
                return Some(event);
            }
        }
    }

    fn take_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data && self.event.is_none() {
                self.id = None;
                return None;
            }
            self.has_data = false;
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.take(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    /// Whether bytes of an unfinished event are pending (a stream ending now was cut mid-frame).
    pub fn has_partial(&self) -> bool {
        self.has_data || self.event.is_some() || self.pos < self.buf.len()
    }
}

/// Encodes one event: an optional `event:` line, one `data:` line per line of `data`.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    write_event(&mut out, event, data);
    out.freeze()
}

/// Appends one encoded event to `out`.
pub fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// A comment frame (`: text`), used as a keep-alive.
pub fn encode_comment(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}
