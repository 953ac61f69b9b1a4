//! The worker sidecar: pulls an endpoint's tasks, calls the model container, records
//! `STARTED` once the task has run for [`STARTED_AFTER`] (a compare-and-set over the queued
//! record: a task cancelled as it was handed out stops there), records `SUCCESS`/`FAILURE`,
//! queues the callback, and only then acknowledges the task, so a worker that dies mid-task
//! loses nothing (the task is delivered again). A task cancelled while queued is taken out of
//! the queue by its cancellation and never reaches a worker. On shutdown
//! it stops pulling and finishes what it holds. A task ends `FAILURE` only when the model
//! answered it (4xx/5xx, a body that is not JSON, a prediction that timed out) or its attempts
//! ran out; a model that cannot take tasks pauses the worker instead (see [`outage`]) and the
//! task goes back to the queue without spending an attempt (see [`crate::queue::TaskDelivery`]).
//! A task that expired in the queue unrun is recorded so (see [`expiry`]).

mod bounded;
mod expiry;
mod input;
mod invoke;
mod outage;
mod presence;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use input::InputFetcher;
pub use invoke::{ModelClient, Prediction, Probing};

use crate::admin::{self, Readiness};
use crate::crd::EndpointId;
use crate::metrics::EndpointLabel;
use crate::queue::{
    self, ForwarderQueue, Held, MAX_TASK_ATTEMPTS, MAX_TASK_DELIVERIES, Queue, QueueSettings,
    RecordAt, TaskDelivery,
};
use crate::task::{
    CallbackJob, TaskError, TaskMessage, TaskOutcome, TaskRecord, TaskStatus, now_ms,
};

/// Pause before opening the queue again after it failed while resuming.
const REOPEN_RETRY: Duration = Duration::from_secs(1);
/// How long a worker keeps trying to record an outcome its model produced, holding the task
/// meanwhile: a JetStream cluster electing a new leader refuses writes for a few seconds, and
/// leaving the task to be delivered again would run it again.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);
/// First and longest pause between those tries.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);
/// First and longest wait before resuming after a pause in which the model answered nothing
/// (a model whose health route answers while it drops every task); doubles between them.
const IDLE_PAUSE_FIRST: Duration = Duration::from_millis(500);
const IDLE_PAUSE_MAX: Duration = Duration::from_secs(30);
/// How long a task runs before its worker records it STARTED. Sooner, nobody polling would
/// see the state before the outcome replaces it, and the write would only cost the queue.
const STARTED_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] invoke::Error),
    #[error(transparent)]
    Queue(#[from] queue::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    #[prometheus(flatten)]
    endpoint: EndpointLabel,
    /// `success` or `failure`.
    outcome: &'static str,
}

pub struct ForwarderMetrics {
    tasks: Family<TaskLabels, Counter>,
    predict_seconds: Family<EndpointLabel, Histogram>,
    handed_back: Family<EndpointLabel, Counter>,
}

impl ForwarderMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = ForwarderMetrics {
            tasks: Family::default(),
            predict_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 16,
                ))
            }),
            handed_back: Family::default(),
        };
        registry.register(
            "ferry_forwarder_tasks",
            "Tasks finished per endpoint, by outcome (success, failure, expired: dropped by the queue unrun and recorded as a failure)",
            metrics.tasks.clone(),
        );
        registry.register(
            "ferry_forwarder_predict_duration_seconds",
            "Time the model took per task, per endpoint",
            metrics.predict_seconds.clone(),
        );
        registry.register(
            "ferry_forwarder_handed_back",
            "Tasks handed back to the queue unrun (the model could not take them, or the worker stopped taking tasks), per endpoint",
            metrics.handed_back.clone(),
        );
        Arc::new(metrics)
    }

    fn task_handed_back(&self, endpoint: &EndpointId) {
        self.handed_back
            .get_or_create(&EndpointLabel::of(endpoint))
            .inc();
    }

    fn observe_predict(&self, endpoint: &EndpointId, took: Duration) {
        self.predict_seconds
            .get_or_create(&EndpointLabel::of(endpoint))
            .observe(took.as_secs_f64());
    }

    fn task_finished(&self, endpoint: &EndpointId, status: &TaskStatus) {
        let outcome = if *status == TaskStatus::Success {
            "success"
        } else {
            "failure"
        };
        self.count_task(endpoint, outcome);
    }

    fn task_expired(&self, endpoint: &EndpointId) {
        self.count_task(endpoint, "expired");
    }

    fn count_task(&self, endpoint: &EndpointId, outcome: &'static str) {
        let endpoint = EndpointLabel::of(endpoint);
        self.tasks
            .get_or_create(&TaskLabels { endpoint, outcome })
            .inc();
    }
}

