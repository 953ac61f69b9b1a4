//! The JSON answers of the API, built from ferry's resources and task records: Launch's shapes
//! (bundles, endpoints, tasks) and ferry's own (task pages, dead letters, acknowledgements).
//! Each struct is what goes on the wire and what `/openapi.json` describes. Fields are in
//! alphabetical order, the order these answers had as `serde_json` maps, so no byte changed
//! when they became types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::crd::{
    CallbackAuthKind, EndpointId, EndpointState, EndpointType, ModelBundle, ModelEndpoint,
    PostInferenceHook, condition,
};
use crate::task::{
    CallbackState, DeadLetter, DeliveryAttempt, DeliveryState, TaskId, TaskRecord, TaskStatus,
};

/// A bundle in Launch's v1 shape: a runnable image described as a custom base image, or an
/// artifact with its framework.
#[derive(Serialize, ToSchema)]
pub struct BundleV1 {
    /// An artifact's app_config; null for an image.
    #[schema(value_type = Option<Object>)]
    pub app_config: Option<Value>,
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    pub env_params: EnvParamsView,
    /// `bun_…`.
    pub id: String,
    /// The image, or the artifact's location.
    pub location: String,
    /// Always empty.
    pub metadata: BTreeMap<String, Value>,
    /// Always empty.
    pub model_artifact_ids: Vec<String>,
    pub name: String,
    /// `lira` for an image; `cloudpickle` or `zip` for an artifact.
    pub packaging_type: &'static str,
    /// An artifact's pip requirements; empty for an image.
    pub requirements: Vec<String>,
    /// Always null.
    pub schema_location: Option<String>,
}

/// Where a v1 bundle's image comes from.
#[derive(Serialize, ToSchema)]
pub struct EnvParams {
    /// The image without its tag.
    pub ecr_repo: String,
    /// Always `custom_base_image`.
    pub framework_type: &'static str,
    pub image_tag: String,
}

/// A bundle in Launch's v2 shape, with its runnable image or artifact flavor.
#[derive(Serialize, ToSchema)]
pub struct BundleV2 {
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    pub flavor: BundleFlavorView,
    /// `bun_…`.
    pub id: String,
    /// Always empty.
    pub metadata: BTreeMap<String, Value>,
    /// Always empty.
    pub model_artifact_ids: Vec<String>,
    pub name: String,
    /// Always null.
    pub schema_location: Option<String>,
}

/// A bundle's flavor: a runnable image, or an artifact ferry's Python runtime serves.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum BundleFlavorView {
    RunnableImage(RunnableImageFlavor),
    Artifact(super::artifacts::ArtifactFlavorView),
}

/// Where a v1 bundle's code comes from: an image, or an artifact's framework.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EnvParamsView {
    Image(EnvParams),
    Framework(super::artifacts::FrameworkView),
}

/// How a bundle's model runs: its image, command and routes.
#[derive(Serialize, ToSchema)]
pub struct RunnableImageFlavor {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Always `runnable_image`.
    pub flavor: &'static str,
    pub healthcheck_route: String,
    pub predict_route: String,
    /// Always `http`.
    pub protocol: &'static str,
    pub readiness_initial_delay_seconds: u32,
    /// The image without its tag.
    pub repository: String,
    pub streaming_predict_route: Option<String>,
    pub tag: String,
}

/// `GET /v1/model-bundles`.
#[derive(Serialize, ToSchema)]
pub struct BundlesV1 {
    pub model_bundles: Vec<BundleV1>,
}

/// `GET /v2/model-bundles`.
#[derive(Serialize, ToSchema)]
pub struct BundlesV2 {
    pub model_bundles: Vec<BundleV2>,
}

