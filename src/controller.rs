//! `ferry operator`: reconciles each ModelEndpoint (and the ModelBundle it names) into a worker
//! Deployment, a Service for sync and streaming endpoints, and a JetStream queue for async
//! ones, and reports what it found in the endpoint's status. The pipeline per endpoint is
//! resolve → build (pure) → apply → status compute (pure) → one status patch; a finalizer
//! deletes the queue, which lives outside the cluster, when the endpoint is deleted.

mod apply;
mod build;
mod context;
mod leader;
mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::{self, Readiness};
use crate::cli::OperatorArgs;
use crate::crd::{EndpointId, ModelBundle, ModelEndpoint, namespace_of};
use crate::queue::{self, QueueSettings};
use build::Plan;
use context::{Context, Metrics, QueueConnection};
use status::{Observed, QueueState, reason};

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
    #[error("applying Deployment {name}")]
    ApplyDeployment {
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
    #[error("deleting Service {name}")]
    DeleteService {
        name: String,
        #[source]
        source: kube::Error,
    },
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
            Error::ApplyDeployment { .. } => "ApplyDeploymentFailed",
            Error::ApplyService { .. } => "ApplyServiceFailed",
            Error::DeleteService { .. } => "DeleteServiceFailed",
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
            | Error::ApplyDeployment { source, .. }
            | Error::ApplyService { source, .. }
            | Error::DeleteService { source, .. }
            | Error::PatchStatus(source)
            | Error::ReleaseInvalid(source) => apply::is_rejected(source),
            Error::EnsureQueue(_) | Error::DeleteQueue(_) => false,
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

/// `ferry operator`: serves probes and metrics, waits for the leader Lease, then reconciles
/// until `cancel`.
pub async fn run(args: OperatorArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let router = admin::router(Arc::new(registry), readiness.clone());
    let admin_server = tokio::spawn(admin::serve(args.admin_listen, router, cancel.clone()));

    let queue_settings = QueueSettings {
        result_retention: args.nats.result_retention,
        ..Default::default()
    };
    let settings = build::Settings {
        forwarder_image: args.forwarder_image.clone(),
        nats_url: args.nats.url.clone(),
        result_retention: args.nats.result_retention,
        predict_timeout: args.predict_timeout,
        gpu_node_label: args.gpu_node_label.clone(),
    };
    let context = Arc::new(Context::new(
        client.clone(),
        QueueConnection::new(args.nats.url.clone(), queue_settings),
        settings,
        args.resync,
        metrics.clone(),
    ));
    let lease = leader::LeaseSettings::from_args(&args.lease, &client);
    // A standby replica is healthy too: ready means started, not elected.
    readiness.set_ready();
    let scope = args.namespace.clone();
    let concurrency = args.concurrency.get();
    let outcome = leader::run_while_leader(client, lease, metrics, cancel.clone(), |stop| {
        run_controller(context, scope, concurrency, stop)
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

/// Runs the Controller until `stop`, letting running reconciles finish.
pub async fn run_controller(
    context: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: CancellationToken,
) {
    let client = context.client.clone();
    let scope = namespace.as_deref();
    let endpoints = scoped::<Guarded<ModelEndpoint>>(&client, scope);
    let children = watcher::Config::default().labels(&build::managed_selector());
    let controller = Controller::new(endpoints, watcher::Config::default());
    let store = controller.store();
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

fn key_of<K: Resource>(object: &K) -> String {
    format!("{}/{}", namespace_of(object), object.name_any())
}

async fn reconcile(
    object: Arc<Guarded<ModelEndpoint>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        endpoint = %object.name_any(),
        namespace = %namespace_of(object.as_ref()),
    );
    let started = Instant::now();
    let result = async {
        match &object.0 {
            Ok(endpoint) => reconcile_endpoint(endpoint, &ctx).await,
            Err(invalid) => reconcile_invalid(&object, invalid, &ctx).await,
        }
    }
    .instrument(span)
    .await;
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok() {
        ctx.record_success(&key_of(object.as_ref()));
    }
    result
}

fn error_policy(object: Arc<Guarded<ModelEndpoint>>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(error.reason());
    let endpoint = object.name_any();
    let namespace = namespace_of(object.as_ref());
    if error.is_permanent() {
        tracing::error!(%endpoint, %namespace, reason = error.reason(), error = %error, source = ?std::error::Error::source(error), "reconcile failed; waiting for a change");
        return Action::await_change();
    }
    let failures = ctx.record_failure(&key_of(object.as_ref()));
    let delay = context::retry_delay(failures, rand::thread_rng().gen_range(-0.2..=0.2));
    tracing::warn!(%endpoint, %namespace, reason = error.reason(), error = %error, source = ?std::error::Error::source(error), failures, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

async fn reconcile_endpoint(endpoint: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    let api = Api::<ModelEndpoint>::namespaced(ctx.client.clone(), &namespace_of(endpoint));
    finalizer(&api, FINALIZER, Arc::new(endpoint.clone()), |event| async {
        match event {
            Finalizer::Apply(endpoint) => apply_endpoint(&endpoint, ctx).await,
            Finalizer::Cleanup(endpoint) => cleanup_endpoint(&endpoint, ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// Resolve → build → apply → status, for an endpoint that is not being deleted.
async fn apply_endpoint(endpoint: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = namespace_of(endpoint);
    let bundle_name = &endpoint.spec.bundle;
    let bundle = apply::get_bundle(&ctx.client, &namespace, bundle_name)
        .await
        .map_err(|source| Error::GetBundle {
            name: bundle_name.clone(),
            source,
        })?;
    let (observed, queue_error) = match bundle {
        None => {
            let message = format!("ModelBundle {bundle_name} not found in namespace {namespace}");
            (Observed::blocked(reason::BUNDLE_NOT_FOUND, message), None)
        }
        Some(bundle) => match build::plan(endpoint, &bundle, &ctx.settings) {
            Err(error) => (Observed::blocked(error.reason(), error.to_string()), None),
            Ok(plan) => apply_plan(endpoint, &plan, ctx).await?,
        },
    };
    let status = status::compute(endpoint, &observed, Time(Timestamp::now()));
    if endpoint.status.as_ref() != Some(&status) {
        apply::apply_status(&ctx.client, &namespace, &endpoint.name_any(), &status)
            .await
            .map_err(Error::PatchStatus)?;
        publish_transition(ctx, endpoint, &status).await;
        tracing::info!(state = ?status.state, ready_replicas = ?status.ready_replicas, "status updated");
    }
    match queue_error {
        Some(error) => Err(Error::EnsureQueue(error)),
        None => Ok(Action::requeue(ctx.resync)),
    }
}

/// Applies the children and ensures the queue. A queue failure is reported in status before it
/// is returned, so it comes back as the second value.
async fn apply_plan(
    endpoint: &ModelEndpoint,
    plan: &Plan,
    ctx: &Context,
) -> Result<(Observed, Option<queue::Error>), Error> {
    let name = plan.deployment.name_any();
    let deployment = match apply::apply_deployment(&ctx.client, &plan.deployment).await {
        Ok(deployment) => deployment,
        Err(source) if apply::is_rejected(&source) => {
            let message = format!("the API server refused Deployment {name}: {source}");
            return Ok((Observed::blocked(reason::APPLY_REJECTED, message), None));
        }
        Err(source) => return Err(Error::ApplyDeployment { name, source }),
    };
    if let Some(service) = &plan.service {
        apply::apply_service(&ctx.client, service)
            .await
            .map_err(|source| Error::ApplyService {
                name: service.name_any(),
                source,
            })?;
    }
    let spec_changed = endpoint.metadata.generation
        != endpoint.status.as_ref().and_then(|s| s.observed_generation);
    if spec_changed {
        prune(endpoint, plan, ctx).await?;
    }
    let (queue, error) = match &plan.queue {
        None => (QueueState::NotRequired, None),
        Some(spec) => match ensure_queue(ctx, spec).await {
            Ok(backlog) => (QueueState::Ready(backlog), None),
            Err(error) => (QueueState::Unavailable(error_chain(&error)), Some(error)),
        },
    };
    let observed = Observed {
        blocked: None,
        deployment: Some(deployment),
        queue,
    };
    Ok((observed, error))
}

async fn ensure_queue(
    ctx: &Context,
    spec: &queue::QueueSpec,
) -> Result<queue::Backlog, queue::Error> {
    let queue = ctx.queue.get().await?;
    queue.ensure_endpoint(spec).await?;
    queue.backlog(&spec.endpoint_id).await
}

/// Removes what an earlier spec needed and this one does not (after an endpoint type change).
async fn prune(endpoint: &ModelEndpoint, plan: &Plan, ctx: &Context) -> Result<(), Error> {
    if plan.service.is_none() {
        let name = build::service_name(endpoint);
        apply::delete_service(&ctx.client, &namespace_of(endpoint), &name)
            .await
            .map_err(|source| Error::DeleteService { name, source })?;
    }
    if plan.queue.is_none() {
        delete_queue(ctx, &endpoint.endpoint_id()).await?;
    }
    Ok(())
}

async fn delete_queue(ctx: &Context, endpoint: &EndpointId) -> Result<(), Error> {
    let queue = ctx.queue.get().await.map_err(Error::DeleteQueue)?;
    queue
        .delete_endpoint(endpoint)
        .await
        .map_err(Error::DeleteQueue)
}

/// The endpoint is being deleted: its children go with it (owner references); the queue does
/// not, so it is deleted here before the finalizer is released.
async fn cleanup_endpoint(endpoint: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    delete_queue(ctx, &endpoint.endpoint_id()).await?;
    ctx.forget(&key_of(endpoint));
    tracing::info!("queue deleted; releasing the endpoint");
    let note = "the endpoint's task queue was deleted".to_string();
    publish(
        ctx,
        &endpoint.object_ref(&()),
        EventType::Normal,
        "QueueDeleted",
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// An object that does not parse: report why in its status (once per generation), and let it
/// go if it is being deleted.
async fn reconcile_invalid(
    object: &Guarded<ModelEndpoint>,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = namespace_of(object);
    let name = object.name_any();
    let id = EndpointId::for_resource(&namespace, &name);
    let meta = object.meta();
    if meta.deletion_timestamp.is_some() {
        if let Some(index) = object.finalizers().iter().position(|f| f == FINALIZER) {
            delete_queue(ctx, &id).await?;
            release_invalid(ctx, &namespace, &name, index).await?;
        }
        ctx.forget(&key_of(object));
        return Ok(Action::await_change());
    }
    let key = key_of(object);
    if !ctx.first_report_of_invalid(&key, meta.generation, &invalid.error) {
        return Ok(Action::await_change());
    }
    tracing::warn!(error = %invalid.error, "the endpoint does not parse");
    let message = format!("the endpoint does not parse: {}", invalid.error);
    let status = status::compute_invalid(
        id.to_string(),
        meta.generation,
        message.clone(),
        Time(Timestamp::now()),
    );
    apply::apply_status(&ctx.client, &namespace, &name, &status)
        .await
        .map_err(Error::PatchStatus)?;
    publish(
        ctx,
        &object.object_ref(&()),
        EventType::Warning,
        reason::INVALID_SPEC,
        message,
    )
    .await;
    Ok(Action::await_change())
}

async fn release_invalid(
    ctx: &Context,
    namespace: &str,
    name: &str,
    index: usize,
) -> Result<(), Error> {
    use json_patch::{PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf};
    let index = index.to_string();
    let path = PointerBuf::from_tokens(["metadata", "finalizers", index.as_str()]);
    let patch = json_patch::Patch(vec![
        // The test makes the removal fail, instead of removing another finalizer, when the
        // list changed meanwhile.
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: FINALIZER.into(),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ]);
    Api::<Guarded<ModelEndpoint>>::namespaced(ctx.client.clone(), namespace)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
        .map(drop)
        .map_err(Error::ReleaseInvalid)
}

/// One Event when the `Ready` condition changes reason: what a user should see.
async fn publish_transition(
    ctx: &Context,
    endpoint: &ModelEndpoint,
    new: &crate::crd::ModelEndpointStatus,
) {
    let Some(ready) = status::ready_condition(Some(new)) else {
        return;
    };
    let before = status::ready_condition(endpoint.status.as_ref());
    if before.is_some_and(|b| b.reason == ready.reason && b.status == ready.status) {
        return;
    }
    let type_ = if ready.status == "True"
        || matches!(
            ready.reason.as_str(),
            reason::ROLLOUT_PENDING | reason::ROLLOUT_IN_PROGRESS
        ) {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let reference = endpoint.object_ref(&());
    publish(ctx, &reference, type_, &ready.reason, ready.message.clone()).await;
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason, "publishing an Event failed");
    }
}

/// An error and its sources on one line, for a condition message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
