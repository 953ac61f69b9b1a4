//! The router called with `oneshot`: auth, error mapping and validation, with a recording
//! resource writer and a real nats-server behind the queue.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiKeys, AppState, GatewayMetrics, WorkerClient, router};
use crate::callback::Guard;
use crate::catalog::{Catalog, NamedSecret, ResourceWriter, WriteError};
use crate::crd::validate::{ValidatedBundle, ValidatedEndpoint};
use crate::crd::{ModelBundle, ModelEndpoint};
use crate::queue::testing::{self as nats, TestServer as NatsServer};

mod isolation;
mod openapi;
mod team_limits;
mod wire;

/// The fixture's API key, of team-a.
const KEY_A: &str = "team-a-key-0123456789abcdef";

/// Remembers what the API asked to write.
#[derive(Default)]
struct Recorder {
    endpoints: Mutex<Vec<ModelEndpoint>>,
}

impl ResourceWriter for Recorder {
    fn apply_endpoint(
        &self,
        endpoint: ValidatedEndpoint,
        _: Vec<NamedSecret>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        let (endpoint, _) = endpoint.into_parts();
        self.endpoints.lock().expect("lock").push(endpoint);
        Box::pin(async { Ok(()) })
    }
    fn delete_endpoint(&self, _: Arc<ModelEndpoint>) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async { Ok(()) })
    }
    fn apply_bundle(&self, _: ValidatedBundle) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async { Ok(()) })
    }
}

struct Fixture {
    _nats: NatsServer,
    state: AppState,
    registry: prometheus_client::registry::Registry,
    recorder: Arc<Recorder>,
}

async fn fixture(writable: bool) -> Fixture {
    let (server, queue) = nats::start_with_queue().await;
    let catalog = Catalog::default();
    let bundle: ModelBundle = serde_saphyr::from_str(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelBundle\nmetadata: {name: model, namespace: team-a}\nspec: {image: python:3.12}\n",
    )
    .expect("bundle");
    catalog.put_bundle(bundle);
    let recorder = Arc::new(Recorder::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let state = AppState {
        catalog,
        writer: writable.then(|| recorder.clone() as Arc<dyn ResourceWriter>),
        workers: WorkerClient::new().expect("client"),
        demand: super::Demand::new("test".into()),
        queue: queue.gateway(),
        guard: Guard::default(),
        keys: Arc::new(ApiKeys::parse(&[format!("{KEY_A}=team-a")], false).expect("keys")),
        limits: Arc::default(),
        metrics: GatewayMetrics::register(&mut registry),
        ring: Arc::new(crate::seal::KeyRing::generate()),
    };
    Fixture {
        _nats: server,
        state,
        registry,
        recorder,
    }
}

async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, Value, Option<String>) {
    send_reading(state, method, uri, key, body, header::WWW_AUTHENTICATE).await
}

/// Sends a request; the status, the JSON answer and the value of the header `read`.
async fn send_reading(
    state: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &str,
    read: header::HeaderName,
) -> (StatusCode, Value, Option<String>) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let response = router(state.clone(), 1024 * 1024)
        .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("answers");
    let status = response.status();
    let challenge = response
        .headers()
        .get(read)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        challenge,
    )
}

fn create_body(name: &str) -> String {
    json!({"name": name, "model_bundle_id": crate::crd::BundleId::for_resource("team-a", "model"), "endpoint_type": "async",
        "cpus": 1, "memory": "1Gi", "storage": "1Gi", "gpus": 0, "min_workers": 1, "max_workers": 2, "per_worker": 10,
        "labels": {"team": "team-a", "product": "p"}})
    .to_string()
}

/// Creates the queue of an async endpoint.
async fn ensure_queue(state: &AppState, id: &crate::crd::EndpointId) {
    let spec = crate::queue::QueueSpec {
        endpoint_id: id.clone(),
        task_expiry: std::time::Duration::from_secs(60),
        ack_wait: std::time::Duration::from_secs(30),
    };
    state.queue.open_task_queue(&spec).await.expect("queue");
}

