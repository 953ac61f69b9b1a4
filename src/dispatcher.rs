//! The dispatcher role (the callback controller): takes callback jobs from the queue and POSTs
//! them to their receivers — signed, with the receiver's credentials, only to vetted addresses —
//! records every attempt on the task, queues retries on the endpoint's schedule and
//! dead-letters what cannot be delivered. A job is acknowledged only after its outcome is
//! recorded.

mod deliver;
mod endpoints;
mod limits;
mod schedule;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use deliver::{Clients, Timeouts};

use crate::admin::{self, Readiness};
use crate::callback::guard;
use crate::crd::EndpointId;
use crate::metrics::EndpointLabel;
use crate::queue::{
    self, AttemptCounts, AttemptOutcome, CALLBACK_LEASE_RENEWAL, CallbackDelivery, DispatcherQueue,
    Held, Queue, QueueSettings, TALLY_FLUSH,
};
use crate::seal::KeyRing;
use crate::task::{
    CallbackJob, CallbackState, CallbackTarget, DeadLetter, DeliveryAttempt, DeliveryState, now_ms,
};
use endpoints::{EndpointCache, EndpointDelivery};
use limits::{Busy, Slot, Slots};
use schedule::Next;

/// How long a job waits in line for a slot of its destination, and then of its endpoint,
/// before it is deferred.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long a job first waits to be offered again when its endpoint or destination is stuck
/// (has returned no slot for a while); the wait doubles with each refusal up to
/// [`BUSY_HOST_MAX_DELAY`], so jobs queued for a hanging receiver do not churn through the
/// dispatcher. A job refused by a moving endpoint or destination comes back at its turn instead.
const BUSY_HOST_DELAY: Duration = Duration::from_millis(500);
const BUSY_HOST_MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    #[prometheus(flatten)]
    endpoint: EndpointLabel,
    /// `delivered`, `retry` or `dead_lettered`.
    outcome: &'static str,
}

pub struct DispatcherMetrics {
    attempts: Family<AttemptLabels, Counter>,
    dead_letters: Family<EndpointLabel, Counter>,
    deferred: Counter,
    attempt_seconds: Family<EndpointLabel, Histogram>,
}

impl DispatcherMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = DispatcherMetrics {
            attempts: Family::default(),
            dead_letters: Family::default(),
            deferred: Counter::default(),
            attempt_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0005, 2.0, 16,
                ))
            }),
        };
        registry.register(
            "ferry_dispatcher_attempts",
            "Callback delivery attempts per endpoint, by outcome (delivered, retry, dead_lettered)",
            metrics.attempts.clone(),
        );
        registry.register(
            "ferry_dispatcher_dead_letters",
            "Callbacks given up on, per endpoint",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "ferry_dispatcher_deferred",
            "Callback jobs put back for later because their endpoint or destination had no free slot",
            metrics.deferred.clone(),
        );
        registry.register(
            "ferry_dispatcher_attempt_duration_seconds",
            "Time from sending a callback to its answer, per endpoint",
            metrics.attempt_seconds.clone(),
        );
        Arc::new(metrics)
    }

    /// Counts and times one attempt; `next` is what follows it.
    fn attempted(&self, endpoint: &EndpointId, took: Duration, next: &Next) {
        let endpoint = EndpointLabel::of(endpoint);
        self.attempt_seconds
            .get_or_create(&endpoint)
            .observe(took.as_secs_f64());
        let outcome = match next {
            Next::Done => "delivered",
            Next::RetryIn(_) => "retry",
            Next::GiveUp => "dead_lettered",
        };
        if matches!(next, Next::GiveUp) {
            self.dead_letters.get_or_create(&endpoint).inc();
        }
        self.attempts
            .get_or_create(&AttemptLabels { endpoint, outcome })
            .inc();
    }
}

/// What the last hour's tally calls an attempt that `next` follows.
fn attempt_outcome(next: &Next) -> AttemptOutcome {
    match next {
        Next::Done => AttemptOutcome::Delivered,
        Next::RetryIn(_) => AttemptOutcome::Retry,
        Next::GiveUp => AttemptOutcome::DeadLettered,
    }
}

/// How a dispatcher delivers, whatever the endpoint.
pub struct DeliverySettings {
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts in flight at once to one destination: the address and port connected to.
    pub per_host_concurrency: usize,
    /// Attempts in flight at once for one endpoint, whatever its destinations.
    pub per_endpoint_concurrency: usize,
    /// Timeouts for endpoints that set none.
    pub timeouts: Timeouts,
    /// After a stop is asked for, how long attempts under way may still take; those still
    /// waiting for an answer then are cut short, recorded and retried on their schedule.
    pub shutdown_grace: Duration,
}

