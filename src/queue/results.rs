//! The results bucket: task records, callback delivery states and idempotency keys.
//!
//! A task's record is kept under its endpoint, `task.<endpoint>.<uuid>`, so a forwarder's
//! NATS user can be granted its own endpoint's records and nothing else (see
//! `permissions::forwarder_of`); callback states (`callback.<task>`) and idempotency keys
//! (`idem.<endpoint>.<hash>`) are outside every forwarder's grant. The endpoint comes from the
//! task id itself, which names it (`TaskId`): `GET /v1/async-tasks/{id}` reads one key and a
//! submission writes one record, as before. The other way, an index `task.<id>` → endpoint
//! written in place of the PENDING record, would have cost a second read on every poll,
//! let the index expire before a record last changed later, and left the first worker to
//! create the scoped record instead of writing over the revision its task carries.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::envelope::encode;
use super::objects::Carrier;
use super::{Error, NatsError, Queue, QueueSettings, names};
use crate::crd::EndpointId;
use crate::task::{CallbackState, TaskId, TaskRecord, TaskStatus, now_ms};

/// A task record with the revision of the bucket entry that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordAt {
    pub record: TaskRecord,
    pub revision: u64,
}

/// Conflicting writes to one key a compare-and-set sits out before it gives up. Each conflict
/// means another writer made progress, so this is only reached by a pathological storm.
const MAX_CONFLICTS: usize = 32;

pub(super) async fn ensure_bucket(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<kv::Store, Error> {
    let config = kv::Config {
        bucket: names::RESULTS_BUCKET.into(),
        description: "ferry task records, callback states and idempotency keys".into(),
        history: 1,
        max_age: settings.result_retention,
        max_value_size: super::limits::RECORD_MAX_BYTES,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    super::ensure_bucket(js, config).await
}

/// How this connection reaches the results bucket: through the key-value API, or — for a
/// forwarder — by its own keys alone. A forwarder may not read the bucket's stream info, which
/// would list the keys of every endpoint's tasks (its subjects), so it reads with direct gets
/// and writes with publishes that expect the key's last revision: the two operations its
/// permissions grant on `task.<endpoint>.…` keys.
#[derive(Clone)]
pub(super) enum Results {
    Bucket(Box<kv::Store>),
    OwnKeys(Box<OwnKeys>),
}

#[derive(Clone)]
pub(super) struct OwnKeys {
    js: jetstream::Context,
    stream: jetstream::stream::Stream<()>,
}

/// The header a publish carries to be stored only over the key's revision it names.
const EXPECTED_REVISION: &str = "Nats-Expected-Last-Subject-Sequence";
/// The header JetStream KV puts on the marker a deleted or purged key leaves (a tombstone).
pub(super) const KV_OPERATION: &str = "KV-Operation";

impl Results {
    /// The results bucket's keys, as a forwarder reaches them (no request is made).
    pub(super) async fn own_keys(js: &jetstream::Context) -> Result<Self, Error> {
        let stream = js
            .get_stream_no_info(names::kv_stream(names::RESULTS_BUCKET))
            .await
            .map_err(|source| Error::EnsureBucket {
                bucket: names::RESULTS_BUCKET.into(),
                source: source.into(),
            })?;
        Ok(Results::OwnKeys(Box::new(OwnKeys {
            js: js.clone(),
            stream,
        })))
    }

    /// The whole bucket, for the roles that hold it.
    fn bucket(&self) -> Result<&kv::Store, Error> {
        match self {
            Results::Bucket(store) => Ok(store),
            Results::OwnKeys(_) => Err(Error::NotHeld {
                role: super::Role::Forwarder,
                bucket: names::RESULTS_BUCKET,
            }),
        }
    }

    /// The key's value (`None` for a tombstone) and revision, or `None` when it has neither.
    async fn entry(&self, key: &str) -> Result<Option<(Option<Bytes>, u64)>, NatsError> {
        match self {
            Results::Bucket(store) => Ok(store.entry(key).await?.map(|entry| {
                let value = (entry.operation == kv::Operation::Put).then_some(entry.value);
                (value, entry.revision)
            })),
            Results::OwnKeys(own) => {
                let subject = names::kv_subject(names::RESULTS_BUCKET, key);
                match own.stream.direct_get_last_for_subject(subject).await {
                    Ok(message) => {
                        let tombstone = message.headers.get(KV_OPERATION).is_some();
                        Ok(Some((
                            (!tombstone).then_some(message.payload),
                            message.sequence,
                        )))
                    }
                    Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
                    Err(error) => Err(error.into()),
                }
            }
        }
    }

    /// Writes `value` over `revision` (creating the key when `None`): the new revision, or
    /// `Err(None)` when another writer changed the key first.
    async fn write(
        &self,
        key: &str,
        value: Bytes,
        revision: Option<u64>,
    ) -> Result<u64, Option<NatsError>> {
        match (self, revision) {
            (Results::Bucket(store), Some(revision)) => store
                .update(key, value, revision)
                .await
                .map_err(|error| match error.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(NatsError::from(error)),
                }),
            (Results::Bucket(store), None) => {
                store
                    .create(key, value)
                    .await
                    .map_err(|error| match error.kind() {
                        kv::CreateErrorKind::AlreadyExists => None,
                        _ => Some(NatsError::from(error)),
                    })
            }
            (Results::OwnKeys(own), revision) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    EXPECTED_REVISION,
                    revision.unwrap_or(0).to_string().as_str(),
                );
                let subject = names::kv_subject(names::RESULTS_BUCKET, key);
                let stored = async {
                    own.js
                        .publish_with_headers(subject, headers, value)
                        .await?
                        .await
                };
                match stored.await {
                    Ok(ack) => Ok(ack.sequence),
                    Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Err(None),
                    Err(error) => Err(Some(error.into())),
                }
            }
        }
    }
}

