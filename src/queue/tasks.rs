//! Per-endpoint task queues: the stream, its durable pull consumer, submission and delivery.

use std::time::Duration;

use async_nats::jetstream::context::DeleteStreamErrorKind;
use async_nats::jetstream::{
    self,
    consumer::{self, pull},
    message::PublishMessage,
    stream::{self, RetentionPolicy},
};

use super::{Error, Queue, names, results};
use crate::crd::{EndpointId, ModelEndpoint};
use crate::task::{TaskId, TaskMessage, TaskRecord};

/// Deliveries of one task before a worker gives up on it and records a failure; bounds the
/// damage of a task that crashes every worker that runs it.
pub const MAX_TASK_ATTEMPTS: i64 = 3;

/// Window in which a repeated publish of the same task id is dropped by the server.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The queue an async endpoint needs, derived from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub endpoint_id: EndpointId,
    /// Queued tasks older than this expire unrun.
    pub task_expiry: Duration,
    /// A worker that shows no sign of life for this long loses its task to another.
    pub ack_wait: Duration,
}

impl QueueSpec {
    pub fn for_endpoint(endpoint: &ModelEndpoint) -> Self {
        QueueSpec {
            endpoint_id: endpoint.endpoint_id(),
            task_expiry: Duration::from_secs(endpoint.spec.task_expires_seconds.into()),
            ack_wait: Duration::from_secs(endpoint.spec.queue_message_timeout_seconds.into()),
        }
    }
}

/// Tasks of one endpoint that wait for a worker or are being worked on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Queued and not yet handed to a worker.
    pub queued: u64,
    /// Handed to a worker and not yet acknowledged.
    pub in_flight: u64,
    /// Seconds since the oldest unfinished task was submitted, when asked for and any wait.
    pub oldest_age_seconds: Option<i64>,
}

/// The outcome of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub task_id: TaskId,
    /// True when an earlier submission with the same idempotency key was found.
    pub duplicate: bool,
}

/// A task handed to a worker; acknowledge it only once its outcome is recorded.
pub struct TaskDelivery {
    message: jetstream::Message,
}

impl super::Held for TaskDelivery {
    fn message(&self) -> &jetstream::Message {
        &self.message
    }
}

impl TaskDelivery {
    pub fn task(&self) -> Result<TaskMessage, Error> {
        results::decode("task message", &self.message.payload)
    }

    /// How many times this task has been delivered, counting this one.
    pub fn attempt(&self) -> i64 {
        self.message.info().map(|info| info.delivered).unwrap_or(1)
    }

    /// True when this delivery is past the last attempt the task is allowed.
    pub fn attempts_exhausted(&self) -> bool {
        self.attempt() > MAX_TASK_ATTEMPTS
    }

    /// Removes the task from the queue for good.
    pub async fn ack(&self) -> Result<(), Error> {
        self.message
            .ack()
            .await
            .map_err(|source| Error::Ack { source })
    }
}

