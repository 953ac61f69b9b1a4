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
use crate::cli::OperatorArgs;
use crate::crd::{ModelBundle, ModelEndpoint};
use crate::queue::{self, QueueSettings};
use build::worker_secret::ForwarderCredsIssuing;
use context::{Context, Metrics, QueueConnection};
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

/// What shapes every worker pod, from the operator's flags.
pub fn settings(args: &OperatorArgs) -> build::Settings {
    build::Settings {
        forwarder_image: args.forwarder_image.clone(),
        nats_url: args.nats.url.clone(),
        result_retention: args.nats.result_retention,
        predict_timeout: args.predict_timeout,
        gpu_node_label: args.gpu_node_label.clone(),
        worker_network_policy: args.worker_network_policy.clone(),
        forwarder_nats_creds: args.forwarder_creds.nats_account_file.is_some(),
    }
}

/// How the operator issues forwarders' NATS credentials, from its flags; `None` without them.
pub fn forwarder_creds_issuing(
    args: &crate::cli::ForwarderCredsArgs,
) -> Result<Option<ForwarderCredsIssuing>, crate::nats_auth::Error> {
    let (Some(account), Some(seed)) = (
        &args.nats_account_file,
        &args.nats_account_signing_seed_file,
    ) else {
        return Ok(None);
    };
    Ok(Some(ForwarderCredsIssuing {
        issuer: crate::nats_auth::ForwarderIssuer::from_files(account, seed)?,
        validity: args.valid_for,
    }))
}

/// `ferry operator`: serves probes and metrics, waits for the leader Lease, then reconciles
/// until `cancel`.
pub async fn run(args: OperatorArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let ring = Arc::new(args.seal.key_ring()?);
    let forwarder_creds = forwarder_creds_issuing(&args.forwarder_creds)?;
    let client = Client::try_default().await?;
    let mut registry = crate::metrics::registry();
    let metrics = Metrics::register(&mut registry);
    let autoscale_metrics = AutoscaleMetrics::register(&mut registry);
    let readiness = Readiness::default();
    let router = admin::router(Arc::new(registry), readiness.clone());
    let admin_server = tokio::spawn(admin::serve(
        args.admin_listen,
        router,
        args.http.limits(),
        cancel.clone(),
    ));

    let queue_settings = QueueSettings {
        result_retention: args.nats.result_retention,
        task_limits: args.task_queue.limits(),
        ..Default::default()
    };
    let settings = settings(&args);
    let context = Arc::new(
        Context::new(
            client.clone(),
            QueueConnection::new(
                args.nats
                    .connection()?
                    .for_role(crate::queue::Role::Operator),
                queue_settings,
            ),
            settings,
            ring,
            args.resync,
            metrics.clone(),
        )
        .with_forwarder_creds(forwarder_creds),
    );
    let lease = leader::LeaseSettings::from_args(&args.lease, &client);
    // A standby replica is healthy too: ready means started, not elected.
    readiness.set_ready();
    let scope = args.namespace.clone();
    let concurrency = args.reconcile_concurrency.get();
    let autoscaler = Autoscaler {
        scale_down_delay: args.scale_down_delay,
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
