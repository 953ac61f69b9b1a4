//! The answers' bytes: each typed view serializes exactly as the `serde_json` maps the API
//! answered before they were typed (keys in alphabetical order), so no client sees a change.

use serde_json::json;

use crate::crd::{ModelBundle, ModelEndpoint};
use crate::gateway::views;
use crate::task::{
    CallbackJob, CallbackState, CallbackTarget, DeadLetter, DeliveryAttempt, DeliveryState,
    TaskError, TaskId, TaskOutcome, TaskRecord, TaskStatus,
};

const BUNDLE_V1: &str = r#"{"app_config":null,"created_at":"2026-01-31T12:00:00Z","env_params":{"ecr_repo":"registry:5000/team/model","framework_type":"custom_base_image","image_tag":"v2"},"id":"bun_36546c0cdc1d931731b3","location":"registry:5000/team/model:v2","metadata":{},"model_artifact_ids":[],"name":"model","packaging_type":"lira","requirements":[],"schema_location":null}"#;
const BUNDLE_V2: &str = r#"{"created_at":"2026-01-31T12:00:00Z","flavor":{"command":["python","serve.py"],"env":{"A":"1","B":"2"},"flavor":"runnable_image","healthcheck_route":"/readyz","predict_route":"/predict","protocol":"http","readiness_initial_delay_seconds":0,"repository":"registry:5000/team/model","streaming_predict_route":"/stream","tag":"v2"},"id":"bun_36546c0cdc1d931731b3","metadata":{},"model_artifact_ids":[],"name":"model","schema_location":null}"#;
const ENDPOINT: &str = r#"{"bundle_name":"model","created_at":"2026-01-31T12:00:00Z","created_by":"ml","default_callback_auth":{"kind":"basic"},"default_callback_url":"https://example.com/cb","deployment_name":"demo","deployment_state":{"available_workers":1,"concurrent_requests_per_worker":1,"max_workers":3,"min_workers":1,"per_worker":10,"unavailable_workers":1},"destination":"end_5fa6046d9ca0cf51e820","endpoint_type":"async","id":"end_5fa6046d9ca0cf51e820","labels":{"product":"demo","team":"ml"},"last_updated_at":"2026-01-31T12:00:00Z","metadata":{},"name":"demo","num_queued_items":5,"post_inference_hooks":["callback"],"public_inference":false,"queue_message_timeout_seconds":60,"resource_state":{"cpus":"1","gpu_type":"nvidia-tesla-t4","gpus":1,"memory":"1Gi","nodes_per_worker":1,"storage":"1Gi"},"status":"UPDATE_IN_PROGRESS","status_reason":"1 of 2 workers ready","task_expires_seconds":86400}"#;
const TASK_SUCCEEDED: &str = r#"{"callback":{"attempts":[{"at_ms":1769860800000,"duration_ms":12,"status_code":500},{"at_ms":1769860805000,"duration_ms":3,"error":"connection refused"}],"state":"DEAD_LETTERED","url":"https://example.com/cb"},"created_at":"2024-07-27T14:40:07.71Z","finished_at":"2026-01-31T12:00:02Z","model_endpoint_id":"end_5fa6046d9ca0cf51e820","result":{"result":{"a":"x","b":[1,2]}},"started_at":"2026-01-31T12:00:01Z","status":"SUCCESS","status_code":200,"task_id":"end_5fa6046d9ca0cf51e820-0190f4a2-7c1e-7b3a-9f00-0123456789ab","traceback":null}"#;
const TASK_FAILED: &str = r#"{"created_at":"2024-07-27T14:40:07.71Z","finished_at":null,"model_endpoint_id":"end_5fa6046d9ca0cf51e820","result":"model answered 500","started_at":null,"status":"FAILURE","status_code":500,"task_id":"end_5fa6046d9ca0cf51e820-0190f4a2-7c1e-7b3a-9f00-0123456789ab","traceback":"boom"}"#;
const TASK_PENDING: &str = r#"{"created_at":"2024-07-27T14:40:07.71Z","finished_at":null,"model_endpoint_id":"end_5fa6046d9ca0cf51e820","result":null,"started_at":null,"status":"PENDING","status_code":null,"task_id":"end_5fa6046d9ca0cf51e820-0190f4a2-7c1e-7b3a-9f00-0123456789ab","traceback":null}"#;
const DEAD_LETTER: &str = r#"{"attempts":[{"at_ms":1769860800000,"duration_ms":12,"status_code":500},{"at_ms":1769860805000,"duration_ms":3,"error":"connection refused"}],"dead_lettered_at":"2026-01-31T12:01:40Z","model_endpoint_id":"end_5fa6046d9ca0cf51e820","reason":"receiver answered 500 on every attempt","task_id":"end_5fa6046d9ca0cf51e820-0190f4a2-7c1e-7b3a-9f00-0123456789ab","url":"https://example.com/cb"}"#;
const DEAD_LETTER_WITHOUT_STATE: &str = r#"{"attempts":[],"dead_lettered_at":"2026-01-31T12:01:40Z","model_endpoint_id":"end_5fa6046d9ca0cf51e820","reason":"receiver answered 500 on every attempt","task_id":"end_5fa6046d9ca0cf51e820-0190f4a2-7c1e-7b3a-9f00-0123456789ab","url":null}"#;

