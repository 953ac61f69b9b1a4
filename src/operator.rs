//! `ferry operator`: reconciles each ModelEndpoint (and the ModelBundle it names) into a worker
//! Deployment, a Service for sync and streaming endpoints, and a JetStream queue for async
//! ones, and reports what it found in the endpoint's status. The pipeline per endpoint is
//! resolve → build (pure) → apply → status compute (pure) → one status patch; a finalizer
//! deletes the queue, which lives outside the cluster, when the endpoint is deleted.

mod apply;
pub mod build;
mod context;
mod leader;
mod reconcile;
mod scaler;
mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::autoscale::AutoscaleMetrics;
use crate::crd::{ModelBundle, ModelEndpoint};
use crate::queue::{self, QueueSettings};
use crate::seal::KeyRing;
pub use build::worker_secret::ForwarderCredsIssuing;
use context::{Context, Metrics, QueueConnection};
pub use leader::LeaseChoice;
use reconcile::{error_policy, reconcile};
use status::reason;

/// Held by every ModelEndpoint whose queue may exist; removed once the queue is deleted.
pub const FINALIZER: &str = "ferry.dev/queue";

type Guarded<K> = DeserializeGuard<K>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading ModelBundle {name}")]
    GetBundle {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Secret {name}")]
    GetSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying Deployment {name}")]
    ApplyDeployment {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying Secret {name}")]
    ApplySecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying Service {name}")]
    ApplyService {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying NetworkPolicy {name}")]
    ApplyNetworkPolicy {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Service {name}")]
    DeleteService {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("issuing the forwarders' NATS credentials")]
    IssueForwarderCreds(#[source] crate::nats_auth::Error),
    #[error("patching the status")]
    PatchStatus(#[source] kube::Error),
    #[error("ensuring the task queue")]
    EnsureQueue(#[source] queue::Error),
    #[error("deleting the task queue")]
    DeleteQueue(#[source] queue::Error),
    #[error("removing the finalizer of an unparseable endpoint")]
    ReleaseInvalid(#[source] kube::Error),
    #[error("managing the finalizer")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Bounded reason for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::GetBundle { .. } => "GetBundleFailed",
            Error::GetSecret { .. } => "GetSecretFailed",
            Error::ApplyDeployment { .. } => "ApplyDeploymentFailed",
            Error::ApplyService { .. } => "ApplyServiceFailed",
            Error::ApplySecret { .. } => "ApplySecretFailed",
            Error::ApplyNetworkPolicy { .. } => "ApplyNetworkPolicyFailed",
            Error::DeleteService { .. } => "DeleteServiceFailed",
            Error::IssueForwarderCreds(_) => "IssueForwarderCredsFailed",
            Error::PatchStatus(_) => "PatchStatusFailed",
            Error::EnsureQueue(_) => reason::QUEUE_UNAVAILABLE,
            Error::DeleteQueue(_) => "DeleteQueueFailed",
            Error::ReleaseInvalid(_) => "RemoveFinalizerFailed",
            Error::Finalizer(error) => match error.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.reason()
                }
                finalizer::Error::AddFinalizer(_) => "AddFinalizerFailed",
                finalizer::Error::RemoveFinalizer(_) => "RemoveFinalizerFailed",
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => {
                    "FinalizerFailed"
                }
            },
        }
    }

    /// True when retrying cannot help until the object changes (the API server refused it).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::GetBundle { source, .. }
            | Error::GetSecret { source, .. }
            | Error::ApplyDeployment { source, .. }
            | Error::ApplyService { source, .. }
            | Error::ApplySecret { source, .. }
            | Error::ApplyNetworkPolicy { source, .. }
            | Error::DeleteService { source, .. }
            | Error::PatchStatus(source)
            | Error::ReleaseInvalid(source) => apply::is_rejected(source),
            Error::EnsureQueue(_) | Error::DeleteQueue(_) | Error::IssueForwarderCreds(_) => false,
            Error::Finalizer(error) => match error.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.is_permanent()
                }
                finalizer::Error::AddFinalizer(source)
                | finalizer::Error::RemoveFinalizer(source) => apply::is_rejected(source),
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => true,
            },
        }
    }
}