#[derive(Clone)]
pub struct Dispatcher {
    queue: DispatcherQueue,
    concurrency: usize,
    clients: Arc<Clients>,
    endpoints: Arc<EndpointCache>,
    endpoint_slots: Arc<Slots<EndpointId>>,
    destination_slots: Arc<Slots<SocketAddr>>,
    metrics: Arc<DispatcherMetrics>,
    /// Attempts not yet published to the last hour's tally.
    attempt_counts: Arc<AttemptCounts>,
    /// Opens callback targets and endpoint secrets.
    ring: Arc<KeyRing>,
    /// Cancelled when the dispatcher is asked to stop: jobs not yet attempted are handed back.
    stopping: CancellationToken,
    /// Cancelled [`DeliverySettings::shutdown_grace`] after `stopping`: attempts still
    /// waiting for an answer are cut short.
    cutting_short: CancellationToken,
    shutdown_grace: Duration,
}

impl Dispatcher {
    pub fn new(
        queue: DispatcherQueue,
        settings: DeliverySettings,
        clients: Clients,
        metrics: Arc<DispatcherMetrics>,
        ring: Arc<KeyRing>,
    ) -> Self {
        Dispatcher {
            endpoints: Arc::new(EndpointCache::new(
                queue.clone(),
                settings.timeouts,
                ring.clone(),
            )),
            ring,
            queue,
            concurrency: settings.concurrency,
            clients: Arc::new(clients),
            // Half the dispatcher's attempts may wait for one endpoint or destination: the
            // other half always serves the rest.
            endpoint_slots: Arc::new(Slots::new(
                settings.per_endpoint_concurrency,
                (settings.concurrency / 2).max(settings.per_endpoint_concurrency),
            )),
            destination_slots: Arc::new(Slots::new(
                settings.per_host_concurrency,
                (settings.concurrency / 2).max(settings.per_host_concurrency),
            )),
            metrics,
            attempt_counts: Arc::default(),
            stopping: CancellationToken::new(),
            cutting_short: CancellationToken::new(),
            shutdown_grace: settings.shutdown_grace,
        }
    }

    /// Delivers callbacks until `cancel`, then finishes the attempts under way.
    pub async fn run(
        self,
        readiness: Readiness,
        cancel: CancellationToken,
    ) -> Result<(), queue::Error> {
        let policy_changes = self.queue.callback_policy_changes().await?;
        let endpoints = self.endpoints.clone();
        tokio::spawn(policy_changes.for_each(move |endpoint| {
            endpoints.forget(&endpoint);
            futures::future::ready(())
        }));
        let jobs = self.queue.callback_jobs().await?;
        readiness.set_ready();
        tracing::info!(concurrency = self.concurrency, "delivering callbacks");
        let (stopping, cutting_short, grace) = (
            self.stopping.clone(),
            self.cutting_short.clone(),
            self.shutdown_grace,
        );
        tokio::spawn(async move {
            cancel.cancelled().await;
            stopping.cancel();
            tokio::time::sleep(grace).await;
            cutting_short.cancel();
        });
        let consuming = queue::consume(jobs, self.concurrency, &self.stopping, |delivery| {
            let dispatcher = self.clone();
            async move { dispatcher.handle(delivery).await }
        });
        tokio::select! {
            () = consuming => {}
            never = self.publish_attempt_counts() => match never {},
        }
        // The attempts of the last second, made while stopping.
        self.queue
            .publish_attempt_counts(&self.attempt_counts)
            .await;
        Ok(())
    }

