//! Effects on the API server: server-side apply of children and status with the field manager
//! `ferry-operator`, reading the referenced bundle and Secrets, removing children an endpoint no
//! longer needs.

use k8s_openapi::api::apps::v1::Deployment;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{ModelBundle, ModelEndpoint, ModelEndpointStatus};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "ferry-operator";

fn apply_params() -> PatchParams {
    // Force: the operator is the only writer of the fields it sets.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The bundle `name` in `namespace`, or `None` when it does not exist.
pub async fn get_bundle(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<ModelBundle>, kube::Error> {
    Api::<ModelBundle>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

/// The data of a Secret (`None` when it does not exist).
pub async fn get_secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(secret.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect()
    }))
}

/// Applies the worker Deployment; answers it as stored, with its current status.
pub async fn apply_deployment(
    client: &Client,
    deployment: &Deployment,
) -> Result<Deployment, kube::Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .patch(
            &deployment.name_any(),
            &apply_params(),
            &Patch::Apply(deployment),
        )
        .await
}

/// Applies a Secret the operator owns (an endpoint's worker Secret).
pub async fn apply_secret(client: &Client, secret: &Secret) -> Result<Secret, kube::Error> {
    let namespace = secret.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(&secret.name_any(), &apply_params(), &Patch::Apply(secret))
        .await
}

pub async fn apply_service(client: &Client, service: &Service) -> Result<Service, kube::Error> {
    let namespace = service.namespace().unwrap_or_default();
    Api::<Service>::namespaced(client.clone(), &namespace)
        .patch(&service.name_any(), &apply_params(), &Patch::Apply(service))
        .await
}

/// Deletes a Service the endpoint no longer needs; one that is already gone is fine.
pub async fn delete_service(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let api = Api::<Service>::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(error) if is_not_found(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Applies the endpoint's whole status (fields left out are removed).
pub async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &ModelEndpointStatus,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": ModelEndpoint::api_version(&()),
        "kind": ModelEndpoint::kind(&()),
        "status": status,
    });
    // The answer is read guarded: the status of an endpoint that does not parse is patched too.
    Api::<DeserializeGuard<ModelEndpoint>>::namespaced(client.clone(), namespace)
        .patch_status(name, &apply_params(), &Patch::Apply(body))
        .await
        .map(drop)
}

pub fn is_not_found(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}

/// True when the API server refused the object itself (it will refuse it again).
pub fn is_rejected(error: &kube::Error) -> bool {
    matches!(status_code(error), Some(400 | 422))
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
