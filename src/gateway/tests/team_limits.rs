//! Per-team rate limits and task quotas through the router, against a real nats-server: a
//! team past its budget gets 429 with `Retry-After`, while another team is served.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use serde_json::{Value, json};

use super::super::{ApiKeys, AppState, RateLimit, TeamLimits};
use super::{Fixture, KEY_A, create_body, fixture, send_reading};
use crate::crd::EndpointId;

pub(super) const KEY_B: &str = "team-b-key-0123456789abcdef";

/// A fixture whose keys are team-a's and team-b's.
pub(super) async fn two_teams() -> Fixture {
    let mut fixture = fixture(true).await;
    let entries = [format!("{KEY_A}=team-a"), format!("{KEY_B}=team-b")];
    fixture.state.keys = Arc::new(ApiKeys::parse(&entries, false).expect("keys"));
    fixture
}

/// Creates an endpoint of `kind` through the API, moves it to `team`'s namespace, puts it in
/// the catalog and makes its queue.
pub(super) async fn team_endpoint(
    fixture: &Fixture,
    team: &str,
    name: &str,
    kind: &str,
) -> EndpointId {
    let mut body: Value = serde_json::from_str(&create_body(name)).expect("json");
    body["endpoint_type"] = json!(kind);
    let (status, answer, _) =
        send(&fixture.state, "POST", "/v1/model-endpoints", KEY_A, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut endpoint = fixture.recorder.endpoints.lock().expect("lock").remove(0);
    endpoint.metadata.namespace = Some(team.to_owned());
    let id = endpoint.endpoint_id();
    super::ensure_queue(&fixture.state, &id).await;
    fixture.state.catalog.put_endpoint(endpoint);
    id
}

/// Sends `body` as `key`'s; the status, the JSON answer and the `Retry-After` header.
pub(super) async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, Option<String>) {
    let body = body.to_string();
    send_reading(state, method, uri, Some(key), &body, header::RETRY_AFTER).await
}

/// Team b submits to its endpoint `b` until its own budget of `budget` requests is spent.
async fn team_b_is_served_within_its_own_budget(state: &AppState, b: &EndpointId, budget: u64) {
    for x in 0..budget {
        let task = json!({"args": {"x": x}});
        let (status, answer, _) = send(state, "POST", &submit_uri(b), KEY_B, &task).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, _, _) = send(state, "POST", &submit_uri(b), KEY_B, &json!({"args": {}})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

pub(super) fn submit_uri(id: &EndpointId) -> String {
    format!("/v1/async-tasks?model_endpoint_id={id}")
}

#[tokio::test]
async fn a_team_over_its_rate_gets_429_with_retry_after_while_another_team_is_served() {
    let mut fixture = two_teams().await;
    let a = team_endpoint(&fixture, "team-a", "rate-a", "async").await;
    let b = team_endpoint(&fixture, "team-b", "rate-b", "async").await;
    let sync = team_endpoint(&fixture, "team-a", "rate-sync", "sync").await;
    // A burst of 3 and one token per 1000 s: the fourth request in this test finds none.
    let limit = RateLimit::new(0.001, 3).expect("a limit");
    fixture.state.limits = Arc::new(TeamLimits::new(Some(limit), None));
    let state = &fixture.state;

    let (mut accepted, mut refused) = (0, 0);
    for x in 0..6 {
        let task = json!({"args": {"x": x}});
        let (status, answer, retry_after) =
            send(state, "POST", &submit_uri(&a), KEY_A, &task).await;
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let detail = answer["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("team team-a is over its request rate"),
                    "{answer}"
                );
                let seconds: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
                assert!(
                    (990..=1000).contains(&seconds),
                    "waits for the next token: {seconds}"
                );
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!((accepted, refused), (3, 3));
    let backlog = state.queue.backlog(&a).await.expect("backlog");
    assert_eq!(backlog.queued, 3, "refused tasks are not queued");

    // The same team's sync tasks and endpoint changes draw on the same bucket.
    let sync_uri = format!("/v1/sync-tasks?model_endpoint_id={sync}");
    let (status, answer, _) = send(state, "POST", &sync_uri, KEY_A, &json!({"args": {}})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    let create: Value = serde_json::from_str(&create_body("one-more")).expect("json");
    let (status, answer, _) = send(state, "POST", "/v1/model-endpoints", KEY_A, &create).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");

    // Team b has its own bucket, untouched by team a's.
    team_b_is_served_within_its_own_budget(state, &b, 3).await;
}

#[tokio::test]
async fn a_team_at_its_task_quota_gets_429_across_its_endpoints_while_another_team_is_served() {
    let mut fixture = two_teams().await;
    let first = team_endpoint(&fixture, "team-a", "quota-1", "async").await;
    let second = team_endpoint(&fixture, "team-a", "quota-2", "async").await;
    let b = team_endpoint(&fixture, "team-b", "quota-b", "async").await;
    let quota = std::num::NonZeroU64::new(3);
    fixture.state.limits = Arc::new(TeamLimits::new(None, quota));
    let state = &fixture.state;

    // Three tasks fill team a's quota, spread over its two endpoints (no worker takes them).
    for (x, id) in [&first, &second, &first].into_iter().enumerate() {
        let task = json!({"args": {"x": x}});
        let (status, answer, _) = send(state, "POST", &submit_uri(id), KEY_A, &task).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    for id in [&first, &second] {
        let task = json!({"args": {"x": "over"}});
        let (status, answer, retry_after) =
            send(state, "POST", &submit_uri(id), KEY_A, &task).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("3 unfinished async tasks, its quota"),
            "{answer}"
        );
        assert_eq!(retry_after.as_deref(), Some("10"));
    }
    let queued = |id: &EndpointId| {
        let queue = state.queue.clone();
        let id = id.clone();
        async move { queue.backlog(&id).await.expect("backlog").queued }
    };
    assert_eq!((queued(&first).await, queued(&second).await), (2, 1));

    // Team b's tasks do not count against team a's quota, nor a's against b's.
    team_b_is_served_within_its_own_budget(state, &b, 3).await;
}
