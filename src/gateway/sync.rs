//! Sync tasks: the gateway hands the task straight to a serving worker of the endpoint (round
//! robin), tries the next one when a worker is busy (429) or unreachable, and passes the JSON
//! answer back to the client; streaming tasks go the same way (see [`super::streaming`]). A
//! request that finds no worker waits for one while its demand wakes the endpoint (see
//! [`super::demand`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{Query, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use kube::ResourceExt;
use tokio::time::Instant;

use super::openapi::answers::{
    BadGateway, BadRequest, Invalid, NotFound, Timeout, TooLarge, TooMany, Unauthorized,
    Unavailable,
};
use super::{AppState, auth::Principal, error::AppError, routes};
use crate::crd::{EndpointId, EndpointType, ModelEndpoint};
use crate::task::{SyncResponse, Versioned};
use crate::worker::{PREDICT_PATH, SERVING_TOKEN_HEADER};

/// Workers (or Service addresses) tried before a sync task is refused as busy.
const MIN_ATTEMPTS: usize = 3;

/// How long a sync task waits for its answer unless the request says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest wait a sync or streaming task may ask for (`timeout_seconds`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a request waits for a worker of an endpoint that has none ready — long enough for
/// one idling at zero to start a worker.
const WORKER_WAIT: Duration = Duration::from_secs(120);

/// Largest sync answer the gateway passes on: the largest result. It holds a whole answer in
/// memory, so a model answering more gets a 502 instead of exhausting the gateway.
const MAX_ANSWER_BYTES: usize = crate::task::MAX_RESULT_BYTES;

/// Longest a connection to a worker waits idle for reuse. Shorter than a stopping worker's
/// handover delay (see [`crate::http_server::Handover`]), so no connection it closes at the end
/// is still taken for a request.
pub const WORKER_CONNECTION_IDLE: Duration = Duration::from_secs(2);

/// Between tries while waiting for a worker, unless the catalog reports a change sooner.
const RETRY_UNREACHABLE: Duration = Duration::from_millis(250);

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
            .pool_idle_timeout(WORKER_CONNECTION_IDLE)
            .build()?;
        Ok(WorkerClient {
            http,
            next: Arc::default(),
        })
    }

    /// Sends `body` to `path` of one worker after another until one takes it, presenting
    /// `tokens` (the endpoint's serving tokens); `None` when no worker could be reached or
    /// every one reached said its model is unavailable (nothing ran).
    async fn send(
        &self,
        workers: &[String],
        path: &str,
        body: Bytes,
        tokens: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<reqwest::Response>, AppError> {
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
                .header(SERVING_TOKEN_HEADER, tokens)
                .body(body.clone());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            match request.send().await {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => busy = true,
                // The worker's model could not take the task, so it did not run: try another.
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::warn!(%url, "worker's model unavailable")
                }
                Ok(response) => return Ok(Some(response)),
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
        if busy {
            return Err(AppError::Busy(
                "every worker of the endpoint is busy; retry shortly".into(),
            ));
        }
        Ok(None)
    }
}

/// Hands the task to a worker of `endpoint`. When none is ready, or every one is busy while the
/// endpoint may still grow, the request waits (its demand scales the endpoint) for up to
/// [`WORKER_WAIT`], and never past `timeout`, which also bounds the answer.
pub(super) async fn reach_worker(
    state: &AppState,
    endpoint: &ModelEndpoint,
    path: &str,
    body: Bytes,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, AppError> {
    let start = Instant::now();
    let answer_by = timeout.map(|timeout| start + timeout);
    let wait_until = start + timeout.map_or(WORKER_WAIT, |timeout| timeout.min(WORKER_WAIT));
    let id = endpoint.endpoint_id();
    let tokens = state.ring.serving_tokens(&id).join(",");
    loop {
        let mut changes = state.catalog.changes();
        // Read before the workers: a worker is listed before it counts as ready, so when all
        // listed workers are busy and this says "at the maximum", it is.
        let may_grow = may_grow(state, &id);
        let workers = state.catalog.workers(&id);
        let remaining = answer_by.map(|by| by.saturating_duration_since(Instant::now()));
        let sent = state
            .workers
            .send(&workers, path, body.clone(), &tokens, remaining)
            .await;
        match sent {
            Ok(Some(response)) => return Ok(response),
            Err(AppError::Busy(_)) if may_grow && Instant::now() < wait_until => {}
            Err(error) => return Err(error),
            Ok(None) if Instant::now() < wait_until => {}
            Ok(None) => {
                return Err(AppError::Unavailable(format!(
                    "no worker of endpoint {} became ready within {} s",
                    endpoint.name_any(),
                    wait_until.duration_since(start).as_secs()
                )));
            }
        }
        // A new worker shows in the catalog; a Service may take one before the catalog hears.
        let retry_at = (Instant::now() + RETRY_UNREACHABLE).min(wait_until);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(retry_at) => {}
        }
    }
}

/// True while the endpoint has fewer ready workers than its maximum.
fn may_grow(state: &AppState, id: &EndpointId) -> bool {
    state.catalog.endpoint(id).is_some_and(|endpoint| {
        let ready = endpoint
            .status
            .as_ref()
            .and_then(|status| status.ready_replicas);
        let ready = u32::try_from(ready.unwrap_or(0)).unwrap_or(0);
        ready < endpoint.spec.max_workers
    })
}

