//! Smoke test of `ferry operator` over HTTP: the real binary against a stand-in API server
//! (kmock plus a shim) and a real nats-server, all on 127.0.0.1. It exercises the watch →
//! reconcile → apply → status loop; it is not proof of a real API server's semantics.

use std::time::Duration;

use crate::support::kube::{KubeApiServer, manifest};
use crate::support::*;
use async_nats::jetstream;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);
const ENDPOINTS: &str = "/apis/ferry.dev/v1alpha1/namespaces/default/modelendpoints";
const BUNDLES: &str = "/apis/ferry.dev/v1alpha1/namespaces/default/modelbundles";
const ENDPOINT: &str =
    "/apis/ferry.dev/v1alpha1/namespaces/default/modelendpoints/demo-endpoint-callback";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/demo-endpoint-callback";

/// `ferry operator` against the stand-in API server and `nats`, its admin server on `admin`.
fn spawn_operator(kubeconfig: &str, nats: &Nats, admin: &str, extra: &[(&str, &str)]) -> Process {
    let mut envs = vec![
        ("KUBECONFIG", kubeconfig),
        ("FERRY_NATS_URL", nats.url.as_str()),
        ("FERRY_FORWARDER_IMAGE", "registry.local/ferry:smoke"),
        ("FERRY_ADMIN_LISTEN", admin),
    ];
    envs.extend_from_slice(extra);
    Process::spawn(&["operator"], &envs)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|var| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&var["name"]), text(&var["value"]))
        })
        .collect()
}

