//! One endpoint's local workers in `ferry dev`, sized by the same decision the operator uses:
//! re-evaluated every second from the endpoint's load — its queue (async), or the requests the
//! gateway holds (sync, streaming) — and at once when a task arrives or demand appears, so an
//! endpoint idling at zero wakes on its first task. Scale-in stops a worker gracefully: it stops
//! taking tasks and finishes the ones it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::python::{Environments, ModelCommand};
use super::workers::Worker;
use crate::admin::Readiness;
use crate::autoscale::{
    AutoscaleMetrics, Concurrency, Decision, Load, NamedEndpoint, Scaler, WakeTimer,
};
use crate::catalog::Catalog;
use crate::crd::{
    EndpointId, EndpointState, EndpointType, ModelBundle, ModelEndpoint, ModelEndpointStatus,
    condition,
};
use crate::forwarder::{ForwarderMetrics, InputFetcher};
use crate::process_group::ProcessGroup;
use crate::queue::LoadReport;
use crate::queue::{ForwarderQueue, OperatorQueue};

/// How often the queue's state is read between arrivals.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// How the pools of a `ferry dev` session scale.
#[derive(Clone)]
pub struct Scaling {
    /// How long the load must ask for fewer workers before they stop.
    pub scale_down_delay: Duration,
    pub metrics: Arc<AutoscaleMetrics>,
}

/// What makes a pool look at its load before the next tick.
enum Signal {
    /// A task was submitted (async).
    Task,
    /// A gateway reported its requests (sync, streaming).
    Load(LoadReport),
    /// A starting worker became ready.
    WorkerReady,
}

struct Running {
    stop: CancellationToken,
    ready: Readiness,
    done: JoinHandle<()>,
}

/// A pool's workers: those running and those draining after a scale-in.
#[derive(Default)]
struct Workers {
    running: Vec<Running>,
    draining: Vec<JoinHandle<()>>,
    /// Names workers uniquely over the pool's life.
    started: usize,
}

impl Workers {
    /// Starts or stops workers until `wanted` run; stopped ones finish what they hold.
    fn resize(&mut self, wanted: usize, start: impl Fn(usize) -> Running) {
        while self.running.len() < wanted {
            self.running.push(start(self.started));
            self.started += 1;
        }
        self.shrink(wanted);
    }

    fn shrink(&mut self, wanted: usize) {
        while self.running.len() > wanted {
            if let Some(worker) = self.running.pop() {
                worker.stop.cancel();
                self.draining.push(worker.done);
            }
        }
        self.draining.retain(|done| !done.is_finished());
    }

    fn ready(&self) -> u32 {
        let ready = self.running.iter().filter(|worker| worker.ready.is_ready());
        ready.count() as u32
    }

    /// Resolves when a worker that is starting becomes ready; never when none is starting.
    async fn first_ready(&self) {
        let starting: Vec<_> = self
            .running
            .iter()
            .filter(|worker| !worker.ready.is_ready())
            .map(|worker| Box::pin(worker.ready.ready()))
            .collect();
        if starting.is_empty() {
            std::future::pending::<()>().await;
        }
        futures::future::select_all(starting).await;
    }

    /// Stops every worker and waits until all have drained.
    async fn stop_all(mut self) {
        self.shrink(0);
        futures::future::join_all(self.draining).await;
    }
}

pub struct Pool {
    pub endpoint: Arc<ModelEndpoint>,
    pub bundle: Arc<ModelBundle>,
    pub catalog: Catalog,
    /// Reads the endpoint's load.
    pub queue: OperatorQueue,
    /// What its forwarders pull, record and queue callbacks with.
    pub forwarder_queue: ForwarderQueue,
    pub metrics: Arc<ForwarderMetrics>,
    pub scaling: Scaling,
    /// What the gateway presents to the endpoint's serving workers.
    pub serving_token: String,
    /// The group model processes start in.
    pub children: Arc<ProcessGroup>,
    pub inputs: InputFetcher,
    /// Where artifact bundles get their Python environments.
    pub environments: Arc<Environments>,
}

impl Pool {
    /// Prepares how the model starts — an artifact bundle's venv may take minutes to build, or
    /// fail, which the endpoint's status then says until it changes — then runs and sizes the
    /// workers until `stop`, and stops them all, letting them drain.
    pub async fn run(self, stop: CancellationToken) {
        let id = self.endpoint.endpoint_id();
        let bundle = self.bundle.name_any();
        self.catalog.set_status(&id, preparing_status(&id, &bundle));
        let prepared = tokio::select! {
            _ = stop.cancelled() => return,
            prepared = self.environments.command_for(&self.bundle) => prepared,
        };
        match prepared {
            Ok(command) => self.run_workers(Arc::new(command), stop).await,
            Err(error) => {
                tracing::error!(endpoint = %self.endpoint.name_any(), %error, "the model cannot start");
                self.catalog
                    .set_status(&id, failed_status(&id, &error.to_string()));
                stop.cancelled().await;
            }
        }
    }

