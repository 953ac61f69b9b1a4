//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`); the one way
//! errors are written out with their causes; and the name this process goes by.

use tracing_subscriber::{EnvFilter, fmt};

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
