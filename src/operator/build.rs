//! Pure construction of what a validated endpoint needs: the worker Deployment (the bundle's
//! model container beside the `ferry forwarder` sidecar), a Service for sync and streaming
//! endpoints, and the queue spec for async ones. Owns every child name, label and annotation.

mod artifact;
mod security;
pub mod worker_secret;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, Toleration,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::names::{
    ENDPOINT_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_PORT, service_name, truncated_label,
};
use crate::crd::validate::{ValidatedEndpoint, reason};
use crate::crd::{EndpointType, ModelEndpoint, namespace_of};
use crate::queue::QueueSpec;
use crate::worker::env as forwarder_env;
use crate::worker::{FORWARDER_ADMIN_PORT, FORWARDER_SERVE_PORT, MODEL_PORT_ENV};
pub use artifact::RuntimeImages;
pub use security::WorkerNetworkPolicy;

/// Hash of the worker pod template: it changes exactly when the pods must be replaced.
pub const CONFIG_HASH_ANNOTATION: &str = "ferry.dev/config-hash";

/// Name of the model container and of its port.
pub const MODEL_CONTAINER: &str = "model";
pub const FORWARDER_CONTAINER: &str = "forwarder";
const HTTP_PORT_NAME: &str = "http";
const ADMIN_PORT_NAME: &str = "admin";
const SERVE_PORT_NAME: &str = "serve";
/// Extended resource name of NVIDIA GPUs (device plugin).
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Time a stopping worker gets beyond the longest task, to record results and callbacks.
const DRAIN_MARGIN: Duration = Duration::from_secs(30);

/// Operator-wide settings that shape every worker pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub forwarder_image: String,
    /// NATS URL the forwarder sidecars connect to.
    pub nats_url: String,
    /// How long results are kept; handed to the forwarders.
    pub result_retention: Duration,
    /// Longest a model may take on one task; sizes the drain time of a stopping pod.
    pub predict_timeout: Duration,
    /// Node label whose value is an endpoint's `gpuType`.
    pub gpu_node_label: String,
    /// When set, every endpoint gets a default-deny NetworkPolicy over its workers.
    pub worker_network_policy: Option<WorkerNetworkPolicy>,
    /// Forwarders connect with the NATS credentials the operator issues into the worker Secret.
    pub forwarder_nats_creds: bool,
    /// The images artifact bundles run in, by framework.
    pub runtime_images: RuntimeImages,
    /// Internal address ranges the forwarders may fetch task inputs from.
    pub input_allow_cidrs: Vec<ipnet::IpNet>,
}

/// Everything one endpoint needs, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub deployment: Deployment,
    /// Only sync and streaming endpoints are called directly.
    pub service: Option<Service>,
    /// Only async endpoints take queued tasks.
    pub queue: Option<QueueSpec>,
    /// Only when the operator is configured to confine workers.
    pub network_policy: Option<NetworkPolicy>,
}

/// What the spec cannot answer: the rules of a spec are the validation step's
/// (`crd::validate`), which made the builders' input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("the endpoint has no uid yet to own its workers")]
    NoUid,
}

impl BuildError {
    /// Bounded reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::NoUid => reason::INVALID_SPEC,
        }
    }
}

/// The desired children of `validated`.
pub fn plan(validated: &ValidatedEndpoint, settings: &Settings) -> Result<Plan, BuildError> {
    let endpoint = validated.endpoint();
    let owner = owner_of(validated)?;
    let labels = build_labels(endpoint);
    let deployment = build_deployment(validated, settings, &labels, &owner);
    let (service, queue) = match endpoint.spec.endpoint_type {
        EndpointType::Async => (None, Some(QueueSpec::for_endpoint(validated))),
        EndpointType::Sync | EndpointType::Streaming => {
            (Some(build_service(endpoint, &labels, &owner)), None)
        }
    };
    let network_policy = settings.worker_network_policy.as_ref().map(|peers| {
        security::build_network_policy(
            child_meta(endpoint, network_policy_name(endpoint), &labels, &owner),
            selector_labels(endpoint),
            endpoint.spec.endpoint_type,
            FORWARDER_SERVE_PORT,
            peers,
        )
    });
    Ok(Plan {
        deployment,
        service,
        queue,
        network_policy,
    })
}

/// Name of the endpoint's worker Deployment.
pub fn deployment_name(endpoint: &ModelEndpoint) -> String {
    endpoint.name_any()
}

/// Name of the NetworkPolicy over the endpoint's workers.
pub fn network_policy_name(endpoint: &ModelEndpoint) -> String {
    endpoint.name_any()
}

/// Label selector (`key=value`) matching every child the operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

fn selector_labels(endpoint: &ModelEndpoint) -> BTreeMap<String, String> {
    BTreeMap::from([(ENDPOINT_ID_LABEL.into(), endpoint.endpoint_id().to_string())])
}