fn bundle() -> ModelBundle {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelBundle",
        "metadata": {"name": "model", "namespace": "ml", "creationTimestamp": "2026-01-31T12:00:00Z"},
        "spec": {"image": "registry:5000/team/model:v2", "command": ["python", "serve.py"],
                 "env": {"B": "2", "A": "1"}, "streamingPredictRoute": "/stream"},
    }))
    .expect("bundle fixture")
}

fn endpoint() -> ModelEndpoint {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint",
        "metadata": {"name": "demo", "namespace": "ml", "creationTimestamp": "2026-01-31T12:00:00Z"},
        "spec": {"bundle": "model", "labels": {"team": "ml", "product": "demo"},
                 "postInferenceHooks": ["callback"], "defaultCallbackUrl": "https://example.com/cb",
                 "defaultCallbackAuth": {"kind": "basic", "secretName": "cb"},
                 "gpus": 1, "gpuType": "nvidia-tesla-t4", "maxWorkers": 3},
        "status": {"state": "UPDATE_IN_PROGRESS", "replicas": 2, "readyReplicas": 1, "queueDepth": 5,
                   "conditions": [{"type": "Ready", "status": "False", "reason": "Waiting",
                                   "message": "1 of 2 workers ready",
                                   "lastTransitionTime": "2026-01-31T12:00:00Z"}]},
    }))
    .expect("endpoint fixture")
}

fn callback() -> CallbackState {
    let attempt = |at_ms, status_code, error: Option<&str>, duration_ms| DeliveryAttempt {
        at_ms,
        status_code,
        error: error.map(str::to_owned),
        duration_ms,
    };
    CallbackState {
        url: "https://example.com/cb".into(),
        state: DeliveryState::DeadLettered,
        attempts: vec![
            attempt(1_769_860_800_000, Some(500), None, 12),
            attempt(1_769_860_805_000, None, Some("connection refused"), 3),
        ],
    }
}

fn task_id() -> TaskId {
    let endpoint = endpoint().endpoint_id();
    TaskId::parse(&format!("{endpoint}-0190f4a2-7c1e-7b3a-9f00-0123456789ab")).expect("id")
}

fn letter() -> DeadLetter {
    let ring = crate::seal::KeyRing::generate();
    let target = CallbackTarget {
        url: "https://example.com/cb".into(),
        auth: None,
    };
    let id = task_id();
    let sealed = target.seal_for(&ring, id.endpoint(), &id).expect("seals");
    DeadLetter {
        job: CallbackJob::for_unrun(&id, sealed, TaskOutcome::Cancelled),
        dead_at_ms: 1_769_860_900_000,
        reason: "receiver answered 500 on every attempt".into(),
    }
}

fn text(view: impl serde::Serialize) -> String {
    serde_json::to_string(&view).expect("serializes")
}

#[test]
fn bundles_and_endpoints_keep_their_bytes() {
    assert_eq!(text(views::bundle(&bundle())), BUNDLE_V1);
    assert_eq!(text(views::bundle_v2(&bundle())), BUNDLE_V2);
    assert_eq!(text(views::endpoint(&endpoint())), ENDPOINT);
}

#[test]
fn tasks_and_dead_letters_keep_their_bytes() {
    let pending = TaskRecord::pending(endpoint().endpoint_id());
    let succeeded = TaskRecord {
        status: TaskStatus::Success,
        result: Some(json!({"b": [1, 2], "a": "x"})),
        status_code: Some(200),
        started_at_ms: Some(1_769_860_801_000),
        finished_at_ms: Some(1_769_860_802_000),
        ..pending.clone()
    };
    let failed = TaskRecord {
        status: TaskStatus::Failure,
        error: Some(TaskError {
            message: "model answered 500".into(),
            detail: Some("boom".into()),
        }),
        status_code: Some(500),
        ..pending.clone()
    };
    let id = task_id();
    assert_eq!(
        text(views::task(&id, &succeeded, Some(&callback()))),
        TASK_SUCCEEDED
    );
    assert_eq!(text(views::task(&id, &failed, None)), TASK_FAILED);
    assert_eq!(text(views::task(&id, &pending, None)), TASK_PENDING);
    assert_eq!(
        text(views::dead_letter(&letter(), Some(&callback()))),
        DEAD_LETTER
    );
    assert_eq!(
        text(views::dead_letter(&letter(), None)),
        DEAD_LETTER_WITHOUT_STATE
    );
}
