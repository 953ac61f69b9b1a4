//! Autoscaling in `ferry dev`: an endpoint idles at zero and wakes on its first task, a burst
//! scales to `maxWorkers` and back after the scale-down delay, and scaling in during work loses
//! nothing and runs nothing twice.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

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

async fn start(receiver: &Receiver, spec: &str) -> (Manifests, Dev, String) {
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "slow.yaml",
        &python_bundle_yaml(
            "slow",
            "time.sleep(args.get('sleep', 0))\nreturn 200, args['x'] * 10",
        ),
    );
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("scaled", "slow", &receiver.url("/cb"), spec),
    );
    let dev = Dev::start_with(manifests.path(), None, &["--scale-down-delay-seconds", "2"]).await;
    let endpoint = dev.endpoint_id("scaled").await;
    (manifests, dev, endpoint)
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
    let receiver = Receiver::start().await;
    let spec = "  minWorkers: 1\n  maxWorkers: 3\n  perWorker: 1\n";
    let (_m, dev, endpoint) = start(&receiver, spec).await;
    dev.ready_endpoint("scaled").await;

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
    for task in &tasks {
        assert_eq!(dev.finished_task(task, WAIT).await["status"], "SUCCESS");
    }
    eventually("back to one worker after the delay", WAIT, || async {
        let (_, total, _) = workers(&dev, "scaled").await;
        (total == 1).then_some(())
    })
    .await;

    let callbacks = receiver.wait_for(tasks.len(), WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut per_task: HashMap<String, Vec<Value>> = HashMap::new();
    for callback in receiver.received() {
        per_task
            .entry(callback.body["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(callback.body["result"].clone());
    }
    assert_eq!(callbacks.len(), tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        assert_eq!(
            per_task[task],
            vec![json!(index as u64 * 10)],
            "task {index} ran once with its own result"
        );
    }
}
