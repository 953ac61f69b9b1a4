//! Payloads too large for one NATS message. A server's `max_payload` (1 MiB by default, and
//! the chart may run against a user's server) is below the 10 MiB of args and results ferry
//! takes, so a message whose encoding exceeds [`INLINE_LIMIT`] travels without its args or
//! result: they go to an object of the endpoint's payload bucket (JetStream's Object Store,
//! chunked below any `max_payload`), and the message carries a [`StoredPayload`] in their place
//! (`Versioned::V1Stored`). Every reader gets the whole message back from the queue; no role
//! sees a reference.
//!
//! **One bucket per endpoint.** An object's chunks are published on subjects named by a
//! random nuid (`$O.<bucket>.C.<nuid>`), so no subject pattern of a shared bucket could grant
//! a forwarder its own endpoint's objects and not another's. A bucket per endpoint is one
//! stream per endpoint, which a forwarder's permissions name (`permissions::forwarder_of`).
//!
//! **Lifetime.** Objects live as long as the records that name them: the bucket's age limit
//! is the result retention (or the task expiry, when longer, so a queued task's args outlast
//! its wait), and the bucket goes with its endpoint. Object names carry their content's digest
//! ([`names::payload_object`]): two runs of one task that answered differently store two
//! objects, and the record keeps naming the one its outcome was written with.

use async_nats::jetstream::object_store::{self, ObjectStore, PutErrorKind};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{Error, Queue, envelope, names};
use crate::crd::EndpointId;
use crate::task::{
    CallbackJob, CallbackState, DeadLetter, StoredPayload, TaskId, TaskMessage, TaskOutcome,
    TaskRecord, Versioned,
};

/// Largest message sent whole: well below the smallest `max_payload` a server is run with.
pub(super) const INLINE_LIMIT: usize = 256 * 1024;

/// A message that may carry a large payload, and where that payload is in it.
pub(super) trait Carrier: Serialize + DeserializeOwned + Clone {
    /// What the payload is, in object names.
    const PART: &'static str = "payload";

    /// The task the message belongs to, when the message names it.
    fn task(&self) -> Option<&TaskId> {
        None
    }

    /// The payload, taken out of the message; `None` when it carries none.
    fn take_payload(&mut self) -> Option<Value> {
        None
    }

    fn put_payload(&mut self, _payload: Value) {}
}

impl Carrier for TaskMessage {
    const PART: &'static str = "input";

    fn task(&self) -> Option<&TaskId> {
        Some(&self.task_id)
    }

    fn take_payload(&mut self) -> Option<Value> {
        Some(self.args.take())
    }

    fn put_payload(&mut self, payload: Value) {
        self.args = payload;
    }
}

impl Carrier for TaskRecord {
    const PART: &'static str = "result";

    fn take_payload(&mut self) -> Option<Value> {
        self.result.take()
    }

    fn put_payload(&mut self, payload: Value) {
        self.result = Some(payload);
    }
}

impl Carrier for CallbackJob {
    /// The task's result, as its record has it: the same object serves both.
    const PART: &'static str = "result";

    fn task(&self) -> Option<&TaskId> {
        Some(&self.task_id)
    }

    fn take_payload(&mut self) -> Option<Value> {
        match &mut self.outcome {
            TaskOutcome::Success { result } => Some(result.take()),
            TaskOutcome::Failure { .. } | TaskOutcome::Cancelled => None,
        }
    }

    fn put_payload(&mut self, payload: Value) {
        if let TaskOutcome::Success { result } = &mut self.outcome {
            *result = payload;
        }
    }
}

impl Carrier for DeadLetter {
    const PART: &'static str = CallbackJob::PART;

    fn task(&self) -> Option<&TaskId> {
        self.job.task()
    }

    fn take_payload(&mut self) -> Option<Value> {
        self.job.take_payload()
    }

    fn put_payload(&mut self, payload: Value) {
        self.job.put_payload(payload);
    }
}

impl Carrier for CallbackState {}

