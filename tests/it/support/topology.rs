//! A cluster on one machine, each piece its own process: NATS (one server with a file store, or
//! three clustered servers with JetStream, each with a store of its own), gateways serving
//! fixed manifests, workers (a standalone forwarder beside its model process), a dispatcher
//! and a callback receiver. Every piece can be killed and restarted or replaced, as a fault
//! scenario needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{
    Dev, Manifests, ModelProcess, Nats, Process, Receiver, RunLog, STARTUP, endpoint_yaml,
    eventually, free_port, http_client,
};

/// The endpoint every topology serves.
pub const ENDPOINT: &str = "faults";

/// NATS: one server, or the nodes of a JetStream cluster.
pub struct NatsNodes {
    pub nodes: Vec<Nats>,
}

impl NatsNodes {
    pub async fn single() -> NatsNodes {
        NatsNodes {
            nodes: vec![Nats::start().await],
        }
    }

    /// Three servers routed to each other as the JetStream cluster `ferry`, each with a store
    /// of its own, once the cluster has elected its leader.
    pub async fn cluster() -> NatsNodes {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, port) in routes.iter().enumerate() {
            let others: Vec<String> = routes
                .iter()
                .filter(|other| *other != port)
                .map(|other| format!("nats://127.0.0.1:{other}"))
                .collect();
            let (name, listen, others) = (
                format!("n{i}"),
                format!("nats://127.0.0.1:{port}"),
                others.join(","),
            );
            let args = [
                "--name",
                &name,
                "--cluster_name",
                "ferry",
                "--cluster",
                &listen,
                "--routes",
                &others,
            ];
            nodes.push(Nats::start_with(&args).await);
        }
        let cluster = NatsNodes { nodes };
        cluster.wait_healthy().await;
        cluster
    }

    /// Every server, as ferry's `--nats-url` takes them.
    pub fn url(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(|node| node.url.as_str()).collect();
        urls.join(",")
    }

    /// Waits until every server reports JetStream healthy (a cluster: a leader elected and
    /// every stream current).
    pub async fn wait_healthy(&self) {
        let http = http_client();
        for node in &self.nodes {
            let url = format!("http://127.0.0.1:{}/healthz", node.monitor);
            eventually("JetStream healthy", STARTUP, || async {
                let response = http.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await;
        }
    }

    /// The index of the server leading the stream whose name starts with `prefix`, as the
    /// first server reports it (the first server when unknown or not clustered).
    pub async fn leader_of(&self, prefix: &str) -> usize {
        let streams = self.streams(0, "streams=true").await;
        let leader = streams
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned));
        leader
            .and_then(|name| name.strip_prefix('n')?.parse().ok())
            .unwrap_or(0)
    }

    /// The streams (buckets are streams too) whose replicas are not `replicas`, with theirs.
    pub async fn streams_not_at(&self, replicas: u64) -> Vec<String> {
        let streams = self.streams(0, "streams=true&config=true").await;
        let replicas_of = |stream: &Value| stream["config"]["num_replicas"].clone();
        streams
            .iter()
            .filter(|stream| replicas_of(stream) != replicas)
            .map(|stream| format!("{} at {}", stream["name"], replicas_of(stream)))
            .collect()
    }

    /// Server `node`'s JetStream report (`/jsz?<query>`); null when it does not answer.
    async fn report(&self, node: usize, query: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/jsz?{query}", self.nodes[node].monitor);
        match http_client().get(url).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The streams of server `node`'s report.
    async fn streams(&self, node: usize, query: &str) -> Vec<Value> {
        let jsz = self.report(node, query).await;
        let accounts = jsz["account_details"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let streams = accounts.iter().flat_map(|a| a["stream_detail"].as_array());
        streams.flatten().cloned().collect()
    }

    /// Waits until nothing is left to do anywhere: on a cluster, each server reports the
    /// streams it leads (a follower's view of a consumer may lag behind).
    pub async fn wait_quiet(&self, timeout: Duration) {
        let leader_only = if self.nodes.len() > 1 {
            "&leader_only=true"
        } else {
            ""
        };
        let query = format!("consumers=true&config=true{leader_only}");
        let deadline = tokio::time::Instant::now() + timeout;
        'poll: loop {
            for node in 0..self.nodes.len() {
                let jsz = self.report(node, &query).await;
                if let Err(busy) = super::quiet(&jsz) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "not quiet after {timeout:?}: {busy}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return;
        }
    }
}

/// A worker: a forwarder beside its model, with the forwarder's admin listener.
pub struct Worker {
    pub model: ModelProcess,
    pub forwarder: Process,
    pub admin: String,
}

impl Worker {
    /// `http://…/readyz` of its forwarder.
    pub fn readyz(&self) -> String {
        format!("http://{}/readyz", self.admin)
    }
}

/// The gateways a load balancer sends to now.
#[derive(Clone, Default)]
pub struct Targets(Arc<Mutex<Vec<String>>>);

impl Targets {
    pub fn pick(&self, n: usize) -> String {
        let targets = self.0.lock().unwrap();
        targets[n % targets.len()].clone()
    }

    pub fn add(&self, base: &str) {
        self.0.lock().unwrap().push(base.to_owned());
    }

    pub fn remove(&self, base: &str) {
        self.0.lock().unwrap().retain(|known| known != base);
    }
}

/// How a topology is built.
pub struct Plan {
    /// Three clustered servers instead of one, with every stream and bucket at 3 replicas.
    pub cluster: bool,
    pub gateways: usize,
    pub workers: usize,
    /// Tasks each worker runs at once.
    pub concurrency: usize,
    /// The endpoint's spec beyond bundle, type, labels, hook and callback URL.
    pub endpoint_spec: String,
    /// The model's handler (of [`super::python_model_source`]); each run is logged first.
    pub model: String,
}

/// Every process of the plan, running.
/// Fields drop in order: the ferry processes stop while NATS and the receiver still run.
pub struct Topology {
    pub gateways: Vec<Arc<Dev>>,
    pub workers: Vec<Worker>,
    pub dispatcher: Process,
    /// The gateways in service, for clients.
    pub targets: Targets,
    pub endpoint: String,
    pub runs: RunLog,
    pub manifests: Manifests,
    pub receiver: Receiver,
    pub nats: NatsNodes,
    model_body: String,
    concurrency: String,
    replicas: &'static str,
}

impl Topology {
    pub async fn start(plan: Plan) -> Topology {
        let nats = if plan.cluster {
            NatsNodes::cluster().await
        } else {
            NatsNodes::single().await
        };
        let replicas = if plan.cluster { "3" } else { "1" };
        let receiver = Receiver::start().await;
        let manifests = Manifests::with_example_bundle();
        let callback_url = receiver.url("/cb");
        let endpoint = endpoint_yaml(ENDPOINT, "test-bundle", &callback_url, &plan.endpoint_spec);
        manifests.add("endpoint.yaml", &endpoint);
        let targets = Targets::default();
        let mut gateways = Vec::new();
        for _ in 0..plan.gateways {
            gateways.push(start_gateway(&manifests, &nats, replicas, &targets).await);
        }
        let endpoint = gateways[0].endpoint_id(ENDPOINT).await;
        let runs = RunLog::new();
        let mut topology = Topology {
            dispatcher: start_dispatcher(&nats, replicas),
            nats,
            receiver,
            manifests,
            gateways,
            targets,
            endpoint,
            workers: Vec::new(),
            model_body: runs.recording(&plan.model),
            runs,
            concurrency: plan.concurrency.to_string(),
            replicas,
        };
        for _ in 0..plan.workers {
            let model = ModelProcess::start(&topology.model_body).await;
            let worker = topology.start_worker(model);
            topology.workers.push(worker);
        }
        for worker in &topology.workers {
            wait_readyz(&worker.readyz(), true).await;
        }
        topology
    }

    /// A gateway more, in service.
    pub async fn add_gateway(&mut self) -> Arc<Dev> {
        let gateway =
            start_gateway(&self.manifests, &self.nats, self.replicas, &self.targets).await;
        self.gateways.push(gateway.clone());
        gateway
    }

    /// A new dispatcher, in place of one that stopped.
    pub fn replace_dispatcher(&mut self) {
        self.dispatcher = start_dispatcher(&self.nats, self.replicas);
    }

    /// The gateway that came last: the one to read tasks from after a gateway fault.
    pub fn gateway(&self) -> &Dev {
        self.gateways.last().expect("a gateway")
    }

    fn start_worker(&self, model: ModelProcess) -> Worker {
        let admin = format!("127.0.0.1:{}", free_port());
        let forwarder = self.start_forwarder(&model, &admin);
        Worker {
            model,
            forwarder,
            admin,
        }
    }

    fn start_forwarder(&self, model: &ModelProcess, admin: &str) -> Process {
        let settings = [
            ("FERRY_CONCURRENCY", self.concurrency.as_str()),
            ("FERRY_ADMIN_LISTEN", admin),
        ];
        Process::forwarder(&self.nats.url(), &self.endpoint, &model.url, &settings)
    }

    /// A new forwarder beside worker `i`'s model, in place of one that stopped.
    pub async fn replace_forwarder(&mut self, i: usize) {
        let worker = &self.workers[i];
        let forwarder = self.start_forwarder(&worker.model, &worker.admin);
        self.workers[i].forwarder = forwarder;
        wait_readyz(&self.workers[i].readyz(), true).await;
    }
}

/// A gateway serving the manifests, in service for clients.
async fn start_gateway(
    manifests: &Manifests,
    nats: &NatsNodes,
    replicas: &str,
    targets: &Targets,
) -> Arc<Dev> {
    let settings = [("FERRY_NATS_REPLICAS", replicas)];
    let gateway = Dev::static_gateway_with(manifests.path(), &nats.url(), &settings).await;
    targets.add(&gateway.base);
    Arc::new(gateway)
}

fn start_dispatcher(nats: &NatsNodes, replicas: &str) -> Process {
    Process::dispatcher(&nats.url(), &["--nats-replicas", replicas])
}

/// Polls a forwarder's `/readyz` until it reports `ready` (200) or not (503).
pub async fn wait_readyz(url: &str, ready: bool) {
    let http = http_client();
    let what = format!("{url} ready = {ready}");
    eventually(&what, STARTUP * 2, || async {
        let status = http.get(url).send().await.ok()?.status();
        (status.is_success() == ready).then_some(())
    })
    .await;
}
