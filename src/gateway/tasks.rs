//! ferry's task routes beside Launch's: listing an endpoint's tasks, newest first a page at a
//! time (`GET /v1/async-tasks`), and cancelling a queued task (`DELETE /v1/async-tasks/{id}`).
//! Both are team-scoped: another team's endpoints and tasks read as not found.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::openapi::answers::{BadRequest, Conflict, NotFound, Unauthorized, Unavailable};
use super::views::{TaskPage, TaskView};
use super::{AppState, auth::Principal, error::AppError, routes, views};
use crate::queue::TaskQuery;
use crate::task::{CallbackJob, TaskOutcome, TaskStatus};

/// Tasks a page holds when the query does not say, and at most.
pub const DEFAULT_PAGE_LIMIT: u64 = 50;
pub const MAX_PAGE_LIMIT: u64 = 200;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// The endpoint whose tasks to list.
    #[param(required = true)]
    model_endpoint_id: Option<String>,
    /// Only tasks of this status: PENDING, STARTED, SUCCESS, FAILURE or CANCELLED.
    status: Option<String>,
    /// Only tasks submitted at or after this time: RFC 3339 or Unix milliseconds.
    since: Option<String>,
    /// Only tasks submitted before this time: RFC 3339 or Unix milliseconds.
    until: Option<String>,
    /// Tasks per page, 1 to 200 (50 when absent).
    limit: Option<String>,
    /// Where the page starts: a previous page's `next_page_token`.
    page_token: Option<String>,
}

/// An endpoint's tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/async-tasks", tag = "tasks", params(ListTasksQuery),
    responses((status = 200, body = TaskPage), BadRequest, Unauthorized, NotFound, Unavailable))]
pub async fn list_async_tasks(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListTasksQuery>,
) -> Result<Json<TaskPage>, AppError> {
    let endpoint = listed_endpoint(&state, &principal, query.model_endpoint_id.as_deref())?;
    let task_query = task_query(&query)?;
    let page = state
        .queue
        .task_page(&endpoint.endpoint_id(), &task_query)
        .await?;
    let tasks = page
        .tasks
        .iter()
        .map(|listed| views::task(&listed.task_id, &listed.record, listed.callback.as_ref()))
        .collect();
    let next_page_token = page.next.map(|sequence| sequence.to_string());
    Ok(Json(TaskPage {
        next_page_token,
        tasks,
    }))
}

/// The endpoint a listing names, if the caller may see it.
pub(super) fn listed_endpoint(
    state: &AppState,
    principal: &Principal,
    model_endpoint_id: Option<&str>,
) -> Result<std::sync::Arc<crate::crd::ModelEndpoint>, AppError> {
    let id = model_endpoint_id
        .ok_or_else(|| AppError::BadRequest("model_endpoint_id is required".into()))?;
    routes::visible_endpoint(state, principal, id)
}

/// A page's size (`limit`, 1 to [`MAX_PAGE_LIMIT`]) and where it starts (`page_token`, as a
/// previous page gave it).
pub(super) fn page_bounds(
    limit: Option<&str>,
    page_token: Option<&str>,
) -> Result<(u64, Option<u64>), AppError> {
    let limit = match limit {
        None => DEFAULT_PAGE_LIMIT,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE_LIMIT).contains(limit))
            .ok_or_else(|| {
                AppError::BadRequest(format!(
                    "limit {text:?} is not a number from 1 to {MAX_PAGE_LIMIT}"
                ))
            })?,
    };
    let from = page_token
        .map(|token| {
            token.parse::<u64>().map_err(|_| {
                AppError::BadRequest(format!("page_token {token:?} is not one ferry gave"))
            })
        })
        .transpose()?;
    Ok((limit, from))
}

