//! The operator's autoscaler: it owns the worker count of every endpoint. Every second, at once
//! when a task is submitted to an async endpoint and at once when a gateway reports requests for
//! a sync or streaming one, it observes the endpoint's load, asks [`crate::autoscale`] for the
//! worker count and sets it through the Deployment's scale subresource; each change is told in
//! an Event and in the endpoint's `lastScaleTime` and `scaleReason`. Runs only on the leader.
//!
//! Why ferry's own loop rather than a HorizontalPodAutoscaler: an HPA would need a
//! custom-metrics adapter to see queue depth or the gateways' requests, cannot scale to zero
//! without the alpha `HPAScaleToZero` feature gate, and scales on what pods report — while an
//! endpoint has no workers, no pod sees the requests waiting for one at the gateway.

mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::{Guarded, apply, build};
use crate::autoscale::{
    AutoscaleMetrics, Concurrency, Decision, Load, NamedEndpoint, Scaler, WakeTimer,
};
use crate::crd::{EndpointId, EndpointType, ModelEndpoint, namespace_of};
use crate::queue::OperatorQueue;
pub use report::{build_scale_event, build_scale_status};

const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// The field manager of what the autoscaler writes: the Deployment's replicas and the
/// endpoint's `lastScaleTime` and `scaleReason`, which the operator's own applies leave alone.
pub const FIELD_MANAGER: &str = "ferry-autoscaler";

/// What the autoscaler keeps of one endpoint between evaluations.
pub struct Tracked {
    scaler: Scaler,
    /// The count last set; `None` until one was.
    applied: Option<u32>,
    wake: WakeTimer,
    /// A status apply still to make (it failed, or a change awaits it).
    unreported: Option<Value>,
    /// The endpoint's metrics label, once its metrics exist.
    label: Option<NamedEndpoint>,
}

impl Tracked {
    pub fn new(window: Duration) -> Self {
        Tracked {
            scaler: Scaler::new(window),
            applied: None,
            wake: WakeTimer::default(),
            unreported: None,
            label: None,
        }
    }

    #[cfg(test)]
    pub fn applied(&self) -> Option<u32> {
        self.applied
    }
}

