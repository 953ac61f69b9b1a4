//! The operator's autoscaler for async endpoints: every second, and at once when a task is
//! submitted, it reads each endpoint's queue, asks [`crate::autoscale`] for the worker count and
//! sets it through the Deployment's scale subresource. Runs only on the leader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Guarded;
use super::build;
use super::context::Context;
use crate::autoscale::{Load, Scaler};
use crate::crd::{EndpointId, EndpointType, ModelEndpoint, namespace_of};
use crate::queue::Queue;

const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// Per endpoint: its scaler and the count last set.
type Scalers = HashMap<EndpointId, (Scaler, Option<u32>)>;

pub async fn run(
    ctx: Arc<Context>,
    endpoints: Store<Guarded<ModelEndpoint>>,
    window: Duration,
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
            tracing::warn!(%error, "no arrival notifications; scaling every second only");
            futures::stream::pending().boxed()
        }
    };
    let mut arrivals = std::pin::pin!(arrivals);
    let mut ticks = tokio::time::interval(EVALUATE_EVERY);
    let mut scalers = Scalers::new();
    loop {
        let only = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => None,
            Some(endpoint) = arrivals.next() => Some(endpoint),
        };
        for guard in endpoints.state() {
            let Ok(endpoint) = &guard.0 else { continue };
            let id = endpoint.endpoint_id();
            if only.as_ref().is_some_and(|only| *only != id) || !autoscaled(endpoint) {
                continue;
            }
            let (scaler, applied) = scalers
                .entry(id.clone())
                .or_insert_with(|| (Scaler::new(window), None));
            evaluate(&ctx, &queue, endpoint, scaler, applied).await;
        }
        if only.is_none() {
            let known: Vec<EndpointId> = endpoints
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok().map(|e| e.endpoint_id()))
                .collect();
            scalers.retain(|id, _| known.contains(id));
        }
    }
}

fn autoscaled(endpoint: &ModelEndpoint) -> bool {
    endpoint.spec.endpoint_type == EndpointType::Async
        && endpoint.metadata.deletion_timestamp.is_none()
}

/// Decides the endpoint's worker count and sets it when it differs from the last one set.
pub async fn evaluate(
    ctx: &Context,
    queue: &Queue,
    endpoint: &ModelEndpoint,
    scaler: &mut Scaler,
    applied: &mut Option<u32>,
) {
    let backlog = match queue.backlog(&endpoint.endpoint_id()).await {
        Ok(backlog) => backlog,
        Err(error) => {
            tracing::debug!(endpoint = %endpoint.name_any(), %error, "no backlog yet");
            return;
        }
    };
    let load = Load {
        queued: backlog.queued,
        in_flight: backlog.in_flight,
    };
    let decision = scaler.decide(&endpoint.spec, load, Instant::now());
    if *applied == Some(decision.replicas) {
        return;
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace_of(endpoint));
    let patch = Patch::Merge(json!({ "spec": { "replicas": decision.replicas } }));
    match api
        .patch_scale(
            &build::deployment_name(endpoint),
            &PatchParams::default(),
            &patch,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(endpoint = %endpoint.name_any(), replicas = decision.replicas, reason = decision.reason.as_str(), queued = load.queued, in_flight = load.in_flight, "scaled workers");
            *applied = Some(decision.replicas);
        }
        Err(error) => {
            tracing::warn!(endpoint = %endpoint.name_any(), %error, "setting the worker count failed; retrying")
        }
    }
}
