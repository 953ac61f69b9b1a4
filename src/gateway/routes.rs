//! Handlers of the Launch v1 routes ferry serves.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::openapi::answers::{
    BadRequest, Invalid, NotFound, TooLarge, TooMany, Unauthorized, Unavailable,
};
use super::views::{BundleV1, BundlesV1, EndpointList, EndpointView, TaskAccepted, TaskView};
use super::{AppState, IDEMPOTENCY_KEY, auth::Principal, error::AppError, team_limits, views};
use crate::callback::{Guard, guard};
use crate::crd::{
    BundleId, CallbackAuthKind, EndpointId, EndpointType, ModelBundle, ModelEndpoint,
    PostInferenceHook,
};
use crate::task::{CallbackAuth, CallbackTarget, TaskId, TaskMessage, now_ms};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelNameQuery {
    /// The bundle's name.
    #[param(required = true)]
    pub model_name: Option<String>,
}

/// The newest bundle of a name.
#[utoipa::path(get, path = "/v1/model-bundles/latest", tag = "bundles", params(ModelNameQuery),
    responses((status = 200, body = BundleV1), BadRequest, Unauthorized, NotFound))]
pub async fn latest_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ModelNameQuery>,
) -> Result<Json<BundleV1>, AppError> {
    let bundle = latest_visible_bundle(&state, &principal, query)?;
    Ok(Json(views::bundle(&bundle)))
}

/// The newest bundle of the queried name the caller may see.
pub(super) fn latest_visible_bundle(
    state: &AppState,
    principal: &Principal,
    query: ModelNameQuery,
) -> Result<Arc<ModelBundle>, AppError> {
    let name = query
        .model_name
        .ok_or_else(|| AppError::BadRequest("model_name is required".into()))?;
    let bundle = state.catalog.latest_bundle(principal.scope(), &name);
    bundle.ok_or_else(|| AppError::NotFound(format!("model bundle {name} not found")))
}

/// The bundle with this id, if the caller may see it.
pub(super) fn visible_bundle(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Arc<ModelBundle>, AppError> {
    BundleId::parse(id)
        .and_then(|bundle_id| state.catalog.bundle(&bundle_id))
        .filter(|bundle| {
            principal
                .scope()
                .is_none_or(|scope| crate::crd::namespace_of(bundle.as_ref()) == scope)
        })
        .ok_or_else(|| AppError::NotFound(format!("model bundle {id} not found")))
}

/// The caller's team's bundles.
#[utoipa::path(get, path = "/v1/model-bundles", tag = "bundles",
    responses((status = 200, body = BundlesV1), Unauthorized))]
pub async fn list_bundles(State(state): State<AppState>, principal: Principal) -> Json<BundlesV1> {
    let bundles = state.catalog.bundles(principal.scope());
    Json(BundlesV1 {
        model_bundles: bundles.iter().map(|b| views::bundle(b)).collect(),
    })
}

/// A bundle.
#[utoipa::path(get, path = "/v1/model-bundles/{id}", tag = "bundles", params(("id" = String, Path)),
    responses((status = 200, body = BundleV1), Unauthorized, NotFound))]
