//! Faults under load: a scenario runner over one topology (`support::topology`) kills,
//! stops or starves one piece while a steady stream of async tasks with callbacks flows, and
//! one checker counts accepted / errors / final results / callbacks / duplicates / lost / model
//! runs per task id. Every scenario runs on a single nats-server; the nats-server kill and the
//! dispatcher kill run again on a 3-node JetStream cluster with every stream and bucket at 3
//! replicas. The table (one row per scenario) is printed; a violation of any scenario fails its
//! suite. `FAULTS_ONLY=<part of a scenario name>` runs only the matching scenarios.
//! Beside them, the dispatcher's own fault handling is tested in detail.

mod checker;
mod load;
mod scenarios;

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{
    self, Answer, Dev, Manifests, ModelProcess, Nats, Process, Receiver, endpoint_yaml,
};
use checker::Row;
use reqwest::StatusCode;
use scenarios::{EVERY_FAULT, Fault};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_on_one_server_loses_nothing_and_runs_nothing_twice_uncut() {
    run_suite("one nats-server", false, &EVERY_FAULT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_a_three_node_cluster_loses_nothing_and_runs_nothing_twice() {
    run_suite(
        "3-node JetStream cluster, 3 replicas",
        true,
        &[Fault::NatsKill, Fault::DispatcherKill],
    )
    .await;
}

/// Runs each scenario in turn, prints the table, then fails on any violation.
async fn run_suite(topology: &str, cluster: bool, faults: &[Fault]) {
    let only = std::env::var("FAULTS_ONLY").unwrap_or_default();
    let mut rows: Vec<Row> = Vec::new();
    for fault in faults.iter().filter(|f| f.name().contains(only.as_str())) {
        let scenario = tokio::spawn(scenarios::run(*fault, cluster));
        let row = scenario.await.unwrap_or_else(|failed| Row {
            scenario: fault.name().to_owned(),
            violations: vec![format!("the scenario failed: {}", panic_message(failed))],
            ..Row::default()
        });
        rows.push(row);
    }
    eprintln!("faults on {topology}:\n{}", checker::table(&rows));
    let violations: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            row.violations
                .iter()
                .map(|v| format!("{}: {v}", row.scenario))
        })
        .collect();
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

fn panic_message(failed: tokio::task::JoinError) -> String {
    match failed.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
        Err(failed) => failed.to_string(),
    }
}

/// kill -9 of a dispatcher while its attempt hangs on the receiver: the job's lease runs out
/// within seconds and a new dispatcher makes the attempt again, long before the attempt's own
/// (5-minute) timeout or the old 330 s lease would have let it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_whose_dispatcher_was_killed_mid_attempt_is_retried_within_seconds() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    receiver.script(vec![Answer {
        status: StatusCode::OK,
        retry_after: None,
        delay: Duration::from_secs(600),
    }]);
    let manifests = Manifests::with_example_bundle();
    let extra = "  callbacks:\n    attemptTimeoutSeconds: 300\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("lease", "test-bundle", &receiver.url("/cb"), extra),
    );
    let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
    let endpoint = gateway.endpoint_id("lease").await;
    let dispatcher = || Process::dispatcher(&nats.url, &[]);
    let mut doomed = dispatcher();
    let model = ModelProcess::start("return 200, args['x'] * 10").await;
    let _worker = Process::forwarder(&nats.url, &endpoint, &model.url, &[]);
    let task_id = gateway.submit(&endpoint, json!({"args": {"x": 4}})).await;
    receiver.wait_for(1, SETTLE).await;
    doomed.signal("-KILL");
    doomed.wait_exit(Duration::from_secs(10)).await;

    let _replacement = dispatcher();
    let received = receiver.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(received[1].body["task_id"], task_id.as_str());
    assert_eq!(received[1].body["result"], 40);
    support::eventually("callback DELIVERED", SETTLE, || async {
        (gateway.task(&task_id).await["callback"]["state"] == "DELIVERED").then_some(())
    })
    .await;
}

/// SIGTERM to a dispatcher with two attempts under way and two jobs waiting for a slot of
/// their receiver: it hands the waiting jobs back at once, finishes the attempt that is
/// answered within its shutdown grace, cuts the one that is not short, records both and exits.
/// A replacement delivers the rest within seconds; the delivered callback is never POSTed
/// again and every task's history keeps each of its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_dispatcher_hands_back_waiting_jobs_and_records_what_it_attempted() {
    const TASKS: usize = 10;
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    let extra = "  callbacks:\n    attemptTimeoutSeconds: 300\n    retryScheduleSeconds: [1]\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("handback", "test-bundle", &receiver.url("/cb"), extra),
    );
    let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
    let endpoint = gateway.endpoint_id("handback").await;
    let model = ModelProcess::start("return 200, args['x']").await;
    let _worker = Process::forwarder(&nats.url, &endpoint, &model.url, &[]);
    let mut tasks = Vec::new();
    for x in 0..TASKS {
        tasks.push(gateway.submit(&endpoint, json!({"args": {"x": x}})).await);
    }
    for task_id in &tasks {
        gateway.finished_task(task_id, SETTLE).await;
    }
    // The first request is answered within the grace, the second not before the test ends.
    let answer_after = |seconds| Answer {
        status: StatusCode::OK,
        retry_after: None,
        delay: Duration::from_secs(seconds),
    };
    receiver.script(vec![answer_after(1), answer_after(600)]);
    let flags = [
        "--per-host-concurrency",
        "2",
        "--dispatch-concurrency",
        "4",
        "--shutdown-grace-seconds",
        "3",
    ];
    let dispatcher = || Process::dispatcher(&nats.url, &flags);
    let mut stopping = dispatcher();
    let under_way = receiver.wait_for(2, SETTLE).await;
    stopping.signal("-TERM");
    let status = stopping.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit: {status}");
    let task_of =
        |received: &support::Received| received.body["task_id"].as_str().unwrap().to_owned();
    let (finished, cut) = (task_of(&under_way[0]), task_of(&under_way[1]));
    let callback = gateway.task(&finished).await["callback"].clone();
    assert_eq!(
        callback["state"], "DELIVERED",
        "finished before exiting: {callback}"
    );
    let callback = gateway.task(&cut).await["callback"].clone();
    assert_eq!(callback["state"], "PENDING", "{callback}");
    let error = callback["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("cut short"),
        "the cut attempt is recorded: {callback}"
    );

    // Every task once, and the cut one again: well before the 15 s lease of a job that was
    // not handed back would have run out.
    let _replacement = dispatcher();
    receiver.wait_for(TASKS + 1, Duration::from_secs(10)).await;
    for task_id in &tasks {
        support::eventually("callback DELIVERED", SETTLE, || async {
            (gateway.task(task_id).await["callback"]["state"] == "DELIVERED").then_some(())
        })
        .await;
    }
    let mut posts: HashMap<String, usize> = HashMap::new();
    for received in receiver.received() {
        *posts.entry(task_of(&received)).or_default() += 1;
    }
    for task_id in &tasks {
        let expected = if *task_id == cut { 2 } else { 1 };
        assert_eq!(posts[task_id], expected, "POSTs of task {task_id}");
        let attempts = gateway.task(task_id).await["callback"]["attempts"].clone();
        assert_eq!(
            attempts.as_array().map(Vec::len),
            Some(expected),
            "every attempt of task {task_id} is kept: {attempts}"
        );
    }
}
