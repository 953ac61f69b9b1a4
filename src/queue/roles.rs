//! What each role may do with the queue: one handle per role over the one connection, carrying
//! exactly the operations of that role — the same split as its NATS permissions
//! (`permissions`), so a role cannot even call what its credentials would refuse. `ferry dev`,
//! which plays every role, takes every handle from one [`Queue`].

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use super::{
    AttemptCounts, Backlog, CallbackDelivery, Error, LetterPage, LetterQuery, LoadReport,
    OutcomeTally, Puller, Queue, QueueSpec, RecordAt, TaskDelivery, TaskPage, TaskQuery,
    WorkerPresence, submit::Submission,
};
use crate::crd::EndpointId;
use crate::task::{
    CallbackJob, CallbackPolicy, CallbackState, DeadLetter, TaskId, TaskMessage, TaskRecord,
};

impl Queue {
    pub fn gateway(&self) -> GatewayQueue {
        GatewayQueue(Arc::new(self.clone()))
    }

    pub fn dispatcher(&self) -> DispatcherQueue {
        DispatcherQueue(Arc::new(self.clone()))
    }

    pub fn operator(&self) -> OperatorQueue {
        OperatorQueue(Arc::new(self.clone()))
    }

    /// The handle of the forwarders of `endpoint`, which reach that endpoint alone.
    pub fn forwarder(&self, endpoint: &EndpointId) -> ForwarderQueue {
        ForwarderQueue {
            queue: Arc::new(self.clone()),
            endpoint: endpoint.clone(),
        }
    }
}

/// The gateway: submits tasks, reads their records and callback states, redelivers dead
/// letters, reports the sync load, and opens a new async endpoint's task queue at once.
#[derive(Clone)]
pub struct GatewayQueue(Arc<Queue>);

impl GatewayQueue {
    pub async fn submit(
        &self,
        task: &TaskMessage,
        idempotency_key: Option<&str>,
    ) -> Result<Submission, Error> {
        self.0.submit(task, idempotency_key).await
    }

    pub async fn task_record(&self, task: &TaskId) -> Result<Option<TaskRecord>, Error> {
        self.0.task_record(task).await
    }

    pub async fn backlog(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        self.0.backlog(endpoint).await
    }

    /// A page of the endpoint's tasks, newest first.
    pub async fn task_page(
        &self,
        endpoint: &EndpointId,
        query: &TaskQuery,
    ) -> Result<TaskPage, Error> {
        self.0.task_page(endpoint, query).await
    }

    /// Cancels a PENDING task: the record it has afterwards and whether this call cancelled
    /// it; `None` for an unknown task.
    pub async fn cancel_task(&self, task: &TaskId) -> Result<Option<(TaskRecord, bool)>, Error> {
        self.0.cancel_task(task).await
    }

    /// Takes a cancelled task out of its queue.
    pub async fn unqueue(&self, task: &TaskId) -> Result<(), Error> {
        self.0.unqueue(task).await
    }

