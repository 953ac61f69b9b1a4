//! Bounds on everything ferry keeps in JetStream. Each endpoint's task queue holds at most a
//! set number of tasks (and, if configured, bytes) and refuses new ones when full, so one
//! flooded endpoint cannot fill the server; the shared stream and buckets bound the size of
//! each entry (the callbacks stream holds scheduled retries, which JetStream allows only with
//! discard-old: a count bound there would drop waiting callbacks, so it is bounded by age).
//!
//! Byte totals are opt-in: JetStream reserves a stream's `max_bytes` of storage up front, so a
//! default per-endpoint byte total would exhaust a small server after a few endpoints.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};

/// Bounds of each endpoint's task queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Queued tasks (waiting or held by a worker) per endpoint.
    pub max_tasks: i64,
    /// Bytes of queued tasks per endpoint; `None` for no bound beyond the server's.
    pub max_bytes: Option<i64>,
    /// How long a submission waits for the server to take its task (through a reconnection)
    /// before it is answered with an error.
    pub submit_patience: std::time::Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_tasks: 100_000,
            max_bytes: None,
            submit_patience: std::time::Duration::from_secs(10),
        }
    }
}

impl QueueLimits {
    /// The stream's `max_bytes`: -1 is JetStream's "unbounded".
    pub(super) fn stream_max_bytes(&self) -> i64 {
        self.max_bytes.unwrap_or(-1)
    }
}

/// Largest callback job: a task's result (at most the 10 MiB body limit) and its envelope.
pub(super) const CALLBACK_JOB_MAX_BYTES: i32 = 16 * 1024 * 1024;
/// Largest entry of the results and dead-letter buckets: a record carrying a result.
pub(super) const RECORD_MAX_BYTES: i32 = 16 * 1024 * 1024;
/// Largest endpoint callback policy (signing secrets, credentials, host allowlist).
pub(super) const POLICY_MAX_BYTES: i32 = 1024 * 1024;

/// True when a publish was refused because the stream is at one of its bounds.
pub(super) fn is_full(error: &PublishError) -> bool {
    // The server answers a full discard-new stream with "maximum messages exceeded" or
    // "maximum bytes exceeded" (a failed store); the client reports both as `Other`.
    let refusal = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>());
    matches!(error.kind(), PublishErrorKind::Other)
        && refusal.is_some_and(|refusal| {
            let text = refusal.to_string();
            text.contains("maximum") && text.contains("exceeded")
        })
}