/// One worker's forwarder: which endpoint, which model, how many tasks at once.
#[derive(Clone)]
pub struct Forwarder {
    pub queue: ForwarderQueue,
    pub endpoint_id: EndpointId,
    pub model: ModelClient,
    pub concurrency: usize,
    pub metrics: Arc<ForwarderMetrics>,
}

/// What became of a delivery.
enum Handled {
    /// Its outcome is recorded (by this run or an earlier one): acknowledge it.
    Recorded,
    /// Not started because the worker stopped taking tasks: hand it back unrun.
    Unstarted,
    /// The model could not take it (why): hand it back unrun.
    ModelUnavailable(String),
}

impl Forwarder {
    /// Waits for the model, then runs tasks until `cancel`, then finishes the ones it holds.
    /// While the model is unavailable it takes none and reports itself not ready.
    pub async fn run(self, readiness: Readiness, cancel: CancellationToken) -> Result<(), Error> {
        // Shared by every task's handler: a reference per task, not a copy of the model client.
        let this = Arc::new(self);
        let mut started = false;
        let mut idle_pause = Duration::ZERO;
        let probing = |started| {
            if started {
                Probing::Resuming
            } else {
                Probing::Starting
            }
        };
        while this.model.wait_until_ready(&cancel, probing(started)).await {
            let tasks = match this.queue.tasks().await {
                Ok(tasks) => tasks,
                // At start-up a queue that cannot be opened is a configuration to fix.
                Err(error) if !started => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, "opening the task queue to resume failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        () = tokio::time::sleep(REOPEN_RETRY) => continue,
                    }
                }
            };
            started = true;
            let spell = outage::Spell::begin(&cancel, &readiness);
            tracing::info!(endpoint = %this.endpoint_id, concurrency = this.concurrency, "taking tasks");
            let keep_alive_every = (tasks.ack_wait() / 3).max(Duration::from_millis(200));
            let consuming = queue::consume(tasks, this.concurrency, spell.stop(), |delivery| {
                let (forwarder, spell) = (this.clone(), spell.clone());
                async move { forwarder.handle(delivery, keep_alive_every, &spell).await }
            });
            tokio::join!(consuming, spell.watch(&this.model));
            readiness.set_not_ready();
            if cancel.is_cancelled() {
                break;
            }
            idle_pause = if spell.model_answered() {
                Duration::ZERO
            } else {
                (idle_pause * 2).clamp(IDLE_PAUSE_FIRST, IDLE_PAUSE_MAX)
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = tokio::time::sleep(idle_pause) => {}
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        delivery: TaskDelivery,
        keep_alive_every: Duration,
        spell: &outage::Spell,
    ) {
        if let Some(task) = delivery.expired_task() {
            self.handle_expiry(&delivery, task).await;
            return;
        }
        let task = match delivery.task().await {
            Ok(task) => task,
            Err(error) if error.is_unreadable() => {
                // Without a readable task there is no id to record a result under.
                tracing::error!(%error, "dropping an unreadable task message");
                let _ = delivery.ack().await;
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "loading the task failed; handing it back");
                let _ = delivery.hand_back().await;
                return;
            }
        };
        let span =
            tracing::info_span!("task", endpoint = %task.endpoint_id, task_id = %task.task_id);
        let result = async {
            let keep_alive = queue::keep_alive_while_held(&delivery, keep_alive_every);
            tokio::select! {
                result = self.process(&delivery, &task, spell) => result,
                never = keep_alive => match never {},
            }
        }
        .instrument(span.clone())
        .await;
        match result {
            Ok(Handled::Recorded) => {
                if let Err(error) = delivery.ack().await {
                    span.in_scope(|| tracing::warn!(%error, "ack failed; the task will be delivered again"));
                }
            }
            Ok(handed) => {
                if let Handled::ModelUnavailable(reason) = handed {
                    spell.pause(&reason);
                }
                self.metrics.task_handed_back(&task.endpoint_id);
                if let Err(error) = delivery.hand_back().await {
                    span.in_scope(|| tracing::warn!(%error, "handing back failed; the task will be delivered again after its lease"));
                }
            }
            // Not acknowledged: the queue hands the task out again after the ack wait.
            Err(error) => span.in_scope(|| {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "recording the task failed; it will be retried")
            }),
        }
    }

    async fn process(
        &self,
        delivery: &TaskDelivery,
        task: &TaskMessage,
        spell: &outage::Spell,
    ) -> Result<Handled, queue::Error> {
        if delivery.attempt() > 1 {
            let record = self.queue.task_record(&task.task_id).await?;
            if let Some(record) = &record
                && record.status.is_final()
            {
                // An earlier worker recorded the outcome but stopped before acknowledging it.
                self.send_callback(task, outcome_of(record)).await?;
                return Ok(Handled::Recorded);
            }
            let handed_back = record.map_or(0, |record| record.handed_back);
            if delivery.attempts_exhausted(handed_back) {
                let message = format!(
                    "the task was abandoned after {MAX_TASK_ATTEMPTS} attempts: each worker stopped before finishing it"
                );
                self.finish(
                    task,
                    final_record(task, failure_without_answer(message), None),
                    None,
                )
                .await?;
                return Ok(Handled::Recorded);
            }
        }
        if spell.is_over() && !delivery.is_last_delivery() {
            // Received as the worker stopped taking tasks: another worker, or this one later,
            // runs it.
            return Ok(Handled::Unstarted);
        }
        // The PENDING record as the gateway wrote it: current unless another run got further.
        let pending = task.record_revision.map(|revision| RecordAt {
            record: TaskRecord::pending(task.endpoint_id.clone()),
            revision,
        });
        let run_started_ms = now_ms();
        let timer = std::time::Instant::now();
        let predicting = self.model.predict_task(task);
        tokio::pin!(predicting);
        // STARTED only once a poll could see it: a task answered sooner goes from PENDING to
        // its outcome in one write. A cancelled task was taken out of the queue; one cancelled
        // as it was handed out is stopped here, its model call dropped.
        let (prediction, started) = tokio::select! {
            prediction = &mut predicting => (prediction, None),
            () = tokio::time::sleep(STARTED_AFTER) => {
                let started = TaskRecord {
                    started_at_ms: Some(run_started_ms),
                    ..TaskRecord::started(task.endpoint_id.clone())
                };
                let started = self
                    .queue
                    .advance_task_record(&task.task_id, &started, pending.clone())
                    .await;
                match started {
                    Ok(started) if started.record.status.is_final() => {
                        // Cancelled, or finished by an earlier run: this run's answer is not
                        // wanted.
                        self.send_callback(task, outcome_of(&started.record))
                            .await?;
                        return Ok(Handled::Recorded);
                    }
                    Ok(started) => (predicting.await, Some(started)),
                    // The state only informs: the run goes on, and its outcome is recorded by
                    // compare-and-set all the same (a cancellation still stands).
                    Err(error) => {
                        tracing::warn!(%error, "recording STARTED failed; the task runs on");
                        (predicting.await, None)
                    }
                }
            }
        };
        let prediction = match prediction {
            Prediction::Unavailable { reason } if !delivery.is_last_delivery() => {
                // Queued again unrun: PENDING again, so it may still be cancelled.
                if let Some(started) = &started {
                    self.queue.unstart_task(&task.task_id, started).await?;
                }
                return Ok(Handled::ModelUnavailable(reason));
            }
            Prediction::Unavailable { reason } => failure_without_answer(format!(
                "the task was delivered {MAX_TASK_DELIVERIES} times, the most the queue allows, and the model could not take it the last time: {reason}"
            )),
            answered => {
                spell.note_model_answered();
                answered
            }
        };
        self.metrics
            .observe_predict(&task.endpoint_id, timer.elapsed());
        let outcome = final_record(task, prediction, Some(run_started_ms));
        self.finish(task, outcome, started.or(pending)).await?;
        Ok(Handled::Recorded)
    }

    /// Records the outcome over `last_seen` (the record as this run last saw it, if known).
    async fn finish(
        &self,
        task: &TaskMessage,
        record: TaskRecord,
        last_seen: Option<RecordAt>,
    ) -> Result<(), queue::Error> {
        // Each step may be repeated: the record is a compare-and-set that keeps the first
        // outcome, the callback job is deduplicated by its id.
        let stored = patiently(|| {
            self.queue
                .advance_task_record(&task.task_id, &record, last_seen.clone())
        })
        .await?
        .record;
        let outcome = if stored.same_state_as(&record) {
            self.metrics
                .task_finished(&task.endpoint_id, &record.status);
            tracing::debug!(status = ?record.status, "task finished");
            outcome_of(&record)
        } else {
            // Another run of the task recorded its outcome first; that outcome stands and is
            // the one its callback reports.
            tracing::info!(status = ?stored.status, "the task's outcome was already recorded");
            outcome_of(&stored)
        };
        patiently(|| self.send_callback(task, outcome.clone())).await
    }

    async fn send_callback(
        &self,
        task: &TaskMessage,
        outcome: TaskOutcome,
    ) -> Result<(), queue::Error> {
        match CallbackJob::for_task(task, outcome) {
            Some(job) => self.queue.publish_callback(&job).await,
            None => Ok(()),
        }
    }
}

