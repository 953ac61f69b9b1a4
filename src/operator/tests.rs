//! Reconcile scenarios against a scripted API server (method, path, query and body of every
//! request asserted in order, nothing more once the reconcile ends) and a real nats-server.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::build;
use super::fixtures::{
    APPLY, APPLY_FORCED, ApiServer, Expected, bundle, context, endpoint, finalized, settings,
    validated,
};
use super::reconcile::{error_policy, reconcile};
use super::{Error, FINALIZER};
use crate::crd::ModelEndpoint;
use crate::operator::context::Context;
use crate::queue::testing::{self as nats, TestServer as NatsServer};
use crate::queue::{Queue, QueueSpec};

mod forwarder_creds;
mod ownership;
mod scaler;

const ENDPOINT: &str = "/apis/ferry.dev/v1alpha1/namespaces/ml/modelendpoints/demo";
const STATUS: &str = "/apis/ferry.dev/v1alpha1/namespaces/ml/modelendpoints/demo/status";
const BUNDLE: &str = "/apis/ferry.dev/v1alpha1/namespaces/ml/modelbundles/model";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ml/deployments/demo";
const WORKER_SECRET: &str = "/api/v1/namespaces/ml/secrets/demo-worker";
const SERVICE: &str = "/api/v1/namespaces/ml/services/demo";

async fn start_nats() -> (NatsServer, Queue) {
    nats::start_with_queue().await
}

/// A NATS URL nothing listens on.
fn unreachable_nats() -> crate::queue::Connection {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    crate::queue::Connection::open(&format!("nats://127.0.0.1:{port}")).expect("URL")
}

/// Submits one task to the endpoint's queue.
async fn submit(queue: &Queue, endpoint: &ModelEndpoint) {
    let task = crate::task::TaskMessage {
        task_id: crate::task::TaskId::generate(&endpoint.endpoint_id()),
        endpoint_id: endpoint.endpoint_id(),
        args: json!({}),
        input_url: None,
        callback: None,
        submitted_at_ms: 0,
        record_revision: None,
    };
    queue
        .gateway()
        .submit(&task, None)
        .await
        .expect("submitted");
}

type Reconcile = tokio::task::JoinHandle<Result<Action, Error>>;

fn start_reconcile(endpoint: ModelEndpoint, ctx: &Arc<Context>) -> Reconcile {
    tokio::spawn(reconcile(
        Arc::new(DeserializeGuard(Ok(endpoint))),
        ctx.clone(),
    ))
}

/// Lets the reconcile end, and fails if it sends anything more on the way.
async fn finish(server: &mut ApiServer, reconcile: Reconcile) -> Result<Action, Error> {
    server
        .idle_after(reconcile)
        .await
        .expect("reconcile does not panic")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("condition {type_} in {status}"))
}

/// A condition as the operator writes it for `generation`, without its transition time.
fn written_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation})
}

/// The status of the fixture endpoint (generation 3) when the reconcile stops before its
/// children: not ready for `reason`, queue and workers unknown, all saying `message`.
fn blocked_status(reason: &str, message: &str) -> Value {
    json!({
        "state": "UPDATE_FAILED", "observedGeneration": 3, "desiredReplicas": 2,
        "endpointId": endpoint().endpoint_id().to_string(),
        "conditions": [
            written_condition("Ready", "False", reason, message, 3),
            written_condition("QueueReady", "Unknown", reason, message, 3),
            written_condition("WorkersAvailable", "Unknown", reason, message, 3),
        ],
    })
}

/// The status of the fixture endpoint (generation 3) once its children and queue are applied
/// and its Deployment has yet to roll out.
fn pending_status() -> Value {
    let rollout = "the worker Deployment has not picked up the current spec yet";
    json!({
        "state": "UPDATE_PENDING", "observedGeneration": 3, "desiredReplicas": 2,
        "queueDepth": 0, "endpointId": endpoint().endpoint_id().to_string(),
        "conditions": [
            written_condition("Ready", "False", "RolloutPending", rollout, 3),
            written_condition("QueueReady", "True", "QueueReady", "the task queue exists", 3),
            written_condition("WorkersAvailable", "False", "RolloutPending", rollout, 3),
        ],
    })
}

/// The Event of a reconcile that found the endpoint not ready, as its status says.
fn reconcile_event(status: &Value) -> Expected {
    let ready = condition(status, "Ready");
    let type_ = match ready["reason"].as_str() {
        Some("RolloutPending" | "RolloutInProgress") => "Normal",
        _ => "Warning",
    };
    let (reason, note) = (ready["reason"].as_str(), ready["message"].as_str());
    Expected::event(
        "Reconcile",
        type_,
        reason.expect("a reason"),
        note.expect("a message"),
    )
}

