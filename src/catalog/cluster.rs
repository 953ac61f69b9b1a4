//! The catalog in a cluster: ModelEndpoints and ModelBundles watched through the Kubernetes API
//! (every namespace the gateway may read), and API changes written back with server-side apply,
//! so `kubectl get mep` and the Launch API always show the same objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Catalog, NamedSecret, ResourceWriter, WriteError};
use crate::admin::Readiness;
use crate::crd::names::{CALLBACK_CREDENTIALS_LABEL, MANAGED_BY_LABEL, service_url};
use crate::crd::validate::{ValidatedBundle, ValidatedEndpoint};
use crate::crd::{EndpointType, ModelBundle, ModelEndpoint, namespace_of};
use crate::queue::{GatewayQueue, QueueSpec};

/// Field manager of the gateway's server-side applies.
pub const FIELD_MANAGER: &str = "ferry-gateway";

/// Keeps `catalog` equal to the cluster's ModelEndpoints and ModelBundles until the process ends;
/// `readiness` turns true once both have been listed.
pub async fn watch(client: Client, catalog: Catalog, readiness: Readiness) {
    let endpoints_listed = Readiness::default();
    let bundles_listed = Readiness::default();
    let endpoints = follow::<ModelEndpoint>(client.clone(), endpoints_listed.clone(), {
        let catalog = catalog.clone();
        move |change| match change {
            Change::Listed(all) => {
                all.iter()
                    .for_each(|endpoint| register_service(&catalog, endpoint));
                catalog.replace_endpoints(all);
            }
            Change::Applied(endpoint) => {
                register_service(&catalog, &endpoint);
                catalog.put_endpoint(endpoint);
            }
            Change::Deleted(endpoint) => catalog.remove_endpoint(&endpoint.endpoint_id()),
        }
    });
    let bundles =
        follow::<ModelBundle>(client, bundles_listed.clone(), move |change| match change {
            Change::Listed(all) => catalog.replace_bundles(all),
            Change::Applied(bundle) => catalog.put_bundle(bundle),
            Change::Deleted(bundle) => catalog.remove_bundle(&bundle.bundle_id()),
        });
    let ready = async {
        endpoints_listed.ready().await;
        bundles_listed.ready().await;
        readiness.set_ready();
        futures::future::pending::<()>().await;
    };
    tokio::join!(endpoints, bundles, ready);
}

/// Sync and streaming requests go to the endpoint's Service, which spreads them over its pods.
fn register_service(catalog: &Catalog, endpoint: &ModelEndpoint) {
    if endpoint.spec.endpoint_type != EndpointType::Async {
        catalog.set_workers(&endpoint.endpoint_id(), vec![service_url(endpoint)]);
    }
}

enum Change<K> {
    /// Every object, after a (re)list.
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// Feeds the watch of `K` into `apply`, skipping (and logging) objects that do not parse so one
/// malformed object cannot hide the others.
async fn follow<K>(client: Client, listed: Readiness, apply: impl Fn(Change<K>))
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<DeserializeGuard<K>> = Api::all(client);
    let events = watcher::watcher(api, watcher::Config::default());
    let events = kube::runtime::WatchStreamExt::default_backoff(events);
    let mut events = std::pin::pin!(events);
    let mut buffer = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(object)) => buffer.extend(valid(object)),
            Ok(Event::InitDone) => {
                apply(Change::Listed(std::mem::take(&mut buffer)));
                listed.set_ready();
            }
            Ok(Event::Apply(object)) => valid(object)
                .into_iter()
                .for_each(|object| apply(Change::Applied(object))),
            Ok(Event::Delete(object)) => valid(object)
                .into_iter()
                .for_each(|object| apply(Change::Deleted(object))),
            Err(error) => tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying"),
        }
    }
}

fn valid<K: Resource<DynamicType = ()>>(object: DeserializeGuard<K>) -> Option<K> {
    match object.0 {
        Ok(object) => Some(object),
        Err(invalid) => {
            let name = invalid.metadata.name.unwrap_or_default();
            tracing::warn!(kind = %K::kind(&()), %name, error = %invalid.error, "skipping an object that does not parse");
            None
        }
    }
}

/// Writes the API's changes to the cluster.
pub struct ClusterWriter {
    pub client: Client,
    pub catalog: Catalog,
    pub queue: GatewayQueue,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> WriteError {
    WriteError::Unavailable(Box::new(error))
}

/// What the gateway owns of a resource: its name, namespace and spec; never status or server
/// bookkeeping, so the apply claims no field it does not mean to.
fn applied_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        ..Default::default()
    }
}

