//! Listing an endpoint's tasks, cancelling queued ones and listing dead letters, through a
//! real gateway, dispatcher, forwarder and model: a cancelled task never runs, a running one
//! cannot be cancelled, pages come newest first, and another team sees none of it.

use std::time::Duration;

use crate::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const OTHER_TEAM_KEY: &str = "other-team-key-0123456789abcdef";

/// A request with `key` as the API key.
async fn call(gateway: &Dev, method: &str, path: &str, key: &str) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = gateway
        .http
        .request(method, format!("{}{path}", gateway.base))
        .basic_auth(key, Some(""))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every task of a listing, page after page of `limit`, as (task id, status).
async fn list_all(gateway: &Dev, query: &str, limit: usize) -> Vec<(String, String)> {
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/v1/async-tasks?{query}&limit={limit}");
        if let Some(token) = &token {
            path.push_str(&format!("&page_token={token}"));
        }
        let (status, page) = gateway.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= limit, "{page}");
        listed.extend(tasks.iter().map(|task| {
            let id = task["task_id"].as_str().unwrap().to_owned();
            (id, task["status"].as_str().unwrap().to_owned())
        }));
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return listed,
        }
    }
}

fn ids_with(listed: &[(String, String)]) -> Vec<String> {
    listed.iter().map(|(id, _)| id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tasks_never_run_listings_page_newest_first_and_other_teams_see_nothing() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    // The first callback (a cancellation's) is refused for good: a dead letter.
    receiver.answer_first_with(&[StatusCode::GONE]);
    let runs = RunLog::new();
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("listed", "test-bundle", &receiver.url("/cb"), ""),
    );
    let keys = format!("{API_KEY}=default,{OTHER_TEAM_KEY}=other");
    let gateway =
        Dev::static_gateway_with(manifests.path(), &nats.url, &[("FERRY_API_KEYS", &keys)]).await;
    let _dispatcher = Process::dispatcher(&nats.url, &[]);
    let endpoint = gateway.endpoint_id("listed").await;

    // No worker yet: every task waits in the queue.
    let mut submitted = Vec::new();
    for x in 0..5 {
        let args = json!({"args": {"x": x, "sleep": 0}});
        submitted.push(gateway.submit(&endpoint, args).await);
    }
    let cancelled = [submitted[1].clone(), submitted[3].clone()];
    for task in &cancelled {
        let (status, view) = call(
            &gateway,
            "DELETE",
            &format!("/v1/async-tasks/{task}"),
            API_KEY,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "CANCELLED");
        assert_eq!(view["model_endpoint_id"], endpoint.as_str());
        assert!(
            view["started_at"].is_null() && view["finished_at"].is_string(),
            "{view}"
        );
    }
    let (status, again) = call(
        &gateway,
        "DELETE",
        &format!("/v1/async-tasks/{}", cancelled[0]),
        API_KEY,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a final task: {again}");
    assert!(
        again["detail"].as_str().unwrap().contains("CANCELLED"),
        "{again}"
    );

    // Newest first, a page of two at a time; filtered by status.
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    let everything = list_all(&gateway, &format!("model_endpoint_id={endpoint}"), 2).await;
    assert_eq!(ids_with(&everything), newest_first);
    let pending = list_all(
        &gateway,
        &format!("model_endpoint_id={endpoint}&status=PENDING"),
        2,
    )
    .await;
    let expected: Vec<String> = [4, 2, 0].iter().map(|i| submitted[*i].clone()).collect();
    assert_eq!(ids_with(&pending), expected);
    let only_cancelled = list_all(
        &gateway,
        &format!("model_endpoint_id={endpoint}&status=CANCELLED"),
        10,
    )
    .await;
    let expected: Vec<String> = cancelled.iter().rev().cloned().collect();
    assert_eq!(ids_with(&only_cancelled), expected);

    // Each cancellation calls back at once, the first one refused and dead-lettered.
    let callbacks = receiver.wait_for(2, WAIT).await;
    assert!(
        callbacks.iter().all(|c| c.body["status"] == "CANCELLED"),
        "{callbacks:?}"
    );
    let gone = callbacks[0].body["task_id"].as_str().unwrap().to_owned();
    let letters_path = format!("/v1/callbacks/dead-letters?model_endpoint_id={endpoint}");
    let letters = eventually("a dead letter listed", WAIT, || async {
        let (_, page) = gateway.get(&letters_path).await;
        let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["task_id"], gone.as_str());
    assert_eq!(letters[0]["url"], receiver.url("/cb"));
    assert_eq!(letters[0]["attempts"][0]["status_code"], 410);
    assert!(letters[0]["dead_lettered_at"].is_string());

    // Another team: the endpoint, its tasks and its letters are not found.
    for (method, path) in [
        (
            "GET",
            format!("/v1/async-tasks?model_endpoint_id={endpoint}"),
        ),
        ("GET", letters_path.clone()),
        ("GET", format!("/v1/async-tasks/{}", submitted[0])),
        ("DELETE", format!("/v1/async-tasks/{}", submitted[0])),
    ] {
        let (status, answer) = call(&gateway, method, &path, OTHER_TEAM_KEY).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }

    // A worker comes: it runs the three others once each and never the cancelled ones.
    let model = ModelProcess::start(
        &runs.recording("time.sleep(args['sleep'])\nreturn 200, args['x'] * 10"),
    )
    .await;
    let _worker = Process::forwarder(&nats.url, &endpoint, &model.url, &[]);
    for i in [0, 2, 4] {
        let task = gateway.finished_task(&submitted[i], WAIT).await;
        assert_eq!(task["result"], json!({"result": i * 10}));
        assert!(
            task["started_at"].is_string() && task["finished_at"].is_string(),
            "{task}"
        );
    }
    // A running task cannot be cancelled.
    let slow = gateway
        .submit(&endpoint, json!({"args": {"x": 9, "sleep": 2}}))
        .await;
    eventually("the slow task started", WAIT, || async {
        (gateway.task(&slow).await["status"] == "STARTED").then_some(())
    })
    .await;
    let (status, refused) = call(
        &gateway,
        "DELETE",
        &format!("/v1/async-tasks/{slow}"),
        API_KEY,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("STARTED"),
        "{refused}"
    );
    assert_eq!(
        gateway.finished_task(&slow, WAIT).await["status"],
        "SUCCESS"
    );

    nats.wait_quiet(WAIT).await;
    for task in &cancelled {
        assert_eq!(
            runs.runs_of(task),
            Vec::<u32>::new(),
            "cancelled {task} never ran"
        );
        assert_eq!(gateway.task(task).await["status"], "CANCELLED");
    }
    for task in [&submitted[0], &submitted[2], &submitted[4], &slow] {
        assert_eq!(runs.runs_of(task).len(), 1, "{task} ran once");
    }
    let callbacks = receiver.received();
    for task in &cancelled {
        let theirs = callbacks
            .iter()
            .filter(|c| c.body["task_id"] == task.as_str());
        assert_eq!(theirs.count(), 1, "one callback for cancelled {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_as_its_worker_takes_it_is_stopped_there_and_stays_cancelled() {
    let nats = Nats::start().await;
    let receiver = Receiver::start().await;
    let runs = RunLog::new();
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("racing", "test-bundle", &receiver.url("/cb"), ""),
    );
    let gateway = Dev::static_gateway_with(manifests.path(), &nats.url, &[]).await;
    let _dispatcher = Process::dispatcher(&nats.url, &[]);
    let endpoint = gateway.endpoint_id("racing").await;
    // The model cancels its own task as its run begins, before the worker would record it
    // STARTED (a cancellation answered 409 fails the run), then takes its time to answer.
    let cancel_own_task = format!(
        "import base64, urllib.request\n\
         auth = 'Basic ' + base64.b64encode(b'{API_KEY}:').decode()\n\
         url = '{}/v1/async-tasks/' + task_id\n\
         urllib.request.urlopen(urllib.request.Request(url, method='DELETE', headers={{'Authorization': auth}})).read()\n\
         time.sleep(3)\n\
         return 200, args['x']",
        gateway.base
    );
    let model = ModelProcess::start(&runs.recording(&cancel_own_task)).await;
    let _worker = Process::forwarder(&nats.url, &endpoint, &model.url, &[]);
    let task = gateway.submit(&endpoint, json!({"args": {"x": 1}})).await;

    let callbacks = receiver.wait_for(1, WAIT).await;
    assert_eq!(callbacks[0].body["status"], "CANCELLED", "{callbacks:?}");
    nats.wait_quiet(WAIT).await;
    // Past the model's answer: the worker dropped the run, recorded nothing over the
    // cancellation and sent no other callback.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let view = gateway.task(&task).await;
    assert_eq!(view["status"], "CANCELLED", "{view}");
    assert!(view["result"].is_null(), "{view}");
    assert_eq!(receiver.received().len(), 1, "one callback");
    assert_eq!(runs.runs_of(&task).len(), 1, "run once, not again");
}

/// An endpoint whose tasks expire after 10 s (the least allowed), served by a gateway on fixed
/// manifests, with a dispatcher calling back a receiver; no worker yet.
struct Expiring {
    nats: Nats,
    receiver: Receiver,
    runs: RunLog,
    gateway: Dev,
    endpoint: String,
    _dispatcher: Process,
    _manifests: Manifests,
}

impl Expiring {
    async fn start() -> Expiring {
        let nats = Nats::start().await;
        let receiver = Receiver::start().await;
        let manifests = Manifests::with_example_bundle();
        let expiry = "  taskExpiresSeconds: 10\n";
        manifests.add(
            "endpoint.yaml",
            &endpoint_yaml("expiring", "test-bundle", &receiver.url("/cb"), expiry),
        );
        let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
        let _dispatcher = Process::dispatcher(&nats.url, &[]);
        let endpoint = gateway.endpoint_id("expiring").await;
        Expiring {
            nats,
            receiver,
            runs: RunLog::new(),
            gateway,
            endpoint,
            _dispatcher,
            _manifests: manifests,
        }
    }
}

/// A model that sleeps `args['sleep']` seconds and answers `x * 10`, logging its runs.
async fn sleeping_model(runs: &RunLog) -> ModelProcess {
    ModelProcess::start(&runs.recording("time.sleep(args['sleep'])\nreturn 200, args['x'] * 10"))
        .await
}

/// A task no worker takes within its endpoint's `taskExpiresSeconds` is dropped by its queue;
/// the worker that comes later records it FAILURE, saying it expired, never runs it, and its
/// callback says so. A task submitted later runs as usual, and each is listed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_expires_unrun_ends_failure_and_calls_back_saying_so() {
    let setup = Expiring::start().await;

    // No worker for longer than the expiry: the queue drops the task, leaving its marker.
    let expired = setup
        .gateway
        .submit(&setup.endpoint, json!({"args": {"x": 1, "sleep": 0}}))
        .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(setup.gateway.task(&expired).await["status"], "PENDING");
    let fresh = setup
        .gateway
        .submit(&setup.endpoint, json!({"args": {"x": 2, "sleep": 0}}))
        .await;
    let model = sleeping_model(&setup.runs).await;
    let _worker = Process::forwarder(&setup.nats.url, &setup.endpoint, &model.url, &[]);

    let task = setup.gateway.finished_task(&expired, WAIT).await;
    assert_eq!(task["status"], "FAILURE", "{task}");
    // As Launch shows a failure: its message in `result`.
    assert!(
        task["result"]
            .as_str()
            .is_some_and(|why| why.contains("expired")),
        "{task}"
    );
    assert!(
        task["started_at"].is_null() && task["finished_at"].is_string(),
        "{task}"
    );
    assert_eq!(
        setup.gateway.finished_task(&fresh, WAIT).await["result"],
        json!({"result": 20})
    );
    let mut callbacks = setup.receiver.wait_for(2, WAIT).await;
    callbacks.sort_by_key(|callback| callback.body["task_id"] != expired.as_str());
    assert_eq!(callbacks[0].body["task_id"], expired.as_str());
    assert_eq!(callbacks[0].body["status"], "FAILURE");
    assert!(
        callbacks[0].body["error"]["message"]
            .as_str()
            .is_some_and(|why| why.contains("expired")),
        "{:?}",
        callbacks[0].body
    );
    assert_eq!(callbacks[1].body["task_id"], fresh.as_str());
    assert_eq!(callbacks[1].body["status"], "SUCCESS");

    setup.nats.wait_quiet(WAIT).await;
    assert_eq!(setup.runs.runs_of(&expired), Vec::<u32>::new(), "never run");
    assert_eq!(setup.runs.runs_of(&fresh).len(), 1);
    assert_eq!(setup.receiver.received().len(), 2, "one callback each");
    let listed = list_all(
        &setup.gateway,
        &format!("model_endpoint_id={}", setup.endpoint),
        10,
    )
    .await;
    assert_eq!(
        listed,
        [
            (fresh.clone(), "SUCCESS".to_owned()),
            (expired.clone(), "FAILURE".to_owned())
        ]
    );
}

/// A task that outlasts its expiry while a worker runs it expires from the queue all the same;
/// the worker that takes its marker finds it `STARTED` and leaves it to the run, which ends it
/// as the model answers: one run, one `SUCCESS`, one callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_past_its_expiry_is_left_to_its_run() {
    let setup = Expiring::start().await;
    let model = sleeping_model(&setup.runs).await;
    // A free slot beside the run: the marker is taken while the task still runs.
    let _worker = Process::forwarder(
        &setup.nats.url,
        &setup.endpoint,
        &model.url,
        &[("FERRY_CONCURRENCY", "2")],
    );

    let long = setup
        .gateway
        .submit(&setup.endpoint, json!({"args": {"x": 3, "sleep": 14}}))
        .await;
    let task = setup.gateway.finished_task(&long, WAIT).await;
    assert_eq!(task["status"], "SUCCESS", "{task}");
    assert_eq!(task["result"], json!({"result": 30}));
    let callbacks = setup.receiver.wait_for(1, WAIT).await;
    assert_eq!(callbacks[0].body["status"], "SUCCESS");
    setup.nats.wait_quiet(WAIT).await;
    assert_eq!(setup.runs.runs_of(&long).len(), 1, "one run");
    assert_eq!(setup.receiver.received().len(), 1, "one callback");
}