/// Serves the read of the endpoint's bundle.
async fn serve_bundle(server: &mut ApiServer) {
    let bundle = serde_json::to_value(bundle()).expect("json");
    server.expect(Expected::get(BUNDLE)).await.ok(&bundle);
}

/// What the builders make of `endpoint` running the fixture bundle.
fn planned(endpoint: &ModelEndpoint) -> build::Plan {
    build::plan(&validated(endpoint, &bundle()), &settings()).expect("a plan")
}

/// The worker Secret the operator applies for `endpoint`: its serving token comes from the
/// context's key ring.
fn planned_worker_secret(ctx: &Context, endpoint: &ModelEndpoint) -> Value {
    let token = ctx.ring.serving_token(&endpoint.endpoint_id());
    let secret =
        build::worker_secret::build_worker_secret(&validated(endpoint, &bundle()), &token, None);
    serde_json::to_value(secret.expect("a Secret")).expect("json")
}

/// Serves the ownership check and the apply of the worker Secret of `endpoint`, which comes
/// first so new pods find it.
async fn serve_worker_secret_apply(
    server: &mut ApiServer,
    ctx: &Context,
    endpoint: &ModelEndpoint,
) {
    let check = server.expect(Expected::get(WORKER_SECRET)).await;
    check.not_found("secrets", "demo-worker");
    let secret = planned_worker_secret(ctx, endpoint);
    let apply = Expected::new(Method::PATCH, WORKER_SECRET, secret).query(APPLY);
    server.expect_echoed(apply).await;
}

/// Serves the ownership check and the apply of the worker Deployment (`stored`: the one that
/// exists, if any) and returns the applied body. An absent one is applied without force.
async fn serve_deployment_apply(
    server: &mut ApiServer,
    ctx: &Context,
    endpoint: &ModelEndpoint,
    stored: Option<Value>,
) -> Value {
    serve_worker_secret_apply(server, ctx, endpoint).await;
    let check = server.expect(Expected::get(DEPLOYMENT)).await;
    match &stored {
        Some(stored) => check.ok(stored),
        None => check.not_found("deployments", "demo"),
    }
    let deployment = serde_json::to_value(planned(endpoint).deployment).expect("json");
    let query = if stored.is_some() {
        APPLY_FORCED
    } else {
        APPLY
    };
    let apply = Expected::new(Method::PATCH, DEPLOYMENT, deployment).query(query);
    let seen = server.expect(apply).await;
    let body = seen.body.clone();
    match stored {
        Some(stored) => seen.ok(&stored),
        None => seen.echo(),
    }
    body
}

/// Serves the prune of the Service an async endpoint does not need: there is none.
async fn serve_absent_service(server: &mut ApiServer) {
    server
        .expect(Expected::get(SERVICE))
        .await
        .not_found("services", "demo");
}

/// The conditions' transition times: set when the operator writes them.
const TRANSITION_TIMES: [&str; 3] = [
    "/status/conditions/0/lastTransitionTime",
    "/status/conditions/1/lastTransitionTime",
    "/status/conditions/2/lastTransitionTime",
];

/// The operator's apply of `status` to the endpoint's status subresource.
fn status_apply(status: Value) -> Expected {
    let body =
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint", "status": status});
    Expected::new(Method::PATCH, STATUS, body)
        .query(APPLY_FORCED)
        .volatile(&TRANSITION_TIMES)
}

/// Serves the status apply `expected` and returns the status it carried.
async fn serve_status_apply(server: &mut ApiServer, expected: Expected) -> Value {
    let seen = server.expect(expected).await;
    let status = seen.body["status"].clone();
    let mut stored = serde_json::to_value(finalized(endpoint())).expect("json");
    stored["status"] = status.clone();
    seen.ok(&stored);
    status
}

/// Serves the status apply of `status` and the Event telling it; returns the status applied.
async fn serve_status_and_event(server: &mut ApiServer, status: Value) -> Value {
    let applied = serve_status_apply(server, status_apply(status)).await;
    server.expect_echoed(reconcile_event(&applied)).await;
    applied
}

fn config_hash(deployment: &Value) -> String {
    deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"]
        .as_str()
        .expect("config hash")
        .to_owned()
}

/// The operator's JSON patch of the endpoint's finalizers.
fn finalizer_patch(patch: Value) -> Expected {
    Expected::new(Method::PATCH, ENDPOINT, patch)
}

