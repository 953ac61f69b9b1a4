//! The gateway's in-memory view of the endpoints and bundles it serves, kept current by whoever
//! owns the resources (manifests and the dev runtime in `ferry dev`, manifests in the static
//! gateway), and the [`ResourceWriter`] through which the API changes them. Reads are cheap: the
//! Launch client looks an endpoint up by name before every prediction.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tokio::sync::watch;

use crate::crd::validate::{ValidatedBundle, ValidatedEndpoint};
use crate::crd::{
    BundleId, EndpointId, ModelBundle, ModelEndpoint, ModelEndpointStatus, namespace_of,
};
pub mod cluster;

#[derive(Default)]
struct Snapshot {
    endpoints: BTreeMap<EndpointId, Arc<ModelEndpoint>>,
    bundles: BTreeMap<BundleId, Arc<ModelBundle>>,
    /// Base URLs of the serving workers of sync and streaming endpoints.
    workers: BTreeMap<EndpointId, Vec<String>>,
}

#[derive(Clone, Default)]
pub struct Catalog {
    snapshot: Arc<RwLock<Snapshot>>,
    /// Bumped after every change, for readers waiting for one (a worker to appear).
    changed: Arc<watch::Sender<()>>,
}

impl Catalog {
    pub fn endpoint(&self, id: &EndpointId) -> Option<Arc<ModelEndpoint>> {
        self.read().endpoints.get(id).cloned()
    }

