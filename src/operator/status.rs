//! Pure status compute: what was observed during one reconcile becomes the endpoint's
//! `status` — conditions in the standard `metav1.Condition` shape, the Launch state, workers and
//! backlog. Owns the condition reasons.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{EndpointState, ModelEndpoint, ModelEndpointStatus, condition};
use crate::queue::Backlog;

/// Reasons of the conditions a ModelEndpoint reports.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const BUNDLE_NOT_FOUND: &str = "BundleNotFound";
    /// A spec that does not parse or breaks a rule of the validation step, whose reasons these
    /// are.
    pub use crate::crd::validate::reason::INVALID_SPEC;
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// An object named like one of the endpoint's children exists and is not ferry's.
    pub const NAME_CLASH: &str = "NameClash";
    pub const QUEUE_READY: &str = "QueueReady";
    pub const QUEUE_NOT_REQUIRED: &str = "QueueNotRequired";
    pub const QUEUE_UNAVAILABLE: &str = "QueueUnavailable";
    pub const WORKERS_AVAILABLE: &str = "MinimumWorkersAvailable";
    pub const ROLLOUT_PENDING: &str = "RolloutPending";
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
}

const TRUE: &str = "True";
const FALSE: &str = "False";
const UNKNOWN: &str = "Unknown";

/// Why the workers could not be updated this time; the endpoint's spec or bundle must change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
}

/// The endpoint's queue as this reconcile found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueState {
    /// Sync and streaming endpoints have none.
    NotRequired,
    Ready(Backlog),
    Unavailable(String),
    /// Not attempted because the workers are blocked.
    Unknown,
}

/// Everything one reconcile learned.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub blocked: Option<Blocked>,
    /// The Deployment as the API server answered the apply.
    pub deployment: Option<Deployment>,
    pub queue: QueueState,
}

impl Observed {
    pub fn blocked(reason: &'static str, message: String) -> Self {
        Observed {
            blocked: Some(Blocked { reason, message }),
            deployment: None,
            queue: QueueState::Unknown,
        }
    }
}

/// Progress of the worker Deployment, as `kubectl rollout status` judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rollout {
    /// The Deployment controller has not seen the current spec yet.
    Pending,
    InProgress {
        message: String,
    },
    Failed {
        message: String,
    },
    Complete,
}