pub async fn get_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<BundleV1>, AppError> {
    let bundle = visible_bundle(&state, &principal, &id)?;
    Ok(Json(views::bundle(&bundle)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEndpointsQuery {
    /// Only the endpoint of exactly this name.
    name: Option<String>,
}

/// The caller's team's endpoints.
#[utoipa::path(get, path = "/v1/model-endpoints", tag = "endpoints", params(ListEndpointsQuery),
    responses((status = 200, body = EndpointList), Unauthorized))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListEndpointsQuery>,
) -> Json<EndpointList> {
    let endpoints = state
        .catalog
        .find_endpoints(principal.scope(), query.name.as_deref());
    Json(EndpointList {
        model_endpoints: endpoints.iter().map(|e| views::endpoint(e)).collect(),
    })
}

/// An endpoint.
#[utoipa::path(get, path = "/v1/model-endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), Unauthorized, NotFound))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, AppError> {
    let endpoint = visible_endpoint(&state, &principal, &id)?;
    Ok(Json(views::endpoint(&endpoint)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EndpointQuery {
    /// The endpoint the task is for.
    #[param(required = true)]
    pub model_endpoint_id: Option<String>,
}

/// The body of a task submission (Launch's `EndpointRequest` as the client sends it): its input
/// as `args` or by `url`, not both.
#[derive(Deserialize, ToSchema)]
pub(super) struct TaskRequest {
    /// The JSON the model is called with.
    #[serde(default)]
    args: Option<Value>,
    /// Sync tasks: how long to wait for the answer.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Where the worker fetches the input: `http`, `https`, `s3`, `gs`, `az` or `file`.
    #[serde(default)]
    url: Option<String>,
    /// The callback's URL, instead of the endpoint's default (with the `callback` hook).
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    callback_auth: Option<CallbackAuth>,
    /// Only false: results are JSON.
    #[serde(default)]
    return_pickled: Option<bool>,
}

/// Queues a task of an async endpoint. A repeat with the same `Idempotency-Key` answers the
/// first submission's `task_id`.
#[utoipa::path(post, path = "/v1/async-tasks", tag = "tasks",
    params(EndpointQuery, ("Idempotency-Key" = Option<String>, Header)),
    request_body = TaskRequest,
    responses((status = 200, body = TaskAccepted), BadRequest, Unauthorized, NotFound, TooLarge,
        Invalid, TooMany, Unavailable))]
pub async fn submit_async_task(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<EndpointQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskAccepted>, AppError> {
    state.limits.admit(&principal)?;
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
    team_limits::admit_queued_task(&state, &principal).await?;
    let (task, _) = task_from_request(&state, &endpoint, body).await?;
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok());
    let submission = state
        .queue
        .submit(&task, idempotency_key)
        .await
        .map_err(AppError::from_submission)?;
    if submission.duplicate {
        state.metrics.task_repeated(&task.endpoint_id);
    } else {
        state.metrics.task_submitted(&task.endpoint_id);
    }
    Ok(Json(TaskAccepted {
        task_id: submission.task_id,
    }))
}

/// The task a submission describes, its callback resolved and vetted; with the request's
/// remaining settings.
pub(super) async fn task_from_request(
    state: &AppState,
    endpoint: &ModelEndpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<(TaskMessage, Option<f64>), AppError> {
    let request = parse_task_request(body)?;
    if let Some(url) = &request.url {
        vet_input_url(&state.guard, url).await?;
    }
    let callback = resolve_callback(
        &state.guard,
        endpoint,
        request.callback_url,
        request.callback_auth,
    )
    .await?;
    let endpoint_id = endpoint.endpoint_id();
    let task_id = TaskId::generate(&endpoint_id);
    let callback = callback
        .map(|target| target.seal_for(&state.ring, &endpoint_id, &task_id))
        .transpose()
        .map_err(|error| AppError::Store(Box::new(error)))?;
    let task = TaskMessage {
        task_id,
        endpoint_id,
        args: request.args.unwrap_or(Value::Null),
        input_url: request.url,
        callback,
        submitted_at_ms: now_ms(),
        record_revision: None,
    };
    Ok((task, request.timeout_seconds))
}

/// A task's status and result, with its callback's delivery when it sends one.
#[utoipa::path(get, path = "/v1/async-tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path)),
    responses((status = 200, body = TaskView), Unauthorized, NotFound, Unavailable))]
