//! Handlers of the Launch v1 routes ferry serves.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, auth::Principal, error::AppError, views};
use crate::crd::{BundleId, EndpointId, EndpointType, ModelEndpoint, PostInferenceHook};
use crate::task::{CallbackTarget, TaskId, TaskMessage, now_ms};

/// Header with which a client makes a submission safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Deserialize)]
pub struct ModelNameQuery {
    model_name: Option<String>,
}

pub async fn latest_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ModelNameQuery>,
) -> Result<Json<Value>, AppError> {
    let name = query
        .model_name
        .ok_or_else(|| AppError::BadRequest("model_name is required".into()))?;
    let bundle = state.catalog.latest_bundle(principal.scope(), &name);
    let bundle =
        bundle.ok_or_else(|| AppError::NotFound(format!("model bundle {name} not found")))?;
    Ok(Json(views::bundle(&bundle)))
}

pub async fn list_bundles(State(state): State<AppState>, principal: Principal) -> Json<Value> {
    let bundles: Vec<Value> = state
        .catalog
        .bundles(principal.scope())
        .iter()
        .map(|b| views::bundle(b))
        .collect();
    Json(json!({ "model_bundles": bundles }))
}

pub async fn get_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    BundleId::parse(&id)
        .and_then(|bundle_id| state.catalog.bundle(&bundle_id))
        .filter(|bundle| {
            principal
                .scope()
                .is_none_or(|scope| crate::crd::namespace_of(bundle.as_ref()) == scope)
        })
        .map(|bundle| Json(views::bundle(&bundle)))
        .ok_or_else(|| AppError::NotFound(format!("model bundle {id} not found")))
}

#[derive(Deserialize)]
pub struct ListEndpointsQuery {
    name: Option<String>,
}

pub async fn list_endpoints(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListEndpointsQuery>,
) -> Json<Value> {
    let endpoints = state
        .catalog
        .find_endpoints(principal.scope(), query.name.as_deref());
    let views: Vec<Value> = endpoints
        .iter()
        .map(|endpoint| views::endpoint(endpoint))
        .collect();
    Json(json!({ "model_endpoints": views }))
}

pub async fn get_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let endpoint = visible_endpoint(&state, &principal, &id)?;
    Ok(Json(views::endpoint(&endpoint)))
}

#[derive(Deserialize)]
pub struct EndpointQuery {
    model_endpoint_id: Option<String>,
}

/// The body of a task submission (Launch's `EndpointRequest` as the client sends it).
#[derive(Deserialize)]
struct TaskRequest {
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    callback_auth: Option<Value>,
    #[serde(default)]
    return_pickled: Option<bool>,
}

pub async fn submit_async_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<EndpointQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let id = query
        .model_endpoint_id
        .ok_or_else(|| AppError::BadRequest("model_endpoint_id is required".into()))?;
    let endpoint = visible_endpoint(&state, &principal, &id)?;
    if endpoint.spec.endpoint_type != EndpointType::Async {
        return Err(AppError::BadRequest(format!(
            "endpoint {} is {}; async tasks need an async endpoint",
            endpoint.name_any(),
            endpoint.spec.endpoint_type.as_str()
        )));
    }
    let request = parse_task_request(body)?;
    let task = TaskMessage {
        task_id: TaskId::generate(),
        endpoint_id: endpoint.endpoint_id(),
        args: request.args.unwrap_or(Value::Null),
        callback: resolve_callback(&endpoint, request.callback_url)?,
        submitted_at_ms: now_ms(),
    };
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok());
    let submission = state.queue.submit(&task, idempotency_key).await?;
    state.metrics.tasks_submitted.inc();
    Ok(Json(json!({ "task_id": submission.task_id })))
}

pub async fn get_async_task(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let not_found = || AppError::NotFound(format!("task {id} not found"));
    let task_id = TaskId::parse(&id).ok_or_else(not_found)?;
    let (record, callback) = tokio::try_join!(
        state.queue.task_record(&task_id),
        state.queue.callback_state(&task_id)
    )?;
    let record = record.ok_or_else(not_found)?;
    let endpoint = state.catalog.endpoint(&record.endpoint_id);
    let visible = endpoint.is_some_and(|endpoint| in_scope(&principal, &endpoint));
    if !visible && principal.scope().is_some() {
        return Err(not_found());
    }
    Ok(Json(views::task(&task_id, &record, callback.as_ref())))
}

pub async fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "detail": "Not Found" })),
    )
}

fn visible_endpoint(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<std::sync::Arc<ModelEndpoint>, AppError> {
    EndpointId::parse(id)
        .and_then(|id| state.catalog.endpoint(&id))
        .filter(|endpoint| in_scope(principal, endpoint))
        .ok_or_else(|| AppError::NotFound(format!("model endpoint {id} not found")))
}

fn in_scope(principal: &Principal, endpoint: &ModelEndpoint) -> bool {
    principal
        .scope()
        .is_none_or(|scope| crate::crd::namespace_of(endpoint) == scope)
}

fn parse_task_request(body: Result<Bytes, BytesRejection>) -> Result<TaskRequest, AppError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        _ => AppError::BadRequest(rejection.body_text()),
    })?;
    let request: TaskRequest = serde_json::from_slice(&body).map_err(|error| {
        AppError::invalid_body(&[], format!("body is not a valid task request: {error}"))
    })?;
    if request.args.is_none() {
        let message = match request.url {
            Some(_) => "ferry takes task inputs as args; input files by url are not supported",
            None => "args is required",
        };
        return Err(AppError::invalid_body(&["args"], message));
    }
    if request.return_pickled == Some(true) {
        return Err(AppError::invalid_body(
            &["return_pickled"],
            "pickled results are not supported; results are JSON",
        ));
    }
    if request
        .callback_auth
        .as_ref()
        .is_some_and(|auth| !auth.is_null())
    {
        return Err(AppError::BadRequest(
            "per-task callback_auth is not supported yet".into(),
        ));
    }
    Ok(request)
}

/// The callback a finished task sends: only with the callback hook, to the task's URL or else
/// the endpoint's default.
fn resolve_callback(
    endpoint: &ModelEndpoint,
    task_url: Option<String>,
) -> Result<Option<CallbackTarget>, AppError> {
    if let Some(url) = &task_url {
        check_callback_url(url)?;
    }
    if !endpoint.spec.has_hook(PostInferenceHook::Callback) {
        return Ok(None);
    }
    let url = task_url.or_else(|| endpoint.spec.default_callback_url.clone());
    Ok(url.map(|url| CallbackTarget { url }))
}

fn check_callback_url(text: &str) -> Result<(), AppError> {
    let invalid = |why: &str| AppError::BadRequest(format!("callback_url {text:?} {why}"));
    let url = url::Url::parse(text).map_err(|_| invalid("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if url.host().is_none() {
        return Err(invalid("has no host"));
    }
    Ok(())
}