impl Queue {
    /// Creates the endpoint's payload bucket, or brings its age limit and replicas up to date.
    /// Safe to repeat.
    pub(super) async fn ensure_payloads(
        &self,
        endpoint: &EndpointId,
        task_expiry: Option<std::time::Duration>,
    ) -> Result<(), Error> {
        let bucket = names::payloads_bucket(endpoint);
        let max_age = task_expiry.map_or(self.settings.result_retention, |expiry| {
            expiry.max(self.settings.result_retention)
        });
        let ensure_error = |source: super::NatsError| Error::EnsureBucket {
            bucket: bucket.clone(),
            source,
        };
        let config = object_store::Config {
            bucket: bucket.clone(),
            description: Some("ferry task args and results too large for a message".into()),
            max_age,
            num_replicas: self.settings.replicas,
            ..Default::default()
        };
        if self.js.create_object_store(config).await.is_ok() {
            return Ok(());
        }
        // It exists with other limits: change those, keep the layout the client gave it.
        let mut stream = self
            .js
            .get_stream(names::object_stream(&bucket))
            .await
            .map_err(|error| ensure_error(error.into()))?;
        let mut config = stream
            .info()
            .await
            .map_err(|error| ensure_error(error.into()))?
            .config
            .clone();
        if (config.max_age, config.num_replicas) != (max_age, self.settings.replicas) {
            config.max_age = max_age;
            config.num_replicas = self.settings.replicas;
            self.js
                .update_stream(config)
                .await
                .map_err(|error| ensure_error(error.into()))?;
        }
        Ok(())
    }

    /// Removes the endpoint's payload bucket with every object in it; removing one that does
    /// not exist succeeds.
    pub(super) async fn delete_payloads(&self, endpoint: &EndpointId) -> Result<(), Error> {
        let stream = names::object_stream(&names::payloads_bucket(endpoint));
        self.delete_stream(stream).await
    }

    /// `value` as a message: whole when it is small, else with its payload stored apart.
    /// `task` names the task when the message does not.
    pub(super) async fn encode_carrier<T: Carrier>(
        &self,
        task: Option<&TaskId>,
        value: &T,
    ) -> Result<Bytes, Error> {
        let whole = envelope::encode(value);
        if whole.len() <= INLINE_LIMIT {
            return Ok(whole);
        }
        let mut message = value.clone();
        let (Some(task), Some(payload)) = (task.or(value.task()), message.take_payload()) else {
            return Ok(whole);
        };
        let payload = self.store_payload(task, T::PART, &payload).await?;
        // Our own plain structs serialize to JSON without fail (see `envelope::encode`).
        let stored = serde_json::to_vec(&Versioned::V1Stored { payload, message });
        Ok(Bytes::from(stored.unwrap_or_default()))
    }

    /// The message `bytes` encode, with its payload back in place when it was stored apart.
    /// `task` names the task when the message does not.
    pub(super) async fn decode_carrier<T: Carrier>(
        &self,
        task: Option<&TaskId>,
        what: &'static str,
        bytes: &[u8],
    ) -> Result<T, Error> {
        let versioned = serde_json::from_slice::<Versioned<T>>(bytes)
            .map_err(|source| Error::Decode { what, source })?;
        self.resolve(task, versioned).await
    }

    /// The message with its payload back in place when it was stored apart.
    pub(super) async fn resolve<T: Carrier>(
        &self,
        task: Option<&TaskId>,
        versioned: Versioned<T>,
    ) -> Result<T, Error> {
        let (payload, mut message) = match versioned {
            Versioned::V1(message) => return Ok(message),
            Versioned::V1Stored { payload, message } => (payload, message),
        };
        let endpoint = task
            .or(message.task())
            .map(|task| task.endpoint().clone())
            .ok_or_else(|| Error::LoadPayload {
                object: payload.object.clone(),
                source: "the message names no task".into(),
            })?;
        message.put_payload(self.load_payload(&endpoint, &payload).await?);
        Ok(message)
    }

    async fn payloads(&self, endpoint: &EndpointId) -> Result<ObjectStore, super::NatsError> {
        Ok(self
            .js
            .get_object_store(names::payloads_bucket(endpoint))
            .await?)
    }

