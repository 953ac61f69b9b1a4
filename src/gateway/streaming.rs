//! Streaming tasks: reached like sync tasks (see [`super::sync`]), answered with the worker's
//! server-sent events. Launch's client reads a stream's events and never an error body, so
//! every failure after the request was admitted — no worker, a busy or refusing worker, a
//! stream that breaks off — reaches it as a last `FAILURE` event, sent with the error's HTTP
//! status where the status line has not gone out yet. Refusals of the request itself (API key,
//! endpoint, body) keep their `{"detail": ...}` answers.

use axum::{
    body::{Body, Bytes},
    extract::{Query, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;

use super::openapi::answers::{BadRequest, Invalid, NotFound, TooLarge, TooMany, Unauthorized};
use super::{AppState, auth::Principal, error::AppError, routes, sync};
use crate::crd::EndpointType;
use crate::task::{SyncResponse, TaskError};
use crate::worker::STREAM_PATH;

/// The most of a refusing worker's answer read for its reason.
const REFUSAL_BYTES: usize = 64 * 1024;

const EVENT_STREAM: &str = "text/event-stream";

/// Runs a task on a worker of a streaming endpoint and passes its events on. A failure once the
/// request was admitted is one last `FAILURE` event, under the error's status code when the
/// stream had not begun (429, 502, 503 or 504).
#[utoipa::path(post, path = "/v1/streaming-tasks", tag = "tasks", params(routes::EndpointQuery),
    request_body = routes::TaskRequest,
    responses((status = 200, content_type = "text/event-stream", body = SyncResponse,
        description = "Server-sent events, each `data:` a sync task's answer"),
        BadRequest, Unauthorized, NotFound, TooLarge, Invalid, TooMany))]
pub async fn submit_streaming_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::EndpointQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (endpoint, body, _) =
        sync::prepare(&state, &principal, query, body, &[EndpointType::Streaming]).await?;
    let held = state.demand.hold(&endpoint.endpoint_id());
    // A stream may run long: only connecting is bounded.
    let response = match sync::reach_worker(&state, &endpoint, STREAM_PATH, body, None).await {
        Ok(response) => response,
        Err(error) => return Ok(failure_answer(error)),
    };
    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(EVENT_STREAM));
    if !response.status().is_success() || !is_event_stream {
        return Ok(failure_answer(refusal(response).await));
    }
    // The request counts as demand until its stream ends; a break ends it with a failure.
    let mut broken = false;
    let events = response.bytes_stream().filter_map(move |chunk| {
        let _ = &held;
        let event = match chunk {
            _ if broken => None,
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::warn!(%error, "a worker's stream broke off");
                broken = true;
                let error = AppError::Unavailable("the worker's stream broke off".into());
                Some(failure_event(&error))
            }
        };
        futures::future::ready(event.map(Ok::<_, std::convert::Infallible>))
    });
    let content_type = [(header::CONTENT_TYPE, EVENT_STREAM)];
    Ok((StatusCode::OK, content_type, Body::from_stream(events)).into_response())
}

/// Why a worker answered something other than an event stream: its `detail`, under the
/// status the gateway answers for it.
async fn refusal(response: reqwest::Response) -> AppError {
    let status = response.status();
    let body = sync::read_capped(response, REFUSAL_BYTES)
        .await
        .unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|body| body.get("detail")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let reason = format!("the worker answered {status}: {detail}");
    match status {
        reqwest::StatusCode::TOO_MANY_REQUESTS => AppError::Busy(reason),
        status if status.is_server_error() => AppError::Unavailable(reason),
        _ => AppError::BadGateway(reason),
    }
}

/// `error` as the one event of a stream, with its status and headers (such as `Retry-After`).
fn failure_answer(error: AppError) -> Response {
    let event = failure_event(&error);
    let mut answer = error.into_response();
    answer.headers_mut().remove(header::CONTENT_LENGTH);
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    *answer.body_mut() = Body::from(event);
    answer
}

fn failure_event(error: &AppError) -> Bytes {
    let reason = TaskError {
        message: error.to_string(),
        detail: None,
    };
    let event = SyncResponse::stream_failure(&reason, Some(error.status().as_u16()));
    // Our own plain struct serializes to JSON without fail.
    let data = serde_json::to_string(&event).unwrap_or_default();
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failure_before_the_stream_is_one_event_under_the_errors_status_and_headers() {
        let error = AppError::TooMany {
            detail: "the endpoint's queue is full".into(),
            retry_after: std::time::Duration::from_millis(1500),
        };
        let answer = failure_answer(error);
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], EVENT_STREAM);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let text = std::str::from_utf8(&body).expect("utf-8");
        let data = text
            .strip_prefix("data: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .expect("one event");
        let event: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(
            event,
            serde_json::json!({"status": "FAILURE", "result": null, "status_code": 429,
                "traceback": "the endpoint's queue is full"})
        );
    }
}