/// The reference that makes a child the endpoint's.
fn owner_of(validated: &ValidatedEndpoint) -> Result<OwnerReference, BuildError> {
    validated
        .endpoint()
        .controller_owner_ref(&())
        .ok_or(BuildError::NoUid)
}

/// The endpoint's own labels (valid ones: the validation step checked them), then the standard
/// ones (which win on a clash).
fn build_labels(endpoint: &ModelEndpoint) -> BTreeMap<String, String> {
    let mut labels = endpoint.spec.labels.clone();
    labels.extend([
        ("app.kubernetes.io/name".into(), "ferry-worker".into()),
        (
            "app.kubernetes.io/instance".into(),
            truncated_label(&endpoint.name_any()),
        ),
        ("app.kubernetes.io/component".into(), "worker".into()),
        ("app.kubernetes.io/part-of".into(), "ferry".into()),
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
        (
            "ferry.dev/endpoint-type".into(),
            endpoint.spec.endpoint_type.as_str().into(),
        ),
    ]);
    labels.extend(selector_labels(endpoint));
    labels
}

fn child_meta(
    endpoint: &ModelEndpoint,
    name: String,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace_of(endpoint)),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

fn build_deployment(
    validated: &ValidatedEndpoint,
    settings: &Settings,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> Deployment {
    let endpoint = validated.endpoint();
    let mut template = build_pod_template(validated, settings, labels);
    let hash = config_hash(&template);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.into(),
        hash.clone(),
    )]));
    let mut meta = child_meta(endpoint, deployment_name(endpoint), labels, owner);
    meta.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.into(), hash)]));
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            // The autoscaler owns the count, through the scale subresource: applying one here
            // would undo its work.
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector_labels(endpoint)),
                ..Default::default()
            },
            template,
            revision_history_limit: Some(3),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Keep every running worker until its replacement is ready.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn build_pod_template(
    validated: &ValidatedEndpoint,
    settings: &Settings,
    labels: &BTreeMap<String, String>,
) -> PodTemplateSpec {
    let endpoint = validated.endpoint();
    let bundle = validated.bundle();
    let spec = &endpoint.spec;
    let gpu = (spec.gpus > 0).then_some(spec.gpu_type.as_ref()).flatten();
    // The forwarder pulls the queue of an async endpoint and serves the gateway's requests for
    // a sync or streaming one.
    let mut model = build_model_container(validated);
    let mut volumes: Vec<_> = settings
        .forwarder_nats_creds
        .then(|| worker_secret::nats_creds_volume(endpoint))
        .into_iter()
        .collect();
    let mut init_containers = None;
    if let Some(served) = &bundle.spec.artifact {
        let images = &settings.runtime_images;
        artifact::shape_model_container(&mut model, served, images, bundle.spec.run_as_root);
        init_containers = Some(vec![artifact::build_fetch_container(
            served,
            &settings.forwarder_image,
        )]);
        volumes.push(artifact::shared_volume());
    }
    let containers = vec![model, build_forwarder_container(validated, settings)];
    let drain = settings.predict_timeout + DRAIN_MARGIN;
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers,
            termination_grace_period_seconds: Some(
                i64::try_from(drain.as_secs()).unwrap_or(i64::MAX),
            ),
            init_containers,
            volumes: (!volumes.is_empty()).then_some(volumes),
            enable_service_links: Some(false),
            // Workers never call the Kubernetes API; a token would only be something to steal.
            automount_service_account_token: Some(false),
            security_context: Some(security::build_pod_security_context(bundle)),
            node_selector: gpu.map(|gpu_type| {
                BTreeMap::from([(settings.gpu_node_label.clone(), gpu_type.clone())])
            }),
            tolerations: gpu.map(|_| {
                vec![Toleration {
                    key: Some(GPU_RESOURCE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

fn build_model_container(validated: &ValidatedEndpoint) -> Container {
    let spec = validated.spec();
    let bundle = validated.bundle();
    let model = &bundle.spec;
    // The validation step let a bundle set the port's variable only to the port itself.
    let mut env: Vec<EnvVar> = model
        .env
        .iter()
        .filter(|(name, _)| *name != MODEL_PORT_ENV)
        .map(|(name, value)| env_var(name, value.clone()))
        .collect();
    env.push(env_var(MODEL_PORT_ENV, model.port.to_string()));
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(spec.cpus.0.clone())),
        ("memory".to_string(), Quantity(spec.memory.0.clone())),
        (
            "ephemeral-storage".to_string(),
            Quantity(spec.storage.0.clone()),
        ),
    ]);
    // No CPU limit: throttling a model mid-task only makes it slower.
    let mut limits = BTreeMap::from([
        ("memory".to_string(), Quantity(spec.memory.0.clone())),
        (
            "ephemeral-storage".to_string(),
            Quantity(spec.storage.0.clone()),
        ),
    ]);
    if spec.gpus > 0 {
        let gpus = Quantity(spec.gpus.to_string());
        requests.insert(GPU_RESOURCE.into(), gpus.clone());
        limits.insert(GPU_RESOURCE.into(), gpus);
    }
    let health = http_get(&model.healthcheck_route, HTTP_PORT_NAME);
    let delay = i32::try_from(model.readiness_initial_delay_seconds).unwrap_or(i32::MAX);
    Container {
        name: MODEL_CONTAINER.into(),
        image: Some(model.image.clone()),
        command: non_empty(&model.command),
        args: non_empty(&model.args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: i32::from(model.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(health.clone()),
            initial_delay_seconds: Some(delay),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(health),
            initial_delay_seconds: Some(delay.saturating_add(30)),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Default::default()
        }),
        security_context: Some(security::build_model_security_context(bundle)),
        ..Default::default()
    }
}

fn build_forwarder_container(validated: &ValidatedEndpoint, settings: &Settings) -> Container {
    let endpoint = validated.endpoint();
    let model = &validated.bundle().spec;
    let mut env = vec![
        env_var(forwarder_env::NATS_URL, settings.nats_url.clone()),
        env_var(
            forwarder_env::RESULT_RETENTION_SECONDS,
            settings.result_retention.as_secs().to_string(),
        ),
        env_var(
            forwarder_env::ENDPOINT_ID,
            endpoint.endpoint_id().to_string(),
        ),
        env_var(
            forwarder_env::MODEL_URL,
            format!("http://127.0.0.1:{}", model.port),
        ),
        env_var(forwarder_env::PREDICT_ROUTE, model.predict_route.clone()),
        env_var(
            forwarder_env::HEALTHCHECK_ROUTE,
            model.healthcheck_route.clone(),
        ),
        env_var(
            forwarder_env::CONCURRENCY,
            endpoint.spec.concurrent_requests_per_worker.to_string(),
        ),
        env_var(
            forwarder_env::PREDICT_TIMEOUT_SECONDS,
            settings.predict_timeout.as_secs().to_string(),
        ),
        env_var(
            forwarder_env::ADMIN_LISTEN,
            format!("0.0.0.0:{FORWARDER_ADMIN_PORT}"),
        ),
    ];
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ports = vec![port(ADMIN_PORT_NAME, FORWARDER_ADMIN_PORT)];
    if endpoint.spec.endpoint_type != EndpointType::Async {
        env.push(env_var(
            forwarder_env::SERVE_LISTEN,
            format!("0.0.0.0:{FORWARDER_SERVE_PORT}"),
        ));
        if let Some(route) = &model.streaming_predict_route {
            env.push(env_var(
                forwarder_env::STREAMING_PREDICT_ROUTE,
                route.clone(),
            ));
        }
        ports.push(port(SERVE_PORT_NAME, FORWARDER_SERVE_PORT));
        env.push(worker_secret::serving_token_env(endpoint));
    }
    if settings.forwarder_nats_creds {
        env.push(worker_secret::nats_creds_env());
    }
    if !settings.input_allow_cidrs.is_empty() {
        let cidrs: Vec<String> = settings
            .input_allow_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        env.push(env_var(forwarder_env::INPUT_ALLOW_CIDRS, cidrs.join(",")));
    }
    let probe = |path: &str| Probe {
        http_get: Some(http_get(path, ADMIN_PORT_NAME)),
        period_seconds: Some(5),
        ..Default::default()
    };
    Container {
        name: FORWARDER_CONTAINER.into(),
        image: Some(settings.forwarder_image.clone()),
        command: Some(vec!["ferry".into(), "forwarder".into()]),
        env: Some(env),
        ports: Some(ports),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        security_context: Some(security::build_forwarder_security_context()),
        volume_mounts: settings
            .forwarder_nats_creds
            .then(|| vec![worker_secret::nats_creds_mount()]),
        ..Default::default()
    }
}

/// The Service of a sync or streaming endpoint, whose name the validation step found a DNS
/// label.
fn build_service(
    endpoint: &ModelEndpoint,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> Service {
    Service {
        metadata: child_meta(endpoint, service_name(endpoint), labels, owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(endpoint)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: SERVICE_PORT,
                // The forwarder in front of the model: it bounds concurrency (429) and speaks
                // the gateway's task protocol.
                target_port: Some(IntOrString::String(SERVE_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Hex SHA-256 (first 16 bytes) of the pod template's JSON; BTreeMaps keep it deterministic.
fn config_hash(template: &PodTemplateSpec) -> String {
    // Serializing plain data structs to a Vec cannot fail.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn http_get(path: &str, port: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(port.into()),
        ..Default::default()
    }
}

fn non_empty(items: &[String]) -> Option<Vec<String>> {
    (!items.is_empty()).then(|| items.to_vec())
}

#[cfg(test)]
mod tests;