    /// Stores `payload` as `part` of `task`, unless an object of the same content is there.
    async fn store_payload(
        &self,
        task: &TaskId,
        part: &str,
        payload: &Value,
    ) -> Result<StoredPayload, Error> {
        let bytes = serde_json::to_vec(payload).unwrap_or_default();
        let object = names::payload_object(task, part, &Sha256::digest(&bytes));
        let stored = StoredPayload {
            object: object.clone(),
            bytes: bytes.len() as u64,
        };
        let store_error = |source| Error::StorePayload {
            object: object.clone(),
            source,
        };
        let store = self.payloads(task.endpoint()).await.map_err(store_error)?;
        if store.info(&object).await.is_ok_and(|info| !info.deleted) {
            return Ok(stored);
        }
        match store.put(object.as_str(), &mut bytes.as_slice()).await {
            Ok(_) => Ok(stored),
            // Written, then refused the purge of a twin written at the same moment, whose
            // chunks stay until they age out.
            Err(error) if error.kind() == PutErrorKind::PurgeOldChunks => Ok(stored),
            Err(error) => Err(store_error(error.into())),
        }
    }

    async fn load_payload(
        &self,
        endpoint: &EndpointId,
        stored: &StoredPayload,
    ) -> Result<Value, Error> {
        let load_error = |source| Error::LoadPayload {
            object: stored.object.clone(),
            source,
        };
        let store = self.payloads(endpoint).await.map_err(load_error)?;
        let mut object = store
            .get(&stored.object)
            .await
            .map_err(|error| load_error(error.into()))?;
        let mut bytes = Vec::with_capacity(stored.bytes.try_into().unwrap_or_default());
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| load_error(error.into()))?;
        serde_json::from_slice(&bytes).map_err(|error| load_error(error.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueSpec;
    use crate::task::TaskError;

    fn large_args(bytes: usize) -> Value {
        serde_json::json!({ "blob": "x".repeat(bytes) })
    }

    #[test]
    fn a_stored_message_decodes_without_its_payload_for_its_id() {
        let endpoint = EndpointId::for_resource("ml", "large");
        let task = TaskMessage {
            task_id: TaskId::generate(&endpoint),
            endpoint_id: endpoint,
            args: Value::Null,
            callback: None,
            submitted_at_ms: 1,
            record_revision: None,
        };
        let payload = StoredPayload {
            object: "o".into(),
            bytes: 3,
        };
        let bytes = serde_json::to_vec(&Versioned::V1Stored {
            payload,
            message: task.clone(),
        })
        .expect("encodes");
        let decoded: TaskMessage = envelope::decode("task message", &bytes).expect("decodes");
        assert_eq!(decoded.task_id, task.task_id);
    }

    /// Through a real server with its default 1 MiB `max_payload`: a 3 MiB input, result and
    /// callback job travel by reference and come back whole; a small one travels in its message.
    #[tokio::test]
    async fn payloads_above_the_inline_limit_travel_apart_and_come_back_whole() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", "large");
        let spec = QueueSpec {
            endpoint_id: endpoint.clone(),
            task_expiry: std::time::Duration::from_secs(60),
            ack_wait: std::time::Duration::from_secs(30),
        };
        queue
            .prepare_endpoint(&endpoint, &Default::default(), Some(&spec))
            .await
            .expect("prepared");
        let task = TaskMessage {
            task_id: TaskId::generate(&endpoint),
            endpoint_id: endpoint.clone(),
            args: large_args(3 << 20),
            callback: None,
            submitted_at_ms: 1,
            record_revision: None,
        };
        let bytes = queue.encode_carrier(None, &task).await.expect("stored");
        assert!(bytes.len() < INLINE_LIMIT, "{} bytes travel", bytes.len());
        let back: TaskMessage = queue
            .decode_carrier(None, "task message", &bytes)
            .await
            .expect("loaded");
        assert_eq!(back, task);

        let record = TaskRecord {
            status: crate::task::TaskStatus::Success,
            result: Some(large_args(3 << 20)),
            ..TaskRecord::pending(endpoint.clone())
        };
        let recorded = queue
            .advance_task_record(&task.task_id, &record, None)
            .await
            .expect("recorded");
        assert_eq!(recorded.record, record);
        let read = queue.task_record(&task.task_id).await.expect("read");
        assert_eq!(read, Some(record));

        let failure = TaskRecord {
            status: crate::task::TaskStatus::Failure,
            error: Some(TaskError {
                message: "small".into(),
                detail: None,
            }),
            ..TaskRecord::pending(endpoint.clone())
        };
        let small = queue
            .encode_carrier(Some(&task.task_id), &failure)
            .await
            .expect("whole");
        assert_eq!(
            small,
            envelope::encode(&failure),
            "a small record travels whole"
        );
    }
}
