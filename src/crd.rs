//! The `ferry.dev/v1alpha1` resources: `ModelBundle` (what to run) and `ModelEndpoint` (how to
//! serve it). Owns their schema and defaults, condition names and the stable ids the Launch API
//! reports for them; below it, their names (`names`), the constants of their bounds and CEL
//! rules (`rules`) and the one validation step (`validate`).

pub mod artifact;
pub mod names;
pub mod rules;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A container image that serves a model over HTTP, mirroring Launch's `runnable_image` bundle;
/// or an artifact (Launch's `cloudpickle_artifact` and `zip_artifact`) that ferry's Python
/// runtime serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ModelBundle",
    namespaced,
    cel,
    shortname = "mb",
    category = "ferry",
    doc = "A model bundle: the container image and command that serve a model over HTTP, or an artifact ferry's Python runtime serves.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = rules::IMAGE_OR_ARTIFACT)]
#[serde(rename_all = "camelCase")]
pub struct ModelBundleSpec {
    /// Container image (repository and tag) that runs the model server; absent for an artifact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Command that starts the model server; the image's entrypoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments passed to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the model server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Port the model server listens on; it also receives it in the `PORT` environment variable.
    #[serde(default = "default_port")]
    #[schemars(range(min = rules::PORT.min, max = rules::PORT.max))]
    pub port: u16,
    /// HTTP path that takes a task's `args` as a JSON POST body and answers with the result JSON.
    #[serde(default = "default_predict_route")]
    #[schemars(regex(pattern = rules::PREDICT_ROUTE.regex))]
    pub predict_route: String,
    /// HTTP path that answers 200 once the model is ready to serve.
    #[serde(default = "default_healthcheck_route")]
    #[schemars(regex(pattern = rules::HEALTHCHECK_ROUTE.regex))]
    pub healthcheck_route: String,
    /// Seconds to wait after start before the first readiness check.
    #[serde(default)]
    #[schemars(range(
        min = rules::READINESS_INITIAL_DELAY_SECONDS.min,
        max = rules::READINESS_INITIAL_DELAY_SECONDS.max
    ))]
    pub readiness_initial_delay_seconds: u32,
    /// HTTP path for streaming predictions (server-sent events), when the model supports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = rules::STREAMING_PREDICT_ROUTE.regex))]
    pub streaming_predict_route: Option<String>,
    /// Lets the model container run as the user its image names, root included, for images
    /// that cannot run as any other user. Off by default: the container must run as a non-root
    /// user (a numeric `USER` in the image). Privilege escalation stays off and every
    /// capability stays dropped either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
    /// A Launch callable (cloudpickle) or zip artifact, served by ferry's Python runtime in
    /// place of an image: `ferry dev` runs it in a venv of its requirements, a cluster in the
    /// framework's runtime image after an init container fetched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<artifact::ArtifactSpec>,
}

fn default_port() -> u16 {
    5005
}
fn default_predict_route() -> String {
    "/predict".into()
}
fn default_healthcheck_route() -> String {
    "/readyz".into()
}

/// How a model endpoint is called.
#[derive(
    Serialize,
    Deserialize,
    JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    /// Tasks are queued and results polled or delivered by callback.
    #[default]
    Async,
    /// Requests wait for the model's answer.
    Sync,
    /// Requests receive the model's answer as server-sent events.
    Streaming,
}

impl EndpointType {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointType::Async => "async",
            EndpointType::Sync => "sync",
            EndpointType::Streaming => "streaming",
        }
    }
}

/// A step run after inference.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PostInferenceHook {
    /// POST `{"task_id", "result"}` to the task's callback URL, else the endpoint's default.
    Callback,
}

/// A Kubernetes resource quantity written as a string (`"8Gi"`, `"500m"`) or an integer (`1`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Quantity(#[serde(deserialize_with = "quantity_from_string_or_number")] pub String);

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A resource quantity: an integer or a string such as \"500m\" or \"8Gi\".",
            "x-kubernetes-int-or-string": true,
            "pattern": rules::QUANTITY_REGEX
        })
    }
}

