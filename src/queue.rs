//! The only module that speaks to NATS. It owns every subject, stream, consumer and bucket name:
//! per async endpoint a work-queue stream with one durable pull consumer (the task queue), one
//! shared results bucket (task records, callback delivery state, idempotency keys), and one shared
//! callbacks stream consumed by the dispatcher, with a dead-letter stream beside it; per
//! endpoint an object bucket of args and results too large for a message (`objects`).

mod arrivals;
mod callbacks;
mod connect;
mod envelope;
mod index;
mod lease;
mod limits;
mod link;
mod load;
pub mod names;
mod objects;
mod outcomes;
mod permissions;
mod presence;
mod results;
mod roles;
mod submit;
mod tasks;
#[cfg(test)]
pub mod testing;

use std::time::Duration;

use async_nats::jetstream::{self, kv};

pub use callbacks::{CALLBACK_LEASE_RENEWAL, CallbackDelivery, LetterPage, LetterQuery};
pub use connect::{ClientCert, ConfigError, Connection, Credentials, Tls};
pub use index::{TaskPage, TaskQuery};
pub use lease::{Held, Puller, consume, keep_alive_while_held};
pub use limits::QueueLimits;
pub use load::LoadReport;
pub use outcomes::{AttemptCounts, AttemptOutcome, OutcomeTally, TALLY_FLUSH};
#[cfg(test)]
pub use permissions::forwarder_inbox_prefix;
pub use permissions::{Permissions, Role, forwarder_of, permissions};
pub use presence::{PRESENCE_EVERY, PRESENCE_EXPIRY, WorkerPresence};
pub use results::RecordAt;
pub use roles::{DispatcherQueue, ForwarderQueue, GatewayQueue, OperatorQueue};
pub use tasks::{Backlog, MAX_TASK_ATTEMPTS, MAX_TASK_DELIVERIES, QueueSpec, TaskDelivery};

/// Boxed error from the NATS client; the variant of [`Error`] says which operation failed.
pub type NatsError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: NatsError,
    },
    #[error("ensuring stream {stream}")]
    EnsureStream {
        stream: String,
        #[source]
        source: NatsError,
    },
    #[error("ensuring consumer {consumer} on stream {stream}")]
    EnsureConsumer {
        stream: String,
        consumer: String,
        #[source]
        source: NatsError,
    },
    #[error("ensuring bucket {bucket}")]
    EnsureBucket {
        bucket: String,
        #[source]
        source: NatsError,
    },
    /// The endpoint's task queue holds as many tasks (or bytes) as it may.
    #[error("endpoint {endpoint} is not this forwarder's")]
    NotOwnEndpoint { endpoint: crate::crd::EndpointId },
    #[error("the task queue of endpoint {endpoint} is full")]
    Full { endpoint: crate::crd::EndpointId },
    /// Nothing was handed to the server: the connection stayed down for the submission's
    /// patience.
    #[error("no connection to NATS within {patience:?}")]
    Unreachable { patience: Duration },
    /// The task was handed over, but the server did not acknowledge it within the
    /// submission's patience: it may be queued, under its id.
    #[error("the task queue did not confirm task {task_id}")]
    Unconfirmed {
        task_id: crate::task::TaskId,
        #[source]
        source: NatsError,
    },
    #[error("publishing to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: NatsError,
    },
    #[error("reading key {key}")]
    Read {
        key: String,
        #[source]
        source: NatsError,
    },
    #[error("writing key {key}")]
    Write {
        key: String,
        #[source]
        source: NatsError,
    },
    #[error("receiving from consumer {consumer}")]
    Receive {
        consumer: String,
        #[source]
        source: NatsError,
    },
    #[error("acknowledging a message")]
    Ack {
        #[source]
        source: NatsError,
    },
    #[error("deleting stream {stream}")]
    DeleteStream {
        stream: String,
        #[source]
        source: NatsError,
    },
    #[error("removing the queued task on {subject}")]
    Unqueue {
        subject: String,
        #[source]
        source: NatsError,
    },
    #[error("reading consumer {consumer} on stream {stream}")]
    ConsumerInfo {
        stream: String,
        consumer: String,
        #[source]
        source: NatsError,
    },
    #[error("the {role:?} role holds no {bucket} bucket")]
    NotHeld { role: Role, bucket: &'static str },
    /// A callback job arrived on another endpoint's subject than the one it names: a forwarder
    /// may publish only its own endpoint's jobs, so the subject is what vouches for the job.
    #[error("a callback job for endpoint {claimed} arrived on subject {subject}")]
    ForeignCallbackJob { claimed: String, subject: String },
    #[error("storing payload {object}")]
    StorePayload {
        object: String,
        #[source]
        source: NatsError,
    },
    #[error("loading payload {object}")]
    LoadPayload {
        object: String,
        #[source]
        source: NatsError,
    },
    #[error("decoding {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True when a message can never be read (it is not ours, or names another endpoint); a
    /// payload that could not be loaded this time is not such a message.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            Error::Decode { .. } | Error::ForeignCallbackJob { .. }
        )
    }
}

