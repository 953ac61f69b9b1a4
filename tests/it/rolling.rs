//! A rollout of every role under steady load: async tasks and sync requests flow through two
//! gateways serving fixed manifests, two async workers, two serving workers and a dispatcher,
//! while a gateway, an async worker, a serving worker and the dispatcher are each stopped with
//! SIGTERM and replaced. The client acts as a load balancer would: it sends to the gateways in
//! rotation, stops sending to one whose `/readyz` fails, and resends what the README documents
//! as retryable (a refused connection; 503 with `Retry-After`) to the next one, async tasks
//! under the same `Idempotency-Key`. Counted, by each model's own log of its runs: nothing
//! lost, no async task run twice, no callback sent twice, no answer wrong, no other failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
/// How long the load runs between two steps of the rollout.
const BETWEEN_STEPS: Duration = Duration::from_secs(2);

/// The gateways a load balancer would send to now.
#[derive(Clone, Default)]
struct Targets(Arc<Mutex<Vec<String>>>);

impl Targets {
    fn pick(&self, n: usize) -> String {
        let targets = self.0.lock().unwrap();
        targets[n % targets.len()].clone()
    }
    fn add(&self, base: &str) {
        self.0.lock().unwrap().push(base.to_owned());
    }
    fn remove(&self, base: &str) {
        self.0.lock().unwrap().retain(|known| known != base);
    }
}

/// What the load client saw.
#[derive(Default)]
struct Seen {
    /// Async request number → task id.
    accepted: BTreeMap<u64, String>,
    /// Sync request number → how many retryable answers it got before its answer.
    answered: BTreeMap<u64, u32>,
    retried: u32,
    /// Anything else: never expected.
    failures: Vec<String>,
}

enum Outcome {
    Done(Value),
    Retryable,
    Failed(String),
}

async fn send(http: &reqwest::Client, url: String, n: u64, key: Option<String>) -> Outcome {
    let mut request = http
        .post(url)
        .basic_auth(API_KEY, Some(""))
        .json(&json!({"args": {"n": n}}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_connect() => return Outcome::Retryable,
        Err(error) => return Outcome::Failed(format!("request {n}: {error}")),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200 => Outcome::Done(body),
        503 if retry_after => Outcome::Retryable,
        _ => Outcome::Failed(format!("request {n}: {status} {body}")),
    }
}

/// Sends requests `n = 0, 1, …` every `every` until `stop`, each until it gets a final answer.
async fn load(
    targets: Targets,
    sync_path: Option<String>,
    async_path: Option<String>,
    every: Duration,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let http = http_client();
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let mut retries = 0;
        loop {
            let base = targets.pick(n as usize + retries as usize);
            let outcome = match (&sync_path, &async_path) {
                (Some(path), _) => send(&http, format!("{base}{path}"), n, None).await,
                (_, Some(path)) => {
                    send(&http, format!("{base}{path}"), n, Some(format!("k-{n}"))).await
                }
                _ => unreachable!("a path is given"),
            };
            let mut seen = seen.lock().unwrap();
            match outcome {
                Outcome::Retryable => {
                    seen.retried += 1;
                    retries += 1;
                    continue;
                }
                Outcome::Failed(failure) => seen.failures.push(failure),
                Outcome::Done(body) if sync_path.is_some() => {
                    if body["result"]["result"] != json!(n * 10) {
                        seen.failures.push(format!("sync {n} answered {body}"));
                    }
                    seen.answered.insert(n, retries);
                }
                Outcome::Done(body) => {
                    let task = body["task_id"].as_str().unwrap_or_default().to_owned();
                    seen.accepted.insert(n, task);
                }
            }
            break;
        }
        n += 1;
        tokio::time::sleep(every).await;
    }
}

/// Request numbers a model ran, one per line of its log, with how often each ran.
fn runs(log: &Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts
            .entry(line.parse().expect("a request number"))
            .or_default() += 1;
    }
    counts
}

