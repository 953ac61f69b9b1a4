//! `AppError`: every failure a handler can return, mapped to a status code and Launch's
//! `{"detail": ...}` body. Internal causes are logged, never sent to the client.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::queue;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A body that does not fit the request schema; the value lists the problems.
    #[error("request body does not fit the schema")]
    Unprocessable(Value),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    NotAllowed(String),
    #[error("the task queue is unavailable")]
    Queue(#[source] queue::Error),
    #[error("storing the change failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A worker did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// Every worker is busy.
    #[error("{0}")]
    Busy(String),
    /// No worker could be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A worker answered with something the gateway will not pass on.
    #[error("{0}")]
    BadGateway(String),
    /// The caller must slow down: its team's quota or the endpoint's queue is exhausted.
    #[error("{detail}")]
    TooMany {
        detail: String,
        retry_after: std::time::Duration,
    },
}

impl AppError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Queue(_) | AppError::Store(_) | AppError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Busy(_) | AppError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A 422 for one problem at `loc`, in the shape FastAPI (and so Launch) uses.
    pub fn invalid_body(loc: &[&str], message: impl Into<String>) -> Self {
        let mut location = vec![Value::from("body")];
        location.extend(loc.iter().map(|part| Value::from(*part)));
        AppError::Unprocessable(
            json!([{ "loc": location, "msg": message.into(), "type": "value_error" }]),
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            AppError::Unprocessable(problems) => problems.clone(),
            AppError::Queue(error) => {
                tracing::error!(error = %error, source = ?std::error::Error::source(error), "queue operation failed");
                Value::from("the task queue is unavailable; retry shortly")
            }
            AppError::Store(error) => {
                tracing::error!(error = %error, "storing a change failed");
                Value::from("storing the change failed; retry shortly")
            }
            other => Value::from(other.to_string()),
        };
        let mut response = (status, Json(json!({ "detail": detail }))).into_response();
        if let AppError::TooMany { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client that waits this long finds room.
            let seconds = retry_after
                .as_secs()
                .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Basic"),
            );
        }
        response
    }
}

/// When a client of a full task queue should try again: workers drain it meanwhile.
const FULL_QUEUE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl From<queue::Error> for AppError {
    fn from(error: queue::Error) -> Self {
        match error {
            queue::Error::Full { .. } => AppError::TooMany {
                detail: "the endpoint's task queue is full; the task was not accepted, retry later"
                    .into(),
                retry_after: FULL_QUEUE_RETRY_AFTER,
            },
            error => AppError::Queue(error),
        }
    }
}

impl From<crate::catalog::WriteError> for AppError {
    fn from(error: crate::catalog::WriteError) -> Self {
        match error {
            crate::catalog::WriteError::Invalid(message) => AppError::BadRequest(message),
            crate::catalog::WriteError::Unavailable(source) => AppError::Store(source),
        }
    }
}

impl From<super::launch::Invalid> for AppError {
    fn from(error: super::launch::Invalid) -> Self {
        AppError::BadRequest(error.0)
    }
}
