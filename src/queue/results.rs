//! The results bucket: task records, callback delivery states and idempotency keys.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use super::{Error, Queue, QueueSettings, names};
use crate::task::{CallbackState, TaskId, TaskRecord, Versioned};

pub(super) async fn ensure_bucket(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<kv::Store, Error> {
    let config = kv::Config {
        bucket: names::RESULTS_BUCKET.into(),
        description: "ferry task records, callback states and idempotency keys".into(),
        history: 1,
        max_age: settings.result_retention,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    super::ensure_bucket(js, config).await
}

pub(super) fn encode<T: Serialize + Clone>(value: &T) -> Bytes {
    // Serializing our own plain structs to JSON cannot fail: no maps with non-string keys.
    Bytes::from(serde_json::to_vec(&Versioned::V1(value.clone())).unwrap_or_default())
}

pub(super) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice::<Versioned<T>>(bytes)
        .map(Versioned::into_inner)
        .map_err(|source| Error::Decode { what, source })
}

impl Queue {
    /// The task's record, or `None` for an unknown (or expired) task.
    pub async fn task_record(&self, task: &TaskId) -> Result<Option<TaskRecord>, Error> {
        self.read(names::record_key(task), "task record").await
    }

    pub async fn put_task_record(&self, task: &TaskId, record: &TaskRecord) -> Result<(), Error> {
        self.write(names::record_key(task), encode(record)).await
    }

    /// Writes the record only when the task has none yet; `false` when it already had one.
    pub(super) async fn create_task_record(
        &self,
        task: &TaskId,
        record: &TaskRecord,
    ) -> Result<bool, Error> {
        self.create(names::record_key(task), encode(record)).await
    }

    pub async fn callback_state(&self, task: &TaskId) -> Result<Option<CallbackState>, Error> {
        self.read(names::callback_key(task), "callback state").await
    }

    pub async fn put_callback_state(
        &self,
        task: &TaskId,
        state: &CallbackState,
    ) -> Result<(), Error> {
        self.write(names::callback_key(task), encode(state)).await
    }

    async fn read<T: DeserializeOwned>(
        &self,
        key: String,
        what: &'static str,
    ) -> Result<Option<T>, Error> {
        match self.results.get(key.as_str()).await {
            Ok(Some(bytes)) => decode(what, &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(Error::Read {
                key,
                source: source.into(),
            }),
        }
    }

    async fn write(&self, key: String, value: Bytes) -> Result<(), Error> {
        match self.results.put(key.as_str(), value).await {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Write {
                key,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn create(&self, key: String, value: Bytes) -> Result<bool, Error> {
        match self.results.create(key.as_str(), value).await {
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
            .get(key.as_str())
            .await
            .map_err(|source| Error::Read {
                key,
                source: source.into(),
            })
    }
}