impl Queue {
    /// The task's record, or `None` for an unknown (or expired) task.
    pub(super) async fn task_record(&self, task: &TaskId) -> Result<Option<TaskRecord>, Error> {
        self.read(task, names::record_key(task), "task record")
            .await
    }

    /// Moves the task's record to `record` when the rule of [`TaskStatus::may_become`] allows
    /// it, and returns the record the task has now with its revision: `record`, or the one that
    /// stood and refused it (a final outcome recorded first). `last_seen`, the record as this
    /// writer last saw it, spares a read when it is still current.
    ///
    /// [`TaskStatus::may_become`]: crate::task::TaskStatus::may_become
    pub(super) async fn advance_task_record(
        &self,
        task: &TaskId,
        record: &TaskRecord,
        last_seen: Option<RecordAt>,
    ) -> Result<RecordAt, Error> {
        let assumed = last_seen.map(|seen| (Some(seen.record), Some(seen.revision)));
        let key = names::record_key(task);
        let stored = self
            .compare_and_set(
                task,
                key.clone(),
                "task record",
                assumed,
                |current: Option<TaskRecord>| match current {
                    Some(current) if !current.status.may_become(record.status) => None,
                    // The hand-backs counted so far still bound the task's attempts, and an
                    // outcome keeps the start of the run it ends.
                    Some(current) => Some(TaskRecord {
                        handed_back: current.handed_back.max(record.handed_back),
                        started_at_ms: record.started_at_ms.or(current.started_at_ms),
                        ..record.clone()
                    }),
                    None => Some(record.clone()),
                },
            )
            .await?;
        // Never empty: a record is written whenever none stands.
        stored
            .map(|(record, revision)| RecordAt { record, revision })
            .ok_or_else(|| Error::Write {
                key,
                source: "the record vanished while being written".into(),
            })
    }

    /// Cancels the task if it is still PENDING. The record the task has afterwards, and
    /// whether this call cancelled it; `None` for an unknown task.
    pub(super) async fn cancel_task(
        &self,
        task: &TaskId,
    ) -> Result<Option<(TaskRecord, bool)>, Error> {
        self.end_if_pending(task, TaskRecord::cancelled).await
    }

    /// Records the task expired (a FAILURE, never run) if it is still PENDING: its queue
    /// dropped it unrun. Answers as [`Queue::cancel_task`] does.
    pub(super) async fn expire_task(
        &self,
        task: &TaskId,
    ) -> Result<Option<(TaskRecord, bool)>, Error> {
        self.end_if_pending(task, TaskRecord::expired).await
    }

    /// Ends a PENDING task with the record `ending` makes of its endpoint and the time,
    /// keeping its callback target for the callback of the ending: the compare-and-set on its
    /// record decides between this and a worker recording its start. The record the task has
    /// afterwards, and whether this call ended it; `None` for an unknown task.
    async fn end_if_pending(
        &self,
        task: &TaskId,
        ending: fn(EndpointId, u64) -> TaskRecord,
    ) -> Result<Option<(TaskRecord, bool)>, Error> {
        let ended_now = std::sync::atomic::AtomicBool::new(false);
        let stored = self
            .compare_and_set(
                task,
                names::record_key(task),
                "task record",
                None,
                |current: Option<TaskRecord>| {
                    let pending = current.filter(|record| record.status == TaskStatus::Pending);
                    // Each round decides afresh: the last one's decision is what was stored.
                    ended_now.store(pending.is_some(), std::sync::atomic::Ordering::Relaxed);
                    pending.map(|pending| TaskRecord {
                        handed_back: pending.handed_back,
                        callback: pending.callback,
                        ..ending(pending.endpoint_id, now_ms())
                    })
                },
            )
            .await?;
        let ended_now = ended_now.load(std::sync::atomic::Ordering::Relaxed);
        Ok(stored.map(|(record, _)| (record, ended_now)))
    }

