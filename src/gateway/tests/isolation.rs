//! One team cannot see or touch another team's endpoints and tasks through the API: each
//! attempt with team b's key on team a's resources is answered 404, as if they did not exist.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::KEY_A;
use super::team_limits::{KEY_B, send, submit_uri, team_endpoint, two_teams};

#[tokio::test]
async fn another_teams_tasks_and_endpoints_answer_404() {
    let fixture = two_teams().await;
    let a = team_endpoint(&fixture, "team-a", "isolated", "async").await;
    let state = &fixture.state;
    let (status, answer, _) = send(
        state,
        "POST",
        &submit_uri(&a),
        KEY_A,
        &json!({"args": {"x": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let task = answer["task_id"].as_str().expect("a task id").to_owned();
    let task_uri = format!("/v1/async-tasks/{task}");
    let (status, answer, _) = send(state, "GET", &task_uri, KEY_A, &Value::Null).await;
    assert_eq!(status, StatusCode::OK, "its own team reads it: {answer}");
    let stats_uri = format!("/v1/model-endpoints/{a}/stats");
    let (status, answer, _) = send(state, "GET", &stats_uri, KEY_A, &Value::Null).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "its own team reads its figures: {answer}"
    );
    assert_eq!(answer["backlog"]["queued"], 1, "{answer}");

    let attempts = [
        ("GET", task_uri.clone()),
        ("POST", format!("{task_uri}/callback/redeliver")),
        ("POST", submit_uri(&a)),
        ("POST", format!("/v1/sync-tasks?model_endpoint_id={a}")),
        ("GET", format!("/v1/model-endpoints/{a}")),
        ("GET", stats_uri),
        (
            "POST",
            format!("/v1/callbacks/redeliver?model_endpoint_id={a}"),
        ),
        ("PUT", format!("/v1/model-endpoints/{a}")),
        ("DELETE", format!("/v1/model-endpoints/{a}")),
    ];
    for (method, uri) in attempts {
        let (status, answer, _) = send(state, method, &uri, KEY_B, &json!({"args": {}})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {answer}");
    }
    let backlog = state.queue.backlog(&a).await.expect("backlog");
    assert_eq!(
        backlog.queued, 1,
        "team b queued nothing on team a's endpoint"
    );
    let (status, answer, _) = send(state, "GET", "/v1/model-endpoints", KEY_B, &Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let listed = answer["model_endpoints"].as_array().expect("a list");
    assert!(listed.is_empty(), "team b lists none of team a's: {answer}");
}