fn quantity_from_string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(text) => text,
        Raw::Number(number) => number.to_string(),
    })
}

impl From<&str> for Quantity {
    fn from(text: &str) -> Self {
        Quantity(text.to_owned())
    }
}

fn default_cpus() -> Quantity {
    Quantity("1".into())
}
fn default_memory() -> Quantity {
    Quantity("1Gi".into())
}
fn default_storage() -> Quantity {
    Quantity("1Gi".into())
}
fn default_one() -> u32 {
    1
}
fn default_per_worker() -> u32 {
    10
}
fn default_task_expires_seconds() -> u32 {
    86_400
}
fn default_queue_message_timeout_seconds() -> u32 {
    60
}

/// A served model: which bundle runs, on what resources, with how many workers, and what happens
/// to results.
// Each `printcolumn(...)` repeats `type_`; clippy reads the repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ModelEndpoint",
    namespaced,
    cel,
    shortname = "mep",
    category = "ferry",
    status = "ModelEndpointStatus",
    doc = "A model endpoint: workers running a ModelBundle behind a durable task queue.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.endpointType"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.queueDepth"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = rules::MIN_WITHIN_MAX)]
#[x_kube(validation = rules::GPUS_WITH_GPU_TYPE)]
#[x_kube(validation = rules::DEFAULT_URL_NEEDS_HOOK)]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointSpec {
    /// Name of the ModelBundle (in the same namespace) that the workers run.
    #[x_kube(validation = rules::BUNDLE_NOT_EMPTY)]
    pub bundle: String,
    /// How the endpoint is called: `async` (queued tasks), `sync` or `streaming`.
    #[serde(default)]
    pub endpoint_type: EndpointType,
    /// CPUs per worker (a Kubernetes quantity).
    #[serde(default = "default_cpus")]
    pub cpus: Quantity,
    /// Memory per worker (a Kubernetes quantity).
    #[serde(default = "default_memory")]
    pub memory: Quantity,
    /// Ephemeral storage per worker (a Kubernetes quantity).
    #[serde(default = "default_storage")]
    pub storage: Quantity,
    /// GPUs per worker; needs `gpuType` when above zero.
    #[serde(default)]
    #[schemars(range(min = rules::GPUS.min, max = rules::GPUS.max))]
    pub gpus: u32,
    /// GPU model the workers are scheduled on, such as `nvidia-ampere-a10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Fewest workers kept running; 0 lets an idle endpoint scale to zero.
    #[serde(default = "default_one")]
    #[schemars(range(min = rules::MIN_WORKERS.min, max = rules::MIN_WORKERS.max))]
    pub min_workers: u32,
    /// Most workers ever running.
    #[serde(default = "default_one")]
    #[schemars(range(min = rules::MAX_WORKERS.min, max = rules::MAX_WORKERS.max))]
    pub max_workers: u32,
    /// Target number of queued or running tasks per worker when autoscaling.
    #[serde(default = "default_per_worker")]
    #[schemars(range(min = rules::PER_WORKER.min, max = rules::PER_WORKER.max))]
    pub per_worker: u32,
    /// Tasks a single worker runs at once.
    #[serde(default = "default_one")]
    #[schemars(range(
        min = rules::CONCURRENT_REQUESTS_PER_WORKER.min,
        max = rules::CONCURRENT_REQUESTS_PER_WORKER.max
    ))]
    pub concurrent_requests_per_worker: u32,
    /// Labels of the endpoint; `team` and `product` are required.
    #[x_kube(validation = rules::TEAM_AND_PRODUCT_LABELS)]
    pub labels: BTreeMap<String, String>,
    /// Steps run after inference; `callback` posts each result to a callback URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_inference_hooks: Vec<PostInferenceHook>,
    /// Callback URL used when a task names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = rules::DEFAULT_CALLBACK_URL.regex))]
    pub default_callback_url: Option<String>,
    /// Credentials presented to callback receivers when a task brings none, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_callback_auth: Option<CallbackAuthRef>,
    /// How callbacks are signed, retried, timed out and where they may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callbacks: Option<CallbackPolicySpec>,
    /// Seconds a queued task waits for a worker before it expires.
    #[serde(default = "default_task_expires_seconds")]
    #[schemars(range(
        min = rules::TASK_EXPIRES_SECONDS.min,
        max = rules::TASK_EXPIRES_SECONDS.max
    ))]
    pub task_expires_seconds: u32,
    /// Seconds a worker may hold a task without a sign of life before it is handed to another.
    #[serde(default = "default_queue_message_timeout_seconds")]
    #[schemars(range(
        min = rules::QUEUE_MESSAGE_TIMEOUT_SECONDS.min,
        max = rules::QUEUE_MESSAGE_TIMEOUT_SECONDS.max
    ))]
    pub queue_message_timeout_seconds: u32,
}

