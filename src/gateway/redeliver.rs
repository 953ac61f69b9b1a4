//! Dead-lettered callbacks: listing an endpoint's, a page at a time, and redelivering one
//! task's, or every one given up on since a time. A caller reaches only its team's endpoints'
//! letters; a listing asks the server for those endpoints' keys alone, so another team's
//! letters are never read.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::openapi::answers::{BadRequest, NotFound, Unauthorized, Unavailable};
use super::tasks::{listed_endpoint, page_bounds, parse_time};
use super::views::{DeadLetterPage, Redelivered};
use super::{AppState, auth::Principal, error::AppError, views};
use crate::crd::EndpointId;
use crate::queue::LetterQuery;
use crate::task::{CallbackState, DeadLetter, TaskId};

/// Queues a task's dead-lettered callback again, with a fresh retry schedule.
#[utoipa::path(post, path = "/v1/async-tasks/{task_id}/callback/redeliver", tag = "callbacks",
    params(("task_id" = String, Path)),
    responses((status = 200, body = Redelivered), Unauthorized, NotFound, Unavailable))]
pub async fn redeliver_task(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Redelivered>, AppError> {
    let not_found = || AppError::NotFound(format!("task {id} has no dead-lettered callback"));
    let task_id = TaskId::parse(&id).ok_or_else(not_found)?;
    // The task id names its endpoint: the caller's visibility is settled before any dead
    // letter is read.
    let endpoint = task_id.endpoint();
    if principal.scope().is_some() && !visible_endpoints(&state, &principal).contains(endpoint) {
        return Err(not_found());
    }
    let letter = state
        .queue
        .dead_letter(endpoint, &task_id)
        .await?
        .ok_or_else(not_found)?;
    redeliver(&state, &letter).await?;
    Ok(Json(Redelivered { redelivered: 1 }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SinceQuery {
    /// Only letters given up on at or after this time: RFC 3339 or Unix milliseconds.
    since: Option<String>,
    /// Only this endpoint's letters (the console's "redeliver all since" of one endpoint).
    model_endpoint_id: Option<String>,
}

/// Queues again every dead-lettered callback of the caller's team's endpoints (or of one) given
/// up on since a time.
#[utoipa::path(post, path = "/v1/callbacks/redeliver", tag = "callbacks", params(SinceQuery),
    responses((status = 200, body = Redelivered), BadRequest, Unauthorized, NotFound, Unavailable))]
pub async fn redeliver_since(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<SinceQuery>,
) -> Result<Json<Redelivered>, AppError> {
    let since_ms = parse_time("since", query.since.as_deref())?.unwrap_or(0);
    let endpoints = match query.model_endpoint_id.as_deref() {
        Some(id) => Some(vec![
            super::routes::visible_endpoint(&state, &principal, id)?.endpoint_id(),
        ]),
        None => principal
            .scope()
            .map(|_| visible_endpoints(&state, &principal)),
    };
    let mut redelivered = 0;
    for letter in state.queue.dead_letters(endpoints.as_deref()).await? {
        if letter.dead_at_ms >= since_ms {
            redeliver(&state, &letter).await?;
            redelivered += 1;
        }
    }
    Ok(Json(Redelivered { redelivered }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListLettersQuery {
    /// The endpoint whose letters to list.
    #[param(required = true)]
    model_endpoint_id: Option<String>,
    /// Only letters given up on at or after this time: RFC 3339 or Unix milliseconds.
    since: Option<String>,
    /// Letters per page, 1 to 200 (50 when absent).
    limit: Option<String>,
    /// Where the page starts: a previous page's `next_page_token`.
    page_token: Option<String>,
}

/// An endpoint's dead-lettered callbacks, oldest first, each with the attempts its task's
/// callback state keeps.
#[utoipa::path(get, path = "/v1/callbacks/dead-letters", tag = "callbacks",
    params(ListLettersQuery),
    responses((status = 200, body = DeadLetterPage), BadRequest, Unauthorized, NotFound,
        Unavailable))]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListLettersQuery>,
) -> Result<Json<DeadLetterPage>, AppError> {
    let endpoint = listed_endpoint(&state, &principal, query.model_endpoint_id.as_deref())?;
    let (limit, from) = page_bounds(query.limit.as_deref(), query.page_token.as_deref())?;
    let letter_query = LetterQuery {
        since_ms: parse_time("since", query.since.as_deref())?,
        limit,
        from,
    };
    let page = state
        .queue
        .dead_letter_page(&endpoint.endpoint_id(), &letter_query)
        .await?;
    let callbacks = futures::future::try_join_all(
        page.letters
            .iter()
            .map(|letter| state.queue.callback_state(&letter.job.task_id)),
    )
    .await?;
    let dead_letters = page
        .letters
        .iter()
        .zip(&callbacks)
        .map(|(letter, callback)| views::dead_letter(letter, callback.as_ref()))
        .collect();
    let next_page_token = page.next.map(|sequence| sequence.to_string());
    Ok(Json(DeadLetterPage {
        dead_letters,
        next_page_token,
    }))
}

/// The endpoints whose dead letters the caller may redeliver: its team's.
fn visible_endpoints(state: &AppState, principal: &Principal) -> Vec<EndpointId> {
    state
        .catalog
        .find_endpoints(principal.scope(), None)
        .iter()
        .map(|endpoint| endpoint.endpoint_id())
        .collect()
}

/// Queues the job again with a fresh schedule, marks the callback pending, drops the letter.
async fn redeliver(state: &AppState, letter: &DeadLetter) -> Result<(), AppError> {
    let task_id = &letter.job.task_id;
    state
        .queue
        .update_callback_state(task_id, false, |callback| {
            callback.map(CallbackState::redelivered)
        })
        .await?;
    state.queue.redeliver_callback(&letter.job).await?;
    state
        .queue
        .remove_dead_letter(&letter.job.endpoint_id, task_id)
        .await?;
    tracing::info!(task_id = %task_id, endpoint = %letter.job.endpoint_id, "callback redelivered");
    Ok(())
}