    /// Queues the callback of a task cancelled while queued.
    pub async fn publish_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        self.0.publish_callback(job).await
    }

    /// The backlog with the age of its oldest task, and the last hour's callback attempts: what
    /// the console shows of an endpoint.
    pub async fn backlog_with_age(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        self.0.backlog_with_age(endpoint).await
    }

    pub async fn attempt_tally(&self, endpoint: &EndpointId) -> Result<OutcomeTally, Error> {
        self.0.attempt_tally(endpoint).await
    }

    pub async fn callback_state(&self, task: &TaskId) -> Result<Option<CallbackState>, Error> {
        self.0.callback_state(task).await
    }

    pub async fn update_callback_state(
        &self,
        task: &TaskId,
        likely_first: bool,
        change: impl Fn(Option<CallbackState>) -> Option<CallbackState>,
    ) -> Result<Option<CallbackState>, Error> {
        self.0
            .update_callback_state(task, likely_first, change)
            .await
    }

    pub async fn dead_letter(
        &self,
        endpoint: &EndpointId,
        task: &TaskId,
    ) -> Result<Option<DeadLetter>, Error> {
        self.0.dead_letter(endpoint, task).await
    }

    pub async fn dead_letters(
        &self,
        endpoints: Option<&[EndpointId]>,
    ) -> Result<Vec<DeadLetter>, Error> {
        self.0.dead_letters(endpoints).await
    }

    /// A page of the endpoint's dead letters, oldest first.
    pub async fn dead_letter_page(
        &self,
        endpoint: &EndpointId,
        query: &LetterQuery,
    ) -> Result<LetterPage, Error> {
        self.0.dead_letter_page(endpoint, query).await
    }

    pub async fn remove_dead_letter(
        &self,
        endpoint: &EndpointId,
        task: &TaskId,
    ) -> Result<(), Error> {
        self.0.remove_dead_letter(endpoint, task).await
    }

    pub async fn redeliver_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        self.0.redeliver_callback(job).await
    }

    pub async fn publish_load(&self, report: &LoadReport) -> Result<(), Error> {
        self.0.publish_load(report).await
    }

    /// Opens an async endpoint's task queue before the operator does, so the first task a
    /// client submits right after creating the endpoint is taken.
    /// Announcements of every endpoint's workers (for gateways serving fixed manifests).
    pub async fn worker_presences(
        &self,
    ) -> Result<impl Stream<Item = WorkerPresence> + use<>, Error> {
        self.0.worker_presences().await
    }

    /// When each of `endpoints` was first served by a gateway of fixed manifests.
    pub async fn first_served(
        &self,
        endpoints: &[EndpointId],
    ) -> Result<Vec<jiff::Timestamp>, Error> {
        self.0.first_served(endpoints).await
    }

    pub async fn open_task_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        let expiry = Some(spec.task_expiry);
        self.0.ensure_payloads(&spec.endpoint_id, expiry).await?;
        self.0.ensure_task_queue(spec).await
    }

    /// Prepares the endpoints of a gateway that serves manifests, where no operator runs.
    pub async fn prepare_endpoint(
        &self,
        endpoint: &EndpointId,
        policy: &CallbackPolicy,
        tasks: Option<&QueueSpec>,
    ) -> Result<(), Error> {
        self.0.prepare_endpoint(endpoint, policy, tasks).await
    }
}

/// A forwarder: takes its endpoint's tasks, records their outcomes and queues their callbacks
/// — for its own endpoint only.
#[derive(Clone)]
pub struct ForwarderQueue {
    queue: Arc<Queue>,
    endpoint: EndpointId,
}

impl ForwarderQueue {
    /// A puller of the endpoint's tasks.
    pub async fn tasks(&self) -> Result<Puller<TaskDelivery>, Error> {
        self.queue.tasks(&self.endpoint).await
    }

    pub async fn task_record(&self, task: &TaskId) -> Result<Option<TaskRecord>, Error> {
        self.queue.task_record(task).await
    }

    pub async fn advance_task_record(
        &self,
        task: &TaskId,
        record: &TaskRecord,
        last_seen: Option<RecordAt>,
    ) -> Result<RecordAt, Error> {
        self.queue
            .advance_task_record(task, record, last_seen)
            .await
    }

    /// Records one of this endpoint's tasks that its queue dropped unrun as expired, if it is
    /// still PENDING.
    pub async fn expire_task(&self, task: &TaskId) -> Result<Option<(TaskRecord, bool)>, Error> {
        if task.endpoint() != &self.endpoint {
            return Err(Error::NotOwnEndpoint {
                endpoint: task.endpoint().clone(),
            });
        }
        self.queue.expire_task(task).await
    }

    /// Puts a task this worker recorded as STARTED back to PENDING as it hands the task back
    /// unrun (so it may still be cancelled); a record changed since is left alone.
    pub async fn unstart_task(&self, task: &TaskId, started: &RecordAt) -> Result<(), Error> {
        self.queue.unstart_task(task, started).await
    }

    /// Queues the callback of one of this endpoint's tasks.
    pub async fn publish_callback(&self, job: &CallbackJob) -> Result<(), Error> {
        if job.endpoint_id != self.endpoint {
            return Err(Error::NotOwnEndpoint {
                endpoint: job.endpoint_id.clone(),
            });
        }
        self.queue.publish_callback(job).await
    }

