//! What every reconcile shares: the API client, the Event recorder, the (lazily connected)
//! queue, build settings, metrics and per-endpoint retry bookkeeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use tokio::sync::OnceCell;

use super::build::Settings;
use super::build::worker_secret::ForwarderCredsIssuing;
use crate::queue::{self, OperatorQueue, Queue, QueueSettings};

/// A queue connection made on first use, so the operator starts (and reports
/// `QueueReady=False`) while NATS is unreachable, and connects once it is back.
pub struct QueueConnection {
    connection: queue::Connection,
    settings: QueueSettings,
    queue: OnceCell<OperatorQueue>,
}

impl QueueConnection {
    pub fn new(connection: queue::Connection, settings: QueueSettings) -> Self {
        QueueConnection {
            connection,
            settings,
            queue: OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<&OperatorQueue, queue::Error> {
        self.queue
            .get_or_try_init(|| async {
                Queue::connect(&self.connection, self.settings.clone(), Duration::ZERO)
                    .await
                    .map(|queue| queue.operator())
            })
            .await
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The controller's Prometheus metrics.
pub struct Metrics {
    reconciles: Counter,
    errors: Family<ReasonLabel, Counter>,
    duration: Histogram,
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14);
        let metrics = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(buckets),
            leader: Gauge::default(),
        };
        registry.register(
            "ferry_controller_reconciles",
            "Reconciles run",
            metrics.reconciles.clone(),
        );
        registry.register(
            "ferry_controller_reconcile_errors",
            "Reconciles that failed, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "ferry_controller_reconcile_duration_seconds",
            "Time one reconcile took, API calls included",
            metrics.duration.clone(),
        );
        registry.register(
            "ferry_controller_leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        Arc::new(metrics)
    }

    pub fn observe_reconcile(&self, elapsed: Duration) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// This replica, as Events name their reporter (the pod name, else the controller's).
    pub reporting_instance: String,
    pub queue: QueueConnection,
    pub settings: Settings,
    /// Seals callback policies; derives the serving tokens in worker Secrets.
    pub ring: Arc<crate::seal::KeyRing>,
    /// Time between reconciles of an endpoint nothing happens to.
    pub resync: Duration,
    /// Issues forwarders' NATS credentials into worker Secrets, when configured.
    pub forwarder_creds: Option<ForwarderCredsIssuing>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per endpoint (`namespace/name`), for the retry delay.
    failures: Mutex<HashMap<String, u32>>,
    /// The last parse error reported per unparseable object, so it is reported once.
    reported_invalid: Mutex<HashMap<String, (Option<i64>, String)>>,
}

impl Context {
    pub fn new(
        client: Client,
        queue: QueueConnection,
        settings: Settings,
        ring: Arc<crate::seal::KeyRing>,
        resync: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let instance = crate::telemetry::host_name();
        let reporter = Reporter {
            controller: crate::crd::names::MANAGED_BY.into(),
            instance: instance.clone(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            reporting_instance: instance.unwrap_or_else(|| crate::crd::names::MANAGED_BY.into()),
            client,
            queue,
            settings,
            ring,
            resync,
            forwarder_creds: None,
            metrics,
            failures: Mutex::default(),
            reported_invalid: Mutex::default(),
        }
    }

    /// The same context issuing forwarders' NATS credentials with `issuing`.
    pub fn with_forwarder_creds(self, issuing: Option<ForwarderCredsIssuing>) -> Self {
        Context {
            forwarder_creds: issuing,
            ..self
        }
    }

    /// Time until an endpoint that reconciled well is reconciled again: the resync, or often
    /// enough that one reconcile falls in the last third of its NATS credentials' validity,
    /// with a sixth of it still left, to renew them.
    pub fn requeue_interval(&self) -> Duration {
        match &self.forwarder_creds {
            Some(issuing) => self.resync.min(issuing.validity / 6),
            None => self.resync,
        }
    }

    /// Counts a failure of `key` and answers how many happened in a row.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut failures = lock(&self.failures);
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    pub fn record_success(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// True when this parse error was already reported for this generation of the object.
    pub fn reported_invalid(&self, key: &str, generation: Option<i64>, error: &str) -> bool {
        lock(&self.reported_invalid)
            .get(key)
            .is_some_and(|(seen, text)| *seen == generation && text == error)
    }

    pub fn remember_invalid(&self, key: &str, generation: Option<i64>, error: &str) {
        lock(&self.reported_invalid).insert(key.to_owned(), (generation, error.to_owned()));
    }

    pub fn forget(&self, key: &str) {
        lock(&self.failures).remove(key);
        lock(&self.reported_invalid).remove(key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves plain counters behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Retry delay after `failures` consecutive transient failures: 1 s doubling to 5 min, with
/// ±20 % jitter so endpoints that failed together do not retry together.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(9));
    base.min(Duration::from_secs(300))
        .mul_f64(1.0 + jitter.clamp(-0.2, 0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_five_minutes() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(5, 0.0), Duration::from_secs(16));
        assert_eq!(retry_delay(30, 0.0), Duration::from_secs(300));
        assert_eq!(retry_delay(1, 0.2), Duration::from_millis(1200));
        assert_eq!(retry_delay(1, 5.0), Duration::from_millis(1200));
    }

    /// However the jitter falls, each retry waits longer than the one before until the delays
    /// reach the cap (from the 9th: 256 s, then 300 s, each ±20 %), where they stay within it.
    #[test]
    fn each_retry_waits_longer_whatever_the_jitter() {
        for failures in 1..=8 {
            let longest_now = retry_delay(failures, 0.2);
            let shortest_next = retry_delay(failures + 1, -0.2);
            assert!(
                shortest_next > longest_now,
                "after {failures} failures: {shortest_next:?} <= {longest_now:?}"
            );
        }
        for jitter in [-0.2, 0.0, 0.2] {
            let capped = retry_delay(40, jitter);
            assert!(
                capped >= Duration::from_secs(240) && capped <= Duration::from_secs(360),
                "{capped:?}"
            );
        }
    }
}