pub(super) async fn prepare(
    state: &AppState,
    principal: &Principal,
    query: routes::EndpointQuery,
    body: Result<Bytes, BytesRejection>,
    accepts: &[EndpointType],
) -> Result<(Arc<ModelEndpoint>, Bytes, Option<Duration>), AppError> {
    state.limits.admit(principal)?;
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
    let timeout = sync_timeout(timeout_seconds)?;
    let body = serde_json::to_vec(&Versioned::V1(task))
        .map_err(|error| AppError::BadRequest(error.to_string()))?;
    Ok((endpoint, Bytes::from(body), Some(timeout)))
}

/// The wait a sync or streaming task asked for: positive and at most [`MAX_TIMEOUT`] (a larger
/// value is refused rather than turned into a `Duration` that cannot hold it).
fn sync_timeout(timeout_seconds: Option<f64>) -> Result<Duration, AppError> {
    match timeout_seconds {
        None => Ok(DEFAULT_TIMEOUT),
        Some(seconds) if seconds > 0.0 && seconds <= MAX_TIMEOUT.as_secs_f64() => {
            Ok(Duration::from_secs_f64(seconds))
        }
        Some(seconds) if seconds > 0.0 => Err(AppError::invalid_body(
            &["timeout_seconds"],
            format!(
                "timeout_seconds must be at most {}, not {seconds}",
                MAX_TIMEOUT.as_secs()
            ),
        )),
        Some(seconds) => Err(AppError::BadRequest(format!(
            "timeout_seconds must be positive, not {seconds}"
        ))),
    }
}

/// Runs a task on a worker of a sync (or streaming) endpoint and answers its result, under the
/// model's status code.
#[utoipa::path(post, path = "/v1/sync-tasks", tag = "tasks", params(routes::EndpointQuery),
    request_body = routes::TaskRequest,
    responses((status = 200, body = SyncResponse), BadRequest, Unauthorized, NotFound, TooLarge,
        Invalid, TooMany, BadGateway, Unavailable, Timeout))]
pub async fn submit_sync_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::EndpointQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let accepts = [EndpointType::Sync, EndpointType::Streaming];
    let (endpoint, body, timeout) = prepare(&state, &principal, query, body, &accepts).await?;
    let _held = state.demand.hold(&endpoint.endpoint_id());
    let response = reach_worker(&state, &endpoint, PREDICT_PATH, body, timeout).await?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = read_capped(response, MAX_ANSWER_BYTES).await?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The worker's whole answer, read no further than `cap` bytes.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Bytes, AppError> {
    let too_large = || {
        AppError::BadGateway(format!(
            "the model's answer is larger than {cap} bytes, the most a sync task may return"
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|_| AppError::Unavailable("the worker's answer broke off".into()))?;
        let Some(chunk) = chunk else {
            return Ok(Bytes::from(body));
        };
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    /// A worker on 127.0.0.1 answering `size` bytes, chunked (no length announced) or not.
    async fn worker(size: usize, chunked: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(move || async move {
            let bytes = vec![b'7'; size];
            if chunked {
                let chunks = bytes
                    .chunks(1024)
                    .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>();
                Body::from_stream(futures::stream::iter(chunks))
            } else {
                Body::from(bytes)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn answers_beyond_the_cap_are_refused_whether_announced_or_not() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let cap = 64 * 1024;
        for chunked in [false, true] {
            let fits = client.get(worker(cap, chunked).await).send().await;
            let body = read_capped(fits.expect("answer"), cap).await.expect("fits");
            assert_eq!(body.len(), cap);
            let over = client.get(worker(cap + 1, chunked).await).send().await;
            let refused = read_capped(over.expect("answer"), cap).await;
            assert!(
                matches!(&refused, Err(AppError::BadGateway(detail)) if detail.contains("larger than")),
                "chunked {chunked}: {refused:?}"
            );
        }
    }

    /// A worker answering `status`, counting the requests it gets.
    async fn answering(status: StatusCode, requests: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(move || async move {
            requests.fetch_add(1, Ordering::Relaxed);
            (status, "{}")
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_worker_whose_model_is_unavailable_passes_the_task_to_another() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (down, up) = (Arc::default(), Arc::default());
        let workers = [
            answering(StatusCode::SERVICE_UNAVAILABLE, Arc::clone(&down)).await,
            answering(StatusCode::OK, Arc::clone(&up)).await,
        ];
        let client = WorkerClient::new().expect("client");
        for _ in 0..2 {
            let answer = client
                .send(&workers, "/predict", Bytes::new(), "token", None)
                .await
                .expect("sent")
                .expect("a worker took it");
            assert_eq!(answer.status(), StatusCode::OK);
        }
        assert_eq!(up.load(Ordering::Relaxed), 2, "the healthy worker ran both");
        assert!(
            down.load(Ordering::Relaxed) >= 1,
            "the unavailable one was tried"
        );

        let only_down = &workers[..1];
        let sent = client
            .send(only_down, "/predict", Bytes::new(), "token", None)
            .await
            .expect("no error");
        assert!(sent.is_none(), "no worker could take it: wait for one");
    }
}
