//! Contract tests: the Launch client's call sequences replayed over HTTP against `ferry dev`,
//! asserting every field the client reads.

mod artifacts;

use std::time::Duration;

use crate::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// What `create_model_endpoint` sends for the callbacks example, aimed at `callback_url`.
fn seed_create_body(bundle_id: &str, callback_url: &str) -> Value {
    json!({"endpoint_type":"async","metadata":{},"memory":"8Gi","cpus":1,"max_workers":1,"model_bundle_id":bundle_id,
        "min_workers":1,"gpus":0,"name":"demo-endpoint-callback","per_worker":10,"storage":"16Gi",
        "labels":{"team":"MY_TEAM","product":"MY_PRODUCT"},"post_inference_hooks":["callback"],"high_priority":false,
        "default_callback_url":callback_url})
}

async fn dev_with_bundles(extra: &[(&str, String)]) -> (Manifests, Dev) {
    // Bundles only: endpoints are created through the API, as a new user does.
    let manifests = Manifests::with_example_bundle();
    for (file, yaml) in extra {
        manifests.add(file, yaml);
    }
    let dev = Dev::start(manifests.path(), None).await;
    (manifests, dev)
}

/// `ferry dev` with a Python model bundle `name` (answering with `handler_body`) and an async
/// endpoint of the same name without callbacks, created through the API; its id once ready.
async fn dev_with_endpoint(name: &str, handler_body: &str) -> (Manifests, Dev, String) {
    let yaml = python_bundle_yaml(name, handler_body);
    let (manifests, dev) = dev_with_bundles(&[(&format!("{name}.yaml"), yaml)]).await;
    let (_, bundle) = dev
        .get(&format!("/v1/model-bundles/latest?model_name={name}"))
        .await;
    let mut body = seed_create_body(bundle["id"].as_str().unwrap(), "http://127.0.0.1:9/");
    body["name"] = json!(name);
    body["post_inference_hooks"] = json!([]);
    body.as_object_mut().unwrap().remove("default_callback_url");
    dev.post("/v1/model-endpoints", &body).await;
    let endpoint = dev.ready_endpoint(name).await;
    (manifests, dev, endpoint)
}

