//! Sync and streaming tasks: the gateway hands the task straight to a serving worker of the
//! endpoint (round robin), tries the next one when a worker is busy (429) or unreachable, and
//! passes the answer — JSON, or server-sent events — back to the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    extract::{Query, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use kube::ResourceExt;

use super::{AppState, auth::Principal, error::AppError, routes};
use crate::crd::{EndpointType, ModelEndpoint};
use crate::forwarder::serve::{PREDICT_PATH, STREAM_PATH};
use crate::task::Versioned;

/// Workers (or Service addresses) tried before a sync task is refused as busy.
const MIN_ATTEMPTS: usize = 3;

/// How long a sync task waits for its answer unless the request says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Reaches the serving workers of sync and streaming endpoints.
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
    next: Arc<AtomicUsize>,
}

impl WorkerClient {
    pub fn new() -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(WorkerClient {
            http,
            next: Arc::default(),
        })
    }

    /// Sends `body` to `path` of one worker after another until one takes it.
    async fn send(
        &self,
        workers: &[String],
        path: &str,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AppError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut busy = false;
        // A Service is one URL spreading requests over its pods: a busy answer is worth a retry.
        let attempts = if workers.is_empty() {
            0
        } else {
            workers.len().max(MIN_ATTEMPTS)
        };
        for offset in 0..attempts {
            let url = format!("{}{path}", workers[(start + offset) % workers.len()]);
            let mut request = self
                .http
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            match request.send().await {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => busy = true,
                Ok(response) => return Ok(response),
                Err(error) if error.is_timeout() => {
                    let seconds = timeout.unwrap_or_default().as_secs_f64();
                    return Err(AppError::Timeout(format!(
                        "the model did not answer within {seconds} s"
                    )));
                }
                // Not sent, so safe to try elsewhere; any other failure may have run the task.
                Err(error) if error.is_connect() => {
                    tracing::warn!(%url, %error, "worker unreachable")
                }
                Err(error) => {
                    tracing::warn!(%url, %error, "worker request failed");
                    return Err(AppError::Unavailable(
                        "the worker failed while answering".into(),
                    ));
                }
            }
        }
        Err(if busy {
            AppError::Busy("every worker of the endpoint is busy; retry shortly".into())
        } else {
            AppError::Unavailable("no worker of the endpoint is ready".into())
        })
    }
}

async fn prepare(
    state: &AppState,
    principal: &Principal,
    query: routes::EndpointQuery,
    body: Result<Bytes, BytesRejection>,
    accepts: &[EndpointType],
) -> Result<(Arc<ModelEndpoint>, Vec<String>, Bytes, Option<Duration>), AppError> {
    let id = query
        .model_endpoint_id
        .ok_or_else(|| AppError::BadRequest("model_endpoint_id is required".into()))?;
    let endpoint = routes::visible_endpoint(state, principal, &id)?;
    if !accepts.contains(&endpoint.spec.endpoint_type) {
        let kind = endpoint.spec.endpoint_type.as_str();
        return Err(AppError::BadRequest(format!(
            "endpoint {} is {kind}; use the route for {kind} tasks",
            endpoint.name_any()
        )));
    }
    let (task, timeout_seconds) = routes::task_from_request(state, &endpoint, body).await?;
    let timeout = match timeout_seconds {
        None => DEFAULT_TIMEOUT,
        Some(seconds) if seconds > 0.0 && seconds.is_finite() => Duration::from_secs_f64(seconds),
        Some(seconds) => {
            return Err(AppError::BadRequest(format!(
                "timeout_seconds must be positive, not {seconds}"
            )));
        }
    };
    let body = serde_json::to_vec(&Versioned::V1(task))
        .map_err(|error| AppError::BadRequest(error.to_string()))?;
    let workers = state.catalog.workers(&endpoint.endpoint_id());
    Ok((endpoint, workers, Bytes::from(body), Some(timeout)))
}

pub async fn submit_sync_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::EndpointQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let accepts = [EndpointType::Sync, EndpointType::Streaming];
    let (_, workers, body, timeout) = prepare(&state, &principal, query, body, &accepts).await?;
    let response = state
        .workers
        .send(&workers, PREDICT_PATH, body, timeout)
        .await?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = response
        .bytes()
        .await
        .map_err(|_| AppError::Unavailable("the worker's answer broke off".into()))?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn submit_streaming_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::EndpointQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (_, workers, body, _) =
        prepare(&state, &principal, query, body, &[EndpointType::Streaming]).await?;
    // A stream may run long: only connecting is bounded.
    let response = state
        .workers
        .send(&workers, STREAM_PATH, body, None)
        .await?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut answer = (status, Body::from_stream(response.bytes_stream())).into_response();
    if let Some(content_type) = content_type {
        answer
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(answer)
}
