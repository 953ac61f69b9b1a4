//! A worker announces itself every few seconds and whenever its readiness changes — its
//! endpoint, whether it takes work, where it serves — so gateways serving fixed manifests,
//! which have no cluster to ask, know their workers (see [`crate::queue::WorkerPresence`]).
//! A stopping worker says so at once.

use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::crd::EndpointId;
use crate::queue::{ForwarderQueue, PRESENCE_EVERY, WorkerPresence};

pub async fn announce(
    queue: ForwarderQueue,
    endpoint: EndpointId,
    serving_url: Option<String>,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    let mut presence = WorkerPresence {
        endpoint,
        worker: uuid::Uuid::now_v7().simple().to_string(),
        ready: false,
        serving_url,
        leaving: false,
    };
    let mut changes = readiness.watch();
    loop {
        presence.ready = readiness.is_ready();
        presence.leaving = cancel.is_cancelled();
        if let Err(error) = queue.announce(&presence).await {
            tracing::debug!(%error, "announcing this worker failed; trying again shortly");
        }
        if presence.leaving {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = changes.changed() => {}
            () = tokio::time::sleep(PRESENCE_EVERY) => {}
        }
    }
}
