//! `ferry bench --callback-backlog N`: how fast a dispatcher catches up after a restart. Starts
//! its own nats-server (from PATH) on 127.0.0.1, fills the callbacks stream with N jobs of one
//! endpoint to its own fast receiver on 127.0.0.1 — `--hanging-percent` of them to a receiver
//! that never answers — then starts `ferry dispatcher` (this binary; it inherits the
//! environment, so `FERRY_PER_HOST_CONCURRENCY` and the other dispatcher settings apply) and
//! times the drain of the fast receiver's callbacks. Reports callbacks per second, duplicates,
//! the most requests the hanging receiver held at once, how often jobs were deferred and the
//! dispatcher's CPU per callback.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, extract::Path as UrlPath, extract::State, routing::post};
use base64::Engine;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::usage::cpu_seconds;
use super::{HangingReceiver, serve_receiver};
use crate::crd::EndpointId;
use crate::queue::{Queue, QueueSettings};
use crate::seal::KeyRing;
use crate::task::{CallbackJob, CallbackTarget, TaskId, TaskOutcome, now_ms};

/// Jobs published at once while filling the stream.
const PUBLISH_CONCURRENCY: usize = 256;

/// Callbacks seen by the fast receiver: per job, and the time of the last first one.
struct Seen {
    start: Instant,
    per_job: Vec<AtomicU64>,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    received: AtomicU64,
    done: tokio::sync::Notify,
}

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let jobs = usize::try_from(settings.callback_backlog)?;
    let hanging = |index: usize| index % 100 < usize::from(settings.hanging_percent);
    let fast_jobs = (0..jobs).filter(|index| !hanging(*index)).count() as u64;

    let server = crate::nats_server::start(Path::new("nats-server"), "", None).await?;
    let connection = crate::queue::Connection::open(server.url())?;
    let queue = Queue::connect(
        &connection,
        QueueSettings::default(),
        Duration::from_secs(10),
    )
    .await?;
    let key_dir = tempfile::tempdir()?;
    let key_file = key_dir.path().join("seal.key");
    let key = crate::seal::random_key();
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode(key),
    )?;
    let ring = KeyRing::read(&key_file)?;

    let seen = Arc::new(Seen {
        start: Instant::now(),
        per_job: (0..jobs).map(|_| AtomicU64::new(0)).collect(),
        first_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        received: AtomicU64::new(0),
        done: tokio::sync::Notify::new(),
    });
    let receiver = Router::new()
        .route("/cb/{index}", post(receive))
        .with_state(seen.clone());
    let stop_receiver = cancel.child_token();
    let fast_url = format!(
        "http://{}/cb",
        serve_receiver(receiver, &stop_receiver).await?
    );
    let hang = HangingReceiver::start().await?;
    let hang_url = format!("http://{}/hang", hang.addr);

    let endpoint = EndpointId::for_resource("bench", "catchup");
    println!(
        "queueing {jobs} callbacks ({fast_jobs} to a fast receiver, the rest to a hanging one)"
    );
    let publishing = futures::stream::iter(0..jobs)
        .map(|index| {
            let url = if hanging(index) {
                format!("{hang_url}/{index}")
            } else {
                format!("{fast_url}/{index}")
            };
            publish_job(&queue, &ring, &endpoint, index, url)
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    publishing
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;

    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let started_ns = seen.start.elapsed().as_nanos() as u64;
    let mut dispatcher = tokio::process::Command::new(std::env::current_exe()?)
        .arg("dispatcher")
        .env(crate::worker::env::NATS_URL, server.url())
        .env("FERRY_SEAL_KEY_FILE", &key_file)
        .env("FERRY_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8")
        .env(crate::worker::env::ADMIN_LISTEN, admin.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pids: Vec<u32> = dispatcher.id().into_iter().collect();
    let cpu_before = cpu_seconds(&pids);
    let drained = async {
        while seen.received.load(Ordering::Relaxed) < fast_jobs {
            seen.done.notified().await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(settings.drain_timeout, drained) => {}
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    }
    let cpu = cpu_seconds(&pids) - cpu_before;
    let deferred = deferred_jobs(admin).await;
    dispatcher.start_kill()?;
    stop_receiver.cancel();

    let received = seen.received.load(Ordering::Relaxed);
    let duplicates: u64 = seen
        .per_job
        .iter()
        .map(|count| count.load(Ordering::Relaxed).saturating_sub(1))
        .sum();
    let seconds = |ns: u64| ns.saturating_sub(started_ns) as f64 / 1e9;
    let first = seconds(seen.first_ns.load(Ordering::Relaxed));
    let last = seconds(seen.last_ns.load(Ordering::Relaxed));
    let report = json!({
        "queued": jobs,
        "fast_receiver_jobs": fast_jobs,
        "callbacks": received,
        "lost": fast_jobs.saturating_sub(received),
        "duplicates": duplicates,
        "seconds_to_first_callback": first,
        "seconds_to_last_callback": last,
        "callbacks_per_second": if last > first { received as f64 / (last - first) } else { 0.0 },
        "hanging_receiver_most_held": hang.most_held(),
        "deferred": deferred,
        "dispatcher_cpu_ms_per_callback": if received > 0 { cpu * 1000.0 / received as f64 } else { 0.0 },
    });
    println!("{report:#}");
    Ok(())
}

/// `ferry_dispatcher_deferred_total` from the dispatcher's /metrics: how often a job went back
/// to JetStream for want of a slot.
async fn deferred_jobs(admin: std::net::SocketAddr) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ferry_dispatcher_deferred_total "))
        .and_then(|value| value.trim().parse().ok())
}

async fn publish_job(
    queue: &Queue,
    ring: &KeyRing,
    endpoint: &EndpointId,
    index: usize,
    url: String,
) -> anyhow::Result<()> {
    let task_id = TaskId::generate(endpoint);
    let target = CallbackTarget { url, auth: None };
    let job = CallbackJob {
        target: target.seal_for(ring, endpoint, &task_id)?,
        task_id,
        endpoint_id: endpoint.clone(),
        outcome: TaskOutcome::Success {
            result: json!(index),
        },
        submitted_at_ms: now_ms(),
        prior_attempts: 0,
        redeliveries: 0,
    };
    Ok(queue.forwarder(endpoint).publish_callback(&job).await?)
}

async fn receive(State(seen): State<Arc<Seen>>, UrlPath(index): UrlPath<usize>) {
    let Some(count) = seen.per_job.get(index) else {
        return;
    };
    if count.fetch_add(1, Ordering::Relaxed) == 0 {
        let now = seen.start.elapsed().as_nanos() as u64;
        let _ = seen
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        seen.last_ns.fetch_max(now, Ordering::Relaxed);
        seen.received.fetch_add(1, Ordering::Relaxed);
        seen.done.notify_one();
    }
}
