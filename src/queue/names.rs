//! Every NATS name ferry uses, in one place.

use sha2::{Digest, Sha256};

use crate::crd::EndpointId;
use crate::task::TaskId;

/// The stream that holds a key-value bucket, as JetStream names it.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject a key (or, with a trailing `>`, a key prefix) of a bucket is written on.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

pub const RESULTS_BUCKET: &str = "ferry-results";
pub const CALLBACKS_STREAM: &str = "ferry-callbacks";
pub const CALLBACKS_CONSUMER: &str = "dispatcher";
pub const DEAD_LETTERS_BUCKET: &str = "ferry-dead-letters";
pub const POLICIES_BUCKET: &str = "ferry-callback-policies";
pub const TASKS_CONSUMER: &str = "workers";

pub fn tasks_stream(endpoint: &EndpointId) -> String {
    format!("ferry-tasks-{endpoint}")
}

/// The subject a task is queued on: its own, so that cancelling it removes it from the queue.
pub fn task_subject(task: &TaskId) -> String {
    format!("ferry.tasks.{}.{}", task.endpoint(), task.within_endpoint())
}

/// The task queued on `subject` (what [`task_subject`] makes of it).
pub fn task_of_subject(subject: &str) -> Option<TaskId> {
    let (endpoint, unique) = subject.strip_prefix("ferry.tasks.")?.split_once('.')?;
    TaskId::within(&EndpointId::parse(endpoint)?, unique)
}

/// The subjects of `endpoint`'s tasks (`*` for every endpoint's).
pub fn task_subjects_pattern(endpoint: &str) -> String {
    format!("ferry.tasks.{endpoint}.*")
}

/// The one subject every task of `endpoint` was queued on before each had its own: the queue
/// still takes it from a gateway of that version during an upgrade.
pub fn shared_tasks_subject(endpoint: &EndpointId) -> String {
    format!("ferry.tasks.{endpoint}")
}

/// The stream of an endpoint's task ids in the order they were queued: what a newest-first
/// listing reads backwards by sequence.
pub fn index_stream(endpoint: &EndpointId) -> String {
    format!("ferry-index-{endpoint}")
}

pub fn index_subject(endpoint: &EndpointId) -> String {
    format!("ferry.index.{endpoint}")
}

/// Where submitters announce that an endpoint has new tasks.
pub fn arrivals_subject(endpoint: &EndpointId) -> String {
    format!("ferry.arrivals.{endpoint}")
}

/// Every endpoint's arrivals subject.
pub const ALL_ARRIVALS_SUBJECTS: &str = "ferry.arrivals.*";

/// The endpoint an arrivals subject belongs to.
pub fn endpoint_of_arrivals_subject(subject: &str) -> Option<EndpointId> {
    subject
        .strip_prefix("ferry.arrivals.")
        .and_then(EndpointId::parse)
}

/// Where gateways report the requests they hold for a sync or streaming endpoint.
pub fn load_subject(endpoint: &EndpointId) -> String {
    format!("ferry.load.{endpoint}")
}

pub const ALL_LOAD_SUBJECTS: &str = "ferry.load.*";

/// Where an endpoint's workers announce themselves to gateways serving fixed manifests.
pub fn workers_subject(endpoint: &EndpointId) -> String {
    format!("ferry.workers.{endpoint}")
}

pub const ALL_WORKERS_SUBJECTS: &str = "ferry.workers.*";

/// When each endpoint was first served by a gateway of fixed manifests, so every such gateway
/// reports one creation time, across restarts.
pub const ENDPOINTS_BUCKET: &str = "ferry-endpoints";

pub fn callbacks_subject(endpoint: &EndpointId) -> String {
    format!("ferry.callbacks.{endpoint}")
}

pub const CALLBACKS_SUBJECTS: &str = "ferry.callbacks.>";

/// The endpoint a callbacks subject belongs to.
pub fn endpoint_of_callbacks_subject(subject: &str) -> Option<EndpointId> {
    subject
        .strip_prefix("ferry.callbacks.")
        .and_then(EndpointId::parse)
}

/// The last hour of callback attempt outcomes (`outcomes`).
pub const CALLBACK_OUTCOMES_STREAM: &str = "ferry-callback-outcomes";

/// Where one dispatcher (`dispatcher`, an id of its own) keeps how many of its attempts at
/// callbacks of `endpoint` in one `minute` (since the Unix epoch) ended in `outcome`.
pub fn callback_outcome_subject(
    endpoint: &str,
    outcome: &str,
    minute: u64,
    dispatcher: &str,
) -> String {
    format!("ferry.callback-outcomes.{endpoint}.{outcome}.{minute}.{dispatcher}")
}

/// Every endpoint's callback outcome counts.
pub const ALL_CALLBACK_OUTCOME_SUBJECTS: &str = "ferry.callback-outcomes.>";

