//! What gateways serving fixed manifests (no cluster, no operator) learn through NATS instead
//! of the Kubernetes API: which workers of an endpoint are up, ready and where they serve
//! (announced on core NATS every few seconds, nothing stored: an announcement is worth only
//! its freshness), and when each endpoint was first served (one key per endpoint, written once
//! by whichever gateway comes first).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Error, Queue, names};
use crate::crd::EndpointId;

/// How often a worker announces itself. A gateway forgets a worker it has not heard from for
/// [`PRESENCE_EXPIRY`].
pub const PRESENCE_EVERY: Duration = Duration::from_secs(2);
pub const PRESENCE_EXPIRY: Duration = Duration::from_secs(7);

/// One worker's announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPresence {
    pub endpoint: EndpointId,
    /// Random per worker process: announcements of one worker replace each other.
    pub worker: String,
    /// Taking tasks or requests now (its model answers).
    pub ready: bool,
    /// Where a serving worker (sync or streaming) takes the gateway's requests, if it says.
    pub serving_url: Option<String>,
    /// The worker is stopping: forget it now rather than at expiry.
    pub leaving: bool,
}

impl Queue {
    pub(super) async fn announce_worker(&self, presence: &WorkerPresence) -> Result<(), Error> {
        let subject = names::workers_subject(&presence.endpoint);
        let payload = serde_json::to_vec(presence).map_err(|source| Error::Decode {
            what: "worker presence",
            source,
        })?;
        let client = self.js.client();
        let published = client.publish(subject.clone(), payload.into()).await;
        let published = match published {
            // A leaving worker's last word must go out before the process ends.
            Ok(()) if presence.leaving => client.flush().await.map_err(Into::into),
            other => other.map_err(Into::into),
        };
        published.map_err(|source: super::NatsError| Error::Publish { subject, source })
    }

    /// Every announcement of every endpoint's workers from now on; ones that do not parse, or
    /// whose endpoint differs from their subject's, are skipped (a forwarder may publish on
    /// its own endpoint's subject only, so the subject is what vouches for it).
    pub(super) async fn worker_presences(
        &self,
    ) -> Result<impl Stream<Item = WorkerPresence> + use<>, Error> {
        let subscriber = self
            .subscribe(names::ALL_WORKERS_SUBJECTS.to_owned())
            .await?;
        Ok(subscriber.filter_map(|message| async move {
            let presence: WorkerPresence = serde_json::from_slice(&message.payload)
                .inspect_err(|error| tracing::debug!(%error, "skipping a worker presence that does not parse"))
                .ok()?;
            (message.subject.as_str() == names::workers_subject(&presence.endpoint))
                .then_some(presence)
        }))
    }

    /// When each of `endpoints` was first served: recorded now for those no gateway served
    /// before, read back for the others.
    pub(super) async fn first_served(
        &self,
        endpoints: &[EndpointId],
    ) -> Result<Vec<jiff::Timestamp>, Error> {
        let bucket = super::ensure_bucket(
            &self.js,
            kv::Config {
                bucket: names::ENDPOINTS_BUCKET.to_owned(),
                description: "When each endpoint of fixed manifests was first served".to_owned(),
                history: 1,
                num_replicas: self.settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        let mut times = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            times.push(first_served_one(&bucket, endpoint).await?);
        }
        Ok(times)
    }
}

async fn first_served_one(
    bucket: &kv::Store,
    endpoint: &EndpointId,
) -> Result<jiff::Timestamp, Error> {
    let key = endpoint.to_string();
    let now = jiff::Timestamp::now();
    match bucket.create(key.as_str(), now.to_string().into()).await {
        Ok(_) => return Ok(now),
        Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::Write {
                key,
                source: source.into(),
            });
        }
    }
    let unreadable = |source: super::NatsError| Error::Read {
        key: key.clone(),
        source,
    };
    let value = bucket
        .get(key.as_str())
        .await
        .map_err(|error| unreadable(error.into()))?
        .ok_or_else(|| unreadable("the key vanished after it existed".into()))?;
    String::from_utf8_lossy(&value)
        .parse()
        .map_err(|error: jiff::Error| unreadable(error.into()))
}