/// Settings shared by every process that opens the queue.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// How long task records and callback states are kept after their last change.
    pub result_retention: Duration,
    /// Replicas of every stream and bucket (3 on a JetStream cluster).
    pub replicas: usize,
    /// Bounds of each endpoint's task queue.
    pub task_limits: QueueLimits,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            result_retention: Duration::from_secs(86_400),
            replicas: 1,
            task_limits: QueueLimits::default(),
        }
    }
}

/// A connection to JetStream with the shared buckets and streams ensured.
#[derive(Clone)]
pub struct Queue {
    js: jetstream::Context,
    results: results::Results,
    /// Absent for a forwarder, which may not read them.
    dead_letters: Option<kv::Store>,
    policies: Option<kv::Store>,
    settings: QueueSettings,
    notices: std::sync::Arc<arrivals::Notices>,
    link: link::Link,
    /// Submissions answered as unconfirmed whose tasks are still being queued.
    settling: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Queue {
    /// Connects (retrying while the server starts, for up to `wait`) and ensures the shared
    /// results bucket and callbacks streams exist; a forwarder reaches its own keys of the
    /// results bucket only.
    pub async fn connect(
        connection: &Connection,
        settings: QueueSettings,
        wait: Duration,
    ) -> Result<Self, Error> {
        let (events, events_seen) = tokio::sync::watch::channel(true);
        let client = connect::connect_with_retry(connection, wait, events).await?;
        let link = link::Link::new(client.clone(), events_seen);
        let js = jetstream::new(client);
        let (results, dead_letters, policies) = if connection.role().ensures_shared() {
            let results =
                results::Results::Bucket(Box::new(results::ensure_bucket(&js, &settings).await?));
            let buckets = callbacks::ensure(&js, &settings).await?;
            outcomes::ensure(&js, &settings).await?;
            (results, Some(buckets.dead_letters), Some(buckets.policies))
        } else {
            (results::Results::own_keys(&js).await?, None, None)
        };
        Ok(Queue {
            js,
            results,
            dead_letters,
            policies,
            settings,
            notices: Default::default(),
            link,
            settling: std::sync::Arc::new(tokio::sync::Semaphore::new(submit::MAX_SETTLING)),
        })
    }
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    let bucket = config.bucket.clone();
    js.create_or_update_key_value(config)
        .await
        .map_err(|source| Error::EnsureBucket {
            bucket,
            source: source.into(),
        })
}

impl Queue {
    /// Publishes `message` and waits for JetStream to acknowledge that it stored it: a
    /// publish that returns `Ok` is durable (or a duplicate of one within the window).
    async fn publish_acked(
        &self,
        subject: &str,
        message: jetstream::message::PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.js
            .send_publish(subject.to_owned(), message)
            .await?
            .await
    }

    /// A core NATS subscription: messages published from now on, none kept.
    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, Error> {
        self.js
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|source| Error::Receive {
                consumer: format!("{subject} subscription"),
                source: source.into(),
            })
    }

    /// Everything the queue keeps for an endpoint: its callback policy (for the dispatcher) and,
    /// for an async endpoint (`tasks`), its task queue. Safe to repeat.
    async fn prepare_endpoint(
        &self,
        endpoint: &crate::crd::EndpointId,
        policy: &crate::task::CallbackPolicy,
        tasks: Option<&QueueSpec>,
    ) -> Result<(), Error> {
        self.put_callback_policy(endpoint, policy).await?;
        self.ensure_payloads(endpoint, tasks.map(|spec| spec.task_expiry))
            .await?;
        if let Some(spec) = tasks {
            self.ensure_task_queue(spec).await?;
        }
        Ok(())
    }
}
