//! The HTTP API: Launch-compatible `/v1` routes over the catalog and the queue, with API-key
//! auth, a body size limit, probes and metrics, described by the OpenAPI document it serves.

mod artifacts;
mod auth;
mod console;
mod demand;
mod error;
mod launch;
mod metrics;
mod openapi;
mod redeliver;
mod resources;
mod roster;
mod routes;
mod stats;
mod streaming;
mod sync;
mod tasks;
mod team_limits;
#[cfg(test)]
mod tests;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router, extract::DefaultBodyLimit};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use auth::ApiKeys;
pub use demand::Demand;
pub use metrics::GatewayMetrics;
pub use sync::{WORKER_CONNECTION_IDLE, WorkerClient};
pub use team_limits::{RateLimit, TeamLimits};

use crate::admin::{self, Readiness};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::callback::Guard;
use crate::callback::policy::resolve_policy;
use crate::catalog::{Catalog, ResourceWriter, cluster};
use crate::crd::{ModelEndpoint, namespace_of};
use crate::http_server;
use crate::manifest::{self, Manifests};
use crate::queue::{GatewayQueue, Queue, QueueSettings, QueueSpec};
use crate::seal::KeyRing;

#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
    /// Where API changes to endpoints and bundles go; `None` serves a fixed set read-only.
    pub writer: Option<Arc<dyn ResourceWriter>>,
    /// Reaches the serving workers of sync and streaming endpoints.
    pub workers: sync::WorkerClient,
    /// The sync and streaming requests held, reported to the autoscalers.
    pub demand: Demand,
    pub queue: GatewayQueue,
    pub guard: Guard,
    pub keys: Arc<ApiKeys>,
    /// Per-team request rate and task quota.
    pub limits: Arc<TeamLimits>,
    pub metrics: Arc<GatewayMetrics>,
    /// Seals callback targets; derives the serving tokens sent to sync and streaming workers.
    pub ring: Arc<KeyRing>,
}

/// Every route of the API, each registered with its documentation (see [`openapi`]).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::list_bundles, resources::create_v1_bundle))
        .routes(routes!(routes::latest_bundle))
        .routes(routes!(resources::clone_v1_bundle))
        .routes(routes!(routes::get_bundle))
        .routes(routes!(
            resources::list_v2_bundles,
            resources::create_bundle
        ))
        .routes(routes!(resources::latest_v2_bundle))
        .routes(routes!(resources::clone_bundle))
        .routes(routes!(resources::get_v2_bundle))
        .routes(routes!(routes::list_endpoints, resources::create_endpoint))
        .routes(routes!(
            routes::get_endpoint,
            resources::update_endpoint,
            resources::delete_endpoint
        ))
        .routes(routes!(stats::endpoint_stats))
        .routes(routes!(tasks::list_async_tasks, routes::submit_async_task))
        .routes(routes!(sync::submit_sync_task))
        .routes(routes!(streaming::submit_streaming_task))
        .routes(routes!(routes::get_async_task, tasks::cancel_async_task))
        .routes(routes!(redeliver::redeliver_task))
        .routes(routes!(redeliver::redeliver_since))
        .routes(routes!(redeliver::list_dead_letters))
        .routes(routes!(openapi::openapi_json))
        .merge(console::routes())
}

/// The API router, serving its OpenAPI document at `/openapi.json`. `max_body_bytes` bounds
/// every request body (larger ones get 413).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (api, operations) = api().split_for_parts();
    let document = openapi::DocumentJson::new(&openapi::complete(operations));
    api.fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::observe_request,
        ))
        .with_state(state)
}

/// Serves `router` (merged with probes and metrics) within `limits`. Once `cancel` fires,
/// `/readyz` answers 503 for good while it hands its clients to the other replicas (see
/// [`http_server::Handover`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    registry: Registry,
    readiness: Readiness,
    limits: http_server::Limits,
    handover: http_server::Handover,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router.merge(admin::router(Arc::new(registry), readiness.clone()));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    readiness.stop_when(cancel.clone());
    http_server::serve_handing_over(listener, app, limits, handover, cancel).await
}

