//! Wire types shared by the gateway, the forwarder and the dispatcher: the task a client submits,
//! the record of its progress, and the callback job. Every type that crosses NATS is wrapped in
//! [`Versioned`] so a rolling upgrade can tell old messages from new ones.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd::EndpointId;
use crate::seal::{Context, KeyRing, SealError, Sealed};

/// A task's id: its endpoint's id and a UUIDv7, `end_4f1c…-0190f4a2-7c1e-…`, so one endpoint's
/// ids sort by submission time.
///
/// The id carries its endpoint because the task's record is kept under that endpoint
/// (`queue::names::record_key`): a forwarder may read and write only its own endpoint's
/// records, and `GET /v1/async-tasks/{id}` still finds a record from the id alone, with one
/// read. Launch clients treat task ids as opaque strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId {
    id: String,
    endpoint: EndpointId,
}

/// Between the endpoint and the UUID: a character neither an endpoint id nor a KV key token
/// breaks on.
const TASK_ID_SEPARATOR: char = '-';

impl TaskId {
    pub fn generate(endpoint: &EndpointId) -> Self {
        Self::of(endpoint, uuid::Uuid::now_v7())
    }

    /// Accepts an id given by a client; `None` when it cannot be one of ours.
    pub fn parse(text: &str) -> Option<Self> {
        let (endpoint, unique) = text.split_once(TASK_ID_SEPARATOR)?;
        let endpoint = EndpointId::parse(endpoint)?;
        let unique = uuid::Uuid::parse_str(unique).ok()?;
        Some(Self::of(&endpoint, unique))
    }

    /// The task of `endpoint` that `unique` (as [`TaskId::within_endpoint`] gives it) names.
    pub fn within(endpoint: &EndpointId, unique: &str) -> Option<Self> {
        let unique = uuid::Uuid::parse_str(unique).ok()?;
        Some(Self::of(endpoint, unique))
    }

    fn of(endpoint: &EndpointId, unique: uuid::Uuid) -> Self {
        TaskId {
            id: format!("{endpoint}{TASK_ID_SEPARATOR}{}", unique.hyphenated()),
            endpoint: endpoint.clone(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The endpoint the task was submitted to.
    pub fn endpoint(&self) -> &EndpointId {
        &self.endpoint
    }

    /// When the task was submitted, in Unix milliseconds: the UUIDv7's timestamp.
    pub fn created_at_ms(&self) -> Option<u64> {
        let unique = uuid::Uuid::parse_str(self.within_endpoint()).ok()?;
        let (seconds, nanos) = unique.get_timestamp()?.to_unix();
        Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
    }

    /// What tells the task from the endpoint's other tasks: the id without its endpoint.
    pub fn within_endpoint(&self) -> &str {
        // Built as endpoint, separator, UUID (`of`); an endpoint id holds no separator.
        self.id
            .split_once(TASK_ID_SEPARATOR)
            .map_or(self.id.as_str(), |(_, unique)| unique)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl TryFrom<String> for TaskId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        TaskId::parse(&text).ok_or_else(|| format!("{text:?} is not a task id"))
    }
}

impl From<TaskId> for String {
    fn from(task: TaskId) -> String {
        task.id
    }
}

/// Envelope of everything ferry stores or sends over NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum Versioned<T> {
    #[serde(rename = "1")]
    V1(T),
    /// Version 1 with its large payload (a task's args or result) kept apart, in its endpoint's
    /// payload bucket: the queue puts the payload back before any role sees the message.
    #[serde(rename = "1+stored")]
    V1Stored { payload: StoredPayload, message: T },
}

impl<T> Versioned<T> {
    /// The message; a stored payload stays out of it (only the queue reads such messages).
    pub fn into_inner(self) -> T {
        match self {
            Versioned::V1(inner) | Versioned::V1Stored { message: inner, .. } => inner,
        }
    }

    /// The message, as [`Versioned::into_inner`] gives it.
    pub fn message(&self) -> &T {
        match self {
            Versioned::V1(inner) | Versioned::V1Stored { message: inner, .. } => inner,
        }
    }
}

/// Where a message's payload is kept when it is too large to travel in the message: an object
/// of the bucket of the endpoint the message belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPayload {
    pub object: String,
    pub bytes: u64,
}

/// The largest model answer ferry keeps as a task's result: the documented body size.
pub const MAX_RESULT_BYTES: usize = 10 * 1024 * 1024;

/// Credentials presented to a callback receiver, in Launch's `callback_auth` shape.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CallbackAuth {
    /// HTTP Basic auth.
    Basic { username: String, password: String },
    /// A TLS client certificate and its private key, both PEM.
    Mtls { cert: String, key: String },
}

