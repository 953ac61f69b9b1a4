//! Fairness and bounds end to end: one endpoint's callbacks to hanging receivers hold no more
//! than their caps while another endpoint's callbacks keep flowing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use serde_json::json;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(60);

/// A receiver that takes connections on several loopback addresses and never answers: it
/// counts the requests it holds per address, now and at most.
#[derive(Clone, Default)]
struct Hanging {
    counts: Arc<Mutex<HashMap<IpAddr, (usize, usize)>>>,
}

impl Hanging {
    async fn start(addresses: &[IpAddr], port: u16) -> Hanging {
        let hanging = Hanging::default();
        for ip in addresses {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(*ip, port))
                .await
                .expect("hanging receiver binds");
            let hanging = hanging.clone();
            tokio::spawn(async move {
                while let Ok((mut connection, _)) = listener.accept().await {
                    let hanging = hanging.clone();
                    let ip = connection.local_addr().unwrap().ip();
                    tokio::spawn(async move {
                        hanging.change(ip, true);
                        let mut buffer = [0u8; 4096];
                        while matches!(connection.read(&mut buffer).await, Ok(n) if n > 0) {}
                        hanging.change(ip, false);
                    });
                }
            });
        }
        hanging
    }

    fn change(&self, ip: IpAddr, opened: bool) {
        let mut counts = self.counts.lock().unwrap();
        let (now, most) = counts.entry(ip).or_default();
        if opened {
            *now += 1;
            *most = (*most).max(*now);
        } else {
            *now -= 1;
        }
    }

    /// Requests held now, over all addresses.
    fn held(&self) -> usize {
        self.counts
            .lock()
            .unwrap()
            .values()
            .map(|(now, _)| now)
            .sum()
    }

    /// The most requests held at once by any one address.
    fn most_at_one_address(&self) -> usize {
        let counts = self.counts.lock().unwrap();
        counts.values().map(|(_, most)| *most).max().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_many_names_for_hanging_receivers_holds_no_more_than_its_caps() {
    const PER_DESTINATION: usize = 2;
    const PER_ENDPOINT: usize = 5;
    let port = free_port();
    // Every name of `one` leads to 127.0.0.2; the names of `spread` to eight addresses.
    let one: Vec<String> = (0..12).map(|i| format!("one{i}.hooks.test")).collect();
    let spread: Vec<(String, IpAddr)> = (0..16)
        .map(|i| {
            let ip = IpAddr::from([127, 0, 0, 3 + (i % 8) as u8]);
            (format!("spread{i}.hooks.test"), ip)
        })
        .collect();
    let mut addresses: Vec<IpAddr> = spread.iter().map(|(_, ip)| *ip).collect();
    addresses.push(IpAddr::from([127, 0, 0, 2]));
    addresses.sort();
    addresses.dedup();
    let hanging = Hanging::start(&addresses, port).await;
    let fast = Receiver::start().await;

    let resolve: Vec<String> = one
        .iter()
        .map(|name| format!("{name}=127.0.0.2"))
        .chain(spread.iter().map(|(name, ip)| format!("{name}={ip}")))
        .collect();
    let resolve = resolve.join(",");
    let per_host = PER_DESTINATION.to_string();
    let per_endpoint = PER_ENDPOINT.to_string();
    let flags = [
        "--callback-resolve",
        &resolve,
        "--per-host-concurrency",
        &per_host,
        "--per-endpoint-concurrency",
        &per_endpoint,
        "--dispatch-concurrency",
        "64",
    ];
    let hang_long = "  callbacks:\n    attemptTimeoutSeconds: 300\n";
    let manifests = Manifests::with_example_bundle();
    for name in ["one", "spread"] {
        let default_url = format!("http://{name}0.hooks.test:{port}/cb");
        manifests.add(
            &format!("{name}.yaml"),
            &endpoint_yaml(name, "test-bundle", &default_url, hang_long),
        );
    }
    manifests.add(
        "calm.yaml",
        &endpoint_yaml("calm", "test-bundle", &fast.url("/cb"), ""),
    );
    let dev = Dev::start_with(manifests.path(), None, &flags).await;
    let (one_id, spread_id, calm_id) = (
        dev.ready_endpoint("one").await,
        dev.ready_endpoint("spread").await,
        dev.ready_endpoint("calm").await,
    );

    let urls = |names: Vec<String>| {
        names
            .into_iter()
            .map(|name| format!("http://{name}:{port}/cb"))
    };
    for url in urls(one.clone()) {
        dev.submit(
            &one_id,
            json!({"args": {"x": 1, "y": ""}, "callback_url": url}),
        )
        .await;
    }
    for url in urls(spread.iter().map(|(name, _)| name.clone()).collect()) {
        dev.submit(
            &spread_id,
            json!({"args": {"x": 1, "y": ""}, "callback_url": url}),
        )
        .await;
    }
    // Both tenants fill their share of the hanging receivers...
    eventually("the hanging receivers hold their caps", WAIT, || async {
        (hanging.held() == PER_DESTINATION + PER_ENDPOINT).then_some(())
    })
    .await;
    // ...and another endpoint's callbacks are delivered meanwhile.
    let calm_tasks = 20;
    for x in 0..calm_tasks {
        dev.submit(&calm_id, json!({"args": {"x": x, "y": ""}}))
            .await;
    }
    fast.wait_for(calm_tasks, WAIT).await;

    assert_eq!(
        hanging.held(),
        PER_DESTINATION + PER_ENDPOINT,
        "`one` holds its destination's cap, `spread` its endpoint's cap"
    );
    assert_eq!(
        hanging.most_at_one_address(),
        PER_DESTINATION,
        "twelve names for one address share that address's cap"
    );
    let at_one = hanging.counts.lock().unwrap()[&IpAddr::from([127, 0, 0, 2])].1;
    assert_eq!(at_one, PER_DESTINATION);
}

/// A dispatcher started on a backlog (its predecessor gone while tasks finished), with one
/// endpoint's callbacks split between a fast receiver and one that holds every request: every
/// fast callback arrives, once, while the holding receiver never has more than its destination
/// cap and the endpoint never more than its cap in flight; once the holding receiver answers,
/// its callbacks arrive too, once each, every task with one recorded attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_to_a_fast_receiver_while_a_hanging_one_holds_only_its_cap() {
    const PER_DESTINATION: usize = 4;
    const PER_ENDPOINT: usize = 6;
    const FAST: usize = 300;
    const HANGING: usize = 40;
    let endpoint_in_flight = InFlight::default();
    let fast = Gated::start(true, &endpoint_in_flight).await;
    let hanging = Gated::start(false, &endpoint_in_flight).await;
    let without_dispatcher = WithoutDispatcher::start(&fast.url).await;
    let (gateway, endpoint) = (&without_dispatcher.gateway, &without_dispatcher.endpoint);
    // No dispatcher yet: the callbacks pile up in JetStream.
    // Every eighth task, up to HANGING of them, calls the hanging receiver back.
    let to_hanging = |x: usize| x.is_multiple_of(8) && x / 8 < HANGING;
    let mut tasks = Vec::new();
    for x in 0..FAST + HANGING {
        let mut body = json!({"args": {"x": x}});
        if to_hanging(x) {
            body["callback_url"] = json!(hanging.url);
        }
        tasks.push(gateway.submit(endpoint, body).await);
    }
    for task_id in &tasks {
        gateway.finished_task(task_id, WAIT).await;
    }
    assert!(fast.answered().is_empty(), "no dispatcher ran yet");

    let _dispatcher = without_dispatcher.dispatcher(PER_DESTINATION, PER_ENDPOINT);
    let answered = fast.wait_for(FAST).await;
    assert!(
        answered.values().all(|count| *count == 1),
        "none twice: {:?}",
        answered.values().filter(|count| **count > 1).count()
    );
    eventually("the hanging receiver holds its cap", WAIT, || async {
        (hanging.requests.now() == PER_DESTINATION).then_some(())
    })
    .await;
    assert_eq!(
        hanging.requests.most(),
        PER_DESTINATION,
        "the hanging receiver never held more than its cap"
    );
    assert!(
        endpoint_in_flight.most() <= PER_ENDPOINT,
        "the endpoint had {} callbacks in flight, more than its cap",
        endpoint_in_flight.most()
    );

    // The receiver answers at last: the callbacks that waited for it arrive, once each.
    hanging.open();
    let answered = hanging.wait_for(HANGING).await;
    assert!(answered.values().all(|count| *count == 1), "{answered:?}");
    assert!(endpoint_in_flight.most() <= PER_ENDPOINT);
    for task_id in &tasks {
        let callback = eventually("the callback recorded as delivered", WAIT, || async {
            let callback = gateway.task(task_id).await["callback"].clone();
            (callback["state"] == "DELIVERED").then_some(callback)
        })
        .await;
        let attempts = callback["attempts"].as_array().expect("attempts");
        assert_eq!(
            attempts.len(),
            1,
            "one attempt, none for waiting: {callback}"
        );
    }
}

