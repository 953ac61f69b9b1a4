//! `ferry dev`: the whole system on one machine. Reads the same manifests `kubectl apply` takes,
//! starts (or joins) a JetStream server, runs each endpoint's workers as local processes (an
//! artifact bundle's in a cached venv) with in-process forwarders, and serves the gateway and
//! the dispatcher in this process.

mod nats;
mod pool;
mod port_owner;
mod python;
mod runtime;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::autoscale::AutoscaleMetrics;
use crate::catalog::{Catalog, NamedSecret};
use crate::crd::namespace_of;
use crate::dispatcher::{Clients, DeliverySettings, Dispatcher, DispatcherMetrics};
use crate::forwarder::{ForwarderMetrics, InputFetcher};
use crate::gateway::{self, ApiKeys, AppState, GatewayMetrics};
use crate::manifest::Manifests;
use crate::process_group::ProcessGroup;
use crate::queue::{Connection, Queue, QueueSettings};
use crate::seal::KeyRing;
use runtime::Runtime;

/// What `ferry dev` runs with: its flags and manifests, parsed and checked.
pub struct Settings {
    pub manifests: Manifests,
    pub listen: std::net::SocketAddr,
    pub nats: Nats,
    pub keys: ApiKeys,
    pub ring: KeyRing,
    /// The guard (at submission and at delivery) and TLS roots of callbacks.
    pub clients: Clients,
    pub delivery: DeliverySettings,
    /// Task queue bounds and replicas (result retention is the default).
    pub queue: QueueSettings,
    /// How long the load must ask for fewer workers before they are stopped.
    pub scale_down_delay: Duration,
    pub max_body_bytes: usize,
    pub http: crate::http_server::Limits,
    /// The Python artifact bundles' venvs are made with.
    pub python: std::path::PathBuf,
    /// Where venvs and fetched artifacts are kept between sessions.
    pub cache_dir: std::path::PathBuf,
}

/// The NATS server `ferry dev` uses.
pub enum Nats {
    /// Start this nats-server program with a store of its own, serving its monitoring
    /// endpoints on 127.0.0.1 at `monitor_port` when given.
    Start {
        program: std::path::PathBuf,
        monitor_port: Option<u16>,
    },
    /// Use a running server.
    Connect(Connection),
}

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let Settings {
        manifests,
        listen,
        nats,
        keys,
        ring,
        clients,
        delivery,
        queue: queue_settings,
        scale_down_delay,
        max_body_bytes,
        http,
        python,
        cache_dir,
    } = settings;
    let ring = Arc::new(ring);
    // One grace for every role of the process: the dispatcher's attempts, the gateway's requests.
    let shutdown_grace = delivery.shutdown_grace;
    // Every process `ferry dev` starts dies with it, even when it is killed; dropped last.
    let children = Arc::new(ProcessGroup::start()?);
    let (connection, forwarders, _nats_server) = match nats {
        Nats::Connect(connection) => (connection, nats::ForwarderAccess::Shared, None),
        Nats::Start {
            program,
            monitor_port,
        } => {
            let server = nats::start(&program, &children, monitor_port).await?;
            (
                server.connection.clone(),
                server.forwarders.clone(),
                Some(server),
            )
        }
    };
    let guard = clients.guard().clone();
    let queue = Queue::connect(&connection, queue_settings, Duration::from_secs(10)).await?;

    let mut registry = crate::metrics::registry();
    let catalog = Catalog::default();
    let mut services = JoinSet::new();

    let metrics = DispatcherMetrics::register(&mut registry);
    let dispatcher = Dispatcher::new(queue.dispatcher(), delivery, clients, metrics, ring.clone());
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
            scale_down_delay,
            metrics: AutoscaleMetrics::register(&mut registry),
        },
        ring.clone(),
        runtime::WorkerStarts {
            forwarders,
            children: children.clone(),
            // One machine: a model may read its own files anyway.
            inputs: InputFetcher::new(guard.clone(), true)?,
            environments: Arc::new(python::Environments::new(python, cache_dir)),
        },
    ));
    load_manifests(&runtime, &manifests).await?;

    let demand = gateway::Demand::for_this_process();
    let reporter_cancel = cancel.clone();
    let reporter = demand.clone().report(queue.gateway(), reporter_cancel);
    services.spawn(async move {
        reporter.await;
        Ok(())
    });
    let state = AppState {
        catalog,
        writer: Some(runtime.clone()),
        workers: gateway::WorkerClient::new()?,
        demand: demand.clone(),
        queue: queue.gateway(),
        guard,
        keys: Arc::new(keys),
        // One machine, one user: no per-team limits.
        limits: Arc::default(),
        metrics: GatewayMetrics::register(&mut registry),
        ring,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {listen}: {error}"))?;
    let readiness = Readiness::default();
    readiness.set_ready();
    let gateway_cancel = cancel.clone();
    services.spawn(async move {
        gateway::serve(
            listener,
            gateway::router(state, max_body_bytes),
            registry,
            readiness,
            http,
            // One machine, no load balancer to take it out of rotation: no delay.
            crate::http_server::Handover {
                delay: Duration::ZERO,
                grace: Some(shutdown_grace),
            },
            gateway_cancel,
        )
        .await
        .map_err(anyhow::Error::from)
    });
    tracing::info!(%listen, nats = %connection.url(), "ferry dev is up");

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
    drop(children);
    outcome
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
