//! Per-endpoint task queues: the stream, its durable pull consumer, submission and delivery.
//!
//! **Attempts and deliveries.** JetStream counts every delivery of a message, including one a
//! worker hands back unrun (its model was unavailable, or it was stopping). A task's attempts
//! budget ([`MAX_TASK_ATTEMPTS`]) counts only deliveries that may have run: each hand-back is
//! counted on the task's record before the negative acknowledgement, and the attempts a
//! delivery has used are its delivery count less those hand-backs. Nothing is read on the fast
//! path: a first delivery, and any delivery within the budget, runs without looking. A
//! hand-back whose count could not be written is counted as an attempt — never the other way
//! round. The consumer's `max_deliver` is a safety ceiling ([`MAX_TASK_DELIVERIES`]) far above
//! the budget; the worker holding a task's last delivery records an outcome instead of handing
//! it back, so no task is silently dropped by the server.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::DeleteStreamErrorKind;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, pull},
    stream::{self, RetentionPolicy},
};

use super::{Error, Queue, envelope, names};
use crate::crd::EndpointId;
use crate::crd::validate::ValidatedEndpoint;
use crate::task::{TaskId, TaskMessage};

/// Deliveries of one task that may have run (not handed back unrun) before a worker gives up
/// on it and records a failure; bounds the damage of a task that crashes every worker that
/// runs it.
pub const MAX_TASK_ATTEMPTS: i64 = 3;

/// Deliveries of one task the server makes at most, hand-backs included: the consumer's
/// `max_deliver`. The worker holding the last one records an outcome whatever happens.
pub const MAX_TASK_DELIVERIES: i64 = 20;

/// The header of the marker the server leaves in place of a message that expired.
const EXPIRY_MARKER_REASON: &str = "Nats-Marker-Reason";