async fn listed(dev: &Dev, name: &str) -> Vec<Value> {
    let (status, listing) = dev.get(&format!("/v1/model-endpoints?name={name}")).await;
    assert_eq!(status, StatusCode::OK);
    listing["model_endpoints"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_path_of_the_seed_runs_unchanged() {
    let receiver = Receiver::start().await;
    let (_m, dev) = dev_with_bundles(&[]).await;

    // 1. The endpoint does not exist yet.
    assert!(listed(&dev, "demo-endpoint-callback").await.is_empty());
    // 2. The bundle exists.
    let (status, bundle) = dev
        .get("/v1/model-bundles/latest?model_name=test-bundle")
        .await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "id",
        "name",
        "location",
        "env_params",
        "packaging_type",
        "created_at",
    ] {
        assert!(!bundle[field].is_null(), "bundle.{field}: {bundle}");
    }
    let bundle_id = bundle["id"].as_str().unwrap();
    // 3. Create.
    let (status, created) = dev
        .post(
            "/v1/model-endpoints",
            &seed_create_body(bundle_id, &receiver.url("/default")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert!(created["endpoint_creation_task_id"].is_string());
    let (status, again) = dev
        .post(
            "/v1/model-endpoints",
            &seed_create_body(bundle_id, &receiver.url("/default")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an existing name: {again}");

    // 4. Predict, as the client does: list by name, then submit.
    let endpoint = dev.ready_endpoint("demo-endpoint-callback").await;
    let view = &listed(&dev, "demo-endpoint-callback").await[0];
    assert_eq!(view["endpoint_type"], "async");
    assert_eq!(view["status"], "READY");
    assert_eq!(view["bundle_name"], "test-bundle");
    assert_eq!(view["post_inference_hooks"], json!(["callback"]));
    assert_eq!(view["deployment_state"]["min_workers"], 1);
    assert_eq!(view["resource_state"]["memory"], "8Gi");
    let first = dev
        .submit(
            &endpoint,
            json!({"args": {"x": 2, "y": "hello"}, "return_pickled": false}),
        )
        .await;
    let custom = json!({"args": {"x": 3, "y": "hello"}, "callback_url": receiver.url("/custom"), "return_pickled": false});
    let second = dev.submit(&endpoint, custom).await;

    // future.get(): poll until SUCCESS and read result["result"].
    let done = dev.finished_task(&first, WAIT).await;
    assert_eq!(
        (done["status"].clone(), done["result"]["result"].clone()),
        (json!("SUCCESS"), json!(7))
    );
    let done = dev.finished_task(&second, WAIT).await;
    assert_eq!(done["result"]["result"], 8);
    let callbacks = receiver.wait_for(2, WAIT).await;
    let at = |path: &str| {
        callbacks
            .iter()
            .find(|c| c.path == path)
            .unwrap()
            .body
            .clone()
    };
    assert_eq!(
        at("/default"),
        json!({"task_id": first, "result": 7, "status": "SUCCESS"})
    );
    assert_eq!(
        at("/custom"),
        json!({"task_id": second, "result": 8, "status": "SUCCESS"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_path_keeps_what_it_omits_and_rolls_the_workers() {
    let (_m, dev) = dev_with_bundles(&[]).await;
    let (_, bundle) = dev
        .get("/v1/model-bundles/latest?model_name=test-bundle")
        .await;
    let bundle_id = bundle["id"].as_str().unwrap().to_owned();
    dev.post(
        "/v1/model-endpoints",
        &seed_create_body(&bundle_id, "http://127.0.0.1:9/cb"),
    )
    .await;
    let endpoint = dev.ready_endpoint("demo-endpoint-callback").await;

    // update_if_exists=True: only these fields, nulls for what the caller left out.
    let update = json!({"model_bundle_id": bundle_id, "cpus": 2, "gpus": null, "memory": null, "storage": null,
        "min_workers": 2, "max_workers": 2, "per_worker": null, "high_priority": false,
        "default_callback_url": "http://127.0.0.1:9/new", "labels": {"owner": "ml"}});
    let response = dev
        .http
        .put(format!("{}/v1/model-endpoints/{endpoint}", dev.base))
        .basic_auth(API_KEY, Some(""))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.json::<Value>().await.unwrap()["endpoint_creation_task_id"].is_string());

    let view = eventually("two workers after the update", WAIT, || async {
        let view = listed(&dev, "demo-endpoint-callback").await.remove(0);
        (view["deployment_state"]["available_workers"] == 2 && view["status"] == "READY")
            .then_some(view)
    })
    .await;
    assert_eq!(view["resource_state"]["cpus"], "2");
    assert_eq!(view["resource_state"]["memory"], "8Gi", "absent keeps");
    assert_eq!(view["deployment_state"]["per_worker"], 10, "null keeps");
    assert_eq!(
        view["labels"],
        json!({"team": "MY_TEAM", "product": "MY_PRODUCT", "owner": "ml"}),
        "labels merge"
    );
    assert_eq!(
        view["post_inference_hooks"],
        json!(["callback"]),
        "hooks kept"
    );
    assert_eq!(view["default_callback_url"], "http://127.0.0.1:9/new");
    let task = dev
        .submit(&endpoint, json!({"args": {"x": 1, "y": "ab"}}))
        .await;
    assert_eq!(dev.finished_task(&task, WAIT).await["result"]["result"], 3);

    let bad = json!({"min_workers": 5, "max_workers": 2});
    let response = dev
        .http
        .put(format!("{}/v1/model-endpoints/{endpoint}", dev.base))
        .basic_auth(API_KEY, Some(""))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("min_workers")
    );

    // edit_model_endpoint(post_inference_hooks=[]): the client sends no callback URL at all.
    let response = dev
        .http
        .put(format!("{}/v1/model-endpoints/{endpoint}", dev.base))
        .basic_auth(API_KEY, Some(""))
        .json(&json!({"post_inference_hooks": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let view = listed(&dev, "demo-endpoint-callback").await.remove(0);
    assert_eq!(view["post_inference_hooks"], json!([]));
    assert_eq!(view["default_callback_url"], Value::Null);

    let response = dev
        .http
        .delete(format!("{}/v1/model-endpoints/{endpoint}", dev.base))
        .basic_auth(API_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"deleted": true})
    );
    assert!(listed(&dev, "demo-endpoint-callback").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bundle_and_bad_requests_get_clear_answers() {
    let (_m, dev) = dev_with_bundles(&[]).await;
    let (status, body) = dev.get("/v1/model-bundles/latest?model_name=absent").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("absent"));
    let (status, _) = dev
        .post(
            "/v1/model-endpoints",
            &seed_create_body("bun_00000000000000000000", "http://127.0.0.1:9/"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, bundle) = dev
        .get("/v1/model-bundles/latest?model_name=test-bundle")
        .await;
    let mut bad = seed_create_body(bundle["id"].as_str().unwrap(), "http://127.0.0.1:9/");
    bad["post_inference_hooks"] = json!(["telepathy"]);
    let (status, body) = dev.post("/v1/model-endpoints", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    bad["post_inference_hooks"] = json!(["callback"]);
    bad["labels"] = json!({"team": "t"});
    let (status, body) = dev.post("/v1/model-endpoints", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = dev.post("/v1/model-endpoints", &json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_dev_serves_bundles_and_endpoints_created_through_the_api() {
    let empty = tempfile::tempdir().unwrap();
    let dev = Dev::start(empty.path(), None).await;
    let (status, listing) = dev.get("/v1/model-endpoints").await;
    assert_eq!(
        (status, listing),
        (StatusCode::OK, json!({"model_endpoints": []}))
    );
    let model = python_model_source("return 200, {'doubled': args['n'] * 2}");
    let create = json!({"name": "doubler", "schema_location": "none", "metadata": {},
        "flavor": {"flavor": "runnable_image", "repository": "python", "tag": "3.12-slim",
            "command": ["python3", "-c", model], "protocol": "http", "predict_route": "/predict", "healthcheck_route": "/readyz"}});
    let (status, created) = dev.post("/v2/model-bundles", &create).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let bundle_id = created["model_bundle_id"].as_str().unwrap();
    let (_, v2) = dev.get(&format!("/v2/model-bundles/{bundle_id}")).await;
    assert_eq!(v2["flavor"]["repository"], "python");
    let (_, latest) = dev.get("/v2/model-bundles/latest?model_name=doubler").await;
    assert_eq!(latest["id"], bundle_id);

    let mut body = seed_create_body(bundle_id, "http://127.0.0.1:9/");
    body["name"] = json!("doubler");
    body["post_inference_hooks"] = json!([]);
    body.as_object_mut().unwrap().remove("default_callback_url");
    let (status, created) = dev.post("/v1/model-endpoints", &body).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let endpoint = dev.ready_endpoint("doubler").await;
    let task = dev.submit(&endpoint, json!({"args": {"n": 21}})).await;
    assert_eq!(
        dev.finished_task(&task, WAIT).await["result"]["result"],
        json!({"doubled": 42})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_a_failed_task_reports_failure() {
    let (_m, dev, endpoint) =
        dev_with_endpoint("failing", "return 500, {'detail': 'model crashed'}").await;
    let task = dev
        .finished_task(&dev.submit(&endpoint, json!({"args": {}})).await, WAIT)
        .await;
    assert_eq!(task["status"], "FAILURE");
    assert!(
        task["result"].is_string()
            && task["traceback"]
                .as_str()
                .unwrap()
                .contains("model crashed"),
        "{task}"
    );
}

/// A model with a slow predict route and a streaming route that sends an event per word (or
/// fails before its first one, or garbles one).
const STREAMING_MODEL: &str = r#"
import json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def do_POST(self):
        args = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/stream" and args.get("fail"):
            data = b"no words today"
            self.send_response(500); self.send_header("Content-Length", str(len(data)))
            self.end_headers(); self.wfile.write(data)
            return
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for token in args["words"]:
                # "!" stands for an event the model garbles mid-stream.
                event = "not json" if token == "!" else json.dumps({"token": token})
                self.wfile.write(f"data: {event}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
            return
        if args.get("started"):
            open(args["started"], "w").close()
        time.sleep(args.get("sleep", 0))
        data = json.dumps(args["x"] + len(args["y"])).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Model).serve_forever()
"#;

fn streaming_manifests() -> Vec<(&'static str, String)> {
    let script: String = STREAMING_MODEL
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    let bundle = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelBundle\nmetadata:\n  name: streamer\nspec:\n  image: python:3.12-slim\n  streamingPredictRoute: /stream\n  command:\n    - python3\n    - -c\n    - |\n{script}"
    );
    let endpoint = |name: &str, kind: &str, extra: &str| {
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: {name}\nspec:\n  bundle: streamer\n  endpointType: {kind}\n  labels: {{team: t, product: p}}\n{extra}"
        )
    };
    vec![
        ("streamer.yaml", bundle),
        ("sync.yaml", endpoint("sync-endpoint", "sync", "")),
        // Idles at zero workers: its first request wakes it.
        (
            "streaming.yaml",
            endpoint("streaming-endpoint", "streaming", "  minWorkers: 0\n"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_predictions_answer_in_launch_shape_and_refuse_when_saturated() {
    let (_m, dev) = dev_with_bundles(&streaming_manifests()).await;
    let endpoint = dev.ready_endpoint("sync-endpoint").await;
    let path = format!("/v1/sync-tasks?model_endpoint_id={endpoint}");
    let (status, answer) = dev
        .post(
            &path,
            &json!({"args": {"x": 2, "y": "hello"}, "return_pickled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"status": "SUCCESS", "result": {"result": 7}, "traceback": null, "status_code": 200})
    );

    // One worker taking one task at a time: while it works, a second request is refused.
    let started = tempfile::tempdir().unwrap();
    let marker = started.path().join("started");
    let slow = json!({"args": {"x": 1, "y": "", "sleep": 2, "started": marker}});
    let busy = dev.post(&path, &slow);
    let second = async {
        eventually(
            "the first request runs",
            Duration::from_secs(30),
            || async { marker.exists().then_some(()) },
        )
        .await;
        dev.post(&path, &json!({"args": {"x": 1, "y": ""}})).await
    };
    let ((first_status, _), (second_status, second_body)) = tokio::join!(busy, second);
    assert_eq!(first_status, StatusCode::OK);
    assert_eq!(
        second_status,
        StatusCode::TOO_MANY_REQUESTS,
        "{second_body}"
    );

    let (status, body) = dev
        .post(
            &path,
            &json!({"args": {"x": 1, "y": "", "sleep": 3}, "timeout_seconds": 0.5}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_predictions_arrive_as_server_sent_events_and_wake_an_idle_endpoint() {
    let (_m, dev) = dev_with_bundles(&streaming_manifests()).await;
    let endpoint = dev.ready_endpoint("streaming-endpoint").await;
    let (status, events) = stream_events(&dev, &endpoint, json!({"words": ["a", "b", "c"]})).await;
    assert_eq!(status, 200);
    let tokens: Vec<Value> = events
        .iter()
        .map(|event| event["result"]["result"]["token"].clone())
        .collect();
    assert_eq!(tokens, vec![json!("a"), json!("b"), json!("c")]);
    assert!(events.iter().all(|event| event["status"] == "SUCCESS"));

    let path = format!(
        "/v1/streaming-tasks?model_endpoint_id={}",
        dev.endpoint_id("sync-endpoint").await
    );
    let (status, _) = dev.post(&path, &json!({"args": {}})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a sync endpoint does not stream"
    );
}

/// Posts a streaming task and returns the HTTP status and the events' data as JSON.
async fn stream_events(dev: &Dev, endpoint: &str, args: Value) -> (u16, Vec<Value>) {
    let response = dev
        .http
        .post(format!(
            "{}/v1/streaming-tasks?model_endpoint_id={endpoint}",
            dev.base
        ))
        .basic_auth(API_KEY, Some(""))
        .json(&json!({ "args": args }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).unwrap())
        .collect();
    (status, events)
}

/// Launch's client reads each event's `result` as an object or null: a failure carries its
/// reason in `traceback`, whether the model fails before its first event or during the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_failures_are_events_the_client_parses() {
    let (_m, dev) = dev_with_bundles(&streaming_manifests()).await;
    let endpoint = dev.ready_endpoint("streaming-endpoint").await;

    let (status, events) = stream_events(&dev, &endpoint, json!({"fail": true})).await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], "FAILURE");
    assert_eq!(events[0]["result"], Value::Null);
    assert_eq!(events[0]["status_code"], 500);
    let traceback = events[0]["traceback"].as_str().unwrap();
    assert!(traceback.contains("model answered 500"), "{traceback}");
    assert!(traceback.contains("no words today"), "{traceback}");

    let (status, events) = stream_events(&dev, &endpoint, json!({"words": ["a", "!", "c"]})).await;
    assert_eq!(status, 200);
    let statuses: Vec<&str> = events
        .iter()
        .map(|event| event["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["SUCCESS", "FAILURE"],
        "the stream ends at the failure"
    );
    assert_eq!(events[0]["result"]["result"]["token"], "a");
    assert_eq!(events[1]["result"], Value::Null);
    let traceback = events[1]["traceback"].as_str().unwrap();
    assert!(traceback.contains("not JSON"), "{traceback}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_endpoint_with_the_callback_hook_also_calls_back() {
    let receiver = Receiver::start().await;
    let mut files = streaming_manifests();
    let hooked = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: hooked\nspec:\n  bundle: streamer\n  endpointType: sync\n  labels: {{team: t, product: p}}\n  postInferenceHooks: [callback]\n  defaultCallbackUrl: {}\n",
        receiver.url("/sync")
    );
    files.push(("hooked.yaml", hooked));
    let (_m, dev) = dev_with_bundles(&files).await;
    let endpoint = dev.ready_endpoint("hooked").await;
    let (status, answer) = dev
        .post(
            &format!("/v1/sync-tasks?model_endpoint_id={endpoint}"),
            &json!({"args": {"x": 2, "y": "hello"}}),
        )
        .await;
    assert_eq!(
        (status, answer["result"]["result"].clone()),
        (StatusCode::OK, json!(7))
    );
    let callback = receiver.wait_for(1, WAIT).await.remove(0);
    assert_eq!(
        (callback.path.as_str(), callback.body["result"].clone()),
        ("/sync", json!(7))
    );
}

/// The real Launch client against `ferry dev`: the seed snippet on its create path and then its
/// update path, turning callbacks off, an input by URL, a bundle cloned, a failed stream, and a
/// callable and a zip bundle uploaded by a self-hosted client, each served by a new endpoint
/// (the callable's venv gets cloudpickle from PyPI, once). The client comes from a venv named
/// by `FERRY_LAUNCH_CLIENT_PYTHON` (its repository carries no licence, so nothing of it lives
/// here); without one this test says so and checks nothing, while the replayed call sequences
/// above keep covering the same behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_launch_client_runs_the_seed_and_reads_failures() {
    let Some(python) = std::env::var_os("FERRY_LAUNCH_CLIENT_PYTHON") else {
        eprintln!(
            "SKIPPED: set FERRY_LAUNCH_CLIENT_PYTHON to the Python of a venv holding the Launch \
             client (scaleapi/launch-python-client) to run it against ferry dev"
        );
        return;
    };
    let receiver = Receiver::start().await;
    let (_m, dev) = dev_with_bundles(&streaming_manifests()[..1]).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/launch_client/contract.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("FERRY_GATEWAY", &dev.base)
        .env("FERRY_RECEIVER", receiver.url(""))
        .env("LAUNCH_API_KEY", API_KEY)
        .output()
        .await
        .expect("the client's Python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed:\n{stderr}");
    let observed: Value = serde_json::from_slice(&output.stdout).expect("the script's JSON");

    let mut expected_callbacks = Vec::new();
    for run in ["first_run", "second_run"] {
        let run = &observed[run];
        assert_eq!(
            (&run["default"]["result"], &run["custom"]["result"]),
            (&json!(7), &json!(8)),
            "{run}"
        );
        expected_callbacks.push(("/default", run["default"]["task_id"].clone(), 7));
        expected_callbacks.push(("/custom", run["custom"]["task_id"].clone(), 8));
    }
    let removed = &observed["hooks_removed"];
    assert_eq!(removed["post_inference_hooks"], json!([]), "{removed}");
    assert_eq!(removed["default_callback_url"], Value::Null, "{removed}");
    assert_eq!(removed["task"]["result"], 9, "{removed}");

    let by_url = &observed["input_by_url"];
    assert_eq!(
        (&by_url["status"], &by_url["result"]),
        (&json!("SUCCESS"), &json!(7)),
        "{by_url}"
    );
    let clone = &observed["clone"];
    assert_ne!(clone["clone"], clone["original"], "{clone}");
    assert_eq!(clone["image"][0], clone["image"][1], "{clone}");

    let stream = observed["failed_stream"]
        .as_array()
        .expect("a list of responses");
    assert_eq!(stream.len(), 1, "{stream:?}");
    assert_eq!(
        (&stream[0]["status"], &stream[0]["result"]),
        (&json!("FAILURE"), &Value::Null)
    );
    let traceback = stream[0]["traceback"].as_str().unwrap_or_default();
    assert!(traceback.contains("model answered 500"), "{traceback}");

    let callbacks = receiver.wait_for(expected_callbacks.len(), WAIT).await;
    for (path, task_id, result) in expected_callbacks {
        assert!(
            callbacks.iter().any(|c| c.path == path
                && c.body["task_id"] == task_id
                && c.body["result"] == result),
            "no callback {path} {task_id} {result} in {:?}",
            callbacks.iter().map(|c| &c.body).collect::<Vec<_>>()
        );
    }
    let callable = &observed["callable"];
    assert_eq!(
        (&callable["flavor"], &callable["framework"]),
        (&json!("cloudpickle_artifact"), &json!("pytorch")),
        "{callable}"
    );
    assert_eq!(
        (
            &callable["prediction"]["status"],
            &callable["prediction"]["result"]
        ),
        (&json!("SUCCESS"), &json!({"y": 12})),
        "{callable}"
    );
    let zipped = &observed["zip"];
    assert_eq!(zipped["id"][0], zipped["id"][1], "{zipped}");
    assert_eq!(
        (&zipped["flavor"], &zipped["image"]),
        (&json!("zip_artifact"), &json!(["python", "3.11-slim"])),
        "{zipped}"
    );
    assert_eq!(
        (
            &zipped["prediction"]["status"],
            &zipped["prediction"]["result"]
        ),
        (&json!("SUCCESS"), &json!({"y": 9})),
        "{zipped}"
    );

    let silenced = &removed["task"]["task_id"];
    assert!(
        callbacks.iter().all(|c| &c.body["task_id"] != silenced),
        "a callback after the hook was removed"
    );
}

/// A server on 127.0.0.1 answering every request with `status` and `body`; its base URL.
async fn serve_input(status: &'static str, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_by_url_reach_the_model_in_place_of_args() {
    let (_m, dev, endpoint) =
        dev_with_endpoint("doubler", "return 200, {'doubled': args['n'] * 2}").await;

    let served = serve_input("200 OK", r#"{"n": 21}"#).await;
    let task = dev
        .submit(&endpoint, json!({"url": format!("{served}/input.json")}))
        .await;
    let task = dev.finished_task(&task, WAIT).await;
    assert_eq!(task["result"]["result"], json!({"doubled": 42}), "{task}");

    // A local file through the object store, as ferry dev reads file:// locations.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, r#"{"n": 4}"#).unwrap();
    let url = url::Url::from_file_path(&file).unwrap().to_string();
    let task = dev.submit(&endpoint, json!({"url": url})).await;
    let task = dev.finished_task(&task, WAIT).await;
    assert_eq!(task["result"]["result"], json!({"doubled": 8}), "{task}");

    // A fetch that fails is the task's failure, naming the URL and why.
    let missing = serve_input("404 Not Found", "{}").await;
    let task = dev
        .submit(&endpoint, json!({"url": format!("{missing}/gone.json")}))
        .await;
    let task = dev.finished_task(&task, WAIT).await;
    assert_eq!(task["status"], "FAILURE", "{task}");
    let traceback = task["traceback"].as_str().unwrap_or_default();
    assert!(
        traceback.contains("gone.json") && traceback.contains("404"),
        "{task}"
    );

    // The SSRF guard refuses internal sources at submission, and both inputs at once.
    let path = format!("/v1/async-tasks?model_endpoint_id={endpoint}");
    let (status, answer) = dev
        .post(
            &path,
            &json!({"url": "http://169.254.169.254/latest/meta-data/"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("cloud metadata"),
        "{answer}"
    );
    let (status, answer) = dev
        .post(&path, &json!({"url": served, "args": {"n": 1}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
}
