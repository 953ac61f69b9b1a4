//! Creating, updating and deleting endpoints and bundles through the Launch API. Each change goes
//! to the [`ResourceWriter`](crate::catalog::ResourceWriter) — the dev runtime or the Kubernetes
//! API — so the API and `kubectl get mep` always see the same objects.

use std::sync::Arc;

use super::openapi::answers::{
    BadRequest, Invalid, NotFound, ReadOnly, TooLarge, TooMany, Unauthorized, Unavailable,
};
use super::views::{BundleCreated, BundleV2, BundlesV2, Deleted, EndpointChange};
use super::{AppState, auth::Principal, error::AppError, launch, routes, views};
use crate::catalog::ResourceWriter;
use crate::crd::{BundleId, ModelBundle, ModelEndpoint, namespace_of};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
};

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

/// Creates an endpoint in the caller's team's namespace.
#[utoipa::path(post, path = "/v1/model-endpoints", tag = "endpoints",
    request_body = launch::CreateEndpoint,
    responses((status = 200, body = EndpointChange), BadRequest, Unauthorized, NotFound, ReadOnly,
        TooLarge, Invalid, TooMany, Unavailable))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointChange>, AppError> {
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
    Ok(Json(EndpointChange::new()))
}

/// Changes an endpoint: absent or null fields keep their value, `labels` merge, and
/// `post_inference_hooks` are kept when omitted.
#[utoipa::path(put, path = "/v1/model-endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path)), request_body = launch::UpdateEndpoint,
    responses((status = 200, body = EndpointChange), BadRequest, Unauthorized, NotFound, ReadOnly,
        TooLarge, Invalid, TooMany, Unavailable))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointChange>, AppError> {
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
    Ok(Json(EndpointChange::new()))
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

/// Deletes an endpoint, its workers and its queue.
#[utoipa::path(delete, path = "/v1/model-endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path)),
    responses((status = 200, body = Deleted), Unauthorized, NotFound, ReadOnly, Unavailable))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, AppError> {
    let writer = writer(&state)?;
    let endpoint = routes::visible_endpoint(&state, &principal, &id)?;
    writer.delete_endpoint(endpoint).await?;
    tracing::info!(endpoint = %id, "endpoint deleted");
    Ok(Json(Deleted { deleted: true }))
}

/// Creates a bundle in the caller's team's namespace.
#[utoipa::path(post, path = "/v2/model-bundles", tag = "bundles",
    request_body = launch::CreateBundle,
    responses((status = 200, body = BundleCreated), BadRequest, Unauthorized, ReadOnly, TooLarge,
        Invalid, Unavailable))]
pub async fn create_bundle(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BundleCreated>, AppError> {
    let request: launch::CreateBundle = routes::parse_body(body, "model bundle request")?;
    let writer = writer(&state)?;
    let bundle = launch::new_bundle(&namespace_for(&principal), request)?;
    let id = bundle.bundle().bundle_id();
    writer.apply_bundle(bundle).await?;
    Ok(Json(BundleCreated {
        model_bundle_id: id.to_string(),
    }))
}

/// [`clone_bundle`] under its `/v1` path.
#[utoipa::path(post, path = "/v1/model-bundles/clone-with-changes", tag = "bundles",
    request_body = launch::CloneBundle,
    responses((status = 200, body = BundleCreated), BadRequest, Unauthorized, NotFound, ReadOnly,
        TooLarge, Invalid, Unavailable))]
pub async fn clone_v1_bundle(
    state: State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BundleCreated>, AppError> {
    clone_bundle(state, principal, body).await
}

/// Copies a bundle under a new name, with the request's changes; answers the copy's id.
#[utoipa::path(post, path = "/v2/model-bundles/clone-with-changes", tag = "bundles",
    request_body = launch::CloneBundle,
    responses((status = 200, body = BundleCreated), BadRequest, Unauthorized, NotFound, ReadOnly,
        TooLarge, Invalid, Unavailable))]
pub async fn clone_bundle(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BundleCreated>, AppError> {
    let request: launch::CloneBundle = routes::parse_body(body, "model bundle clone request")?;
    let writer = writer(&state)?;
    let original = routes::visible_bundle(&state, &principal, &request.original_model_bundle_id)?;
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let clone = launch::cloned_bundle(&original, &request, suffix)?;
    let id = clone.bundle().bundle_id();
    writer.apply_bundle(clone).await?;
    tracing::info!(bundle = %id, original = %request.original_model_bundle_id, "bundle cloned");
    Ok(Json(BundleCreated {
        model_bundle_id: id.to_string(),
    }))
}

/// `POST /v1/model-bundles` takes cloudpickled Python bundles, which ferry does not run.
#[utoipa::path(
    post,
    path = "/v1/model-bundles",
    tag = "bundles",
    responses(BadRequest)
)]
pub async fn create_v1_bundle() -> AppError {
    AppError::BadRequest(
        "ferry runs runnable_image bundles: create them with POST /v2/model-bundles".into(),
    )
}

/// The caller's team's bundles.
#[utoipa::path(get, path = "/v2/model-bundles", tag = "bundles",
    responses((status = 200, body = BundlesV2), Unauthorized))]
pub async fn list_v2_bundles(
    State(state): State<AppState>,
    principal: Principal,
) -> Json<BundlesV2> {
    let bundles = state.catalog.bundles(principal.scope());
    Json(BundlesV2 {
        model_bundles: bundles.iter().map(|b| views::bundle_v2(b)).collect(),
    })
}

/// A bundle.
#[utoipa::path(get, path = "/v2/model-bundles/{id}", tag = "bundles", params(("id" = String, Path)),
    responses((status = 200, body = BundleV2), Unauthorized, NotFound))]
pub async fn get_v2_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<BundleV2>, AppError> {
    let bundle = routes::visible_bundle(&state, &principal, &id)?;
    Ok(Json(views::bundle_v2(&bundle)))
}

/// The newest bundle of a name.
#[utoipa::path(get, path = "/v2/model-bundles/latest", tag = "bundles",
    params(routes::ModelNameQuery),
    responses((status = 200, body = BundleV2), BadRequest, Unauthorized, NotFound))]
pub async fn latest_v2_bundle(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<routes::ModelNameQuery>,
) -> Result<Json<BundleV2>, AppError> {
    let bundle = routes::latest_visible_bundle(&state, &principal, query)?;
    Ok(Json(views::bundle_v2(&bundle)))
}
