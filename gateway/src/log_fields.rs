//! How log lines write span and event fields: `name=value`, the message bare.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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

impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        // Only the value goes through the formatting machinery; the rest is copied.
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
        self.result = result.and_then(|()| write!(w, "{value:?}"));
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
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                r#"request{method=POST request_id=r1}: tandem_gateway::log_fields::tests: upstream failed status=502 why="upstream \"down\"""#
            ),
            "{text}"
        );
    }
}