    /// Announces one of this endpoint's workers to gateways serving fixed manifests.
    pub async fn announce(&self, presence: &WorkerPresence) -> Result<(), Error> {
        if presence.endpoint != self.endpoint {
            return Err(Error::NotOwnEndpoint {
                endpoint: presence.endpoint.clone(),
            });
        }
        self.queue.announce_worker(presence).await
    }
}

/// The dispatcher: takes callback jobs, reads endpoints' callback policies, records delivery
/// states, reschedules and dead-letters.
#[derive(Clone)]
pub struct DispatcherQueue(Arc<Queue>);

impl DispatcherQueue {
    pub async fn callback_jobs(&self) -> Result<Puller<CallbackDelivery>, Error> {
        self.0.callback_jobs().await
    }

    pub async fn schedule_callback(&self, job: &CallbackJob, delay: Duration) -> Result<(), Error> {
        self.0.schedule_callback(job, delay).await
    }

    pub async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        self.0.put_dead_letter(letter).await
    }

    /// Publishes the attempts counted since the last flush to the last hour's tally (not
    /// waited for).
    pub async fn publish_attempt_counts(&self, counts: &AttemptCounts) {
        self.0.publish_attempt_counts(counts).await
    }

    pub async fn callback_policy(
        &self,
        endpoint: &EndpointId,
    ) -> Result<Option<CallbackPolicy>, Error> {
        self.0.callback_policy(endpoint).await
    }

    pub async fn callback_policy_changes(
        &self,
    ) -> Result<impl Stream<Item = EndpointId> + use<>, Error> {
        self.0.callback_policy_changes().await
    }

    pub async fn callback_state(&self, task: &TaskId) -> Result<Option<CallbackState>, Error> {
        self.0.callback_state(task).await
    }

    pub async fn update_callback_state(
        &self,
        task: &TaskId,
        likely_first: bool,
        change: impl Fn(Option<CallbackState>) -> Option<CallbackState>,
    ) -> Result<Option<CallbackState>, Error> {
        self.0
            .update_callback_state(task, likely_first, change)
            .await
    }
}

/// The operator (and `ferry dev` in its place): prepares and retires endpoints' queues and
/// policies, and watches their load to scale them.
#[derive(Clone)]
pub struct OperatorQueue(Arc<Queue>);

impl OperatorQueue {
    /// Everything the queue keeps for an endpoint: its callback policy (for the dispatcher)
    /// and, for an async endpoint (`tasks`), its task queue. Safe to repeat.
    pub async fn prepare_endpoint(
        &self,
        endpoint: &EndpointId,
        policy: &CallbackPolicy,
        tasks: Option<&QueueSpec>,
    ) -> Result<(), Error> {
        self.0.prepare_endpoint(endpoint, policy, tasks).await
    }

    /// Removes the endpoint's task queue, with the tasks still in it; removing one that does
    /// not exist succeeds.
    pub async fn close_task_queue(&self, endpoint: &EndpointId) -> Result<(), Error> {
        self.0.delete_task_queue(endpoint).await
    }

    /// Removes everything the queue keeps for a deleted endpoint: its task queue, its stored
    /// payloads and its callback policy (with the secrets sealed in it).
    pub async fn retire_endpoint(&self, endpoint: &EndpointId) -> Result<(), Error> {
        self.0.delete_task_queue(endpoint).await?;
        self.0.delete_index(endpoint).await?;
        self.0.delete_payloads(endpoint).await?;
        self.0.delete_callback_policy(endpoint).await
    }

    pub async fn backlog(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        self.0.backlog(endpoint).await
    }

    pub async fn backlog_with_age(&self, endpoint: &EndpointId) -> Result<Backlog, Error> {
        self.0.backlog_with_age(endpoint).await
    }

    pub async fn all_task_arrivals(&self) -> Result<impl Stream<Item = EndpointId> + use<>, Error> {
        self.0.all_task_arrivals().await
    }

    pub async fn task_arrivals(
        &self,
        endpoint: &EndpointId,
    ) -> Result<impl Stream<Item = ()> + use<>, Error> {
        self.0.task_arrivals(endpoint).await
    }

    pub async fn load_reports(
        &self,
        endpoint: Option<&EndpointId>,
    ) -> Result<impl Stream<Item = LoadReport> + use<>, Error> {
        self.0.load_reports(endpoint).await
    }
}
