//! `GET /v1/model-endpoints/{id}/stats`: an endpoint's live figures, as the console shows them —
//! workers desired and ready, backlog, oldest task age, and the last hour's callback attempts.
//! Each figure comes from the endpoint's status, one consumer and stream info of its task queue,
//! and the server's per-subject counts of the attempt tally: a fixed few requests, whatever
//! the number of tasks.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::answers::{NotFound, Unauthorized, Unavailable};
use super::{AppState, auth::Principal, error::AppError, routes::visible_endpoint};
use crate::crd::{EndpointId, EndpointType, ModelEndpoint};
use crate::queue::{Backlog, OutcomeTally};

/// An endpoint's live figures. Fields are in alphabetical order, as on the wire.
#[derive(Serialize, ToSchema)]
pub struct EndpointStats {
    /// Null for sync and streaming endpoints, which have no task queue.
    pub backlog: Option<BacklogView>,
    pub callbacks_last_hour: CallbackTally,
    #[schema(value_type = String)]
    pub model_endpoint_id: EndpointId,
    /// Seconds since the oldest unfinished task was submitted; null when none waits.
    pub oldest_task_age_seconds: Option<i64>,
    pub workers: Workers,
}

/// Tasks of an async endpoint not yet finished.
#[derive(Serialize, ToSchema)]
pub struct BacklogView {
    /// Handed to a worker and not yet finished.
    pub in_flight: u64,
    /// Queued and not yet handed to a worker.
    pub queued: u64,
}

/// The last hour's callback attempts of the endpoint, by outcome.
#[derive(Serialize, ToSchema)]
pub struct CallbackTally {
    pub dead_lettered: u64,
    pub delivered: u64,
    pub retried: u64,
    /// The share of attempts that delivered; null without attempts.
    pub success_rate: Option<f64>,
}

/// The endpoint's workers.
#[derive(Serialize, ToSchema)]
pub struct Workers {
    /// As the autoscaler last wanted; null before it decided.
    pub desired: Option<i32>,
    pub ready: i32,
}

/// An endpoint's workers, backlog, oldest task age and the last hour's callback attempts.
#[utoipa::path(get, path = "/v1/model-endpoints/{id}/stats", tag = "endpoints",
    params(("id" = String, Path)),
    responses((status = 200, body = EndpointStats), Unauthorized, NotFound, Unavailable))]
pub async fn endpoint_stats(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<EndpointStats>, AppError> {
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
fn build_stats(
    endpoint: &ModelEndpoint,
    backlog: Option<Backlog>,
    tally: &OutcomeTally,
) -> EndpointStats {
    let status = endpoint.status.clone().unwrap_or_default();
    EndpointStats {
        backlog: backlog.map(|backlog| BacklogView {
            in_flight: backlog.in_flight,
            queued: backlog.queued,
        }),
        callbacks_last_hour: CallbackTally {
            dead_lettered: tally.dead_lettered,
            delivered: tally.delivered,
            retried: tally.retried,
            success_rate: tally.success_rate(),
        },
        model_endpoint_id: endpoint.endpoint_id(),
        oldest_task_age_seconds: backlog.and_then(|backlog| backlog.oldest_age_seconds),
        workers: Workers {
            desired: status.desired_replicas,
            ready: status.ready_replicas.unwrap_or(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModelEndpointStatus;
    use serde_json::json;

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
        let stats = json!(build_stats(&endpoint, None, &OutcomeTally::default()));
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
        let id = endpoint_named("demo").endpoint_id();
        // Keys in alphabetical order, as the answer had before it was typed.
        let wire = [
            r#"{"backlog":{"in_flight":2,"queued":4},"#,
            r#""callbacks_last_hour":{"dead_lettered":0,"delivered":9,"retried":1,"success_rate":0.9},"#,
            &format!(r#""model_endpoint_id":"{id}","#),
            r#""oldest_task_age_seconds":30,"workers":{"desired":null,"ready":0}}"#,
        ]
        .concat();
        assert_eq!(serde_json::to_string(&stats).expect("serializes"), wire);
        let stats = json!(stats);
        assert_eq!(stats["backlog"], json!({"queued": 4, "in_flight": 2}));
        assert_eq!(stats["oldest_task_age_seconds"], 30);
        assert_eq!(stats["callbacks_last_hour"]["success_rate"], 0.9);
        assert_eq!(stats["workers"]["ready"], 0);
    }
}
