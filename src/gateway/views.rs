//! The JSON shapes of the Launch v1 API, built from ferry's resources and task records.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::crd::{EndpointState, ModelBundle, ModelEndpoint, condition};
use crate::task::{CallbackState, DeadLetter, TaskId, TaskRecord, TaskStatus};

pub fn bundle(bundle: &ModelBundle) -> Value {
    let (repository, tag) = split_image(&bundle.spec.image);
    let mut view = json!({
        "id": bundle.bundle_id(),
        "name": bundle.name_any(),
        "location": bundle.spec.image,
        "requirements": [],
        "env_params": {
            "framework_type": "custom_base_image",
            "ecr_repo": repository,
            "image_tag": tag,
        },
        "packaging_type": "lira",
        "metadata": {},
        "app_config": null,
        "created_at": created_at(bundle.metadata.creation_timestamp.as_ref()),
        "model_artifact_ids": [],
        "schema_location": null,
    });
    if let (Some(view), Some(Value::Object(artifact))) = (
        view.as_object_mut(),
        bundle
            .spec
            .artifact
            .as_ref()
            .map(super::artifacts::v1_fields),
    ) {
        view.extend(artifact);
    }
    view
}

/// The `/v2` shape: the bundle's runnable image flavor, or its artifact flavor.
pub fn bundle_v2(bundle: &ModelBundle) -> Value {
    let (repository, tag) = split_image(&bundle.spec.image);
    let spec = &bundle.spec;
    let mut view = json!({
        "id": bundle.bundle_id(),
        "name": bundle.name_any(),
        "metadata": {},
        "created_at": created_at(bundle.metadata.creation_timestamp.as_ref()),
        "model_artifact_ids": [],
        "schema_location": null,
        "flavor": {
            "flavor": "runnable_image",
            "repository": repository,
            "tag": tag,
            "command": spec.command,
            "env": spec.env,
            "protocol": "http",
            "predict_route": spec.predict_route,
            "healthcheck_route": spec.healthcheck_route,
            "streaming_predict_route": spec.streaming_predict_route,
            "readiness_initial_delay_seconds": spec.readiness_initial_delay_seconds,
        },
    });
    if let Some(artifact) = &spec.artifact {
        view["flavor"] = super::artifacts::flavor_view(artifact);
    }
    view
}

pub fn endpoint(endpoint: &ModelEndpoint) -> Value {
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
    json!({
        "id": endpoint.endpoint_id(),
        "name": endpoint.name_any(),
        "endpoint_type": spec.endpoint_type.as_str(),
        "destination": endpoint.endpoint_id(),
        "deployment_name": endpoint.name_any(),
        "metadata": {},
        "bundle_name": spec.bundle,
        "status": state,
        "status_reason": reason,
        "post_inference_hooks": spec.post_inference_hooks,
        "default_callback_url": spec.default_callback_url,
        // The kind only: credentials stay in their Secret.
        "default_callback_auth": spec.default_callback_auth.as_ref().map(|auth| json!({ "kind": auth.kind })),
        "labels": spec.labels,
        "created_by": spec.labels.get("team"),
        "created_at": created,
        "last_updated_at": created,
        "deployment_state": {
            "min_workers": spec.min_workers,
            "max_workers": spec.max_workers,
            "per_worker": spec.per_worker,
            "concurrent_requests_per_worker": spec.concurrent_requests_per_worker,
            "available_workers": ready,
            "unavailable_workers": replicas - ready,
        },
        "resource_state": {
            "cpus": spec.cpus.0,
            "gpus": spec.gpus,
            "memory": spec.memory.0,
            "gpu_type": spec.gpu_type,
            "storage": spec.storage.0,
            "nodes_per_worker": 1,
        },
        "num_queued_items": status.queue_depth,
        "public_inference": false,
        "task_expires_seconds": spec.task_expires_seconds,
        "queue_message_timeout_seconds": spec.queue_message_timeout_seconds,
    })
}