impl fmt::Debug for CallbackAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackAuth::Basic { username, .. } => write!(f, "Basic({username}, ..)"),
            CallbackAuth::Mtls { .. } => f.write_str("Mtls(..)"),
        }
    }
}

/// Where a task's result is posted when it finishes. It crosses NATS only sealed
/// (`Sealed<CallbackTarget>`, bound to its task): a worker can neither read the credentials nor
/// send them, or the endpoint's signature and default credentials, to another URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackTarget {
    pub url: String,
    /// The task's own credentials; the endpoint's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CallbackAuth>,
}

impl CallbackTarget {
    /// The target sealed for `task` of `endpoint`: it opens for that task only, with this URL.
    pub fn seal_for(
        &self,
        ring: &KeyRing,
        endpoint: &EndpointId,
        task: &TaskId,
    ) -> Result<Sealed<CallbackTarget>, SealError> {
        Sealed::seal(ring, self, &Context::callback_target(endpoint, task))
    }
}

/// An endpoint's callback secrets, read from the Secrets its spec names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallbackSecrets {
    /// `whsec_…` secrets; every callback is signed with each (two during a rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_auth: Option<CallbackAuth>,
}

/// An endpoint's callback delivery settings with its secrets resolved and sealed: what the
/// dispatcher, which has no access to the Kubernetes API, needs to deliver the endpoint's
/// callbacks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallbackPolicy {
    /// Sealed for the endpoint; none when the endpoint has no signing secret or credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Sealed<CallbackSecrets>>,
    /// Delays between attempts, in seconds; ferry's default schedule when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule_seconds: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<u32>,
    /// Hosts callbacks may go to (exact or `*.suffix`); any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl CallbackPolicy {
    /// The endpoint's secrets, opened; none when it has none.
    pub fn open_secrets(
        &self,
        ring: &KeyRing,
        endpoint: &EndpointId,
    ) -> Result<CallbackSecrets, SealError> {
        match &self.secrets {
            None => Ok(CallbackSecrets::default()),
            Some(sealed) => sealed.open(ring, &Context::callback_secrets(endpoint)),
        }
    }
}

/// A queued task, as a worker receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub task_id: TaskId,
    pub endpoint_id: EndpointId,
    /// The JSON body POSTed to the model's predict route.
    pub args: Value,
    /// Launch's `url`: where the worker fetches the model's input, sent in place of `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_url: Option<String>,
    /// Set when the endpoint has the callback hook and a URL resolved at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Sealed<CallbackTarget>>,
    /// Unix time of submission in milliseconds.
    pub submitted_at_ms: u64,
    /// Revision of the PENDING record written at submission: the first worker to run the task
    /// writes over it without reading it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_revision: Option<u64>,
}

/// Launch's task status values, and ferry's `CANCELLED`: a queued task cancelled before any
/// worker started it (Launch's client stops polling on it with "Unrecognized status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Pending,
    Started,
    Success,
    Failure,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Started,
        TaskStatus::Success,
        TaskStatus::Failure,
        TaskStatus::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        self.stage() == 2
    }

    /// The wire name: `PENDING`, `STARTED`, …
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Started => "STARTED",
            TaskStatus::Success => "SUCCESS",
            TaskStatus::Failure => "FAILURE",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }

    /// Reads a wire name, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether a record in this status may be replaced by one in `next`. Records move only
    /// forward (PENDING → STARTED → SUCCESS | FAILURE, or PENDING → CANCELLED), and the first
    /// final outcome is the task's outcome: a redelivered attempt's late STARTED, or a second
    /// run's result, never replaces it, and a started task is never cancelled.
    pub fn may_become(self, next: TaskStatus) -> bool {
        let cancels_a_started_task = self == TaskStatus::Started && next == TaskStatus::Cancelled;
        !self.is_final() && next.stage() >= self.stage() && !cancels_a_started_task
    }

    fn stage(self) -> u8 {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Started => 1,
            TaskStatus::Success | TaskStatus::Failure | TaskStatus::Cancelled => 2,
        }
    }
}