impl ModelEndpointSpec {
    pub fn has_hook(&self, hook: PostInferenceHook) -> bool {
        self.post_inference_hooks.contains(&hook)
    }

    /// True when Basic credentials may go to `url`: over https, or over plain http where the
    /// endpoint allows it explicitly.
    pub fn allows_basic_auth_to(&self, url: &str) -> bool {
        let plain_http = url
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
        !plain_http
            || self
                .callbacks
                .as_ref()
                .is_some_and(|callbacks| callbacks.allow_basic_auth_over_http)
    }

    /// True when the endpoint's default callback would send Basic credentials over plain http
    /// without the endpoint allowing it.
    pub fn default_basic_auth_over_http(&self) -> bool {
        let basic = self
            .default_callback_auth
            .as_ref()
            .is_some_and(|auth| auth.kind == CallbackAuthKind::Basic);
        basic
            && self
                .default_callback_url
                .as_deref()
                .is_some_and(|url| !self.allows_basic_auth_to(url))
    }
}

/// A key of a Secret in the endpoint's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret; it must carry the label `ferry.dev/callback-credentials: "true"`.
    pub name: String,
    /// Key within the Secret; `signingSecret` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which credentials a callback receiver is given.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CallbackAuthKind {
    /// HTTP Basic auth from the Secret's `username` and `password` keys.
    Basic,
    /// A TLS client certificate from the Secret's `tls.crt` and `tls.key` keys (a kubernetes.io/tls Secret).
    Mtls,
}

/// Callback credentials kept in a Secret of the endpoint's namespace, never inline.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAuthRef {
    /// `basic` or `mtls`.
    pub kind: CallbackAuthKind,
    /// Name of the Secret holding the credentials; it must carry the label
    /// `ferry.dev/callback-credentials: "true"`.
    pub secret_name: String,
}

/// How an endpoint's callbacks are delivered.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallbackPolicySpec {
    /// Secret key holding the `whsec_…` signing secret (several, separated by spaces, during a
    /// key rotation: each callback is then signed with every one). Unsigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<SecretKeySelector>,
    /// Seconds to wait before each retry; the length bounds the attempts. Default: 5, 300, 1800,
    /// 7200, 18000, 36000, 36000 (about 28 hours), each varied by up to ±20 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = rules::RETRY_SCHEDULE_LENGTH.min, max = rules::RETRY_SCHEDULE_LENGTH.max),
        inner(range(min = rules::RETRY_DELAY_SECONDS.min, max = rules::RETRY_DELAY_SECONDS.max))
    )]
    pub retry_schedule_seconds: Option<Vec<u32>>,
    /// Seconds one attempt may take in all, from connecting to the end of the answer (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(
        min = rules::ATTEMPT_TIMEOUT_SECONDS.min,
        max = rules::ATTEMPT_TIMEOUT_SECONDS.max
    ))]
    pub attempt_timeout_seconds: Option<u32>,
    /// Seconds to establish the connection (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(
        min = rules::CONNECT_TIMEOUT_SECONDS.min,
        max = rules::CONNECT_TIMEOUT_SECONDS.max
    ))]
    pub connect_timeout_seconds: Option<u32>,
    /// Hosts callbacks may go to, exactly or as `*.example.com`; any public host when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Send Basic credentials to plain `http://` callback URLs too, where anyone on the path
    /// can read them. Default false: such tasks are refused and such a default URL keeps the
    /// endpoint from being Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_basic_auth_over_http: bool,
}