pub fn bundle(bundle: &ModelBundle) -> BundleV1 {
    let (repository, tag) = split_image(&bundle.spec.image);
    let view = BundleV1 {
        app_config: None,
        created_at: created_at(bundle.metadata.creation_timestamp.as_ref()),
        env_params: EnvParamsView::Image(EnvParams {
            ecr_repo: repository.to_owned(),
            framework_type: "custom_base_image",
            image_tag: tag.to_owned(),
        }),
        id: bundle.bundle_id().to_string(),
        location: bundle.spec.image.clone(),
        metadata: BTreeMap::new(),
        model_artifact_ids: Vec::new(),
        name: bundle.name_any(),
        packaging_type: "lira",
        requirements: Vec::new(),
        schema_location: None,
    };
    match &bundle.spec.artifact {
        Some(artifact) => with_artifact_fields(view, artifact),
        None => view,
    }
}

/// The `/v1` view of an artifact bundle: its location, requirements, framework, packaging and
/// app_config in place of an image's.
fn with_artifact_fields(view: BundleV1, artifact: &crate::crd::artifact::ArtifactSpec) -> BundleV1 {
    BundleV1 {
        app_config: artifact
            .app_config
            .as_ref()
            .map(|config| Value::Object(config.0.clone())),
        env_params: EnvParamsView::Framework(super::artifacts::framework_view(&artifact.framework)),
        location: artifact.location.clone(),
        packaging_type: artifact.flavor.packaging_type(),
        requirements: artifact.requirements.clone(),
        ..view
    }
}

/// The `/v2` shape: the bundle's runnable image flavor.
pub fn bundle_v2(bundle: &ModelBundle) -> BundleV2 {
    let (repository, tag) = split_image(&bundle.spec.image);
    let spec = &bundle.spec;
    let runnable = RunnableImageFlavor {
        command: spec.command.clone(),
        env: spec.env.clone(),
        flavor: "runnable_image",
        healthcheck_route: spec.healthcheck_route.clone(),
        predict_route: spec.predict_route.clone(),
        protocol: "http",
        readiness_initial_delay_seconds: spec.readiness_initial_delay_seconds,
        repository: repository.to_owned(),
        streaming_predict_route: spec.streaming_predict_route.clone(),
        tag: tag.to_owned(),
    };
    let flavor = match &spec.artifact {
        Some(artifact) => BundleFlavorView::Artifact(super::artifacts::flavor_view(artifact)),
        None => BundleFlavorView::RunnableImage(runnable),
    };
    BundleV2 {
        created_at: created_at(bundle.metadata.creation_timestamp.as_ref()),
        flavor,
        id: bundle.bundle_id().to_string(),
        metadata: BTreeMap::new(),
        model_artifact_ids: Vec::new(),
        name: bundle.name_any(),
        schema_location: None,
    }
}

/// An endpoint in Launch's shape.
#[derive(Serialize, ToSchema)]
pub struct EndpointView {
    pub bundle_name: String,
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    /// The endpoint's `team` label.
    pub created_by: Option<String>,
    /// The kind of the default callback credentials only: they stay in their Secret.
    pub default_callback_auth: Option<CallbackAuthKindView>,
    pub default_callback_url: Option<String>,
    pub deployment_name: String,
    pub deployment_state: DeploymentState,
    /// The endpoint's id.
    pub destination: String,
    pub endpoint_type: EndpointType,
    /// `end_…`.
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The creation time: ferry keeps no other.
    pub last_updated_at: Option<String>,
    /// Always empty.
    pub metadata: BTreeMap<String, Value>,
    pub name: String,
    /// Tasks queued and not yet taken by a worker, as last observed.
    pub num_queued_items: Option<i64>,
    pub post_inference_hooks: Vec<PostInferenceHook>,
    /// Always false.
    pub public_inference: bool,
    pub queue_message_timeout_seconds: u32,
    pub resource_state: ResourceState,
    pub status: EndpointState,
    /// Why the endpoint is not ready, when it is not.
    pub status_reason: Option<String>,
    pub task_expires_seconds: u32,
}

/// Which credentials a callback receiver is given.
#[derive(Serialize, ToSchema)]
pub struct CallbackAuthKindView {
    pub kind: CallbackAuthKind,
}

