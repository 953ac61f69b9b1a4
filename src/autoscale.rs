//! How many workers an endpoint wants: the one decision both the operator and `ferry dev` scale
//! by. Pure: the caller brings the observed load and the time, and keeps the [`Scaler`] between
//! observations. Async endpoints are loaded by their queue; sync and streaming endpoints by the
//! requests the gateways hold ([`Concurrency`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

use kube::ResourceExt;

use crate::crd::{EndpointId, ModelEndpoint, ModelEndpointSpec, namespace_of};
use crate::queue::LoadReport;

/// What the endpoint's load looks like now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Tasks waiting for a worker (async) — zero for sync and streaming endpoints.
    pub queued: u64,
    /// Tasks or requests workers hold right now.
    pub in_flight: u64,
}

/// Why the desired count is what it is; for status, Events and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The load asks for this many.
    Load,
    /// The load asks for fewer, but not for long enough yet.
    Stabilizing,
    /// Held at `minWorkers`.
    AtMinimum,
    /// Capped at `maxWorkers`.
    AtMaximum,
    /// No work and `minWorkers` is zero.
    Idle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Load => "Load",
            Reason::Stabilizing => "Stabilizing",
            Reason::AtMinimum => "AtMinimum",
            Reason::AtMaximum => "AtMaximum",
            Reason::Idle => "Idle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
}

/// The workers the load alone asks for: ceil(load / perWorker), within [min, max].
pub fn wanted(spec: &ModelEndpointSpec, load: Load) -> Decision {
    let work = load.queued + load.in_flight;
    let per_worker = u64::from(spec.per_worker.max(1));
    let raw = work.div_ceil(per_worker).min(u64::from(u32::MAX)) as u32;
    let (min, max) = (spec.min_workers, spec.max_workers.max(spec.min_workers));
    if raw > max {
        Decision {
            replicas: max,
            reason: Reason::AtMaximum,
        }
    } else if raw <= min {
        let reason = if min == 0 {
            Reason::Idle
        } else {
            Reason::AtMinimum
        };
        Decision {
            replicas: min,
            reason,
        }
    } else {
        Decision {
            replicas: raw,
            reason: Reason::Load,
        }
    }
}

/// Remembers recent wishes so scale-down waits out the stabilization window (the largest wish
/// within the window wins, as the HorizontalPodAutoscaler does), while scale-up is immediate.
#[derive(Clone, Debug)]
pub struct Scaler {
    window: Duration,
    /// (when, wanted replicas): the wishes that may still be the largest in the window, oldest
    /// first and largest first — a wish is dropped once a newer one is at least as large, so
    /// this holds at most `maxWorkers + 1` entries however often the scaler decides.
    recent: VecDeque<(Instant, u32)>,
}

impl Scaler {
    pub fn new(window: Duration) -> Self {
        Scaler {
            window,
            recent: VecDeque::new(),
        }
    }

    /// The replicas to run now, given the load observed at `now`.
    pub fn decide(&mut self, spec: &ModelEndpointSpec, load: Load, now: Instant) -> Decision {
        let wish = wanted(spec, load);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            self.recent.pop_front();
        }
        while self
            .recent
            .back()
            .is_some_and(|(_, replicas)| *replicas <= wish.replicas)
        {
            self.recent.pop_back();
        }
        self.recent.push_back((now, wish.replicas));
        let held = self
            .recent
            .front()
            .map_or(wish.replicas, |(_, replicas)| *replicas);
        // The window may hold wishes from before a spec change: never beyond today's bounds.
        let held = held.clamp(spec.min_workers, spec.max_workers.max(spec.min_workers));
        if held > wish.replicas {
            Decision {
                replicas: held,
                reason: Reason::Stabilizing,
            }
        } else {
            wish
        }
    }
}

/// How often a gateway reports an endpoint's requests while it holds any.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A report older than this no longer counts: its gateway stopped reporting (idle or gone).
const REPORT_TTL: Duration = Duration::from_secs(3);

/// The requests every gateway holds per endpoint, from their latest fresh reports.
#[derive(Debug, Default)]
pub struct Concurrency {
    reports: HashMap<EndpointId, HashMap<String, (u64, Instant)>>,
}

impl Concurrency {
    pub fn record(&mut self, report: LoadReport, now: Instant) {
        self.reports
            .entry(report.endpoint)
            .or_default()
            .insert(report.source, (report.in_flight, now));
    }

    /// The requests all gateways hold for `endpoint`; forgets reports that went stale.
    pub fn in_flight(&mut self, endpoint: &EndpointId, now: Instant) -> u64 {
        let Some(sources) = self.reports.get_mut(endpoint) else {
            return 0;
        };
        sources.retain(|_, (_, at)| now.saturating_duration_since(*at) < REPORT_TTL);
        let total = sources.values().map(|(in_flight, _)| in_flight).sum();
        if sources.is_empty() {
            self.reports.remove(endpoint);
        }
        total
    }
}

/// Times a wake from zero: from the decision to leave zero to the first ready worker.
#[derive(Clone, Debug, Default)]
pub struct WakeTimer {
    since: Option<Instant>,
}

