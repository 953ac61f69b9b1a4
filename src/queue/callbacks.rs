//! Callback delivery state in JetStream: the callbacks stream the dispatcher consumes (retries
//! wait in it as scheduled messages, holding no consumer capacity), the dead-letter bucket, and
//! the bucket of endpoint callback policies.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, pull},
    kv,
    message::PublishMessage,
    stream::{self, RetentionPolicy},
};
use futures::{Stream, StreamExt};

use super::results::KV_OPERATION;
use super::{Error, Queue, QueueSettings, envelope, limits, names};
use crate::crd::EndpointId;
use crate::task::{CallbackJob, CallbackPolicy, DeadLetter, TaskId, Versioned};

/// Window in which a repeated callback job for the same task is dropped by the server.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A dispatcher that shows no sign of life for this long loses the job to another: one that
/// crashed mid-attempt has it retried within seconds. Longer attempts renew the lease
/// ([`CALLBACK_LEASE_RENEWAL`]).
const CALLBACK_ACK_WAIT: Duration = Duration::from_secs(15);
/// How often a dispatcher renews its lease on a job it is working on.
pub const CALLBACK_LEASE_RENEWAL: Duration = Duration::from_secs(5);

pub(super) struct Buckets {
    pub dead_letters: kv::Store,
    pub policies: kv::Store,
}

