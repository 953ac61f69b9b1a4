//! A NATS outage as a client sees it: submissions flow while the server is killed (-9) and
//! restarted on the same port and store, once briefly and once for longer than the gateway's
//! patience. Every answer is checked against what the model actually ran, counted per
//! submission: an accepted task runs exactly once, a refusal never runs, and an unconfirmed
//! answer names a task that runs exactly once when resubmitted as the answer says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    self, API_KEY, Dev, Manifests, ModelProcess, Nats, Process, Receiver, RunLog, endpoint_yaml,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Submissions per second, each with its own `x`.
const RATE: u64 = 40;
/// The gateway's patience, in seconds: the long outage outlasts it, the short one does not.
const PATIENCE_SECONDS: u64 = 4;
const SHORT_OUTAGE: Duration = Duration::from_secs(2);
const LONG_OUTAGE: Duration = Duration::from_secs(9);
const SETTLE: Duration = Duration::from_secs(120);
/// Submissions sent at once just before each crash.
const BURST: usize = 300;
const BURST_HEAD_START: Duration = Duration::from_millis(40);

/// What the gateway answered to one submission.
enum Answer {
    Accepted(String),
    /// 503 naming the task: resubmitting under that id settles it.
    Unconfirmed(String),
    /// 503 without a task: it was not queued. Whether it said when to retry.
    Refused {
        retry_after: bool,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_submission_answered_with_an_error_runs_across_nats_restarts() {
    let mut nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    let extra = "  queueMessageTimeoutSeconds: 2\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("outage", "test-bundle", &receiver.url("/cb"), extra),
    );
    let patience = PATIENCE_SECONDS.to_string();
    let gateway = Arc::new(
        Dev::static_gateway_with(
            manifests.path(),
            &nats.url,
            &[("FERRY_SUBMIT_PATIENCE_SECONDS", &patience)],
        )
        .await,
    );
    let endpoint = gateway.endpoint_id("outage").await;
    let _dispatcher = Process::dispatcher(&nats.url, &[]);
    let runs = RunLog::new();
    let model = ModelProcess::start(&runs.recording("return 200, args['x'] * 2")).await;
    let _worker = Process::forwarder(
        &nats.url,
        &endpoint,
        &model.url,
        &[("FERRY_CONCURRENCY", "8")],
    );

    // A steady stream, and a burst at each crash: some submissions are then between writing
    // their record and publishing their task when the server dies.
    let submitter = Submitter::new(gateway.clone(), endpoint.clone());
    let steady = {
        let submitter = submitter.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            loop {
                ticks.tick().await;
                submitter.submit_next();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    for outage in [SHORT_OUTAGE, LONG_OUTAGE] {
        for _ in 0..BURST {
            submitter.submit_next();
        }
        // The burst reaches the gateway and is under way when the server dies.
        tokio::time::sleep(BURST_HEAD_START).await;
        nats.crash_and_restart(outage).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    steady.abort();
    let mut answers: HashMap<u64, Answer> = HashMap::new();
    let mut submissions = std::mem::take(&mut *submitter.submissions.lock().unwrap());
    while let Some(joined) = submissions.join_next().await {
        let (x, answer) = joined.expect("submission");
        answers.insert(x, answer);
    }
    let count = |wanted: fn(&Answer) -> bool| answers.values().filter(|a| wanted(a)).count();
    let (refused, unconfirmed) = (
        count(|a| matches!(a, Answer::Refused { .. })),
        count(|a| matches!(a, Answer::Unconfirmed(_))),
    );
    eprintln!(
        "{} submissions: {} accepted, {unconfirmed} unconfirmed, {refused} refused",
        answers.len(),
        count(|a| matches!(a, Answer::Accepted(_))),
    );
    assert!(
        refused + unconfirmed > 0,
        "the long outage outlasted the gateway's patience, so some submissions failed"
    );

    // Each unconfirmed task is resubmitted as its answer says, and then accepted under its id.
    let mut accepted: HashMap<String, u64> = HashMap::new();
    for (x, answer) in &answers {
        match answer {
            Answer::Accepted(task_id) => {
                accepted.insert(task_id.clone(), *x);
            }
            Answer::Unconfirmed(task_id) => {
                let again = support::eventually("resubmission accepted", SETTLE, || async {
                    match submit(&gateway, &endpoint, *x, Some(task_id)).await {
                        Answer::Accepted(id) => Some(id),
                        _ => None,
                    }
                })
                .await;
                assert_eq!(&again, task_id, "a resubmission returns the same task");
                accepted.insert(again, *x);
            }
            Answer::Refused { .. } => {}
        }
    }

    // Every accepted task ends with its one outcome and is called back.
    for (task_id, x) in &accepted {
        let task = gateway.finished_task(task_id, SETTLE).await;
        assert_eq!(
            task["status"], "SUCCESS",
            "task {task_id} (x = {x}): {task}"
        );
        assert_eq!(task["result"], json!({"result": x * 2}), "{task}");
    }
    support::eventually("every accepted task called back", SETTLE, || async {
        let called: std::collections::HashSet<String> = receiver
            .received()
            .iter()
            .filter_map(|r| r.body["task_id"].as_str().map(str::to_owned))
            .collect();
        accepted.keys().all(|id| called.contains(id)).then_some(())
    })
    .await;

    // Once nothing is queued or held: no refused submission ran, and each unconfirmed one ran
    // once, after the last crash. An accepted task runs at least once; one whose worker was
    // running it as the server died runs again (at-least-once delivery), so more is allowed.
    nats.wait_quiet(SETTLE).await;
    let mut runs_by_task: HashMap<String, usize> = HashMap::new();
    for (_, task_id) in runs.runs() {
        *runs_by_task.entry(task_id).or_default() += 1;
    }
    let mut wrong = Vec::new();
    let mut again = 0;
    for (x, answer) in &answers {
        let (task_id, what, right): (&str, _, fn(usize) -> bool) = match answer {
            Answer::Accepted(id) => (id, "accepted", |ran| ran >= 1),
            Answer::Unconfirmed(id) => (id, "unconfirmed, then resubmitted", |ran| ran == 1),
            Answer::Refused { .. } => continue,
        };
        let ran = runs_by_task.remove(task_id).unwrap_or(0);
        again += usize::from(ran > 1);
        if !right(ran) {
            wrong.push(format!("x = {x} ({what}) ran {ran} times"));
        }
    }
    // The runs left belong to tasks no client was given: refused submissions that ran.
    for (task_id, ran) in runs_by_task {
        wrong.push(format!("task {task_id}, refused, ran {ran} times"));
    }
    eprintln!("{again} accepted tasks ran again after a crash");
    assert!(
        wrong.is_empty(),
        "{} submissions ran wrongly: {wrong:?}",
        wrong.len()
    );
    assert_eq!(
        count(|a| matches!(a, Answer::Refused { retry_after: false })),
        0,
        "every refusal says when to retry"
    );
}

/// Submits `x` = 0, 1, 2, … in the background, keeping every answer.
#[derive(Clone)]
struct Submitter {
    gateway: Arc<Dev>,
    endpoint: String,
    next: Arc<std::sync::atomic::AtomicU64>,
    submissions: Arc<std::sync::Mutex<tokio::task::JoinSet<(u64, Answer)>>>,
}

impl Submitter {
    fn new(gateway: Arc<Dev>, endpoint: String) -> Self {
        Submitter {
            gateway,
            endpoint,
            next: Default::default(),
            submissions: Default::default(),
        }
    }

    fn submit_next(&self) {
        let x = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (gateway, endpoint) = (self.gateway.clone(), self.endpoint.clone());
        let submission = async move { (x, submit(&gateway, &endpoint, x, None).await) };
        self.submissions.lock().unwrap().spawn(submission);
    }
}

/// One submission of `x`, with `Idempotency-Key: key` when given, retried on nothing.
async fn submit(gateway: &Dev, endpoint: &str, x: u64, key: Option<&str>) -> Answer {
    let mut request = gateway
        .http
        .post(format!(
            "{}/v1/async-tasks?model_endpoint_id={endpoint}",
            gateway.base
        ))
        .basic_auth(API_KEY, Some(""))
        .json(&json!({"args": {"x": x}}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let task_id = body["task_id"].as_str().map(str::to_owned);
    match (status, task_id) {
        (StatusCode::OK, Some(task_id)) => Answer::Accepted(task_id),
        (StatusCode::SERVICE_UNAVAILABLE, Some(task_id)) => {
            assert!(retry_after, "a 503 says when to retry: {body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("Idempotency-Key: {task_id}")),
                "{body}"
            );
            Answer::Unconfirmed(task_id)
        }
        (StatusCode::SERVICE_UNAVAILABLE, None) => Answer::Refused { retry_after },
        (status, _) => panic!("submission of x = {x} answered {status}: {body}"),
    }
}
