//! `ferry bench`: measures a running gateway end to end. It serves its own callback receiver on
//! loopback, submits tasks `{"x": i, "y": "bench"}` to an async endpoint running the example
//! model (result `i + 5`), and reports throughput, submit→callback latency, lost, duplicate and
//! wrong results. With `--wake-rounds` or `--burst` it measures autoscaling instead ([`scaling`]),
//! with `--callback-backlog` a dispatcher's catch-up ([`catchup`]), with `--jetstream-floor`
//! the least NATS work any durable design asks per task ([`floor`]); a sync or streaming
//! endpoint is measured by its requests' latency ([`serving`]).

mod catchup;
mod floor;
pub mod model;
mod scaling;
mod serving;
mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::{Json, Router, extract::Path, extract::State, routing::post};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What `ferry bench` measures and how.
pub struct Settings {
    /// Base URL of the gateway to measure.
    pub gateway: url::Url,
    /// Name of an async endpoint with the callback hook, or of a sync or streaming endpoint.
    pub endpoint: String,
    pub api_key: String,
    pub tasks: u64,
    /// Submissions per second; 0 submits as fast as the gateway accepts them.
    pub rate: u64,
    pub submit_concurrency: usize,
    /// How long to wait for outstanding callbacks after the last submission.
    pub drain_timeout: Duration,
    /// Percent of tasks whose callbacks go to a receiver that never answers.
    pub hanging_percent: u8,
    /// Processes whose CPU time is summed and reported per task.
    pub cpu_pids: Vec<u32>,
    /// The base URL of the NATS server's monitoring endpoints, whose message and JetStream
    /// API counts are reported per task.
    pub nats_monitor: Option<url::Url>,
    /// How callback URLs name the benchmark's receiver, which listens on 127.0.0.1.
    pub callback_host: String,
    /// Measure waking from zero workers this many times instead.
    pub wake_rounds: usize,
    /// Measure scaling out with this many tasks at once instead.
    pub burst: usize,
    /// Measure a dispatcher's catch-up of this many queued callbacks instead.
    pub callback_backlog: u64,
    /// Seconds each task of a wake or burst measurement asks the model to take.
    pub task_seconds: f64,
    /// Measure the NATS work of a bare two-queue pipeline instead.
    pub jetstream_floor: bool,
}

/// Per task: nanoseconds from the start at submission, at first callback, and callbacks seen.
struct Timings {
    start: Instant,
    submitted: Vec<AtomicU64>,
    called_back: Vec<AtomicU64>,
    callbacks: Vec<AtomicU64>,
    wrong: AtomicU64,
    received: AtomicU64,
    done: tokio::sync::Notify,
}