/// Creates an endpoint of `kind` through the API and puts it in the catalog.
async fn create_endpoint(fixture: &Fixture, name: &str, kind: &str) -> crate::crd::EndpointId {
    let mut body: Value = serde_json::from_str(&create_body(name)).expect("json");
    body["endpoint_type"] = json!(kind);
    let path = "/v1/model-endpoints";
    let (status, answer, _) =
        send(&fixture.state, "POST", path, Some(KEY_A), &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let endpoint = fixture.recorder.endpoints.lock().expect("lock").remove(0);
    let id = endpoint.endpoint_id();
    fixture.state.catalog.put_endpoint(endpoint);
    id
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status_class() {
    let fixture = fixture(true).await;
    let key = Some(KEY_A);
    send(&fixture.state, "GET", "/v1/model-endpoints", key, "").await;
    send(&fixture.state, "GET", "/v1/model-endpoints", key, "").await;
    send(
        &fixture.state,
        "GET",
        "/v1/async-tasks/secret-task-id",
        key,
        "",
    )
    .await;
    send(&fixture.state, "GET", "/v1/no/such/route", key, "").await;
    let text = crate::metrics::Format::Classic
        .encode(&fixture.registry)
        .expect("encode");
    let expected = [
        r#"ferry_gateway_http_requests_total{method="GET",route="/v1/model-endpoints",status="2xx"} 2"#,
        r#"ferry_gateway_http_requests_total{method="GET",route="/v1/async-tasks/{task_id}",status="4xx"} 1"#,
        r#"ferry_gateway_http_requests_total{method="GET",route="unmatched",status="4xx"} 1"#,
        r#"ferry_gateway_http_request_duration_seconds_count{method="GET",route="/v1/model-endpoints"} 2"#,
    ];
    for line in expected {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(
        !text.contains("secret-task-id") && !text.contains("/no/such"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_keys_get_401_with_a_challenge() {
    let fixture = fixture(true).await;
    let (status, body, challenge) =
        send(&fixture.state, "GET", "/v1/model-endpoints", None, "").await;
    assert_eq!(
        (status, challenge.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("Basic"))
    );
    assert!(body["detail"].is_string());
    let (status, _, _) = send(
        &fixture.state,
        "GET",
        "/v1/model-endpoints",
        Some("stranger"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn errors_map_to_status_codes_with_a_detail() {
    let fixture = fixture(true).await;
    let state = &fixture.state;
    let key = Some(KEY_A);
    let (status, body, _) = send(
        state,
        "GET",
        "/v1/model-endpoints/end_00000000000000000000",
        key,
        "",
    )
    .await;
    assert_eq!(
        (status, body["detail"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );
    let (status, body, _) = send(state, "POST", "/v1/model-endpoints", key, "{not json").await;
    assert_eq!(
        (status, body["detail"].is_array()),
        (StatusCode::UNPROCESSABLE_ENTITY, true)
    );
    let (status, body, _) = send(state, "GET", "/v1/no-such-route", key, "").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (StatusCode::NOT_FOUND, json!("Not Found"))
    );
    for (method, path) in [
        ("POST", "/v1/llm/completions-sync"),
        ("GET", "/v1/llm/fine-tunes"),
        ("POST", "/v2/chat/completions"),
        ("POST", "/v1/batch-jobs"),
        ("GET", "/v1/files"),
        (
            "POST",
            "/v1/model-endpoints/end_00000000000000000000/restart",
        ),
    ] {
        let (status, body, _) = send(state, method, path, key, "{}").await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!detail.is_empty(), "{path}: {body}");
    }
    let (status, body, _) = send(state, "GET", "/v1/llm/model-endpoints", key, "").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("LLM endpoints are not served"),
        "{status} {body}"
    );
    let (status, body, _) = send(
        state,
        "GET",
        "/v2/model-bundles/clone-with-changes",
        key,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body["detail"].is_string(), "{body}");
    let (status, body, _) = send(state, "DELETE", "/v1/async-tasks", key, "").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!("DELETE is not served on /v1/async-tasks")
        )
    );
    let (status, _, _) = send(state, "POST", "/v1/model-bundles", key, "{}").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "v1 bundles are cloudpickle: refused with a reason"
    );
    let (status, _, _) = send(state, "POST", "/v1/async-tasks", key, "{}").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "model_endpoint_id is required"
    );
}

#[tokio::test]
async fn creates_are_validated_before_anything_is_written() {
    let fixture = fixture(true).await;
    let (status, body, _) = send(
        &fixture.state,
        "POST",
        "/v1/model-endpoints",
        Some(KEY_A),
        &create_body("Bad_Name"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("name"),
        "{body}"
    );
    assert!(fixture.recorder.endpoints.lock().expect("lock").is_empty());

    let (status, body, _) = send(
        &fixture.state,
        "POST",
        "/v1/model-endpoints",
        Some(KEY_A),
        &create_body("demo"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let written = fixture.recorder.endpoints.lock().expect("lock").clone();
    assert_eq!(written.len(), 1);
    assert_eq!(
        written[0].metadata.namespace.as_deref(),
        Some("team-a"),
        "the key's team namespace"
    );
    assert_eq!(written[0].spec.bundle, "model");
}

#[tokio::test]
async fn clone_with_changes_copies_a_bundle_under_a_new_id() {
    let fixture = fixture(true).await;
    let original = crate::crd::BundleId::for_resource("team-a", "model").to_string();
    let clone = |path: &'static str, body: Value| {
        let state = fixture.state.clone();
        async move { send(&state, "POST", path, Some(KEY_A), &body.to_string()).await }
    };
    for path in [
        "/v2/model-bundles/clone-with-changes",
        "/v1/model-bundles/clone-with-changes",
    ] {
        let (status, body, _) = clone(path, json!({"original_model_bundle_id": original})).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let id = body["model_bundle_id"].as_str().unwrap_or_default();
        assert!(id.starts_with("bun_") && id != original, "{body}");
    }
    let (status, body, _) = clone(
        "/v2/model-bundles/clone-with-changes",
        json!({"original_model_bundle_id": "bun_00000000000000000000"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body, _) = clone(
        "/v2/model-bundles/clone-with-changes",
        json!({"original_model_bundle_id": original, "new_app_config": {"a": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_read_only_gateway_refuses_changes() {
    let fixture = fixture(false).await;
    let (status, body, _) = send(
        &fixture.state,
        "POST",
        "/v1/model-endpoints",
        Some(KEY_A),
        &create_body("demo"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[tokio::test]
async fn a_task_polled_after_a_stale_started_still_answers_its_outcome() {
    use crate::task::{TaskId, TaskRecord, TaskStatus};
    let fixture = fixture(true).await;
    let (status, _, _) = send(
        &fixture.state,
        "POST",
        "/v1/model-endpoints",
        Some(KEY_A),
        &create_body("poller"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let endpoint = fixture.recorder.endpoints.lock().expect("lock")[0].clone();
    let endpoint_id = endpoint.endpoint_id();
    fixture.state.catalog.put_endpoint(endpoint);
    let task = TaskId::generate(&endpoint_id);
    let success = TaskRecord {
        status: TaskStatus::Success,
        result: Some(json!(7)),
        status_code: Some(200),
        ..TaskRecord::pending(endpoint_id.clone())
    };
    // The endpoint's worker records the outcome, then a stale attempt of it.
    let queue = crate::queue::Queue::connect(
        &fixture._nats.connection,
        Default::default(),
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("connects")
    .forwarder(&endpoint_id);
    queue
        .advance_task_record(&task, &success, None)
        .await
        .expect("success");
    // A redelivered attempt of the same task reports STARTED after the outcome was recorded.
    let started = TaskRecord::started(endpoint_id);
    queue
        .advance_task_record(&task, &started, None)
        .await
        .expect("stale started");
    let uri = format!("/v1/async-tasks/{task}");
    let (status, body, _) = send(&fixture.state, "GET", &uri, Some(KEY_A), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], json!({"result": 7}));
}

#[tokio::test]
async fn task_bodies_must_be_json_objects() {
    let fixture = fixture(true).await;
    let state = &fixture.state;
    let key = Some(KEY_A);
    let mut ids = Vec::new();
    for (name, kind) in [("objects-async", "async"), ("objects-stream", "streaming")] {
        ids.push(create_endpoint(&fixture, name, kind).await);
    }
    let routes = [
        format!("/v1/async-tasks?model_endpoint_id={}", ids[0]),
        format!("/v1/sync-tasks?model_endpoint_id={}", ids[1]),
        format!("/v1/streaming-tasks?model_endpoint_id={}", ids[1]),
    ];
    // An array once set the callback URL by position.
    let array = r#"[{"x": 1}, "http://127.0.0.1:9/cb"]"#;
    for uri in &routes {
        for (body, kind) in [(array, "array"), (" \n\"text\"", "string"), ("7", "number")] {
            let (status, answer, _) = send(state, "POST", uri, key, body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}");
            let message = answer["detail"][0]["msg"].as_str().unwrap_or_default();
            assert!(
                message.contains("must be a JSON object") && message.contains(kind),
                "{uri}: {answer}"
            );
        }
    }
    ensure_queue(state, &ids[0]).await;
    let (status, answer, _) = send(state, "POST", &routes[0], key, r#"{"args": {"x": 1}}"#).await;
    assert_eq!(status, StatusCode::OK, "an object is taken: {answer}");
    assert!(answer["task_id"].is_string(), "{answer}");
}

#[tokio::test]
async fn a_full_task_queue_refuses_with_429_and_keeps_every_accepted_task() {
    let mut fixture = fixture(true).await;
    let tiny = crate::queue::QueueSettings {
        task_limits: crate::queue::QueueLimits {
            max_tasks: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    fixture.state.queue = crate::queue::Queue::connect(
        &fixture._nats.connection,
        tiny,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("connects")
    .gateway();
    let state = &fixture.state;
    let key = Some(KEY_A);
    let (status, answer, _) = send(
        state,
        "POST",
        "/v1/model-endpoints",
        key,
        &create_body("tiny-queue"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let endpoint = fixture.recorder.endpoints.lock().expect("lock").remove(0);
    let id = endpoint.endpoint_id();
    state.catalog.put_endpoint(endpoint);
    ensure_queue(state, &id).await;
    let uri = format!("/v1/async-tasks?model_endpoint_id={id}");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for x in 0..5 {
        let body = json!({"args": {"x": x}}).to_string();
        let (status, answer, _) = send(state, "POST", &uri, key, &body).await;
        match status {
            StatusCode::OK => accepted.push(answer["task_id"].as_str().expect("id").to_owned()),
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let detail = answer["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("task queue is full"), "{answer}");
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!((accepted.len(), refused), (2, 3));
    let backlog = state.queue.backlog(&id).await.expect("backlog");
    assert_eq!(backlog.queued, 2, "every accepted task is queued");
    for task in &accepted {
        let (status, answer, _) =
            send(state, "GET", &format!("/v1/async-tasks/{task}"), key, "").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["status"], "PENDING");
    }

    // A refused submission under an idempotency key is taken when repeated once there is room
    // (here: a larger bound), and queued.
    let with_key = || {
        Request::builder()
            .method("POST")
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {KEY_A}"))
            .header(super::IDEMPOTENCY_KEY, "again")
            .body(Body::from(r#"{"args": {"x": 9}}"#))
            .expect("request")
    };
    let answer = router(state.clone(), 1024 * 1024)
        .oneshot(with_key())
        .await
        .expect("answers");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers().contains_key(header::RETRY_AFTER));
    let roomier = crate::queue::QueueSettings {
        task_limits: crate::queue::QueueLimits {
            max_tasks: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let roomier = crate::queue::Queue::connect(
        &fixture._nats.connection,
        roomier,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("connects");
    roomier
        .gateway()
        .open_task_queue(&crate::queue::QueueSpec {
            endpoint_id: id.clone(),
            task_expiry: std::time::Duration::from_secs(60),
            ack_wait: std::time::Duration::from_secs(30),
        })
        .await
        .expect("larger queue");
    let answer = router(state.clone(), 1024 * 1024)
        .oneshot(with_key())
        .await
        .expect("answers");
    assert_eq!(answer.status(), StatusCode::OK);
    // The consumer counts a message it was just given a moment later on a busy server.
    let mut queued = 0;
    for _ in 0..50 {
        queued = state.queue.backlog(&id).await.expect("backlog").queued;
        if queued == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(queued, 3, "the repeated task is queued");
}

#[tokio::test]
async fn a_sync_timeout_beyond_the_maximum_is_refused_with_422() {
    let fixture = fixture(true).await;
    for kind in ["sync", "streaming"] {
        let id = create_endpoint(&fixture, &format!("timeouts-{kind}"), kind).await;
        let uri = format!("/v1/{kind}-tasks?model_endpoint_id={id}");
        for seconds in ["3600.5", "1e300", "18446744073709551616"] {
            let body = format!(r#"{{"args": {{"x": 1}}, "timeout_seconds": {seconds}}}"#);
            let (status, answer, _) = send(&fixture.state, "POST", &uri, Some(KEY_A), &body).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{uri} {seconds}: {answer}"
            );
            let message = answer["detail"][0]["msg"].as_str().unwrap_or_default();
            assert!(message.contains("at most 3600"), "{answer}");
        }
    }
}

#[tokio::test]
async fn a_callback_host_whose_lookup_stalls_is_answered_503() {
    let mut fixture = fixture(true).await;
    fixture.state.guard = Guard::stalled(std::time::Duration::from_millis(50));
    let id = create_endpoint(&fixture, "slow-dns", "async").await;
    let uri = format!("/v1/async-tasks?model_endpoint_id={id}");
    let body = r#"{"args": {"x": 1}, "callback_url": "https://slow-dns.example/cb"}"#;
    let (status, answer, _) = send(&fixture.state, "POST", &uri, Some(KEY_A), body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let detail = answer["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("did not resolve within"), "{answer}");
}

#[tokio::test]
async fn basic_credentials_over_plain_http_are_refused_unless_the_endpoint_allows_them() {
    let mut fixture = fixture(true).await;
    let loopback = "127.0.0.0/8".parse().expect("cidr");
    fixture.state.guard = Guard::new(vec![loopback], Default::default());
    let state = &fixture.state;
    let mut body: Value = serde_json::from_str(&create_body("basic-http")).expect("json");
    body["post_inference_hooks"] = json!(["callback"]);
    let path = "/v1/model-endpoints";
    let (status, answer, _) = send(state, "POST", path, Some(KEY_A), &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let endpoint = fixture.recorder.endpoints.lock().expect("lock").remove(0);
    let id = endpoint.endpoint_id();
    state.catalog.put_endpoint(endpoint.clone());
    ensure_queue(state, &id).await;
    let uri = format!("/v1/async-tasks?model_endpoint_id={id}");
    let task = json!({"args": {"x": 1}, "callback_url": "http://127.0.0.1:9/cb",
        "callback_auth": {"kind": "basic", "username": "u", "password": "p"}})
    .to_string();
    let (status, answer, _) = send(state, "POST", &uri, Some(KEY_A), &task).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let message = answer["detail"][0]["msg"].as_str().unwrap_or_default();
    assert!(message.contains("plain http://"), "{answer}");

    let mut allowing = endpoint;
    allowing.spec.callbacks = Some(crate::crd::CallbackPolicySpec {
        allow_basic_auth_over_http: true,
        ..Default::default()
    });
    state.catalog.put_endpoint(allowing);
    let (status, answer, _) = send(state, "POST", &uri, Some(KEY_A), &task).await;
    assert_eq!(status, StatusCode::OK, "allowed explicitly: {answer}");
}
