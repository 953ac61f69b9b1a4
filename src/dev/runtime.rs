//! The dev runtime: what the operator and the cluster do, on one machine. It owns the endpoints,
//! bundles and Secrets of a `ferry dev` session — validated, from manifests at start and from
//! the API after — prepares each endpoint's queue and callback policy, and runs its local
//! workers, restarting them when the endpoint or its bundle changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use kube::ResourceExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::nats::ForwarderAccess;
use super::pool::Pool;
pub use super::pool::Scaling;
use super::python::Environments;
use crate::callback::policy::resolve_policy;
use crate::catalog::{Catalog, NamedSecret, ResourceWriter, WriteError};
use crate::crd::validate::{ValidatedBundle, ValidatedEndpoint, validate};
use crate::crd::{EndpointId, ModelBundle, ModelEndpoint, namespace_of};
use crate::forwarder::{ForwarderMetrics, InputFetcher};
use crate::process_group::ProcessGroup;
use crate::queue::{ForwarderQueue, Queue, QueueSettings, QueueSpec};
use crate::seal::KeyRing;

type SecretData = BTreeMap<String, Vec<u8>>;

/// One endpoint's running workers.
struct Run {
    /// The endpoint and bundle specs the workers were started from.
    started_from: String,
    stop: CancellationToken,
    workers: JoinHandle<()>,
}

/// How local workers start: their forwarders' access to NATS, their model processes' group.
pub struct WorkerStarts {
    pub forwarders: ForwarderAccess,
    /// The group model processes start in: they die with `ferry dev`.
    pub children: Arc<ProcessGroup>,
    /// Fetches the inputs of tasks given by URL (loopback and files allowed, as in `ferry dev`).
    pub inputs: InputFetcher,
    /// Where artifact bundles get their Python environments.
    pub environments: Arc<Environments>,
}

pub struct Runtime {
    /// Every role's connection: `ferry dev` plays them all.
    queue: Queue,
    catalog: Catalog,
    metrics: Arc<ForwarderMetrics>,
    cancel: CancellationToken,
    scaling: Scaling,
    /// Seals callback policies; derives the serving tokens of local sync workers.
    ring: Arc<KeyRing>,
    starts: WorkerStarts,
    secrets: Mutex<HashMap<(String, String), SecretData>>,
    /// Serializes changes, so two API calls cannot start workers for one endpoint twice.
    runs: tokio::sync::Mutex<HashMap<EndpointId, Run>>,
}

impl Runtime {
    pub fn new(
        queue: Queue,
        catalog: Catalog,
        metrics: Arc<ForwarderMetrics>,
        cancel: CancellationToken,
        scaling: Scaling,
        ring: Arc<KeyRing>,
        starts: WorkerStarts,
    ) -> Self {
        Runtime {
            queue,
            catalog,
            metrics,
            cancel,
            scaling,
            ring,
            starts,
            secrets: Mutex::default(),
            runs: Default::default(),
        }
    }

    pub fn put_secret(&self, secret: NamedSecret) {
        self.lock_secrets()
            .insert((secret.namespace, secret.name), secret.data);
    }

    /// Prepares the endpoint's queue and callback policy, publishes it, and (re)starts its
    /// workers when its spec or its bundle changed.
    pub async fn apply(&self, validated: ValidatedEndpoint) -> Result<(), WriteError> {
        let endpoint = validated.endpoint();
        let namespace = namespace_of(endpoint);
        let id = endpoint.endpoint_id();
        let secret = |name: &str| {
            self.lock_secrets()
                .get(&(namespace.clone(), name.to_owned()))
                .cloned()
        };
        let policy = resolve_policy(&id, &endpoint.spec, secret, &self.ring)
            .map_err(|error| WriteError::Invalid(format!("{}: {error}", error.reason())))?;
        self.queue
            .operator()
            .prepare_endpoint(&id, &policy, QueueSpec::of(&validated).as_ref())
            .await
            .map_err(|error| WriteError::Unavailable(Box::new(error)))?;
        let started_from = format!("{:?}{:?}", endpoint.spec, validated.bundle().spec);
        let mut runs = self.runs.lock().await;
        let keep = runs
            .get(&id)
            .is_some_and(|run| run.started_from == started_from);
        let status = self
            .catalog
            .endpoint(&id)
            .and_then(|current| current.status.clone());
        self.catalog.put_endpoint(ModelEndpoint {
            status,
            ..endpoint.clone()
        });
        if keep {
            return Ok(());
        }
        if let Some(old) = runs.remove(&id) {
            stop(old).await;
        }
        let forwarder_queue = self
            .starts
            .forwarders
            .queue(&id, &self.queue, QueueSettings::default())
            .await
            .map_err(|error| WriteError::Unavailable(Box::new(error)))?;
        let (endpoint, bundle) = validated.into_parts();
        let run = self.start(
            Arc::new(endpoint),
            Arc::new(bundle),
            forwarder_queue,
            started_from,
        );
        runs.insert(id, run);
        Ok(())
    }