    async fn handle(&self, delivery: CallbackDelivery) {
        let job = match delivery.job().await {
            Ok(job) => job,
            Err(error) if !error.is_unreadable() => {
                tracing::warn!(%error, "loading the callback job failed; retrying shortly");
                let _ = delivery.defer(BUSY_HOST_DELAY).await;
                return;
            }
            Err(error) => {
                tracing::error!(%error, "dropping an unreadable callback job");
                let _ = delivery.ack().await;
                return;
            }
        };
        let span =
            tracing::info_span!("callback", endpoint = %job.endpoint_id, task_id = %job.task_id);
        let attempt = async {
            let keep_alive = queue::keep_alive_while_held(&delivery, CALLBACK_LEASE_RENEWAL);
            tokio::select! {
                result = self.attempt(&delivery, &job) => result,
                never = keep_alive => match never {},
            }
        };
        if let Err(error) = attempt.instrument(span.clone()).await {
            // Not acknowledged: the job comes back after the ack wait and is tried again.
            span.in_scope(|| tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "recording a callback attempt failed"));
        }
    }

    async fn attempt(
        &self,
        delivery: &CallbackDelivery,
        job: &CallbackJob,
    ) -> Result<(), queue::Error> {
        // A job handed out again (its dispatcher stopped before acknowledging it, or it was
        // deferred) is not POSTed again once the callback is delivered.
        if delivery.deliveries() > 1
            && let Some(state) = self.queue.callback_state(&job.task_id).await?
            && state.state == DeliveryState::Delivered
        {
            tracing::debug!("callback already delivered; the repeated job is dropped");
            return delivery.ack().await;
        }
        // Only a target the gateway sealed for this task is used: a forged or moved one
        // neither learns the endpoint's credentials nor carries its signature.
        let target = job.open_target(&self.ring);
        let url = target.as_ref().map(|target| target.url.as_str());
        let reserve = async {
            // The attempt's one lookup: its address is the destination bound and the
            // connection alike.
            let destination = match url {
                Ok(url) => Some(deliver::resolve_destination(self.clients.guard(), url).await),
                Err(_) => None,
            };
            let vetted = destination.as_ref().and_then(|found| found.as_ref().ok());
            let slots = self.slots(job, vetted.map(|vetted| vetted.addr)).await;
            slots.map(|slots| (slots, destination))
        };
        let reserved = tokio::select! {
            biased;
            () = self.stopping.cancelled() => {
                // Not started: another dispatcher takes it now rather than after the lease.
                return delivery.hand_back().await;
            }
            reserved = reserve => reserved,
        };
        let (slots, destination) = match reserved {
            Ok(reserved) => reserved,
            Err(busy) => {
                self.metrics.deferred.inc();
                return delivery
                    .defer(come_back_after(busy, delivery.deliveries()))
                    .await;
            }
        };
        let endpoint = self.endpoints.get(&job.endpoint_id).await?;
        let attempt_number = job.prior_attempts + 1;
        let opened = match (&target, &endpoint.unopened) {
            (Err(error), _) => Err(format!("the callback's target does not open: {error}")),
            (Ok(_), Some(problem)) => Err(problem.clone()),
            (Ok(target), None) => Ok(target),
        };
        let (verdict, attempt) = match (opened, destination) {
            (Ok(target), Some(destination)) => {
                let (at_ms, started) = (now_ms(), std::time::Instant::now());
                tokio::select! {
                    outcome = self.deliver(job, target, &destination, &endpoint) => outcome,
                    () = self.cutting_short.cancelled() => {
                        cut_short(at_ms, started.elapsed(), self.shutdown_grace)
                    }
                }
            }
            (Err(problem), _) => {
                tracing::error!(%problem, "callback refused");
                refused(problem)
            }
            // An opened target always has a URL, so a looked-up destination.
            (Ok(_), None) => refused("the callback's target has no URL".into()),
        };
        // The receiver is done with the attempt: its slots measure how long it holds one
        // (the pace of its turns), not the recording that follows.
        drop(slots);
        let next = endpoint
            .schedule
            .next(attempt_number, verdict, rand::random::<f64>());
        let took = Duration::from_millis(attempt.duration_ms);
        self.metrics.attempted(&job.endpoint_id, took, &next);
        self.attempt_counts
            .add(&job.endpoint_id, attempt_outcome(&next));
        let reason = attempt.error.clone().or_else(|| {
            attempt
                .status_code
                .map(|code| format!("receiver answered {code}"))
        });
        let first_attempt =
            delivery.deliveries() == 1 && job.prior_attempts == 0 && job.redeliveries == 0;
        let verdict = match next {
            Next::Done => DeliveryState::Delivered,
            Next::RetryIn(_) => DeliveryState::Pending,
            Next::GiveUp => DeliveryState::DeadLettered,
        };
        self.queue
            .update_callback_state(&job.task_id, first_attempt, |current| {
                let state = current.unwrap_or_else(|| CallbackState {
                    url: url.map(str::to_owned).unwrap_or_default(),
                    ..Default::default()
                });
                Some(state.with_attempt(attempt.clone(), verdict))
            })
            .await?;
        match next {
            Next::Done => {}
            Next::RetryIn(delay) => {
                tracing::warn!(
                    attempt = attempt_number,
                    delay_s = delay.as_secs_f64(),
                    "callback not delivered; retrying"
                );
                let retry = CallbackJob {
                    prior_attempts: attempt_number,
                    ..job.clone()
                };
                self.queue.schedule_callback(&retry, delay).await?;
            }
            Next::GiveUp => {
                tracing::error!(
                    attempts = attempt_number,
                    url = url.unwrap_or_default(),
                    "callback undeliverable; dead-lettered"
                );
                let reason = reason.unwrap_or_else(|| "undeliverable".into());
                let letter = DeadLetter {
                    job: job.clone(),
                    dead_at_ms: now_ms(),
                    reason,
                };
                self.queue.put_dead_letter(&letter).await?;
            }
        }
        delivery.ack().await
    }

    /// Publishes the attempts counted to the last hour's tally every [`TALLY_FLUSH`] (it never
    /// returns on its own).
    async fn publish_attempt_counts(&self) -> std::convert::Infallible {
        let mut ticks = tokio::time::interval(TALLY_FLUSH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.queue
                .publish_attempt_counts(&self.attempt_counts)
                .await;
        }
    }

    /// One attempt at `target`, at the `destination` its lookup found, with the endpoint's
    /// signature and credentials.
    async fn deliver(
        &self,
        job: &CallbackJob,
        target: &CallbackTarget,
        destination: &Result<deliver::Destination, guard::Refusal>,
        endpoint: &EndpointDelivery,
    ) -> (schedule::Verdict, DeliveryAttempt) {
        let request = deliver::Request {
            clients: &self.clients,
            url: &target.url,
            destination,
            keys: &endpoint.keys,
            auth: target.auth.as_ref().or(endpoint.default_auth.as_ref()),
            allowed_hosts: &endpoint.allowed_hosts,
            timeouts: endpoint.timeouts,
        };
        deliver::deliver_callback(request, job).await
    }
}

