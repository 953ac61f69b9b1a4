//! One reconcile of one ModelEndpoint: resolve the bundle → validate → build (pure) → apply
//! children → ensure the queue → compute the status (pure) → one status patch and, on a
//! change a user should see, one Event. Deletion runs the finalizer's cleanup: the queue goes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use tracing::Instrument;

use super::apply::{Applied, Ownership};
use super::build::{self, Plan};
use super::context::{self, Context};
use super::status::{self, Blocked, Observed, QueueState, reason};
use super::{Error, FINALIZER, Guarded, apply};
use crate::callback::policy::{PolicyError, check_opted_in, resolve_policy, secret_names};
use crate::crd::validate::{ValidatedEndpoint, validate};
use crate::crd::{EndpointId, ModelBundle, ModelEndpoint, ModelEndpointStatus, namespace_of};
use crate::queue;
use crate::task::CallbackPolicy;

fn key_of<K: Resource>(object: &K) -> String {
    format!("{}/{}", namespace_of(object), object.name_any())
}

pub async fn reconcile(
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

pub fn error_policy(
    object: Arc<Guarded<ModelEndpoint>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
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

/// Resolve → validate → build → apply → status, for an endpoint that is not being deleted.
async fn apply_endpoint(endpoint: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = namespace_of(endpoint);
    let bundle_name = &endpoint.spec.bundle;
    let bundle = apply::get_named::<ModelBundle>(&ctx.client, &namespace, bundle_name)
        .await
        .map_err(|source| Error::GetBundle {
            name: bundle_name.clone(),
            source,
        })?;
    let (observed, queue_error) = match plan_endpoint(endpoint, bundle.as_ref(), &ctx.settings) {
        Err(blocked) => (Observed::blocked(blocked.reason, blocked.message), None),
        Ok((validated, plan)) => match resolve_callbacks(endpoint, ctx).await? {
            Err(error) => (Observed::blocked(error.reason(), error.to_string()), None),
            Ok(policy) => apply_plan(&validated, &plan, &policy, ctx).await?,
        },
    };
    let status = status::compute(endpoint, &observed, Time(Timestamp::now()));
    if !status::is_unchanged(endpoint.status.as_ref(), &status) {
        apply::apply_status(&ctx.client, &namespace, &endpoint.name_any(), &status)
            .await
            .map_err(Error::PatchStatus)?;
        publish_transition(ctx, endpoint, &status).await;
        tracing::info!(state = ?status.state, ready_replicas = ?status.ready_replicas, "status updated");
    }
    match queue_error {
        Some(error) => Err(Error::EnsureQueue(error)),
        None => Ok(Action::requeue(ctx.requeue_interval())),
    }
}

/// Validate → build, with the bundle the endpoint names: its plan, or why it is blocked (a
/// missing bundle, a spec that breaks a rule).
fn plan_endpoint(
    endpoint: &ModelEndpoint,
    bundle: Option<&ModelBundle>,
    settings: &build::Settings,
) -> Result<(ValidatedEndpoint, Plan), Blocked> {
    let Some(bundle) = bundle else {
        let message = format!(
            "ModelBundle {} not found in namespace {}",
            endpoint.spec.bundle,
            namespace_of(endpoint)
        );
        return Err(Blocked {
            reason: reason::BUNDLE_NOT_FOUND,
            message,
        });
    };
    let validated = validate(endpoint, bundle).map_err(|invalid| Blocked {
        reason: invalid.reason(),
        message: invalid.to_string(),
    })?;
    let plan = build::plan(&validated, settings).map_err(|error| Blocked {
        reason: error.reason(),
        message: error.to_string(),
    })?;
    Ok((validated, plan))
}

/// Applies the children and ensures the queue. A queue failure is reported in status before it
/// is returned, so it comes back as the second value.
async fn apply_plan(
    validated: &ValidatedEndpoint,
    plan: &Plan,
    policy: &CallbackPolicy,
    ctx: &Context,
) -> Result<(Observed, Option<queue::Error>), Error> {
    let endpoint = validated.endpoint();
    let uid = endpoint.uid().unwrap_or_default();
    // The worker Secret first, so new pods find it.
    if let Some(clash) = apply_worker_secret(validated, ctx, &uid).await? {
        return Ok((clash, None));
    }
    let name = plan.deployment.name_any();
    let deployment = match apply::apply_child(&ctx.client, &plan.deployment, &uid).await {
        Ok(Applied::Stored(deployment)) => deployment,
        Ok(Applied::NotOurs) => return Ok((name_clash("Deployment", &name), None)),
        Err(source) if apply::is_rejected(&source) => {
            let message = format!("the API server refused Deployment {name}: {source}");
            return Ok((Observed::blocked(reason::APPLY_REJECTED, message), None));
        }
        Err(source) => return Err(Error::ApplyDeployment { name, source }),
    };
    let service = apply_optional(ctx, plan.service.as_ref(), &uid, |name, source| {
        Error::ApplyService { name, source }
    });
    if let Some(clash) = service.await? {
        return Ok((clash, None));
    }
    let network_policy = apply_optional(ctx, plan.network_policy.as_ref(), &uid, |name, source| {
        Error::ApplyNetworkPolicy { name, source }
    });
    if let Some(clash) = network_policy.await? {
        return Ok((clash, None));
    }
    let spec_changed = endpoint.metadata.generation
        != endpoint.status.as_ref().and_then(|s| s.observed_generation);
    if spec_changed {
        prune(endpoint, plan, ctx).await?;
    }
    let (queue, error) =
        match ensure_queue(ctx, &endpoint.endpoint_id(), plan.queue.as_ref(), policy).await {
            Ok(Some(backlog)) => (QueueState::Ready(backlog), None),
            Ok(None) => (QueueState::NotRequired, None),
            Err(error) => (
                QueueState::Unavailable(crate::telemetry::error_chain(&error)),
                Some(error),
            ),
        };
    let observed = Observed {
        blocked: None,
        deployment: Some(deployment),
        queue,
    };
    Ok((observed, error))
}

/// Applies the endpoint's worker Secret: its serving token and, when the operator issues them,
/// the forwarders' NATS credentials — those stored are kept while fresh, so an ordinary
/// reconcile leaves the Secret as it is. Answers the clash when its name is taken.
async fn apply_worker_secret(
    validated: &ValidatedEndpoint,
    ctx: &Context,
    uid: &str,
) -> Result<Option<Observed>, Error> {
    let endpoint = validated.endpoint();
    let token = ctx.ring.serving_token(&endpoint.endpoint_id());
    let Some(issuing) = &ctx.forwarder_creds else {
        // The plan was built, so the endpoint has what its Secret needs too.
        let secret = build::worker_secret::build_worker_secret(validated, &token, None).ok();
        return apply_optional(ctx, secret.as_ref(), uid, |name, source| {
            Error::ApplySecret { name, source }
        })
        .await;
    };
    let name = build::worker_secret::worker_secret_name(endpoint);
    let existing = apply::get_named::<Secret>(&ctx.client, &namespace_of(endpoint), &name)
        .await
        .map_err(|source| Error::GetSecret {
            name: name.clone(),
            source,
        })?;
    if apply::ownership(existing.as_ref().map(|s| &s.metadata), uid) == Ownership::Foreign {
        return Ok(Some(name_clash("Secret", &name)));
    }
    let stored = existing
        .as_ref()
        .and_then(build::worker_secret::ForwarderCreds::stored_in);
    let creds = issuing
        .compute_forwarder_creds(&endpoint.endpoint_id(), stored, Timestamp::now())
        .map_err(Error::IssueForwarderCreds)?;
    let Ok(secret) = build::worker_secret::build_worker_secret(validated, &token, Some(&creds))
    else {
        return Ok(None);
    };
    let existing_meta = existing.as_ref().map(|s| &s.metadata);
    match apply::apply_child_over(&ctx.client, &secret, existing_meta, uid).await {
        Ok(Applied::Stored(_)) => Ok(None),
        Ok(Applied::NotOurs) => Ok(Some(name_clash("Secret", &name))),
        Err(source) => Err(Error::ApplySecret { name, source }),
    }
}

/// Applies a child the plan may leave out; answers the clash when its name is taken.
async fn apply_optional<K>(
    ctx: &Context,
    child: Option<&K>,
    owner_uid: &str,
    failed: impl FnOnce(String, kube::Error) -> Error,
) -> Result<Option<Observed>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let Some(child) = child else { return Ok(None) };
    match apply::apply_child(&ctx.client, child, owner_uid).await {
        Ok(Applied::Stored(_)) => Ok(None),
        Ok(Applied::NotOurs) => Ok(Some(name_clash(&K::kind(&()), &child.name_any()))),
        Err(source) => Err(failed(child.name_any(), source)),
    }
}

/// An object named like a child of the endpoint that is not ferry's: it is left alone and the
/// endpoint waits until it is renamed or the object removed.
fn name_clash(kind: &str, name: &str) -> Observed {
    let message = format!(
        "a {kind} named {name} already exists and is not this endpoint's; ferry leaves it alone: rename the endpoint or remove the {kind}"
    );
    Observed::blocked(reason::NAME_CLASH, message)
}

/// Publishes the endpoint's callback policy for the dispatcher and, for an async endpoint,
/// ensures its queue and reads its backlog.
async fn ensure_queue(
    ctx: &Context,
    endpoint: &EndpointId,
    spec: Option<&queue::QueueSpec>,
    policy: &CallbackPolicy,
) -> Result<Option<queue::Backlog>, queue::Error> {
    let queue = ctx.queue.get().await?;
    queue.prepare_endpoint(endpoint, policy, spec).await?;
    let Some(spec) = spec else { return Ok(None) };
    queue.backlog_with_age(&spec.endpoint_id).await.map(Some)
}

/// The endpoint's callback policy with its Secrets read; a missing Secret or key, or a Secret
/// that did not opt in, is the endpoint's problem (reported in status), a failed read is the
/// operator's (retried). The data of a Secret is read only once its labels show it opted in.
/// Secrets are read by name at every reconcile (no watch): a change to one takes effect
/// within the resync period.
async fn resolve_callbacks(
    endpoint: &ModelEndpoint,
    ctx: &Context,
) -> Result<Result<CallbackPolicy, PolicyError>, Error> {
    let namespace = namespace_of(endpoint);
    let spec = &endpoint.spec;
    let mut secrets = BTreeMap::new();
    for name in secret_names(spec) {
        let get_failed = |source| Error::GetSecret {
            name: name.clone(),
            source,
        };
        let Some(labels) = apply::get_secret_labels(&ctx.client, &namespace, &name)
            .await
            .map_err(get_failed)?
        else {
            continue;
        };
        if let Err(refused) = check_opted_in(&name, Some(&labels)) {
            return Ok(Err(refused));
        }
        let data = apply::get_secret_data(&ctx.client, &namespace, &name)
            .await
            .map_err(get_failed)?;
        if let Some(data) = data {
            secrets.insert(name, data);
        }
    }
    let secret = |name: &str| secrets.get(name).cloned();
    Ok(resolve_policy(
        &endpoint.endpoint_id(),
        spec,
        secret,
        &ctx.ring,
    ))
}

/// Removes what an earlier spec needed and this one does not (after an endpoint type change).
async fn prune(endpoint: &ModelEndpoint, plan: &Plan, ctx: &Context) -> Result<(), Error> {
    if plan.service.is_none() {
        let name = crate::crd::names::service_name(endpoint);
        let uid = endpoint.uid().unwrap_or_default();
        let deleted =
            apply::delete_child::<Service>(&ctx.client, &namespace_of(endpoint), &name, &uid)
                .await
                .map_err(|source| Error::DeleteService {
                    name: name.clone(),
                    source,
                })?;
        if !deleted {
            tracing::info!(service = %name, "a Service named like the endpoint is not its own; left alone");
        }
    }
    if plan.queue.is_none() {
        delete_queue(ctx, &endpoint.endpoint_id()).await?;
    }
    Ok(())
}

/// Deletes the endpoint's queue and its callback policy (with the secrets sealed in it).
async fn delete_queue_and_policy(ctx: &Context, endpoint: &EndpointId) -> Result<(), Error> {
    let queue = ctx.queue.get().await.map_err(Error::DeleteQueue)?;
    queue
        .retire_endpoint(endpoint)
        .await
        .map_err(Error::DeleteQueue)
}

async fn delete_queue(ctx: &Context, endpoint: &EndpointId) -> Result<(), Error> {
    let queue = ctx.queue.get().await.map_err(Error::DeleteQueue)?;
    queue
        .close_task_queue(endpoint)
        .await
        .map_err(Error::DeleteQueue)
}

/// The endpoint is being deleted: its children go with it (owner references); the queue does
/// not, so it is deleted here before the finalizer is released.
async fn cleanup_endpoint(endpoint: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    delete_queue_and_policy(ctx, &endpoint.endpoint_id()).await?;
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
            delete_queue_and_policy(ctx, &id).await?;
            release_invalid(ctx, &namespace, &name, index).await?;
        }
        ctx.forget(&key_of(object));
        return Ok(Action::await_change());
    }
    let key = key_of(object);
    if ctx.reported_invalid(&key, meta.generation, &invalid.error) {
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
    ctx.remember_invalid(&key, meta.generation, &invalid.error);
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
async fn publish_transition(ctx: &Context, endpoint: &ModelEndpoint, new: &ModelEndpointStatus) {
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