/// Runs `step` until it succeeds or [`RECORD_PATIENCE`] has passed, pausing between tries.
async fn patiently<T, F, Fut>(mut step: F) -> Result<T, queue::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, queue::Error>>,
{
    let deadline = tokio::time::Instant::now() + RECORD_PATIENCE;
    let mut pause = RECORD_RETRY_FIRST;
    loop {
        match step().await {
            Err(error) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%error, "recording the outcome failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECORD_RETRY_MAX);
            }
            result => return result,
        }
    }
}

/// A failure the model did not answer, saying why in `message`.
fn failure_without_answer(message: String) -> Prediction {
    Prediction::Failure {
        error: TaskError {
            message,
            detail: None,
        },
        status_code: None,
    }
}

/// The outcome record of a run that began at `started_at_ms` (none for a task that never ran).
fn final_record(
    task: &TaskMessage,
    prediction: Prediction,
    started_at_ms: Option<u64>,
) -> TaskRecord {
    let now = now_ms();
    let base = TaskRecord {
        updated_at_ms: now,
        started_at_ms,
        finished_at_ms: Some(now),
        ..TaskRecord::pending(task.endpoint_id.clone())
    };
    match prediction {
        Prediction::Success {
            result,
            status_code,
        } => TaskRecord {
            status: TaskStatus::Success,
            result: Some(result),
            status_code: Some(status_code),
            ..base
        },
        Prediction::Failure { error, status_code } => TaskRecord {
            status: TaskStatus::Failure,
            error: Some(error),
            status_code,
            ..base
        },
        // `process` hands such a task back, or words its failure, before it gets here.
        Prediction::Unavailable { reason } => TaskRecord {
            status: TaskStatus::Failure,
            error: Some(TaskError {
                message: reason,
                detail: None,
            }),
            ..base
        },
    }
}

