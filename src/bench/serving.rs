//! `ferry bench` against a sync or streaming endpoint: requests `{"x": i, "y": "bench"}` (answer
//! `i + 5`) at the given rate, or as fast as answered, and reports requests per second, request →
//! whole answer latency, failed and wrong answers, with the same CPU and NATS figures per request
//! as an async run. A streaming answer is read to its end; its last event carries the result.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Settings, percentiles, rate_text, usage};

/// How one request ended.
enum Answer {
    Right,
    Wrong,
    Failed(String),
}

pub async fn run(
    settings: &Settings,
    http: &reqwest::Client,
    endpoint: &Value,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let streaming = endpoint["endpoint_type"] == "streaming";
    let route = if streaming {
        "v1/streaming-tasks"
    } else {
        "v1/sync-tasks"
    };
    let endpoint_id = endpoint["id"].as_str().unwrap_or_default();
    let url = settings
        .gateway
        .join(&format!("{route}?model_endpoint_id={endpoint_id}"))?;
    let requests = usize::try_from(settings.tasks)?;
    let pacing = (settings.rate > 0).then(|| Duration::from_secs_f64(1.0 / settings.rate as f64));
    println!(
        "sending {requests} {} requests to {} (rate: {}, concurrency: {})",
        if streaming { "streaming" } else { "sync" },
        settings.endpoint,
        rate_text(settings.rate),
        settings.submit_concurrency
    );
    let usage =
        usage::Usage::start(http, &settings.cpu_pids, settings.nats_monitor.as_ref()).await?;
    let start = Instant::now();
    let latencies_ns = Mutex::new(Vec::with_capacity(requests));
    let (wrong, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let sending = futures::stream::iter(0..requests)
        .map(|index| {
            let (url, latencies_ns, wrong, failed) = (&url, &latencies_ns, &wrong, &failed);
            async move {
                if let Some(every) = pacing {
                    tokio::time::sleep_until((start + every * index as u32).into()).await;
                }
                let sent = Instant::now();
                let body = json!({"args": {"x": index, "y": "bench"}, "return_pickled": false});
                let request = http
                    .post(url.clone())
                    .basic_auth(&settings.api_key, Some(""))
                    .json(&body);
                match answer_of(request, streaming, index + 5).await {
                    Answer::Right => {
                        let took = sent.elapsed().as_nanos() as u64;
                        latencies_ns
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(took);
                    }
                    Answer::Wrong => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Answer::Failed(why) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request {index} failed: {why}");
                    }
                }
            }
        })
        .buffer_unordered(settings.submit_concurrency)
        .collect::<Vec<()>>();
    tokio::select! {
        _ = sending => {}
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut latencies = latencies_ns
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let answered = latencies.len() as u64;
    let used = usage.report(http, answered).await?;
    let mut report = json!({
        "requests": requests,
        "answered": answered,
        "failed": failed.load(Ordering::Relaxed),
        "wrong_results": wrong.load(Ordering::Relaxed),
        "seconds": seconds,
        "requests_per_second": answered as f64 / seconds,
        "latency_ms": percentiles(&mut latencies),
    });
    usage::extend(&mut report, used);
    println!("{report:#}");
    Ok(())
}

async fn answer_of(request: reqwest::RequestBuilder, streaming: bool, expected: usize) -> Answer {
    let response = match request.send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return Answer::Failed(format!("answered {}", response.status())),
        Err(error) => return Answer::Failed(error.to_string()),
    };
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => return Answer::Failed(error.to_string()),
    };
    // A stream's events are `data:` lines; the last one carries the result.
    let answer = if streaming {
        body.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .next_back()
            .unwrap_or_default()
    } else {
        body.as_str()
    };
    let Ok(answer) = serde_json::from_str::<Value>(answer.trim()) else {
        return Answer::Failed(format!("an answer that is not JSON: {body}"));
    };
    let result = &answer["result"];
    let expected = json!(expected);
    if answer["status"] == "SUCCESS" && (*result == expected || result["result"] == expected) {
        Answer::Right
    } else {
        Answer::Wrong
    }
}
