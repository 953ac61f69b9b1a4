//! `ferry bench --wake-rounds N --burst M`: how fast an endpoint's workers follow its load,
//! measured from outside through the API. Wake: with the endpoint idle at zero workers, one task
//! (async or sync, by the endpoint's type) — time to the first available worker and to the
//! result. Burst: with the endpoint at its minimum, M tasks at once — time until each further
//! worker is available. Worker counts are read every 10 ms from the endpoint's
//! `deployment_state`; the model is asked to take `--task-seconds` per task (`sleep` argument).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Settings;

/// How often worker counts and async results are read.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// How long the endpoint may take to reach the state a measurement starts from.
const SETTLE_WITHIN: Duration = Duration::from_secs(600);

struct Api {
    http: reqwest::Client,
    settings: Settings,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.settings.gateway.join(path)?;
        let response = self
            .http
            .get(url)
            .basic_auth(&self.settings.api_key, Some(""))
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.settings.gateway.join(path)?;
        let response = self
            .http
            .post(url)
            .basic_auth(&self.settings.api_key, Some(""))
            .json(body)
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    async fn endpoint(&self) -> anyhow::Result<Value> {
        super::find_endpoint(&self.http, &self.settings).await
    }

    async fn available_workers(&self) -> anyhow::Result<u64> {
        let endpoint = self.endpoint().await?;
        Ok(endpoint["deployment_state"]["available_workers"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until `settled` holds for the endpoint's available and total workers.
    async fn settle(&self, what: &str, settled: impl Fn(u64, u64) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let state = self.endpoint().await?["deployment_state"].clone();
            let available = state["available_workers"].as_u64().unwrap_or(0);
            let total = available + state["unavailable_workers"].as_u64().unwrap_or(0);
            if settled(available, total) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the endpoint never got {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one task to its result: through the queue (polling its status) or synchronously.
    async fn run_task(&self, id: &str, sync: bool, x: usize) -> anyhow::Result<()> {
        let body = json!({"args": {"x": x, "y": "bench", "sleep": self.settings.task_seconds}});
        if sync {
            let answer = self
                .post(&format!("v1/sync-tasks?model_endpoint_id={id}"), &body)
                .await?;
            anyhow::ensure!(answer["status"] == "SUCCESS", "sync task failed: {answer}");
            return Ok(());
        }
        let submitted = self
            .post(&format!("v1/async-tasks?model_endpoint_id={id}"), &body)
            .await?;
        let task = submitted["task_id"].as_str().unwrap_or_default().to_owned();
        loop {
            let record = self.get(&format!("v1/async-tasks/{task}")).await?;
            match record["status"].as_str() {
                Some("SUCCESS") => return Ok(()),
                Some("FAILURE") => anyhow::bail!("task {task} failed: {record}"),
                _ => tokio::time::sleep(POLL_EVERY).await,
            }
        }
    }

    /// Seconds from `start` until `available_workers` first reached 1, 2, … up to `most`,
    /// watched until `done` finishes (and answered once it has).
    async fn watch_workers(
        &self,
        start: Instant,
        most: u64,
        done: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<Vec<f64>> {
        let mut done = std::pin::pin!(done);
        let mut reached: Vec<f64> = Vec::new();
        loop {
            let available = self.available_workers().await?.min(most);
            while (reached.len() as u64) < available {
                reached.push(start.elapsed().as_secs_f64());
            }
            if reached.len() as u64 == most {
                done.await?;
                return Ok(reached);
            }
            tokio::select! {
                finished = &mut done => {
                    finished?;
                    return Ok(reached);
                }
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let api = Api {
        http: reqwest::Client::builder().no_proxy().build()?,
        settings,
    };
    let endpoint = api.endpoint().await?;
    let id = endpoint["id"].as_str().unwrap_or_default().to_owned();
    let sync = endpoint["endpoint_type"] != "async";
    let state = &endpoint["deployment_state"];
    let (min, max) = (
        state["min_workers"].as_u64().unwrap_or(0),
        state["max_workers"].as_u64().unwrap_or(1),
    );
    let measuring = async {
        let mut report =
            json!({"endpoint": api.settings.endpoint, "endpoint_type": endpoint["endpoint_type"]});
        if api.settings.wake_rounds > 0 {
            anyhow::ensure!(min == 0, "waking needs an endpoint with minWorkers: 0");
            report["wake"] = wake(&api, &id, sync).await?;
        }
        if api.settings.burst > 0 {
            report["burst"] = burst(&api, &id, sync, min, max).await?;
        }
        anyhow::Ok(report)
    };
    let report = tokio::select! {
        report = measuring => report?,
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    };
    println!("{report:#}");
    Ok(())
}

async fn wake(api: &Api, id: &str, sync: bool) -> anyhow::Result<Value> {
    let (mut to_worker, mut to_result) = (Vec::new(), Vec::new());
    for round in 0..api.settings.wake_rounds {
        api.settle("to zero workers", |_, total| total == 0).await?;
        let start = Instant::now();
        let task = async {
            api.run_task(id, sync, round).await?;
            to_result.push(start.elapsed().as_secs_f64());
            anyhow::Ok(())
        };
        let reached = api.watch_workers(start, 1, task).await?;
        to_worker.extend(reached.first().copied());
        println!(
            "wake {round}: worker available after {:.3} s, result after {:.3} s",
            to_worker.last().copied().unwrap_or(f64::NAN),
            to_result.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(json!({
        "rounds": api.settings.wake_rounds,
        "submission_to_worker_available_s": summary(to_worker),
        "submission_to_result_s": summary(to_result),
    }))
}

async fn burst(api: &Api, id: &str, sync: bool, min: u64, max: u64) -> anyhow::Result<Value> {
    api.settle("to its minimum", |available, total| {
        total == min && available == min
    })
    .await?;
    let tasks = api.settings.burst;
    let start = Instant::now();
    let all = async {
        let runs = (0..tasks).map(|x| api.run_task(id, sync, x));
        for outcome in futures::future::join_all(runs).await {
            outcome?;
        }
        anyhow::Ok(())
    };
    let reached = api.watch_workers(start, max, all).await?;
    let finished = start.elapsed().as_secs_f64();
    let first_new = (min as usize).min(reached.len());
    println!(
        "burst of {tasks}: workers available at {:?} s",
        reached
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
    );
    Ok(json!({
        "tasks": tasks,
        "task_seconds": api.settings.task_seconds,
        "workers_from": min,
        "seconds_until_available_worker_n": reached,
        "seconds_until_first_added_worker": reached.get(first_new),
        "seconds_until_all_tasks_done": finished,
    }))
}

fn summary(mut seconds: Vec<f64>) -> Value {
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| seconds.get(((q * seconds.len() as f64).ceil() as usize).saturating_sub(1));
    json!({"min": seconds.first(), "p50": at(0.5), "max": seconds.last()})
}
