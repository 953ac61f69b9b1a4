//! Who may do what on NATS: the subjects each ferry role publishes and subscribes to, derived
//! from the operations of this module and nothing more. A server enforces them on the role's
//! user (see `crate::nats_auth`); each role also receives replies only below an inbox prefix of
//! its own, so no role reads the answers another role's requests get.
//!
//! JetStream's API is subjects too: `$JS.API.STREAM.INFO.<stream>` binds a stream,
//! `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` pulls, `$JS.ACK.<stream>.<consumer>.…`
//! acknowledges, a KV write is a publish to `$KV.<bucket>.<key>` and a KV read a direct get on
//! `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`. An object bucket's objects are
//! written on `$O.<bucket>.…`, found by a direct get of their metadata and read through an
//! ordered consumer the client creates on the bucket's stream.

use super::names::{self, kv_stream, kv_subject};
use crate::crd::EndpointId;

/// A kind of ferry process, as NATS sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Operator,
    Dispatcher,
    Forwarder,
    /// `ferry dev` and tests: every role in one process.
    All,
}

impl Role {
    pub const ISSUED: [Role; 4] = [
        Role::Gateway,
        Role::Operator,
        Role::Dispatcher,
        Role::Forwarder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Dispatcher => "dispatcher",
            Role::Forwarder => "forwarder",
            Role::All => "all",
        }
    }

    /// Prefix of the role's reply subjects.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX.{}", self.name())
    }

    /// Whether the role creates the shared streams and buckets (when missing) at start. A
    /// forwarder reaches only its keys of the results bucket: it may not create, change or
    /// read the others.
    pub(super) fn ensures_shared(self) -> bool {
        self != Role::Forwarder
    }
}

/// Subjects a user may publish and subscribe to (NATS wildcards `*` and `>` allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The API subjects of a stream's messages and config read by a bound client.
/// Create, update and read the shared streams, buckets and the dispatcher's consumer: what
/// [`super::Queue::connect`] does for every role but the forwarder.
fn ensure_shared() -> Vec<String> {
    let mut subjects = vec!["$JS.API.INFO".to_owned()];
    let streams = [
        kv_stream(names::RESULTS_BUCKET),
        kv_stream(names::DEAD_LETTERS_BUCKET),
        kv_stream(names::POLICIES_BUCKET),
        names::CALLBACKS_STREAM.to_owned(),
        names::CALLBACK_OUTCOMES_STREAM.to_owned(),
    ];
    for stream in streams {
        for verb in ["CREATE", "UPDATE", "INFO"] {
            subjects.push(format!("$JS.API.STREAM.{verb}.{stream}"));
        }
    }
    subjects.extend(consumer_create(
        names::CALLBACKS_STREAM,
        names::CALLBACKS_CONSUMER,
    ));
    subjects
}

/// Creating the durable `consumer` on `stream`, in both forms of the API.
fn consumer_create(stream: &str, consumer: &str) -> [String; 3] {
    [
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"),
    ]
}

/// Reading and writing keys below `key_prefix` (`>` for all) of `bucket`.
fn kv_keys(bucket: &str, key_prefix: &str) -> [String; 2] {
    [
        kv_subject(bucket, key_prefix),
        format!(
            "$JS.API.DIRECT.GET.{}.{}",
            kv_stream(bucket),
            kv_subject(bucket, key_prefix)
        ),
    ]
}

/// Creating, binding, reading and writing a bucket only this role uses.
fn kv_bucket(bucket: &str) -> Vec<String> {
    let stream = kv_stream(bucket);
    let mut subjects: Vec<String> = ["CREATE", "UPDATE", "INFO"]
        .iter()
        .map(|verb| format!("$JS.API.STREAM.{verb}.{stream}"))
        .collect();
    subjects.extend(kv_keys(bucket, ">"));
    subjects
}

