//! How log lines write span and event fields: `name=value`, the message bare.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Sets up logging for a command line: to stderr, at `RUST_LOG`'s levels (`info` without it),
/// with colour only on a terminal and fields written by [`LogFields`].
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in log files, and not formatted on every span.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .fmt_fields(LogFields)
        .init();
}

/// The gateway's field formatter. The default one styles every field name for a terminal even
/// with colour off, which cost more than the rest of each request's span; fields the `log` crate
/// bridge adds (`log.target` and the like) are left out, as the default does.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFields;

impl<'w> FormatFields<'w> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// Writes one field; `message` goes bare. Only the value goes through the formatting
    /// machinery, and through [`Escaped`].
    fn write(&mut self, name: &str, value: fmt::Arguments<'_>) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let w = &mut self.writer;
        let mut result = Ok(());
        if !self.first {
            result = w.write_char(' ');
        }
        self.first = false;
        if name != "message" {
            result = result
                .and_then(|()| w.write_str(name))
                .and_then(|()| w.write_char('='));
        }
        self.result = result.and_then(|()| fmt::write(&mut Escaped(w), value));
    }
}

impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), format_args!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field.name(), format_args!("{value}"));
        let mut source = value.source();
        if source.is_none() {
            return;
        }
        let sources = format!("{}.sources", field.name());
        let mut chain = String::new();
        while let Some(s) = source {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&s.to_string());
            source = s.source();
        }
        self.write(&sources, format_args!("{chain}"));
    }
}

/// Writes through with control characters escaped (a newline as `\n`, ESC as `\u{1b}`), so a
/// value that came from a client or an upstream cannot forge log lines or terminal sequences.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Nearly every value holds no control character, and testing bytes is far cheaper than
        // decoding chars. The C1 controls (U+0080 to U+009F) are the only ones past ASCII, and
        // their UTF-8 starts with 0xC2.
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        let mut rest = s;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                write!(self.0, "{}", c.escape_default())?;
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn spans_and_events_read_as_name_value_pairs() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(LogFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", method = %"POST", request_id = %"r1");
            let _entered = span.enter();
            tracing::warn!(status = 502, why = "upstream \"down\"", "upstream failed");
            tracing::warn!(body = %"a\nforged line \u{1b}[31m", "bad body");
            let err = std::io::Error::other(std::fmt::Error);
            tracing::warn!(
                error = &err as &(dyn std::error::Error + 'static),
                "chained"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                r#"request{method=POST request_id=r1}: tandem_gateway::log_fields::tests: upstream failed status=502 why="upstream \"down\"""#
            ),
            "{text}"
        );
        assert!(
            text.contains(r"bad body body=a\nforged line \u{1b}[31m"),
            "{text}"
        );
        assert!(
            text.contains("chained error=an error occurred when formatting an argument"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