#[tokio::test]
async fn a_new_endpoint_first_gets_the_finalizer() {
    let (ctx, mut server) = context(&unreachable_nats());
    let reconcile = start_reconcile(endpoint(), &ctx);
    let patch = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
    ]);
    let seen = server.expect(finalizer_patch(patch)).await;
    seen.ok(&serde_json::to_value(finalized(endpoint())).expect("json"));
    let action = finish(&mut server, reconcile).await.expect("ok");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn create_applies_the_workers_and_the_queue_and_reports_pending() {
    let (_nats, queue) = start_nats().await;
    let (ctx, mut server) = context(&_nats.connection);
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);

    serve_bundle(&mut server).await;
    let deployment = serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    // The builders are tested on their own; these are what this scenario relies on.
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"],
        "uid-demo"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the autoscaler owns the count"
    );
    let containers = &deployment["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "registry.local/model:1");
    assert_eq!(containers[1]["image"], "registry.local/ferry:test");
    // A new endpoint has no status: an async endpoint removes a Service of an earlier type.
    serve_absent_service(&mut server).await;
    serve_status_and_event(&mut server, pending_status()).await;

    let action = finish(&mut server, reconcile).await.expect("reconciled");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let backlog = queue
        .operator()
        .backlog(&endpoint.endpoint_id())
        .await
        .expect("the queue exists");
    assert_eq!((backlog.queued, backlog.in_flight), (0, 0));
}

/// Runs one apply reconcile of `endpoint` with the bundle present and the Deployment answering
/// `stored`, which applies `status` (if it applies one); returns the applied Deployment and
/// status.
async fn apply_round(
    ctx: &Arc<Context>,
    server: &mut ApiServer,
    endpoint: &ModelEndpoint,
    stored: Option<Value>,
    status: Option<Value>,
) -> (Value, Option<Value>) {
    let reconcile = start_reconcile(endpoint.clone(), ctx);
    serve_bundle(server).await;
    let deployment = serve_deployment_apply(server, ctx, endpoint, stored).await;
    serve_absent_service(server).await;
    let mut applied = None;
    if let Some(status) = status {
        applied = Some(serve_status_and_event(server, status).await);
    }
    finish(server, reconcile).await.expect("reconciled");
    (deployment, applied)
}

#[tokio::test]
async fn a_spec_change_rolls_the_workers_and_reports_progress() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let before = finalized(endpoint());
    let (first, status) =
        apply_round(&ctx, &mut server, &before, None, Some(pending_status())).await;

    let mut after = before.clone();
    after.metadata.generation = Some(4);
    after.spec.cpus = "4".into();
    after.status = Some(serde_json::from_value(status.expect("applied")).expect("status"));
    let mut stored = first.clone();
    stored["metadata"]["generation"] = json!(2);
    stored["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2});
    let stopping = "2 old workers are stopping";
    let progress = json!({
        "state": "UPDATE_IN_PROGRESS", "observedGeneration": 4, "desiredReplicas": 2,
        "queueDepth": 0, "readyReplicas": 2, "replicas": 3,
        "endpointId": after.endpoint_id().to_string(),
        "conditions": [
            written_condition("Ready", "False", "RolloutInProgress", stopping, 4),
            written_condition("QueueReady", "True", "QueueReady", "the task queue exists", 4),
            written_condition("WorkersAvailable", "False", "RolloutInProgress", stopping, 4),
        ],
    });
    let (second, _) = apply_round(&ctx, &mut server, &after, Some(stored), Some(progress)).await;

    assert_ne!(
        config_hash(&first),
        config_hash(&second),
        "the pod template hash changes"
    );
    assert_eq!(
        second["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "4"
    );
}

#[tokio::test]
async fn deleting_removes_the_queue_then_releases_the_finalizer() {
    let (nats, queue) = start_nats().await;
    let mut deleting = finalized(endpoint());
    queue
        .gateway()
        .open_task_queue(&QueueSpec::for_endpoint(&validated(&deleting, &bundle())))
        .await
        .expect("queue");
    let policy = crate::task::CallbackPolicy {
        allowed_hosts: vec!["hooks.example".into()],
        ..Default::default()
    };
    queue
        .operator()
        .prepare_endpoint(&deleting.endpoint_id(), &policy, None)
        .await
        .expect("policy");
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let (ctx, mut server) = context(&nats.connection);
    let reconcile = start_reconcile(deleting.clone(), &ctx);

    let note = "the endpoint's task queue was deleted";
    let deleted = Expected::event("Reconcile", "Normal", "QueueDeleted", note);
    server.expect_echoed(deleted).await;
    assert!(
        queue
            .operator()
            .backlog(&deleting.endpoint_id())
            .await
            .is_err(),
        "the stream is gone before the finalizer is released"
    );
    assert_eq!(
        queue
            .dispatcher()
            .callback_policy(&deleting.endpoint_id())
            .await
            .expect("readable"),
        None,
        "the policy, with the endpoint's sealed secrets, goes with the queue"
    );
    let patch = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]);
    let seen = server.expect(finalizer_patch(patch)).await;
    seen.ok(&serde_json::to_value(endpoint()).expect("json"));
    let action = finish(&mut server, reconcile).await.expect("ok");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_missing_bundle_is_reported_and_heals_when_it_appears() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let mut endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    server
        .expect(Expected::get(BUNDLE))
        .await
        .not_found("modelbundles", "model");
    let missing = "ModelBundle model not found in namespace ml";
    let status =
        serve_status_and_event(&mut server, blocked_status("BundleNotFound", missing)).await;
    finish(&mut server, reconcile)
        .await
        .expect("a missing bundle is not a reconcile error");

    // The bundle appears; its watch triggers the endpoint again.
    endpoint.status = Some(serde_json::from_value(status).expect("status"));
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    serve_status_and_event(&mut server, pending_status()).await;
    finish(&mut server, reconcile).await.expect("reconciled");
}

