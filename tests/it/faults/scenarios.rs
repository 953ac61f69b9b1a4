//! The fault scenarios: each starts the same topology (two gateways, two workers, a
//! dispatcher, a receiver, over one nats-server or a 3-node cluster), runs a steady stream of
//! async tasks with callbacks, injects its fault a little way in, and hands the submissions and
//! the fault's window to the checker.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::checker::{self, Expected, Row, Window};
use super::load::{self, Submitted};
use crate::support::topology::{Plan, Topology, wait_readyz};
use crate::support::{has_exited, http_client};

/// Submissions per second.
const RATE: u64 = 30;
/// How long the stream runs before the fault.
const FAULT_AFTER: Duration = Duration::from_secs(2);
const MIB: u64 = 1 << 20;

/// Each model run is logged first; a third of the tasks take long enough to be caught running,
/// every seventh fails by the model's own answer, and a task asking for `answer_bytes` gets an
/// answer of that size.
const MODEL: &str = "if 'answer_bytes' in args:\n    return 200, {'blob': 'y' * args['answer_bytes']}\nif args['x'] % 3 == 0:\n    time.sleep(0.2)\nif args['x'] % 7 == 0:\n    return 500, {'error': 'sevens fail'}\nreturn 200, args['x'] * 2";

/// What the model's run of `args` deserves.
fn expected(args: &Value) -> Expected {
    let x = args["x"].as_u64().unwrap_or_default();
    if args["answer_bytes"].is_u64() {
        Expected::Failure("more than 10485760 bytes")
    } else if x.is_multiple_of(7) {
        Expected::Failure("model answered 500")
    } else {
        Expected::Success(json!(x * 2))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a forwarder; a new one starts beside the same model after 1 s.
    ForwarderKill,
    /// kill -9 of a model, back after 1 s; killed again, back after a longer outage.
    ModelKill,
    /// kill -9 of the dispatcher; a replacement starts after 1 s.
    DispatcherKill,
    /// kill -9 of a gateway: clients move to the other one, and a replacement joins.
    GatewayKill,
    /// kill -9 of the nats-server (on a cluster: the node leading the task queue), restarted
    /// on its store after 5 s.
    NatsKill,
    /// The receiver answers 503 for 5 s.
    ReceiverDown,
    /// SIGTERM to a forwarder holding tasks: it hands back what it did not start, finishes the
    /// rest and exits; a replacement starts. The queue's ack wait (120 s) is longer than the
    /// checker waits, so a task left held would be lost to the count.
    ForwarderDrain,
    /// An 11 MiB body (413) and a model answer over 10 MiB (FAILURE saying so, run once).
    Oversized,
}

pub const EVERY_FAULT: [Fault; 8] = [
    Fault::ForwarderKill,
    Fault::ModelKill,
    Fault::DispatcherKill,
    Fault::GatewayKill,
    Fault::NatsKill,
    Fault::ReceiverDown,
    Fault::ForwarderDrain,
    Fault::Oversized,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::ForwarderKill => "kill -9 forwarder",
            Fault::ModelKill => "kill -9 model (twice)",
            Fault::DispatcherKill => "kill -9 dispatcher",
            Fault::GatewayKill => "kill -9 gateway",
            Fault::NatsKill => "kill -9 nats-server",
            Fault::ReceiverDown => "receiver down 5 s",
            Fault::ForwarderDrain => "SIGTERM forwarder",
            Fault::Oversized => "oversized payloads",
        }
    }

    /// How long the stream runs.
    fn load(self) -> Duration {
        match self {
            // Long enough for the paused worker to take tasks again after the second outage.
            Fault::ModelKill => Duration::from_secs(12),
            Fault::NatsKill => Duration::from_secs(10),
            _ => Duration::from_secs(8),
        }
    }

    /// Whether the fault may cut a model run off, so that the task runs again: a killed
    /// forwarder or model, and a lone server's crash (a worker's outcome lost with it). A
    /// cluster keeps the queue while a node is down: nothing may run twice.
    fn cuts_runs(self, cluster: bool) -> bool {
        match self {
            Fault::ForwarderKill | Fault::ModelKill => true,
            Fault::NatsKill => !cluster,
            _ => false,
        }
    }

    /// The endpoint's queue ack wait: short, so a task whose worker died comes back quickly,
    /// except where the test is that nothing needs it: a drained worker hands its tasks back,
    /// and on a cluster a worker outlasts the election of a new leader for a killed node's
    /// streams (a few seconds without acknowledgements) and records what it ran.
    fn ack_wait_seconds(self, cluster: bool) -> u64 {
        match self {
            Fault::ForwarderDrain => 120,
            Fault::NatsKill if cluster => 30,
            _ => 3,
        }
    }
}