/// Listing or watching a bucket: an ordered consumer the client creates and deletes.
fn kv_watch(bucket: &str) -> [String; 3] {
    let stream = kv_stream(bucket);
    [
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Storing and loading the objects of `bucket`, and nothing of any other bucket.
fn object_bucket(bucket: &str) -> Vec<String> {
    let stream = names::object_stream(bucket);
    vec![
        names::object_subjects(bucket),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Storing and loading the objects of every endpoint's payload bucket, for the gateway and the
/// dispatcher. A stream's name is one subject token, so `OBJ_ferry-payloads-…` cannot be named
/// by a pattern: the consumers that read objects may be created on any stream (both roles read
/// every task's record anyway); object metadata is read only below `$O.`. Not for the shared
/// forwarder user: a forwarder reaches payloads with its endpoint's own credentials only.
fn all_object_buckets() -> Vec<String> {
    vec![
        names::object_subjects("*"),
        "$JS.API.STREAM.INFO.*".to_owned(),
        "$JS.API.DIRECT.GET.*.$O.>".to_owned(),
        "$JS.API.CONSUMER.CREATE.*".to_owned(),
        "$JS.FC.*.>".to_owned(),
    ]
}

/// Pulling from and acknowledging on a durable consumer of a stream (`*`: every stream).
fn pull(stream: &str, consumer: &str) -> [String; 3] {
    [
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ]
}

pub fn permissions(role: Role) -> Permissions {
    let all_endpoints = "*";
    let mut publish: Vec<String> = Vec::new();
    let mut subscribe = vec![format!("{}.>", role.inbox_prefix())];
    match role {
        Role::Gateway => {
            publish.extend(ensure_shared());
            publish.extend(kv_keys(names::RESULTS_BUCKET, ">"));
            publish.extend(kv_keys(names::DEAD_LETTERS_BUCKET, ">"));
            publish.extend(kv_watch(names::DEAD_LETTERS_BUCKET));
            // Endpoints a gateway serves from manifests: their policies and queues.
            publish.extend(kv_keys(names::POLICIES_BUCKET, ">"));
            publish.extend(endpoint_queues());
            publish.extend(all_object_buckets());
            // Listing tasks: each endpoint's index, appended by its task queue (the server
            // republishes each stored task) and read by sequence (a stream's name is one token,
            // so every stream's direct gets; the consumers above already read any stream).
            publish.push("$JS.API.DIRECT.GET.*".to_owned());
            // Cancelling: a cancelled task's own subject purged from its queue (any stream's
            // purge, as above; the gateway already updates any stream's configuration).
            publish.push("$JS.API.STREAM.PURGE.*".to_owned());
            publish.extend([
                names::task_subjects_pattern(all_endpoints),
                names::ALL_ARRIVALS_SUBJECTS.to_owned(),
                names::ALL_LOAD_SUBJECTS.to_owned(),
                names::CALLBACKS_SUBJECTS.to_owned(),
            ]);
            // Serving fixed manifests: when each endpoint was first served, and its workers.
            publish.extend(kv_bucket(names::ENDPOINTS_BUCKET));
            subscribe.push(names::ALL_WORKERS_SUBJECTS.to_owned());
        }
        Role::Operator => {
            publish.extend(ensure_shared());
            publish.extend(endpoint_queues());
            publish.push("$JS.API.STREAM.DELETE.*".to_owned());
            publish.extend(kv_keys(names::POLICIES_BUCKET, ">"));
            publish.push(names::ALL_LOAD_SUBJECTS.to_owned());
            subscribe.push(names::ALL_ARRIVALS_SUBJECTS.to_owned());
            subscribe.push(names::ALL_LOAD_SUBJECTS.to_owned());
        }
        Role::Dispatcher => {
            publish.extend(ensure_shared());
            publish.extend(pull(names::CALLBACKS_STREAM, names::CALLBACKS_CONSUMER));
            publish.extend(all_object_buckets());
            publish.extend(kv_keys(names::RESULTS_BUCKET, names::CALLBACK_KEYS));
            publish.extend(kv_keys(names::DEAD_LETTERS_BUCKET, ">"));
            publish.extend(kv_keys(names::POLICIES_BUCKET, ">"));
            publish.extend(kv_watch(names::POLICIES_BUCKET));
            publish.push(names::CALLBACKS_SUBJECTS.to_owned());
            publish.push(names::RETRY_SUBJECTS.to_owned());
            publish.push(names::ALL_CALLBACK_OUTCOME_SUBJECTS.to_owned());
        }
        Role::Forwarder => {
            publish.extend(pull(all_endpoints, names::TASKS_CONSUMER));
            publish.extend(kv_keys(names::RESULTS_BUCKET, names::RECORD_KEYS));
            publish.push(names::CALLBACKS_SUBJECTS.to_owned());
            publish.push(names::ALL_WORKERS_SUBJECTS.to_owned());
        }
        Role::All => {
            publish.push(">".to_owned());
            subscribe.push(">".to_owned());
        }
    }
    Permissions { publish, subscribe }
}

/// Where the replies to a forwarder of `endpoint` arrive: below its role's prefix, apart from
/// every other endpoint's forwarders (a pulled task is such a reply).
pub fn forwarder_inbox_prefix(endpoint: &EndpointId) -> String {
    format!("{}.{endpoint}", Role::Forwarder.inbox_prefix())
}

/// A forwarder of one endpoint: the forwarder's work narrowed to that endpoint's task consumer,
/// task records (reads and writes of `task.<endpoint>.…` keys; nothing of another endpoint's
/// records, callback states or idempotency keys), payload bucket, callback jobs and reply
/// inbox. Not the results bucket's stream info: it lists the bucket's keys, every endpoint's
/// task ids among them.
pub fn forwarder_of(endpoint: &EndpointId) -> Permissions {
    let mut publish = pull(&names::tasks_stream(endpoint), names::TASKS_CONSUMER).to_vec();
    publish.extend(kv_keys(
        names::RESULTS_BUCKET,
        &names::record_keys_of(endpoint),
    ));
    publish.extend(object_bucket(&names::payloads_bucket(endpoint)));
    publish.push(names::callbacks_subject(endpoint));
    publish.push(names::workers_subject(endpoint));
    Permissions {
        publish,
        subscribe: vec![format!("{}.>", forwarder_inbox_prefix(endpoint))],
    }
}

/// Creating and reading every endpoint's task stream and its workers' consumer.
fn endpoint_queues() -> Vec<String> {
    let mut subjects = vec![
        "$JS.API.STREAM.CREATE.*".to_owned(),
        "$JS.API.STREAM.UPDATE.*".to_owned(),
        "$JS.API.STREAM.INFO.*".to_owned(),
        format!("$JS.API.CONSUMER.INFO.*.{}", names::TASKS_CONSUMER),
    ];
    subjects.extend(consumer_create("*", names::TASKS_CONSUMER));
    subjects
}