pub async fn run(
    ctx: Arc<Context>,
    endpoints: Store<Guarded<ModelEndpoint>>,
    window: Duration,
    metrics: Arc<AutoscaleMetrics>,
    stop: CancellationToken,
) {
    let queue = loop {
        match ctx.queue.get().await {
            Ok(queue) => break queue.clone(),
            Err(error) => tracing::warn!(%error, "autoscaler waiting for NATS"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    let arrivals = match queue.all_task_arrivals().await {
        Ok(arrivals) => arrivals.boxed(),
        Err(error) => {
            tracing::warn!(%error, "no arrival notifications; scaling async endpoints every second only");
            futures::stream::pending().boxed()
        }
    };
    let reports = match queue.load_reports(None).await {
        Ok(reports) => reports.boxed(),
        Err(error) => {
            tracing::warn!(%error, "no load reports; sync and streaming endpoints stay as they are");
            futures::stream::pending().boxed()
        }
    };
    let (mut arrivals, mut reports) = (std::pin::pin!(arrivals), std::pin::pin!(reports));
    let mut ticks = tokio::time::interval(EVALUATE_EVERY);
    let mut board = Concurrency::default();
    let mut tracked: HashMap<EndpointId, Tracked> = HashMap::new();
    let mut index = Index::new();
    loop {
        let only = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => None,
            Some(endpoint) = arrivals.next() => Some(endpoint),
            Some(report) = reports.next() => {
                let endpoint = report.endpoint.clone();
                // Only endpoints this operator scales: the board stays bounded by them.
                if !index.contains_key(&endpoint) {
                    continue;
                }
                board.record(report, Instant::now());
                Some(endpoint)
            }
        };
        let guards = match &only {
            Some(id) => index
                .get(id)
                .and_then(|reference| endpoints.get(reference))
                .into_iter()
                .collect(),
            None => {
                index = build_index(&endpoints);
                tracked.retain(|id, state| {
                    let keep = index.contains_key(id);
                    if !keep && let Some(label) = &state.label {
                        metrics.forget(label);
                    }
                    keep
                });
                endpoints.state()
            }
        };
        for guard in guards {
            let Ok(endpoint) = &guard.0 else { continue };
            if !autoscaled(endpoint) {
                continue;
            }
            let Some(load) = observe_load(&queue, &mut board, endpoint, Instant::now()).await
            else {
                continue;
            };
            let state = tracked
                .entry(endpoint.endpoint_id())
                .or_insert_with(|| Tracked::new(window));
            evaluate(&ctx, &metrics, endpoint, state, load).await;
        }
    }
}

/// The store's scaled endpoints by id, rebuilt every tick: notices name endpoints by id, and
/// hashing every endpoint's name for each notice would cost work in proportion to all
/// endpoints. An endpoint created since the last tick is found at the next one (within 1 s).
type Index = HashMap<EndpointId, ObjectRef<Guarded<ModelEndpoint>>>;

fn build_index(endpoints: &Store<Guarded<ModelEndpoint>>) -> Index {
    endpoints
        .state()
        .iter()
        .filter_map(|guard| {
            let endpoint = guard.0.as_ref().ok().filter(|e| autoscaled(e))?;
            Some((endpoint.endpoint_id(), ObjectRef::from_obj(guard.as_ref())))
        })
        .collect()
}

/// Not an endpoint being deleted, nor one whose Deployment name is taken by an object that is
/// not ferry's: the scale subresource carries no owner, so that object would be scaled.
fn autoscaled(endpoint: &ModelEndpoint) -> bool {
    let clash = super::status::ready_condition(endpoint.status.as_ref())
        .is_some_and(|ready| ready.reason == super::status::reason::NAME_CLASH);
    endpoint.metadata.deletion_timestamp.is_none() && !clash
}

/// The endpoint's load now: its queue's backlog for an async endpoint (`None` while the queue
/// does not exist yet), the requests the gateways hold for a sync or streaming one.
pub async fn observe_load(
    queue: &OperatorQueue,
    board: &mut Concurrency,
    endpoint: &ModelEndpoint,
    now: Instant,
) -> Option<Load> {
    let id = endpoint.endpoint_id();
    match endpoint.spec.endpoint_type {
        EndpointType::Async => match queue.backlog(&id).await {
            Ok(backlog) => Some(Load {
                queued: backlog.queued,
                in_flight: backlog.in_flight,
            }),
            Err(error) => {
                tracing::debug!(endpoint = %endpoint.name_any(), %error, "no backlog yet");
                None
            }
        },
        EndpointType::Sync | EndpointType::Streaming => Some(Load {
            queued: 0,
            in_flight: board.in_flight(&id, now),
        }),
    }
}

/// Decides the endpoint's worker count for `load` and, when it differs from the last one set,
/// sets it, publishes an Event and records the change in the endpoint's status.
pub async fn evaluate(
    ctx: &Context,
    metrics: &AutoscaleMetrics,
    endpoint: &ModelEndpoint,
    tracked: &mut Tracked,
    load: Load,
) {
    let now = Instant::now();
    let decision = tracked.scaler.decide(&endpoint.spec, load, now);
    let ready = status_count(endpoint, |s| s.ready_replicas).unwrap_or(0);
    let label = tracked
        .label
        .get_or_insert_with(|| NamedEndpoint::of(endpoint));
    metrics.observe(label, decision.replicas, ready);
    if endpoint.spec.endpoint_type == EndpointType::Async {
        // The age is the reconciler's reading, as fresh as the endpoint's status.
        let oldest_age = endpoint
            .status
            .as_ref()
            .and_then(|status| status.oldest_task_age_seconds);
        metrics.observe_queue(label, load, oldest_age);
    }
    if let Some(took) = tracked.wake.ready(ready, now) {
        metrics.observe_wake(took);
    }
    if tracked.applied != Some(decision.replicas) {
        scale(ctx, endpoint, tracked, decision, load, now).await;
    }
    if let Some(body) = tracked.unreported.take()
        && let Err(error) = apply_scale_status(ctx, endpoint, &body).await
    {
        tracing::warn!(endpoint = %endpoint.name_any(), %error, "recording the scale in status failed; retrying");
        tracked.unreported = Some(body);
    }
}

/// Sets the decided count and tells of it: an Event when the count changed, and the status
/// fields to apply next.
async fn scale(
    ctx: &Context,
    endpoint: &ModelEndpoint,
    tracked: &mut Tracked,
    decision: Decision,
    load: Load,
    now: Instant,
) {
    let to = decision.replicas;
    // Before this leader's first change: the count the last reconcile saw.
    let from = tracked
        .applied
        .or_else(|| status_count(endpoint, |s| s.desired_replicas))
        .unwrap_or(0);
    if !apply_scale(ctx, endpoint, to).await {
        return;
    }
    tracing::info!(endpoint = %endpoint.name_any(), from, to, reason = decision.reason.as_str(), queued = load.queued, in_flight = load.in_flight, "scaled workers");
    tracked.applied = Some(to);
    tracked.wake.scaled(from, to, now);
    // A first count equal to the last one seen is no change: the status still says why.
    let changed_at = if from == to {
        endpoint
            .status
            .as_ref()
            .and_then(|s| s.last_scale_time.clone())
    } else {
        let stamp = Timestamp::now();
        let event = build_scale_event(
            endpoint,
            from,
            to,
            decision,
            load,
            stamp,
            &ctx.reporting_instance,
        );
        publish_event(ctx, endpoint, &event).await;
        Some(Time(stamp))
    };
    tracked.unreported = Some(build_scale_status(decision, changed_at.as_ref()));
}

fn status_count(
    endpoint: &ModelEndpoint,
    field: impl Fn(&crate::crd::ModelEndpointStatus) -> Option<i32>,
) -> Option<u32> {
    let count = endpoint.status.as_ref().and_then(field)?;
    u32::try_from(count).ok()
}

/// Sets the worker count by server-side apply of the scale subresource: the autoscaler's field
/// manager then owns `replicas`, which the operator's apply of the Deployment leaves out.
async fn apply_scale(ctx: &Context, endpoint: &ModelEndpoint, replicas: u32) -> bool {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace_of(endpoint));
    let scale = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "spec": { "replicas": replicas },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_scale(
            &build::deployment_name(endpoint),
            &params,
            &Patch::Apply(scale),
        )
        .await
    {
        Ok(_) => true,
        Err(error) if apply::is_not_found(&error) => {
            tracing::debug!(endpoint = %endpoint.name_any(), "no worker Deployment yet");
            false
        }
        Err(error) => {
            tracing::warn!(endpoint = %endpoint.name_any(), %error, "setting the worker count failed; retrying");
            false
        }
    }
}

async fn apply_scale_status(
    ctx: &Context,
    endpoint: &ModelEndpoint,
    body: &Value,
) -> Result<(), kube::Error> {
    // Force: these fields have no other writer.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Guarded<ModelEndpoint>>::namespaced(ctx.client.clone(), &namespace_of(endpoint))
        .patch_status(&endpoint.name_any(), &params, &Patch::Apply(body))
        .await
        .map(drop)
}

/// Creates the Event; a failure only costs the Event, never the scaling.
async fn publish_event(ctx: &Context, endpoint: &ModelEndpoint, event: &Event) {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace_of(endpoint));
    if let Err(error) = api.create(&PostParams::default(), event).await {
        tracing::warn!(endpoint = %endpoint.name_any(), %error, "publishing the scale Event failed");
    }
}
