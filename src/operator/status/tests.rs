use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::operator::fixtures::endpoint;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("valid time"))
}

fn deployment(generation: i64, status: Option<DeploymentStatus>) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            generation: Some(generation),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            ..Default::default()
        }),
        status,
    }
}

fn rolled(updated: i32, available: i32, replicas: i32) -> DeploymentStatus {
    DeploymentStatus {
        observed_generation: Some(3),
        updated_replicas: Some(updated),
        available_replicas: Some(available),
        ready_replicas: Some(available),
        replicas: Some(replicas),
        ..Default::default()
    }
}

fn observed(deployment: Deployment, queue: QueueState) -> Observed {
    Observed {
        blocked: None,
        deployment: Some(deployment),
        queue,
    }
}

fn find<'a>(status: &'a ModelEndpointStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn queue_ready(queued: u64) -> QueueState {
    QueueState::Ready(Backlog {
        queued,
        in_flight: 1,
        oldest_age_seconds: Some(7),
    })
}

#[test]
fn a_fresh_deployment_is_update_pending() {
    let status = compute(
        &endpoint(),
        &observed(deployment(3, None), queue_ready(0)),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::UpdatePending));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.endpoint_id,
        Some(endpoint().endpoint_id().to_string())
    );
    let ready = find(&status, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::ROLLOUT_PENDING)
    );
    assert_eq!(ready.observed_generation, Some(3));
    assert_eq!(find(&status, condition::QUEUE_READY).status, "True");
    assert_eq!(status.desired_replicas, Some(2));
    assert_eq!(status.replicas, None);
}

#[test]
fn a_rolling_deployment_is_update_in_progress() {
    let status = compute(
        &endpoint(),
        &observed(deployment(3, Some(rolled(1, 1, 3))), queue_ready(4)),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::UpdateInProgress));
    let workers = find(&status, condition::WORKERS_AVAILABLE);
    assert_eq!(workers.reason, reason::ROLLOUT_IN_PROGRESS);
    assert_eq!(workers.message, "1 of 2 workers updated");
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.replicas, Some(3));
    assert_eq!(status.queue_depth, Some(4));
    assert_eq!(status.oldest_task_age_seconds, Some(7));
}

#[test]
fn a_complete_rollout_with_a_queue_is_ready() {
    let status = compute(
        &endpoint(),
        &observed(deployment(3, Some(rolled(2, 2, 2))), queue_ready(7)),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::Ready));
    for type_ in [
        condition::READY,
        condition::QUEUE_READY,
        condition::WORKERS_AVAILABLE,
    ] {
        assert_eq!(find(&status, type_).status, "True", "{type_}");
    }
    assert_eq!(
        find(&status, condition::WORKERS_AVAILABLE).message,
        "2 of 2 workers available"
    );
    assert_eq!(
        (status.ready_replicas, status.queue_depth),
        (Some(2), Some(7))
    );
}

#[test]
fn scale_to_zero_is_ready_without_workers() {
    let mut endpoint = endpoint();
    endpoint.spec.min_workers = 0;
    let mut idle = deployment(3, Some(rolled(0, 0, 0)));
    idle.spec = Some(DeploymentSpec {
        replicas: Some(0),
        ..Default::default()
    });
    let status = compute(&endpoint, &observed(idle, queue_ready(0)), at(100));
    assert_eq!(status.state, Some(EndpointState::Ready));
}

#[test]
fn a_missing_bundle_fails_the_update_with_its_reason() {
    let blocked = Observed::blocked(
        reason::BUNDLE_NOT_FOUND,
        "ModelBundle model not found".into(),
    );
    let status = compute(&endpoint(), &blocked, at(100));
    assert_eq!(status.state, Some(EndpointState::UpdateFailed));
    let ready = find(&status, condition::READY);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, reason::BUNDLE_NOT_FOUND);
    assert_eq!(ready.message, "ModelBundle model not found");
    assert_eq!(
        find(&status, condition::WORKERS_AVAILABLE).status,
        "Unknown"
    );
    assert_eq!(status.queue_depth, None);
}