/// The callback outcome counts of `endpoint`.
pub fn callback_outcome_subjects_of(endpoint: &EndpointId) -> String {
    format!("ferry.callback-outcomes.{endpoint}.>")
}

/// Where a delayed retry waits (as a scheduled message) until it is due.
pub fn retry_subject(task: &TaskId) -> String {
    format!("ferry.retry.{task}")
}

pub const RETRY_SUBJECTS: &str = "ferry.retry.>";

/// The object bucket of an endpoint's payloads too large for one message (task args and
/// results): one bucket per endpoint, so a forwarder's permissions can name its own.
pub fn payloads_bucket(endpoint: &EndpointId) -> String {
    format!("ferry-payloads-{endpoint}")
}

/// The stream that holds an object bucket, as JetStream names it.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// Every subject of an object bucket: its chunks (`C.<nuid>`) and metadata (`M.<name>`).
pub fn object_subjects(bucket: &str) -> String {
    format!("$O.{bucket}.>")
}

/// A task's stored payload: `part` (`input` or `result`) of the task, named by its content
/// too, so two runs of one task that answered differently never overwrite each other.
pub fn payload_object(task: &TaskId, part: &str, digest: &[u8]) -> String {
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}/{part}-{hex}", task.within_endpoint())
}

/// Message ids of callback jobs: the forwarder's first job per task is deduplicated; retries and
/// redeliveries carry ids of their own.
pub fn callback_message_id(task: &TaskId, suffix: Option<&str>) -> String {
    match suffix {
        None => task.to_string(),
        Some(suffix) => format!("{task}.{suffix}"),
    }
}

/// Keys of every task record and every callback state, as a subject pattern.
pub const RECORD_KEYS: &str = "task.>";
pub const CALLBACK_KEYS: &str = "callback.>";

/// A task's record: under the endpoint its id names, so one endpoint's records are one subject
/// pattern ([`record_keys_of`]) that a forwarder's permissions can name without naming any
/// other endpoint's.
pub fn record_key(task: &TaskId) -> String {
    format!("task.{}.{}", task.endpoint(), task.within_endpoint())
}

/// The keys of every task record of `endpoint`, as a KV key pattern.
pub fn record_keys_of(endpoint: &EndpointId) -> String {
    format!("task.{endpoint}.>")
}

pub fn callback_key(task: &TaskId) -> String {
    format!("callback.{task}")
}

/// A dead letter's key: under its endpoint, so one endpoint's letters are listed by a subject
/// filter without reading any other endpoint's.
pub fn dead_letter_key(endpoint: &EndpointId, task: &TaskId) -> String {
    format!("{endpoint}.{task}")
}

/// The keys of every dead letter of `endpoint`, as a KV subject filter suffix.
pub fn dead_letter_keys_of(endpoint: &EndpointId) -> String {
    format!("{endpoint}.>")
}

/// The client's idempotency key is hashed: it may hold characters a KV key cannot.
pub fn idempotency_key(endpoint: &EndpointId, client_key: &str) -> String {
    let digest = Sha256::digest(client_key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("idem.{endpoint}.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_subject_names_its_task_and_no_other_subject_does() {
        let endpoint = EndpointId::for_resource("default", "demo");
        let task = TaskId::generate(&endpoint);
        assert_eq!(task_of_subject(&task_subject(&task)), Some(task));
        for other in [
            shared_tasks_subject(&endpoint),
            format!("ferry.tasks.{endpoint}.not-a-uuid"),
            format!("ferry.other.{endpoint}.01a23abd-5295-7452-a99b-629bcb2c493a"),
        ] {
            assert_eq!(task_of_subject(&other), None, "{other}");
        }
    }

    #[test]
    fn idempotency_keys_are_valid_kv_keys_for_any_client_key() {
        let endpoint = EndpointId::for_resource("default", "demo");
        let key = idempotency_key(&endpoint, "spaces and * > wildcards/ü");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{key}"
        );
        assert_ne!(key, idempotency_key(&endpoint, "other"));
    }

    #[test]
    fn a_record_key_is_among_its_endpoints_record_keys_only() {
        let ours = EndpointId::for_resource("default", "demo");
        let theirs = EndpointId::for_resource("default", "other");
        let key = record_key(&TaskId::generate(&ours));
        let prefix_of = |endpoint| record_keys_of(endpoint).trim_end_matches('>').to_owned();
        assert!(key.starts_with(&prefix_of(&ours)), "{key}");
        assert!(!key.starts_with(&prefix_of(&theirs)), "{key}");
        assert_eq!(key.split('.').count(), 3, "one token each: {key}");
    }

    #[test]
    fn stream_names_hold_no_subject_tokens() {
        let name = tasks_stream(&EndpointId::for_resource("default", "demo"));
        assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
    }
}
