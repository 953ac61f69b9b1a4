//! A model that cannot take tasks is an outage of its worker, not a failure of the tasks. The
//! worker learns of one in two ways: a task finds the model unavailable (connection refused, or
//! dropped before a whole answer), or the model's health route fails
//! [`FAILED_PROBES_TO_PAUSE`] probes in a row (the verdict of the model container's readiness
//! probe in the pod). Then the worker pauses: it reports itself not ready, stops pulling, hands
//! back what it received but did not start, and lets the tasks under way end as the model
//! decides (an answer is recorded, a dropped connection hands the task back). It resumes when
//! the health route answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ModelClient, Probing};
use crate::admin::Readiness;

/// Between health probes while the model is thought available (the model container's
/// readiness probe period).
pub const PROBE_PERIOD: Duration = Duration::from_secs(5);
/// Failed health probes in a row that pause the worker (the readiness probe's threshold).
pub const FAILED_PROBES_TO_PAUSE: u32 = 3;

/// One spell of taking tasks, ended by an outage of the model or by shutdown.
#[derive(Clone)]
pub struct Spell {
    stop: CancellationToken,
    readiness: Readiness,
    /// Whether the model answered any task in this spell.
    answered: Arc<AtomicBool>,
}

impl Spell {
    /// A spell that ends at the latest with `shutdown`; the worker reports itself ready.
    pub fn begin(shutdown: &CancellationToken, readiness: &Readiness) -> Self {
        readiness.set_ready();
        Spell {
            stop: shutdown.child_token(),
            readiness: readiness.clone(),
            answered: Arc::default(),
        }
    }

    pub fn note_model_answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    /// True when the model answered a task in this spell: a pause after a spell without one
    /// waits longer before resuming, so a model that drops every task is not hammered.
    pub fn model_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Cancelled when the spell ends: the worker takes no more tasks.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn is_over(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Ends the spell because the model is unavailable: not ready from now on, no more pulls.
    pub fn pause(&self, reason: &str) {
        self.readiness.set_not_ready();
        if !self.stop.is_cancelled() {
            tracing::warn!(
                reason,
                "the model is unavailable: taking no tasks and handing back what was not started until it answers its health route again"
            );
            self.stop.cancel();
        }
    }

    /// Probes the model's health route until the spell ends, and pauses it when the model fails
    /// [`FAILED_PROBES_TO_PAUSE`] probes in a row.
    pub async fn watch(&self, model: &ModelClient) {
        tokio::select! {
            () = until_unready(model) => self.pause("the model's health route failed"),
            () = self.stop.cancelled() => {}
        }
    }
}

/// Returns once the model has failed [`FAILED_PROBES_TO_PAUSE`] health probes in a row, probing
/// every [`PROBE_PERIOD`].
pub async fn until_unready(model: &ModelClient) {
    let mut ticks = tokio::time::interval(PROBE_PERIOD);
    ticks.tick().await;
    let mut failed = 0;
    while failed < FAILED_PROBES_TO_PAUSE {
        ticks.tick().await;
        failed = if model.is_ready().await {
            0
        } else {
            failed + 1
        };
    }
}

/// For a serving worker: reports it not ready while its model fails its health route and ready
/// again once it answers, until `cancel`. Requests go on being served meanwhile (a request the
/// model cannot take is answered 503), so nothing is handed back.
pub async fn follow_model(model: ModelClient, readiness: Readiness, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = until_unready(&model) => {}
            () = cancel.cancelled() => return,
        }
        readiness.set_not_ready();
        tracing::warn!("the model's health route failed: reporting not ready until it answers");
        if !model.wait_until_ready(&cancel, Probing::Resuming).await {
            return;
        }
        readiness.set_ready();
        tracing::info!("the model answers its health route again: ready");
    }
}
