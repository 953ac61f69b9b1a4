//! Creating, updating and deleting endpoints and bundles through the Launch API. Each change goes
//! to the [`ResourceWriter`](crate::catalog::ResourceWriter) — the dev runtime or the Kubernetes
//! API — so the API and `kubectl get mep` always see the same objects.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
};
use serde_json::{Value, json};

use super::{AppState, auth::Principal, error::AppError, launch, routes, views};
use crate::catalog::ResourceWriter;
use crate::crd::{BundleId, ModelBundle, ModelEndpoint, namespace_of};

/// Namespace a caller's new resources go to: its team's, or `default` for an open dev gateway.
fn namespace_for(principal: &Principal) -> String {
    principal.scope().unwrap_or("default").to_owned()
}

fn writer(state: &AppState) -> Result<&Arc<dyn ResourceWriter>, AppError> {
    state.writer.as_ref().ok_or_else(|| {
        AppError::NotAllowed(
            "this gateway serves the endpoints of its manifests; change them there".into(),
        )
    })
}

pub async fn create_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    state.limits.admit(&principal)?;
    let request: launch::CreateEndpoint = routes::parse_body(body, "model endpoint request")?;
    let writer = writer(&state)?;
    let namespace = namespace_for(&principal);
    if !state
        .catalog
        .find_endpoints(Some(&namespace), Some(&request.name))
        .is_empty()
    {
        return Err(AppError::BadRequest(format!(
            "a model endpoint named {} already exists",
            request.name
        )));
    }
    let bundle = routes::visible_bundle(&state, &principal, &request.model_bundle_id)?;
    if namespace_of(bundle.as_ref()) != namespace {
        return Err(AppError::BadRequest(
            "the bundle must be in the endpoint's namespace".into(),
        ));
    }
    let (endpoint, secrets) = launch::new_endpoint(&namespace, request, &bundle)?;
    let id = endpoint.endpoint_id();
    writer.apply_endpoint(endpoint, secrets).await?;
    tracing::info!(endpoint = %id, "endpoint created");
    Ok(Json(
        json!({ "endpoint_creation_task_id": uuid::Uuid::now_v7().to_string() }),
    ))
}

pub async fn update_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    state.limits.admit(&principal)?;
    let request: launch::UpdateEndpoint = routes::parse_body(body, "model endpoint update")?;
    let writer = writer(&state)?;
    let current = routes::visible_endpoint(&state, &principal, &id)?;
    let bundle = match &request.model_bundle_id {
        Some(bundle_id) => routes::visible_bundle(&state, &principal, bundle_id)?,
        None => current_bundle(&state, &current)?,
    };
    let (endpoint, secrets) = launch::update_endpoint(&current, request, &bundle)?;
    writer.apply_endpoint(endpoint, secrets).await?;
    tracing::info!(endpoint = %id, "endpoint updated");
    Ok(Json(
        json!({ "endpoint_creation_task_id": uuid::Uuid::now_v7().to_string() }),
    ))
}

/// The bundle an endpoint runs, which an update naming no other is checked with.
fn current_bundle(
    state: &AppState,
    endpoint: &ModelEndpoint,
) -> Result<Arc<ModelBundle>, AppError> {
    let namespace = namespace_of(endpoint);
    let name = &endpoint.spec.bundle;
    state
        .catalog
        .bundle(&BundleId::for_resource(&namespace, name))
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "model bundle {name} not found in namespace {namespace}"
            ))
        })
}

pub async fn delete_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let writer = writer(&state)?;
    let endpoint = routes::visible_endpoint(&state, &principal, &id)?;
    writer.delete_endpoint(endpoint).await?;
    tracing::info!(endpoint = %id, "endpoint deleted");
    Ok(Json(json!({ "deleted": true })))
}

pub async fn create_bundle(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let request: launch::CreateBundle = routes::parse_body(body, "model bundle request")?;
    let writer = writer(&state)?;
    let bundle = launch::new_bundle(&namespace_for(&principal), request)?;
    let id = bundle.bundle().bundle_id();
    writer.apply_bundle(bundle).await?;
    Ok(Json(json!({ "model_bundle_id": id })))
}

/// `POST /v{1,2}/model-bundles/clone-with-changes`: the clone's id, as a create answers.
pub async fn clone_bundle(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let request: launch::CloneBundle = routes::parse_body(body, "model bundle clone request")?;
    let writer = writer(&state)?;
    let original = routes::visible_bundle(&state, &principal, &request.original_model_bundle_id)?;
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let clone = launch::cloned_bundle(&original, &request, suffix)?;
    let id = clone.bundle().bundle_id();
    writer.apply_bundle(clone).await?;
    tracing::info!(bundle = %id, original = %request.original_model_bundle_id, "bundle cloned");
    Ok(Json(json!({ "model_bundle_id": id })))
}

/// `POST /v1/model-bundles` takes cloudpickled Python bundles, which ferry does not run.
pub async fn create_v1_bundle() -> AppError {
    AppError::BadRequest(
        "ferry runs runnable_image bundles: create them with POST /v2/model-bundles".into(),
    )
}

pub async fn list_v2_bundles(State(state): State<AppState>, principal: Principal) -> Json<Value> {
    let bundles: Vec<Value> = state
        .catalog
        .bundles(principal.scope())
        .iter()
        .map(|b| views::bundle_v2(b))
        .collect();
    Json(json!({ "model_bundles": bundles }))
}

pub async fn get_v2_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let bundle = routes::visible_bundle(&state, &principal, &id)?;
    Ok(Json(views::bundle_v2(&bundle)))
}

pub async fn latest_v2_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::ModelNameQuery>,
) -> Result<Json<Value>, AppError> {
    let bundle = routes::latest_visible_bundle(&state, &principal, query)?;
    Ok(Json(views::bundle_v2(&bundle)))
}
