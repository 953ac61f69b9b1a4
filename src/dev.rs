//! `ferry dev`: the whole system on one machine. Reads the same manifests `kubectl apply` takes,
//! starts (or joins) a JetStream server, runs each async endpoint's workers as local processes
//! with in-process forwarders, and serves the gateway and the dispatcher in this process.

mod nats;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::callback::policy::resolve_policy;
use crate::callback::{Clients, Dispatcher, DispatcherMetrics};
use crate::catalog::Catalog;
use crate::cli::DevArgs;
use crate::crd::{EndpointState, EndpointType, ModelEndpoint, ModelEndpointStatus, namespace_of};
use crate::forwarder::ForwarderMetrics;
use crate::gateway::{self, ApiKeys, AppState, GatewayMetrics};
use crate::manifest::{self, Manifests};
use crate::queue::{Queue, QueueSettings, QueueSpec};
use workers::Worker;

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
    let loopback = ["127.0.0.0/8".parse()?, "::1/128".parse()?];
    let guard = args.delivery.guard.guard(&loopback)?;
    let queue =
        Queue::connect(&nats_url, QueueSettings::default(), Duration::from_secs(10)).await?;
    prepare_endpoints(&queue, &manifests).await?;

    let mut registry = Registry::default();
    let catalog = Catalog::from_manifests(&manifests);
    let mut services = JoinSet::new();

    let clients = Clients::new(guard.clone(), args.delivery.extra_roots()?);
    let metrics = DispatcherMetrics::register(&mut registry);
    let dispatcher = Dispatcher::new(queue.clone(), args.delivery.settings(), clients, metrics);
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
        guard,
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
            gateway::router(state, args.max_body_bytes),
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

/// Ensures each async endpoint's queue and publishes every endpoint's callback policy, its
/// Secrets resolved from the manifests; fails naming the first missing Secret or key.
pub async fn prepare_endpoints(queue: &Queue, manifests: &Manifests) -> anyhow::Result<()> {
    for endpoint in &manifests.endpoints {
        let namespace = namespace_of(endpoint);
        let policy = resolve_policy(&endpoint.spec, |name| {
            manifests.secret_data(&namespace, name)
        })
        .map_err(|error| {
            let reason = error.reason();
            anyhow::anyhow!(
                "ModelEndpoint {namespace}/{}: {reason}: {error}",
                endpoint.name_any()
            )
        })?;
        queue
            .put_callback_policy(&endpoint.endpoint_id(), &policy)
            .await?;
        if endpoint.spec.endpoint_type == EndpointType::Async {
            queue
                .ensure_endpoint(&QueueSpec::for_endpoint(endpoint))
                .await?;
        }
    }
    Ok(())
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
