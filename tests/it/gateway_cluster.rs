//! The gateway in cluster mode, over HTTP against the stand-in API server and a real
//! nats-server: the Launch API's creates become ModelBundle and ModelEndpoint resources (and a
//! Secret for callback credentials), and the resources it watches are what it lists.
//! A smoke test of the watch and apply paths, not proof of a real API server's semantics.

use std::time::Duration;

use crate::support::kube::KubeApiServer;
use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "team-a";
const TEAM_A_KEY: &str = "team-a-key-0123456789abcdef";

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).basic_auth(TEAM_A_KEY, Some(""));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_creates_become_resources_and_watched_resources_are_listed() {
    let nats = Nats::start().await;
    let api = KubeApiServer::start(&[]).await;
    let kubeconfig = api.kubeconfig();
    let listen = format!("127.0.0.1:{}", free_port());
    let _gateway = Process::spawn(
        &["gateway"],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("FERRY_NATS_URL", nats.url.as_str()),
            ("FERRY_LISTEN", listen.as_str()),
            ("FERRY_API_KEYS", &format!("{TEAM_A_KEY}=team-a")),
            // A fixed answer: no DNS lookup leaves the machine, and no worker ever runs the
            // task, so nothing is sent there.
            ("FERRY_CALLBACK_RESOLVE", "hooks.example.com=203.0.113.10"),
        ],
    );
    let base = format!("http://{listen}");
    let http = http_client();
    eventually("the gateway has listed the cluster", WAIT, || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let bundle = json!({"name": "test-bundle", "schema_location": "none",
        "flavor": {"flavor": "runnable_image", "repository": "python", "tag": "3.12-slim",
            "command": ["python3", "-m", "model"], "protocol": "http"}});
    let (status, created) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v2/model-bundles"),
        Some(bundle),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let stored = api
        .get(&format!(
            "/apis/ferry.dev/v1alpha1/namespaces/{NAMESPACE}/modelbundles/test-bundle"
        ))
        .await;
    assert_eq!(
        stored.expect("a ModelBundle")["spec"]["image"],
        "python:3.12-slim"
    );

    let endpoint = json!({"name": "demo", "model_bundle_id": created["model_bundle_id"], "endpoint_type": "async",
        "cpus": 1, "memory": "1Gi", "storage": "1Gi", "gpus": 0, "min_workers": 0, "max_workers": 2, "per_worker": 5,
        "labels": {"team": "team-a", "product": "demo"}, "post_inference_hooks": ["callback"],
        "default_callback_url": "https://hooks.example.com/ferry",
        "default_callback_auth": {"kind": "basic", "username": "ferry", "password": "s3cret"}});
    let (status, answer) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/model-endpoints"),
        Some(endpoint),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let stored = api
        .get(&format!(
            "/apis/ferry.dev/v1alpha1/namespaces/{NAMESPACE}/modelendpoints/demo"
        ))
        .await
        .expect("a ModelEndpoint");
    assert_eq!(stored["spec"]["bundle"], "test-bundle");
    assert_eq!(
        stored["spec"]["defaultCallbackAuth"],
        json!({"kind": "basic", "secretName": "demo-callback-auth"})
    );
    assert!(
        !stored.to_string().contains("s3cret"),
        "no credentials in the spec"
    );
    let secret = api
        .get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/secrets/demo-callback-auth"
        ))
        .await
        .expect("a Secret");
    assert_eq!(secret["data"]["password"], "czNjcmV0"); // s3cret
    assert_eq!(
        secret["metadata"]["labels"]["ferry.dev/callback-credentials"], "true",
        "the Secret opts in as callback credentials"
    );

    // The client's next call finds it at once, and a task can be queued right away.
    let (_, listing) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/model-endpoints?name=demo"),
        None,
    )
    .await;
    let id = listing["model_endpoints"][0]["id"]
        .as_str()
        .expect("listed")
        .to_owned();
    let (status, task) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/async-tasks?model_endpoint_id={id}"),
        Some(json!({"args": {}})),
    )
    .await;
    assert_eq!(status, 200, "{task}");

    // Objects created by other means (kubectl, GitOps) are watched and listed too.
    let other = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint",
        "metadata": {"name": "from-gitops", "namespace": NAMESPACE},
        "spec": {"bundle": "test-bundle", "labels": {"team": "team-a", "product": "demo"}}});
    api.create(
        &format!("/apis/ferry.dev/v1alpha1/namespaces/{NAMESPACE}/modelendpoints"),
        &other,
    )
    .await;
    eventually("the watched endpoint is listed", WAIT, || async {
        let (_, listing) = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/model-endpoints?name=from-gitops"),
            None,
        )
        .await;
        (listing["model_endpoints"].as_array()?.len() == 1).then_some(())
    })
    .await;

    // A team's own Secret under the name the gateway would give its credentials is neither
    // overwritten nor used: the create is refused and nothing is written.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "victim-callback-auth", "namespace": NAMESPACE},
        "data": {"password": "b3JpZ2luYWw="}});
    api.create(&format!("/api/v1/namespaces/{NAMESPACE}/secrets"), &theirs)
        .await;
    let attack = json!({"name": "victim", "model_bundle_id": created["model_bundle_id"], "endpoint_type": "async",
        "cpus": 1, "memory": "1Gi", "storage": "1Gi", "gpus": 0, "min_workers": 0, "max_workers": 1, "per_worker": 5,
        "labels": {"team": "team-a", "product": "demo"}, "post_inference_hooks": ["callback"],
        "default_callback_url": "https://hooks.example.com/ferry",
        "default_callback_auth": {"kind": "basic", "username": "x", "password": "overwritten"}});
    let (status, answer) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/model-endpoints"),
        Some(attack),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not written by ferry")),
        "{answer}"
    );
    let kept = api
        .get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/secrets/victim-callback-auth"
        ))
        .await
        .expect("the Secret stays");
    assert_eq!(kept["data"], json!({"password": "b3JpZ2luYWw="}));
    assert!(kept["metadata"].get("labels").is_none());
    assert!(
        api.get(&format!(
            "/apis/ferry.dev/v1alpha1/namespaces/{NAMESPACE}/modelendpoints/victim"
        ))
        .await
        .is_none(),
        "no endpoint was created"
    );
}