/// Header with which a client makes a submission safe to repeat (looked up in any case).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Ensures each async endpoint's queue and publishes every endpoint's callback policy, its
/// Secrets resolved from the manifests; fails naming the first missing Secret or key.
async fn prepare_endpoints(
    queue: &GatewayQueue,
    manifests: &Manifests,
    ring: &KeyRing,
) -> anyhow::Result<()> {
    for endpoint in &manifests.endpoints {
        let namespace = namespace_of(endpoint.endpoint());
        let secret = |name: &str| manifests.secret_data(&namespace, name);
        let policy = resolve_policy(&endpoint.endpoint_id(), endpoint.spec(), secret, ring)
            .map_err(|error| {
                let reason = error.reason();
                anyhow::anyhow!(
                    "ModelEndpoint {namespace}/{}: {reason}: {error}",
                    endpoint.endpoint().name_any()
                )
            })?;
        queue
            .prepare_endpoint(
                &endpoint.endpoint_id(),
                &policy,
                QueueSpec::of(endpoint).as_ref(),
            )
            .await?;
    }
    Ok(())
}

/// The manifests' endpoints, each stamped with when a gateway first served it (unless its
/// manifest says), so every gateway of the same manifests reports one creation time.
async fn endpoints_first_served(
    queue: &GatewayQueue,
    manifests: &Manifests,
) -> anyhow::Result<Vec<ModelEndpoint>> {
    let ids: Vec<_> = manifests
        .endpoints
        .iter()
        .map(|e| e.endpoint_id())
        .collect();
    let times = queue.first_served(&ids).await?;
    Ok(manifests
        .endpoints
        .iter()
        .zip(times)
        .map(|(endpoint, first_served)| {
            let mut endpoint = endpoint.endpoint().clone();
            endpoint
                .metadata
                .creation_timestamp
                .get_or_insert(Time(first_served));
            endpoint
        })
        .collect())
}

/// What `ferry gateway` runs with: its flags, parsed and checked (also by `--check-config`).
pub struct Settings {
    pub listen: std::net::SocketAddr,
    /// How it reaches NATS, as the gateway's role.
    pub connection: crate::queue::Connection,
    pub queue: QueueSettings,
    pub keys: ApiKeys,
    pub guard: Guard,
    pub ring: KeyRing,
    pub limits: TeamLimits,
    /// The fixed set of endpoints of `--manifests`; the cluster's when absent.
    pub manifests: Option<manifest::Manifests>,
    pub max_body_bytes: usize,
    pub http: http_server::Limits,
    pub shutdown: http_server::Handover,
}

/// `ferry gateway`: serves the endpoints of its manifests, preparing their queues and callback
/// policies at start, or those of the cluster.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let Settings {
        listen,
        connection,
        queue: queue_settings,
        keys,
        guard,
        ring,
        limits,
        manifests,
        max_body_bytes,
        http,
        shutdown,
    } = settings;
    let ring = Arc::new(ring);
    let queue = Queue::connect(&connection, queue_settings, Duration::from_secs(30))
        .await?
        .gateway();
    let readiness = Readiness::default();
    let catalog = Catalog::default();
    let writer: Option<Arc<dyn ResourceWriter>> = if let Some(manifests) = manifests {
        prepare_endpoints(&queue, &manifests, &ring).await?;
        catalog.replace_bundles(
            manifests
                .bundles
                .iter()
                .map(|b| b.bundle().clone())
                .collect(),
        );
        catalog.replace_endpoints(endpoints_first_served(&queue, &manifests).await?);
        tokio::spawn(roster::follow(
            queue.clone(),
            catalog.clone(),
            cancel.clone(),
        ));
        readiness.set_ready();
        None
    } else {
        let client = kube::Client::try_default().await.map_err(|error| {
            anyhow::anyhow!("no Kubernetes API (pass --manifests to serve a fixed set): {error}")
        })?;
        tokio::spawn(cluster::watch(
            client.clone(),
            catalog.clone(),
            readiness.clone(),
        ));
        Some(Arc::new(cluster::ClusterWriter {
            client,
            catalog: catalog.clone(),
            queue: queue.clone(),
        }))
    };
    let mut registry = crate::metrics::registry();
    let demand = Demand::for_this_process();
    tokio::spawn(demand.clone().report(queue.clone(), cancel.clone()));
    let state = AppState {
        catalog,
        writer,
        workers: sync::WorkerClient::new()?,
        demand: demand.clone(),
        queue,
        guard,
        keys: Arc::new(keys),
        limits: Arc::new(limits),
        metrics: GatewayMetrics::register(&mut registry),
        ring,
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve(
        listener,
        router(state, max_body_bytes),
        registry,
        readiness,
        http,
        shutdown,
        cancel,
    )
    .await?;
    Ok(())
}