/// Requests in flight at some receivers, now and at most.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<(usize, usize)>>);

impl InFlight {
    fn change(&self, opened: bool) {
        let mut counts = self.0.lock().unwrap();
        let (now, most) = &mut *counts;
        if opened {
            *now += 1;
            *most = (*most).max(*now);
        } else {
            *now -= 1;
        }
    }

    fn now(&self) -> usize {
        self.0.lock().unwrap().0
    }

    fn most(&self) -> usize {
        self.0.lock().unwrap().1
    }
}

/// Counts a request in flight until dropped (answered, or dropped by the dispatcher).
struct Holding(Vec<InFlight>);

impl Holding {
    fn enter(counts: &[&InFlight]) -> Holding {
        counts.iter().for_each(|count| count.change(true));
        Holding(counts.iter().map(|count| (*count).clone()).collect())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.iter().for_each(|count| count.change(false));
    }
}

/// A callback receiver on 127.0.0.1 that holds every request until it is open, then answers
/// 200. It counts its requests in flight, also in a count shared by the endpoint's receivers,
/// and the callbacks it answered per task.
#[derive(Clone)]
struct Gated {
    url: String,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    requests: InFlight,
    endpoint: InFlight,
    answered: Arc<Mutex<HashMap<String, usize>>>,
}

