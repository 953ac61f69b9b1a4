//! A gateway serving fixed manifests has no cluster to ask about workers: it learns them from
//! their announcements on NATS (see [`crate::queue::WorkerPresence`]) — where sync and
//! streaming requests can go, and the part of each endpoint's status the operator would report
//! (workers there and ready). Every gateway hears the same announcements, so replicas agree.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tokio::time::{Instant, interval};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::crd::{EndpointId, EndpointState, ModelEndpoint, ModelEndpointStatus, condition};
use crate::queue::{GatewayQueue, PRESENCE_EVERY, PRESENCE_EXPIRY, WorkerPresence};

/// The workers last heard from, per endpoint and worker.
#[derive(Default)]
struct Roster(HashMap<EndpointId, BTreeMap<String, Heard>>);

struct Heard {
    ready: bool,
    serving_url: Option<String>,
    at: Instant,
}

impl Roster {
    /// Takes in an announcement; whether what the gateway shows of its endpoint changed.
    fn hear(&mut self, presence: WorkerPresence, now: Instant) -> bool {
        let endpoint = presence.endpoint.clone();
        let before = self.view(&endpoint);
        let workers = self.0.entry(presence.endpoint).or_default();
        if presence.leaving {
            workers.remove(&presence.worker);
        } else {
            let heard = Heard {
                ready: presence.ready,
                serving_url: presence.serving_url,
                at: now,
            };
            workers.insert(presence.worker, heard);
        }
        self.view(&endpoint) != before
    }

    fn view(&self, endpoint: &EndpointId) -> ((usize, usize), Vec<String>) {
        (self.counts(endpoint), self.serving_urls(endpoint))
    }

    /// Forgets workers not heard from for [`PRESENCE_EXPIRY`]; the endpoints that lost one.
    fn expire(&mut self, now: Instant) -> Vec<EndpointId> {
        let mut changed = Vec::new();
        for (endpoint, workers) in &mut self.0 {
            let before = workers.len();
            workers.retain(|_, heard| now.duration_since(heard.at) < PRESENCE_EXPIRY);
            if workers.len() != before {
                changed.push(endpoint.clone());
            }
        }
        changed
    }

    /// Base URLs of the endpoint's ready serving workers.
    fn serving_urls(&self, endpoint: &EndpointId) -> Vec<String> {
        self.0.get(endpoint).map_or_else(Vec::new, |workers| {
            workers
                .values()
                .filter(|heard| heard.ready)
                .filter_map(|heard| heard.serving_url.clone())
                .collect()
        })
    }

    /// Workers heard from, and those of them ready.
    fn counts(&self, endpoint: &EndpointId) -> (usize, usize) {
        self.0.get(endpoint).map_or((0, 0), |workers| {
            let ready = workers.values().filter(|heard| heard.ready).count();
            (workers.len(), ready)
        })
    }
}

/// The status of an endpoint of fixed manifests with `(workers, ready)` announced: ready once
/// `minWorkers` are (at zero as in a cluster: tasks wait in its queue for a worker).
fn status_of(endpoint: &ModelEndpoint, (workers, ready): (usize, usize)) -> ModelEndpointStatus {
    let wanted = endpoint.spec.min_workers as usize;
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let (state, condition) = if ready >= wanted {
        (
            EndpointState::Ready,
            ("True", "WorkersReady", String::new()),
        )
    } else {
        let message = format!(
            "{ready} of the {wanted} workers minWorkers asks for have announced themselves ready"
        );
        (
            EndpointState::UpdateInProgress,
            ("False", "WorkersNotReady", message),
        )
    };
    let (status, reason, message) = condition;
    ModelEndpointStatus {
        endpoint_id: Some(endpoint.endpoint_id().to_string()),
        state: Some(state),
        replicas: count(workers),
        ready_replicas: count(ready),
        desired_replicas: count(wanted),
        conditions: vec![Condition {
            type_: condition::READY.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: since_unchanged(endpoint, status)
                .unwrap_or_else(|| Time(jiff::Timestamp::now())),
            observed_generation: endpoint.metadata.generation,
        }],
        ..Default::default()
    }
}

