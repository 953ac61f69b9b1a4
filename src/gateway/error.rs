//! `AppError`: every failure a handler can return, mapped to a status code and Launch's
//! `{"detail": ...}` body. Internal causes are logged, never sent to the client.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::queue;

/// The body of every error answer: Launch's `{"detail": ...}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: Detail,
    /// On a 503 to a submission whose task may have been queued: resubmit under this id (as
    /// the `Idempotency-Key` header) to have it confirmed; it runs once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// What went wrong: words, or for a body that does not fit the schema (422) the problems.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Detail {
    Message(String),
    Problems(Vec<Problem>),
}

/// One problem with a request body, in the shape FastAPI (and so Launch) uses.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Where: `body`, then the field.
    pub loc: Vec<String>,
    pub msg: String,
    /// Always `value_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A body that does not fit the request schema.
    #[error("request body does not fit the schema")]
    Unprocessable(Vec<Problem>),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    NotAllowed(String),
    /// The resource is not in a state that allows the request (a task past PENDING).
    #[error("{0}")]
    Conflict(String),
    #[error("the task queue is unavailable")]
    Queue(#[source] queue::Error),
    /// A submission whose task certainly was not queued: nothing of it reached the queue.
    #[error("the task was not queued")]
    NotQueued(#[source] queue::Error),
    /// A submission whose task may have been queued; resubmitting under its id settles it.
    #[error("the task queue did not confirm task {task_id}")]
    Unconfirmed {
        task_id: crate::task::TaskId,
        #[source]
        source: queue::Error,
    },
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
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Queue(_)
            | AppError::NotQueued(_)
            | AppError::Unconfirmed { .. }
            | AppError::Store(_)
            | AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Busy(_) | AppError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The answer to a task submission that failed: certainly not queued, unconfirmed (with
    /// the task's id), or a full queue.
    pub fn from_submission(error: queue::Error) -> Self {
        match error {
            queue::Error::Unconfirmed { ref task_id, .. } => AppError::Unconfirmed {
                task_id: task_id.clone(),
                source: error,
            },
            queue::Error::Full { .. } => AppError::from(error),
            error => AppError::NotQueued(error),
        }
    }

    /// A 422 for one problem at `loc`, in the shape FastAPI (and so Launch) uses.
    pub fn invalid_body(loc: &[&str], message: impl Into<String>) -> Self {
        let location = std::iter::once("body").chain(loc.iter().copied());
        AppError::Unprocessable(vec![Problem {
            loc: location.map(str::to_owned).collect(),
            msg: message.into(),
            kind: "value_error",
        }])
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut task_id = None;
        let detail = match &self {
            AppError::Unprocessable(problems) => Detail::Problems(problems.clone()),
            AppError::Queue(error) => {
                tracing::error!(error = %error, source = ?std::error::Error::source(error), "queue operation failed");
                Detail::Message("the task queue is unavailable; retry shortly".into())
            }
            AppError::Store(error) => {
                tracing::error!(error = %error, "storing a change failed");
                Detail::Message("storing the change failed; retry shortly".into())
            }
            AppError::NotQueued(error) => {
                tracing::warn!(error = %error, source = ?std::error::Error::source(error), "a task was not queued");
                Detail::Message(
                    "the task queue is unavailable; the task was not queued, retry shortly".into(),
                )
            }
            AppError::Unconfirmed {
                task_id: id,
                source,
            } => {
                tracing::warn!(task_id = %id, error = %source, source = ?std::error::Error::source(source), "a task's queueing was not confirmed");
                task_id = Some(id.to_string());
                Detail::Message(unconfirmed_detail(id))
            }
            other => Detail::Message(other.to_string()),
        };
        let mut response = (status, Json(ErrorBody { detail, task_id })).into_response();
        let retry_after = match &self {
            AppError::TooMany { retry_after, .. } => Some(*retry_after),
            AppError::NotQueued(_) | AppError::Unconfirmed { .. } => Some(SUBMIT_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
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

/// What a client whose task may have been queued is told to do.
fn unconfirmed_detail(task_id: &crate::task::TaskId) -> String {
    format!(
        "the task queue did not confirm task {task_id} in time; it may still run. Resubmit the same \
         request with the header `{}: {task_id}` to get it confirmed: it runs once",
        super::IDEMPOTENCY_KEY
    )
}

/// When a client whose submission met an unavailable task queue should try again.
const SUBMIT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

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