    async fn run_workers(self, command: Arc<ModelCommand>, stop: CancellationToken) {
        let id = self.endpoint.endpoint_id();
        let label = NamedEndpoint::of(&self.endpoint);
        let spec = &self.endpoint.spec;
        let mut signals = self.signals().await;
        let mut ticks = tokio::time::interval(EVALUATE_EVERY);
        let mut scaler = Scaler::new(self.scaling.scale_down_delay);
        let mut concurrency = Concurrency::default();
        let mut wake = WakeTimer::default();
        let mut workers = Workers::default();
        let mut last_scale: Option<Time> = None;
        let mut oldest_task_age: Option<i64> = None;
        loop {
            let signal = tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => None,
                Some(signal) = signals.next() => Some(signal),
                () = workers.first_ready() => Some(Signal::WorkerReady),
            };
            let ticked = signal.is_none();
            if let Some(Signal::Load(report)) = signal {
                concurrency.record(report, Instant::now());
            }
            // The oldest task's age costs a request more: once per tick, not per signal.
            let (load, age) = self
                .load(workers.running.len(), &mut concurrency, ticked)
                .await;
            if ticked {
                oldest_task_age = age;
            }
            let now = Instant::now();
            let decision = scaler.decide(spec, load, now);
            let (from, to) = (workers.running.len() as u32, decision.replicas);
            if from != to {
                tracing::info!(endpoint = %self.endpoint.name_any(), from, to, reason = decision.reason.as_str(), queued = load.queued, in_flight = load.in_flight, "scaling workers");
                wake.scaled(from, to, now);
                last_scale = Some(Time(jiff::Timestamp::now()));
            }
            workers.resize(to as usize, |index| self.spawn(index, &command, &stop));
            let ready = workers.ready();
            if let Some(took) = wake.ready(ready, now) {
                tracing::info!(endpoint = %self.endpoint.name_any(), seconds = took.as_secs_f64(), "woke from zero");
                self.scaling.metrics.observe_wake(took);
            }
            self.scaling
                .metrics
                .observe(&label, decision.replicas, ready);
            if spec.endpoint_type == EndpointType::Async {
                self.scaling
                    .metrics
                    .observe_queue(&label, load, oldest_task_age);
            }
            let seen = Observation {
                ready,
                decision,
                load,
                oldest_task_age_seconds: oldest_task_age,
            };
            self.catalog
                .set_status(&id, build_status(&id, &seen, last_scale.as_ref()));
        }
        self.scaling.metrics.forget(&label);
        workers.stop_all().await;
    }

    /// Task arrivals for an async endpoint, the gateway's load reports for the others.
    async fn signals(&self) -> futures::stream::BoxStream<'static, Signal> {
        let id = self.endpoint.endpoint_id();
        let subscribed = match self.endpoint.spec.endpoint_type {
            EndpointType::Async => self
                .queue
                .task_arrivals(&id)
                .await
                .map(|arrivals| arrivals.map(|()| Signal::Task).boxed()),
            _ => self
                .queue
                .load_reports(Some(&id))
                .await
                .map(|reports| reports.map(Signal::Load).boxed()),
        };
        subscribed.unwrap_or_else(|error| {
            tracing::warn!(endpoint = %id, %error, "no load notifications; scaling on the interval only");
            futures::stream::pending().boxed()
        })
    }

    /// Queued and held tasks for async endpoints, the requests the gateway holds for the others;
    /// with `with_age`, also the seconds the oldest unfinished task has waited.
    async fn load(
        &self,
        running: usize,
        concurrency: &mut Concurrency,
        with_age: bool,
    ) -> (Load, Option<i64>) {
        let id = self.endpoint.endpoint_id();
        if self.endpoint.spec.endpoint_type != EndpointType::Async {
            let in_flight = concurrency.in_flight(&id, Instant::now());
            return (
                Load {
                    queued: 0,
                    in_flight,
                },
                None,
            );
        }
        let backlog = if with_age {
            self.queue.backlog_with_age(&id).await
        } else {
            self.queue.backlog(&id).await
        };
        match backlog {
            Ok(backlog) => (
                Load {
                    queued: backlog.queued,
                    in_flight: backlog.in_flight,
                },
                backlog.oldest_age_seconds,
            ),
            Err(error) => {
                tracing::warn!(endpoint = %self.endpoint.name_any(), %error, "reading the backlog failed; keeping the workers");
                let in_flight = running as u64 * u64::from(self.endpoint.spec.per_worker);
                (
                    Load {
                        queued: 0,
                        in_flight,
                    },
                    None,
                )
            }
        }
    }

    fn spawn(
        &self,
        index: usize,
        command: &Arc<ModelCommand>,
        stop: &CancellationToken,
    ) -> Running {
        let worker = Worker {
            name: format!("{}-{index}", self.endpoint.name_any()),
            endpoint: self.endpoint.clone(),
            bundle: self.bundle.clone(),
            command: command.clone(),
            catalog: self.catalog.clone(),
            queue: self.forwarder_queue.clone(),
            metrics: self.metrics.clone(),
            serving_token: self.serving_token.clone(),
            children: self.children.clone(),
            inputs: self.inputs.clone(),
        };
        let ready = Readiness::default();
        let worker_stop = stop.child_token();
        let done = tokio::spawn(worker.run(ready.clone(), worker_stop.clone()));
        Running {
            stop: worker_stop,
            ready,
            done,
        }
    }
}

