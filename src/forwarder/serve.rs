//! Serving mode for sync and streaming endpoints: the forwarder answers the gateway's requests
//! over HTTP instead of pulling a queue. Each worker takes at most its concurrency at once and
//! answers 429 beyond that, so the gateway can try another worker. A request the model cannot
//! take (connection refused, or dropped before an answer) is answered 503 with `Retry-After`
//! and sends no callback: the task has no outcome, and a retry may find a worker whose model
//! is up. The worker reports itself not ready while its model fails its health route, so the
//! Service stops sending it requests.
//!
//! Only the gateway is served: a request must carry the endpoint's serving token (401 without
//! it), and a task must be for this worker's endpoint (403 otherwise), so the model beside the
//! forwarder, or anything else that reaches the port, can neither run tasks nor queue callbacks
//! in another endpoint's name.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response, sse},
    routing::post,
};
use futures::StreamExt;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::{ModelClient, Prediction};
use crate::crd::EndpointId;
use crate::queue::ForwarderQueue;
use crate::task::{CallbackJob, SyncResponse, TaskMessage, TaskOutcome, Versioned};
use crate::worker::{PREDICT_PATH, SERVING_TOKEN_HEADER, STREAM_PATH};

pub struct Server {
    /// The endpoint this worker serves; tasks of any other are refused.
    pub endpoint_id: EndpointId,
    /// The endpoint's serving token, as the worker Secret holds it.
    pub token: String,
    pub model: ModelClient,
    pub slots: Arc<Semaphore>,
    /// For the callbacks of sync endpoints with the callback hook.
    pub queue: ForwarderQueue,
}

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route(PREDICT_PATH, post(predict))
        .route(STREAM_PATH, post(stream))
        .with_state(server)
}

/// True when `headers` carry `token` among their serving tokens; compared in constant time.
fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(SERVING_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    given
        .split(',')
        .map(|candidate| candidate.trim().as_bytes().ct_eq(token.as_bytes()))
        .fold(subtle::Choice::from(0), |any, this| any | this)
        .into()
}

/// The task of an authenticated request for this worker's endpoint, or the answer refusing it.
fn admit(server: &Server, headers: &HeaderMap, body: &[u8]) -> Result<TaskMessage, Refusal> {
    if server.token.is_empty() || !presents_token(headers, &server.token) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "this worker serves only the gateway: the endpoint's serving token is missing or wrong"
                .into(),
        ));
    }
    let task = serde_json::from_slice::<Versioned<TaskMessage>>(body)
        .map(Versioned::into_inner)
        .map_err(|error| {
            let detail = format!("not a task message: {error}");
            Refusal(StatusCode::UNPROCESSABLE_ENTITY, detail)
        })?;
    if task.endpoint_id != server.endpoint_id || task.task_id.endpoint() != &server.endpoint_id {
        tracing::warn!(task_endpoint = %task.endpoint_id, "refused a task of another endpoint");
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "the task is for another endpoint than this worker's".into(),
        ));
    }
    Ok(task)
}

/// Why a request is not served, and its status.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "detail": self.1 }))).into_response()
    }
}

fn busy() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({ "detail": "every slot of this worker is busy" })),
    )
        .into_response()
}

/// Seconds a client is asked to wait before retrying a task the model could not take.
const RETRY_AFTER_SECONDS: &str = "1";

fn model_unavailable(reason: &str) -> Response {
    tracing::warn!(reason, "the model could not take a request");
    let detail = format!("this worker's model is unavailable ({reason}); retry shortly");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
        Json(json!({ "detail": detail })),
    )
        .into_response()
}

fn to_response(prediction: &Prediction) -> SyncResponse {
    match prediction {
        Prediction::Success {
            result,
            status_code,
        } => SyncResponse::success(result.clone(), *status_code),
        Prediction::Failure { error, status_code } => SyncResponse::failure(error, *status_code),
        // Never sent: `predict` answers 503 instead.
        Prediction::Unavailable { reason } => SyncResponse::failure(
            &crate::task::TaskError {
                message: reason.clone(),
                detail: None,
            },
            None,
        ),
    }
}

fn to_event(prediction: &Prediction) -> SyncResponse {
    match prediction {
        Prediction::Failure { error, status_code } => {
            SyncResponse::stream_failure(error, *status_code)
        }
        // Mid-stream only (`stream` answers 503 before a stream starts): the stream ends here.
        Prediction::Unavailable { reason } => SyncResponse::stream_failure(
            &crate::task::TaskError {
                message: reason.clone(),
                detail: None,
            },
            None,
        ),
        success => to_response(success),
    }
}

async fn predict(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let task = match admit(&server, &headers, &body) {
        Ok(task) => task,
        Err(refused) => return refused.into_response(),
    };
    let Ok(_slot) = server.slots.clone().try_acquire_owned() else {
        return busy();
    };
    let prediction = server.model.predict_task(&task).await;
    let response = to_response(&prediction);
    let outcome = match prediction {
        Prediction::Success { result, .. } => TaskOutcome::Success { result },
        Prediction::Failure { error, .. } => TaskOutcome::Failure { error },
        Prediction::Unavailable { reason } => return model_unavailable(&reason),
    };
    if let Some(job) = CallbackJob::for_task(&task, outcome)
        && let Err(error) = server.queue.publish_callback(&job).await
    {
        tracing::error!(task_id = %task.task_id, %error, "queueing the callback of a sync task failed");
    }
    Json(response).into_response()
}

async fn stream(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let task = match admit(&server, &headers, &body) {
        Ok(task) => task,
        Err(refused) => return refused.into_response(),
    };
    let Ok(slot) = server.slots.clone().try_acquire_owned() else {
        return busy();
    };
    let mut predictions = server.model.stream_task(&task).await.peekable();
    if let Some(Prediction::Unavailable { reason }) =
        std::pin::Pin::new(&mut predictions).peek().await
    {
        return model_unavailable(reason);
    }
    // The slot is held until the stream ends; a failure ends it.
    let events = predictions.scan((slot, false), |(_, failed), prediction| {
        let event = (!*failed).then(|| {
            *failed = !matches!(prediction, Prediction::Success { .. });
            sse::Event::default().json_data(to_event(&prediction))
        });
        futures::future::ready(event)
    });
    sse::Sse::new(events).into_response()
}

/// Serves within `limits` until `cancel`, then keeps serving for `handover_delay` while the
/// gateways stop sending here, and finishes the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    limits: crate::http_server::Limits,
    handover_delay: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let handover = crate::http_server::Handover {
        delay: handover_delay,
        grace: None,
    };
    crate::http_server::serve_handing_over(listener, router(server), limits, handover, cancel).await
}
