//! Submitting a task so that its answer is never a guess: the task is queued (the server
//! acknowledged it), or certainly not queued (nothing that could queue it reached the server),
//! or its id is returned with the error so that a resubmission under that id settles it.
//!
//! The task id is the JetStream message id, so the server drops a repeat of a stored task within
//! the stream's duplicate window. A submission therefore hands the task over only while the
//! connection is up (the client would otherwise keep it and send it on reconnecting, after the
//! caller was told it failed), and once handed over publishes it again, under the same id, until
//! acknowledged or out of patience. Out of patience, it answers [`Error::Unconfirmed`] with the
//! task id and keeps publishing it in the background for as long as the duplicate window makes a
//! repeat safe, so an unconfirmed task is queued once even if its client never comes back.
//!
//! A resubmission whose idempotency key is a task id of the endpoint with a record, or a client
//! key already claimed, finds the task: a task still `PENDING` is published again under its id
//! (within the duplicate window of its submission); any other is returned as it is.

use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use tokio::time::Instant;

use super::{Error, NatsError, Queue, names};
use crate::task::{TaskId, TaskMessage, TaskRecord, TaskStatus, now_ms};

/// Unconfirmed tasks one process keeps publishing in the background at most; beyond, a task
/// the client library still holds is sent on reconnection anyway, and its client has its id.
pub(super) const MAX_SETTLING: usize = 4096;

/// How long one publish waits for its acknowledgement before it is sent again.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Kept off the end of the duplicate window: a republish later than the window less this
/// margin is not made, as the first copy may have been stored slightly after its submission.
const WINDOW_MARGIN: Duration = Duration::from_secs(10);

/// The outcome of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub task_id: TaskId,
    /// True when an earlier submission of the same task was found.
    pub duplicate: bool,
}

/// How a publish attempt ended.
enum Attempt {
    Acked,
    /// The server refused it, or it never left: certainly not stored.
    NotStored(NatsError),
    /// It may have been stored.
    Unknown(NatsError),
}

impl Queue {
    /// Queues a task. With an idempotency key, a repeat returns the first submission's task
    /// id, and queues that task if it may not be queued yet.
    pub(super) async fn submit(
        &self,
        task: &TaskMessage,
        idempotency_key: Option<&str>,
    ) -> Result<Submission, Error> {
        let started = Instant::now();
        let patience = self.settings.task_limits.submit_patience;
        let deadline = started + patience;
        if !self.link.up_by(deadline).await {
            return Err(Error::Unreachable { patience });
        }
        let found = match idempotency_key {
            Some(key) => self.earlier_submission(task, key).await?,
            None => None,
        };
        let (task_id, pending) = match found {
            Some((task_id, Some((record, revision)))) => {
                if record.status != TaskStatus::Pending || !self.may_repeat(&task_id, &record).await
                {
                    return Ok(Submission {
                        task_id,
                        duplicate: true,
                    });
                }
                (task_id, Some(revision))
            }
            // The first submission stopped between claiming the key and writing the record:
            // finish it now under the claimed id.
            Some((task_id, None)) => (task_id, None),
            None => (task.task_id.clone(), None),
        };
        let duplicate = task_id != task.task_id;
        let (record_revision, created) = match pending {
            Some(revision) => (Some(revision), None),
            None => {
                // The record first, so the task can carry its revision, and a task in the queue
                // always has a record. It keeps the callback for a cancellation to send.
                let record = TaskRecord {
                    callback: task.callback.clone(),
                    ..TaskRecord::pending(task.endpoint_id.clone())
                };
                let created = self.create_task_record(&task_id, &record).await?;
                (created, created)
            }
        };
        let task = TaskMessage {
            task_id: task_id.clone(),
            record_revision,
            ..task.clone()
        };
        // The record's writes may have used the patience up: the task still gets one wait.
        let deadline = deadline.max(Instant::now() + ACK_WAIT);
        // The queue itself appends the task to its endpoint's index as it stores it.
        match self.publish_confirmed(&task, deadline).await {
            Ok(()) => {}
            Err(error @ Error::Unconfirmed { .. }) => {
                self.settle_later(task, started);
                return Err(error);
            }
            Err(error) => {
                if let Some(revision) = created {
                    // Never queued: a repeat with the same idempotency key finds no record and
                    // queues the task under the claimed id.
                    self.forget_task_record(&task_id, revision).await;
                }
                return Err(error);
            }
        }
        self.announce_arrival(&task.endpoint_id).await;
        Ok(Submission { task_id, duplicate })
    }

