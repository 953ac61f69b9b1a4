//! `GET /v1/model-endpoints/{id}/stats`: an endpoint's live figures, as the console shows them —
//! workers desired and ready, backlog, oldest task age, and the last hour's callback attempts.
//! Each figure comes from the endpoint's status, one consumer and stream info of its task queue,
//! and the server's per-subject counts of the attempt tally: a fixed few requests, whatever
//! the number of tasks.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{AppState, auth::Principal, error::AppError, routes::visible_endpoint};
use crate::crd::{EndpointType, ModelEndpoint};
use crate::queue::{Backlog, OutcomeTally};

pub async fn endpoint_stats(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let endpoint = visible_endpoint(&state, &principal, &id)?;
    let endpoint_id = endpoint.endpoint_id();
    let backlog = async {
        match endpoint.spec.endpoint_type {
            EndpointType::Async => state.queue.backlog_with_age(&endpoint_id).await.map(Some),
            EndpointType::Sync | EndpointType::Streaming => Ok(None),
        }
    };
    let (backlog, tally) = tokio::try_join!(backlog, state.queue.attempt_tally(&endpoint_id))?;
    Ok(Json(build_stats(&endpoint, backlog, &tally)))
}

/// The stats body: `backlog` is `None` for endpoints without a task queue.
fn build_stats(endpoint: &ModelEndpoint, backlog: Option<Backlog>, tally: &OutcomeTally) -> Value {
    let status = endpoint.status.clone().unwrap_or_default();
    json!({
        "model_endpoint_id": endpoint.endpoint_id(),
        "workers": {
            "desired": status.desired_replicas,
            "ready": status.ready_replicas.unwrap_or(0),
        },
        "backlog": backlog.map(|backlog| json!({
            "queued": backlog.queued,
            "in_flight": backlog.in_flight,
        })),
        "oldest_task_age_seconds": backlog.and_then(|backlog| backlog.oldest_age_seconds),
        "callbacks_last_hour": {
            "delivered": tally.delivered,
            "retried": tally.retried,
            "dead_lettered": tally.dead_lettered,
            "success_rate": tally.success_rate(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModelEndpointStatus;

    fn endpoint_named(name: &str) -> ModelEndpoint {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "ModelEndpoint",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"bundle": "model", "labels": {"team": "ml", "product": "demo"}},
        }))
        .expect("fixture parses")
    }

    #[test]
    fn a_sync_endpoint_has_no_backlog_and_an_idle_one_no_rate() {
        let mut endpoint = endpoint_named("demo");
        endpoint.status = Some(ModelEndpointStatus {
            desired_replicas: Some(2),
            ready_replicas: Some(1),
            ..Default::default()
        });
        let stats = build_stats(&endpoint, None, &OutcomeTally::default());
        assert_eq!(stats["workers"], json!({"desired": 2, "ready": 1}));
        assert!(stats["backlog"].is_null() && stats["oldest_task_age_seconds"].is_null());
        assert!(stats["callbacks_last_hour"]["success_rate"].is_null());
    }

    #[test]
    fn reports_the_backlog_and_the_share_of_delivering_attempts() {
        let backlog = Backlog {
            queued: 4,
            in_flight: 2,
            oldest_age_seconds: Some(30),
        };
        let tally = OutcomeTally {
            delivered: 9,
            retried: 1,
            dead_lettered: 0,
        };
        let stats = build_stats(&endpoint_named("demo"), Some(backlog), &tally);
        assert_eq!(stats["backlog"], json!({"queued": 4, "in_flight": 2}));
        assert_eq!(stats["oldest_task_age_seconds"], 30);
        assert_eq!(stats["callbacks_last_hour"]["success_rate"], 0.9);
        assert_eq!(stats["workers"]["ready"], 0);
    }
}
