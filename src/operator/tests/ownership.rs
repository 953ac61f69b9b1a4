//! What ferry refuses to touch: objects named like an endpoint's children that are not its
//! own (neither overwritten nor deleted), and Secrets that did not opt in as callback
//! credentials (their data never read, nothing published).

use http::Method;
use serde_json::{Value, json};

use super::super::fixtures::{ApiServer, Expected, endpoint, finalized};
use super::{
    DEPLOYMENT, SERVICE, WORKER_SECRET, blocked_status, finish, pending_status, serve_bundle,
    serve_deployment_apply, serve_status_and_event, serve_worker_secret_apply, start_nats,
    start_reconcile, unreachable_nats,
};
use crate::crd::{CallbackPolicySpec, EndpointType, SecretKeySelector};

const SECRET: &str = "/api/v1/namespaces/ml/secrets/hooks";

/// An object of `kind` named `demo` that someone else created.
fn foreign(api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": "demo", "namespace": "ml", "uid": "uid-theirs", "resourceVersion": "7",
            "labels": {"app": "theirs"}},
    })
}

/// Serves the status apply and the Event of a `NameClash` over the `kind` named `name`.
async fn expect_clash_reported(server: &mut ApiServer, kind: &str, name: &str) {
    let message = format!(
        "a {kind} named {name} already exists and is not this endpoint's; ferry leaves it \
        alone: rename the endpoint or remove the {kind}"
    );
    serve_status_and_event(server, blocked_status("NameClash", &message)).await;
}

/// Reconciles an endpoint of `endpoint_type` whose child at `path` is someone else's `kind`
/// (the children applied before it are absent): that child is checked and not written (the
/// next request is the status), and the clash is reported.
async fn clash_on(endpoint_type: EndpointType, path: &str, api_version: &str, kind: &str) {
    let (ctx, mut server) = super::super::fixtures::context(&unreachable_nats());
    let mut endpoint = finalized(endpoint());
    endpoint.spec.endpoint_type = endpoint_type;
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    match path {
        WORKER_SECRET => {}
        DEPLOYMENT => serve_worker_secret_apply(&mut server, &ctx, &endpoint).await,
        _ => {
            serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
        }
    }
    let check = server.expect(Expected::get(path)).await;
    check.ok(&foreign(api_version, kind));
    let name = path.rsplit('/').next().expect("the child's name");
    expect_clash_reported(&mut server, kind, name).await;
    finish(&mut server, reconcile)
        .await
        .expect("a clash is not an error");
}

#[tokio::test]
async fn a_deployment_ferry_does_not_own_is_neither_applied_nor_taken_over() {
    clash_on(EndpointType::Async, DEPLOYMENT, "apps/v1", "Deployment").await;
}

#[tokio::test]
async fn a_worker_secret_ferry_does_not_own_is_neither_applied_nor_taken_over() {
    clash_on(EndpointType::Sync, WORKER_SECRET, "v1", "Secret").await;
}

#[tokio::test]
async fn a_service_ferry_does_not_own_is_not_applied_for_a_sync_endpoint() {
    clash_on(EndpointType::Sync, SERVICE, "v1", "Service").await;
}

#[tokio::test]
async fn pruning_leaves_a_service_ferry_does_not_own() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = super::super::fixtures::context(&nats.connection);
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    server
        .expect(Expected::get(SERVICE))
        .await
        .ok(&foreign("v1", "Service"));
    // No DELETE: the status comes next.
    serve_status_and_event(&mut server, pending_status()).await;
    finish(&mut server, reconcile).await.expect("reconciled");
}

#[tokio::test]
async fn pruning_deletes_the_endpoints_own_service_only_by_its_uid() {
    let (nats, _queue) = start_nats().await;
    let (ctx, mut server) = super::super::fixtures::context(&nats.connection);
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    serve_deployment_apply(&mut server, &ctx, &endpoint, None).await;
    let mut ours = foreign("v1", "Service");
    ours["metadata"]["uid"] = json!("uid-service");
    ours["metadata"]["ownerReferences"] = json!([{"apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelEndpoint", "name": "demo", "uid": "uid-demo", "controller": true}]);
    server.expect(Expected::get(SERVICE)).await.ok(&ours);
    let by_uid =
        json!({"preconditions": {"uid": "uid-service"}, "propagationPolicy": "Background"});
    let delete = server
        .expect(Expected::new(Method::DELETE, SERVICE, by_uid))
        .await;
    delete.ok(&ours);
    serve_status_and_event(&mut server, pending_status()).await;
    finish(&mut server, reconcile).await.expect("reconciled");
}

#[tokio::test]
async fn a_secret_without_the_opt_in_label_is_refused_unread_and_nothing_is_published() {
    let (nats, queue) = start_nats().await;
    let (ctx, mut server) = super::super::fixtures::context(&nats.connection);
    let mut endpoint = finalized(endpoint());
    endpoint.spec.callbacks = Some(CallbackPolicySpec {
        signing_secret: Some(SecretKeySelector {
            name: "hooks".into(),
            key: None,
        }),
        ..Default::default()
    });
    let reconcile = start_reconcile(endpoint.clone(), &ctx);
    serve_bundle(&mut server).await;
    // The metadata read; a Secret of another purpose, labelled otherwise.
    let check = server.expect(Expected::get(SECRET)).await;
    check.ok(&json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hooks", "namespace": "ml", "labels": {"ferry.dev/callback-credentials": "false"}}}));
    // No second read of its data, no Deployment: the status comes next.
    let refused = "Secret hooks is not labelled ferry.dev/callback-credentials=\"true\"; ferry \
        uses only Secrets that opt in as callback credentials";
    serve_status_and_event(&mut server, blocked_status("SecretNotOptedIn", refused)).await;
    finish(&mut server, reconcile)
        .await
        .expect("a refusal is not an error");
    assert_eq!(
        queue
            .dispatcher()
            .callback_policy(&endpoint.endpoint_id())
            .await
            .expect("readable"),
        None,
        "no policy (no credentials) reaches the dispatcher"
    );
}