impl WakeTimer {
    /// Notes a new worker count; a count leaving zero starts the clock.
    pub fn scaled(&mut self, from: u32, to: u32, now: Instant) {
        if to == 0 {
            self.since = None;
        } else if from == 0 {
            self.since.get_or_insert(now);
        }
    }

    /// The wake's duration, once, when the first worker is ready.
    pub fn ready(&mut self, ready: u32, now: Instant) -> Option<Duration> {
        if ready == 0 {
            return None;
        }
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
}

/// The labels of an endpoint's autoscaler and queue series: its `namespace/name`, and its id,
/// which the data plane's series carry (see [`crate::metrics::EndpointLabel`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamedEndpoint {
    endpoint: String,
    #[prometheus(flatten)]
    id: crate::metrics::EndpointLabel,
}

impl NamedEndpoint {
    pub fn of(endpoint: &ModelEndpoint) -> Self {
        NamedEndpoint {
            endpoint: format!("{}/{}", namespace_of(endpoint), endpoint.name_any()),
            id: crate::metrics::EndpointLabel::of(&endpoint.endpoint_id()),
        }
    }
}

/// The autoscaler's metrics, and the queue readings it scales by, the same in the operator and
/// in `ferry dev`.
pub struct AutoscaleMetrics {
    desired: Family<NamedEndpoint, Gauge>,
    ready: Family<NamedEndpoint, Gauge>,
    wake: Histogram,
    queued: Family<NamedEndpoint, Gauge>,
    in_flight: Family<NamedEndpoint, Gauge>,
    oldest_age: Family<NamedEndpoint, Gauge>,
}