#[tokio::test]
async fn a_spec_that_breaks_a_rule_is_reported_and_nothing_is_applied() {
    let (ctx, mut server) = context(&unreachable_nats());
    let mut endpoint = finalized(endpoint());
    endpoint
        .spec
        .labels
        .insert("team".into(), "my team!".into());
    let reconcile = start_reconcile(endpoint, &ctx);
    serve_bundle(&mut server).await;
    // No worker Secret, Deployment or queue comes first: the status patch is next.
    let broken = "label team=\"my team!\" is not a valid Kubernetes label value: at most 63 \
        letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
    serve_status_and_event(&mut server, blocked_status("InvalidSpec", broken)).await;
    finish(&mut server, reconcile)
        .await
        .expect("a spec that breaks a rule is not a reconcile error");
}

#[tokio::test]
async fn an_unreachable_nats_is_reported_and_retried_with_backoff() {
    let (ctx, mut server) = context(&unreachable_nats());
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    serve_absent_service(&mut server).await;
    let mut unavailable = pending_status();
    unavailable["conditions"][0] = written_condition("Ready", "False", "QueueUnavailable", "", 3);
    unavailable["conditions"][1] =
        written_condition("QueueReady", "False", "QueueUnavailable", "", 3);
    unavailable
        .as_object_mut()
        .expect("status")
        .remove("queueDepth");
    // The messages carry the client's words for the refused connection.
    let apply = status_apply(unavailable).volatile(&[
        "/status/conditions/0/message",
        "/status/conditions/1/message",
    ]);
    let status = serve_status_apply(&mut server, apply).await;
    let queue = condition(&status, "QueueReady");
    assert!(
        queue["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("connecting to NATS")),
        "{queue}"
    );
    server.expect_echoed(reconcile_event(&status)).await;

    let error = finish(&mut server, reconcile)
        .await
        .expect_err("the reconcile fails");
    assert_eq!(error.reason(), "QueueUnavailable");
    assert!(!error.is_permanent());
    let object = Arc::new(DeserializeGuard(Ok(endpoint)));
    let first = error_policy(object.clone(), &error, ctx.clone());
    let second = error_policy(object.clone(), &error, ctx.clone());
    let third = error_policy(object, &error, ctx.clone());
    assert_ne!(first, Action::await_change());
    // 1 s, 2 s, 4 s (±20 %): each retry waits longer; `retry_delay`'s own test bounds them.
    assert!(third != second && second != first);
    assert!(third.ne(&Action::requeue(Duration::from_secs(1))));
}

fn unparseable(extra_meta: Value) -> DeserializeGuard<ModelEndpoint> {
    let mut object = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "uid-demo", "generation": 5},
        "spec": {"bundle": "model", "endpointType": "batch", "labels": {"team": "t", "product": "p"}},
    });
    if let (Some(meta), Some(extra)) = (object["metadata"].as_object_mut(), extra_meta.as_object())
    {
        meta.extend(extra.clone());
    }
    let guard: DeserializeGuard<ModelEndpoint> = serde_json::from_value(object).expect("guarded");
    assert!(guard.0.is_err(), "the fixture must not parse");
    guard
}

