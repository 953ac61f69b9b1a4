//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), coloured only
//! for a person at a terminal, JSON with every field at the top level for log pipelines; the
//! one way errors are written out with their causes; and the name this process goes by.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug)]
pub enum LogFormat {
    /// For a person: one readable line per event.
    Text,
    /// For log pipelines: one JSON object per line.
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = wants_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    build_subscriber(format, colour, filter, std::io::stderr).init();
}

/// Colours only for a terminal, and never when `NO_COLOR` is set to anything but the empty
/// string (https://no-color.org).
fn wants_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// The subscriber `init` installs, writing to `writer`. JSON lines carry the event's fields
/// beside `timestamp`, `level`, `target` and `message` (not under `fields`), and the span
/// fields under `span`/`spans`, as Loki and Elasticsearch pipelines expect.
fn build_subscriber<W>(
    format: LogFormat,
    colour: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colour);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// An error and its causes, `outer: inner: innermost`, for messages that leave the process.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// This process's host name — its pod's name in Kubernetes — to tell replicas apart in Events,
/// the leader Lease and load reports.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME").ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_one_event(format: LogFormat, colour: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = build_subscriber(format, colour, EnvFilter::new("info"), move || {
            writer.clone()
        });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", endpoint = "team-a/demo");
            let _entered = span.enter();
            tracing::info!(
                url = "nats://127.0.0.1:4222",
                attempt = 3,
                "waiting for NATS"
            );
        });
        let bytes = captured.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    #[test]
    fn json_lines_carry_event_fields_at_the_top_level() {
        let line = log_one_event(LogFormat::Json, false);
        let record: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert_eq!(record["message"], "waiting for NATS", "{record}");
        assert_eq!(record["url"], "nats://127.0.0.1:4222", "{record}");
        assert_eq!(record["attempt"], 3, "{record}");
        assert_eq!(record["level"], "INFO", "{record}");
        assert!(record.get("fields").is_none(), "{record}");
        assert_eq!(record["span"]["endpoint"], "team-a/demo", "{record}");
    }

    #[test]
    fn text_without_colour_has_no_escape_codes() {
        let plain = log_one_event(LogFormat::Text, false);
        assert!(plain.contains("waiting for NATS"), "{plain}");
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(log_one_event(LogFormat::Text, true).contains('\x1b'));
    }

    #[test]
    fn colour_only_for_a_terminal_without_no_color() {
        assert!(wants_colour(true, None));
        assert!(wants_colour(true, Some("".into())));
        assert!(!wants_colour(true, Some("1".into())));
        assert!(!wants_colour(false, None));
    }
}