impl Timings {
    fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    if settings.wake_rounds > 0 || settings.burst > 0 {
        return scaling::run(settings, cancel).await;
    }
    if settings.callback_backlog > 0 {
        return catchup::run(settings, cancel).await;
    }
    if settings.jetstream_floor {
        return floor::run(settings, cancel).await;
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(settings.submit_concurrency)
        .build()?;
    let endpoint = find_endpoint(&http, &settings).await?;
    if endpoint["endpoint_type"] != "async" {
        return serving::run(&settings, &http, &endpoint, cancel).await;
    }
    let tasks = usize::try_from(settings.tasks)?;
    let zeros = || (0..tasks).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let timings = Arc::new(Timings {
        start: Instant::now(),
        submitted: zeros(),
        called_back: zeros(),
        callbacks: zeros(),
        wrong: AtomicU64::new(0),
        received: AtomicU64::new(0),
        done: tokio::sync::Notify::new(),
    });
    let receiver = Router::new()
        .route("/cb/{index}", post(receive))
        .with_state(timings.clone());
    let stop_receiver = cancel.child_token();
    let port = serve_receiver(receiver, &stop_receiver).await?.port();
    let receiver_url = format!("http://{}:{port}/cb", settings.callback_host);

    let hang_url = format!("http://{}/hang", HangingReceiver::start().await?.addr);
    let hanging = |index: usize| index % 100 < usize::from(settings.hanging_percent);

    let endpoint_id = endpoint["id"].as_str().unwrap_or_default();
    let submit_url = settings
        .gateway
        .join(&format!("v1/async-tasks?model_endpoint_id={endpoint_id}"))?;
    let pacing = (settings.rate > 0).then(|| Duration::from_secs_f64(1.0 / settings.rate as f64));
    println!(
        "submitting {tasks} tasks to {} (rate: {}, concurrency: {})",
        settings.endpoint,
        rate_text(settings.rate),
        settings.submit_concurrency
    );

    let usage =
        usage::Usage::start(&http, &settings.cpu_pids, settings.nats_monitor.as_ref()).await?;
    let accepted = AtomicU64::new(0);
    let submissions = futures::stream::iter(0..tasks).map(|index| {
        let (http, url, timings, accepted, api_key) = (&http, &submit_url, &timings, &accepted, &settings.api_key);
        let callback_url = if hanging(index) { format!("{hang_url}/{index}") } else { format!("{receiver_url}/{index}") };
        async move {
            if let Some(every) = pacing {
                tokio::time::sleep_until((timings.start + every * index as u32).into()).await;
            }
            let body = json!({"args": {"x": index, "y": "bench"}, "callback_url": callback_url, "return_pickled": false});
            timings.submitted[index].store(timings.elapsed_ns(), Ordering::Relaxed);
            let sent = http.post(url.clone()).basic_auth(api_key, Some("")).json(&body).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    if !hanging(index) {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(response) => eprintln!("submission {index} refused: {}", response.status()),
                Err(error) => eprintln!("submission {index} failed: {error}"),
            }
        }
    });
    let submitting = submissions
        .buffer_unordered(settings.submit_concurrency)
        .collect::<Vec<()>>();
    tokio::select! {
        _ = submitting => {}
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    }
    let submit_seconds = timings.start.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let drained = async {
        while timings.received.load(Ordering::Relaxed) < accepted {
            timings.done.notified().await;
        }
    };
    let _ = tokio::time::timeout(settings.drain_timeout, drained).await;
    stop_receiver.cancel();
    let used = usage.report(&http, accepted).await?;
    let measured: Vec<usize> = (0..tasks).filter(|index| !hanging(*index)).collect();
    let mut report = report(&timings, &measured, accepted, submit_seconds);
    usage::extend(&mut report, used);
    println!("{report:#}");
    Ok(())
}

/// Serves `receiver` on a free port of 127.0.0.1 until `stop`; its address.
async fn serve_receiver(
    receiver: Router,
    stop: &CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        axum::serve(listener, receiver)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    Ok(addr)
}

/// A receiver that accepts connections and never answers, counting the requests it holds.
struct HangingReceiver {
    addr: std::net::SocketAddr,
    /// Connections held now and at most.
    held: Arc<(AtomicU64, AtomicU64)>,
}

impl HangingReceiver {
    async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held: Arc<(AtomicU64, AtomicU64)> = Arc::default();
        let counts = held.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counts = counts.clone();
                tokio::spawn(async move {
                    let now = counts.0.fetch_add(1, Ordering::Relaxed) + 1;
                    counts.1.fetch_max(now, Ordering::Relaxed);
                    // Read and drop whatever comes until the client gives up.
                    let mut sink = [0u8; 4096];
                    while matches!(
                        tokio::io::AsyncReadExt::read(&mut socket, &mut sink).await,
                        Ok(n) if n > 0
                    ) {}
                    counts.0.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(HangingReceiver { addr, held })
    }

    fn most_held(&self) -> u64 {
        self.held.1.load(Ordering::Relaxed)
    }
}

async fn receive(
    State(timings): State<Arc<Timings>>,
    Path(index): Path<usize>,
    Json(body): Json<Value>,
) {
    let now = timings.elapsed_ns();
    let Some(seen) = timings.callbacks.get(index) else {
        return;
    };
    if seen.fetch_add(1, Ordering::Relaxed) == 0 {
        timings.called_back[index].store(now, Ordering::Relaxed);
        if body["result"] != json!(index + 5) || body["status"] != "SUCCESS" {
            timings.wrong.fetch_add(1, Ordering::Relaxed);
        }
        timings.received.fetch_add(1, Ordering::Relaxed);
        timings.done.notify_one();
    }
}

/// The Launch view of the endpoint `--endpoint` names.
async fn find_endpoint(http: &reqwest::Client, settings: &Settings) -> anyhow::Result<Value> {
    let mut url = settings.gateway.join("v1/model-endpoints")?;
    url.query_pairs_mut()
        .append_pair("name", &settings.endpoint);
    let listing: Value = http
        .get(url)
        .basic_auth(&settings.api_key, Some(""))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let endpoint = listing["model_endpoints"][0].clone();
    anyhow::ensure!(
        endpoint["id"].is_string(),
        "endpoint {} not found at {}",
        settings.endpoint,
        settings.gateway
    );
    Ok(endpoint)
}

/// Reports on the `measured` tasks (those whose callbacks go to the answering receiver).
fn report(timings: &Timings, measured: &[usize], accepted: u64, submit_seconds: f64) -> Value {
    let tasks = measured.len();
    let mut latencies: Vec<u64> = Vec::with_capacity(tasks);
    let mut duplicates = 0;
    let mut last_callback = 0;
    for &index in measured {
        let seen = timings.callbacks[index].load(Ordering::Relaxed);
        if seen == 0 {
            continue;
        }
        duplicates += seen - 1;
        let at = timings.called_back[index].load(Ordering::Relaxed);
        last_callback = last_callback.max(at);
        latencies.push(at.saturating_sub(timings.submitted[index].load(Ordering::Relaxed)));
    }
    let received = latencies.len() as u64;
    let seconds = last_callback as f64 / 1e9;
    json!({
        "measured_tasks": tasks,
        "accepted": accepted,
        "callbacks": received,
        "lost": accepted.saturating_sub(received),
        "duplicates": duplicates,
        "wrong_results": timings.wrong.load(Ordering::Relaxed),
        "submit_seconds": submit_seconds,
        "seconds_to_last_callback": seconds,
        "tasks_per_second": if seconds > 0.0 { received as f64 / seconds } else { 0.0 },
        "latency_ms": percentiles(&mut latencies),
    })
}

/// The p50, p90, p99 and max of `latencies_ns`, in milliseconds (`null` without any).
fn percentiles(latencies_ns: &mut [u64]) -> Value {
    latencies_ns.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies_ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * latencies_ns.len() as f64).ceil() as usize).clamp(1, latencies_ns.len());
        latencies_ns[rank - 1] as f64 / 1e6
    };
    json!({"p50": percentile(0.50), "p90": percentile(0.90), "p99": percentile(0.99), "max": percentile(1.0)})
}

fn rate_text(rate: u64) -> String {
    if rate == 0 {
        "as fast as accepted".into()
    } else {
        format!("{rate}/s")
    }
}