/// When a job refused a slot is offered again: at its turn while its endpoint and destination
/// move, else after a wait that doubles with each delivery of the job.
fn come_back_after(busy: Busy, deliveries: u32) -> Duration {
    match busy {
        Busy::Turn(after) => after,
        Busy::Stuck => {
            let refusals = deliveries.saturating_sub(1).min(16);
            BUSY_HOST_DELAY.saturating_mul(1 << refusals)
        }
    }
    .min(BUSY_HOST_MAX_DELAY)
}

/// An attempt the dispatcher stopped waiting for: the receiver may have it, so it is recorded
/// and retried like a timeout (receivers deduplicate on `webhook-id`).
fn cut_short(at_ms: u64, took: Duration, grace: Duration) -> (schedule::Verdict, DeliveryAttempt) {
    let attempt = DeliveryAttempt {
        at_ms,
        status_code: None,
        error: Some(format!(
            "cut short: the dispatcher stopped and its {} s shutdown grace ran out",
            grace.as_secs()
        )),
        duration_ms: took.as_millis() as u64,
    };
    (schedule::Verdict::Transient { retry_after: None }, attempt)
}

/// An attempt refused before anything was sent.
fn refused(error: String) -> (schedule::Verdict, DeliveryAttempt) {
    let attempt = DeliveryAttempt {
        at_ms: now_ms(),
        status_code: None,
        error: Some(error),
        duration_ms: 0,
    };
    (schedule::Verdict::Refused, attempt)
}

impl Dispatcher {
    /// A slot of the job's `destination` (the address the attempt will connect to) and one of
    /// its endpoint ([`limits::reserve`]). Many names for one receiver share its bound. A URL
    /// without a vetted destination takes no destination slot: its attempt is refused without
    /// connecting.
    async fn slots(
        &self,
        job: &CallbackJob,
        destination: Option<SocketAddr>,
    ) -> Result<(Option<Slot<SocketAddr>>, Slot<EndpointId>), Busy> {
        limits::reserve(
            (&self.endpoint_slots, &job.endpoint_id),
            (&self.destination_slots, destination.as_ref()),
            SLOT_WAIT,
        )
        .await
    }
}

/// What `ferry dispatcher` runs with: its flags, parsed and checked (also by `--check-config`).
pub struct Settings {
    /// How it reaches NATS, as the dispatcher's role.
    pub connection: queue::Connection,
    pub queue: QueueSettings,
    pub ring: KeyRing,
    pub delivery: DeliverySettings,
    /// The guard and TLS roots callbacks are sent with.
    pub clients: Clients,
    /// Where /healthz, /readyz and /metrics are served, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    pub http: crate::http_server::Limits,
}

/// `ferry dispatcher`: the callback controller.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let queue = Queue::connect(
        &settings.connection,
        settings.queue,
        Duration::from_secs(30),
    )
    .await?
    .dispatcher();
    let mut registry = crate::metrics::registry();
    let metrics = DispatcherMetrics::register(&mut registry);
    let readiness = Readiness::default();
    if let Some(addr) = settings.admin_listen {
        let router = admin::router(Arc::new(registry), readiness.clone());
        tokio::spawn(admin::serve(addr, router, settings.http, cancel.clone()));
    }
    let dispatcher = Dispatcher::new(
        queue,
        settings.delivery,
        settings.clients,
        metrics,
        Arc::new(settings.ring),
    );
    dispatcher.run(readiness, cancel).await?;
    Ok(())
}