/// What `ferry operator` runs with: its flags, parsed and checked (also by `--check-config`).
pub struct Settings {
    /// How it reaches NATS, as the operator's role.
    pub connection: queue::Connection,
    pub queue: QueueSettings,
    pub ring: KeyRing,
    /// What shapes every worker pod.
    pub workers: build::Settings,
    /// How forwarders' NATS credentials are issued; none without the account's files.
    pub forwarder_creds: Option<ForwarderCredsIssuing>,
    /// Watch only this namespace; all namespaces when absent.
    pub namespace: Option<String>,
    /// Endpoints reconciled at once.
    pub reconcile_concurrency: u16,
    /// Time between reconciles of an unchanged endpoint.
    pub resync: Duration,
    /// How long the load must ask for fewer workers before an async endpoint is scaled in.
    pub scale_down_delay: Duration,
    pub lease: LeaseChoice,
    pub admin_listen: std::net::SocketAddr,
    pub http: crate::http_server::Limits,
}

/// `ferry operator`: serves probes and metrics, waits for the leader Lease, then reconciles
/// until `cancel`.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let mut registry = crate::metrics::registry();
    let metrics = Metrics::register(&mut registry);
    let autoscale_metrics = AutoscaleMetrics::register(&mut registry);
    let readiness = Readiness::default();
    let router = admin::router(Arc::new(registry), readiness.clone());
    let admin_server = tokio::spawn(admin::serve(
        settings.admin_listen,
        router,
        settings.http,
        cancel.clone(),
    ));
    let context = Arc::new(
        Context::new(
            client.clone(),
            QueueConnection::new(settings.connection, settings.queue),
            settings.workers,
            Arc::new(settings.ring),
            settings.resync,
            metrics.clone(),
        )
        .with_forwarder_creds(settings.forwarder_creds),
    );
    let lease = leader::LeaseSettings::resolve(settings.lease, &client);
    // A standby replica is healthy too: ready means started, not elected.
    readiness.set_ready();
    let scope = settings.namespace;
    let concurrency = settings.reconcile_concurrency;
    let autoscaler = Autoscaler {
        scale_down_delay: settings.scale_down_delay,
        metrics: autoscale_metrics,
    };
    let outcome = leader::run_while_leader(client, lease, metrics, cancel.clone(), |stop| {
        run_controller(context, scope, concurrency, autoscaler, stop)
    })
    .await;
    cancel.cancel();
    let _ = admin_server.await;
    outcome.map_err(anyhow::Error::from)
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// What the leader's autoscaler needs besides the shared context.
pub struct Autoscaler {
    /// How long the load must ask for fewer workers before they go.
    pub scale_down_delay: std::time::Duration,
    pub metrics: Arc<AutoscaleMetrics>,
}

/// Runs the Controller and the autoscaler until `stop`, letting running reconciles finish.
pub async fn run_controller(
    context: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    autoscaler: Autoscaler,
    stop: CancellationToken,
) {
    let client = context.client.clone();
    let scope = namespace.as_deref();
    let endpoints = scoped::<Guarded<ModelEndpoint>>(&client, scope);
    let children = watcher::Config::default().labels(&build::managed_selector());
    let controller = Controller::new(endpoints, watcher::Config::default());
    let store = controller.store();
    let autoscaler = tokio::spawn(scaler::run(
        context.clone(),
        store.clone(),
        autoscaler.scale_down_delay,
        autoscaler.metrics,
        stop.clone(),
    ));
    tracing::info!(
        namespace = scope.unwrap_or("*"),
        concurrency,
        "reconciling ModelEndpoints"
    );
    controller
        .owns(
            scoped::<Guarded<Deployment>>(&client, scope),
            children.clone(),
        )
        .owns(scoped::<Guarded<Service>>(&client, scope), children)
        .watches(
            scoped::<Guarded<ModelBundle>>(&client, scope),
            watcher::Config::default(),
            move |bundle| endpoints_using(&store, &bundle),
        )
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    let _ = autoscaler.await;
    tracing::info!("controller stopped");
}

/// Endpoints in the bundle's namespace that name it.
fn endpoints_using(
    store: &Store<Guarded<ModelEndpoint>>,
    bundle: &Guarded<ModelBundle>,
) -> Vec<ObjectRef<Guarded<ModelEndpoint>>> {
    let namespace = bundle.namespace();
    let name = bundle.name_any();
    store
        .state()
        .iter()
        .filter(|guard| {
            guard.namespace() == namespace
                && guard
                    .0
                    .as_ref()
                    .is_ok_and(|endpoint| endpoint.spec.bundle == name)
        })
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}