/// A model that logs each run's request number to `log`, takes 50 ms, and answers n × 10.
async fn logging_model(log: &Path) -> ModelProcess {
    ModelProcess::start(&format!(
        "with open({:?}, 'a') as runs:\n    runs.write(str(args['n']) + '\\n')\ntime.sleep(0.05)\nreturn 200, args['n'] * 10",
        log.display().to_string()
    ))
    .await
}

/// Stops `process` with SIGTERM and expects a clean exit.
async fn stop(process: &mut Process, what: &str) {
    process.signal("-TERM");
    let exit = process.wait_exit(WAIT).await;
    assert!(exit.success(), "{what} exits cleanly: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_every_role_under_load_loses_repeats_and_fails_nothing() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let logs = tempfile::tempdir().unwrap();
    let (async_log, sync_log): (PathBuf, PathBuf) =
        (logs.path().join("async"), logs.path().join("sync"));
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "work.yaml",
        &endpoint_yaml("work", "test-bundle", &receiver.url("/cb"), ""),
    );
    manifests.add(
        "served.yaml",
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: served\nspec:\n  bundle: test-bundle\n  endpointType: sync\n  labels: {team: t, product: p}\n",
    );
    let gateway_settings = [
        ("FERRY_GATEWAY_SHUTDOWN_DELAY_SECONDS", "1"),
        ("FERRY_GATEWAY_REQUEST_GRACE_SECONDS", "10"),
    ];
    let start_gateway = || Dev::static_gateway_with(manifests.path(), &nats.url, &gateway_settings);
    let mut doomed_gateway = start_gateway().await;
    let other_gateway = start_gateway().await;
    let work = doomed_gateway.endpoint_id("work").await;
    let served = doomed_gateway.endpoint_id("served").await;

    let (async_model, sync_model) = (
        logging_model(&async_log).await,
        logging_model(&sync_log).await,
    );
    let async_worker = || {
        Process::forwarder(
            &nats.url,
            &work,
            &async_model.url,
            &[("FERRY_CONCURRENCY", "4")],
        )
    };
    let token = serving_token(&served).await;
    let serving_worker = || {
        let listen = format!("127.0.0.1:{}", free_port());
        Process::forwarder(
            &nats.url,
            &served,
            &sync_model.url,
            &[
                ("FERRY_SERVE_LISTEN", listen.as_str()),
                ("FERRY_SERVING_TOKEN", token.as_str()),
                ("FERRY_CONCURRENCY", "4"),
            ],
        )
    };
    let dispatcher = || Process::dispatcher(&nats.url, &["--shutdown-grace-seconds", "10"]);
    let (mut doomed_async, _async_2) = (async_worker(), async_worker());
    let (mut doomed_serving, _serving_2) = (serving_worker(), serving_worker());
    let mut doomed_dispatcher = dispatcher();
    for gateway in [&doomed_gateway, &other_gateway] {
        eventually("both serving workers announced", WAIT, || async {
            let (_, list) = gateway.get("/v1/model-endpoints").await;
            let served = list["model_endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == "served")?
                .clone();
            (served["deployment_state"]["available_workers"] == 2).then_some(())
        })
        .await;
    }

    let targets = Targets::default();
    targets.add(&doomed_gateway.base);
    targets.add(&other_gateway.base);
    let (async_seen, sync_seen) = (Arc::default(), Arc::default());
    let stop_load = CancellationToken::new();
    let async_load = tokio::spawn(load(
        targets.clone(),
        None,
        Some(format!("/v1/async-tasks?model_endpoint_id={work}")),
        Duration::from_millis(20),
        Arc::clone(&async_seen),
        stop_load.clone(),
    ));
    let sync_load = tokio::spawn(load(
        targets.clone(),
        Some(format!("/v1/sync-tasks?model_endpoint_id={served}")),
        None,
        Duration::from_millis(20),
        Arc::clone(&sync_seen),
        stop_load.clone(),
    ));

    // The rollout, one role after another, the load running throughout.
    tokio::time::sleep(BETWEEN_STEPS).await;
    doomed_gateway.process.signal("-TERM");
    eventually("the stopping gateway reports not ready", WAIT, || async {
        let url = format!("{}/readyz", doomed_gateway.base);
        let status = doomed_gateway.http.get(url).send().await.ok()?.status();
        (status != 200).then_some(())
    })
    .await;
    targets.remove(&doomed_gateway.base);
    let replacement_gateway = start_gateway().await;
    targets.add(&replacement_gateway.base);
    let exit = doomed_gateway.process.wait_exit(WAIT).await;
    assert!(exit.success(), "the gateway exits cleanly: {exit}");

    tokio::time::sleep(BETWEEN_STEPS).await;
    stop(&mut doomed_async, "the async worker").await;
    let _async_3 = async_worker();

    tokio::time::sleep(BETWEEN_STEPS).await;
    stop(&mut doomed_serving, "the serving worker").await;
    let _serving_3 = serving_worker();

    tokio::time::sleep(BETWEEN_STEPS).await;
    stop(&mut doomed_dispatcher, "the dispatcher").await;
    let _dispatcher_2 = dispatcher();

    tokio::time::sleep(BETWEEN_STEPS).await;
    stop_load.cancel();
    async_load.await.unwrap();
    sync_load.await.unwrap();

    let async_seen = std::mem::take(&mut *async_seen.lock().unwrap());
    let sync_seen: Seen = std::mem::take(&mut *sync_seen.lock().unwrap());
    assert!(async_seen.failures.is_empty(), "{:?}", async_seen.failures);
    assert!(sync_seen.failures.is_empty(), "{:?}", sync_seen.failures);
    let (accepted, answered) = (async_seen.accepted.len(), sync_seen.answered.len());
    assert!(
        accepted > 100 && answered > 50,
        "the load ran: {accepted}, {answered}"
    );

    // Every accepted task finishes, called back once, having run once.
    let tasks: BTreeSet<String> = async_seen.accepted.values().cloned().collect();
    eventually("every task called back", WAIT, || async {
        let called: BTreeSet<String> = receiver
            .received()
            .iter()
            .filter_map(|c| c.body["task_id"].as_str().map(str::to_owned))
            .collect();
        (called == tasks).then_some(())
    })
    .await;
    for (n, task) in &async_seen.accepted {
        let record = eventually("the delivery recorded", WAIT, || async {
            let record = replacement_gateway.task(task).await;
            (record["callback"]["state"] == "DELIVERED").then_some(record)
        })
        .await;
        assert_eq!(record["status"], "SUCCESS", "{record}");
        assert_eq!(record["result"], json!({"result": n * 10}), "{record}");
        let attempts = record["callback"]["attempts"].as_array().map(Vec::len);
        assert_eq!(attempts, Some(1), "one callback attempt: {record}");
    }
    assert_eq!(
        receiver.received().len(),
        tasks.len(),
        "no callback sent twice"
    );
    let async_runs = runs(&async_log);
    let expected: BTreeSet<u64> = async_seen.accepted.keys().copied().collect();
    assert_eq!(
        async_runs.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "every accepted task ran, and nothing else"
    );
    let repeated: Vec<_> = async_runs.iter().filter(|(_, runs)| **runs > 1).collect();
    assert!(repeated.is_empty(), "async tasks run twice: {repeated:?}");

    // Every sync request answered; a request run twice is one the client was told to resend.
    let sync_runs = runs(&sync_log);
    for (n, resent) in &sync_seen.answered {
        let ran = sync_runs.get(n).copied().unwrap_or(0);
        assert!(
            (1..=1 + resent).contains(&ran),
            "sync request {n} ran {ran} times, resent {resent} times"
        );
    }
    eprintln!(
        "rolled under load: {} async tasks, {} sync requests, {} retryable answers resent",
        async_seen.accepted.len(),
        sync_seen.answered.len(),
        async_seen.retried + sync_seen.retried
    );
}
