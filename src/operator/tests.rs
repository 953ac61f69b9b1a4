//! Reconcile scenarios against a scripted API server (method, path and body of every request
//! asserted in order) and a real nats-server.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::fixtures::{ApiServer, bundle, context, endpoint, finalized, validated};
use super::reconcile::{error_policy, reconcile};
use super::{Error, FINALIZER};
use crate::crd::{ModelEndpoint, ModelEndpointStatus};
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

async fn finish(reconcile: Reconcile) -> Result<Action, Error> {
    tokio::time::timeout(Duration::from_secs(20), reconcile)
        .await
        .expect("reconcile finishes")
        .expect("reconcile does not panic")
}

fn assert_applied_by_the_operator(query: &str) {
    assert!(query.contains("fieldManager=ferry-operator"), "{query}");
    assert!(query.contains("force=true"), "{query}");
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("condition {type_} in {status}"))
}

/// Serves the read of the endpoint's bundle.
async fn serve_bundle(server: &mut ApiServer) {
    let bundle = serde_json::to_value(bundle()).expect("json");
    server.expect(Method::GET, BUNDLE).await.ok(&bundle);
}

/// Serves the ownership check and the apply of the worker Secret, which comes first so new pods
/// find it.
async fn serve_worker_secret_apply(server: &mut ApiServer) {
    let check = server.expect(Method::GET, WORKER_SECRET).await;
    check.not_found("secrets", "demo-worker");
    let secret = server.expect(Method::PATCH, WORKER_SECRET).await;
    assert!(secret.query.contains("fieldManager=ferry-operator"));
    assert_eq!(secret.body["kind"], "Secret");
    assert!(secret.body["data"]["serving-token"].is_string());
    secret.echo();
}

/// Serves the ownership check and the apply of the worker Deployment (`stored`: the one that
/// exists, if any) and returns the applied body. An absent one is applied without force.
async fn serve_deployment_apply(server: &mut ApiServer, stored: Option<Value>) -> Value {
    serve_worker_secret_apply(server).await;
    let check = server.expect(Method::GET, DEPLOYMENT).await;
    match &stored {
        Some(stored) => check.ok(stored),
        None => check.not_found("deployments", "demo"),
    }
    let seen = server.expect(Method::PATCH, DEPLOYMENT).await;
    assert!(seen.query.contains("fieldManager=ferry-operator"));
    assert_eq!(seen.query.contains("force=true"), stored.is_some());
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
        .expect(Method::GET, SERVICE)
        .await
        .not_found("services", "demo");
}

/// Serves the status apply and returns the status it carried.
async fn serve_status_apply(server: &mut ApiServer) -> Value {
    let seen = server.expect(Method::PATCH, STATUS).await;
    assert_applied_by_the_operator(&seen.query);
    assert_eq!(seen.body["kind"], "ModelEndpoint");
    let status = seen.body["status"].clone();
    let mut stored = serde_json::to_value(finalized(endpoint())).expect("json");
    stored["status"] = status.clone();
    seen.ok(&stored);
    status
}

fn config_hash(deployment: &Value) -> String {
    deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"]
        .as_str()
        .expect("config hash")
        .to_owned()
}

#[tokio::test]
async fn a_new_endpoint_first_gets_the_finalizer() {
    let (ctx, mut server) = context(&unreachable_nats());
    let reconcile = start_reconcile(endpoint(), &ctx);
    let seen = server.expect(Method::PATCH, ENDPOINT).await;
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    seen.ok(&serde_json::to_value(finalized(endpoint())).expect("json"));
    assert_eq!(finish(reconcile).await.expect("ok"), Action::await_change());
    server.expect_silence().await;
}

#[tokio::test]
async fn create_applies_the_workers_and_the_queue_and_reports_pending() {
    let (_nats, queue) = start_nats().await;
    let (ctx, mut server) = context(&_nats.connection);
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);

    serve_bundle(&mut server).await;
    let deployment = serve_deployment_apply(&mut server, None).await;
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"],
        "uid-demo"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["controller"],
        true
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

    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_PENDING");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["endpointId"], endpoint.endpoint_id().to_string());
    assert_eq!(status["desiredReplicas"], 2);
    assert_eq!(status["queueDepth"], 0);
    assert_eq!(condition(&status, "QueueReady")["status"], "True");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["reason"], "RolloutPending");
    let event = server.expect_event().await;
    assert_eq!(event["reason"], "RolloutPending");
    assert_eq!(event["regarding"]["name"], "demo");

    let action = finish(reconcile).await.expect("reconciled");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    server.expect_silence().await;
    let backlog = queue
        .operator()
        .backlog(&endpoint.endpoint_id())
        .await
        .expect("the queue exists");
    assert_eq!((backlog.queued, backlog.in_flight), (0, 0));
}

/// Runs one apply reconcile of `endpoint` with the bundle present and the Deployment answering
/// `stored`; returns the applied Deployment and the status, if one was patched.
async fn apply_round(
    ctx: &Arc<Context>,
    server: &mut ApiServer,
    endpoint: &ModelEndpoint,
    stored: Option<Value>,
    expect_prune: bool,
) -> (Value, Option<Value>) {
    let reconcile = start_reconcile(endpoint.clone(), ctx);
    serve_bundle(server).await;
    let deployment = serve_deployment_apply(server, stored).await;
    if expect_prune {
        serve_absent_service(server).await;
    }
    let status = if endpoint
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == endpoint.metadata.generation)
    {
        None
    } else {
        let status = serve_status_apply(server).await;
        server.expect_event().await;
        Some(status)
    };
    finish(reconcile).await.expect("reconciled");
    (deployment, status)
}