fn outcome_of(record: &TaskRecord) -> TaskOutcome {
    match (&record.status, &record.result, &record.error) {
        (TaskStatus::Success, result, _) => TaskOutcome::Success {
            result: result.clone().unwrap_or_default(),
        },
        (TaskStatus::Cancelled, _, _) => TaskOutcome::Cancelled,
        (_, _, Some(error)) => TaskOutcome::Failure {
            error: error.clone(),
        },
        _ => TaskOutcome::Failure {
            error: TaskError {
                message: "the task failed".into(),
                detail: None,
            },
        },
    }
}

/// What `ferry forwarder` runs with: its flags, parsed and checked (also by `--check-config`).
pub struct Settings {
    pub endpoint_id: EndpointId,
    pub model: ModelClient,
    /// How it reaches NATS, with its endpoint's credentials.
    pub connection: queue::Connection,
    pub queue: QueueSettings,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Where /healthz, /readyz and /metrics are served, if anywhere.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Set for the worker of a sync or streaming endpoint: it serves the gateway's requests
    /// instead of pulling queued tasks.
    pub serving: Option<Serving>,
    pub http: crate::http_server::Limits,
}

/// Where a serving forwarder listens and the token the gateway presents to it.
pub struct Serving {
    pub listen: std::net::SocketAddr,
    pub token: String,
    /// The base URL gateways reach it at, announced to those serving fixed manifests.
    pub advertise_url: Option<String>,
    /// How long it keeps serving once stopped, announced as leaving and not ready, so gateways
    /// (and a Service) stop sending to it before it closes its connections.
    pub shutdown_delay: Duration,
}