/// `GET /v1/async-tasks/{id}`: Launch's shape, plus a `callback` section when one was sent,
/// then ferry's additions: the endpoint and the task's times (RFC 3339 UTC, or null).
pub fn task(id: &TaskId, record: &TaskRecord, callback: Option<&CallbackState>) -> Value {
    let (result, traceback) = match record.status {
        TaskStatus::Success => (json!({ "result": record.result }), Value::Null),
        TaskStatus::Failure => {
            let error = record.error.as_ref();
            (
                json!(error.map(|e| e.message.as_str())),
                json!(error.and_then(|e| e.detail.as_deref())),
            )
        }
        TaskStatus::Pending | TaskStatus::Started | TaskStatus::Cancelled => {
            (Value::Null, Value::Null)
        }
    };
    let mut view = json!({
        "task_id": id,
        "status": record.status,
        "result": result,
        "traceback": traceback,
        "status_code": record.status_code,
    });
    if let Value::Object(fields) = &mut view {
        if let Some(callback) = callback {
            fields.insert("callback".into(), json!(callback));
        }
        fields.insert("model_endpoint_id".into(), json!(id.endpoint()));
        fields.insert("created_at".into(), time_ms(id.created_at_ms()));
        fields.insert("started_at".into(), time_ms(record.started_at_ms));
        fields.insert("finished_at".into(), time_ms(record.finished_at_ms));
    }
    view
}

/// A dead-lettered callback with the attempts its task's callback state keeps.
pub fn dead_letter(letter: &DeadLetter, callback: Option<&CallbackState>) -> Value {
    json!({
        "task_id": letter.job.task_id,
        "model_endpoint_id": letter.job.endpoint_id,
        "url": callback.map(|callback| callback.url.as_str()),
        "dead_lettered_at": time_ms(Some(letter.dead_at_ms)),
        "reason": letter.reason,
        "attempts": callback.map(|callback| callback.attempts.as_slice()).unwrap_or_default(),
    })
}

/// Unix milliseconds as an RFC 3339 UTC time, or null.
pub fn time_ms(ms: Option<u64>) -> Value {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or(Value::Null, |at| Value::from(at.to_string()))
}

fn created_at(time: Option<&Time>) -> Value {
    time.map_or(Value::Null, |time| Value::from(time.0.to_string()))
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
        let view = task(&id, &done, None);
        assert_eq!(view["status"], "SUCCESS");
        assert_eq!(view["result"], json!({"result": 7}));
        assert_eq!(view["status_code"], 200);
        assert!(view.get("callback").is_none());
        assert_eq!(view["model_endpoint_id"], endpoint().to_string());
        assert!(view["started_at"].is_null());
    }

    #[test]
    fn times_read_as_rfc3339_utc_and_creation_comes_from_the_id() {
        assert_eq!(time_ms(Some(1_764_000_000_123)), "2025-11-24T16:00:00.123Z");
        assert!(time_ms(None).is_null());
        let id = TaskId::generate(&endpoint());
        let finished = TaskRecord {
            started_at_ms: Some(1_764_000_000_000),
            finished_at_ms: Some(1_764_000_001_000),
            ..record(TaskStatus::Cancelled)
        };
        let view = task(&id, &finished, None);
        assert_eq!(view["status"], "CANCELLED");
        assert!(view["result"].is_null() && view["traceback"].is_null());
        assert_eq!(view["created_at"], time_ms(id.created_at_ms()));
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
        let view = task(&TaskId::generate(&endpoint()), &failed, None);
        assert_eq!(view["result"], "model answered 500");
        assert_eq!(view["traceback"], "boom");
    }

    #[test]
    fn pending_tasks_have_null_results() {
        let view = task(
            &TaskId::generate(&endpoint()),
            &record(TaskStatus::Pending),
            None,
        );
        assert_eq!(view["status"], "PENDING");
        assert!(view["result"].is_null());
    }
}
