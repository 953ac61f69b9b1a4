//! Serving mode for sync and streaming endpoints: the forwarder answers the gateway's requests
//! over HTTP instead of pulling a queue. Each worker takes at most its concurrency at once and
//! answers 429 beyond that, so the gateway can try another worker.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response, sse},
    routing::post,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{ModelClient, Prediction};
use crate::queue::Queue;
use crate::task::{CallbackJob, SyncResponse, TaskMessage, TaskOutcome, Versioned};

/// Path of sync predictions on a serving forwarder.
pub const PREDICT_PATH: &str = "/predict";
/// Path of streaming predictions on a serving forwarder.
pub const STREAM_PATH: &str = "/stream";

pub struct Server {
    pub model: ModelClient,
    pub slots: Arc<Semaphore>,
    /// For the callbacks of sync endpoints with the callback hook.
    pub queue: Queue,
}

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route(PREDICT_PATH, post(predict))
        .route(STREAM_PATH, post(stream))
        .with_state(server)
}

fn decode(body: &[u8]) -> Result<TaskMessage, String> {
    serde_json::from_slice::<Versioned<TaskMessage>>(body)
        .map(Versioned::into_inner)
        .map_err(|error| format!("not a task message: {error}"))
}

fn unprocessable(detail: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "detail": detail })),
    )
        .into_response()
}

fn busy() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({ "detail": "every slot of this worker is busy" })),
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
    }
}

async fn predict(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let task = match decode(&body) {
        Ok(task) => task,
        Err(detail) => return unprocessable(detail),
    };
    let Ok(_slot) = server.slots.clone().try_acquire_owned() else {
        return busy();
    };
    let prediction = server.model.predict(&task.args).await;
    let response = to_response(&prediction);
    let outcome = match prediction {
        Prediction::Success { result, .. } => TaskOutcome::Success { result },
        Prediction::Failure { error, .. } => TaskOutcome::Failure { error },
    };
    if let Some(job) = CallbackJob::for_task(&task, outcome)
        && let Err(error) = server.queue.publish_callback(&job).await
    {
        tracing::error!(task_id = %task.task_id, %error, "queueing the callback of a sync task failed");
    }
    Json(response).into_response()
}

async fn stream(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let task = match decode(&body) {
        Ok(task) => task,
        Err(detail) => return unprocessable(detail),
    };
    let Ok(slot) = server.slots.clone().try_acquire_owned() else {
        return busy();
    };
    let predictions = server.model.stream(&task.args).await;
    // The slot is held until the stream ends; a failure ends it.
    let events = predictions.scan((slot, false), |(_, failed), prediction| {
        let event = (!*failed).then(|| {
            *failed = matches!(prediction, Prediction::Failure { .. });
            sse::Event::default().json_data(to_response(&prediction))
        });
        futures::future::ready(event)
    });
    sse::Sse::new(events).into_response()
}

/// Serves within `limits` until `cancel`, then finishes the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    limits: crate::http_server::Limits,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    crate::http_server::serve(listener, router(server), limits, cancel).await
}
