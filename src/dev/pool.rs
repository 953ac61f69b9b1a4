//! One endpoint's local workers in `ferry dev`, sized by the same decision the operator uses:
//! re-evaluated every second from the queue's state and at once when a task arrives, so an
//! endpoint idling at zero wakes on its first task. Scale-in stops a worker gracefully: it stops
//! taking tasks and finishes the ones it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::workers::Worker;
use crate::admin::Readiness;
use crate::autoscale::{Decision, Load, Scaler};
use crate::catalog::Catalog;
use crate::crd::{EndpointState, EndpointType, ModelBundle, ModelEndpoint, ModelEndpointStatus};
use crate::forwarder::ForwarderMetrics;
use crate::queue::Queue;

/// How often the queue's state is read between arrivals.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);

struct Running {
    stop: CancellationToken,
    ready: Readiness,
    done: JoinHandle<()>,
}

pub struct Pool {
    pub endpoint: Arc<ModelEndpoint>,
    pub bundle: Arc<ModelBundle>,
    pub catalog: Catalog,
    pub queue: Queue,
    pub metrics: Arc<ForwarderMetrics>,
    pub scale_down_delay: Duration,
}

impl Pool {
    /// Runs and sizes the workers until `stop`, then stops them all, letting them drain.
    pub async fn run(self, stop: CancellationToken) {
        let id = self.endpoint.endpoint_id();
        let spec = &self.endpoint.spec;
        let arrivals = match spec.endpoint_type {
            EndpointType::Async => match self.queue.task_arrivals(&id).await {
                Ok(arrivals) => arrivals.boxed(),
                Err(error) => {
                    tracing::warn!(endpoint = %id, %error, "no arrival notifications; scaling on the interval only");
                    futures::stream::pending().boxed()
                }
            },
            _ => futures::stream::pending().boxed(),
        };
        let mut arrivals = std::pin::pin!(arrivals);
        let mut ticks = tokio::time::interval(EVALUATE_EVERY);
        let mut scaler = Scaler::new(self.scale_down_delay);
        let mut running: Vec<Running> = Vec::new();
        let mut draining: Vec<JoinHandle<()>> = Vec::new();
        let mut next_index = 0;
        let mut last_scale: Option<(Time, Decision)> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
                Some(()) = arrivals.next() => {}
            }
            let load = self.load(&running).await;
            let decision = scaler.decide(spec, load, Instant::now());
            let wanted = decision.replicas as usize;
            if wanted != running.len() {
                tracing::info!(endpoint = %self.endpoint.name_any(), from = running.len(), to = wanted, reason = decision.reason.as_str(), "scaling workers");
                last_scale = Some((Time(jiff::Timestamp::now()), decision));
            }
            while running.len() < wanted {
                running.push(self.spawn(next_index, &stop));
                next_index += 1;
            }
            while running.len() > wanted {
                if let Some(worker) = running.pop() {
                    worker.stop.cancel();
                    draining.push(worker.done);
                }
            }
            draining.retain(|done| !done.is_finished());
            let ready = running
                .iter()
                .filter(|worker| worker.ready.is_ready())
                .count();
            self.catalog
                .set_status(&id, self.status(ready, decision, load, last_scale.as_ref()));
        }
        for worker in running.drain(..) {
            worker.stop.cancel();
            draining.push(worker.done);
        }
        futures::future::join_all(draining).await;
    }

    /// Queued and held tasks for async endpoints; sync and streaming endpoints keep at least one
    /// worker (their load is not queued, so it cannot wake them from zero).
    async fn load(&self, running: &[Running]) -> Load {
        if self.endpoint.spec.endpoint_type != EndpointType::Async {
            let floor = u64::from(self.endpoint.spec.min_workers.max(1))
                * u64::from(self.endpoint.spec.per_worker);
            return Load {
                queued: 0,
                in_flight: floor,
            };
        }
        match self.queue.backlog(&self.endpoint.endpoint_id()).await {
            Ok(backlog) => Load {
                queued: backlog.queued,
                in_flight: backlog.in_flight,
            },
            Err(error) => {
                tracing::warn!(endpoint = %self.endpoint.name_any(), %error, "reading the backlog failed; keeping the workers");
                Load {
                    queued: 0,
                    in_flight: running.len() as u64 * u64::from(self.endpoint.spec.per_worker),
                }
            }
        }
    }

    fn spawn(&self, index: usize, stop: &CancellationToken) -> Running {
        let worker = Worker {
            name: format!("{}-{index}", self.endpoint.name_any()),
            endpoint: self.endpoint.clone(),
            bundle: self.bundle.clone(),
            catalog: self.catalog.clone(),
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
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

    fn status(
        &self,
        ready: usize,
        decision: Decision,
        load: Load,
        last_scale: Option<&(Time, Decision)>,
    ) -> ModelEndpointStatus {
        let wanted = decision.replicas as usize;
        let state = if ready >= wanted {
            EndpointState::Ready
        } else {
            EndpointState::UpdateInProgress
        };
        ModelEndpointStatus {
            endpoint_id: Some(self.endpoint.endpoint_id().to_string()),
            state: Some(state),
            replicas: Some(wanted as i32),
            ready_replicas: Some(ready as i32),
            desired_replicas: Some(wanted as i32),
            queue_depth: Some(load.queued as i64),
            last_scale_time: last_scale.map(|(at, _)| at.clone()),
            scale_reason: Some(decision.reason.as_str().to_owned()),
            ..Default::default()
        }
    }
}
