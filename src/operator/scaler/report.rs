//! What the autoscaler tells about a change of an endpoint's worker count, built purely: the
//! Kubernetes Event on the endpoint and the autoscaler's part of the endpoint's status.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::autoscale::{Decision, Load};
use crate::crd::names::MANAGED_BY;
use crate::crd::{ModelEndpoint, namespace_of};

/// Reasons of the autoscaler's Events.
pub mod reason {
    pub const SCALED_UP: &str = "ScaledUp";
    pub const SCALED_DOWN: &str = "ScaledDown";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
}

const ACTION: &str = "Scale";

/// The Event reason of a change from `from` to `to` workers.
pub fn scale_reason(from: u32, to: u32) -> &'static str {
    if to == 0 {
        reason::SCALED_TO_ZERO
    } else if to > from {
        reason::SCALED_UP
    } else {
        reason::SCALED_DOWN
    }
}

/// A Normal Event on `endpoint` saying that its workers went from `from` to `to`, and why.
///
/// Each change gets its own Event, named like client-go names them (`<object>.<hex nanos>`):
/// a recorder that folds repeats into a series would keep the first note and lose the counts.
pub fn build_scale_event(
    endpoint: &ModelEndpoint,
    from: u32,
    to: u32,
    decision: Decision,
    load: Load,
    now: Timestamp,
    reporting_instance: &str,
) -> Event {
    let note = format!(
        "{from} → {to} workers: {} ({} queued, {} in flight)",
        decision.reason.as_str(),
        load.queued,
        load.in_flight
    );
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", endpoint.name_any(), now.as_nanosecond())),
            namespace: Some(namespace_of(endpoint)),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Normal".into()),
        reason: Some(scale_reason(from, to).into()),
        action: Some(ACTION.into()),
        note: Some(note),
        regarding: Some(endpoint.object_ref(&())),
        reporting_controller: Some(MANAGED_BY.into()),
        reporting_instance: Some(reporting_instance.into()),
        ..Default::default()
    }
}

/// The server-side apply body of the autoscaler's status fields: why the workers number what
/// they do and, once they changed, when. A field left out is one the autoscaler gives up.
pub fn build_scale_status(decision: Decision, last_scale_time: Option<&Time>) -> Value {
    let mut status = json!({ "scaleReason": decision.reason.as_str() });
    if let Some(at) = last_scale_time {
        status["lastScaleTime"] = json!(at);
    }
    json!({
        "apiVersion": ModelEndpoint::api_version(&()),
        "kind": ModelEndpoint::kind(&()),
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::Reason;
    use crate::operator::fixtures::endpoint;

    fn load(queued: u64, in_flight: u64) -> Load {
        Load { queued, in_flight }
    }

    #[test]
    fn a_scale_event_names_the_change_its_reason_and_the_load() {
        let now: Timestamp = "2026-11-27T07:00:00.123456789Z".parse().expect("timestamp");
        let decision = Decision {
            replicas: 5,
            reason: Reason::Load,
        };
        let event = build_scale_event(&endpoint(), 3, 5, decision, load(12, 3), now, "op-0");
        assert_eq!(
            event.metadata.name.as_deref(),
            Some(format!("demo.{:x}", now.as_nanosecond()).as_str())
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.reason.as_deref(), Some("ScaledUp"));
        assert_eq!(event.action.as_deref(), Some("Scale"));
        assert_eq!(
            event.note.as_deref(),
            Some("3 → 5 workers: Load (12 queued, 3 in flight)")
        );
        let regarding = event.regarding.expect("regarding");
        assert_eq!(
            (regarding.kind.as_deref(), regarding.name.as_deref()),
            (Some("ModelEndpoint"), Some("demo"))
        );
        assert_eq!(regarding.uid.as_deref(), Some("uid-demo"));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("ferry-operator")
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("op-0"));
        assert_eq!(event.event_time, Some(MicroTime(now)));
    }

    #[test]
    fn events_of_the_same_endpoint_get_distinct_names() {
        let decision = Decision {
            replicas: 1,
            reason: Reason::Load,
        };
        let now = Timestamp::now();
        let later = now + std::time::Duration::from_nanos(1);
        let name = |at| {
            build_scale_event(&endpoint(), 0, 1, decision, load(1, 0), at, "op")
                .metadata
                .name
        };
        assert_ne!(name(now), name(later));
    }

    #[test]
    fn going_down_is_scaled_down_unless_it_reaches_zero() {
        assert_eq!(scale_reason(3, 5), "ScaledUp");
        assert_eq!(scale_reason(0, 1), "ScaledUp");
        assert_eq!(scale_reason(5, 2), "ScaledDown");
        assert_eq!(scale_reason(2, 0), "ScaledToZero");
    }

    #[test]
    fn the_status_body_carries_only_the_autoscaler_fields() {
        let idle = Decision {
            replicas: 0,
            reason: Reason::Idle,
        };
        let at = Time("2026-11-27T07:00:00Z".parse().expect("timestamp"));
        let body = build_scale_status(idle, Some(&at));
        assert_eq!(body["kind"], "ModelEndpoint");
        assert_eq!(body["apiVersion"], "ferry.dev/v1alpha1");
        assert_eq!(
            body["status"],
            json!({"scaleReason": "Idle", "lastScaleTime": "2026-11-27T07:00:00Z"})
        );
        assert_eq!(
            build_scale_status(idle, None)["status"],
            json!({"scaleReason": "Idle"})
        );
    }
}
