//! `ferry bench`'s and `ferry bench-model`'s flags.

use std::time::Duration;

use super::parse_seconds;
use crate::bench::Settings;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the gateway to measure.
    #[arg(
        long,
        env = "FERRY_BENCH_GATEWAY",
        default_value = "http://127.0.0.1:5005"
    )]
    pub gateway: url::Url,
    /// Name of an async endpoint with the callback hook.
    #[arg(
        long,
        env = "FERRY_BENCH_ENDPOINT",
        default_value = "demo-endpoint-callback"
    )]
    pub endpoint: String,
    /// API key sent to the gateway.
    #[arg(long, env = "LAUNCH_API_KEY", default_value = "bench")]
    pub api_key: String,
    /// Tasks to submit.
    #[arg(long, env = "FERRY_BENCH_TASKS", default_value = "10000")]
    pub tasks: u64,
    /// Submissions per second; 0 submits as fast as the gateway accepts them.
    #[arg(long, env = "FERRY_BENCH_RATE", default_value = "0")]
    pub rate: u64,
    /// Submissions in flight at once.
    #[arg(long, env = "FERRY_BENCH_SUBMIT_CONCURRENCY", default_value = "64")]
    pub submit_concurrency: usize,
    /// Seconds to wait for outstanding callbacks after the last submission.
    #[arg(long, env = "FERRY_BENCH_DRAIN_TIMEOUT_SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub drain_timeout: Duration,
    /// Percent of tasks whose callbacks go to a receiver that never answers (the rest are
    /// measured): shows whether one hanging receiver slows the others.
    #[arg(long, env = "FERRY_BENCH_HANGING_PERCENT", default_value = "0", value_parser = clap::value_parser!(u8).range(0..100))]
    pub hanging_percent: u8,
    /// Processes whose CPU time is summed and reported per task (for example the `ferry dev`,
    /// `nats-server` and model processes), as comma-separated pids.
    #[arg(long, env = "FERRY_BENCH_CPU_PIDS", value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
    /// Base URL of the NATS server's monitoring endpoints (`ferry dev --nats-monitor-port`):
    /// the messages and JetStream API calls per task are reported from its counters.
    #[arg(long, env = "FERRY_BENCH_NATS_MONITOR")]
    pub nats_monitor: Option<url::Url>,
    /// How callback URLs name the benchmark's receiver, which listens on 127.0.0.1: a name
    /// such as `localhost` measures the lookups the SSRF guard makes.
    #[arg(long, env = "FERRY_BENCH_CALLBACK_HOST", default_value = "127.0.0.1")]
    pub callback_host: String,
    /// Measure waking instead: this many times, wait for the endpoint (with `minWorkers: 0`) to
    /// idle at zero workers, send one task and time its first worker and its result.
    #[arg(long, env = "FERRY_BENCH_WAKE_ROUNDS", default_value = "0")]
    pub wake_rounds: usize,
    /// Measure scaling out instead: with the endpoint at its minimum, send this many tasks at
    /// once and time each added worker.
    #[arg(long, env = "FERRY_BENCH_BURST", default_value = "0")]
    pub burst: usize,
    /// Measure a dispatcher's catch-up instead: queue this many callbacks on a nats-server of
    /// its own, then start `ferry dispatcher` and time the drain (`--hanging-percent` of them
    /// go to a receiver that never answers).
    #[arg(long, env = "FERRY_BENCH_CALLBACK_BACKLOG", default_value = "0")]
    pub callback_backlog: u64,
    /// Seconds each task of a wake or burst measurement asks the model to take (`sleep`).
    #[arg(long, env = "FERRY_BENCH_TASK_SECONDS", default_value = "1.0")]
    pub task_seconds: f64,
    /// Measure the floor under ferry's figures instead: on a nats-server of its own, `--tasks`
    /// pass through the least a durable design asks of it (a task stored, taken, its outcome
    /// stored, taken; each acknowledged) at `--rate`, and its CPU per task is reported.
    #[arg(long, env = "FERRY_BENCH_JETSTREAM_FLOOR")]
    pub jetstream_floor: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchModelArgs {
    /// Port to listen on (`ferry dev` and pods give it as PORT).
    #[arg(long, env = "PORT")]
    pub port: u16,
    /// Milliseconds each prediction takes (a model that waits, as one on a GPU would).
    #[arg(long, env = "FERRY_BENCH_MODEL_DELAY_MS", default_value = "0")]
    pub delay_ms: u64,
}

impl BenchArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            gateway: self.gateway.clone(),
            endpoint: self.endpoint.clone(),
            api_key: self.api_key.clone(),
            tasks: self.tasks,
            rate: self.rate,
            submit_concurrency: self.submit_concurrency,
            drain_timeout: self.drain_timeout,
            hanging_percent: self.hanging_percent,
            cpu_pids: self.cpu_pids.clone(),
            nats_monitor: self.nats_monitor.clone(),
            callback_host: self.callback_host.clone(),
            wake_rounds: self.wake_rounds,
            burst: self.burst,
            callback_backlog: self.callback_backlog,
            task_seconds: self.task_seconds,
            jetstream_floor: self.jetstream_floor,
        }
    }
}