pub async fn get_async_task(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, AppError> {
    let task_id = visible_task(&state, &principal, &id)?;
    let not_found = || AppError::NotFound(format!("task {id} not found"));
    let (record, callback) = tokio::try_join!(
        state.queue.task_record(&task_id),
        state.queue.callback_state(&task_id)
    )?;
    let record = record.ok_or_else(not_found)?;
    Ok(Json(views::task(&task_id, &record, callback.as_ref())))
}

/// The task `id` names, if the caller may see it. The id names the task's endpoint: another
/// team's task is not found without a read.
pub(super) fn visible_task(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<TaskId, AppError> {
    let visible = |task_id: &TaskId| {
        let endpoint = state.catalog.endpoint(task_id.endpoint());
        principal.scope().is_none()
            || endpoint.is_some_and(|endpoint| in_scope(principal, &endpoint))
    };
    TaskId::parse(id)
        .filter(visible)
        .ok_or_else(|| AppError::NotFound(format!("task {id} not found")))
}

/// Parts of Launch's API ferry does not serve, by path prefix, and why.
const UNSERVED: &[(&str, &str)] = &[
    (
        "/v1/llm/fine-tunes",
        "fine-tunes are not served by ferry: it runs models, it does not train them",
    ),
    (
        "/v1/llm/",
        "LLM endpoints are not served by ferry: serve an LLM server's image as a runnable_image bundle",
    ),
    (
        "/v2/chat/",
        "LLM completions are not served by ferry: serve an LLM server's image as a runnable_image bundle",
    ),
    (
        "/v2/completions",
        "LLM completions are not served by ferry: serve an LLM server's image as a runnable_image bundle",
    ),
    (
        "/v2/batch-completions",
        "LLM batch completions are not served by ferry",
    ),
    (
        "/v1/batch-jobs",
        "batch jobs are not served by ferry yet: submit async tasks instead",
    ),
    (
        "/v1/docker-image-batch-job",
        "batch jobs are not served by ferry yet: submit async tasks instead",
    ),
    (
        "/v1/files",
        "files are not served by ferry: give task inputs as args or by url",
    ),
    (
        "/v1/triggers",
        "triggers (scheduled batch jobs) are not served by ferry",
    ),
    (
        "/v1/model-endpoints-",
        "the model endpoints' schema documents are not served by ferry",
    ),
];

/// An unknown path: 404 with a `detail`, naming why when it is a part of Launch's API that
/// ferry does not serve.
pub async fn not_found(uri: axum::http::Uri) -> AppError {
    let path = uri.path();
    let detail = UNSERVED
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("Not Found", |(_, why)| why);
    AppError::NotFound(detail.into())
}

/// A known route asked with a method it does not serve: 405 with a `detail` like every error.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::NotAllowed(format!("{method} is not served on {}", uri.path()))
}

pub(super) fn visible_endpoint(
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

/// A JSON object body of type `T`, or a 413 (too large) or 422 (not an object, not `T`) naming
/// the problem. Only objects: serde would read an array into `T` by position.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, AppError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        _ => AppError::BadRequest(rejection.body_text()),
    })?;
    if let Some(kind) = non_object_kind(&body) {
        return Err(AppError::invalid_body(
            &[],
            format!("body must be a JSON object ({what}), not {kind}"),
        ));
    }
    serde_json::from_slice(&body).map_err(|error| {
        AppError::invalid_body(&[], format!("body is not a valid {what}: {error}"))
    })
}

/// What a JSON text is when its first value does not open an object; `None` for an object
/// (or for text that is no JSON at all, which parsing reports).
fn non_object_kind(body: &[u8]) -> Option<&'static str> {
    let first = body.iter().find(|byte| !b" \t\r\n".contains(byte));
    match first? {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        b'-' | b'0'..=b'9' => Some("a number"),
        _ => None,
    }
}

fn parse_task_request(body: Result<Bytes, BytesRejection>) -> Result<TaskRequest, AppError> {
    let request: TaskRequest = parse_body(body, "task request")?;
    match (&request.args, &request.url) {
        (None, None) => return Err(AppError::invalid_body(&["args"], "args or url is required")),
        (Some(_), Some(_)) => {
            let message = "give the task's input as args or by url, not both";
            return Err(AppError::invalid_body(&["url"], message));
        }
        _ => {}
    }
    if request.return_pickled == Some(true) {
        return Err(AppError::invalid_body(
            &["return_pickled"],
            "pickled results are not supported; results are JSON",
        ));
    }
    if let Some(CallbackAuth::Mtls { cert, key }) = &request.callback_auth
        && reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).is_err()
    {
        let message = "callback_auth: cert and key must be a PEM certificate and its private key";
        return Err(AppError::BadRequest(message.into()));
    }
    Ok(request)
}

