//! The contract of a worker pod's forwarder, shared by the operator that builds the pod, the
//! gateway that calls it and the forwarder itself: the environment it reads (the operator sets
//! exactly these), the ports and paths it serves and the header that carries the serving token;
//! and what the model beside it is given: its port, in `PORT`, and each task's id in a header.

pub mod env {
    pub const NATS_URL: &str = "FERRY_NATS_URL";
    pub const NATS_CREDS_FILE: &str = "FERRY_NATS_CREDS_FILE";
    pub const NATS_NKEY_SEED_FILE: &str = "FERRY_NATS_NKEY_SEED_FILE";
    pub const NATS_USER: &str = "FERRY_NATS_USER";
    pub const NATS_PASSWORD_FILE: &str = "FERRY_NATS_PASSWORD_FILE";
    pub const NATS_TOKEN_FILE: &str = "FERRY_NATS_TOKEN_FILE";
    pub const NATS_TLS_CA_FILE: &str = "FERRY_NATS_TLS_CA_FILE";
    pub const NATS_TLS_CERT_FILE: &str = "FERRY_NATS_TLS_CERT_FILE";
    pub const NATS_TLS_KEY_FILE: &str = "FERRY_NATS_TLS_KEY_FILE";
    pub const NATS_TLS_REQUIRED: &str = "FERRY_NATS_TLS_REQUIRED";
    pub const RESULT_RETENTION_SECONDS: &str = "FERRY_RESULT_RETENTION_SECONDS";
    pub const ADMIN_LISTEN: &str = "FERRY_ADMIN_LISTEN";
    pub const ENDPOINT_ID: &str = "FERRY_ENDPOINT_ID";
    pub const MODEL_URL: &str = "FERRY_MODEL_URL";
    pub const PREDICT_ROUTE: &str = "FERRY_PREDICT_ROUTE";
    pub const HEALTHCHECK_ROUTE: &str = "FERRY_HEALTHCHECK_ROUTE";
    pub const CONCURRENCY: &str = "FERRY_CONCURRENCY";
    pub const PREDICT_TIMEOUT_SECONDS: &str = "FERRY_PREDICT_TIMEOUT_SECONDS";
    pub const SERVE_LISTEN: &str = "FERRY_SERVE_LISTEN";
    pub const STREAMING_PREDICT_ROUTE: &str = "FERRY_STREAMING_PREDICT_ROUTE";
    pub const SERVING_TOKEN: &str = "FERRY_SERVING_TOKEN";
    pub const INPUT_ALLOW_CIDRS: &str = "FERRY_INPUT_ALLOW_CIDRS";
}

/// Port of the forwarder's `/healthz`, `/readyz` and `/metrics` inside the pod.
pub const FORWARDER_ADMIN_PORT: u16 = 9464;
/// Port on which the forwarder of a sync or streaming endpoint takes the gateway's requests.
pub const FORWARDER_SERVE_PORT: u16 = 9465;
/// Variable that tells the model the port to listen on, in a pod and in `ferry dev` alike.
pub const MODEL_PORT_ENV: &str = "PORT";

/// Path of sync predictions on a serving forwarder.
pub const PREDICT_PATH: &str = "/predict";
/// Path of streaming predictions on a serving forwarder.
pub const STREAM_PATH: &str = "/stream";
/// Header carrying the serving tokens the gateway holds for the endpoint, comma-separated (more
/// than one while a key rotation is under way).
pub const SERVING_TOKEN_HEADER: &str = "ferry-serving-token";
/// Header of every prediction request to the model: the task's id, the same on each delivery of
/// the task, so a model can tell a task delivered again (after a worker stopped) from a new one.
pub const TASK_ID_HEADER: &str = "ferry-task-id";
/// Header of a prediction request whose body is a task's input fetched from a URL (Launch's
/// `url` of a task request) rather than its args: the URL it came from.
pub const INPUT_URL_HEADER: &str = "ferry-input-url";