    /// Endpoints visible in `namespace` (every namespace when `None`), optionally by exact name.
    pub fn find_endpoints(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Vec<Arc<ModelEndpoint>> {
        self.read()
            .endpoints
            .values()
            .filter(|endpoint| in_scope(namespace, &namespace_of(endpoint.as_ref())))
            .filter(|endpoint| name.is_none_or(|name| endpoint.name_any() == name))
            .cloned()
            .collect()
    }

    pub fn bundle(&self, id: &BundleId) -> Option<Arc<ModelBundle>> {
        self.read().bundles.get(id).cloned()
    }

    /// Bundles visible in `namespace` (every namespace when `None`).
    pub fn bundles(&self, namespace: Option<&str>) -> Vec<Arc<ModelBundle>> {
        let snapshot = self.read();
        let visible = snapshot
            .bundles
            .values()
            .filter(|bundle| in_scope(namespace, &namespace_of(bundle.as_ref())));
        visible.cloned().collect()
    }

    /// The newest bundle with this name visible in `namespace` (every namespace when `None`).
    pub fn latest_bundle(&self, namespace: Option<&str>, name: &str) -> Option<Arc<ModelBundle>> {
        self.read()
            .bundles
            .values()
            .filter(|bundle| {
                bundle.name_any() == name && in_scope(namespace, &namespace_of(bundle.as_ref()))
            })
            .max_by_key(|bundle| bundle.metadata.creation_timestamp.clone())
            .cloned()
    }

    /// Adds or replaces an endpoint, stamping its creation time when it has none.
    pub fn put_endpoint(&self, mut endpoint: ModelEndpoint) {
        endpoint
            .metadata
            .creation_timestamp
            .get_or_insert_with(|| Time(jiff::Timestamp::now()));
        self.update(|snapshot| {
            snapshot
                .endpoints
                .insert(endpoint.endpoint_id(), Arc::new(endpoint));
        });
    }

    /// Replaces every endpoint (after a full list).
    pub fn replace_endpoints(&self, endpoints: Vec<ModelEndpoint>) {
        let map = endpoints
            .into_iter()
            .map(stamped)
            .map(|endpoint| (endpoint.endpoint_id(), Arc::new(endpoint)))
            .collect();
        self.update(|snapshot| snapshot.endpoints = map);
    }

    /// Replaces every bundle (after a full list).
    pub fn replace_bundles(&self, bundles: Vec<ModelBundle>) {
        let map = bundles
            .into_iter()
            .map(stamped)
            .map(|bundle| (bundle.bundle_id(), Arc::new(bundle)))
            .collect();
        self.update(|snapshot| snapshot.bundles = map);
    }

    pub fn remove_bundle(&self, id: &BundleId) {
        self.update(|snapshot| {
            snapshot.bundles.remove(id);
        });
    }

    pub fn remove_endpoint(&self, id: &EndpointId) {
        self.update(|snapshot| {
            snapshot.endpoints.remove(id);
        });
    }

    /// Adds or replaces a bundle, stamping its creation time when it has none.
    pub fn put_bundle(&self, mut bundle: ModelBundle) {
        bundle
            .metadata
            .creation_timestamp
            .get_or_insert_with(|| Time(jiff::Timestamp::now()));
        self.update(|snapshot| {
            snapshot
                .bundles
                .insert(bundle.bundle_id(), Arc::new(bundle));
        });
    }

    /// Serving workers of a sync or streaming endpoint, as base URLs.
    pub fn workers(&self, id: &EndpointId) -> Vec<String> {
        self.read().workers.get(id).cloned().unwrap_or_default()
    }

    pub fn set_workers(&self, id: &EndpointId, urls: Vec<String>) {
        self.update(|snapshot| {
            snapshot.workers.insert(id.clone(), urls);
        });
    }

    pub fn add_worker(&self, id: &EndpointId, url: String) {
        self.update(|snapshot| snapshot.workers.entry(id.clone()).or_default().push(url));
    }

    pub fn remove_worker(&self, id: &EndpointId, url: &str) {
        self.update(|snapshot| {
            if let Some(urls) = snapshot.workers.get_mut(id) {
                urls.retain(|known| known != url);
            }
        });
    }

    pub fn set_status(&self, id: &EndpointId, status: ModelEndpointStatus) {
        self.update(|snapshot| {
            if let Some(endpoint) = snapshot.endpoints.get_mut(id) {
                Arc::make_mut(endpoint).status = Some(status);
            }
        });
    }

    /// Resolves after the next change; subscribe before reading what the change may alter.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        // Every change is one map operation: a panicked writer left the map whole.
        change(
            &mut self
                .snapshot
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.changed.send_replace(());
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        // A writer that panicked left a whole snapshot behind (every write is one assignment).
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The resource with a creation time: its own (from the API server), else now (from a manifest).
fn stamped<K: kube::Resource>(mut resource: K) -> K {
    resource
        .meta_mut()
        .creation_timestamp
        .get_or_insert_with(|| Time(jiff::Timestamp::now()));
    resource
}

fn in_scope(scope: Option<&str>, namespace: &str) -> bool {
    scope.is_none_or(|scope| scope == namespace)
}

/// A Secret to store beside a resource (callback credentials given through the API).
#[derive(Clone)]
pub struct NamedSecret {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for NamedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values: they are credentials.
        write!(
            f,
            "Secret {}/{} (keys {:?})",
            self.namespace,
            self.name,
            self.data.keys().collect::<Vec<_>>()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The change cannot be made as asked; the message says why (a 4xx).
    #[error("{0}")]
    Invalid(String),
    /// Storing the change failed; retrying may help (a 503).
    #[error("storing the change failed")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the API's changes to endpoints and bundles go: the dev runtime in `ferry dev`, the
/// Kubernetes API in a cluster. The catalog reflects a change once it is accepted.
pub trait ResourceWriter: Send + Sync {
    /// Creates or replaces an endpoint, storing `secrets` first.
    fn apply_endpoint(
        &self,
        endpoint: ValidatedEndpoint,
        secrets: Vec<NamedSecret>,
    ) -> futures::future::BoxFuture<'_, Result<(), WriteError>>;
    fn delete_endpoint(
        &self,
        endpoint: Arc<ModelEndpoint>,
    ) -> futures::future::BoxFuture<'_, Result<(), WriteError>>;
    /// Creates or replaces a bundle.
    fn apply_bundle(
        &self,
        bundle: ValidatedBundle,
    ) -> futures::future::BoxFuture<'_, Result<(), WriteError>>;
}