    /// Puts a task this worker recorded as STARTED (`started`) back to PENDING, as it hands
    /// the task back unrun; a record another writer changed since is left as it is.
    pub(super) async fn unstart_task(
        &self,
        task: &TaskId,
        started: &RecordAt,
    ) -> Result<(), Error> {
        let key = names::record_key(task);
        let pending = TaskRecord {
            status: TaskStatus::Pending,
            started_at_ms: None,
            updated_at_ms: now_ms(),
            ..started.record.clone()
        };
        let value = self.encode_carrier(Some(task), &pending).await?;
        match self
            .results
            .write(&key, value, Some(started.revision))
            .await
        {
            Ok(_) | Err(None) => Ok(()),
            Err(Some(source)) => Err(Error::Write { key, source }),
        }
    }

    /// Counts one more delivery of the task returned to the queue unrun, so it does not count
    /// against the task's attempts; a task with a final outcome, or without a record, is left
    /// alone. The count the record holds now, if any.
    pub(super) async fn count_hand_back(&self, task: &TaskId) -> Result<Option<u32>, Error> {
        let key = names::record_key(task);
        let stored = self
            .compare_and_set(
                task,
                key,
                "task record",
                None,
                |current: Option<TaskRecord>| {
                    let current = current.filter(|record| !record.status.is_final())?;
                    Some(TaskRecord {
                        handed_back: current.handed_back.saturating_add(1),
                        ..current
                    })
                },
            )
            .await?;
        Ok(stored.map(|(record, _)| record.handed_back))
    }

