//! Faults under load: real processes are killed while tasks flow, and every accepted task is
//! checked afterwards — it has one final outcome, its callbacks report that same outcome, and
//! nothing accepted is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    self, Answer, Dev, Manifests, ModelProcess, Nats, Process, Receiver, RunLog, endpoint_yaml,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TASKS: usize = 1800;
/// Submissions per second: steady load, as a service would see it.
const RATE: u64 = 150;
const SETTLE: Duration = Duration::from_secs(120);

/// The topology of a cluster on one machine: a standalone nats-server with a file store, a
/// gateway, two workers (forwarder + model) and a dispatcher, each its own process with its own
/// NATS connection, so each reconnects on its own after the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nats_server_loses_no_accepted_task_and_no_outcome_changes() {
    let mut nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    // A short lease, so a task whose worker lost its outcome to the outage comes back quickly.
    let extra = "  queueMessageTimeoutSeconds: 2\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("doubler", "test-bundle", &receiver.url("/cb"), extra),
    );
    let dev = Arc::new(Dev::static_gateway(manifests.path(), &nats.url).await);
    let endpoint = dev.endpoint_id("doubler").await;
    let _dispatcher = Process::spawn(
        &["dispatcher"],
        &[
            ("FERRY_NATS_URL", &nats.url),
            ("FERRY_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8"),
        ],
    );
    // Every third task takes long enough to be recorded as STARTED first.
    let model_body = "if args['x'] % 3 == 0:\n    time.sleep(0.3)\nif args['x'] % 7 == 0:\n    return 500, {'error': 'sevens fail'}\nreturn 200, args['x'] * 2";
    let runs = RunLog::new();
    let model_body = runs.recording(model_body);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let model = ModelProcess::start(&model_body).await;
        let forwarder = Process::spawn(
            &["forwarder"],
            &[
                ("FERRY_NATS_URL", &nats.url),
                ("FERRY_ENDPOINT_ID", &endpoint),
                ("FERRY_MODEL_URL", &model.url),
                ("FERRY_PREDICT_ROUTE", "/"),
                ("FERRY_HEALTHCHECK_ROUTE", "/"),
                ("FERRY_CONCURRENCY", "8"),
            ],
        );
        workers.push((model, forwarder));
    }

    // kill -9 of the server a third of the way in, back after a few seconds; submissions go on.
    let crash = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(TASKS as u64 * 1000 / RATE / 3)).await;
        nats.crash_and_restart(Duration::from_secs(5)).await;
        nats
    });
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut submissions = tokio::task::JoinSet::new();
    for x in 0..TASKS {
        ticks.tick().await;
        spawn_submission(&mut submissions, &dev, &endpoint, x);
    }
    let nats = crash.await.expect("crash and restart");
    let mut accepted: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    while let Some(result) = submissions.join_next().await {
        match result.expect("submission task") {
            (x, Some(task_id)) => {
                accepted.insert(task_id, x);
            }
            (_, None) => refused += 1,
        }
    }
    assert!(
        accepted.len() > TASKS / 2,
        "most submissions were accepted ({} of {}, {refused} refused)",
        accepted.len(),
        TASKS
    );

    // Every accepted task reaches a final status, the one its model run deserves.
    let mut finals: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while finals.len() < accepted.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} accepted tasks final after {SETTLE:?}",
            finals.len(),
            accepted.len()
        );
        for (task_id, x) in &accepted {
            if finals.contains_key(task_id) {
                continue;
            }
            let task = dev.task(task_id).await;
            let status = task["status"].as_str().unwrap_or_default().to_owned();
            if status == "SUCCESS" || status == "FAILURE" {
                let expected = if x % 7 == 0 { "FAILURE" } else { "SUCCESS" };
                assert_eq!(status, expected, "task {task_id} (x = {x}): {task}");
                if status == "SUCCESS" {
                    assert_eq!(task["result"], json!({"result": x * 2}), "{task}");
                }
                finals.insert(task_id.clone(), status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every accepted task is called back, and each of its callbacks reports that outcome.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let callbacks = loop {
        let mut by_task: HashMap<String, Vec<Value>> = HashMap::new();
        for received in receiver.received() {
            let task_id = received.body["task_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            by_task.entry(task_id).or_default().push(received.body);
        }
        let missing: Vec<&String> = accepted
            .keys()
            .filter(|id| !by_task.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break by_task;
        }
        if tokio::time::Instant::now() > deadline {
            let first = dev.task(missing[0]).await;
            panic!(
                "{} accepted tasks have no callback after {SETTLE:?}; one of them: {first}",
                missing.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (task_id, status) in &finals {
        for body in &callbacks[task_id] {
            assert_eq!(
                body["status"], *status,
                "task {task_id}: its callback reports the outcome GET answers: {body}"
            );
        }
    }
    // Polled again after the dust settles, no record went backwards.
    for (task_id, status) in &finals {
        assert_eq!(dev.task(task_id).await["status"], *status, "task {task_id}");
    }
    // Every accepted task reached the model (a run whose outcome the outage cut off may have
    // been repeated).
    let mut runs_of: HashMap<String, usize> = HashMap::new();
    for (_, task_id) in runs.runs() {
        *runs_of.entry(task_id).or_default() += 1;
    }
    for task_id in accepted.keys() {
        assert!(runs_of.contains_key(task_id), "task {task_id} never ran");
    }
    let repeated = runs_of.values().filter(|runs| **runs > 1).count();
    eprintln!("{repeated} of {} tasks ran more than once", accepted.len());
    // The processes stop while their server still runs, as they would in a cluster.
    drop((workers, _dispatcher, dev));
    drop(nats);
}

fn spawn_submission(
    submissions: &mut tokio::task::JoinSet<(u64, Option<String>)>,
    dev: &Arc<Dev>,
    endpoint: &str,
    x: usize,
) {
    let (dev, endpoint) = (dev.clone(), endpoint.to_owned());
    submissions.spawn(async move {
        let body = json!({"args": {"x": x}, "return_pickled": false});
        let path = format!("/v1/async-tasks?model_endpoint_id={endpoint}");
        let (status, answer) = dev.post(&path, &body).await;
        let accepted = status == StatusCode::OK;
        (
            x as u64,
            accepted.then(|| answer["task_id"].as_str().unwrap().to_owned()),
        )
    });
}

/// SIGTERM to a worker holding one task and a prefetched one: it finishes the first, hands the
/// second back at once, and exits; another worker runs it long before the ack wait would have
/// released it. The gateway is static, so no local worker can take a task in between; each
/// task runs once, the first on the stopping worker's model, the rest on the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_back_what_it_did_not_start() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    let ack_wait_seconds = 120;
    let extra = format!("  queueMessageTimeoutSeconds: {ack_wait_seconds}\n");
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("drain", "test-bundle", &receiver.url("/cb"), &extra),
    );
    let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
    let endpoint = gateway.endpoint_id("drain").await;
    let _dispatcher = Process::dispatcher(&nats.url, &[]);
    let runs = RunLog::new();
    let model_body = runs.recording("time.sleep(args['sleep'])\nreturn 200, args['x'] * 10");
    let model = ModelProcess::start(&model_body).await;
    let worker = |model_url: &str| {
        Process::spawn(
            &["forwarder"],
            &[
                ("FERRY_NATS_URL", &nats.url),
                ("FERRY_ENDPOINT_ID", &endpoint),
                ("FERRY_MODEL_URL", model_url),
                ("FERRY_PREDICT_ROUTE", "/"),
                ("FERRY_HEALTHCHECK_ROUTE", "/"),
            ],
        )
    };
    let mut stopping = worker(&model.url);
    let mut tasks = Vec::new();
    for x in 0..3 {
        let body = json!({"args": {"x": x, "sleep": 2}});
        tasks.push(gateway.submit(&endpoint, body).await);
    }
    support::eventually("the first task started", SETTLE, || async {
        (gateway.task(&tasks[0]).await["status"] == "STARTED").then_some(())
    })
    .await;
    stopping.signal("-TERM");
    let status = stopping.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit: {status}");
    assert_eq!(
        gateway.task(&tasks[0]).await["status"],
        "SUCCESS",
        "finished before exiting"
    );

    let next_model = ModelProcess::start(&model_body).await;
    let _next = worker(&next_model.url);
    let deadline = Duration::from_secs(ack_wait_seconds / 4);
    for (x, task_id) in tasks.iter().enumerate() {
        let task = gateway.finished_task(task_id, deadline).await;
        assert_eq!(task["result"], json!({"result": x * 10}), "{task}");
    }
    nats.wait_quiet(deadline).await;
    for (x, task_id) in tasks.iter().enumerate() {
        let ran_on = if x == 0 {
            model.pid()
        } else {
            next_model.pid()
        };
        assert_eq!(runs.runs_of(task_id), vec![ran_on], "task {x} ran once");
        let callbacks = receiver.received();
        let calls = callbacks
            .iter()
            .filter(|c| c.body["task_id"] == task_id.as_str());
        assert_eq!(calls.count(), 1, "task {x} was called back once");
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

/// kill -9 of one worker's model under a steady stream of tasks, restarted after about a second,
/// then killed again and restarted after a longer outage. Its forwarder pauses (not ready), hands
/// back what the model could not take without spending attempts, and resumes when the model
/// answers again; the other worker takes the tasks meanwhile. Every task ends with the outcome
/// its model answered — SUCCESS, or FAILURE with the model's 500 for the ones that fail — and
/// none ran twice unless a run was cut off by a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_pauses_its_worker_and_fails_no_task() {
    const OUTAGE_TASKS: u64 = 1200;
    const OUTAGE_RATE: u64 = 60;
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("outage", "test-bundle", &receiver.url("/cb"), ""),
    );
    let gateway = Arc::new(Dev::static_gateway(manifests.path(), &nats.url).await);
    let endpoint = gateway.endpoint_id("outage").await;
    // Each model run is logged with the pid of the model process that ran it.
    let runs = tempfile::NamedTempFile::new().unwrap();
    let model_body = format!(
        "with open({:?}, 'a') as log:\n    log.write(f\"{{os.getpid()}} {{args['x']}}\\n\")\ntime.sleep(0.05)\nif args['x'] % 50 == 7:\n    return 500, {{'error': 'sevens fail'}}\nreturn 200, args['x'] * 2",
        runs.path().display().to_string()
    );
    let admin = format!("127.0.0.1:{}", support::free_port());
    let worker = |model: &ModelProcess, admin: Option<&str>| {
        let mut env = vec![
            ("FERRY_NATS_URL", nats.url.as_str()),
            ("FERRY_ENDPOINT_ID", endpoint.as_str()),
            ("FERRY_MODEL_URL", model.url.as_str()),
            ("FERRY_PREDICT_ROUTE", "/"),
            ("FERRY_HEALTHCHECK_ROUTE", "/"),
            ("FERRY_CONCURRENCY", "8"),
        ];
        env.extend(admin.map(|admin| ("FERRY_ADMIN_LISTEN", admin)));
        Process::spawn(&["forwarder"], &env)
    };
    let mut flaky = ModelProcess::start(&model_body).await;
    let steady = ModelProcess::start(&model_body).await;
    let _flaky_worker = worker(&flaky, Some(&admin));
    let _steady_worker = worker(&steady, None);
    let readyz = format!("http://{admin}/readyz");
    wait_for_readyz(&readyz, true).await;

    let stream_for = Duration::from_secs(OUTAGE_TASKS / OUTAGE_RATE);
    let submitting = {
        let (gateway, endpoint) = (gateway.clone(), endpoint.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / OUTAGE_RATE));
            let mut submissions = tokio::task::JoinSet::new();
            for x in 0..OUTAGE_TASKS as usize {
                ticks.tick().await;
                spawn_submission(&mut submissions, &gateway, &endpoint, x);
            }
            submissions.join_all().await
        })
    };
    let mut killed = Vec::new();
    // A short outage a fifth of the way in, a longer one from two fifths on.
    tokio::time::sleep(stream_for / 5).await;
    killed.push(flaky.pid());
    flaky.crash().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    flaky.restart().await;
    tokio::time::sleep(stream_for / 5).await;
    killed.push(flaky.pid());
    flaky.crash().await;
    wait_for_readyz(&readyz, false).await;
    tokio::time::sleep(stream_for / 4).await;
    flaky.restart().await;
    wait_for_readyz(&readyz, true).await;
    let resumed_pid = flaky.pid();

    let mut accepted: HashMap<String, u64> = HashMap::new();
    for (x, task_id) in submitting.await.expect("submissions") {
        let task_id = task_id.unwrap_or_else(|| panic!("submission {x} refused"));
        accepted.insert(task_id, x);
    }
    for (task_id, x) in &accepted {
        let task = gateway.finished_task(task_id, SETTLE).await;
        if x % 50 == 7 {
            assert_eq!(task["status"], "FAILURE", "x = {x}: {task}");
            assert_eq!(task["status_code"], 500, "x = {x}: {task}");
            assert_eq!(
                task["result"], "model answered 500 Internal Server Error",
                "x = {x}: the model's reason: {task}"
            );
        } else {
            assert_eq!(task["status"], "SUCCESS", "x = {x}: {task}");
            assert_eq!(task["result"], json!({"result": x * 2}), "{task}");
        }
    }

    // Runs per task: one, and more only when a run was cut off by a kill.
    let log = std::fs::read_to_string(runs.path()).unwrap();
    let mut runs_of: HashMap<u64, Vec<u32>> = HashMap::new();
    for line in log.lines() {
        let (pid, x) = line.split_once(' ').expect("pid and x");
        runs_of
            .entry(x.parse().unwrap())
            .or_default()
            .push(pid.parse().unwrap());
    }
    for x in accepted.values() {
        let pids = runs_of.get(x).map(Vec::as_slice).unwrap_or_default();
        let cut_off = pids.iter().filter(|pid| killed.contains(pid)).count();
        assert!(
            !pids.is_empty() && pids.len() - cut_off <= 1,
            "task x = {x} ran on model processes {pids:?} (killed: {killed:?})"
        );
    }
    let resumed_runs = runs_of
        .values()
        .flatten()
        .filter(|pid| **pid == resumed_pid)
        .count();
    assert!(
        resumed_runs > 0,
        "the paused worker took tasks again once its model was back"
    );
}

/// Polls a forwarder's `/readyz` until it reports `ready` (200) or not (503).
async fn wait_for_readyz(url: &str, ready: bool) {
    let http = support::http_client();
    let what = format!("{url} ready = {ready}");
    support::eventually(&what, SETTLE, || async {
        let status = http.get(url).send().await.ok()?.status();
        (status.is_success() == ready).then_some(())
    })
    .await;
}