/// Launch's endpoint status, as the gateway reports it.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointState {
    Ready,
    UpdatePending,
    UpdateInProgress,
    UpdateFailed,
    DeleteInProgress,
}

/// Observed state of a ModelEndpoint.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `QueueReady`, `WorkersAvailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The id the Launch API reports for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// The Launch status: READY, UPDATE_PENDING, UPDATE_IN_PROGRESS, UPDATE_FAILED or DELETE_IN_PROGRESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EndpointState>,
    /// Worker pods that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Worker pods ready to take tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Workers the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Tasks queued and not yet taken by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// When the number of workers last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why the workers number what they do: Load, Stabilizing, AtMinimum, AtMaximum or Idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_reason: Option<String>,
    /// Age in seconds of the oldest queued task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_task_age_seconds: Option<i64>,
}

/// Condition types a ModelEndpoint reports.
pub mod condition {
    pub const READY: &str = "Ready";
    /// The endpoint's task queue exists (async endpoints) or is not needed (sync, streaming).
    pub const QUEUE_READY: &str = "QueueReady";
    /// The worker Deployment runs the current spec with at least `minWorkers` ready workers.
    pub const WORKERS_AVAILABLE: &str = "WorkersAvailable";
}

/// The id Launch reports for an endpoint, such as `end_4f1c…`: stable for a namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(String);

/// The id Launch reports for a bundle, such as `bun_9a0e…`: stable for a namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BundleId(String);