impl Queue {
    /// Creates or updates the endpoint's stream and consumer; safe to call repeatedly.
    pub async fn ensure_endpoint(&self, spec: &QueueSpec) -> Result<(), Error> {
        let stream_name = names::tasks_stream(&spec.endpoint_id);
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![names::tasks_subject(&spec.endpoint_id)],
            retention: RetentionPolicy::WorkQueue,
            max_age: spec.task_expiry,
            max_messages: self.settings.task_limits.max_tasks,
            max_bytes: self.settings.task_limits.stream_max_bytes(),
            // A full queue refuses new tasks: it never drops accepted ones.
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW.min(spec.task_expiry),
            num_replicas: self.settings.replicas,
            ..Default::default()
        };
        let stream = self.js.create_or_update_stream(config).await;
        stream.map_err(|source| Error::EnsureStream {
            stream: stream_name.clone(),
            source: source.into(),
        })?;
        let consumer = pull::Config {
            durable_name: Some(names::TASKS_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            // One delivery beyond the allowed attempts lets a worker record the failure.
            max_deliver: MAX_TASK_ATTEMPTS + 1,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(consumer, stream_name.as_str())
            .await
            .map(drop)
            .map_err(|source| Error::EnsureConsumer {
                stream: stream_name,
                consumer: names::TASKS_CONSUMER.into(),
                source: source.into(),
            })
    }

    /// Deletes the endpoint's stream and with it its consumer and queued tasks; deleting a queue
    /// that does not exist succeeds.
    pub async fn delete_endpoint(&self, endpoint: &EndpointId) -> Result<(), Error> {
        let stream = names::tasks_stream(endpoint);
        match self.js.delete_stream(&stream).await {
            Ok(_) => Ok(()),
            Err(error) if is_stream_not_found(error.kind()) => Ok(()),
            Err(error) => Err(Error::DeleteStream {
                stream,
                source: error.into(),
            }),
        }
    }

    /// How many of the endpoint's tasks are queued and how many are held by workers.
    pub async fn backlog(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        let stream = names::tasks_stream(endpoint);
        let info_error = |source: NatsErrorLike| Error::ConsumerInfo {
            stream: stream.clone(),
            consumer: names::TASKS_CONSUMER.into(),
            source,
        };
        let info = self
            .js
            .get_stream_no_info(&stream)
            .await
            .map_err(|error| info_error(error.into()))?
            .consumer_info(names::TASKS_CONSUMER)
            .await
            .map_err(|error| info_error(error.into()))?;
        Ok(Backlog {
            queued: info.num_pending,
            in_flight: info.num_ack_pending as u64,
            oldest_age_seconds: None,
        })
    }

    /// The backlog with the age of its oldest unfinished task (one more request: for status,
    /// not for the autoscaler's every-second reading).
    pub async fn backlog_with_age(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        let mut backlog = self.backlog(endpoint).await?;
        let stream = names::tasks_stream(endpoint);
        let info = self
            .js
            .get_stream(&stream)
            .await
            .map_err(|error| Error::ConsumerInfo {
                stream: stream.clone(),
                consumer: names::TASKS_CONSUMER.into(),
                source: error.into(),
            })?;
        let state = &info.cached_info().state;
        if state.messages > 0 {
            let now = (crate::task::now_ms() / 1000) as i64;
            backlog.oldest_age_seconds =
                Some((now - state.first_timestamp.unix_timestamp()).max(0));
        }
        Ok(backlog)
    }

    /// Queues a task. With an idempotency key, a repeat returns the first submission's task id.
    pub async fn submit(
        &self,
        task: &TaskMessage,
        idempotency_key: Option<&str>,
    ) -> Result<Submission, Error> {
        let mut task_id = task.task_id.clone();
        let mut duplicate = false;
        if let Some(client_key) = idempotency_key {
            let key = names::idempotency_key(&task.endpoint_id, client_key);
            let claimed = self.create(key.clone(), task_id.to_string().into()).await?;
            if !claimed {
                duplicate = true;
                task_id = self.claimed_task_id(key).await?;
                if self.task_record(&task_id).await?.is_some() {
                    return Ok(Submission { task_id, duplicate });
                }
                // The first submission stopped between claiming the key and queueing the task:
                // finish it now under the claimed id.
            }
        }
        // The record first, so the task can carry its revision, and a task in the queue
        // always has a record.
        let record = TaskRecord::pending(task.endpoint_id.clone());
        let record_revision = self.create_task_record(&task_id, &record).await?;
        let task = TaskMessage {
            task_id: task_id.clone(),
            record_revision,
            ..task.clone()
        };
        if let Err(error) = self.publish_task(&task).await {
            if let (Error::Full { .. }, Some(revision)) = (&error, record_revision) {
                // Refused, so never queued: a repeat with the same idempotency key finds no
                // record and queues the task under the claimed id.
                self.forget_task_record(&task_id, revision).await;
            }
            return Err(error);
        }
        self.announce_arrival(&task.endpoint_id).await;
        Ok(Submission { task_id, duplicate })
    }

    async fn claimed_task_id(&self, key: String) -> Result<TaskId, Error> {
        let bytes = self.read_raw(key.clone()).await?;
        let text = bytes
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        TaskId::parse(&text).ok_or_else(|| Error::Read {
            key,
            source: "idempotency key holds no task id".into(),
        })
    }

    async fn publish_task(&self, task: &TaskMessage) -> Result<(), Error> {
        let subject = names::tasks_subject(&task.endpoint_id);
        let message = PublishMessage::build()
            .payload(results::encode(task))
            .message_id(task.task_id.as_str());
        let publish = async { self.js.send_publish(subject.clone(), message).await?.await };
        match publish.await {
            Ok(_) => Ok(()),
            Err(error) if super::limits::is_full(&error) => Err(Error::Full {
                endpoint: task.endpoint_id.clone(),
            }),
            Err(error) => Err(Error::Publish {
                subject,
                source: error.into(),
            }),
        }
    }

    /// A puller of the endpoint's tasks.
    pub async fn tasks(&self, endpoint: &EndpointId) -> Result<super::Puller<TaskDelivery>, Error> {
        let stream = names::tasks_stream(endpoint);
        let wrap = |message| TaskDelivery { message };
        super::Puller::open(&self.js, &stream, names::TASKS_CONSUMER, wrap).await
    }
}

type NatsErrorLike = super::NatsError;

fn is_stream_not_found(kind: DeleteStreamErrorKind) -> bool {
    matches!(kind, DeleteStreamErrorKind::JetStream(error)
        if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}
