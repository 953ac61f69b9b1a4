//! Autoscaling in `ferry dev`: an endpoint idles at zero and wakes on its first task, a burst
//! scales to `maxWorkers` and back after the scale-down delay, and scaling in during work loses
//! nothing and runs nothing twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn workers(dev: &Dev, name: &str) -> (i64, i64, String) {
    let (_, listing) = dev.get(&format!("/v1/model-endpoints?name={name}")).await;
    let view = &listing["model_endpoints"][0];
    let state = &view["deployment_state"];
    let available = state["available_workers"].as_i64().unwrap_or(-1);
    let total = available + state["unavailable_workers"].as_i64().unwrap_or(0);
    (
        available,
        total,
        view["status"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The `slow` model: sleeps `args.sleep` seconds and answers `args.x * 10`.
const SLOW_MODEL: &str = "time.sleep(args.get('sleep', 0))\nreturn 200, args['x'] * 10";

/// `ferry dev` with a 2 s scale-down delay (on the server at `nats_url`, else its own), serving
/// `endpoint` (named `name`) of the `slow` bundle running `model`.
async fn start_slow_on(
    name: &str,
    endpoint: &str,
    model: &str,
    nats_url: Option<&str>,
) -> (Manifests, Dev, String) {
    let manifests = Manifests::with_example_bundle();
    manifests.add("slow.yaml", &python_bundle_yaml("slow", model));
    manifests.add("endpoint.yaml", endpoint);
    let flags = ["--scale-down-delay-seconds", "2"];
    let dev = Dev::start_with(manifests.path(), nats_url, &flags).await;
    let endpoint = dev.endpoint_id(name).await;
    (manifests, dev, endpoint)
}

/// [`start_slow_on`] its own server, running [`SLOW_MODEL`].
async fn start_slow(name: &str, endpoint: &str) -> (Manifests, Dev, String) {
    start_slow_on(name, endpoint, SLOW_MODEL, None).await
}

/// An async endpoint `scaled` calling back to `receiver`.
async fn start(receiver: &Receiver, spec: &str) -> (Manifests, Dev, String) {
    let endpoint = endpoint_yaml("scaled", "slow", &receiver.url("/cb"), spec);
    start_slow("scaled", &endpoint).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_zero_wakes_on_its_first_task_and_returns_to_zero() {
    let receiver = Receiver::start().await;
    let (_m, dev, endpoint) = start(&receiver, "  minWorkers: 0\n  maxWorkers: 2\n").await;
    let idle = eventually("idle at zero and READY", WAIT, || async {
        let (available, total, status) = workers(&dev, "scaled").await;
        (total == 0 && status == "READY").then_some(available)
    })
    .await;
    assert_eq!(idle, 0);

    let submitted = Instant::now();
    let task = dev.submit(&endpoint, json!({"args": {"x": 4}})).await;
    let done = dev.finished_task(&task, WAIT).await;
    assert_eq!(done["result"]["result"], 40);
    eprintln!("woke and answered in {:?}", submitted.elapsed());

    eventually("back to zero after the delay", WAIT, || async {
        let (_, total, _) = workers(&dev, "scaled").await;
        (total == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_to_max_and_scaling_in_loses_and_repeats_nothing() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let runs = RunLog::new();
    let spec = "  minWorkers: 1\n  maxWorkers: 3\n  perWorker: 1\n";
    let endpoint = endpoint_yaml("scaled", "slow", &receiver.url("/cb"), spec);
    let model = runs.recording(SLOW_MODEL);
    let (_m, dev, endpoint) = start_slow_on("scaled", &endpoint, &model, Some(&nats.url)).await;
    dev.ready_endpoint("scaled").await;

    let burst = Instant::now();
    let mut tasks = Vec::new();
    for x in 0..9 {
        tasks.push(
            dev.submit(&endpoint, json!({"args": {"x": x, "sleep": 0.7}}))
                .await,
        );
    }
    eventually("three workers for the burst", WAIT, || async {
        let (available, _, _) = workers(&dev, "scaled").await;
        (available == 3).then_some(())
    })
    .await;
    eprintln!(
        "three workers ready {:?} after the burst began",
        burst.elapsed()
    );
    for task in &tasks {
        assert_eq!(dev.finished_task(task, WAIT).await["status"], "SUCCESS");
    }
    eventually("back to one worker after the delay", WAIT, || async {
        let (_, total, _) = workers(&dev, "scaled").await;
        (total == 1).then_some(())
    })
    .await;

    let callbacks = receiver.wait_for(tasks.len(), WAIT).await;
    nats.wait_quiet(WAIT).await;
    let mut per_task: HashMap<String, Vec<Value>> = HashMap::new();
    for callback in receiver.received() {
        per_task
            .entry(callback.body["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(callback.body["result"].clone());
    }
    assert_eq!(callbacks.len(), tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        assert_eq!(runs.runs_of(task).len(), 1, "task {index} ran once");
        assert_eq!(
            per_task[task],
            vec![json!(index as u64 * 10)],
            "task {index} was called back once with its own result"
        );
    }
    assert_eq!(runs.runs().len(), tasks.len(), "no other run");
}

/// A sync endpoint `served`.
async fn start_sync(spec: &str) -> (Manifests, Dev, String) {
    let endpoint = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: served\nspec:\n  bundle: slow\n  endpointType: sync\n  labels: {{team: t, product: p}}\n{spec}"
    );
    start_slow("served", &endpoint).await
}

/// The value of the metric line that starts with `series`.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_endpoint_at_zero_wakes_on_its_first_request_and_returns_to_zero() {
    let (_m, dev, endpoint) = start_sync("  minWorkers: 0\n  maxWorkers: 2\n").await;
    eventually("idle at zero and READY", WAIT, || async {
        let (_, total, status) = workers(&dev, "served").await;
        (total == 0 && status == "READY").then_some(())
    })
    .await;

    let submitted = Instant::now();
    let path = format!("/v1/sync-tasks?model_endpoint_id={endpoint}");
    let (status, answer) = dev.post(&path, &json!({"args": {"x": 4}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], json!({"result": 40}));
    eprintln!(
        "sync request woke the endpoint and was answered in {:?}",
        submitted.elapsed()
    );

    let metrics = dev.metrics().await;
    assert_eq!(
        metric(&metrics, "ferry_autoscaler_wake_seconds_count"),
        Some(1.0),
        "{metrics}"
    );
    eventually("back to zero after the delay", WAIT, || async {
        let (_, total, _) = workers(&dev, "served").await;
        (total == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_requests_scale_out_to_max_wait_for_workers_and_scale_back() {
    let spec = "  minWorkers: 1\n  maxWorkers: 3\n  perWorker: 1\n";
    let (_m, dev, endpoint) = start_sync(spec).await;
    dev.ready_endpoint("served").await;
    let path = format!("/v1/sync-tasks?model_endpoint_id={endpoint}");

    let burst = Instant::now();
    let requests = (0..3).map(|x| {
        let (dev, path) = (&dev, &path);
        async move {
            dev.post(path, &json!({"args": {"x": x, "sleep": 1.5}}))
                .await
        }
    });
    let scaled_out = async {
        let series = format!(
            "ferry_autoscaler_ready_workers{{endpoint=\"default/served\",endpoint_id=\"{endpoint}\"}}"
        );
        eventually("three ready workers", WAIT, || async {
            (metric(&dev.metrics().await, &series) == Some(3.0)).then_some(())
        })
        .await;
        eprintln!(
            "three workers ready {:?} after the burst began",
            burst.elapsed()
        );
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(requests), scaled_out);
    for (x, (status, answer)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "request {x} waited for a worker: {answer}");
        assert_eq!(answer["result"], json!({"result": x * 10}));
    }
    eventually("back to one worker after the delay", WAIT, || async {
        let (_, total, _) = workers(&dev, "served").await;
        (total == 1).then_some(())
    })
    .await;
}