macro_rules! id_impls {
    ($id:ident, $prefix:literal) => {
        impl $id {
            pub fn for_resource(namespace: &str, name: &str) -> Self {
                Self(format!(
                    concat!($prefix, "{}"),
                    short_digest(namespace, name)
                ))
            }
            /// Accepts an id given by a client; `None` when it cannot be one of ours.
            pub fn parse(text: &str) -> Option<Self> {
                let digest = text.strip_prefix($prefix)?;
                let valid =
                    digest.len() == DIGEST_LEN && digest.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then(|| Self(text.to_owned()))
            }
        }
        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
id_impls!(EndpointId, "end_");
id_impls!(BundleId, "bun_");

const DIGEST_LEN: usize = 20;

fn short_digest(namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{name}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..DIGEST_LEN].to_owned()
}

/// The namespace a resource lives in; `default` when it names none (as kubectl would apply it).
pub fn namespace_of<K: Resource>(resource: &K) -> String {
    resource.namespace().unwrap_or_else(|| "default".into())
}

impl ModelEndpoint {
    pub fn endpoint_id(&self) -> EndpointId {
        EndpointId::for_resource(&namespace_of(self), &self.name_any())
    }
}

impl ModelBundle {
    pub fn bundle_id(&self) -> BundleId {
        BundleId::for_resource(&namespace_of(self), &self.name_any())
    }
}

/// Both CRDs as one multi-document YAML stream, as `crds/` holds it.
pub fn yaml() -> Result<String, serde_saphyr::ser::Error> {
    // Lists at their key's indentation, as kubectl prints them.
    let options =
        || serde_saphyr::ser_options! { compact_list_indent: true, folded_wrap_chars: usize::MAX };
    let bundle = serde_saphyr::to_string_with_options(&ModelBundle::crd(), options())?;
    let endpoint = serde_saphyr::to_string_with_options(&ModelEndpoint::crd(), options())?;
    Ok(format!("---\n{bundle}---\n{endpoint}"))
}

#[cfg(test)]
mod schema_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn endpoint(yaml: &str) -> ModelEndpoint {
        serde_saphyr::from_str(yaml).expect("test manifest parses")
    }

    const VALID: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: ModelEndpoint
metadata: {name: demo, namespace: ml}
spec:
  bundle: test-bundle
  cpus: 1
  labels: {team: t, product: p}
  postInferenceHooks: [callback]
  defaultCallbackUrl: https://example.com
"#;

    #[test]
    fn defaults_fill_a_minimal_endpoint() {
        let spec = endpoint(VALID).spec;
        assert_eq!(spec.endpoint_type, EndpointType::Async);
        assert_eq!(
            (spec.min_workers, spec.max_workers, spec.per_worker),
            (1, 1, 10)
        );
        assert_eq!(spec.cpus, Quantity("1".into()));
        assert_eq!(spec.memory, Quantity("1Gi".into()));
        assert!(spec.has_hook(PostInferenceHook::Callback));
    }

    #[test]
    fn cel_rules_accept_a_valid_endpoint() {
        endpoint(VALID)
            .validate_cel()
            .expect("valid endpoint passes CEL");
    }

    #[test]
    fn cel_rules_reject_min_above_max() {
        let bad = VALID.replace("cpus: 1", "cpus: 1\n  minWorkers: 3\n  maxWorkers: 2");
        let errors = endpoint(&bad)
            .validate_cel()
            .expect_err("min > max is refused");
        assert!(
            errors
                .to_string()
                .contains("minWorkers must not exceed maxWorkers"),
            "{errors}"
        );
    }

    #[test]
    fn cel_rules_require_team_and_product_labels() {
        let bad = VALID.replace("{team: t, product: p}", "{team: t}");
        let errors = endpoint(&bad)
            .validate_cel()
            .expect_err("missing product is refused");
        assert!(errors.to_string().contains("team and product"), "{errors}");
    }

    #[test]
    fn cel_rules_pair_gpus_with_gpu_type() {
        let bad = VALID.replace("cpus: 1", "cpus: 1\n  gpus: 1");
        assert!(endpoint(&bad).validate_cel().is_err());
        let good = VALID.replace(
            "cpus: 1",
            "cpus: 1\n  gpus: 1\n  gpuType: nvidia-ampere-a10",
        );
        endpoint(&good)
            .validate_cel()
            .expect("gpus with gpuType pass");
    }

    #[test]
    fn cel_rules_want_the_callback_hook_with_a_default_url() {
        let bad = VALID.replace("  postInferenceHooks: [callback]\n", "");
        assert!(endpoint(&bad).validate_cel().is_err());
    }

    #[test]
    fn unknown_hooks_do_not_parse() {
        let bad = VALID.replace("[callback]", "[telepathy]");
        assert!(serde_saphyr::from_str::<ModelEndpoint>(&bad).is_err());
    }

    #[test]
    fn ids_are_stable_prefixed_and_parse_back() {
        let id = endpoint(VALID).endpoint_id();
        assert_eq!(id, EndpointId::for_resource("ml", "demo"));
        assert_ne!(id, EndpointId::for_resource("other", "demo"));
        assert!(id.to_string().starts_with("end_"));
        assert_eq!(EndpointId::parse(&id.to_string()), Some(id.clone()));
        assert_eq!(EndpointId::parse("end_nothex"), None);
        assert_eq!(BundleId::parse(&id.to_string()), None);
    }

    #[test]
    fn crd_carries_printer_columns_and_rules() {
        let crd = serde_json::to_string(&ModelEndpoint::crd()).expect("crd serializes");
        assert!(crd.contains("x-kubernetes-validations"));
        assert!(crd.contains(".status.queueDepth"));
        assert!(crd.contains("\"mep\""));
    }
}