/// Runs `fault`'s scenario and checks it.
pub async fn run(fault: Fault, cluster: bool) -> Row {
    let endpoint_spec = format!(
        "  queueMessageTimeoutSeconds: {}\n  callbacks:\n    retryScheduleSeconds: [1, 1, 2, 2, 4, 4, 8, 8]\n",
        fault.ack_wait_seconds(cluster)
    );
    let plan = Plan {
        cluster,
        gateways: 2,
        workers: 2,
        concurrency: 4,
        endpoint_spec,
        model: MODEL.to_owned(),
    };
    let mut topology = Topology::start(plan).await;
    let stream = tokio::spawn(load::steady(
        topology.targets.clone(),
        topology.endpoint.clone(),
        RATE,
        fault.load(),
        |x| json!({ "x": x }),
    ));
    tokio::time::sleep(FAULT_AFTER).await;
    let from = SystemTime::now();
    let (mut extra, mut violations) = inject(fault, &mut topology).await;
    let window = Window {
        from,
        to: SystemTime::now(),
    };
    let mut submitted = stream.await.expect("the stream");
    submitted.append(&mut extra);
    let mut row = checker::check(
        fault.name(),
        &topology,
        &submitted,
        expected,
        &[window],
        fault.cuts_runs(cluster),
    )
    .await;
    if fault == Fault::ModelKill {
        let resumed = topology.workers[0].model.pid();
        let runs = topology.runs.timed_runs();
        if !runs.iter().any(|run| run.pid == resumed) {
            violations.push("the paused worker took no task once its model was back".into());
        }
    }
    if cluster {
        for stream in topology.nats.streams_not_at(3).await {
            violations.push(format!("stream {stream} replicas, not 3"));
        }
    }
    row.violations.append(&mut violations);
    row
}

/// Injects `fault` and returns once it is over (the piece restarted or replaced): the
/// submissions it made itself, and anything that went wrong on the way.
async fn inject(fault: Fault, topology: &mut Topology) -> (Vec<Submitted>, Vec<String>) {
    let mut wrong = Vec::new();
    match fault {
        Fault::ForwarderKill => {
            let forwarder = &mut topology.workers[0].forwarder;
            forwarder.signal("-KILL");
            forwarder.wait_exit(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            topology.replace_forwarder(0).await;
        }
        Fault::ModelKill => {
            let readyz = topology.workers[0].readyz();
            let model = &mut topology.workers[0].model;
            model.crash().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            model.restart().await;
            wait_readyz(&readyz, true).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            model.crash().await;
            wait_readyz(&readyz, false).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            model.restart().await;
            wait_readyz(&readyz, true).await;
        }
        Fault::DispatcherKill => {
            topology.dispatcher.signal("-KILL");
            topology.dispatcher.wait_exit(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            topology.replace_dispatcher();
        }
        Fault::GatewayKill => {
            let doomed = topology.gateways[0].clone();
            let pid = doomed.process.pid();
            doomed.process.signal("-KILL");
            crate::support::eventually("the gateway dead", Duration::from_secs(10), || async {
                has_exited(pid).then_some(())
            })
            .await;
            // A load balancer takes it out of rotation once its health checks fail.
            topology.targets.remove(&doomed.base);
            topology.add_gateway().await;
        }
        Fault::NatsKill => {
            let node = topology.nats.leader_of("ferry-tasks").await;
            let outage = Duration::from_secs(5);
            topology.nats.nodes[node].crash_and_restart(outage).await;
            topology.nats.wait_healthy().await;
        }
        Fault::ReceiverDown => {
            topology.receiver.set_down(true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            topology.receiver.set_down(false);
        }
        Fault::ForwarderDrain => {
            let forwarder = &mut topology.workers[0].forwarder;
            forwarder.signal("-TERM");
            let exit = forwarder.wait_exit(Duration::from_secs(30)).await;
            if !exit.success() {
                wrong.push(format!("the drained forwarder exited {exit}"));
            }
            topology.replace_forwarder(0).await;
        }
        Fault::Oversized => {
            let http = http_client();
            let (targets, endpoint) = (&topology.targets, &topology.endpoint);
            let blob = "x".repeat((11 * MIB) as usize);
            let body = json!({ "x": 1_000_000, "blob": blob });
            let huge = load::submit(&http, targets, endpoint, 1_000_000, body).await;
            let answer = json!({ "x": 1_000_001, "answer_bytes": 11 * MIB });
            let large = load::submit(&http, targets, endpoint, 1_000_001, answer).await;
            if !matches!(huge.outcome, load::Outcome::Refused(413, _)) {
                wrong.push(format!("an 11 MiB body was answered {:?}", huge.outcome));
            }
            return (vec![huge, large], wrong);
        }
    }
    (Vec::new(), wrong)
}