/// An endpoint's workers: its bounds and how many are up.
#[derive(Serialize, ToSchema)]
pub struct DeploymentState {
    pub available_workers: i32,
    pub concurrent_requests_per_worker: u32,
    pub max_workers: u32,
    pub min_workers: u32,
    /// Target tasks per worker for autoscaling.
    pub per_worker: u32,
    pub unavailable_workers: i32,
}

/// What each worker of an endpoint gets.
#[derive(Serialize, ToSchema)]
pub struct ResourceState {
    /// A Kubernetes quantity, such as `1` or `500m`.
    pub cpus: String,
    pub gpu_type: Option<String>,
    pub gpus: u32,
    /// A Kubernetes quantity, such as `8Gi`.
    pub memory: String,
    /// Always 1.
    pub nodes_per_worker: u32,
    /// A Kubernetes quantity, such as `16Gi`.
    pub storage: String,
}

/// `GET /v1/model-endpoints`.
#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub model_endpoints: Vec<EndpointView>,
}

pub fn endpoint(endpoint: &ModelEndpoint) -> EndpointView {
    let spec = &endpoint.spec;
    let status = endpoint.status.clone().unwrap_or_default();
    let state = match endpoint.metadata.deletion_timestamp {
        Some(_) => EndpointState::DeleteInProgress,
        None => status.state.unwrap_or(EndpointState::UpdatePending),
    };
    let ready = status.ready_replicas.unwrap_or(0).max(0);
    let replicas = status.replicas.unwrap_or(0).max(ready);
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY && c.status != "True")
        .map(|c| c.message.clone());
    let created = created_at(endpoint.metadata.creation_timestamp.as_ref());
    EndpointView {
        bundle_name: spec.bundle.clone(),
        created_at: created.clone(),
        created_by: spec.labels.get("team").cloned(),
        default_callback_auth: spec
            .default_callback_auth
            .as_ref()
            .map(|auth| CallbackAuthKindView { kind: auth.kind }),
        default_callback_url: spec.default_callback_url.clone(),
        deployment_name: endpoint.name_any(),
        deployment_state: DeploymentState {
            available_workers: ready,
            concurrent_requests_per_worker: spec.concurrent_requests_per_worker,
            max_workers: spec.max_workers,
            min_workers: spec.min_workers,
            per_worker: spec.per_worker,
            unavailable_workers: replicas - ready,
        },
        destination: endpoint.endpoint_id().to_string(),
        endpoint_type: spec.endpoint_type,
        id: endpoint.endpoint_id().to_string(),
        labels: spec.labels.clone(),
        last_updated_at: created,
        metadata: BTreeMap::new(),
        name: endpoint.name_any(),
        num_queued_items: status.queue_depth,
        post_inference_hooks: spec.post_inference_hooks.clone(),
        public_inference: false,
        queue_message_timeout_seconds: spec.queue_message_timeout_seconds,
        resource_state: ResourceState {
            cpus: spec.cpus.0.clone(),
            gpu_type: spec.gpu_type.clone(),
            gpus: spec.gpus,
            memory: spec.memory.0.clone(),
            nodes_per_worker: 1,
            storage: spec.storage.0.clone(),
        },
        status: state,
        status_reason: reason,
        task_expires_seconds: spec.task_expires_seconds,
    }
}

/// A task: Launch's `task_id`, `status`, `result`, `traceback` and `status_code`, a `callback`
/// section when one was sent, then ferry's additions: the endpoint and the task's times.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackView>,
    /// When it was submitted, RFC 3339 UTC.
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
    #[schema(value_type = String)]
    pub model_endpoint_id: EndpointId,
    /// On SUCCESS `{"result": <the model's JSON output>}`; on FAILURE the error message; else
    /// null.
    pub result: Value,
    pub started_at: Option<String>,
    pub status: TaskStatus,
    /// The model's HTTP status code, when it answered.
    pub status_code: Option<u16>,
    #[schema(value_type = String)]
    pub task_id: TaskId,
    /// On FAILURE, more detail (such as the model's answer).
    pub traceback: Option<String>,
}