#[tokio::test]
async fn an_unparseable_endpoint_is_reported_once_without_crashing() {
    let (ctx, mut server) = context(&unreachable_nats());
    let object = Arc::new(unparseable(json!({})));
    let first = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    let message = "the endpoint does not parse: Unknown variant batch. Expected one of async, sync, streaming";
    let mut invalid = blocked_status("InvalidSpec", message);
    invalid["observedGeneration"] = json!(5);
    for index in 0..3 {
        invalid["conditions"][index]["observedGeneration"] = json!(5);
    }
    // Without a spec there is no worker count to tell.
    invalid
        .as_object_mut()
        .expect("status")
        .remove("desiredReplicas");
    serve_status_and_event(&mut server, invalid).await;
    assert_eq!(
        finish(&mut server, first).await.expect("ok"),
        Action::await_change()
    );

    let again = tokio::spawn(reconcile(object, ctx.clone()));
    assert_eq!(
        finish(&mut server, again).await.expect("ok"),
        Action::await_change()
    );
}

#[tokio::test]
async fn a_deleted_unparseable_endpoint_still_releases_its_finalizer() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let object = unparseable(json!({
        "finalizers": ["other", FINALIZER],
        "deletionTimestamp": "2026-01-01T00:00:00Z",
    }));
    let reconcile = tokio::spawn(reconcile(Arc::new(object), ctx.clone()));
    let patch = json!([
        {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]);
    let seen = server.expect(finalizer_patch(patch)).await;
    seen.reply(
        StatusCode::OK,
        &json!({"metadata": {"name": "demo", "namespace": "ml"}}),
    );
    let action = finish(&mut server, reconcile).await.expect("ok");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_the_policy_is_published_once_it_exists() {
    let (nats, queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let mut endpoint = finalized(endpoint());
    endpoint.spec.callbacks = Some(crate::crd::CallbackPolicySpec {
        signing_secret: Some(crate::crd::SecretKeySelector {
            name: "hooks".into(),
            key: None,
        }),
        ..Default::default()
    });
    const SECRET: &str = "/api/v1/namespaces/ml/secrets/hooks";
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    server
        .expect(Expected::get(SECRET))
        .await
        .not_found("secrets", "hooks");
    let missing = blocked_status("SecretNotFound", "Secret hooks not found");
    let status = serve_status_and_event(&mut server, missing).await;
    finish(&mut server, reconcile)
        .await
        .expect("a missing Secret is not a reconcile error");
    assert_eq!(
        queue
            .dispatcher()
            .callback_policy(&endpoint.endpoint_id())
            .await
            .expect("readable"),
        None
    );

    // The Secret appears; the next reconcile (a resync) publishes the policy and goes on.
    endpoint.status = Some(serde_json::from_value(status).expect("status"));
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hooks", "namespace": "ml", "labels": {"ferry.dev/callback-credentials": "true"}},
        "data": {"signingSecret": "d2hzZWNfTWZLUTlyOEdLWXFyVHdqVVBEOElMUFpJbzJMYUxhU3c="}});
    // Its labels first, its data only once they opt in.
    server.expect(Expected::get(SECRET)).await.ok(&secret);
    server.expect(Expected::get(SECRET)).await.ok(&secret);
    serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    serve_status_and_event(&mut server, pending_status()).await;
    finish(&mut server, reconcile).await.expect("reconciled");
    let policy = queue
        .dispatcher()
        .callback_policy(&endpoint.endpoint_id())
        .await
        .expect("readable")
        .expect("published");
    let secrets = policy
        .open_secrets(&ctx.ring, &endpoint.endpoint_id())
        .expect("sealed with the operator's ring");
    assert_eq!(
        secrets.signing_secrets,
        vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()]
    );
}

#[tokio::test]
async fn the_backlog_reports_the_age_of_the_oldest_task() {
    let (_nats, queue) = start_nats().await;
    let endpoint = finalized(endpoint());
    queue
        .gateway()
        .open_task_queue(&QueueSpec::for_endpoint(&validated(&endpoint, &bundle())))
        .await
        .expect("queue");
    let empty = queue
        .operator()
        .backlog_with_age(&endpoint.endpoint_id())
        .await
        .expect("backlog");
    assert_eq!(empty.oldest_age_seconds, None);
    submit(&queue, &endpoint).await;
    let waiting = queue
        .operator()
        .backlog_with_age(&endpoint.endpoint_id())
        .await
        .expect("backlog");
    assert_eq!(
        (
            waiting.queued,
            waiting.oldest_age_seconds.map(|age| age < 5)
        ),
        (1, Some(true))
    );
}