impl AutoscaleMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let buckets = [
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        let metrics = AutoscaleMetrics {
            desired: Family::default(),
            ready: Family::default(),
            wake: Histogram::new(buckets),
            queued: Family::default(),
            in_flight: Family::default(),
            oldest_age: Family::default(),
        };
        registry.register(
            "ferry_autoscaler_desired_workers",
            "Workers the autoscaler wants per endpoint",
            metrics.desired.clone(),
        );
        registry.register(
            "ferry_autoscaler_ready_workers",
            "Workers ready per endpoint",
            metrics.ready.clone(),
        );
        registry.register(
            "ferry_autoscaler_wake_seconds",
            "Time from the decision to leave zero workers to the first ready worker",
            metrics.wake.clone(),
        );
        registry.register(
            "ferry_queue_backlog_tasks",
            "Tasks of an async endpoint waiting for a worker",
            metrics.queued.clone(),
        );
        registry.register(
            "ferry_queue_in_flight_tasks",
            "Tasks of an async endpoint that workers hold",
            metrics.in_flight.clone(),
        );
        registry.register(
            "ferry_queue_oldest_task_age_seconds",
            "Seconds the oldest unfinished task of an async endpoint has waited (0 when none)",
            metrics.oldest_age.clone(),
        );
        Arc::new(metrics)
    }

    pub fn observe(&self, endpoint: &NamedEndpoint, desired: u32, ready: u32) {
        self.desired.get_or_create(endpoint).set(desired.into());
        self.ready.get_or_create(endpoint).set(ready.into());
    }

    /// An async endpoint's queue as read for scaling; the oldest task's age as last read.
    pub fn observe_queue(&self, endpoint: &NamedEndpoint, load: Load, oldest_age: Option<i64>) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.queued.get_or_create(endpoint).set(gauge(load.queued));
        self.in_flight
            .get_or_create(endpoint)
            .set(gauge(load.in_flight));
        self.oldest_age
            .get_or_create(endpoint)
            .set(oldest_age.unwrap_or(0));
    }

    pub fn observe_wake(&self, took: Duration) {
        self.wake.observe(took.as_secs_f64());
    }

    /// Drops the series of an endpoint that is gone.
    pub fn forget(&self, endpoint: &NamedEndpoint) {
        for family in [
            &self.desired,
            &self.ready,
            &self.queued,
            &self.in_flight,
            &self.oldest_age,
        ] {
            family.remove(endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: u32, max: u32, per_worker: u32) -> ModelEndpointSpec {
        let yaml = format!(
            "{{bundle: b, labels: {{team: t, product: p}}, minWorkers: {min}, maxWorkers: {max}, perWorker: {per_worker}}}"
        );
        serde_saphyr::from_str(&yaml).expect("spec")
    }

    fn load(queued: u64, in_flight: u64) -> Load {
        Load { queued, in_flight }
    }

    #[test]
    fn wants_ceil_of_work_over_per_worker_within_bounds() {
        let spec = spec(1, 10, 5);
        assert_eq!(
            wanted(&spec, load(0, 0)),
            Decision {
                replicas: 1,
                reason: Reason::AtMinimum
            }
        );
        assert_eq!(
            wanted(&spec, load(6, 0)),
            Decision {
                replicas: 2,
                reason: Reason::Load
            }
        );
        assert_eq!(
            wanted(&spec, load(10, 5)),
            Decision {
                replicas: 3,
                reason: Reason::Load
            }
        );
        assert_eq!(
            wanted(&spec, load(1000, 0)),
            Decision {
                replicas: 10,
                reason: Reason::AtMaximum
            }
        );
    }

    #[test]
    fn zero_minimum_idles_at_zero_and_one_task_wakes_a_worker() {
        let spec = spec(0, 3, 10);
        assert_eq!(
            wanted(&spec, load(0, 0)),
            Decision {
                replicas: 0,
                reason: Reason::Idle
            }
        );
        assert_eq!(wanted(&spec, load(1, 0)).replicas, 1);
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_out_the_window() {
        let spec = spec(0, 10, 1);
        let mut scaler = Scaler::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(scaler.decide(&spec, load(5, 0), start).replicas, 5);
        let later = start + Duration::from_secs(30);
        assert_eq!(
            scaler.decide(&spec, load(0, 1), later),
            Decision {
                replicas: 5,
                reason: Reason::Stabilizing
            }
        );
        assert_eq!(
            scaler.decide(&spec, load(8, 0), later).replicas,
            8,
            "up at once, even while stabilizing"
        );
        let after_window = later + Duration::from_secs(61);
        assert_eq!(
            scaler.decide(&spec, load(0, 0), after_window),
            Decision {
                replicas: 0,
                reason: Reason::Idle
            }
        );
    }

    #[test]
    fn the_window_remembers_only_wishes_that_can_still_win() {
        let spec = spec(0, 10, 1);
        let mut scaler = Scaler::new(Duration::from_secs(120));
        let start = Instant::now();
        for step in 0..100_000u32 {
            let at = start + Duration::from_millis(u64::from(step));
            scaler.decide(&spec, load(u64::from(step % 7), 0), at);
        }
        assert!(
            scaler.recent.len() <= 11,
            "{} wishes kept",
            scaler.recent.len()
        );
        let later = start + Duration::from_millis(100_000);
        assert_eq!(
            scaler.decide(&spec, load(0, 0), later).replicas,
            6,
            "the largest recent wish still holds"
        );
    }

    #[test]
    fn a_lowered_maximum_applies_at_once() {
        let mut scaler = Scaler::new(Duration::from_secs(60));
        let now = Instant::now();
        scaler.decide(&spec(0, 10, 1), load(10, 0), now);
        assert_eq!(
            scaler
                .decide(&spec(0, 2, 1), load(0, 0), now + Duration::from_secs(1))
                .replicas,
            2
        );
    }

    fn report(endpoint: &EndpointId, source: &str, in_flight: u64) -> LoadReport {
        LoadReport {
            endpoint: endpoint.clone(),
            source: source.into(),
            in_flight,
        }
    }

    #[test]
    fn concurrency_adds_the_latest_report_of_each_gateway_until_it_goes_stale() {
        let (a, b) = (
            EndpointId::for_resource("ml", "a"),
            EndpointId::for_resource("ml", "b"),
        );
        let mut board = Concurrency::default();
        let start = Instant::now();
        board.record(report(&a, "gw-1", 4), start);
        board.record(report(&a, "gw-2", 3), start);
        board.record(report(&a, "gw-1", 2), start + Duration::from_millis(500));
        board.record(report(&b, "gw-1", 9), start);
        assert_eq!(board.in_flight(&a, start + Duration::from_secs(1)), 5);
        assert_eq!(board.in_flight(&b, start + Duration::from_secs(1)), 9);
        let later = start + Duration::from_millis(3200);
        assert_eq!(board.in_flight(&a, later), 2, "gw-2's report went stale");
        assert_eq!(board.in_flight(&a, start + Duration::from_secs(10)), 0);
        assert!(
            !board.reports.contains_key(&a),
            "an idle endpoint is forgotten"
        );
    }

    #[test]
    fn sync_requests_scale_like_queued_tasks() {
        let spec = spec(0, 4, 2);
        let mut board = Concurrency::default();
        let now = Instant::now();
        let endpoint = EndpointId::for_resource("ml", "c");
        board.record(report(&endpoint, "gw", 5), now);
        let load = Load {
            queued: 0,
            in_flight: board.in_flight(&endpoint, now),
        };
        assert_eq!(wanted(&spec, load).replicas, 3);
    }

    #[test]
    fn the_wake_timer_runs_from_leaving_zero_to_the_first_ready_worker() {
        let mut timer = WakeTimer::default();
        let start = Instant::now();
        timer.scaled(0, 2, start);
        timer.scaled(2, 3, start + Duration::from_millis(100));
        assert_eq!(timer.ready(0, start + Duration::from_millis(200)), None);
        assert_eq!(
            timer.ready(1, start + Duration::from_millis(400)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(timer.ready(2, start + Duration::from_secs(1)), None, "once");
        timer.scaled(3, 4, start);
        assert_eq!(timer.ready(4, start), None, "not a wake");
        timer.scaled(0, 1, start);
        timer.scaled(1, 0, start);
        assert_eq!(timer.ready(1, start), None, "the wake was called off");
    }
}