impl Gated {
    async fn start(open: bool, endpoint: &InFlight) -> Gated {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds");
        let gated = Gated {
            url: format!("http://{}/cb", listener.local_addr().unwrap()),
            open: Arc::new(tokio::sync::watch::Sender::new(open)),
            requests: InFlight::default(),
            endpoint: endpoint.clone(),
            answered: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(axum::routing::post(hold_then_answer))
            .with_state(gated.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        gated
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    fn answered(&self) -> HashMap<String, usize> {
        self.answered.lock().unwrap().clone()
    }

    /// Waits until callbacks of `tasks` distinct tasks were answered; answers per task.
    async fn wait_for(&self, tasks: usize) -> HashMap<String, usize> {
        eventually(&format!("callbacks of {tasks} tasks"), WAIT, || async {
            let answered = self.answered();
            (answered.len() >= tasks).then_some(answered)
        })
        .await
    }
}

async fn hold_then_answer(
    axum::extract::State(gated): axum::extract::State<Gated>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::http::StatusCode {
    let _holding = Holding::enter(&[&gated.requests, &gated.endpoint]);
    let mut open = gated.open.subscribe();
    if open.wait_for(|open| *open).await.is_err() {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let task = body["task_id"].as_str().unwrap_or_default().to_owned();
    *gated.answered.lock().unwrap().entry(task).or_default() += 1;
    axum::http::StatusCode::OK
}

/// The chart gives each of N dispatcher replicas its share of a total per-receiver cap: two
/// dispatchers with a share of 3 each never hold more than the total of 6 requests at a slow
/// receiver, and do hold that many when enough callbacks wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_hold_no_more_than_the_total_cap_at_a_slow_receiver() {
    const SHARE: usize = 3;
    const REPLICAS: usize = 2;
    let slow_ip = IpAddr::from([127, 0, 0, 2]);
    let port = free_port();
    let slow = Hanging::start(&[slow_ip], port).await;
    let without_dispatcher = WithoutDispatcher::start(&format!("http://{slow_ip}:{port}/cb")).await;
    let _dispatchers: Vec<Process> = (0..REPLICAS)
        .map(|_| without_dispatcher.dispatcher(SHARE, 64))
        .collect();
    for x in 0..40 {
        without_dispatcher
            .gateway
            .submit(&without_dispatcher.endpoint, json!({"args": {"x": x}}))
            .await;
    }
    eventually("both dispatchers hold their share", WAIT, || async {
        (slow.held() == SHARE * REPLICAS).then_some(())
    })
    .await;
    assert_eq!(
        slow.most_at_one_address(),
        SHARE * REPLICAS,
        "the slow receiver never held more than the total cap"
    );
}

/// A gateway and a worker on a nats-server of their own, with no dispatcher: callbacks wait
/// in JetStream until a test starts one. Its endpoint's attempts may take 300 s.
struct WithoutDispatcher {
    nats: Nats,
    gateway: Dev,
    endpoint: String,
    _manifests: Manifests,
    _model: ModelProcess,
    _worker: Process,
}

impl WithoutDispatcher {
    async fn start(default_callback_url: &str) -> WithoutDispatcher {
        let nats = Nats::start().await;
        let manifests = Manifests::with_example_bundle();
        let hang_long = "  callbacks:\n    attemptTimeoutSeconds: 300\n";
        manifests.add(
            "waiting.yaml",
            &endpoint_yaml("waiting", "test-bundle", default_callback_url, hang_long),
        );
        let gateway = Dev::static_gateway(manifests.path(), &nats.url).await;
        let endpoint = gateway.endpoint_id("waiting").await;
        let model = ModelProcess::start("return 200, args['x']").await;
        let worker = Process::forwarder(
            &nats.url,
            &endpoint,
            &model.url,
            &[("FERRY_CONCURRENCY", "16")],
        );
        WithoutDispatcher {
            nats,
            gateway,
            endpoint,
            _manifests: manifests,
            _model: model,
            _worker: worker,
        }
    }

    /// A dispatcher process allowed `per_host` attempts at once to one receiver and
    /// `per_endpoint` for the endpoint.
    fn dispatcher(&self, per_host: usize, per_endpoint: usize) -> Process {
        let (per_host, per_endpoint) = (per_host.to_string(), per_endpoint.to_string());
        let flags = [
            "--per-host-concurrency",
            &per_host,
            "--per-endpoint-concurrency",
            &per_endpoint,
            "--dispatch-concurrency",
            "64",
        ];
        Process::dispatcher(&self.nats.url, &flags)
    }
}