pub(super) async fn ensure(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<Buckets, Error> {
    let callbacks = stream::Config {
        name: names::CALLBACKS_STREAM.into(),
        subjects: vec![
            names::CALLBACKS_SUBJECTS.into(),
            names::RETRY_SUBJECTS.into(),
        ],
        retention: RetentionPolicy::WorkQueue,
        max_age: settings.result_retention,
        // Bounded per job and by age only: scheduled retries need discard-old, under which a
        // count bound would drop waiting callbacks.
        max_message_size: limits::CALLBACK_JOB_MAX_BYTES,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        allow_message_schedules: true,
        ..Default::default()
    };
    js.create_or_update_stream(callbacks)
        .await
        .map_err(|source| Error::EnsureStream {
            stream: names::CALLBACKS_STREAM.into(),
            source: source.into(),
        })?;
    let consumer = pull::Config {
        durable_name: Some(names::CALLBACKS_CONSUMER.into()),
        filter_subject: names::CALLBACKS_SUBJECTS.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: CALLBACK_ACK_WAIT,
        max_ack_pending: 20_000,
        ..Default::default()
    };
    js.create_consumer_on_stream(consumer, names::CALLBACKS_STREAM)
        .await
        .map(drop)
        .map_err(|source| Error::EnsureConsumer {
            stream: names::CALLBACKS_STREAM.into(),
            consumer: names::CALLBACKS_CONSUMER.into(),
            source: source.into(),
        })?;
    let bucket = |name: &str, description: &str, max_age: Duration, max_value_size| kv::Config {
        bucket: name.into(),
        description: description.into(),
        history: 1,
        max_age,
        max_value_size,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let dead_letters = bucket(
        names::DEAD_LETTERS_BUCKET,
        "ferry callbacks given up on",
        settings.result_retention,
        limits::RECORD_MAX_BYTES,
    );
    let policies = bucket(
        names::POLICIES_BUCKET,
        "ferry endpoint callback policies",
        Duration::ZERO,
        limits::POLICY_MAX_BYTES,
    );
    Ok(Buckets {
        dead_letters: super::ensure_bucket(js, dead_letters).await?,
        policies: super::ensure_bucket(js, policies).await?,
    })
}

/// The `Nats-Schedule` value for `delay` after `now_ms` (Unix milliseconds): an RFC 3339 time
/// with milliseconds, rounded up, so a retry is never due before its delay (or a receiver's
/// `Retry-After`) has passed — however short the delay.
fn schedule_at(now_ms: u64, delay: Duration) -> String {
    let delay_ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let due_ms = i64::try_from(now_ms.saturating_add(delay_ms)).unwrap_or(i64::MAX);
    let due = jiff::Timestamp::from_millisecond(due_ms).unwrap_or(jiff::Timestamp::MAX);
    format!("@at {}", due.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// The job's endpoint, and the endpoint its task id names, must be its subject's: a job for
/// another endpoint's task would change that task's callback state.
fn check_subject(job: &CallbackJob, subject: &str) -> Result<(), Error> {
    let vouched = names::endpoint_of_callbacks_subject(subject);
    let foreign = [&job.endpoint_id, job.task_id.endpoint()]
        .into_iter()
        .find(|claimed| vouched.as_ref() != Some(*claimed));
    match foreign {
        None => Ok(()),
        Some(claimed) => Err(Error::ForeignCallbackJob {
            claimed: claimed.to_string(),
            subject: subject.to_owned(),
        }),
    }
}

/// A callback job handed to the dispatcher.
pub struct CallbackDelivery {
    message: jetstream::Message,
    /// Where a result stored apart is loaded from.
    queue: std::sync::Arc<Queue>,
}

impl super::Held for CallbackDelivery {
    fn message(&self) -> &jetstream::Message {
        &self.message
    }
}

impl CallbackDelivery {
    /// The job, if the subject it arrived on is its own endpoint's, with its result loaded
    /// when it was stored apart.
    pub async fn job(&self) -> Result<CallbackJob, Error> {
        let versioned = serde_json::from_slice::<Versioned<CallbackJob>>(&self.message.payload)
            .map_err(|source| Error::Decode {
                what: "callback job",
                source,
            })?;
        // The subject vouches for the endpoint before its payload bucket is read.
        check_subject(versioned.message(), &self.message.subject)?;
        self.queue.resolve(None, versioned).await
    }

    /// How many times the server has handed out this message, counting this time.
    pub fn deliveries(&self) -> u32 {
        self.message
            .info()
            .map(|info| info.delivered.max(1) as u32)
            .unwrap_or(1)
    }

    /// Hands the message back unattempted, to be offered again after `delay`.
    pub async fn defer(&self, delay: Duration) -> Result<(), Error> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|source| Error::Ack { source })
    }
}

impl Queue {
    fn dead_letters_bucket(&self) -> Result<&kv::Store, Error> {
        self.dead_letters.as_ref().ok_or(Error::NotHeld {
            role: super::Role::Forwarder,
            bucket: names::DEAD_LETTERS_BUCKET,
        })
    }

    fn policies_bucket(&self) -> Result<&kv::Store, Error> {
        self.policies.as_ref().ok_or(Error::NotHeld {
            role: super::Role::Forwarder,
            bucket: names::POLICIES_BUCKET,
        })
    }

    /// Queues a task's callback. Publishing it again for the same task within two minutes is a
    /// no-op, so a worker that repeats itself after a crash sends one callback.
    pub(super) async fn publish_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        let id = names::callback_message_id(&job.task_id, None);
        self.publish_job(
            names::callbacks_subject(&job.endpoint_id),
            job,
            Some(id),
            HeaderMap::new(),
        )
        .await
    }

    /// Queues a retry of `job` due after `delay`. Every delay, short or long, waits in the
    /// stream as a scheduled message, so it holds no consumer capacity and is never early.
    pub(super) async fn schedule_callback(
        &self,
        job: &CallbackJob,
        delay: Duration,
    ) -> Result<(), Error> {
        let target = names::callbacks_subject(&job.endpoint_id);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_SCHEDULE,
            schedule_at(crate::task::now_ms(), delay).as_str(),
        );
        headers.insert(async_nats::header::NATS_SCHEDULE_TARGET, target.as_str());
        self.publish_job(names::retry_subject(&job.task_id), job, None, headers)
            .await
    }

    /// Queues a dead-lettered callback again, with a fresh retry schedule.
    pub(super) async fn redeliver_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        let id = names::callback_message_id(
            &job.task_id,
            Some(&format!("redeliver-{}", crate::task::now_ms())),
        );
        let job = CallbackJob {
            prior_attempts: 0,
            redeliveries: job.redeliveries + 1,
            ..job.clone()
        };
        self.publish_job(
            names::callbacks_subject(&job.endpoint_id),
            &job,
            Some(id),
            HeaderMap::new(),
        )
        .await
    }

    async fn publish_job(
        &self,
        subject: String,
        job: &CallbackJob,
        message_id: Option<String>,
        headers: HeaderMap,
    ) -> Result<(), Error> {
        let mut message = PublishMessage::build()
            .payload(self.encode_carrier(None, job).await?)
            .headers(headers);
        if let Some(id) = message_id {
            message = message.message_id(id);
        }
        match self.publish_acked(&subject, message).await {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Publish {
                subject,
                source: source.into(),
            }),
        }
    }

    /// A puller of callback jobs (of every endpoint) for the dispatcher.
    pub(super) async fn callback_jobs(&self) -> Result<super::Puller<CallbackDelivery>, Error> {
        let queue = std::sync::Arc::new(self.clone());
        let wrap = move |message| CallbackDelivery {
            message,
            queue: queue.clone(),
        };
        super::Puller::open(
            &self.js,
            names::CALLBACKS_STREAM,
            names::CALLBACKS_CONSUMER,
            wrap,
        )
        .await
    }

    pub(super) async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        let key = names::dead_letter_key(&letter.job.endpoint_id, &letter.job.task_id);
        let value = self.encode_carrier(None, letter).await?;
        match self.dead_letters_bucket()?.put(key.as_str(), value).await {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Write {
                key,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn dead_letter(
        &self,
        endpoint: &EndpointId,
        task: &TaskId,
    ) -> Result<Option<DeadLetter>, Error> {
        let key = names::dead_letter_key(endpoint, task);
        match self.dead_letters_bucket()?.get(key.as_str()).await {
            Ok(Some(bytes)) => self
                .decode_carrier(None, "dead letter", &bytes)
                .await
                .map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(Error::Read {
                key,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn remove_dead_letter(
        &self,
        endpoint: &EndpointId,
        task: &TaskId,
    ) -> Result<(), Error> {
        let key = names::dead_letter_key(endpoint, task);
        self.dead_letters_bucket()?
            .purge(key.as_str())
            .await
            .map_err(|source| Error::Write {
                key,
                source: source.into(),
            })
    }

    /// The dead letters of `endpoints` (of every endpoint when `None`). The server filters by
    /// key, so another endpoint's letters are never read.
    pub(super) async fn dead_letters(
        &self,
        endpoints: Option<&[EndpointId]>,
    ) -> Result<Vec<DeadLetter>, Error> {
        let bucket = self.dead_letters_bucket()?;
        let filter_subjects = match endpoints {
            Some([]) => return Ok(Vec::new()),
            Some(endpoints) => endpoints
                .iter()
                .map(|endpoint| {
                    format!("{}{}", bucket.prefix, names::dead_letter_keys_of(endpoint))
                })
                .collect(),
            None => vec![format!("{}>", bucket.prefix)],
        };
        let list_error = |source: super::NatsError| Error::Read {
            key: format!("{} keys", names::DEAD_LETTERS_BUCKET),
            source,
        };
        let consumer = bucket
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subjects,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| list_error(e.into()))?;
        // The letters present when the listing began; later ones wait for the next listing.
        let present = consumer.cached_info().num_pending as usize;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| list_error(e.into()))?;
        let mut letters = Vec::with_capacity(present);
        for _ in 0..present {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| list_error(e.into()))?;
            // Removed letters leave a marker carrying this header; a kept letter has none.
            let removed = message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(KV_OPERATION).is_some());
            if !removed {
                let payload = &message.payload;
                letters.push(self.decode_carrier(None, "dead letter", payload).await?);
            }
        }
        Ok(letters)
    }

    /// Publishes an endpoint's resolved callback policy for the dispatcher.
    pub(super) async fn put_callback_policy(
        &self,
        endpoint: &EndpointId,
        policy: &CallbackPolicy,
    ) -> Result<(), Error> {
        let key = endpoint.to_string();
        match self
            .policies_bucket()?
            .put(key.as_str(), envelope::encode(policy))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Write {
                key,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn callback_policy(
        &self,
        endpoint: &EndpointId,
    ) -> Result<Option<CallbackPolicy>, Error> {
        let key = endpoint.to_string();
        match self.policies_bucket()?.get(key.as_str()).await {
            Ok(Some(bytes)) => envelope::decode("callback policy", &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(Error::Read {
                key,
                source: source.into(),
            }),
        }
    }

    /// Removes an endpoint's callback policy, and with it the endpoint's sealed secrets.
    pub(super) async fn delete_callback_policy(&self, endpoint: &EndpointId) -> Result<(), Error> {
        let key = endpoint.to_string();
        self.policies_bucket()?
            .purge(key.as_str())
            .await
            .map_err(|source| Error::Write {
                key,
                source: source.into(),
            })
    }

    /// The endpoints whose callback policy changes from now on.
    pub(super) async fn callback_policy_changes(
        &self,
    ) -> Result<impl Stream<Item = EndpointId> + use<>, Error> {
        let watch = self
            .policies_bucket()?
            .watch_all()
            .await
            .map_err(|source| Error::Receive {
                consumer: format!("{} watch", names::POLICIES_BUCKET),
                source: source.into(),
            })?;
        Ok(watch.filter_map(|entry| async move {
            entry.ok().and_then(|entry| EndpointId::parse(&entry.key))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Held;
    use crate::seal::KeyRing;
    use crate::task::{CallbackTarget, TaskId, TaskOutcome};

    #[test]
    fn a_schedule_is_never_due_before_its_delay() {
        // 2025-01-01T00:00:00.100Z
        let now_ms = 1_735_689_600_100;
        assert_eq!(
            schedule_at(now_ms, Duration::from_millis(300)),
            "@at 2025-01-01T00:00:00.400Z",
            "sub-second delays are kept"
        );
        assert_eq!(
            schedule_at(now_ms, Duration::from_micros(1)),
            "@at 2025-01-01T00:00:00.101Z",
            "rounded up to the next millisecond"
        );
        assert_eq!(
            schedule_at(now_ms, Duration::from_secs(3600)),
            "@at 2025-01-01T01:00:00.100Z"
        );
    }

    fn job_of(ring: &KeyRing, endpoint: &EndpointId, prior_attempts: u32) -> CallbackJob {
        let task_id = TaskId::generate(endpoint);
        let target = CallbackTarget {
            url: "http://127.0.0.1:9/".into(),
            auth: None,
        };
        CallbackJob {
            target: target.seal_for(ring, endpoint, &task_id).expect("seals"),
            task_id,
            endpoint_id: endpoint.clone(),
            outcome: TaskOutcome::Success {
                result: serde_json::json!({}),
            },
            submitted_at_ms: 0,
            prior_attempts,
            redeliveries: 0,
        }
    }

    type Read = (std::time::Instant, Result<CallbackJob, Error>);

    /// Consumes callback jobs one at a time, as the dispatcher does, handing each on with the
    /// time it arrived; cancel the token and await the handle to stop.
    async fn read_jobs(
        queue: &Queue,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<Read>,
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let jobs = queue.callback_jobs().await.expect("consumer");
        let (read, reads) = tokio::sync::mpsc::unbounded_channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        let consuming = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                super::super::consume(jobs, 1, &cancel, |delivery: CallbackDelivery| {
                    let read = read.clone();
                    async move {
                        let arrived = std::time::Instant::now();
                        let _ = delivery.ack().await;
                        let _ = read.send((arrived, delivery.job().await));
                    }
                })
                .await
            })
        };
        (reads, cancel, consuming)
    }

    #[tokio::test]
    async fn a_300_ms_retry_is_not_delivered_before_it_is_due() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let job = job_of(
            &KeyRing::generate(),
            &EndpointId::for_resource("ml", "a"),
            1,
        );
        let (mut deliveries, cancel, consuming) = read_jobs(&queue).await;
        let delay = Duration::from_millis(300);
        let scheduled = std::time::Instant::now();
        queue
            .schedule_callback(&job, delay)
            .await
            .expect("scheduled");
        let (arrived, delivery) = deliveries.recv().await.expect("delivered");
        cancel.cancel();
        consuming.await.expect("consumer stops");
        let waited = arrived - scheduled;
        assert_eq!(delivery.expect("decodes"), job);
        assert!(
            waited >= delay,
            "delivered after {waited:?}, due after {delay:?}"
        );
    }

    /// What a forwarder of endpoint `x` may publish (its own subject), claiming endpoint `y`.
    #[tokio::test]
    async fn a_job_claiming_another_endpoint_than_its_subjects_is_refused() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let x = EndpointId::for_resource("team-x", "a");
        let y = EndpointId::for_resource("team-y", "b");
        let ring = KeyRing::generate();
        let forged = job_of(&ring, &y, 0);
        // Its own endpoint, but another endpoint's task.
        let their_task = CallbackJob {
            endpoint_id: x.clone(),
            ..job_of(&ring, &y, 0)
        };
        let honest = job_of(&ring, &x, 0);
        for sent in [&forged, &their_task, &honest] {
            queue
                .publish_job(names::callbacks_subject(&x), sent, None, HeaderMap::new())
                .await
                .expect("published");
        }
        let (mut reads, cancel, consuming) = read_jobs(&queue).await;
        let mut read = Vec::new();
        for _ in 0..3 {
            read.push(reads.recv().await.expect("a job").1);
        }
        cancel.cancel();
        consuming.await.expect("consumer stops");
        for refused in &read[..2] {
            assert!(
                matches!(refused, Err(Error::ForeignCallbackJob { claimed, .. }) if *claimed == y.to_string()),
                "{refused:?}"
            );
        }
        assert_eq!(
            read.pop().expect("third").expect("its own endpoint's job"),
            honest
        );
    }
}

#[cfg(test)]
mod dead_letter_tests;
mod letters;

pub use letters::{LetterPage, LetterQuery};