/// `ferry forwarder`: the sidecar in every worker pod.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let Settings {
        endpoint_id,
        model,
        connection,
        queue: queue_settings,
        concurrency,
        admin_listen,
        serving,
        http,
    } = settings;
    let queue = Queue::connect(&connection, queue_settings, Duration::from_secs(30))
        .await?
        .forwarder(&endpoint_id);
    let mut registry = crate::metrics::registry();
    let metrics = ForwarderMetrics::register(&mut registry);
    let readiness = Readiness::default();
    if let Some(addr) = admin_listen {
        let router = admin::router(Arc::new(registry), readiness.clone());
        tokio::spawn(admin::serve(addr, router, http, cancel.clone()));
    }
    tokio::spawn(presence::announce(
        queue.clone(),
        endpoint_id.clone(),
        serving
            .as_ref()
            .and_then(|serving| serving.advertise_url.clone()),
        readiness.clone(),
        cancel.clone(),
    ));
    if let Some(Serving {
        listen: addr,
        token,
        shutdown_delay,
        ..
    }) = serving
    {
        if !model.wait_until_ready(&cancel, Probing::Starting).await {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        readiness.set_ready();
        tokio::spawn(outage::follow_model(
            model.clone(),
            readiness.clone(),
            cancel.clone(),
        ));
        tracing::info!(%addr, concurrency, "serving sync and streaming requests");
        readiness.stop_when(cancel.clone());
        serve::serve(
            listener,
            Arc::new(serve::Server {
                endpoint_id,
                token,
                model,
                slots,
                queue,
            }),
            http,
            shutdown_delay,
            cancel,
        )
        .await?;
        return Ok(());
    }
    let forwarder = Forwarder {
        queue,
        endpoint_id,
        model,
        concurrency,
        metrics,
    };
    forwarder.run(readiness, cancel).await?;
    Ok(())
}