/// Why a task failed, in words a client can act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub message: String,
    /// More detail, such as the model's response body; Launch calls it the traceback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The stored state of a task; the gateway's `GET /v1/async-tasks/{id}` reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub endpoint_id: EndpointId,
    pub status: TaskStatus,
    /// The model's JSON output, on SUCCESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// The model's HTTP status code, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Unix time of the last change in milliseconds.
    pub updated_at_ms: u64,
    /// Deliveries a worker returned to the queue without running the task (its model was
    /// unavailable, or it was stopping); they do not count against the task's attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handed_back: u32,
    /// Unix time in milliseconds a worker started the task (the run that stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Unix time in milliseconds the task reached its final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The task's callback target while it is PENDING, so that a cancellation, which never
    /// sees the queued message, can send the callback at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Sealed<CallbackTarget>>,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

impl TaskRecord {
    pub fn pending(endpoint_id: EndpointId) -> Self {
        TaskRecord {
            endpoint_id,
            status: TaskStatus::Pending,
            result: None,
            error: None,
            status_code: None,
            updated_at_ms: now_ms(),
            handed_back: 0,
            started_at_ms: None,
            finished_at_ms: None,
            callback: None,
        }
    }

    /// True when `other` records the same state, whatever hand-backs and start time either
    /// holds (a writer carries those of the record it replaces over into its own).
    pub fn same_state_as(&self, other: &TaskRecord) -> bool {
        self.endpoint_id == other.endpoint_id
            && self.status == other.status
            && self.result == other.result
            && self.error == other.error
            && self.status_code == other.status_code
            && self.updated_at_ms == other.updated_at_ms
    }

    pub fn started(endpoint_id: EndpointId) -> Self {
        let now = now_ms();
        TaskRecord {
            status: TaskStatus::Started,
            started_at_ms: Some(now),
            updated_at_ms: now,
            ..TaskRecord::pending(endpoint_id)
        }
    }

    /// The record of a task cancelled before it started, at `now_ms`.
    pub fn cancelled(endpoint_id: EndpointId, now_ms: u64) -> Self {
        TaskRecord {
            status: TaskStatus::Cancelled,
            updated_at_ms: now_ms,
            finished_at_ms: Some(now_ms),
            ..TaskRecord::pending(endpoint_id)
        }
    }

    /// The record of a task its queue dropped unrun at `now_ms`, as no worker took it within
    /// the endpoint's `taskExpiresSeconds`: a FAILURE that says so.
    pub fn expired(endpoint_id: EndpointId, now_ms: u64) -> Self {
        TaskRecord {
            status: TaskStatus::Failure,
            error: Some(TaskError {
                message: TASK_EXPIRED.into(),
                detail: None,
            }),
            updated_at_ms: now_ms,
            finished_at_ms: Some(now_ms),
            ..TaskRecord::pending(endpoint_id)
        }
    }

    /// True for the record [`TaskRecord::expired`] makes.
    pub fn is_expiry(&self) -> bool {
        self.status == TaskStatus::Failure
            && self.started_at_ms.is_none()
            && self
                .error
                .as_ref()
                .is_some_and(|error| error.message == TASK_EXPIRED)
    }
}

/// The error of a task that expired in its queue.
const TASK_EXPIRED: &str =
    "the task expired in its queue: no worker took it within the endpoint's taskExpiresSeconds";

/// How a task ended, as its callback reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskOutcome {
    Success {
        result: Value,
    },
    Failure {
        error: TaskError,
    },
    /// Cancelled while queued: it never ran.
    Cancelled,
}

/// A callback to deliver, as the dispatcher receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackJob {
    pub task_id: TaskId,
    pub endpoint_id: EndpointId,
    /// Sealed by the gateway for this task ([`crate::seal::Context::callback_target`]).
    pub target: Sealed<CallbackTarget>,
    pub outcome: TaskOutcome,
    /// Unix time the task was submitted, in milliseconds.
    pub submitted_at_ms: u64,
    /// Attempts made before this job was queued (retries are queued as new jobs).
    #[serde(default)]
    pub prior_attempts: u32,
    /// Times the job was redelivered after being dead-lettered.
    #[serde(default)]
    pub redeliveries: u32,
}

/// A callback given up on, kept until redelivered or expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: CallbackJob,
    pub dead_at_ms: u64,
    pub reason: String,
}

impl CallbackJob {
    /// Where and with which credentials the callback goes; fails for a target that was not
    /// sealed for this task by a holder of `ring`.
    pub fn open_target(&self, ring: &KeyRing) -> Result<CallbackTarget, SealError> {
        let context = Context::callback_target(&self.endpoint_id, &self.task_id);
        self.target.open(ring, &context)
    }