/// Schemes of the URLs a worker fetches task inputs from.
const INPUT_URL_SCHEMES: &[&str] = &["http", "https", "s3", "gs", "az", "file"];

/// Refuses an input URL no worker would fetch: an unknown scheme, or an http(s) URL the SSRF
/// guard refuses (the worker vets it again when it fetches).
async fn vet_input_url(guard: &Guard, url: &str) -> Result<(), AppError> {
    let scheme = url::Url::parse(url).map(|parsed| parsed.scheme().to_owned());
    match scheme {
        Ok(scheme) if scheme == "http" || scheme == "https" => {
            match guard.vet_url(url, &[]).await {
                Ok(_) => Ok(()),
                Err(refusal) if refusal.is_transient() => Err(AppError::Unavailable(format!(
                    "url {url:?}: {refusal}; try again"
                ))),
                Err(guard::Refusal::Forbidden { kind }) => Err(AppError::BadRequest(format!(
                    "url {url:?} resolves to a {kind} address, which task inputs may not come from"
                ))),
                Err(refusal) => Err(AppError::BadRequest(format!("url {url:?} {refusal}"))),
            }
        }
        Ok(scheme) if INPUT_URL_SCHEMES.contains(&scheme.as_str()) => Ok(()),
        _ => Err(AppError::invalid_body(
            &["url"],
            format!("url {url:?} is not an http, https, s3, gs, az or file URL"),
        )),
    }
}

/// The callback a finished task sends: only with the callback hook, to the task's URL or else
/// the endpoint's default, and only to a URL the SSRF guard and the endpoint's allowlist accept.
async fn resolve_callback(
    guard: &Guard,
    endpoint: &ModelEndpoint,
    task_url: Option<String>,
    auth: Option<CallbackAuth>,
) -> Result<Option<CallbackTarget>, AppError> {
    let allowed_hosts = endpoint
        .spec
        .callbacks
        .as_ref()
        .map(|c| c.allowed_hosts.as_slice())
        .unwrap_or_default();
    let vet = |url: String| async move {
        match guard.vet_url(&url, allowed_hosts).await {
            Ok(_) => Ok(url),
            Err(refusal) if refusal.is_transient() => Err(AppError::Unavailable(format!(
                "callback_url {url:?}: {refusal}; try again"
            ))),
            Err(refusal) => Err(AppError::BadRequest(format!(
                "callback_url {url:?} {refusal}"
            ))),
        }
    };
    let task_url = match task_url {
        Some(url) => Some(vet(url).await?),
        None => None,
    };
    if !endpoint.spec.has_hook(PostInferenceHook::Callback) {
        return Ok(None);
    }
    let url = match task_url {
        Some(url) => url,
        None => match endpoint.spec.default_callback_url.clone() {
            Some(url) => vet(url).await?,
            None => return Ok(None),
        },
    };
    let basic = match &auth {
        Some(auth) => matches!(auth, CallbackAuth::Basic { .. }),
        None => endpoint
            .spec
            .default_callback_auth
            .as_ref()
            .is_some_and(|auth| auth.kind == CallbackAuthKind::Basic),
    };
    if basic && !endpoint.spec.allows_basic_auth_to(&url) {
        return Err(AppError::invalid_body(
            &["callback_url"],
            "Basic credentials are not sent to a plain http:// callback URL: use https, or set \
             callbacks.allowBasicAuthOverHttp on the endpoint",
        ));
    }
    Ok(Some(CallbackTarget { url, auth }))
}
