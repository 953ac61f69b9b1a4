//! The callbacks stream the dispatcher consumes, and the dead-letter stream beside it.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, pull},
    message::PublishMessage,
    stream::{self, RetentionPolicy},
};
use futures::{Stream, StreamExt};

use super::{Error, Queue, QueueSettings, names, results};
use crate::task::CallbackJob;

/// Window in which a repeated callback job for the same task is dropped by the server.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The dispatcher must answer each delivery within this time: longer than one attempt's timeout.
const CALLBACK_ACK_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn ensure_streams(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<(), Error> {
    let callbacks = stream::Config {
        name: names::CALLBACKS_STREAM.into(),
        subjects: vec![names::CALLBACKS_SUBJECTS.into()],
        retention: RetentionPolicy::WorkQueue,
        max_age: settings.result_retention,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let dead_letters = stream::Config {
        name: names::DEAD_LETTERS_STREAM.into(),
        subjects: vec![names::DEAD_LETTER_SUBJECTS.into()],
        retention: RetentionPolicy::Limits,
        max_age: settings.result_retention,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    for config in [callbacks, dead_letters] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| Error::EnsureStream {
                stream: name,
                source: source.into(),
            })?;
    }
    let consumer = pull::Config {
        durable_name: Some(names::CALLBACKS_CONSUMER.into()),
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
        })
}

/// A callback job handed to the dispatcher.
pub struct CallbackDelivery {
    message: jetstream::Message,
}

impl CallbackDelivery {
    pub fn job(&self) -> Result<CallbackJob, Error> {
        results::decode("callback job", &self.message.payload)
    }

    /// How many times this job has been delivered, counting this one.
    pub fn attempt(&self) -> u32 {
        self.message
            .info()
            .map(|info| info.delivered.max(1) as u32)
            .unwrap_or(1)
    }

    /// Done with the job: delivered or dead-lettered.
    pub async fn ack(&self) -> Result<(), Error> {
        self.message
            .ack()
            .await
            .map_err(|source| Error::Ack { source })
    }

    /// Hands the job back to be delivered again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), Error> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|source| Error::Ack { source })
    }
}

impl Queue {
    /// Queues a callback. Publishing it again for the same task within two minutes is a no-op.
    pub async fn publish_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        let subject = names::callbacks_subject(&job.endpoint_id);
        self.publish_once(subject, job, job.task_id.as_str()).await
    }

    /// Keeps an undeliverable callback where an operator can find and redeliver it.
    pub async fn publish_dead_letter(&self, job: &CallbackJob) -> Result<(), Error> {
        let subject = names::dead_letter_subject(&job.endpoint_id);
        self.publish_once(subject, job, job.task_id.as_str()).await
    }

    async fn publish_once(
        &self,
        subject: String,
        job: &CallbackJob,
        id: &str,
    ) -> Result<(), Error> {
        let message = PublishMessage::build()
            .payload(results::encode(job))
            .message_id(id);
        let publish = async {
            self.js
                .send_publish(subject.clone(), message)
                .await?
                .await?;
            Ok::<_, async_nats::Error>(())
        };
        publish
            .await
            .map_err(|source| Error::Publish { subject, source })
    }

    /// Callback jobs of every endpoint, `batch` requested from the server at a time.
    pub async fn callback_jobs(
        &self,
        batch: usize,
    ) -> Result<impl Stream<Item = Result<CallbackDelivery, Error>> + use<>, Error> {
        let receive_error = |source: super::NatsError| Error::Receive {
            consumer: names::CALLBACKS_CONSUMER.into(),
            source,
        };
        let consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(names::CALLBACKS_CONSUMER, names::CALLBACKS_STREAM)
            .await
            .map_err(|error| receive_error(error.into()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .map_err(|error| receive_error(error.into()))?;
        Ok(messages.map(move |item| {
            item.map(|message| CallbackDelivery { message })
                .map_err(|error| Error::Receive {
                    consumer: names::CALLBACKS_CONSUMER.into(),
                    source: error.into(),
                })
        }))
    }
}