    /// The first callback job of a finished task; `None` when the task sends no callback.
    pub fn for_task(task: &TaskMessage, outcome: TaskOutcome) -> Option<Self> {
        let target = task.callback.clone()?;
        Some(CallbackJob {
            task_id: task.task_id.clone(),
            endpoint_id: task.endpoint_id.clone(),
            target,
            outcome,
            submitted_at_ms: task.submitted_at_ms,
            prior_attempts: 0,
            redeliveries: 0,
        })
    }

    /// The callback of a task that ended without running (cancelled or expired while queued),
    /// to the target its record kept.
    pub fn for_unrun(
        task_id: &TaskId,
        target: Sealed<CallbackTarget>,
        outcome: TaskOutcome,
    ) -> Self {
        CallbackJob {
            task_id: task_id.clone(),
            endpoint_id: task_id.endpoint().clone(),
            target,
            outcome,
            submitted_at_ms: task_id.created_at_ms().unwrap_or_default(),
            prior_attempts: 0,
            redeliveries: 0,
        }
    }

    /// The JSON body POSTed to the receiver: `{"task_id", "status", "result"}` or
    /// `{"task_id", "status", "error"}`.
    pub fn body(&self) -> Value {
        let mut body = serde_json::json!({ "task_id": self.task_id });
        let outcome = serde_json::to_value(&self.outcome).unwrap_or(Value::Null);
        if let (Value::Object(body), Value::Object(outcome)) = (&mut body, outcome) {
            body.extend(outcome);
        }
        body
    }
}

/// The delivery state of a task's callback; stored beside the task record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallbackState {
    pub url: String,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
}

impl CallbackState {
    /// Attempts kept per task: the newest, enough to see a pattern without growing the record.
    pub const KEPT_ATTEMPTS: usize = 20;

    /// The state after one more attempt whose verdict is `verdict`. Attempts are only ever
    /// added (dispatchers racing on one task each add theirs), and a delivered callback stays
    /// delivered whatever a slower attempt concluded.
    pub fn with_attempt(mut self, attempt: DeliveryAttempt, verdict: DeliveryState) -> Self {
        let at = self
            .attempts
            .partition_point(|earlier| earlier.at_ms <= attempt.at_ms);
        self.attempts.insert(at, attempt);
        if self.attempts.len() > Self::KEPT_ATTEMPTS {
            self.attempts
                .drain(..self.attempts.len() - Self::KEPT_ATTEMPTS);
        }
        if self.state != DeliveryState::Delivered {
            self.state = verdict;
        }
        self
    }

    /// The state once a dead-lettered callback is queued again: it waits for its next attempt.
    /// A callback delivered meanwhile stays delivered.
    pub fn redelivered(mut self) -> Self {
        if self.state == DeliveryState::DeadLettered {
            self.state = DeliveryState::Pending;
        }
        self
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryState {
    /// Queued or waiting for the next attempt.
    #[default]
    Pending,
    Delivered,
    /// Given up: the receiver refused it for good or every attempt failed.
    DeadLettered,
}

/// One try at delivering a callback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// Unix time of the attempt in milliseconds.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from sending the request to its outcome.
    pub duration_ms: u64,
}

/// A sync task's answer, and each event of a streaming task, in Launch's shape: on SUCCESS
/// `result` is `{"result": <model output>}`; on FAILURE a sync answer's `result` is the error
/// message and `traceback` the detail, while a streaming event's `result` is null and its
/// `traceback` the whole reason (Launch's client reads an event's `result` as an object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncResponse {
    pub status: TaskStatus,
    pub result: Option<Value>,
    pub traceback: Option<String>,
    pub status_code: Option<u16>,
}

impl SyncResponse {
    pub fn success(output: Value, status_code: u16) -> Self {
        SyncResponse {
            status: TaskStatus::Success,
            result: Some(serde_json::json!({ "result": output })),
            traceback: None,
            status_code: Some(status_code),
        }
    }

    pub fn failure(error: &TaskError, status_code: Option<u16>) -> Self {
        SyncResponse {
            status: TaskStatus::Failure,
            result: Some(Value::from(error.message.clone())),
            traceback: error.detail.clone(),
            status_code,
        }
    }