#[test]
fn an_unreachable_queue_keeps_the_endpoint_pending() {
    let status = compute(
        &endpoint(),
        &observed(
            deployment(3, Some(rolled(2, 2, 2))),
            QueueState::Unavailable("connecting to NATS".into()),
        ),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::UpdatePending));
    let queue = find(&status, condition::QUEUE_READY);
    assert_eq!(
        (queue.status.as_str(), queue.reason.as_str()),
        ("False", reason::QUEUE_UNAVAILABLE)
    );
    assert_eq!(
        find(&status, condition::READY).reason,
        reason::QUEUE_UNAVAILABLE
    );
    assert_eq!(find(&status, condition::WORKERS_AVAILABLE).status, "True");
}

#[test]
fn an_exceeded_progress_deadline_fails_the_update() {
    let mut stuck = rolled(1, 0, 2);
    stuck.conditions = Some(vec![DeploymentCondition {
        type_: "Progressing".into(),
        status: "False".into(),
        reason: Some("ProgressDeadlineExceeded".into()),
        message: Some("ReplicaSet demo-1 has timed out progressing.".into()),
        ..Default::default()
    }]);
    let status = compute(
        &endpoint(),
        &observed(deployment(3, Some(stuck)), queue_ready(0)),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::UpdateFailed));
    let ready = find(&status, condition::READY);
    assert_eq!(ready.reason, reason::PROGRESS_DEADLINE_EXCEEDED);
    assert!(ready.message.contains("timed out"));
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let mut endpoint = endpoint();
    let ready = observed(deployment(3, Some(rolled(2, 2, 2))), queue_ready(0));
    endpoint.status = Some(compute(&endpoint, &ready, at(100)));
    let again = compute(&endpoint, &ready, at(200));
    assert_eq!(
        Some(&again),
        endpoint.status.as_ref(),
        "a repeat is a no-op"
    );
    let degraded = compute(
        &endpoint,
        &observed(
            deployment(3, Some(rolled(2, 2, 2))),
            QueueState::Unavailable("down".into()),
        ),
        at(300),
    );
    assert_eq!(
        find(&degraded, condition::READY).last_transition_time,
        at(300)
    );
    assert_eq!(
        find(&degraded, condition::WORKERS_AVAILABLE).last_transition_time,
        at(100)
    );
}

#[test]
fn sync_endpoints_need_no_queue() {
    let status = compute(
        &endpoint(),
        &observed(
            deployment(3, Some(rolled(2, 2, 2))),
            QueueState::NotRequired,
        ),
        at(100),
    );
    assert_eq!(status.state, Some(EndpointState::Ready));
    assert_eq!(
        find(&status, condition::QUEUE_READY).reason,
        reason::QUEUE_NOT_REQUIRED
    );
    assert_eq!(status.queue_depth, None);
}

#[test]
fn objects_that_do_not_parse_are_reported_invalid() {
    let status = compute_invalid(
        "end_x".into(),
        Some(4),
        "unknown variant `batch`".into(),
        at(1),
    );
    assert_eq!(status.state, Some(EndpointState::UpdateFailed));
    let ready = find(&status, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::INVALID_SPEC)
    );
    assert!(ready.message.contains("batch"));
    assert_eq!(status.observed_generation, Some(4));
}

#[test]
fn the_autoscalers_fields_do_not_make_the_status_differ() {
    let mut endpoint = endpoint();
    let computed = compute(
        &endpoint,
        &observed(deployment(3, Some(rolled(2, 2, 2))), queue_ready(0)),
        at(100),
    );
    assert!(!is_unchanged(None, &computed), "no status yet");
    endpoint.status = Some(ModelEndpointStatus {
        last_scale_time: Some(at(50)),
        scale_reason: Some("Load".into()),
        ..computed.clone()
    });
    assert!(is_unchanged(endpoint.status.as_ref(), &computed));
    let recomputed = compute(
        &endpoint,
        &observed(deployment(3, Some(rolled(2, 2, 2))), queue_ready(0)),
        at(200),
    );
    assert!(
        is_unchanged(endpoint.status.as_ref(), &recomputed),
        "a later reconcile of the same state applies nothing"
    );
    let busier = compute(
        &endpoint,
        &observed(deployment(3, Some(rolled(2, 2, 2))), queue_ready(7)),
        at(200),
    );
    assert!(
        !is_unchanged(endpoint.status.as_ref(), &busier),
        "a field of the operator's still counts"
    );
}