/// Window in which a repeated publish of the same task id is dropped by the server (or the
/// task expiry, if shorter).
pub(super) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

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
    pub fn for_endpoint(endpoint: &ValidatedEndpoint) -> Self {
        let spec = endpoint.spec();
        QueueSpec {
            endpoint_id: endpoint.endpoint_id(),
            task_expiry: Duration::from_secs(spec.task_expires_seconds.into()),
            ack_wait: Duration::from_secs(spec.queue_message_timeout_seconds.into()),
        }
    }

    /// The task queue the endpoint has: only an async endpoint has one.
    pub fn of(endpoint: &ValidatedEndpoint) -> Option<Self> {
        (endpoint.spec().endpoint_type == crate::crd::EndpointType::Async)
            .then(|| Self::for_endpoint(endpoint))
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

/// A task handed to a worker; acknowledge it only once its outcome is recorded.
pub struct TaskDelivery {
    message: jetstream::Message,
    /// Where a hand-back is counted.
    queue: Arc<Queue>,
}

impl super::Held for TaskDelivery {
    fn message(&self) -> &jetstream::Message {
        &self.message
    }

    /// Counts the hand-back on the task's record, then returns the task to the queue: the
    /// delivery does not count against the task's attempts.
    async fn hand_back(&self) -> Result<(), Error>
    where
        Self: Sync,
    {
        if self.expired_task().is_some() {
            // A marker is no run of its task: nothing to count.
            return self.defer(Duration::ZERO).await;
        }
        match self.task_id() {
            Some(task_id) => {
                if let Err(error) = self.queue.count_hand_back(&task_id).await {
                    tracing::warn!(%error, %task_id, "counting a hand-back failed; it counts as an attempt");
                }
            }
            None => tracing::warn!("a task message without a task id is handed back uncounted"),
        }
        super::lease::ack_with(&self.message, AckKind::Nak(None)).await
    }
}

impl TaskDelivery {
    /// The task, its args loaded when they were stored apart (see `queue::objects`).
    pub async fn task(&self) -> Result<TaskMessage, Error> {
        let payload = &self.message.payload;
        self.queue
            .decode_carrier(None, "task message", payload)
            .await
    }

    /// The task this message marks as expired, when it is the marker the queue leaves in place
    /// of a task that expired unrun (see `ensure_task_queue`), not a task.
    pub fn expired_task(&self) -> Option<TaskId> {
        let headers = self.message.headers.as_ref()?;
        headers.get(EXPIRY_MARKER_REASON)?;
        names::task_of_subject(&self.message.subject)
    }

    /// How long ago the server stored this message.
    pub fn stored_for(&self) -> Duration {
        let Ok(info) = self.message.info() else {
            return Duration::ZERO;
        };
        let stored_ms = info.published.unix_timestamp_nanos() / 1_000_000;
        let age_ms = i128::from(crate::task::now_ms()) - stored_ms;
        Duration::from_millis(u64::try_from(age_ms).unwrap_or(0))
    }

    /// Returns the message to the queue to be delivered again after `delay`, counting
    /// nothing on the task's record.
    pub async fn defer(&self, delay: Duration) -> Result<(), Error> {
        let delay = (!delay.is_zero()).then_some(delay);
        super::lease::ack_with(&self.message, AckKind::Nak(delay)).await
    }

    /// How many times this task has been delivered, counting this one.
    pub fn attempt(&self) -> i64 {
        self.message.info().map(|info| info.delivered).unwrap_or(1)
    }

    /// The task's id without decoding the whole message: the message id it was published
    /// under, else the decoded task's.
    fn task_id(&self) -> Option<TaskId> {
        let header = self.message.headers.as_ref().and_then(|headers| {
            let id = headers.get(async_nats::header::NATS_MESSAGE_ID)?;
            TaskId::parse(id.as_str())
        });
        // A stored message decodes without its args: enough for the id.
        let decoded = || envelope::decode::<TaskMessage>("task message", &self.message.payload);
        header.or_else(|| decoded().ok().map(|task| task.task_id))
    }

    /// True when the task's earlier deliveries, less the `handed_back` ones that never ran,
    /// used every attempt it is allowed.
    pub fn attempts_exhausted(&self, handed_back: u32) -> bool {
        attempts_used(self.attempt(), handed_back) >= MAX_TASK_ATTEMPTS
    }

    /// True when the server will not deliver the task again: whoever holds it records an
    /// outcome rather than hand it back.
    pub fn is_last_delivery(&self) -> bool {
        self.attempt() >= MAX_TASK_DELIVERIES
    }
}

impl Queue {
    /// Creates or updates the endpoint's stream and consumer; safe to call repeatedly.
    pub(super) async fn ensure_task_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        let stream_name = names::tasks_stream(&spec.endpoint_id);
        let own_subjects = names::task_subjects_pattern(&spec.endpoint_id.to_string());
        // The index first: the queue appends to it every task it stores from then on.
        self.ensure_index(&spec.endpoint_id).await?;
        let config = stream::Config {
            name: stream_name.clone(),
            // Each task on its own subject (cancelling a queued task purges it); the shared
            // subject of earlier versions still queues a task an older gateway sends.
            subjects: vec![
                own_subjects.clone(),
                names::shared_tasks_subject(&spec.endpoint_id),
            ],
            retention: RetentionPolicy::WorkQueue,
            max_age: spec.task_expiry,
            max_messages: self.settings.task_limits.max_tasks,
            max_bytes: self.settings.task_limits.stream_max_bytes(),
            // A full queue refuses new tasks: it never drops accepted ones.
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW.min(spec.task_expiry),
            num_replicas: self.settings.replicas,
            // A task that expires unrun is not dropped silently: the server puts a marker (a
            // message of headers only) on its subject in its place, and the worker that takes
            // it records the task expired and sends its callback (nats-server 2.11 or newer;
            // an older one ignores these settings and the task stays PENDING). The marker
            // lives as long as a task may wait; the server needs TTLs and roll-ups allowed.
            subject_delete_marker_ttl: Some(spec.task_expiry.max(Duration::from_secs(1))),
            allow_message_ttl: true,
            allow_rollup: true,
            // The server appends each task it stores (not a refused or repeated copy) to the
            // endpoint's index, its headers only: the id is the message id (`index`).
            republish: Some(stream::Republish {
                // (A task an older gateway queues on the shared subject is run, not listed.)
                source: own_subjects,
                destination: names::index_subject(&spec.endpoint_id),
                headers_only: true,
            }),
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
            // Hand-backs do not spend attempts, so the server's bound is only a ceiling.
            max_deliver: MAX_TASK_DELIVERIES,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(consumer, stream_name.as_str())
            .await
            .map_err(|source| Error::EnsureConsumer {
                stream: stream_name,
                consumer: names::TASKS_CONSUMER.into(),
                source: source.into(),
            })?;
        Ok(())
    }

    /// Deletes the endpoint's stream and with it its consumer and queued tasks; deleting a queue
    /// that does not exist succeeds.
    pub(super) async fn delete_task_queue(&self, endpoint: &EndpointId) -> Result<(), Error> {
        self.delete_stream(names::tasks_stream(endpoint)).await
    }

    /// Deletes a stream; deleting one that does not exist succeeds.
    pub(super) async fn delete_stream(&self, stream: String) -> Result<(), Error> {
        match self.js.delete_stream(&stream).await {
            Ok(_) => Ok(()),
            Err(error) if is_stream_not_found(error.kind()) => Ok(()),
            Err(error) => Err(Error::DeleteStream {
                stream,
                source: error.into(),
            }),
        }
    }

    /// Removes a cancelled task from its queue, so no worker receives it; a worker that holds
    /// it already finds its record final. Removing a task that is not queued succeeds.
    pub(super) async fn unqueue(&self, task: &TaskId) -> Result<(), Error> {
        let subject = names::task_subject(task);
        let purged = async {
            self.js
                .get_stream_no_info(names::tasks_stream(task.endpoint()))
                .await?
                .purge()
                .filter(subject.as_str())
                .await
                .map_err(super::NatsError::from)
        };
        purged.await.map(|_| ()).map_err(|source| Error::Unqueue {
            subject: subject.clone(),
            source,
        })
    }

    /// How many of the endpoint's tasks are queued and how many are held by workers.
    pub(super) async fn backlog(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
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
    pub(super) async fn backlog_with_age(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
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

    /// A puller of the endpoint's tasks.
    pub(super) async fn tasks(
        &self,
        endpoint: &EndpointId,
    ) -> Result<super::Puller<TaskDelivery>, Error> {
        let stream = names::tasks_stream(endpoint);
        let queue = Arc::new(self.clone());
        let wrap = move |message| TaskDelivery {
            message,
            queue: queue.clone(),
        };
        super::Puller::open(&self.js, &stream, names::TASKS_CONSUMER, wrap).await
    }
}

type NatsErrorLike = super::NatsError;

/// Attempts the deliveries before `delivery` used: those not handed back unrun.
fn attempts_used(delivery: i64, handed_back: u32) -> i64 {
    (delivery - 1 - i64::from(handed_back)).max(0)
}

fn is_stream_not_found(kind: DeleteStreamErrorKind) -> bool {
    matches!(kind, DeleteStreamErrorKind::JetStream(error)
        if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Held;
    use crate::task::TaskStatus;

    #[test]
    fn deliveries_handed_back_unrun_spend_no_attempts() {
        assert_eq!(attempts_used(1, 0), 0, "a first delivery has used none");
        assert_eq!(attempts_used(4, 0), 3, "three runs that never finished");
        assert_eq!(attempts_used(4, 3), 0, "three hand-backs");
        assert_eq!(attempts_used(6, 2), 3, "three runs among five deliveries");
        assert_eq!(
            attempts_used(2, 5),
            0,
            "more counted than delivered is none used"
        );
    }

    /// A real server with the task queue of endpoint `name`, whose tasks expire after `expiry`.
    async fn queue_of(
        name: &str,
        expiry: Duration,
    ) -> (crate::queue::testing::TestServer, Queue, EndpointId) {
        let (nats, queue) = crate::queue::testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", name);
        let spec = QueueSpec {
            endpoint_id: endpoint.clone(),
            task_expiry: expiry,
            ack_wait: Duration::from_secs(30),
        };
        queue.ensure_task_queue(&spec).await.expect("queue");
        (nats, queue, endpoint)
    }

    fn task_of(endpoint: &EndpointId) -> TaskMessage {
        TaskMessage {
            task_id: TaskId::generate(endpoint),
            endpoint_id: endpoint.clone(),
            args: serde_json::json!({"x": 1}),
            input_url: None,
            callback: None,
            submitted_at_ms: crate::task::now_ms(),
            record_revision: None,
        }
    }

    /// Hands a task back five times through the real server: each redelivery counts, the
    /// record counts each hand-back, and the sixth delivery still has its whole budget.
    #[tokio::test]
    async fn a_task_handed_back_again_and_again_keeps_its_attempts() {
        let (_nats, queue, endpoint) = queue_of("handback", Duration::from_secs(60)).await;
        let task = task_of(&endpoint);
        let submitted = queue.submit(&task, None).await.expect("submitted");
        let tasks = queue.tasks(&endpoint).await.expect("puller");
        let cancel = tokio_util::sync::CancellationToken::new();
        let (seen, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
        let stop = cancel.clone();
        let consuming = crate::queue::consume(tasks, 1, &cancel, move |delivery: TaskDelivery| {
            let (seen, stop) = (seen.clone(), stop.clone());
            async move {
                let attempt = delivery.attempt();
                if attempt <= 5 {
                    delivery.hand_back().await.expect("handed back");
                } else {
                    delivery.ack().await.expect("acked");
                    stop.cancel();
                }
                let _ = seen.send((attempt, delivery.is_last_delivery()));
            }
        });
        tokio::time::timeout(Duration::from_secs(30), consuming)
            .await
            .expect("six deliveries");
        let mut attempts = Vec::new();
        while let Ok((attempt, last)) = deliveries.try_recv() {
            assert!(!last, "delivery {attempt} is not the server's last");
            attempts.push(attempt);
        }
        assert_eq!(attempts, [1, 2, 3, 4, 5, 6]);
        let record = queue
            .task_record(&submitted.task_id)
            .await
            .expect("read")
            .expect("a record");
        assert_eq!(record.status, TaskStatus::Pending);
        assert_eq!(record.handed_back, 5);
        assert_eq!(attempts_used(6, record.handed_back), 0);
    }

    /// A task nobody takes before it expires leaves a marker in the real server's queue
    /// naming it, and only then; recording it expired ends it once, and a task a worker
    /// started is left to that worker.
    #[tokio::test]
    async fn an_expired_task_leaves_a_marker_that_names_it_and_is_recorded_once() {
        let (_nats, queue, endpoint) = queue_of("expiring", Duration::from_secs(5)).await;
        let (waiting, started) = (task_of(&endpoint), task_of(&endpoint));
        for task in [&waiting, &started] {
            queue.submit(task, None).await.expect("submitted");
        }
        let running = crate::task::TaskRecord::started(endpoint.clone());
        queue
            .advance_task_record(&started.task_id, &running, None)
            .await
            .expect("recorded STARTED");

        let tasks = queue.tasks(&endpoint).await.expect("puller");
        let cancel = tokio_util::sync::CancellationToken::new();
        let (seen, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
        let stop = cancel.clone();
        // Taken only after both expired, while their markers are kept (as long as a task):
        // the first deliveries are the markers, stored about 1.5 s before.
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let consuming = crate::queue::consume(tasks, 1, &cancel, move |delivery: TaskDelivery| {
            let (seen, stop, taken) = (seen.clone(), stop.clone(), taken.clone());
            async move {
                let _ = seen.send((delivery.expired_task(), delivery.stored_for()));
                delivery.ack().await.expect("acked");
                if taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    stop.cancel();
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), consuming)
            .await
            .expect("two deliveries");
        let mut marked = Vec::new();
        while let Ok((expired, stored_for)) = deliveries.try_recv() {
            let plausible = Duration::from_millis(500)..Duration::from_secs(30);
            assert!(plausible.contains(&stored_for), "stored {stored_for:?} ago");
            marked.push(expired.expect("only markers: both tasks expired"));
        }
        marked.sort_by_key(|id| id.to_string());
        let mut expected = vec![waiting.task_id.clone(), started.task_id.clone()];
        expected.sort_by_key(|id| id.to_string());
        assert_eq!(marked, expected);

        let (record, now) = queue
            .expire_task(&waiting.task_id)
            .await
            .expect("written")
            .expect("a record");
        assert!(now && record.is_expiry(), "{record:?}");
        assert_eq!(record.status, TaskStatus::Failure);
        let (again, now) = queue
            .expire_task(&waiting.task_id)
            .await
            .expect("read")
            .expect("a record");
        assert!(!now && again == record, "recorded once: {again:?}");
        let (left, now) = queue
            .expire_task(&started.task_id)
            .await
            .expect("read")
            .expect("a record");
        assert!(!now && left.status == TaskStatus::Started, "{left:?}");
    }
}