/// A task's callback: where it goes, how far its delivery got, its latest attempts.
#[derive(Serialize, ToSchema)]
pub struct CallbackView {
    /// The newest attempts, oldest first.
    pub attempts: Vec<AttemptView>,
    pub state: DeliveryState,
    pub url: String,
}

/// One try at delivering a callback.
#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    /// Unix time of the attempt in milliseconds.
    pub at_ms: u64,
    /// Milliseconds from sending the request to its outcome.
    pub duration_ms: u64,
    /// Why no answer came, when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The receiver's status code, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// `GET /v1/async-tasks`: a page of an endpoint's tasks, newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskPage {
    /// Give it as `page_token` for the next page; null on the last one.
    pub next_page_token: Option<String>,
    pub tasks: Vec<TaskView>,
}

pub fn task(id: &TaskId, record: &TaskRecord, callback: Option<&CallbackState>) -> TaskView {
    let (result, traceback) = match record.status {
        TaskStatus::Success => (json!({ "result": record.result }), None),
        TaskStatus::Failure => {
            let error = record.error.as_ref();
            (
                json!(error.map(|e| e.message.as_str())),
                error.and_then(|e| e.detail.clone()),
            )
        }
        TaskStatus::Pending | TaskStatus::Started | TaskStatus::Cancelled => (Value::Null, None),
    };
    TaskView {
        callback: callback.map(|callback| CallbackView {
            attempts: attempts(&callback.attempts),
            state: callback.state,
            url: callback.url.clone(),
        }),
        created_at: time_ms(id.created_at_ms()),
        finished_at: time_ms(record.finished_at_ms),
        model_endpoint_id: id.endpoint().clone(),
        result,
        started_at: time_ms(record.started_at_ms),
        status: record.status,
        status_code: record.status_code,
        task_id: id.clone(),
        traceback,
    }
}

fn attempts(attempts: &[DeliveryAttempt]) -> Vec<AttemptView> {
    attempts
        .iter()
        .map(|attempt| AttemptView {
            at_ms: attempt.at_ms,
            duration_ms: attempt.duration_ms,
            error: attempt.error.clone(),
            status_code: attempt.status_code,
        })
        .collect()
}

/// A dead-lettered callback with the attempts its task's callback state keeps.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    pub attempts: Vec<AttemptView>,
    /// When it was given up on, RFC 3339 UTC.
    pub dead_lettered_at: Option<String>,
    #[schema(value_type = String)]
    pub model_endpoint_id: EndpointId,
    /// Why it was given up on.
    pub reason: String,
    #[schema(value_type = String)]
    pub task_id: TaskId,
    pub url: Option<String>,
}

/// `GET /v1/callbacks/dead-letters`: a page of an endpoint's dead letters, oldest first.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterView>,
    /// Give it as `page_token` for the next page; null on the last one.
    pub next_page_token: Option<String>,
}

pub fn dead_letter(letter: &DeadLetter, callback: Option<&CallbackState>) -> DeadLetterView {
    DeadLetterView {
        attempts: callback.map_or_else(Vec::new, |callback| attempts(&callback.attempts)),
        dead_lettered_at: time_ms(Some(letter.dead_at_ms)),
        model_endpoint_id: letter.job.endpoint_id.clone(),
        reason: letter.reason.clone(),
        task_id: letter.job.task_id.clone(),
        url: callback.map(|callback| callback.url.clone()),
    }
}

/// An accepted async task.
#[derive(Serialize, ToSchema)]
pub struct TaskAccepted {
    #[schema(value_type = String)]
    pub task_id: TaskId,
}

/// An endpoint change accepted; Launch's client reads the id and never asks for it.
#[derive(Serialize, ToSchema)]
pub struct EndpointChange {
    pub endpoint_creation_task_id: String,
}

