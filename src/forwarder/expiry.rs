//! Tasks that expired in the queue. When a task waits longer than its endpoint's
//! `taskExpiresSeconds`, the server drops it and leaves a marker on its subject in its place
//! (see `queue::tasks`); the worker that takes the marker records the task a FAILURE that says
//! it expired, and sends its callback, so its client learns it ended instead of polling a
//! PENDING task until the record itself expires.
//!
//! A task taken just before it expired is still PENDING for up to [`super::STARTED_AFTER`]
//! while it runs: a marker younger than [`SETTLE`] goes back to the queue until then, and a
//! task found STARTED or final by then is left to the run that holds it.

use std::time::Duration;

use tracing::Instrument;

use super::Forwarder;
use crate::queue::{self, Held, TaskDelivery};
use crate::task::{CallbackJob, TaskId};

/// How old a marker is before its task counts as never taken: well past
/// [`super::STARTED_AFTER`] and the write of STARTED.
const SETTLE: Duration = Duration::from_secs(2);

impl Forwarder {
    /// Handles the marker of `task`, which expired in the queue; acknowledges it once the
    /// task's ending is recorded and its callback queued.
    pub(super) async fn handle_expiry(&self, delivery: &TaskDelivery, task: TaskId) {
        let span = tracing::info_span!("task", endpoint = %task.endpoint(), task_id = %task);
        let wait = SETTLE.saturating_sub(delivery.stored_for());
        if !wait.is_zero() {
            if let Err(error) = delivery.defer(wait).await {
                span.in_scope(|| tracing::warn!(%error, "deferring an expiry marker failed; it comes back after its lease"));
            }
            return;
        }
        match self.record_expiry(&task).instrument(span.clone()).await {
            Ok(()) => {
                if let Err(error) = delivery.ack().await {
                    span.in_scope(|| tracing::warn!(%error, "acknowledging an expiry marker failed; it will be delivered again"));
                }
            }
            // Not acknowledged: the marker comes back after its lease, and each step repeats
            // safely (the record's compare-and-set, the callback job's id).
            Err(error) => span.in_scope(
                || tracing::warn!(%error, "recording an expired task failed; it will be retried"),
            ),
        }
    }

    async fn record_expiry(&self, task: &TaskId) -> Result<(), queue::Error> {
        let Some((record, expired_now)) = self.queue.expire_task(task).await? else {
            tracing::info!("an expired task has no record left");
            return Ok(());
        };
        if expired_now {
            self.metrics.task_expired(task.endpoint());
            tracing::info!("the task expired in its queue unrun");
        }
        // Also when an earlier delivery of the marker recorded it and stopped before the
        // callback was queued.
        if let (true, Some(target)) = (record.is_expiry(), record.callback.clone()) {
            let job = CallbackJob::for_unrun(task, target, super::outcome_of(&record));
            self.queue.publish_callback(&job).await?;
        }
        Ok(())
    }
}
