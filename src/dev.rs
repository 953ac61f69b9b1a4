//! `ferry dev`: the whole system on one machine. Reads the same manifests `kubectl apply` takes,
//! starts (or joins) a JetStream server, runs each async endpoint's workers as local processes
//! with in-process forwarders, and serves the gateway and the dispatcher in this process.

mod pool;
mod runtime;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::autoscale::AutoscaleMetrics;
use crate::callback::policy::resolve_policy;
use crate::catalog::{Catalog, NamedSecret};
use crate::cli::DevArgs;
use crate::crd::namespace_of;
use crate::dispatcher::{Clients, Dispatcher, DispatcherMetrics};
use crate::forwarder::ForwarderMetrics;
use crate::gateway::{self, ApiKeys, AppState, GatewayMetrics};
use crate::manifest::{self, Manifests};
use crate::nats_server;
use crate::queue::{Queue, QueueSettings};
use crate::seal::KeyRing;
use runtime::Runtime;

pub async fn run(args: DevArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let manifests = manifest::load(&args.manifests)?;
    let keys = ApiKeys::parse(&args.auth.api_keys, true)?;
    let ring = Arc::new(args.seal.key_ring_or_generate()?);
    let (connection, forwarders, _nats_server) = match &args.nats_url {
        Some(url) => (
            args.nats_access.connection(url)?,
            nats_server::ForwarderAccess::Shared,
            None,
        ),
        None => {
            let server = nats_server::start(&args.nats_server).await?;
            (
                server.connection.clone(),
                server.forwarders.clone(),
                Some(server),
            )
        }
    };
    let loopback = ["127.0.0.0/8".parse()?, "::1/128".parse()?];
    let guard = args.delivery.guard.guard(&loopback)?;
    let queue = Queue::connect(
        &connection,
        QueueSettings {
            task_limits: args.task_queue.limits(),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
    .await?;

    let mut registry = crate::metrics::registry();
    let catalog = Catalog::default();
    let mut services = JoinSet::new();

    let clients = Clients::new(guard.clone(), args.delivery.extra_roots()?);
    let metrics = DispatcherMetrics::register(&mut registry);
    let dispatcher = Dispatcher::new(
        queue.clone(),
        args.delivery.settings(),
        clients,
        metrics,
        ring.clone(),
    );
    let dispatcher_cancel = cancel.child_token();
    services.spawn(async move {
        dispatcher
            .run(Readiness::default(), dispatcher_cancel)
            .await
            .map_err(anyhow::Error::from)
    });

    let forwarder_metrics = ForwarderMetrics::register(&mut registry);
    let runtime = Arc::new(Runtime::new(
        queue.clone(),
        catalog.clone(),
        forwarder_metrics,
        cancel.clone(),
        runtime::Scaling {
            scale_down_delay: args.scale_down_delay,
            metrics: AutoscaleMetrics::register(&mut registry),
        },
        ring.clone(),
        forwarders,
    ));
    load_manifests(&runtime, &manifests).await?;

    let demand = gateway::Demand::for_this_process();
    let reporter_cancel = cancel.clone();
    let reporter = demand.clone().report(queue.clone(), reporter_cancel);
    services.spawn(async move {
        reporter.await;
        Ok(())
    });
    let state = AppState {
        catalog,
        writer: Some(runtime.clone()),
        workers: gateway::WorkerClient::new()?,
        demand: demand.clone(),
        queue,
        guard,
        keys: Arc::new(keys),
        // One machine, one user: no per-team limits.
        limits: Arc::default(),
        metrics: GatewayMetrics::register(&mut registry),
        ring,
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
            args.http.limits(),
            gateway_cancel,
        )
        .await
        .map_err(anyhow::Error::from)
    });
    tracing::info!(listen = %args.listen, nats = %connection.url(), "ferry dev is up");

    let outcome = tokio::select! {
        finished = services.join_next() => match finished {
            Some(Ok(Err(error))) => Err(error),
            Some(Err(error)) => Err(error.into()),
            _ => Ok(()),
        },
        _ = cancel.cancelled() => Ok(()),
    };
    cancel.cancel();
    runtime.stop_all().await;
    while services.join_next().await.is_some() {}
    tracing::info!("ferry dev stopped");
    outcome
}

/// Ensures each async endpoint's queue and publishes every endpoint's callback policy, its
/// Secrets resolved from the manifests; fails naming the first missing Secret or key.
pub async fn prepare_endpoints(
    queue: &Queue,
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
        queue.prepare_endpoint(endpoint, &policy).await?;
    }
    Ok(())
}

/// Hands the manifests' Secrets, bundles and endpoints to the runtime, in that order.
async fn load_manifests(runtime: &Runtime, manifests: &Manifests) -> anyhow::Result<()> {
    for secret in &manifests.secrets {
        let namespace = namespace_of(secret);
        let data = manifests
            .secret_data(&namespace, &secret.name_any())
            .unwrap_or_default();
        runtime.put_secret(NamedSecret {
            namespace,
            name: secret.name_any(),
            data,
        });
    }
    for bundle in &manifests.bundles {
        runtime.put_bundle(bundle.clone()).await?;
    }
    for endpoint in &manifests.endpoints {
        let name = format!(
            "{}/{}",
            namespace_of(endpoint.endpoint()),
            endpoint.endpoint().name_any()
        );
        runtime
            .apply(endpoint.clone())
            .await
            .map_err(|error| anyhow::anyhow!("ModelEndpoint {name}: {error}"))?;
    }
    Ok(())
}