impl EndpointChange {
    pub fn new() -> Self {
        EndpointChange {
            endpoint_creation_task_id: uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// An endpoint deleted.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// Always true.
    pub deleted: bool,
}

/// A bundle created.
#[derive(Serialize, ToSchema)]
pub struct BundleCreated {
    /// `bun_…`.
    pub model_bundle_id: String,
}

/// Dead-lettered callbacks queued again.
#[derive(Serialize, ToSchema)]
pub struct Redelivered {
    pub redelivered: u64,
}

/// Unix milliseconds as an RFC 3339 UTC time.
pub fn time_ms(ms: Option<u64>) -> Option<String> {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|at| at.to_string())
}

fn created_at(time: Option<&Time>) -> Option<String> {
    time.map(|time| time.0.to_string())
}

/// `registry/repo:tag` → (`registry/repo`, `tag`); a missing tag reads as `latest`.
fn split_image(image: &str) -> (&str, &str) {
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => (&image[..image.len() - tag.len() - 1], tag),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointId;
    use crate::task::TaskError;

    #[test]
    fn images_split_into_repository_and_tag() {
        assert_eq!(split_image("python:3.12-slim"), ("python", "3.12-slim"));
        assert_eq!(
            split_image("registry:5000/team/model"),
            ("registry:5000/team/model", "latest")
        );
        assert_eq!(
            split_image("registry:5000/team/model:v2"),
            ("registry:5000/team/model", "v2")
        );
    }

    fn endpoint() -> EndpointId {
        EndpointId::for_resource("default", "demo")
    }

    fn record(status: TaskStatus) -> TaskRecord {
        TaskRecord {
            status,
            ..TaskRecord::pending(endpoint())
        }
    }

    #[test]
    fn success_wraps_the_model_output_in_result() {
        let id = TaskId::generate(&endpoint());
        let done = TaskRecord {
            result: Some(json!(7)),
            status_code: Some(200),
            ..record(TaskStatus::Success)
        };
        let view = json!(task(&id, &done, None));
        assert_eq!(view["status"], "SUCCESS");
        assert_eq!(view["result"], json!({"result": 7}));
        assert_eq!(view["status_code"], 200);
        assert!(view.get("callback").is_none());
        assert_eq!(view["model_endpoint_id"], endpoint().to_string());
        assert!(view["started_at"].is_null());
    }

    #[test]
    fn times_read_as_rfc3339_utc_and_creation_comes_from_the_id() {
        assert_eq!(
            time_ms(Some(1_764_000_000_123)).as_deref(),
            Some("2025-11-24T16:00:00.123Z")
        );
        assert!(time_ms(None).is_none());
        let id = TaskId::generate(&endpoint());
        let finished = TaskRecord {
            started_at_ms: Some(1_764_000_000_000),
            finished_at_ms: Some(1_764_000_001_000),
            ..record(TaskStatus::Cancelled)
        };
        let view = json!(task(&id, &finished, None));
        assert_eq!(view["status"], "CANCELLED");
        assert!(view["result"].is_null() && view["traceback"].is_null());
        assert_eq!(view["created_at"], json!(time_ms(id.created_at_ms())));
        assert_eq!(view["started_at"], "2025-11-24T16:00:00Z");
        assert_eq!(view["finished_at"], "2025-11-24T16:00:01Z");
    }

    #[test]
    fn failure_reports_the_message_as_result_and_detail_as_traceback() {
        let error = TaskError {
            message: "model answered 500".into(),
            detail: Some("boom".into()),
        };
        let failed = TaskRecord {
            error: Some(error),
            ..record(TaskStatus::Failure)
        };
        let view = json!(task(&TaskId::generate(&endpoint()), &failed, None));
        assert_eq!(view["result"], "model answered 500");
        assert_eq!(view["traceback"], "boom");
    }

    #[test]
    fn pending_tasks_have_null_results() {
        let view = json!(task(
            &TaskId::generate(&endpoint()),
            &record(TaskStatus::Pending),
            None,
        ));
        assert_eq!(view["status"], "PENDING");
        assert!(view["result"].is_null());
    }
}