/// What a pool saw at its latest evaluation.
struct Observation {
    ready: u32,
    decision: Decision,
    load: Load,
    oldest_task_age_seconds: Option<i64>,
}

/// The status `ferry dev` reports for an endpoint, as the operator would.
fn build_status(
    endpoint: &EndpointId,
    seen: &Observation,
    last_scale: Option<&Time>,
) -> ModelEndpointStatus {
    let wanted = seen.decision.replicas;
    let state = if seen.ready >= wanted {
        EndpointState::Ready
    } else {
        EndpointState::UpdateInProgress
    };
    let count = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    ModelEndpointStatus {
        endpoint_id: Some(endpoint.to_string()),
        state: Some(state),
        replicas: count(wanted),
        ready_replicas: count(seen.ready),
        desired_replicas: count(wanted),
        queue_depth: Some(i64::try_from(seen.load.queued).unwrap_or(i64::MAX)),
        oldest_task_age_seconds: seen.oldest_task_age_seconds,
        last_scale_time: last_scale.cloned(),
        scale_reason: Some(seen.decision.reason.as_str().to_owned()),
        ..Default::default()
    }
}

/// While the model's environment is prepared: not ready, saying why.
fn preparing_status(endpoint: &EndpointId, bundle: &str) -> ModelEndpointStatus {
    ModelEndpointStatus {
        endpoint_id: Some(endpoint.to_string()),
        state: Some(EndpointState::UpdateInProgress),
        conditions: vec![ready_condition(
            "False",
            "Preparing",
            &format!("preparing the model of bundle {bundle}"),
        )],
        ..Default::default()
    }
}

/// When the model cannot start: failed, with the reason, until the endpoint or bundle changes.
fn failed_status(endpoint: &EndpointId, message: &str) -> ModelEndpointStatus {
    ModelEndpointStatus {
        endpoint_id: Some(endpoint.to_string()),
        state: Some(EndpointState::UpdateFailed),
        conditions: vec![ready_condition("False", "ModelCannotStart", message)],
        ..Default::default()
    }
}

fn ready_condition(status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: condition::READY.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::Reason;

    #[test]
    fn status_shows_why_an_endpoint_is_at_zero_and_how_old_its_oldest_task_is() {
        let endpoint = EndpointId::for_resource("ml", "a");
        let idle = Observation {
            ready: 0,
            decision: Decision {
                replicas: 0,
                reason: Reason::Idle,
            },
            load: Load::default(),
            oldest_task_age_seconds: None,
        };
        let status = build_status(&endpoint, &idle, None);
        assert_eq!(
            (
                status.state,
                status.desired_replicas,
                status.scale_reason.as_deref()
            ),
            (Some(EndpointState::Ready), Some(0), Some("Idle"))
        );

        let scaled_at = Time(jiff::Timestamp::UNIX_EPOCH);
        let waking = Observation {
            ready: 0,
            decision: Decision {
                replicas: 2,
                reason: Reason::Load,
            },
            load: Load {
                queued: 7,
                in_flight: 0,
            },
            oldest_task_age_seconds: Some(3),
        };
        let status = build_status(&endpoint, &waking, Some(&scaled_at));
        assert_eq!(status.state, Some(EndpointState::UpdateInProgress));
        assert_eq!(
            (status.queue_depth, status.oldest_task_age_seconds),
            (Some(7), Some(3))
        );
        assert_eq!(status.last_scale_time, Some(scaled_at));
        assert_eq!(status.scale_reason.as_deref(), Some("Load"));
    }
}