#[tokio::test]
async fn a_spec_change_rolls_the_workers_and_reports_progress() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let before = finalized(endpoint());
    let (first, status) = apply_round(&ctx, &mut server, &before, None, true).await;
    let status: ModelEndpointStatus =
        serde_json::from_value(status.expect("status")).expect("status");

    let mut after = before.clone();
    after.metadata.generation = Some(4);
    after.spec.cpus = "4".into();
    after.status = Some(status);
    let mut stored = first.clone();
    stored["metadata"]["generation"] = json!(2);
    stored["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2});
    let (second, status) = apply_round(&ctx, &mut server, &after, Some(stored), true).await;

    assert_ne!(
        config_hash(&first),
        config_hash(&second),
        "the pod template hash changes"
    );
    assert_eq!(
        second["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "4"
    );
    let status = status.expect("status");
    assert_eq!(status["state"], "UPDATE_IN_PROGRESS");
    assert_eq!(status["observedGeneration"], 4);
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(
        condition(&status, "WorkersAvailable")["reason"],
        "RolloutInProgress"
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

    let event = server.expect_event().await;
    assert_eq!(event["reason"], "QueueDeleted");
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
    let seen = server.expect(Method::PATCH, ENDPOINT).await;
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    seen.ok(&serde_json::to_value(endpoint()).expect("json"));
    assert_eq!(finish(reconcile).await.expect("ok"), Action::await_change());
    server.expect_silence().await;
}

#[tokio::test]
async fn a_missing_bundle_is_reported_and_heals_when_it_appears() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = context(&nats.connection);
    let mut endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    server
        .expect(Method::GET, BUNDLE)
        .await
        .not_found("modelbundles", "model");
    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_FAILED");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("BundleNotFound"))
    );
    assert_eq!(
        ready["message"],
        "ModelBundle model not found in namespace ml"
    );
    let event = server.expect_event().await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("BundleNotFound"))
    );
    finish(reconcile)
        .await
        .expect("a missing bundle is not a reconcile error");

    // The bundle appears; its watch triggers the endpoint again.
    endpoint.status = Some(serde_json::from_value(status).expect("status"));
    endpoint.metadata.generation = Some(3);
    let reconcile = start_reconcile(endpoint, &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, None).await;
    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_PENDING");
    assert_eq!(condition(&status, "Ready")["reason"], "RolloutPending");
    server.expect_event().await;
    finish(reconcile).await.expect("reconciled");
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
    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_FAILED");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("InvalidSpec"))
    );
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("label team=\"my team!\" is not a valid Kubernetes")),
        "{ready}"
    );
    let event = server.expect_event().await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("InvalidSpec"))
    );
    finish(reconcile)
        .await
        .expect("a spec that breaks a rule is not a reconcile error");
}

#[tokio::test]
async fn an_unreachable_nats_is_reported_and_retried_with_backoff() {
    let (ctx, mut server) = context(&unreachable_nats());
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, None).await;
    serve_absent_service(&mut server).await;
    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_PENDING");
    let queue = condition(&status, "QueueReady");
    assert_eq!(
        (&queue["status"], &queue["reason"]),
        (&json!("False"), &json!("QueueUnavailable"))
    );
    assert!(
        queue["message"]
            .as_str()
            .is_some_and(|m| m.contains("connecting to NATS")),
        "{queue}"
    );
    let event = server.expect_event().await;
    assert_eq!(event["reason"], "QueueUnavailable");

    let error = finish(reconcile).await.expect_err("the reconcile fails");
    assert_eq!(error.reason(), "QueueUnavailable");
    assert!(!error.is_permanent());
    let object = Arc::new(DeserializeGuard(Ok(endpoint)));
    let first = error_policy(object.clone(), &error, ctx.clone());
    let second = error_policy(object.clone(), &error, ctx.clone());
    let third = error_policy(object, &error, ctx.clone());
    assert_ne!(first, Action::await_change());
    // 1 s, 2 s, 4 s (±20 %): each retry waits longer.
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
    let status = serve_status_apply(&mut server).await;
    assert_eq!(status["state"], "UPDATE_FAILED");
    assert_eq!(status["observedGeneration"], 5);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("batch")),
        "{ready}"
    );
    assert_eq!(server.expect_event().await["reason"], "InvalidSpec");
    assert_eq!(finish(first).await.expect("ok"), Action::await_change());

    let again = tokio::spawn(reconcile(object, ctx.clone()));
    assert_eq!(finish(again).await.expect("ok"), Action::await_change());
    server.expect_silence().await;
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
    let seen = server.expect(Method::PATCH, ENDPOINT).await;
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ])
    );
    seen.reply(
        StatusCode::OK,
        &json!({"metadata": {"name": "demo", "namespace": "ml"}}),
    );
    assert_eq!(finish(reconcile).await.expect("ok"), Action::await_change());
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
        .expect(Method::GET, SECRET)
        .await
        .not_found("secrets", "hooks");
    let status = serve_status_apply(&mut server).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("SecretNotFound"))
    );
    assert_eq!(ready["message"], "Secret hooks not found");
    server.expect_event().await;
    finish(reconcile)
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
    server.expect(Method::GET, SECRET).await.ok(&secret);
    server.expect(Method::GET, SECRET).await.ok(&secret);
    serve_deployment_apply(&mut server, None).await;
    let status = serve_status_apply(&mut server).await;
    assert_ne!(condition(&status, "Ready")["reason"], "SecretNotFound");
    server.expect_event().await;
    finish(reconcile).await.expect("reconciled");
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