    /// The task an earlier submission with `key` made, with its record and that record's
    /// revision when it has one. `key` is that task's id, or a client's key this submission
    /// claims for its own task unless an earlier one did.
    async fn earlier_submission(
        &self,
        task: &TaskMessage,
        key: &str,
    ) -> Result<Option<(TaskId, Option<(TaskRecord, u64)>)>, Error> {
        if let Some(task_id) = TaskId::parse(key).filter(|id| id.endpoint() == &task.endpoint_id) {
            let record = self.task_record_at(&task_id).await?;
            if record.is_some() {
                return Ok(Some((task_id, record)));
            }
            // A task id without a record is no task of this endpoint's: an ordinary key.
        }
        let key = names::idempotency_key(&task.endpoint_id, key);
        let claimed = self
            .create(key.clone(), task.task_id.to_string().into())
            .await?;
        if claimed {
            return Ok(None);
        }
        let task_id = self.claimed_task_id(key).await?;
        let record = self.task_record_at(&task_id).await?;
        Ok(Some((task_id, record)))
    }

    async fn task_record_at(&self, task: &TaskId) -> Result<Option<(TaskRecord, u64)>, Error> {
        let (record, revision) = self
            .current::<TaskRecord>(task, &names::record_key(task), "task record")
            .await?;
        Ok(record.zip(revision))
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

    /// True when a PENDING task may be published again: the server still drops a repeat of
    /// it. Its record was written just before its first publish, so the record's age bounds
    /// how long ago a first copy can have been stored.
    async fn may_repeat(&self, task: &TaskId, record: &TaskRecord) -> bool {
        let age = Duration::from_millis(now_ms().saturating_sub(record.updated_at_ms));
        match self.duplicate_window(task).await {
            Ok(window) => age + WINDOW_MARGIN < window,
            Err(error) => {
                tracing::warn!(%error, task_id = %task, "reading the task queue's duplicate window failed; the task is not published again");
                false
            }
        }
    }

    /// The window in which the server drops a repeat of the task (its queue's setting).
    async fn duplicate_window(&self, task: &TaskId) -> Result<Duration, Error> {
        let stream = names::tasks_stream(task.endpoint());
        let info = self
            .js
            .get_stream(&stream)
            .await
            .map_err(|source| Error::ConsumerInfo {
                stream: stream.clone(),
                consumer: names::TASKS_CONSUMER.into(),
                source: source.into(),
            })?;
        Ok(info.cached_info().config.duplicate_window)
    }

    /// Publishes the task under its id until the server acknowledges it, sending it again
    /// after a lost connection or a silent wait; by `deadline`, [`Error::Unconfirmed`] when a
    /// copy may have been stored, else the error that kept it out.
    async fn publish_confirmed(&self, task: &TaskMessage, deadline: Instant) -> Result<(), Error> {
        let subject = names::task_subject(&task.task_id);
        let mut unknown: Option<NatsError> = None;
        let mut refused: Option<NatsError> = None;
        let mut retry = 0;
        // Args too large for a message are stored once, before the first publish.
        let payload = self.encode_carrier(None, task).await?;
        while Instant::now() < deadline && self.link.up_by(deadline).await {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(task.task_id.as_str());
            match self.publish_once(task, message, deadline).await? {
                Attempt::Acked => return Ok(()),
                Attempt::Unknown(error) => unknown = Some(error),
                Attempt::NotStored(error) => {
                    refused = Some(error);
                    let pause = retry_delay(retry);
                    retry += 1;
                    if Instant::now() + pause >= deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        match (unknown, refused) {
            (Some(source), _) => Err(Error::Unconfirmed {
                task_id: task.task_id.clone(),
                source,
            }),
            (None, Some(source)) => Err(Error::Publish { subject, source }),
            (None, None) => Err(Error::Unreachable {
                patience: self.settings.task_limits.submit_patience,
            }),
        }
    }

    /// One publish and the wait for its acknowledgement, cut short by `deadline`, by
    /// [`ACK_WAIT`] and by the connection going down. Errors only for a refusal no repeat
    /// changes: a full queue, a task too large.
    async fn publish_once(
        &self,
        task: &TaskMessage,
        message: PublishMessage,
        deadline: Instant,
    ) -> Result<Attempt, Error> {
        let subject = names::task_subject(&task.task_id);
        let went_down = self.link.went_down();
        let acked = match self.js.send_publish(subject, message).await {
            Ok(acked) => acked,
            Err(error) => return refusal(task, error).map(Attempt::NotStored),
        };
        let wait_until = deadline.min(Instant::now() + ACK_WAIT);
        tokio::select! {
            acked = tokio::time::timeout_at(wait_until, async { acked.await }) => match acked {
                Ok(Ok(_)) => Ok(Attempt::Acked),
                Ok(Err(error)) => match error.kind() {
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                        Ok(Attempt::Unknown(error.into()))
                    }
                    _ => refusal(task, error).map(Attempt::NotStored),
                },
                Err(_) => Ok(Attempt::Unknown("no acknowledgement in time".into())),
            },
            () = went_down => Ok(Attempt::Unknown("the connection went down".into())),
        }
    }

    /// Keeps publishing an unconfirmed task in the background while a repeat is still dropped
    /// by the server, so it is queued once even if its client never comes back.
    fn settle_later(&self, task: TaskMessage, submitted: Instant) {
        let Ok(permit) = self.settling.clone().try_acquire_owned() else {
            tracing::warn!(task_id = %task.task_id, "too many unconfirmed tasks; this one is left to its client's resubmission");
            return;
        };
        let queue = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let window_end = submitted + super::tasks::DUPLICATE_WINDOW - WINDOW_MARGIN;
            if !queue.link.up_by(window_end).await {
                tracing::warn!(task_id = %task.task_id, "the task queue stayed unreachable; the unconfirmed task is not published again");
                return;
            }
            let settled = async {
                let window = queue.duplicate_window(&task.task_id).await?;
                let settle_by = submitted + window.saturating_sub(WINDOW_MARGIN);
                if Instant::now() >= settle_by {
                    return Err(Error::Unreachable {
                        patience: settle_by - submitted,
                    });
                }
                queue.publish_confirmed(&task, settle_by).await
            };
            match settled.await {
                Ok(()) => tracing::info!(task_id = %task.task_id, "an unconfirmed task is queued"),
                Err(error) => {
                    tracing::warn!(%error, task_id = %task.task_id, "an unconfirmed task could not be published again")
                }
            }
        });
    }
}

/// The error for a publish the server refused for good, or the refusal to try again.
fn refusal(task: &TaskMessage, error: PublishError) -> Result<NatsError, Error> {
    if super::limits::is_full(&error) {
        return Err(Error::Full {
            endpoint: task.endpoint_id.clone(),
        });
    }
    if error.kind() == PublishErrorKind::MaxPayloadExceeded {
        return Err(Error::Publish {
            subject: names::task_subject(&task.task_id),
            source: error.into(),
        });
    }
    Ok(error.into())
}

/// The pause before publishing again after the server refused a copy (a stream still loading
/// after a restart answers "no responders" for a moment): 50 ms doubling up to 1 s.
fn retry_delay(retry: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << retry.min(5))).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointId;
    use crate::queue::{Held, QueueLimits, QueueSettings, TaskDelivery, testing};

    fn task_of(endpoint: &EndpointId) -> TaskMessage {
        TaskMessage {
            task_id: TaskId::generate(endpoint),
            endpoint_id: endpoint.clone(),
            args: serde_json::json!({"x": 1}),
            input_url: None,
            callback: None,
            submitted_at_ms: now_ms(),
            record_revision: None,
        }
    }

    /// A task whose record was written but whose publish may not have reached the server is
    /// queued by a resubmission under its id, and only once however often it is resubmitted;
    /// a task id with no record is an ordinary key.
    #[tokio::test]
    async fn a_resubmission_under_a_task_id_queues_that_task_once() {
        let (_nats, queue) = testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", "resubmit");
        let spec = crate::queue::QueueSpec {
            endpoint_id: endpoint.clone(),
            task_expiry: Duration::from_secs(600),
            ack_wait: Duration::from_secs(30),
        };
        queue.ensure_task_queue(&spec).await.expect("queue");
        // As an unconfirmed submission leaves it: a PENDING record, no task in the queue.
        let unconfirmed = task_of(&endpoint);
        let record = TaskRecord::pending(endpoint.clone());
        let id = unconfirmed.task_id.to_string();
        queue
            .create_task_record(&unconfirmed.task_id, &record)
            .await
            .expect("record");
        assert_eq!(queue.backlog(&endpoint).await.expect("backlog").queued, 0);
        for _ in 0..3 {
            let again = queue
                .submit(&task_of(&endpoint), Some(&id))
                .await
                .expect("resubmitted");
            assert_eq!(again.task_id, unconfirmed.task_id, "the same task");
            assert!(again.duplicate);
        }
        assert_eq!(
            queue.backlog(&endpoint).await.expect("backlog").queued,
            1,
            "queued once"
        );
        // Taken and acknowledged (gone from the work queue), it is still not queued again.
        let tasks = queue.tasks(&endpoint).await.expect("puller");
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let taking = crate::queue::consume(tasks, 1, &cancel, move |delivery: TaskDelivery| {
            let stop = stop.clone();
            async move {
                delivery.ack().await.expect("acked");
                stop.cancel();
            }
        });
        tokio::time::timeout(Duration::from_secs(30), taking)
            .await
            .expect("taken");
        queue
            .submit(&task_of(&endpoint), Some(&id))
            .await
            .expect("resubmitted");
        let backlog = queue.backlog(&endpoint).await.expect("backlog");
        assert_eq!(
            (backlog.queued, backlog.in_flight),
            (0, 0),
            "not queued again"
        );
        // A task id of this endpoint that no submission made is a key like any other.
        let stranger = TaskId::generate(&endpoint).to_string();
        let fresh = task_of(&endpoint);
        let submitted = queue.submit(&fresh, Some(&stranger)).await.expect("new");
        assert_eq!(submitted.task_id, fresh.task_id);
        assert!(!submitted.duplicate);
        assert_eq!(queue.backlog(&endpoint).await.expect("backlog").queued, 1);
    }

    /// Kills the server under a connected queue: a submission then waits its patience for the
    /// connection and is refused with nothing handed over, neither record nor task.
    #[tokio::test]
    async fn a_submission_while_the_server_is_down_hands_nothing_over() {
        let server = testing::start_with_config("").await;
        let settings = QueueSettings {
            task_limits: QueueLimits {
                submit_patience: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        };
        let queue = Queue::connect(&server.connection, settings, Duration::from_secs(5))
            .await
            .expect("connects");
        let endpoint = EndpointId::for_resource("ml", "down");
        let task = task_of(&endpoint);
        server.stop().await;
        let down = Instant::now() + Duration::from_secs(10);
        while queue.link.is_up() {
            assert!(Instant::now() < down, "the client saw the server go");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = queue.submit(&task, Some("key")).await;
        assert!(
            matches!(refused, Err(Error::Unreachable { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn refused_copies_are_sent_again_after_a_growing_pause() {
        let delays: Vec<u64> = (0..8)
            .map(|retry| retry_delay(retry).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