    pub fn stream_failure(error: &TaskError, status_code: Option<u16>) -> Self {
        let traceback = match &error.detail {
            Some(detail) => format!("{}: {detail}", error.message),
            None => error.message.clone(),
        };
        SyncResponse {
            status: TaskStatus::Failure,
            result: None,
            traceback: Some(traceback),
            status_code,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(outcome: TaskOutcome) -> CallbackJob {
        let endpoint_id = EndpointId::for_resource("default", "demo");
        let task_id = TaskId::parse(&format!(
            "{endpoint_id}-0190f4a2-7c1e-7b3a-9f00-0123456789ab"
        ))
        .expect("valid task id");
        let target = CallbackTarget {
            url: "http://127.0.0.1:9/cb".into(),
            auth: None,
        };
        let target = target
            .seal_for(&KeyRing::generate(), &endpoint_id, &task_id)
            .expect("seals");
        CallbackJob {
            task_id,
            endpoint_id,
            target,
            outcome,
            submitted_at_ms: 0,
            prior_attempts: 0,
            redeliveries: 0,
        }
    }

    #[test]
    fn success_body_matches_the_seed_contract() {
        let job = job(TaskOutcome::Success { result: json!(7) });
        assert_eq!(
            job.body(),
            json!({"task_id": job.task_id.as_str(), "status": "SUCCESS", "result": 7})
        );
    }

    #[test]
    fn a_cancelled_body_says_so_and_carries_no_result() {
        let body = job(TaskOutcome::Cancelled).body();
        assert_eq!(body["status"], "CANCELLED");
        assert!(body.get("result").is_none() && body.get("error").is_none());
    }

    #[test]
    fn statuses_read_their_wire_names_and_a_task_id_its_creation_time() {
        for status in TaskStatus::ALL {
            let wire = serde_json::to_value(status).expect("serializes");
            assert_eq!(wire, status.as_str());
            assert_eq!(
                TaskStatus::parse(&status.as_str().to_lowercase()),
                Some(status)
            );
        }
        assert_eq!(TaskStatus::parse("DONE"), None);
        let before = now_ms();
        let id = TaskId::generate(&EndpointId::for_resource("ml", "demo"));
        let created = id.created_at_ms().expect("a UUIDv7 time");
        assert!(before <= created && created <= now_ms(), "{created}");
    }

    #[test]
    fn failure_body_carries_the_error() {
        let error = TaskError {
            message: "model answered 500".into(),
            detail: None,
        };
        let body = job(TaskOutcome::Failure { error }).body();
        assert_eq!(body["status"], "FAILURE");
        assert_eq!(body["error"]["message"], "model answered 500");
        assert!(body.get("result").is_none());
    }

    #[test]
    fn messages_carry_a_version_tag() {
        let record = Versioned::V1(TaskRecord::pending(EndpointId::for_resource("a", "b")));
        let text = serde_json::to_string(&record).expect("serializes");
        assert!(text.starts_with(r#"{"v":"1""#), "{text}");
        let back: Versioned<TaskRecord> = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, record);
    }

    #[test]
    fn a_sealed_target_hides_its_credentials_and_opens_only_for_its_task() {
        let ring = KeyRing::generate();
        let target = CallbackTarget {
            url: "https://hooks.example/cb".into(),
            auth: Some(CallbackAuth::Basic {
                username: "user".into(),
                password: "s3cret-pw".into(),
            }),
        };
        let mut job = job(TaskOutcome::Success { result: json!(7) });
        job.target = target
            .seal_for(&ring, &job.endpoint_id, &job.task_id)
            .expect("seals");
        let wire = serde_json::to_string(&Versioned::V1(job.clone())).expect("serializes");
        assert!(
            !wire.contains("s3cret-pw") && !wire.contains("hooks.example"),
            "{wire}"
        );
        assert_eq!(job.open_target(&ring).expect("opens"), target);
        let moved = CallbackJob {
            task_id: TaskId::generate(&job.endpoint_id),
            ..job.clone()
        };
        assert!(matches!(
            moved.open_target(&ring),
            Err(SealError::Tampered { .. })
        ));
        assert!(matches!(
            job.open_target(&KeyRing::generate()),
            Err(SealError::UnknownKey { .. })
        ));
    }

    #[test]
    fn callback_auth_reads_launch_shapes_and_never_prints_secrets() {
        let basic: CallbackAuth =
            serde_json::from_value(json!({"kind": "basic", "username": "u", "password": "p"}))
                .expect("basic");
        assert_eq!(
            basic,
            CallbackAuth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let mtls: CallbackAuth =
            serde_json::from_value(json!({"kind": "mtls", "cert": "C", "key": "K"})).expect("mtls");
        assert_eq!(format!("{mtls:?}"), "Mtls(..)");
        assert_eq!(format!("{basic:?}"), "Basic(u, ..)");
    }

    #[test]
    fn records_move_forward_only() {
        use TaskStatus::*;
        let allowed = [
            (Pending, Pending),
            (Pending, Started),
            (Pending, Success),
            (Pending, Failure),
            (Started, Started),
            (Started, Success),
            (Started, Failure),
            (Pending, Cancelled),
        ];
        let refused = [
            (Started, Cancelled),
            (Cancelled, Started),
            (Cancelled, Success),
            (Cancelled, Cancelled),
            (Success, Cancelled),
            (Started, Pending),
            (Success, Pending),
            (Success, Started),
            (Success, Success),
            (Success, Failure),
            (Failure, Pending),
            (Failure, Started),
            (Failure, Success),
            (Failure, Failure),
        ];
        for (from, to) in allowed {
            assert!(from.may_become(to), "{from:?} → {to:?} is allowed");
        }
        for (from, to) in refused {
            assert!(!from.may_become(to), "{from:?} → {to:?} is refused");
        }
    }

    fn attempt(at_ms: u64) -> DeliveryAttempt {
        DeliveryAttempt {
            at_ms,
            status_code: Some(500),
            error: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn a_delivered_callback_stays_delivered_after_a_slower_attempt() {
        let delivered = CallbackState::default().with_attempt(attempt(2), DeliveryState::Delivered);
        let later = delivered.with_attempt(attempt(1), DeliveryState::Pending);
        assert_eq!(later.state, DeliveryState::Delivered);
        let times: Vec<u64> = later.attempts.iter().map(|a| a.at_ms).collect();
        assert_eq!(times, [1, 2], "both attempts kept, in time order");
        let given_up = later.with_attempt(attempt(3), DeliveryState::DeadLettered);
        assert_eq!(given_up.state, DeliveryState::Delivered);
    }

    #[test]
    fn attempts_are_added_and_only_the_oldest_beyond_the_bound_dropped() {
        let mut state = CallbackState::default();
        for at in 0..(CallbackState::KEPT_ATTEMPTS as u64 + 5) {
            state = state.with_attempt(attempt(at), DeliveryState::Pending);
        }
        assert_eq!(state.attempts.len(), CallbackState::KEPT_ATTEMPTS);
        assert_eq!(state.attempts[0].at_ms, 5);
        assert_eq!(state.state, DeliveryState::Pending);
        let dead = state.with_attempt(attempt(99), DeliveryState::DeadLettered);
        assert_eq!(dead.state, DeliveryState::DeadLettered);
    }

    #[test]
    fn redelivery_reopens_only_a_dead_letter() {
        let dead = CallbackState {
            state: DeliveryState::DeadLettered,
            ..Default::default()
        };
        assert_eq!(dead.redelivered().state, DeliveryState::Pending);
        let delivered = CallbackState {
            state: DeliveryState::Delivered,
            ..Default::default()
        };
        assert_eq!(delivered.redelivered().state, DeliveryState::Delivered);
    }

    #[test]
    fn task_ids_name_their_endpoint_and_parse_only_our_form() {
        let endpoint = EndpointId::for_resource("ml", "demo");
        let id = TaskId::generate(&endpoint);
        assert_eq!(TaskId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.endpoint(), &endpoint);
        assert!(uuid::Uuid::parse_str(id.within_endpoint()).is_ok(), "{id}");
        assert!(
            !id.as_str().contains(['.', '*', '>', ' ', '/']),
            "a task id is one subject token and one path segment: {id}"
        );
        let unique = id.within_endpoint();
        for foreign in [
            "nope",
            unique,
            "end_nothex-0190f4a2-7c1e-7b3a-9f00-0123456789ab",
            &format!("{endpoint}-not-a-uuid"),
            &format!("{endpoint}.{unique}"),
        ] {
            assert!(TaskId::parse(foreign).is_none(), "{foreign}");
        }
        let decoded: TaskId = serde_json::from_value(serde_json::json!(id.as_str())).expect("id");
        assert_eq!(decoded, id);
        assert!(serde_json::from_value::<TaskId>(serde_json::json!(unique)).is_err());
    }
}
