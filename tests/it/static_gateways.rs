//! Gateways serving fixed manifests (no cluster), several at once over one nats-server, with
//! standalone workers: they learn the workers from the workers' announcements on NATS, so
//! each reports the same status and creation time, and routes sync requests to the workers.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn sync_endpoint_yaml(name: &str, bundle: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: {name}\nspec:\n  bundle: {bundle}\n  endpointType: sync\n  minWorkers: 1\n  labels: {{team: t, product: p}}\n"
    )
}

/// The endpoint named `name` as `gateway` lists it.
async fn listed(gateway: &Dev, name: &str) -> Value {
    let (status, list) = gateway.get("/v1/model-endpoints").await;
    assert_eq!(status, 200, "{list}");
    list["model_endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} listed: {list}"))
}

/// (status, available workers) of the endpoint as `gateway` reports it.
async fn availability(gateway: &Dev, name: &str) -> (String, i64) {
    let endpoint = listed(gateway, name).await;
    (
        endpoint["status"].as_str().unwrap_or_default().to_owned(),
        endpoint["deployment_state"]["available_workers"]
            .as_i64()
            .unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_of_fixed_manifests_share_workers_status_and_creation_time_and_route_sync_requests()
 {
    let nats = Nats::start().await;
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "times-ten.yaml",
        &python_bundle_yaml("times-ten", "return 200, args['x'] * 10"),
    );
    manifests.add("served.yaml", &sync_endpoint_yaml("served", "times-ten"));
    let first = Dev::static_gateway(manifests.path(), &nats.url).await;
    let second = Dev::static_gateway(manifests.path(), &nats.url).await;

    // No worker yet: not ready, on both, with one creation time.
    let (a, b) = (
        listed(&first, "served").await,
        listed(&second, "served").await,
    );
    assert_eq!(a["created_at"], b["created_at"], "{a}\n{b}");
    assert!(a["created_at"].is_string(), "{a}");
    assert_eq!(
        availability(&first, "served").await,
        ("UPDATE_IN_PROGRESS".into(), 0)
    );
    assert!(a["status_reason"].is_string(), "says why: {a}");
    let endpoint = a["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sync-tasks?model_endpoint_id={endpoint}");

    let model = ModelProcess::start("return 200, args['x'] * 10").await;
    let token = serving_token(&endpoint).await;
    let serve_listen = format!("127.0.0.1:{}", free_port());
    let mut worker = Process::forwarder(
        &nats.url,
        &endpoint,
        &model.url,
        &[
            ("FERRY_SERVE_LISTEN", &serve_listen),
            ("FERRY_SERVING_TOKEN", &token),
        ],
    );
    for gateway in [&first, &second] {
        eventually("the worker announced and ready", WAIT, || async {
            (availability(gateway, "served").await == ("READY".into(), 1)).then_some(())
        })
        .await;
        let (status, answer) = gateway.post(&path, &json!({"args": {"x": 4}})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"], json!({"result": 40}));
    }

    // A restarted gateway reports the same creation time.
    let created = a["created_at"].clone();
    drop(first);
    let restarted = Dev::static_gateway(manifests.path(), &nats.url).await;
    assert_eq!(listed(&restarted, "served").await["created_at"], created);

    // A stopped worker is no longer counted by either gateway.
    worker.signal("-TERM");
    worker.wait_exit(WAIT).await;
    for gateway in [&restarted, &second] {
        eventually("the worker gone", WAIT, || async {
            (availability(gateway, "served").await.1 == 0).then_some(())
        })
        .await;
    }
}
