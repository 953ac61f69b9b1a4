//! `ferry dev`: the whole system on one machine. Reads the same manifests `kubectl apply` takes,
//! starts (or joins) a JetStream server, runs each async endpoint's workers as local processes
//! with in-process forwarders, and serves the gateway and the dispatcher in this process.

pub(crate) mod nats;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::callback::{Dispatcher, DispatcherMetrics};
use crate::catalog::Catalog;
use crate::cli::DevArgs;
use crate::crd::{EndpointState, EndpointType, ModelEndpoint, ModelEndpointStatus};
use crate::forwarder::ForwarderMetrics;
use crate::gateway::{self, ApiKeys, AppState, GatewayMetrics};
use crate::manifest::{self, Manifests};
use crate::queue::{Queue, QueueSettings, QueueSpec};
use workers::Worker;

/// Request bodies larger than this get 413.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

pub async fn run(args: DevArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let manifests = manifest::load(&args.manifests)?;
    let keys = ApiKeys::parse(&args.auth.api_keys, true)?;
    let (nats_url, _nats_server) = match &args.nats_url {
        Some(url) => (url.clone(), None),
        None => {
            let server = nats::start(&args.nats_server).await?;
            (server.url.clone(), Some(server))
        }
    };
    let queue =
        Queue::connect(&nats_url, QueueSettings::default(), Duration::from_secs(10)).await?;
    for endpoint in async_endpoints(&manifests) {
        queue
            .ensure_endpoint(&QueueSpec::for_endpoint(endpoint))
            .await?;
    }

    let mut registry = Registry::default();
    let catalog = Catalog::from_manifests(&manifests);
    let mut services = JoinSet::new();

    let dispatcher = Dispatcher::new(
        queue.clone(),
        256,
        DispatcherMetrics::register(&mut registry),
    )?;
    let dispatcher_cancel = cancel.child_token();
    services.spawn(async move {
        dispatcher
            .run(Readiness::default(), dispatcher_cancel)
            .await
            .map_err(anyhow::Error::from)
    });

    let forwarder_metrics = ForwarderMetrics::register(&mut registry);
    let mut workers = JoinSet::new();
    for endpoint in &manifests.endpoints {
        let endpoint = Arc::new(endpoint.clone());
        if endpoint.spec.endpoint_type != EndpointType::Async {
            tracing::warn!(endpoint = %endpoint.name_any(), "ferry dev serves async endpoints only; skipping");
            catalog.set_status(&endpoint.endpoint_id(), unsupported_status(&endpoint));
            continue;
        }
        let Some(bundle) = manifests.bundle_for(&endpoint) else {
            continue;
        };
        let bundle = Arc::new(bundle.clone());
        let mut readiness = Vec::new();
        for index in 0..endpoint.spec.min_workers {
            let worker = Worker {
                name: format!("{}-{index}", endpoint.name_any()),
                endpoint: endpoint.clone(),
                bundle: bundle.clone(),
                queue: queue.clone(),
                metrics: forwarder_metrics.clone(),
            };
            let ready = Readiness::default();
            readiness.push(ready.clone());
            workers.spawn(worker.run(ready, cancel.clone()));
        }
        workers.spawn(track_status(catalog.clone(), endpoint, readiness));
    }

    let state = AppState {
        catalog,
        queue,
        keys: Arc::new(keys),
        metrics: GatewayMetrics::register(&mut registry),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", args.listen))?;
    let readiness = Readiness::default();
    readiness.set_ready();
    let gateway_cancel = cancel.clone();
    services.spawn(async move {
        gateway::serve(
            listener,
            gateway::router(state, MAX_BODY_BYTES),
            registry,
            readiness,
            gateway_cancel,
        )
        .await
        .map_err(anyhow::Error::from)
    });
    tracing::info!(listen = %args.listen, nats = %nats_url, "ferry dev is up");

    let outcome = tokio::select! {
        finished = services.join_next() => match finished {
            Some(Ok(Err(error))) => Err(error),
            Some(Err(error)) => Err(error.into()),
            _ => Ok(()),
        },
        _ = cancel.cancelled() => Ok(()),
    };
    cancel.cancel();
    while workers.join_next().await.is_some() {}
    while services.join_next().await.is_some() {}
    tracing::info!("ferry dev stopped");
    outcome
}

fn async_endpoints(manifests: &Manifests) -> impl Iterator<Item = &ModelEndpoint> {
    manifests
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.spec.endpoint_type == EndpointType::Async)
}

/// Reports the endpoint UPDATE_IN_PROGRESS until its workers take tasks, then READY.
async fn track_status(catalog: Catalog, endpoint: Arc<ModelEndpoint>, workers: Vec<Readiness>) {
    let id = endpoint.endpoint_id();
    let wanted = workers.len() as i32;
    let status = |ready: i32| ModelEndpointStatus {
        endpoint_id: Some(id.to_string()),
        state: Some(if ready >= wanted {
            EndpointState::Ready
        } else {
            EndpointState::UpdateInProgress
        }),
        replicas: Some(wanted),
        ready_replicas: Some(ready),
        desired_replicas: Some(wanted),
        ..Default::default()
    };
    catalog.set_status(&id, status(0));
    for (ready, worker) in (1..).zip(&workers) {
        worker.ready().await;
        catalog.set_status(&id, status(ready));
    }
}

fn unsupported_status(endpoint: &ModelEndpoint) -> ModelEndpointStatus {
    ModelEndpointStatus {
        endpoint_id: Some(endpoint.endpoint_id().to_string()),
        state: Some(EndpointState::UpdateFailed),
        ..Default::default()
    }
}
