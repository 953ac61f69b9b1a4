//! The dispatcher (callback controller): takes callback jobs from the queue, POSTs them to their
//! receivers, records every attempt on the task, retries on the schedule and dead-letters what
//! cannot be delivered. A job is acknowledged only after its state is recorded.

mod deliver;
mod schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use schedule::RetrySchedule;

use crate::admin::{self, Readiness};
use crate::cli::DispatcherArgs;
use crate::queue::{self, CallbackDelivery, Queue, QueueSettings};
use crate::task::{CallbackJob, CallbackState, DeliveryAttempt, DeliveryState};
use schedule::Next;

/// Attempts kept on a task's callback state; older ones are dropped first.
const KEPT_ATTEMPTS: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

pub struct DispatcherMetrics {
    attempts: Family<OutcomeLabel, Counter>,
    dead_letters: Counter,
    attempt_seconds: Histogram,
}

impl DispatcherMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16);
        let metrics = DispatcherMetrics {
            attempts: Family::default(),
            dead_letters: Counter::default(),
            attempt_seconds: Histogram::new(buckets),
        };
        registry.register(
            "ferry_dispatcher_attempts",
            "Callback delivery attempts, by outcome",
            metrics.attempts.clone(),
        );
        registry.register(
            "ferry_dispatcher_dead_letters",
            "Callbacks given up on",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "ferry_dispatcher_attempt_duration_seconds",
            "Time from sending a callback to its answer",
            metrics.attempt_seconds.clone(),
        );
        Arc::new(metrics)
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    pub queue: Queue,
    pub http: reqwest::Client,
    pub schedule: Arc<RetrySchedule>,
    pub concurrency: usize,
    pub metrics: Arc<DispatcherMetrics>,
}

impl Dispatcher {
    pub fn new(
        queue: Queue,
        concurrency: usize,
        metrics: Arc<DispatcherMetrics>,
    ) -> reqwest::Result<Self> {
        let http = deliver::client(deliver::Timeouts::default())?;
        Ok(Dispatcher {
            queue,
            http,
            schedule: Arc::new(RetrySchedule::default()),
            concurrency,
            metrics,
        })
    }

    /// Delivers callbacks until `cancel`, then finishes the attempts under way.
    pub async fn run(
        self,
        readiness: Readiness,
        cancel: CancellationToken,
    ) -> Result<(), queue::Error> {
        let deliveries = self.queue.callback_jobs(self.concurrency).await?;
        readiness.set_ready();
        tracing::info!(concurrency = self.concurrency, "delivering callbacks");
        let mut deliveries = std::pin::pin!(deliveries);
        let mut running = JoinSet::new();
        loop {
            if running.len() >= self.concurrency {
                running.join_next().await;
                continue;
            }
            let delivery = tokio::select! {
                _ = cancel.cancelled() => break,
                delivery = deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let dispatcher = self.clone();
                    running.spawn(async move { dispatcher.handle(delivery).await });
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "receiving callback jobs");
                }
                None => break,
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }

    async fn handle(&self, delivery: CallbackDelivery) {
        let job = match delivery.job() {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, "dropping an unreadable callback job");
                let _ = delivery.ack().await;
                return;
            }
        };
        let span =
            tracing::info_span!("callback", endpoint = %job.endpoint_id, task_id = %job.task_id);
        if let Err(error) = self.attempt(&delivery, &job).instrument(span.clone()).await {
            // Not acknowledged: the job comes back after the ack wait and is tried again.
            span.in_scope(|| tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "recording a callback attempt failed"));
        }
    }

    async fn attempt(
        &self,
        delivery: &CallbackDelivery,
        job: &CallbackJob,
    ) -> Result<(), queue::Error> {
        let attempt_number = delivery.attempt();
        let (verdict, attempt) = deliver::deliver_callback(&self.http, job).await;
        self.metrics
            .attempt_seconds
            .observe(attempt.duration_ms as f64 / 1000.0);
        let next = self
            .schedule
            .next(attempt_number, verdict, rand::random::<f64>());
        let outcome = match next {
            Next::Done => "delivered",
            Next::RetryIn(_) => "retry",
            Next::GiveUp => "dead_lettered",
        };
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        let state = self
            .updated_state(job, attempt_number, attempt, next)
            .await?;
        self.queue.put_callback_state(&job.task_id, &state).await?;
        match next {
            Next::Done => delivery.ack().await,
            Next::RetryIn(delay) => {
                tracing::warn!(
                    attempt = attempt_number,
                    delay_s = delay.as_secs_f64(),
                    "callback not delivered; retrying"
                );
                delivery.retry_after(delay).await
            }
            Next::GiveUp => {
                tracing::error!(attempts = attempt_number, url = %job.target.url, "callback undeliverable; dead-lettered");
                self.metrics.dead_letters.inc();
                self.queue.publish_dead_letter(job).await?;
                delivery.ack().await
            }
        }
    }

    async fn updated_state(
        &self,
        job: &CallbackJob,
        attempt_number: u32,
        attempt: DeliveryAttempt,
        next: Next,
    ) -> Result<CallbackState, queue::Error> {
        let earlier = if attempt_number > 1 {
            self.queue.callback_state(&job.task_id).await?
        } else {
            None
        };
        let mut state = earlier.unwrap_or_else(|| CallbackState {
            url: job.target.url.clone(),
            ..Default::default()
        });
        state.attempts.push(attempt);
        if state.attempts.len() > KEPT_ATTEMPTS {
            state.attempts.drain(..state.attempts.len() - KEPT_ATTEMPTS);
        }
        state.state = match next {
            Next::Done => DeliveryState::Delivered,
            Next::RetryIn(_) => DeliveryState::Pending,
            Next::GiveUp => DeliveryState::DeadLettered,
        };
        Ok(state)
    }
}

/// `ferry dispatcher`: the callback controller.
pub async fn run(args: DispatcherArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let settings = QueueSettings {
        result_retention: args.nats.result_retention,
        ..Default::default()
    };
    let queue = Queue::connect(&args.nats.url, settings, Duration::from_secs(30)).await?;
    let mut registry = Registry::default();
    let metrics = DispatcherMetrics::register(&mut registry);
    let readiness = Readiness::default();
    if let Some(addr) = args.admin_listen {
        let router = admin::router(Arc::new(registry), readiness.clone());
        tokio::spawn(admin::serve(addr, router, cancel.clone()));
    }
    let dispatcher = Dispatcher::new(queue, args.concurrency.get() as usize, metrics)?;
    dispatcher.run(readiness, cancel).await?;
    Ok(())
}