    /// Stops the endpoint's workers and forgets it. Its queued tasks go with it.
    pub async fn delete(&self, endpoint: &ModelEndpoint) -> Result<(), WriteError> {
        let id = endpoint.endpoint_id();
        if let Some(run) = self.runs.lock().await.remove(&id) {
            stop(run).await;
        }
        self.catalog.remove_endpoint(&id);
        self.queue
            .operator()
            .retire_endpoint(&id)
            .await
            .map_err(|error| WriteError::Unavailable(Box::new(error)))?;
        Ok(())
    }

    /// Stores the bundle and restarts the endpoints that run it.
    pub async fn put_bundle(&self, bundle: ValidatedBundle) -> Result<(), WriteError> {
        let bundle = bundle.into_bundle();
        let namespace = namespace_of(&bundle);
        let name = bundle.name_any();
        self.catalog.put_bundle(bundle.clone());
        let users = self.catalog.find_endpoints(Some(&namespace), None);
        for endpoint in users
            .into_iter()
            .filter(|endpoint| endpoint.spec.bundle == name)
        {
            let validated = validate(&endpoint, &bundle)
                .map_err(|invalid| WriteError::Invalid(invalid.to_string()))?;
            self.apply(validated).await?;
        }
        Ok(())
    }

    fn start(
        &self,
        endpoint: Arc<ModelEndpoint>,
        bundle: Arc<ModelBundle>,
        forwarder_queue: ForwarderQueue,
        started_from: String,
    ) -> Run {
        let stop = self.cancel.child_token();
        let pool = Pool {
            serving_token: self.ring.serving_token(&endpoint.endpoint_id()),
            endpoint,
            bundle,
            catalog: self.catalog.clone(),
            queue: self.queue.operator(),
            forwarder_queue,
            metrics: self.metrics.clone(),
            scaling: self.scaling.clone(),
            children: self.starts.children.clone(),
            inputs: self.starts.inputs.clone(),
            environments: self.starts.environments.clone(),
        };
        let workers = tokio::spawn(pool.run(stop.clone()));
        Run {
            started_from,
            stop,
            workers,
        }
    }

    /// Stops every endpoint's workers, letting them finish the tasks they hold.
    pub async fn stop_all(&self) {
        let runs: Vec<Run> = self.runs.lock().await.drain().map(|(_, run)| run).collect();
        futures::future::join_all(runs.into_iter().map(stop)).await;
    }

    fn lock_secrets(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), SecretData>> {
        // Each critical section is one map operation: a poisoned map is still whole.
        self.secrets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stops a run's workers and waits until they have finished the tasks they hold.
async fn stop(run: Run) {
    run.stop.cancel();
    let _ = run.workers.await;
}

impl ResourceWriter for Runtime {
    fn apply_endpoint(
        &self,
        endpoint: ValidatedEndpoint,
        secrets: Vec<NamedSecret>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            for secret in secrets {
                self.put_secret(secret);
            }
            self.apply(endpoint).await
        })
    }

    fn delete_endpoint(
        &self,
        endpoint: Arc<ModelEndpoint>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move { self.delete(&endpoint).await })
    }

    fn apply_bundle(&self, bundle: ValidatedBundle) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(self.put_bundle(bundle))
    }
}