/// Runs the real binary on a container's exact command and env with `--check-config`: the
/// sidecar the operator renders must start on what it is given.
async fn check_config(container: &Value, env: &[(String, String)]) {
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|part| part.as_str().expect("string"))
        .collect();
    assert_eq!(command[0], "ferry");
    let output = ferry_command()
        .args(&command[1..])
        .arg("--check-config")
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .await
        .expect("ferry runs");
    assert!(
        output.status.success(),
        "ferry {command:?} --check-config with {env:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn stream_exists(js: &jetstream::Context, name: &str) -> bool {
    js.get_stream(name).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_examples_yields_workers_a_stream_and_status() {
    let nats = Nats::start().await;
    let api = KubeApiServer::start(&[]).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let kubeconfig = api.kubeconfig();
    let _operator = spawn_operator(
        &kubeconfig,
        &nats,
        &admin,
        &[("FERRY_LEASE_IDENTITY", "smoke-operator")],
    );
    let http = http_client();
    eventually("the operator holds the Lease", TIMEOUT, || async {
        let lease = api
            .get("/apis/coordination.k8s.io/v1/namespaces/default/leases/ferry-operator")
            .await?;
        (lease["spec"]["holderIdentity"] == "smoke-operator").then_some(())
    })
    .await;

    for document in manifest(&examples_dir().join("test-bundle.yaml")) {
        api.create(BUNDLES, &document).await;
    }
    let endpoint = manifest(&examples_dir().join("demo-endpoint-callback.yaml")).remove(0);
    let created = api.create(ENDPOINTS, &endpoint).await;
    let uid = created["metadata"]["uid"].clone();

    let deployment = eventually("the worker Deployment", TIMEOUT, || api.get(DEPLOYMENT)).await;
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["uid"], uid);
    assert_eq!(deployment["metadata"]["labels"]["team"], "MY_TEAM");
    // The count belongs to the autoscaler, through the scale subresource: minWorkers here.
    let deployment = eventually("the autoscaler sets the count", TIMEOUT, || async {
        let deployment = api.get(DEPLOYMENT).await?;
        (deployment["spec"]["replicas"] == 1).then_some(deployment)
    })
    .await;
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "python:3.12-slim");
    assert_eq!(
        pod["containers"][0]["resources"]["requests"]["memory"],
        "128Mi"
    );
    assert_eq!(pod["containers"][1]["image"], "registry.local/ferry:smoke");
    let forwarder_env = env_of(&pod["containers"][1]);
    assert!(forwarder_env.contains(&("FERRY_NATS_URL".into(), nats.url.clone())));
    assert!(forwarder_env.contains(&("FERRY_MODEL_URL".into(), "http://127.0.0.1:5005".into())));
    check_config(&pod["containers"][1], &forwarder_env).await;

    let status = eventually("a status with a ready queue", TIMEOUT, || async {
        let endpoint = api.get(ENDPOINT).await?;
        let status = endpoint["status"].clone();
        (condition(&status, "QueueReady")?["status"] == "True").then_some(status)
    })
    .await;
    assert_eq!(status["state"], "UPDATE_PENDING");
    assert_eq!(status["observedGeneration"], 1);
    let endpoint_id = status["endpointId"]
        .as_str()
        .expect("endpointId")
        .to_owned();
    assert!(endpoint_id.starts_with("end_"));
    let stream = format!("ferry-tasks-{endpoint_id}");
    let js = jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
    assert!(stream_exists(&js, &stream).await, "stream {stream} exists");

    // Play the Deployment controller: the owned Deployment's status change reaches the endpoint.
    api.merge_patch(
        &format!("{DEPLOYMENT}/status"),
        &json!({"status": {"observedGeneration": deployment["metadata"]["generation"], "replicas": 1,
                "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
    )
    .await;
    let status = eventually("the endpoint becomes READY", TIMEOUT, || async {
        let status = api.get(ENDPOINT).await?["status"].clone();
        (status["state"] == "READY").then_some(status)
    })
    .await;
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(
        condition(&status, "Ready").expect("Ready")["status"],
        "True"
    );
    assert_eq!(status["queueDepth"], 0);
    // The autoscaler's status fields (its own field manager) stay beside the operator's.
    let status = eventually("the autoscaler's reason in status", TIMEOUT, || async {
        let status = api.get(ENDPOINT).await?["status"].clone();
        (status["scaleReason"] == "AtMinimum").then_some(status)
    })
    .await;
    assert_eq!(status["state"], "READY", "{status}");

    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ferry_controller_reconciles_total"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_controller_leader 1"), "{metrics}");
    promtool_check(&metrics);
    // The controller's series that the chart's alerts and dashboard read (metrics.rs checks
    // the rest against `ferry dev`).
    let scraped =
        monitoring::assert_monitoring_reads_exported(&metrics, monitoring::is_controller_series);
    assert!(scraped.len() >= 3, "{scraped:?}");
    let desired = r#"ferry_autoscaler_desired_workers{endpoint="default/demo-endpoint-callback",endpoint_id="end_"#;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with(desired) && line.ends_with("} 1")),
        "{metrics}"
    );
    let ready = http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert!(ready.status().is_success());

    api.delete(ENDPOINT).await;
    eventually("the endpoint is gone", TIMEOUT, || async {
        api.get(ENDPOINT).await.is_none().then_some(())
    })
    .await;
    assert!(
        !stream_exists(&js, &stream).await,
        "stream {stream} deleted"
    );
    assert!(
        api.get(DEPLOYMENT).await.is_none(),
        "the Deployment is collected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_without_its_bundle_reports_it_and_heals() {
    let nats = Nats::start().await;
    let api = KubeApiServer::start(&[]).await;
    let kubeconfig = api.kubeconfig();
    let admin = format!("127.0.0.1:{}", free_port());
    let _operator = spawn_operator(&kubeconfig, &nats, &admin, &[]);
    let endpoint = manifest(&examples_dir().join("demo-endpoint-callback.yaml")).remove(0);
    api.create(ENDPOINTS, &endpoint).await;
    let status = eventually("BundleNotFound", TIMEOUT, || async {
        let status = api.get(ENDPOINT).await?["status"].clone();
        (condition(&status, "Ready")?["reason"] == "BundleNotFound").then_some(status)
    })
    .await;
    assert_eq!(status["state"], "UPDATE_FAILED");
    assert!(api.get(DEPLOYMENT).await.is_none());

    for document in manifest(&examples_dir().join("test-bundle.yaml")) {
        api.create(BUNDLES, &document).await;
    }
    eventually(
        "the bundle's arrival heals the endpoint",
        TIMEOUT,
        || async {
            let status = api.get(ENDPOINT).await?["status"].clone();
            (status["state"] == "UPDATE_PENDING").then_some(())
        },
    )
    .await;
    assert!(api.get(DEPLOYMENT).await.is_some());
}

/// The operator replicas' Lease.
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/ferry-operator";