/// Labels of the Secrets the gateway writes: opted in as callback credentials, and marked as
/// the gateway's so it never overwrites a Secret someone else keeps under that name.
fn secret_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (CALLBACK_CREDENTIALS_LABEL.to_owned(), "true".to_owned()),
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
    ])
}

/// True when an existing Secret with these labels is one the gateway wrote.
fn is_gateway_secret(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == FIELD_MANAGER)
}

impl ClusterWriter {
    async fn apply_secret(&self, secret: NamedSecret) -> Result<(), WriteError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace);
        let existing = api
            .get_metadata_opt(&secret.name)
            .await
            .map_err(unavailable)?;
        let clash = || {
            WriteError::Invalid(format!(
                "a Secret named {} exists in namespace {} and was not written by ferry; it is left alone: rename the endpoint or remove the Secret",
                secret.name, secret.namespace
            ))
        };
        let existing_is_ours = existing.is_some();
        if existing.is_some_and(|e| !is_gateway_secret(e.metadata.labels.as_ref())) {
            return Err(clash());
        }
        let object = Secret {
            metadata: ObjectMeta {
                name: Some(secret.name.clone()),
                namespace: Some(secret.namespace.clone()),
                labels: Some(secret_labels()),
                ..Default::default()
            },
            data: Some(
                secret
                    .data
                    .into_iter()
                    .map(|(key, value)| (key, ByteString(value)))
                    .collect(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        // Force only over the gateway's own Secret; a new one is applied without, so a Secret
        // created meanwhile by someone else makes the apply conflict instead of being taken.
        let params = if existing_is_ours {
            params()
        } else {
            PatchParams::apply(FIELD_MANAGER)
        };
        match api
            .patch(&secret.name, &params, &Patch::Apply(&object))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(clash()),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn apply(
        &self,
        validated: ValidatedEndpoint,
        secrets: Vec<NamedSecret>,
    ) -> Result<(), WriteError> {
        for secret in secrets {
            self.apply_secret(secret).await?;
        }
        let endpoint = validated.endpoint();
        let namespace = namespace_of(endpoint);
        let api: Api<ModelEndpoint> = Api::namespaced(self.client.clone(), &namespace);
        let object = ModelEndpoint {
            metadata: applied_meta(&endpoint.metadata),
            spec: endpoint.spec.clone(),
            status: None,
        };
        let applied = api
            .patch(&endpoint.name_any(), &params(), &Patch::Apply(&object))
            .await
            .map_err(unavailable)?;
        if validated.spec().endpoint_type == EndpointType::Async {
            // The operator ensures the queue too; doing it here lets the first task in right away.
            self.queue
                .open_task_queue(&QueueSpec::for_endpoint(&validated))
                .await
                .map_err(unavailable)?;
        }
        // Visible at once to the client's next call, before the watch catches up.
        self.catalog.put_endpoint(applied);
        Ok(())
    }

    async fn delete(&self, endpoint: Arc<ModelEndpoint>) -> Result<(), WriteError> {
        let api: Api<ModelEndpoint> =
            Api::namespaced(self.client.clone(), &namespace_of(endpoint.as_ref()));
        match api
            .delete(&endpoint.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn put_bundle(&self, bundle: ModelBundle) -> Result<(), WriteError> {
        let api: Api<ModelBundle> = Api::namespaced(self.client.clone(), &namespace_of(&bundle));
        let object = ModelBundle {
            metadata: applied_meta(&bundle.metadata),
            spec: bundle.spec.clone(),
        };
        let applied = api
            .patch(&bundle.name_any(), &params(), &Patch::Apply(&object))
            .await
            .map_err(unavailable)?;
        self.catalog.put_bundle(applied);
        Ok(())
    }
}

impl ResourceWriter for ClusterWriter {
    fn apply_endpoint(
        &self,
        endpoint: ValidatedEndpoint,
        secrets: Vec<NamedSecret>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(self.apply(endpoint, secrets))
    }

    fn delete_endpoint(
        &self,
        endpoint: Arc<ModelEndpoint>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(self.delete(endpoint))
    }

    fn apply_bundle(&self, bundle: ValidatedBundle) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(self.put_bundle(bundle.into_bundle()))
    }
}
