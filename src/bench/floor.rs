//! `ferry bench --jetstream-floor`: what the NATS server spends per task on the least a durable
//! design has to ask of it, as a yardstick for ferry's own figures. On a nats-server of its own
//! (from PATH, file storage, as `ferry dev` starts it), each task is: published to a work queue
//! under its id (the submission, acknowledged), pulled by a worker, which publishes its outcome
//! to a second work queue (acknowledged) and then acknowledges the task, and pulled and
//! acknowledged there by a dispatcher. Two stored messages per task; no HTTP, no model, no
//! records. Reports tasks per second, and CPU per task of the server and of this process (the
//! client side of those operations).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::usage::{self, Usage};

const TASKS: &str = "FLOOR_TASKS";
const OUTCOMES: &str = "FLOOR_OUTCOMES";

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let tasks = settings.tasks;
    let server = crate::nats_server::start(
        Path::new("nats-server"),
        &crate::nats_server::monitoring_config(None),
        None,
    )
    .await?;
    let server_pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("nats-server has exited"))?;
    let monitor = server
        .monitor_url()
        .ok_or_else(|| anyhow::anyhow!("nats-server reported no monitoring port"))?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    for (name, subjects) in [(TASKS, "floor.tasks.>"), (OUTCOMES, "floor.outcomes.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    }
    let consumer = |stream: &'static str| {
        let js = js.clone();
        async move {
            let stream = js.get_stream(stream).await?;
            let consumer = stream
                .create_consumer(pull::Config {
                    durable_name: Some("floor".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(consumer.messages().await?)
        }
    };
    let mut task_messages = consumer(TASKS).await?;
    let mut outcome_messages = consumer(OUTCOMES).await?;

    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let stop = cancel.child_token();
    let worker = tokio::spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move {
            while let Some(Ok(message)) = stop
                .run_until_cancelled(task_messages.next())
                .await
                .flatten()
            {
                let js = js.clone();
                tokio::spawn(async move {
                    let subject = message.subject.replacen("floor.tasks", "floor.outcomes", 1);
                    // The task is acknowledged once its outcome is stored, as a worker does.
                    if let Ok(stored) = js.publish(subject, message.payload.clone()).await
                        && stored.await.is_ok()
                    {
                        let _ = message.ack().await;
                    }
                });
            }
        }
    });
    let dispatcher = tokio::spawn({
        let (done, finished, stop) = (done.clone(), finished.clone(), stop.clone());
        async move {
            while let Some(Ok(message)) = stop
                .run_until_cancelled(outcome_messages.next())
                .await
                .flatten()
            {
                if message.ack().await.is_ok() && done.fetch_add(1, Ordering::Relaxed) + 1 == tasks
                {
                    finished.notify_one();
                }
            }
        }
    });

    let http = reqwest::Client::builder().no_proxy().build()?;
    let usage = Usage::start(&http, &[server_pid, std::process::id()], Some(&monitor)).await?;
    let pacing = (settings.rate > 0).then(|| Duration::from_secs_f64(1.0 / settings.rate as f64));
    let submissions = futures::stream::iter(0..tasks).map(|index| {
        let js = js.clone();
        async move {
            if let Some(every) = pacing {
                tokio::time::sleep_until((start + every * index as u32).into()).await;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let message = jetstream::message::PublishMessage::build()
                .payload(json!({"x": index, "y": "bench"}).to_string().into())
                .message_id(&id);
            js.send_publish(format!("floor.tasks.{id}"), message)
                .await?
                .await?;
            anyhow::Ok(())
        }
    });
    let mut submissions = submissions.buffer_unordered(settings.submit_concurrency);
    while let Some(submitted) = submissions.next().await {
        submitted?;
    }
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while done.load(Ordering::Relaxed) < tasks {
            finished.notified().await;
        }
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let finished_tasks = done.load(Ordering::Relaxed);
    let mut report = json!({
        "mode": "jetstream-floor",
        "tasks": tasks,
        "finished": finished_tasks,
        "drained": drained.is_ok(),
        "tasks_per_second": finished_tasks as f64 / elapsed,
    });
    usage::extend(&mut report, usage.report(&http, finished_tasks).await?);
    stop.cancel();
    let _ = tokio::join!(worker, dispatcher);
    println!("{report:#}");
    Ok(())
}
