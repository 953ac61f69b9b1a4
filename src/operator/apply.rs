//! Effects on the API server: server-side apply of children and status with the field manager
//! `ferry-operator`, reading the referenced bundle and Secrets, removing children an endpoint no
//! longer needs. A child is written or deleted only when it is the endpoint's own: an object of
//! the same name that ferry does not own is left alone and reported as a clash.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::error_boundary::DeserializeGuard;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::crd::names::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::crd::{ModelEndpoint, ModelEndpointStatus};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "ferry-operator";

fn apply_params() -> PatchParams {
    // Force: the operator is the only writer of the fields it sets.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The object `name` in `namespace`, or `None` when it does not exist: an endpoint's bundle, or
/// its worker Secret whole (whose stored NATS credentials are kept while fresh).
pub async fn get_named<K>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

/// The labels of a Secret, read without its data (`None` when it does not exist): whether it
/// opted in decides whether its data is read at all.
pub async fn get_secret_labels(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
    let meta = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_metadata_opt(name)
        .await?;
    Ok(meta.map(|meta| meta.metadata.labels.unwrap_or_default()))
}

/// The data of a Secret (`None` when it does not exist).
pub async fn get_secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    let secret = get_named::<Secret>(client, namespace, name).await?;
    Ok(secret.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect()
    }))
}

/// Whose an existing object is, as far as the operator may act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Absent,
    /// Owned by the endpoint, or labelled as ferry's and controlled by nothing (orphaned).
    Ours,
    /// Someone else's: never written, never deleted.
    Foreign,
}

/// Judges `existing` against the endpoint whose uid is `owner_uid`.
pub fn ownership(existing: Option<&ObjectMeta>, owner_uid: &str) -> Ownership {
    let Some(meta) = existing else {
        return Ownership::Absent;
    };
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    if owners.iter().any(|owner| owner.uid == owner_uid) {
        return Ownership::Ours;
    }
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGED_BY);
    let controlled = owners.iter().any(|owner| owner.controller == Some(true));
    if labelled && !controlled {
        Ownership::Ours
    } else {
        Ownership::Foreign
    }
}

/// What applying a child came to.
pub enum Applied<K> {
    /// As stored, with its current status.
    Stored(K),
    /// An object of that name exists and is not the endpoint's: left as it was.
    NotOurs,
}

/// A namespaced object the operator applies.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// Server-side applies `child` when it is absent or the endpoint's (`owner_uid`). An absent
/// object is applied without force, so one created meanwhile by someone else makes the apply
/// conflict instead of being taken over.
pub async fn apply_child<K>(
    client: &Client,
    child: &K,
    owner_uid: &str,
) -> Result<Applied<K>, kube::Error>
where
    K: Child,
{
    let api = Api::<K>::namespaced(client.clone(), &child.namespace().unwrap_or_default());
    let existing = api.get_metadata_opt(&child.name_any()).await?;
    apply_child_over(
        client,
        child,
        existing.as_ref().map(|e| &e.metadata),
        owner_uid,
    )
    .await
}

/// [`apply_child`] when the existing object (`existing`, its metadata) was read already.
pub async fn apply_child_over<K>(
    client: &Client,
    child: &K,
    existing: Option<&ObjectMeta>,
    owner_uid: &str,
) -> Result<Applied<K>, kube::Error>
where
    K: Child,
{
    let name = child.name_any();
    let api = Api::<K>::namespaced(client.clone(), &child.namespace().unwrap_or_default());
    let params = match ownership(existing, owner_uid) {
        Ownership::Foreign => return Ok(Applied::NotOurs),
        Ownership::Absent => PatchParams::apply(FIELD_MANAGER),
        Ownership::Ours => apply_params(),
    };
    match api.patch(&name, &params, &Patch::Apply(child)).await {
        Ok(stored) => Ok(Applied::Stored(stored)),
        Err(error) if status_code(&error) == Some(409) => Ok(Applied::NotOurs),
        Err(error) => Err(error),
    }
}

/// Deletes a child the endpoint no longer needs when it is the endpoint's (`owner_uid`); one
/// that is gone is fine. Answers false when the object is someone else's and was left alone.
pub async fn delete_child<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<bool, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_metadata_opt(name).await? else {
        return Ok(true);
    };
    if ownership(Some(&existing.metadata), owner_uid) == Ownership::Foreign {
        return Ok(false);
    }
    // The precondition makes the delete fail rather than remove an object recreated meanwhile.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(true),
        Err(error) if status_code(&error) == Some(409) => Ok(false),
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(owner: Option<(&str, bool)>, managed: bool) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner.map(|(uid, controller)| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(controller),
                    ..Default::default()
                }]
            }),
            labels: managed.then(|| BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())])),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_endpoints_own_or_orphaned_ferry_objects_are_ours() {
        let ours = "uid-demo";
        assert_eq!(ownership(None, ours), Ownership::Absent);
        assert_eq!(
            ownership(Some(&meta(Some((ours, true)), true)), ours),
            Ownership::Ours
        );
        assert_eq!(ownership(Some(&meta(None, true)), ours), Ownership::Ours);
        assert_eq!(
            ownership(Some(&meta(None, false)), ours),
            Ownership::Foreign
        );
        // Another controller's object, even labelled as ferry's (an earlier endpoint of the
        // same name, or a copy), is not taken over.
        assert_eq!(
            ownership(Some(&meta(Some(("uid-other", true)), true)), ours),
            Ownership::Foreign
        );
        assert_eq!(
            ownership(Some(&meta(Some(("uid-other", false)), false)), ours),
            Ownership::Foreign
        );
    }
}