/// The status `observed` describes; conditions whose status did not change keep their
/// `lastTransitionTime` from the endpoint's current status.
pub fn compute(endpoint: &ModelEndpoint, observed: &Observed, now: Time) -> ModelEndpointStatus {
    let generation = endpoint.metadata.generation;
    // Ready needs the minimum; the autoscaler may want more (the Deployment's replicas).
    let desired = i32::try_from(endpoint.spec.min_workers).unwrap_or(i32::MAX);
    let wanted = observed
        .deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|spec| spec.replicas)
        .unwrap_or(desired);
    let counts = observed.deployment.as_ref().and_then(|d| d.status.as_ref());
    let ready_replicas = counts.map(|s| s.ready_replicas.unwrap_or(0));
    let available = counts.and_then(|s| s.available_replicas).unwrap_or(0);
    let rollout = observed
        .deployment
        .as_ref()
        .map(compute_rollout)
        .unwrap_or(Rollout::Pending);

    let workers = match (&observed.blocked, &rollout) {
        (Some(blocked), _) => (UNKNOWN, blocked.reason, blocked.message.clone()),
        (None, Rollout::Complete) if available >= desired => (
            TRUE,
            reason::WORKERS_AVAILABLE,
            format!("{available} of {desired} workers available"),
        ),
        (None, Rollout::Failed { message }) => {
            (FALSE, reason::PROGRESS_DEADLINE_EXCEEDED, message.clone())
        }
        (None, Rollout::Pending) => (
            FALSE,
            reason::ROLLOUT_PENDING,
            "the worker Deployment has not picked up the current spec yet".into(),
        ),
        (None, Rollout::InProgress { message }) => {
            (FALSE, reason::ROLLOUT_IN_PROGRESS, message.clone())
        }
        (None, Rollout::Complete) => (
            FALSE,
            reason::ROLLOUT_IN_PROGRESS,
            format!("{available} of {desired} workers available"),
        ),
    };
    let queue = match (&observed.blocked, &observed.queue) {
        (_, QueueState::NotRequired) => (
            TRUE,
            reason::QUEUE_NOT_REQUIRED,
            "sync and streaming endpoints take no queued tasks".to_string(),
        ),
        (_, QueueState::Ready(_)) => (TRUE, reason::QUEUE_READY, "the task queue exists".into()),
        (_, QueueState::Unavailable(message)) => {
            (FALSE, reason::QUEUE_UNAVAILABLE, message.clone())
        }
        (Some(blocked), QueueState::Unknown) => (UNKNOWN, blocked.reason, blocked.message.clone()),
        (None, QueueState::Unknown) => (UNKNOWN, reason::QUEUE_UNAVAILABLE, String::new()),
    };
    let ready = if let Some(blocked) = &observed.blocked {
        (FALSE, blocked.reason, blocked.message.clone())
    } else if queue.0 != TRUE {
        (FALSE, queue.1, queue.2.clone())
    } else if workers.0 != TRUE {
        (FALSE, workers.1, workers.2.clone())
    } else {
        (
            TRUE,
            reason::READY,
            format!("{available} workers serve the endpoint"),
        )
    };
    let state = match (&observed.blocked, &rollout) {
        (Some(_), _) | (None, Rollout::Failed { .. }) => EndpointState::UpdateFailed,
        _ if ready.0 == TRUE => EndpointState::Ready,
        (None, Rollout::Pending) => EndpointState::UpdatePending,
        _ if matches!(observed.queue, QueueState::Unavailable(_)) => EndpointState::UpdatePending,
        _ => EndpointState::UpdateInProgress,
    };

    let previous = endpoint
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        build_condition(previous, type_, status, reason, message, generation, &now)
    };
    let backlog = match &observed.queue {
        QueueState::Ready(backlog) => Some(i64::try_from(backlog.queued).unwrap_or(i64::MAX)),
        _ => None,
    };
    ModelEndpointStatus {
        observed_generation: generation,
        conditions: vec![
            condition(condition::READY, ready),
            condition(condition::QUEUE_READY, queue),
            condition(condition::WORKERS_AVAILABLE, workers),
        ],
        endpoint_id: Some(endpoint.endpoint_id().to_string()),
        state: Some(state),
        replicas: counts.map(|s| s.replicas.unwrap_or(0)),
        ready_replicas,
        desired_replicas: Some(wanted),
        queue_depth: backlog,
        oldest_task_age_seconds: match &observed.queue {
            QueueState::Ready(backlog) => backlog.oldest_age_seconds,
            _ => None,
        },
        // The autoscaler's (its own field manager): left out, so the apply leaves them alone.
        last_scale_time: None,
        scale_reason: None,
    }
}

/// True when applying `computed` would change nothing the operator owns in `current`: the
/// fields the autoscaler writes do not count, or every scale would bring a needless apply.
pub fn is_unchanged(current: Option<&ModelEndpointStatus>, computed: &ModelEndpointStatus) -> bool {
    current.is_some_and(|current| {
        let operators = ModelEndpointStatus {
            last_scale_time: None,
            scale_reason: None,
            ..current.clone()
        };
        operators == *computed
    })
}

/// The status of an object that does not even parse as a ModelEndpoint.
pub fn compute_invalid(
    endpoint_id: String,
    generation: Option<i64>,
    message: String,
    now: Time,
) -> ModelEndpointStatus {
    let condition = |type_: &str| {
        build_condition(
            &[],
            type_,
            FALSE,
            reason::INVALID_SPEC,
            message.clone(),
            generation,
            &now,
        )
    };
    ModelEndpointStatus {
        observed_generation: generation,
        conditions: vec![
            condition(condition::READY),
            Condition {
                status: UNKNOWN.into(),
                ..condition(condition::QUEUE_READY)
            },
            Condition {
                status: UNKNOWN.into(),
                ..condition(condition::WORKERS_AVAILABLE)
            },
        ],
        endpoint_id: Some(endpoint_id),
        state: Some(EndpointState::UpdateFailed),
        ..Default::default()
    }
}

/// The `Ready` condition of a status, if it has one.
pub fn ready_condition(status: Option<&ModelEndpointStatus>) -> Option<&Condition> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
}

fn compute_rollout(deployment: &Deployment) -> Rollout {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return Rollout::Pending;
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Pending;
    }
    let conditions = status.conditions.iter().flatten();
    if let Some(stuck) = conditions.into_iter().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed {
            message: stuck.message.clone().unwrap_or_default(),
        };
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        Rollout::InProgress {
            message: format!("{updated} of {wanted} workers updated"),
        }
    } else if replicas > updated {
        Rollout::InProgress {
            message: format!("{} old workers are stopping", replicas - updated),
        }
    } else if available < updated {
        Rollout::InProgress {
            message: format!("{available} of {updated} updated workers available"),
        }
    } else {
        Rollout::Complete
    }
}

fn build_condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests;
