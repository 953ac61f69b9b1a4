//! The JSON shapes of the Launch v1 API, built from ferry's resources and task records.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::crd::{EndpointState, ModelBundle, ModelEndpoint, condition};
use crate::task::{CallbackState, TaskId, TaskRecord, TaskStatus};

pub fn bundle(bundle: &ModelBundle) -> Value {
    let (repository, tag) = split_image(&bundle.spec.image);
    json!({
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
    })
}

/// The `/v2` shape: the bundle's runnable image flavor.
pub fn bundle_v2(bundle: &ModelBundle) -> Value {
    let (repository, tag) = split_image(&bundle.spec.image);
    let spec = &bundle.spec;
    json!({
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
    })
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

/// `GET /v1/async-tasks/{id}`: Launch's shape, plus a `callback` section when one was sent.
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
        TaskStatus::Pending | TaskStatus::Started => (Value::Null, Value::Null),
    };
    let mut view = json!({
        "task_id": id,
        "status": record.status,
        "result": result,
        "traceback": traceback,
        "status_code": record.status_code,
    });
    if let (Some(callback), Value::Object(fields)) = (callback, &mut view) {
        fields.insert("callback".into(), json!(callback));
    }
    view
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