    /// Writes the record only when the task has none yet: its revision, or `None` when it
    /// already had one.
    pub(super) async fn create_task_record(
        &self,
        task: &TaskId,
        record: &TaskRecord,
    ) -> Result<Option<u64>, Error> {
        let key = names::record_key(task);
        match self
            .results
            .bucket()?
            .create(key.as_str(), encode(record))
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(source) => Err(Error::Write {
                key,
                source: source.into(),
            }),
        }
    }

    /// Removes the record this writer created at `revision` for a task that was never queued;
    /// a record changed since is left alone. Best effort: a record left behind says PENDING
    /// until it expires, for a task id no client was given.
    pub(super) async fn forget_task_record(&self, task: &TaskId, revision: u64) {
        let key = names::record_key(task);
        let purged = match self.results.bucket() {
            Ok(bucket) => bucket
                .purge_expect_revision(key.as_str(), Some(revision))
                .await
                .map_err(NatsError::from),
            Err(error) => Err(error.into()),
        };
        if let Err(error) = purged {
            tracing::warn!(%error, task_id = %task, "removing the record of a refused task failed");
        }
    }

    pub(super) async fn callback_state(
        &self,
        task: &TaskId,
    ) -> Result<Option<CallbackState>, Error> {
        self.read(task, names::callback_key(task), "callback state")
            .await
    }

    /// Changes the task's callback state with `change` (given the current state, if any) and
    /// returns the state written. `likely_first`: the caller expects no state yet (a first
    /// attempt), so the write is tried before any read; a wrong guess costs one more round.
    pub(super) async fn update_callback_state(
        &self,
        task: &TaskId,
        likely_first: bool,
        change: impl Fn(Option<CallbackState>) -> Option<CallbackState>,
    ) -> Result<Option<CallbackState>, Error> {
        let key = names::callback_key(task);
        let assumed = likely_first.then_some((None, None));
        let stored = self
            .compare_and_set(task, key, "callback state", assumed, change)
            .await?;
        Ok(stored.map(|(state, _)| state))
    }

    /// Writes `change(current)` over the key's current value unless `change` declines (`None`),
    /// as a compare-and-set on the entry's revision: when another writer got there first, it
    /// reads again and decides again. `assumed` (value and revision) stands in for the first
    /// read. Returns the value the key holds afterwards with its revision.
    async fn compare_and_set<T: Carrier>(
        &self,
        task: &TaskId,
        key: String,
        what: &'static str,
        mut assumed: Option<(Option<T>, Option<u64>)>,
        change: impl Fn(Option<T>) -> Option<T>,
    ) -> Result<Option<(T, u64)>, Error> {
        for _ in 0..MAX_CONFLICTS {
            let (current, revision) = match assumed.take() {
                Some(assumed) => assumed,
                None => self.current(task, &key, what).await?,
            };
            let Some(next) = change(current.clone()) else {
                return Ok(current.zip(revision));
            };
            let value = self.encode_carrier(Some(task), &next).await?;
            let written = self.results.write(&key, value, revision).await;
            match written {
                Ok(revision) => return Ok(Some((next, revision))),
                Err(None) => continue,
                Err(Some(source)) => return Err(Error::Write { key, source }),
            }
        }
        Err(Error::Write {
            key,
            source: format!("{MAX_CONFLICTS} writers changed it first, one after another").into(),
        })
    }

    /// The key's value (`None` when absent or deleted) and the revision a write must replace.
    pub(super) async fn current<T: Carrier>(
        &self,
        task: &TaskId,
        key: &str,
        what: &'static str,
    ) -> Result<(Option<T>, Option<u64>), Error> {
        let entry = self
            .results
            .entry(key)
            .await
            .map_err(|source| Error::Read {
                key: key.to_owned(),
                source,
            })?;
        Ok(match entry {
            Some((Some(value), revision)) => {
                let value = self.decode_carrier(Some(task), what, &value).await?;
                (Some(value), Some(revision))
            }
            // A deleted or purged key: its tombstone's revision is the one to replace.
            Some((None, revision)) => (None, Some(revision)),
            None => (None, None),
        })
    }

    async fn read<T: Carrier>(
        &self,
        task: &TaskId,
        key: String,
        what: &'static str,
    ) -> Result<Option<T>, Error> {
        match self.results.entry(key.as_str()).await {
            Ok(Some((Some(value), _))) => self
                .decode_carrier(Some(task), what, &value)
                .await
                .map(Some),
            Ok(_) => Ok(None),
            Err(source) => Err(Error::Read { key, source }),
        }
    }

    pub(super) async fn create(&self, key: String, value: Bytes) -> Result<bool, Error> {
        match self.results.bucket()?.create(key.as_str(), value).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(Error::Write {
                key,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn read_raw(&self, key: String) -> Result<Option<Bytes>, Error> {
        self.results
            .bucket()?
            .get(key.as_str())
            .await
            .map_err(|source| Error::Read {
                key,
                source: source.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointId;
    use crate::task::{DeliveryAttempt, DeliveryState, TaskStatus};

    fn success(endpoint: &EndpointId) -> TaskRecord {
        TaskRecord {
            status: TaskStatus::Success,
            result: Some(serde_json::json!(7)),
            status_code: Some(200),
            ..TaskRecord::pending(endpoint.clone())
        }
    }

    #[tokio::test]
    async fn a_stale_started_after_success_leaves_success_in_place() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", "a");
        let task = TaskId::generate(&endpoint);
        let started = TaskRecord::started(endpoint.clone());
        let first = queue
            .advance_task_record(&task, &started, None)
            .await
            .expect("started");
        assert_eq!(first.record, started, "the first write creates the record");
        let finished = success(&endpoint);
        let outcome = queue
            .advance_task_record(&task, &finished, Some(first.clone()))
            .await
            .expect("done");
        let done = TaskRecord {
            started_at_ms: started.started_at_ms,
            ..finished
        };
        assert_eq!(
            outcome.record, done,
            "written over the record it last saw, keeping the run's start"
        );
        // Another run still believes the record is its STARTED one, and writes again.
        let stale = queue
            .advance_task_record(&task, &started, Some(first.clone()))
            .await
            .expect("stale started");
        assert_eq!(stale, outcome, "the writer learns the outcome that stands");
        let failure = TaskRecord {
            status: TaskStatus::Failure,
            ..TaskRecord::pending(endpoint.clone())
        };
        let second = queue
            .advance_task_record(&task, &failure, Some(first))
            .await
            .expect("second outcome");
        assert_eq!(
            second.record, done,
            "the first final outcome is the task's outcome"
        );
        assert_eq!(queue.task_record(&task).await.expect("read"), Some(done));
    }

    #[tokio::test]
    async fn racing_writers_of_a_callback_state_keep_every_attempt() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let task = TaskId::generate(&EndpointId::for_resource("ml", "a"));
        let writers = (0..16u64).map(|at_ms| {
            let (queue, task) = (queue.clone(), task.clone());
            tokio::spawn(async move {
                let attempt = DeliveryAttempt {
                    at_ms,
                    status_code: Some(200),
                    error: None,
                    duration_ms: 1,
                };
                // One writer delivers; the others saw a failure and would retry.
                let verdict = if at_ms == 3 {
                    DeliveryState::Delivered
                } else {
                    DeliveryState::Pending
                };
                queue
                    .update_callback_state(&task, at_ms % 2 == 0, |current| {
                        Some(
                            current
                                .unwrap_or_default()
                                .with_attempt(attempt.clone(), verdict),
                        )
                    })
                    .await
                    .expect("written")
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.expect("writer");
        }
        let state = queue
            .callback_state(&task)
            .await
            .expect("read")
            .expect("state");
        assert_eq!(state.attempts.len(), 16, "no attempt lost");
        assert_eq!(state.state, DeliveryState::Delivered);
    }
}