/// When the endpoint's Ready condition last changed, if `status` is what it already says: a
/// condition's transition time is when it turned, not when it was last computed.
fn since_unchanged(endpoint: &ModelEndpoint, status: &str) -> Option<Time> {
    let previous = endpoint.status.as_ref()?.conditions.iter();
    previous
        .filter(|c| c.type_ == condition::READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .next()
}

/// Keeps the catalog's workers and statuses of its endpoints to what their workers announce,
/// until `cancel`.
pub async fn follow(queue: GatewayQueue, catalog: Catalog, cancel: CancellationToken) {
    let mut roster = Roster::default();
    let publish = |roster: &Roster, endpoint: &EndpointId| {
        if let Some(spec) = catalog.endpoint(endpoint) {
            catalog.set_workers(endpoint, roster.serving_urls(endpoint));
            catalog.set_status(endpoint, status_of(&spec, roster.counts(endpoint)));
        }
    };
    for endpoint in catalog.find_endpoints(None, None) {
        publish(&roster, &endpoint.endpoint_id());
    }
    let mut presences = loop {
        match queue.worker_presences().await {
            Ok(presences) => break Box::pin(presences),
            Err(error) => {
                tracing::warn!(%error, "subscribing to worker announcements failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    () = tokio::time::sleep(PRESENCE_EVERY) => {}
                }
            }
        }
    };
    let mut expiry = interval(PRESENCE_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            presence = presences.next() => {
                let Some(presence) = presence else { return };
                let endpoint = presence.endpoint.clone();
                // Only the manifests' endpoints: the roster stays as small as they are.
                if catalog.endpoint(&endpoint).is_some() && roster.hear(presence, Instant::now()) {
                    publish(&roster, &endpoint);
                }
            }
            _ = expiry.tick() => {
                for endpoint in roster.expire(Instant::now()) {
                    publish(&roster, &endpoint);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointId {
        EndpointId::for_resource("default", "served")
    }

    fn presence(worker: &str, ready: bool, leaving: bool) -> WorkerPresence {
        WorkerPresence {
            endpoint: endpoint(),
            worker: worker.into(),
            ready,
            serving_url: Some(format!("http://{worker}")),
            leaving,
        }
    }

    #[test]
    fn ready_workers_are_routed_to_until_they_leave_or_fall_silent() {
        let mut roster = Roster::default();
        let start = Instant::now();
        assert!(roster.hear(presence("a", true, false), start));
        assert!(roster.hear(presence("b", false, false), start));
        assert_eq!(roster.serving_urls(&endpoint()), ["http://a"]);
        assert_eq!(roster.counts(&endpoint()), (2, 1));
        // Hearing the same again changes nothing anyone sees.
        assert!(!roster.hear(presence("a", true, false), start));

        assert!(roster.hear(presence("b", true, false), start));
        assert_eq!(roster.serving_urls(&endpoint()), ["http://a", "http://b"]);
        assert!(roster.hear(presence("a", true, true), start));
        assert_eq!(roster.counts(&endpoint()), (1, 1));

        let later = start + PRESENCE_EXPIRY / 2;
        assert!(roster.expire(later).is_empty());
        assert_eq!(roster.expire(start + PRESENCE_EXPIRY), [endpoint()]);
        assert_eq!(roster.counts(&endpoint()), (0, 0));
    }

    #[test]
    fn an_endpoint_is_ready_once_min_workers_are() {
        let mut spec: ModelEndpoint = serde_saphyr::from_str(
            "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {name: served, namespace: default}\nspec: {bundle: b, endpointType: sync, minWorkers: 2, labels: {team: t, product: p}}\n",
        )
        .expect("endpoint");
        let short = status_of(&spec, (2, 1));
        assert_eq!(short.state, Some(EndpointState::UpdateInProgress));
        assert_eq!(short.conditions[0].status, "False");
        assert!(
            short.conditions[0].message.contains("1 of the 2"),
            "{short:?}"
        );
        let ready = status_of(&spec, (3, 2));
        assert_eq!(
            (ready.state, ready.replicas, ready.ready_replicas),
            (Some(EndpointState::Ready), Some(3), Some(2))
        );
        let mut again = spec.clone();
        again.status = Some(short.clone());
        assert_eq!(
            status_of(&again, (2, 1)).conditions[0].last_transition_time,
            short.conditions[0].last_transition_time,
            "unchanged, the condition keeps its transition time"
        );
        spec.spec.min_workers = 0;
        assert_eq!(status_of(&spec, (0, 0)).state, Some(EndpointState::Ready));
    }
}