async fn lease_holder(api: &KubeApiServer) -> Option<String> {
    let lease = api.get(LEASE).await?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

async fn lease_renewed_at(api: &KubeApiServer) -> Option<jiff::Timestamp> {
    let lease = api.get(LEASE).await?;
    lease["spec"]["renewTime"].as_str()?.parse().ok()
}

async fn metrics_of(admin: &str) -> Option<String> {
    let response = http_client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_waits_and_takes_over_when_the_leader_dies() {
    let nats = Nats::start().await;
    let api = KubeApiServer::start(&[]).await;
    let kubeconfig = api.kubeconfig();
    let replica = |identity: &'static str, admin: &str| {
        spawn_operator(
            &kubeconfig,
            &nats,
            admin,
            &[
                ("FERRY_LEASE_IDENTITY", identity),
                ("FERRY_LEASE_DURATION_SECONDS", "3"),
            ],
        )
    };
    let (first_admin, second_admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let leader = replica("first", &first_admin);
    eventually("the first replica leads", TIMEOUT, || async {
        (lease_holder(&api).await? == "first").then_some(())
    })
    .await;
    let _standby = replica("second", &second_admin);
    eventually("the standby serves its probes", TIMEOUT, || async {
        metrics_of(&second_admin)
            .await?
            .contains("ferry_controller_leader 0")
            .then_some(())
    })
    .await;
    // The leader renews past a whole lease duration from here: a standby that did not wait
    // for expiry would have taken the Lease by then.
    let watched_from = lease_renewed_at(&api).await.expect("a renewed Lease");
    eventually("renewals past a lease duration", TIMEOUT, || async {
        assert_eq!(
            lease_holder(&api).await.as_deref(),
            Some("first"),
            "a renewed Lease stays"
        );
        let renewed = lease_renewed_at(&api).await?;
        (renewed.duration_since(watched_from) > jiff::SignedDuration::from_secs(3)).then_some(())
    })
    .await;
    let standby = metrics_of(&second_admin).await.expect("standby metrics");
    assert!(
        standby.contains("ferry_controller_reconciles_total 0"),
        "{standby}"
    );

    leader.signal("-KILL");
    eventually(
        "the standby takes over the expired Lease",
        TIMEOUT,
        || async { (lease_holder(&api).await? == "second").then_some(()) },
    )
    .await;
    for document in manifest(&examples_dir().join("test-bundle.yaml")) {
        api.create(BUNDLES, &document).await;
    }
    let endpoint = manifest(&examples_dir().join("demo-endpoint-callback.yaml")).remove(0);
    api.create(ENDPOINTS, &endpoint).await;
    eventually("the new leader reconciles", TIMEOUT, || api.get(DEPLOYMENT)).await;
    let leader = metrics_of(&second_admin).await.expect("leader metrics");
    assert!(leader.contains("ferry_controller_leader 1"), "{leader}");
}

/// Runs `ferry nats-auth --out dir`.
async fn nats_auth(dir: &std::path::Path) {
    let output = ferry_command()
        .args(["nats-auth", "--out"])
        .arg(dir)
        .output()
        .await
        .expect("ferry runs");
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pods_get_forwarder_credentials_a_server_with_nats_auth_accepts() {
    let auth = tempfile::tempdir().expect("temp dir");
    nats_auth(auth.path()).await;
    let file = |name: &str| auth.path().join(name).display().to_string();
    let nats = Nats::start_with(&["--config", &file("server.conf")]).await;
    let api = KubeApiServer::start(&[]).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let (creds, account, seed) = (
        file("operator.creds"),
        file("account.pub"),
        file("account-signing.nk"),
    );
    let _operator = spawn_operator(
        &api.kubeconfig(),
        &nats,
        &admin,
        &[
            ("FERRY_NATS_CREDS_FILE", &creds),
            ("FERRY_NATS_ACCOUNT_FILE", &account),
            ("FERRY_NATS_ACCOUNT_SIGNING_SEED_FILE", &seed),
        ],
    );
    for document in manifest(&examples_dir().join("test-bundle.yaml")) {
        api.create(BUNDLES, &document).await;
    }
    let endpoint = manifest(&examples_dir().join("demo-endpoint-callback.yaml")).remove(0);
    api.create(ENDPOINTS, &endpoint).await;

    let secret_path = "/api/v1/namespaces/default/secrets/demo-endpoint-callback-worker";
    let secret = eventually(
        "the worker Secret with NATS credentials",
        TIMEOUT,
        || async {
            let secret = api.get(secret_path).await?;
            secret["data"]["nats.creds"].is_string().then_some(secret)
        },
    )
    .await;
    let expires = &secret["metadata"]["annotations"]["ferry.dev/nats-creds-expires"];
    assert!(expires.is_string(), "{secret}");
    let deployment = eventually("the worker Deployment", TIMEOUT, || api.get(DEPLOYMENT)).await;
    let pod = &deployment["spec"]["template"]["spec"];
    let forwarder = &pod["containers"][1];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "demo-endpoint-callback-worker"
    );
    assert_eq!(pod["volumes"][0]["secret"]["items"][0]["key"], "nats.creds");
    assert!(
        pod["containers"][0].get("volumeMounts").is_none(),
        "the model gets none"
    );
    let mount = forwarder["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("mount");

    // The forwarder as rendered, with the Secret's key where the kubelet would put it: it
    // connects to the server as its endpoint's own user.
    use base64::Engine;
    let key = secret["data"]["nats.creds"].as_str().expect("key");
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64");
    let local = tempfile::tempdir().expect("temp dir");
    let local_creds = local.path().join("nats.creds");
    std::fs::write(&local_creds, key).expect("write");
    let env: Vec<(String, String)> = env_of(forwarder)
        .into_iter()
        .map(|(name, value)| match name.as_str() {
            "FERRY_NATS_CREDS_FILE" => {
                assert_eq!(value, format!("{mount}/nats.creds"));
                (name, local_creds.display().to_string())
            }
            _ => (name, value),
        })
        .collect();
    assert!(env.iter().any(|(name, _)| name == "FERRY_NATS_CREDS_FILE"));
    check_config(forwarder, &env).await;
}