/// The query's filters and paging, checked.
fn task_query(query: &ListTasksQuery) -> Result<TaskQuery, AppError> {
    let status = query
        .status
        .as_deref()
        .map(|text| {
            TaskStatus::parse(text).ok_or_else(|| {
                let known: Vec<_> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                AppError::BadRequest(format!("status {text:?} is none of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let (limit, from) = page_bounds(query.limit.as_deref(), query.page_token.as_deref())?;
    Ok(TaskQuery {
        status,
        since_ms: parse_time("since", query.since.as_deref())?,
        until_ms: parse_time("until", query.until.as_deref())?,
        limit,
        from,
    })
}

/// A time given as RFC 3339 (`2026-01-31T12:00:00Z`) or as Unix milliseconds.
pub(super) fn parse_time(name: &str, text: Option<&str>) -> Result<Option<u64>, AppError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Some(ms));
    }
    text.parse::<jiff::Timestamp>()
        .map(|at| Some(at.as_millisecond().max(0) as u64))
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{name} {text:?} is neither an RFC 3339 time such as 2026-01-31T12:00:00Z nor Unix milliseconds"
            ))
        })
}

/// Cancels a PENDING task: it leaves the queue, ends CANCELLED, and its callback (if it sends
/// one) goes out at once. A task a worker started, or a final one, is a 409.
#[utoipa::path(delete, path = "/v1/async-tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path)),
    responses((status = 200, body = TaskView), Unauthorized, NotFound, Conflict, Unavailable))]
pub async fn cancel_async_task(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, AppError> {
    let task_id = routes::visible_task(&state, &principal, &id)?;
    let (record, cancelled_now) = state
        .queue
        .cancel_task(&task_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("task {id} not found")))?;
    if !cancelled_now {
        let status = record.status.as_str();
        let why = if record.status.is_final() {
            "it has its final status"
        } else {
            "a worker has started it; a running task cannot be cancelled"
        };
        return Err(AppError::Conflict(format!("task {id} is {status}: {why}")));
    }
    let callback_queued = match record.callback.clone() {
        Some(target) => {
            let job = CallbackJob::for_unrun(&task_id, target, TaskOutcome::Cancelled);
            let queued = state.queue.publish_callback(&job).await;
            if let Err(error) = &queued {
                tracing::warn!(%error, task_id = %task_id, "queueing a cancelled task's callback failed; the task stays queued, so its worker sends it");
            }
            queued.is_ok()
        }
        None => true,
    };
    // Out of the queue, so no worker receives it; one that does finds it cancelled as it
    // would record it STARTED, and stops it there.
    if callback_queued && let Err(error) = state.queue.unqueue(&task_id).await {
        tracing::warn!(%error, task_id = %task_id, "a cancelled task stays queued; its worker will stop it");
    }
    tracing::info!(task_id = %task_id, "task cancelled");
    let callback = state.queue.callback_state(&task_id).await?;
    Ok(Json(views::task(&task_id, &record, callback.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListTasksQuery {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        ListTasksQuery {
            model_endpoint_id: get("model_endpoint_id"),
            status: get("status"),
            since: get("since"),
            until: get("until"),
            limit: get("limit"),
            page_token: get("page_token"),
        }
    }

    #[test]
    fn list_queries_read_statuses_times_limits_and_tokens() {
        let read = task_query(&query(&[
            ("status", "cancelled"),
            ("since", "2026-01-31T12:00:00Z"),
            ("until", "1769861000000"),
            ("limit", "200"),
            ("page_token", "42"),
        ]))
        .expect("valid");
        assert_eq!(
            read,
            TaskQuery {
                status: Some(TaskStatus::Cancelled),
                since_ms: Some(1_769_860_800_000),
                until_ms: Some(1_769_861_000_000),
                limit: 200,
                from: Some(42),
            }
        );
        assert_eq!(
            task_query(&query(&[])).expect("valid").limit,
            DEFAULT_PAGE_LIMIT
        );
        for bad in [
            ("status", "DONE"),
            ("since", "yesterday"),
            ("limit", "0"),
            ("limit", "201"),
            ("page_token", "abc"),
        ] {
            assert!(
                matches!(task_query(&query(&[bad])), Err(AppError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
