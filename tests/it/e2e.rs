//! End to end: real nats-server, real `ferry` processes, real model processes and a callback
//! receiver, all on 127.0.0.1.

use std::time::Duration;

use crate::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

const TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// The seed's example: an async endpoint with the callback hook and a default callback URL.
async fn seed_setup(receiver: &Receiver) -> (Manifests, Dev, String) {
    seed_setup_with(receiver, &[]).await
}

async fn seed_setup_with(receiver: &Receiver, flags: &[&str]) -> (Manifests, Dev, String) {
    let manifests = Manifests::with_example_bundle();
    let endpoint = endpoint_yaml(
        "demo-endpoint-callback",
        "test-bundle",
        &receiver.url("/default"),
        "",
    );
    manifests.add("endpoint.yaml", &endpoint);
    let dev = Dev::start_with(manifests.path(), None, flags).await;
    let id = dev.ready_endpoint("demo-endpoint-callback").await;
    (manifests, dev, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_predictions_call_back_the_default_and_the_overridden_url() {
    let receiver = Receiver::start().await;
    let (_manifests, dev, endpoint) = seed_setup(&receiver).await;

    let first = dev
        .submit(
            &endpoint,
            json!({"args": {"x": 2, "y": "hello"}, "return_pickled": false}),
        )
        .await;
    let custom = json!({"args": {"x": 3, "y": "hello"}, "callback_url": receiver.url("/custom"), "return_pickled": false});
    let second = dev.submit(&endpoint, custom).await;

    let callbacks = receiver.wait_for(2, TASK_TIMEOUT).await;
    let find = |task: &str| {
        callbacks
            .iter()
            .find(|c| c.body["task_id"] == task)
            .expect("callback for task")
            .clone()
    };
    let (to_default, to_custom) = (find(&first), find(&second));
    assert_eq!(to_default.path, "/default");
    assert_eq!(
        to_default.body,
        json!({"task_id": first, "result": 7, "status": "SUCCESS"})
    );
    assert_eq!(to_custom.path, "/custom");
    assert_eq!(
        to_custom.body,
        json!({"task_id": second, "result": 8, "status": "SUCCESS"})
    );
    assert_eq!(to_default.headers["content-type"], "application/json");
    assert_eq!(to_default.headers["webhook-id"], first.as_str());

    let task = dev.finished_task(&first, TASK_TIMEOUT).await;
    assert_eq!(task["status"], "SUCCESS");
    assert_eq!(task["result"], json!({"result": 7}));
    assert_eq!(task["status_code"], 200);
    assert_eq!(task["task_id"], first.as_str());
    let delivered = eventually("callback recorded as delivered", TASK_TIMEOUT, || async {
        let task = dev.task(&first).await;
        (task["callback"]["state"] == "DELIVERED").then_some(task)
    })
    .await;
    assert_eq!(delivered["callback"]["attempts"][0]["status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_model_yields_failure_and_a_failure_callback() {
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "failing.yaml",
        &python_bundle_yaml("failing", "return 500, {'detail': 'out of memory'}"),
    );
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("failing-endpoint", "failing", &receiver.url("/cb"), ""),
    );
    let dev = Dev::start(manifests.path(), None).await;
    let endpoint = dev.ready_endpoint("failing-endpoint").await;

    let task_id = dev.submit(&endpoint, json!({"args": {"x": 1}})).await;
    let task = dev.finished_task(&task_id, TASK_TIMEOUT).await;
    assert_eq!(task["status"], "FAILURE");
    assert_eq!(task["status_code"], 500);
    assert!(task["result"].as_str().unwrap().contains("500"), "{task}");
    assert!(
        task["traceback"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{task}"
    );

    let callback = &receiver.wait_for(1, TASK_TIMEOUT).await[0];
    assert_eq!(callback.body["task_id"], task_id.as_str());
    assert_eq!(callback.body["status"], "FAILURE");
    assert!(
        callback.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    assert!(callback.body.get("result").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_answers_that_are_not_json_are_failures() {
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "garbled.yaml",
        &python_bundle_yaml("garbled", "return 200, b'not json'"),
    );
    manifests.add(
        "e1.yaml",
        &endpoint_yaml("garbled-endpoint", "garbled", &receiver.url("/cb"), ""),
    );
    let dev = Dev::start(manifests.path(), None).await;
    let endpoint = dev.ready_endpoint("garbled-endpoint").await;
    let task = dev
        .finished_task(
            &dev.submit(&endpoint, json!({"args": {}})).await,
            TASK_TIMEOUT,
        )
        .await;
    assert_eq!(task["status"], "FAILURE");
    assert!(
        task["result"].as_str().unwrap().contains("not JSON"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_a_detail() {
    let receiver = Receiver::start().await;
    let (_manifests, dev, endpoint) =
        seed_setup_with(&receiver, &["--max-body-bytes", "4096"]).await;
    let submit = format!("{}/v1/async-tasks?model_endpoint_id={endpoint}", dev.base);

    let (status, body) = dev
        .get(&format!(
            "/v1/async-tasks/{endpoint}-0190f4a2-7c1e-7b3a-9f00-0123456789ab"
        ))
        .await;
    assert_eq!(
        (status, body["detail"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );
    for unknown in ["not-a-task", "0190f4a2-7c1e-7b3a-9f00-0123456789ab"] {
        let (status, _) = dev.get(&format!("/v1/async-tasks/{unknown}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    }
    let (status, _) = dev
        .get("/v1/model-endpoints/end_00000000000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = dev
        .post(
            "/v1/async-tasks?model_endpoint_id=end_nope",
            &json!({"args": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = dev.get("/v1/model-bundles/latest?model_name=absent").await;
    assert_eq!(
        (status, body["detail"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );

    let raw = |body: &'static str| {
        dev.http
            .post(&submit)
            .basic_auth(API_KEY, Some(""))
            .body(body)
            .send()
    };
    let malformed = raw("{\"args\": ").await.unwrap();
    assert_eq!(malformed.status().as_u16(), 422);
    assert!(malformed.json::<serde_json::Value>().await.unwrap()["detail"].is_array());
    assert_eq!(
        raw("{\"kwargs\": {}}").await.unwrap().status().as_u16(),
        422
    );

    let bad_url = json!({"args": {}, "callback_url": "ftp://example.com/x"});
    let (status, body) = dev
        .post(
            &format!("/v1/async-tasks?model_endpoint_id={endpoint}"),
            &bad_url,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let huge = json!({"args": {"blob": "x".repeat(8 * 1024)}});
    let response = dev
        .http
        .post(&submit)
        .basic_auth(API_KEY, Some(""))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let anonymous = dev
        .http
        .get(format!("{}/v1/model-endpoints", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_an_idempotency_key_returns_the_same_task_and_runs_it_once() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let runs = RunLog::new();
    let manifests = Manifests::with_example_bundle();
    let model = runs.recording("return 200, args['x'] + len(args['y'])");
    manifests.add("recorded.yaml", &python_bundle_yaml("recorded", &model));
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("recorded", "recorded", &receiver.url("/cb"), ""),
    );
    let dev = Dev::start(manifests.path(), Some(&nats.url)).await;
    let endpoint = dev.ready_endpoint("recorded").await;
    let submit = |key: &'static str| {
        dev.http
            .post(format!(
                "{}/v1/async-tasks?model_endpoint_id={endpoint}",
                dev.base
            ))
            .basic_auth(API_KEY, Some(""))
            .header("Idempotency-Key", key)
            .json(&json!({"args": {"x": 1, "y": "a"}}))
            .send()
    };
    let task_id = |response: reqwest::Response| async move {
        response.json::<serde_json::Value>().await.unwrap()["task_id"].clone()
    };
    let first = task_id(submit("order-17").await.unwrap()).await;
    let again = task_id(submit("order-17").await.unwrap()).await;
    let other = task_id(submit("order-18").await.unwrap()).await;
    assert_eq!(first, again);
    assert_ne!(first, other);

    receiver.wait_for(2, TASK_TIMEOUT).await;
    nats.wait_quiet(TASK_TIMEOUT).await;
    for task in [&first, &other] {
        let task = task.as_str().unwrap();
        assert_eq!(runs.runs_of(task).len(), 1, "task {task} ran once");
        let callbacks = receiver.received();
        let calls = callbacks.iter().filter(|c| c.body["task_id"] == task);
        assert_eq!(calls.count(), 1, "task {task} was called back once");
        assert_eq!(dev.task(task).await["status"], "SUCCESS");
    }
    assert_eq!(runs.runs().len(), 2, "no other run: {:?}", runs.runs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_still_gets_its_callback() {
    let port = free_port();
    let receiver_url = format!("http://127.0.0.1:{port}/late");
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("demo", "test-bundle", &receiver_url, ""),
    );
    let dev = Dev::start(manifests.path(), None).await;
    let endpoint = dev.ready_endpoint("demo").await;

    let task_id = dev
        .submit(&endpoint, json!({"args": {"x": 2, "y": "hello"}}))
        .await;
    let pending = eventually("a failed attempt recorded", TASK_TIMEOUT, || async {
        let task = dev.task(&task_id).await;
        (task["callback"]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty()))
        .then_some(task)
    })
    .await;
    assert_eq!(pending["callback"]["state"], "PENDING");
    assert!(
        pending["callback"]["attempts"][0]["error"].is_string(),
        "{pending}"
    );

    let receiver = Receiver::start_on(([127, 0, 0, 1], port).into()).await;
    let callbacks = receiver.wait_for(1, TASK_TIMEOUT).await;
    assert_eq!(
        callbacks[0].body,
        json!({"task_id": task_id, "result": 7, "status": "SUCCESS"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_5xx_is_retried_until_it_accepts() {
    let receiver = Receiver::start().await;
    receiver.answer_first_with(&[StatusCode::SERVICE_UNAVAILABLE]);
    let (_manifests, dev, endpoint) = seed_setup(&receiver).await;
    let task_id = dev
        .submit(&endpoint, json!({"args": {"x": 2, "y": "hello"}}))
        .await;
    let callbacks = receiver.wait_for(2, TASK_TIMEOUT).await;
    assert!(
        callbacks
            .iter()
            .all(|c| c.body["task_id"] == task_id.as_str())
    );
    assert_eq!(
        callbacks[0].headers["webhook-id"],
        callbacks[1].headers["webhook-id"]
    );
    let task = eventually("delivered", TASK_TIMEOUT, || async {
        let task = dev.task(&task_id).await;
        (task["callback"]["state"] == "DELIVERED").then_some(task)
    })
    .await;
    let attempts: Vec<_> = task["callback"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(attempts, vec![json!(503), json!(200)]);
}

/// The model of the worker tests: sleeps `args.sleep` seconds, answers `args.x * 10`, and logs
/// each run in `runs`.
fn slow_model(runs: &RunLog) -> String {
    runs.recording("time.sleep(args['sleep'])\nreturn 200, args['x'] * 10")
}

/// The worker tests' world: a static gateway (no `ferry dev`, so no local worker can take a
/// task: the test's forwarders are the only workers) and a dispatcher on `nats`, serving an
/// endpoint with a short lease, so a dead worker's task is handed out again quickly.
async fn standalone_worker_setup(
    receiver: &Receiver,
    nats: &Nats,
) -> (Manifests, Dev, Process, String) {
    let manifests = Manifests::with_example_bundle();
    let extra = "  queueMessageTimeoutSeconds: 2\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("slow-endpoint", "test-bundle", &receiver.url("/cb"), extra),
    );
    let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
    let dispatcher = Process::dispatcher(&nats.url, &[]);
    let endpoint = gateway.endpoint_id("slow-endpoint").await;
    (manifests, gateway, dispatcher, endpoint)
}

/// A worker: a forwarder for `endpoint` beside a model process of its own.
async fn worker(nats: &Nats, endpoint: &str, runs: &RunLog) -> (ModelProcess, Process) {
    let model = ModelProcess::start(&slow_model(runs)).await;
    let forwarder = Process::forwarder(&nats.url, endpoint, &model.url, &[]);
    (model, forwarder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_has_its_task_redelivered_and_completed_once() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let runs = RunLog::new();
    let (_manifests, gateway, _dispatcher, endpoint) =
        standalone_worker_setup(&receiver, &nats).await;

    let (doomed_model, mut doomed) = worker(&nats, &endpoint, &runs).await;
    let task_id = gateway
        .submit(&endpoint, json!({"args": {"x": 4, "sleep": 1.5}}))
        .await;
    eventually("task started", TASK_TIMEOUT, || async {
        (gateway.task(&task_id).await["status"] == "STARTED").then_some(())
    })
    .await;
    doomed.signal("-KILL");
    doomed.wait_exit(Duration::from_secs(5)).await;

    let (survivor_model, _survivor) = worker(&nats, &endpoint, &runs).await;
    let task = gateway.finished_task(&task_id, TASK_TIMEOUT).await;
    assert_eq!(task["status"], "SUCCESS");
    assert_eq!(task["result"], json!({"result": 40}));
    receiver.wait_for(1, TASK_TIMEOUT).await;
    nats.wait_quiet(TASK_TIMEOUT).await;
    assert_eq!(
        runs.runs_of(&task_id),
        vec![doomed_model.pid(), survivor_model.pid()],
        "cut off by the kill, then delivered again to the other worker and run there once"
    );
    let callbacks = receiver.received();
    assert_eq!(
        callbacks.len(),
        1,
        "one final result, one callback: {callbacks:?}"
    );
    assert_eq!(callbacks[0].body["result"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_worker_finish_its_task_and_take_no_other_before_exiting() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let runs = RunLog::new();
    let (_manifests, gateway, _dispatcher, endpoint) =
        standalone_worker_setup(&receiver, &nats).await;

    let (stopping_model, mut stopping) = worker(&nats, &endpoint, &runs).await;
    let held = gateway
        .submit(&endpoint, json!({"args": {"x": 5, "sleep": 3}}))
        .await;
    eventually("task started", TASK_TIMEOUT, || async {
        (gateway.task(&held).await["status"] == "STARTED").then_some(())
    })
    .await;
    stopping.signal("-TERM");
    // Queued while the stopping worker still runs its task: it must leave them alone.
    let mut later = Vec::new();
    for x in 0..3 {
        let body = json!({"args": {"x": x, "sleep": 0}});
        later.push(gateway.submit(&endpoint, body).await);
    }
    let status = stopping.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "clean exit: {status}");
    let task = gateway.task(&held).await;
    assert_eq!(task["status"], "SUCCESS", "finished before exiting: {task}");
    assert_eq!(task["result"], json!({"result": 50}));

    let (next_model, _next) = worker(&nats, &endpoint, &runs).await;
    for (x, task_id) in later.iter().enumerate() {
        let task = gateway.finished_task(task_id, TASK_TIMEOUT).await;
        assert_eq!(task["result"], json!({"result": x * 10}), "{task}");
    }
    receiver.wait_for(1 + later.len(), TASK_TIMEOUT).await;
    nats.wait_quiet(TASK_TIMEOUT).await;
    assert_eq!(runs.runs_of(&held), vec![stopping_model.pid()]);
    for task_id in &later {
        assert_eq!(
            runs.runs_of(task_id),
            vec![next_model.pid()],
            "queued after SIGTERM: run once, by the other worker"
        );
    }
    assert_eq!(
        receiver.received().len(),
        1 + later.len(),
        "one callback each"
    );
}

/// A task message for `endpoint` as the gateway sends it to a serving worker.
fn task_message(endpoint: &str) -> Value {
    let task_id = format!("{endpoint}-0190f4a2-7c1e-7b3a-9f00-0123456789ab");
    json!({"v": "1", "task_id": task_id, "endpoint_id": endpoint,
        "args": {"x": 4}, "submitted_at_ms": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_worker_takes_only_the_gateways_tasks_for_its_own_endpoint() {
    const OWN: &str = "end_00000000000000000000";
    const OTHER: &str = "end_11111111111111111111";
    let nats = Nats::start().await;
    // A forwarder ensures no shared bucket: a role that does prepares the server first.
    let mut prepare = Process::spawn(
        &["dispatcher", "--check-config"],
        &[("FERRY_NATS_URL", &nats.url)],
    );
    assert!(prepare.wait_exit(TASK_TIMEOUT).await.success());
    let model = ModelProcess::start("return 200, args['x'] * 10").await;
    let listen = format!("127.0.0.1:{}", free_port());
    let _worker = Process::spawn(
        &["forwarder"],
        &[
            ("FERRY_NATS_URL", &nats.url),
            ("FERRY_ENDPOINT_ID", OWN),
            ("FERRY_MODEL_URL", &model.url),
            ("FERRY_SERVE_LISTEN", &listen),
            ("FERRY_SERVING_TOKEN", "token-of-own"),
        ],
    );
    let http = http_client();
    let predict = |token: Option<&'static str>, endpoint: &'static str| {
        let mut request = http
            .post(format!("http://{listen}/predict"))
            .json(&task_message(endpoint));
        if let Some(token) = token {
            request = request.header("ferry-serving-token", token);
        }
        async move {
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.json::<Value>().await.unwrap_or_default()))
        }
    };
    let (status, body) = eventually("the worker serves", TASK_TIMEOUT, || predict(None, OWN)).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = predict(Some("token-of-other"), OWN).await.expect("answers");
    assert_eq!(status, 401, "another endpoint's token");
    let (status, body) = predict(Some("token-of-own"), OTHER).await.expect("answers");
    assert_eq!(status, 403, "a task of another endpoint: {body}");
    let mut their_task = task_message(OWN);
    their_task["task_id"] = task_message(OTHER)["task_id"].clone();
    let response = http
        .post(format!("http://{listen}/predict"))
        .header("ferry-serving-token", "token-of-own")
        .json(&their_task)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 403, "a task id of another endpoint");
    let (status, body) = predict(Some("token-of-own"), OWN).await.expect("answers");
    assert_eq!(
        (status, &body["result"]),
        (200, &json!({"result": 40})),
        "{body}"
    );
    let (status, _) = predict(Some("older-key-token, token-of-own"), OWN)
        .await
        .expect("answers");
    assert_eq!(
        status, 200,
        "any of the gateway's tokens during a key rotation"
    );
}

/// Reads from `stream` until the server closes it; false if it stays open past the bound.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_closes_slow_and_idle_connections_and_idle_sockets_cannot_starve_clients() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let manifests = Manifests::with_example_bundle();
    let idle = "  minWorkers: 0\n";
    let endpoint = endpoint_yaml("idle", "test-bundle", "http://127.0.0.1:9/cb", idle);
    manifests.add("endpoint.yaml", &endpoint);
    let flags = [
        "--http-header-timeout-seconds",
        "1",
        "--http-idle-timeout-seconds",
        "1",
        "--http-max-connections",
        "8",
    ];
    let dev = Dev::start_with(manifests.path(), None, &flags).await;
    let addr = dev.base.trim_start_matches("http://").to_owned();

    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut half).await, "half a header");

    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut kept).await, "idle after its answer");

    // Far more silent sockets than the cap; a real client is still answered.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer = fresh
        .get(format!("{}/healthz", dev.base))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    for stream in &mut silent {
        assert!(
            closed_by_server(stream).await,
            "every silent socket is closed"
        );
    }
}

/// A model that turns on ferry: it finds every port its `ferry dev` and that process's other
/// children listen on (as a compromised model would, from /proc), tries NATS without
/// credentials, and posts a forged task for another endpoint to every HTTP port but the
/// gateway's and its own, without a serving token and with a made-up one.
const HOSTILE_MODEL: &str = r#"import socket, urllib.request, urllib.error
def family():
    parent = os.getppid()
    pids = {parent}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.add(int(entry))
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].split(":")[1], 16))
    return sorted(ports)
def greeting(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(0.5)
        try:
            return s.recv(4096)
        except socket.timeout:
            return b""
def nats_without_credentials(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nPING\r\n')
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except socket.timeout:
            pass
        return answer.decode(errors="replace").strip()
def forge(port, token):
    task = {"v": "1", "task_id": args["victim_task_id"], "endpoint_id": args["victim_endpoint_id"],
            "args": {"stolen": True}, "submitted_at_ms": 0}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps(task).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    if token:
        request.add_header("ferry-serving-token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)
found = {"nats": [], "http": []}
for port in family():
    if port in (int(os.environ["PORT"]), args["gateway_port"]):
        continue
    hello = greeting(port)
    if hello.startswith(b"INFO"):
        found["nats"].append(nats_without_credentials(port))
        continue
    no_token, wrong_token = forge(port, None), forge(port, "forged-token")
    found["http"].append({"port": port, "no_token": no_token, "wrong_token": wrong_token})
return 200, found"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_model_reaches_neither_nats_nor_another_endpoints_worker() {
    let sync_endpoint = |name: &str, bundle: &str| {
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: {name}\nspec:\n  bundle: {bundle}\n  endpointType: sync\n  labels: {{team: t, product: p}}\n"
        )
    };
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "hostile-bundle.yaml",
        &python_bundle_yaml("hostile", HOSTILE_MODEL),
    );
    manifests.add(
        "victim-bundle.yaml",
        &python_bundle_yaml("victim", "return 200, {'victim': True}"),
    );
    manifests.add("hostile.yaml", &sync_endpoint("hostile", "hostile"));
    manifests.add("victim.yaml", &sync_endpoint("victim", "victim"));
    let dev = Dev::start(manifests.path(), None).await;
    let hostile = dev.ready_endpoint("hostile").await;
    let victim = dev.ready_endpoint("victim").await;
    let gateway_port: u16 = dev.base.rsplit(':').next().unwrap().parse().unwrap();

    let (status, answer) = dev
        .post(
            &format!("/v1/sync-tasks?model_endpoint_id={hostile}"),
            &json!({"args": {
                "gateway_port": gateway_port,
                "victim_endpoint_id": victim,
                "victim_task_id": format!("{victim}-0190f4a2-7c1e-7b3a-9f00-0123456789ab"),
            }, "timeout_seconds": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let found = &answer["result"]["result"];

    let nats = found["nats"].as_array().expect("NATS answers");
    assert_eq!(nats.len(), 1, "ferry dev's nats-server was found: {found}");
    assert!(
        nats[0]
            .as_str()
            .unwrap()
            .contains("Authorization Violation"),
        "NATS let a model in without credentials: {found}"
    );
    // Every other port is a worker's serving port (the hostile endpoint's and the victim's) or
    // the victim's model, which is no ferry boundary in `ferry dev` (pods keep models apart).
    let http = found["http"].as_array().expect("HTTP answers");
    let mut refusing_workers = 0;
    for port in http {
        let answered = |attempt: &str| port[attempt][0].as_u64().unwrap_or_default();
        let body = |attempt: &str| port[attempt][1].as_str().unwrap_or_default().to_owned();
        if body("no_token").contains("victim") {
            continue;
        }
        for attempt in ["no_token", "wrong_token"] {
            assert_eq!(
                answered(attempt),
                401,
                "a forged task {attempt} was not refused: {port}"
            );
            assert!(body(attempt).contains("serving token"), "{port}");
        }
        refusing_workers += 1;
    }
    assert!(
        refusing_workers >= 2,
        "both endpoints' workers were found and refused: {found}"
    );
}
