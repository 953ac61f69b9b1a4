//! The numbers and expressions of the resources' rules — bounds, patterns and the CEL rules with
//! their messages — as constants. The schema attributes of `crd` and the validation step in
//! `crd::validate` both read them, so a bound or a rule is written once.

use kube::core::Rule;

/// An inclusive range a number (or, for a list, its length) must lie in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The field as manifests spell it, with its parents: `callbacks.attemptTimeoutSeconds`.
    pub field: &'static str,
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    pub fn contains(&self, value: u32) -> bool {
        (self.min..=self.max).contains(&value)
    }
}

/// A regular expression a text field must match, as the schema's `pattern` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub field: &'static str,
    pub regex: &'static str,
    /// What a matching value looks like, in words for the user.
    pub expected: &'static str,
}

/// A CEL rule of the CRD (`x-kubernetes-validations`) and the message the API server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CelRule {
    pub rule: &'static str,
    pub message: &'static str,
}

impl From<CelRule> for Rule {
    fn from(cel: CelRule) -> Self {
        Rule::new(cel.rule).message(cel.message)
    }
}

// ModelBundle.
pub const PORT: Bounds = Bounds {
    field: "port",
    min: 1,
    max: 65_535,
};
pub const READINESS_INITIAL_DELAY_SECONDS: Bounds = Bounds {
    field: "readinessInitialDelaySeconds",
    min: 0,
    max: 3600,
};
const ROUTE_REGEX: &str = "^/";
const ROUTE_EXPECTED: &str = "an HTTP path starting with /";
pub const PREDICT_ROUTE: Pattern = Pattern {
    field: "predictRoute",
    regex: ROUTE_REGEX,
    expected: ROUTE_EXPECTED,
};
pub const HEALTHCHECK_ROUTE: Pattern = Pattern {
    field: "healthcheckRoute",
    regex: ROUTE_REGEX,
    expected: ROUTE_EXPECTED,
};
pub const STREAMING_PREDICT_ROUTE: Pattern = Pattern {
    field: "streamingPredictRoute",
    regex: ROUTE_REGEX,
    expected: ROUTE_EXPECTED,
};

// ModelEndpoint.
pub const GPUS: Bounds = Bounds {
    field: "gpus",
    min: 0,
    max: 16,
};
pub const MIN_WORKERS: Bounds = Bounds {
    field: "minWorkers",
    min: 0,
    max: 1000,
};
pub const MAX_WORKERS: Bounds = Bounds {
    field: "maxWorkers",
    min: 1,
    max: 1000,
};
pub const PER_WORKER: Bounds = Bounds {
    field: "perWorker",
    min: 1,
    max: 10_000,
};
pub const CONCURRENT_REQUESTS_PER_WORKER: Bounds = Bounds {
    field: "concurrentRequestsPerWorker",
    min: 1,
    max: 1000,
};
pub const TASK_EXPIRES_SECONDS: Bounds = Bounds {
    field: "taskExpiresSeconds",
    min: 10,
    max: 2_592_000,
};
pub const QUEUE_MESSAGE_TIMEOUT_SECONDS: Bounds = Bounds {
    field: "queueMessageTimeoutSeconds",
    min: 1,
    max: 43_200,
};
/// A Kubernetes resource quantity as ferry takes it: a decimal number and an optional suffix.
pub const QUANTITY_REGEX: &str = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";
const QUANTITY_EXPECTED: &str = "a quantity such as 2, 0.5, 500m or 8Gi";
pub const CPUS: Pattern = Pattern {
    field: "cpus",
    regex: QUANTITY_REGEX,
    expected: QUANTITY_EXPECTED,
};
pub const MEMORY: Pattern = Pattern {
    field: "memory",
    regex: QUANTITY_REGEX,
    expected: QUANTITY_EXPECTED,
};
pub const STORAGE: Pattern = Pattern {
    field: "storage",
    regex: QUANTITY_REGEX,
    expected: QUANTITY_EXPECTED,
};
pub const DEFAULT_CALLBACK_URL: Pattern = Pattern {
    field: "defaultCallbackUrl",
    regex: r"^https?://[^\s]+$",
    expected: "an http:// or https:// URL",
};
pub const RETRY_SCHEDULE_LENGTH: Bounds = Bounds {
    field: "callbacks.retryScheduleSeconds",
    min: 1,
    max: 50,
};
pub const RETRY_DELAY_SECONDS: Bounds = Bounds {
    field: "callbacks.retryScheduleSeconds[]",
    min: 1,
    max: 259_200,
};
pub const ATTEMPT_TIMEOUT_SECONDS: Bounds = Bounds {
    field: "callbacks.attemptTimeoutSeconds",
    min: 1,
    max: 300,
};
pub const CONNECT_TIMEOUT_SECONDS: Bounds = Bounds {
    field: "callbacks.connectTimeoutSeconds",
    min: 1,
    max: 60,
};
pub const BUNDLE_NOT_EMPTY: CelRule = CelRule {
    rule: "self != ''",
    message: "bundle must not be empty",
};
/// Labels every endpoint carries, as Launch requires.
pub const REQUIRED_LABELS: [&str; 2] = ["team", "product"];
pub const TEAM_AND_PRODUCT_LABELS: CelRule = CelRule {
    rule: "'team' in self && 'product' in self",
    message: "labels must include team and product",
};
pub const MIN_WITHIN_MAX: CelRule = CelRule {
    rule: "self.minWorkers <= self.maxWorkers",
    message: "minWorkers must not exceed maxWorkers",
};
pub const GPUS_WITH_GPU_TYPE: CelRule = CelRule {
    rule: "(self.gpus > 0) == has(self.gpuType)",
    message: "gpus and gpuType must be set together",
};
/// `postInferenceHooks` may be absent (an empty list is not written): `has` first, or the rule
/// fails to evaluate instead of answering its message.
pub const DEFAULT_URL_NEEDS_HOOK: CelRule = CelRule {
    rule: "!has(self.defaultCallbackUrl) || (has(self.postInferenceHooks) && self.postInferenceHooks.exists(h, h == 'callback'))",
    message: "defaultCallbackUrl needs the callback post-inference hook",
};

/// Every pattern above, for the validation step to compile once.
pub const PATTERNS: [Pattern; 8] = [
    PREDICT_ROUTE,
    HEALTHCHECK_ROUTE,
    STREAMING_PREDICT_ROUTE,
    CPUS,
    MEMORY,
    STORAGE,
    DEFAULT_CALLBACK_URL,
    ARTIFACT_LOCATION,
];

// The artifact form of a ModelBundle.
/// A bundle is an image (with its command) or an artifact for ferry's Python runtime, never both.
pub const IMAGE_OR_ARTIFACT: CelRule = CelRule {
    rule: "has(self.artifact) ? !(has(self.image) && self.image != '') && !has(self.command) : has(self.image) && self.image != ''",
    message: "set either image (with its command) or artifact",
};
pub const ARTIFACT_LOCATION: Pattern = Pattern {
    field: "artifact.location",
    regex: r"^[^\s]+$",
    expected: "a location such as s3://bucket/model.pkl, file:///models/model.zip or a local path",
};
pub const ZIP_NEEDS_MODULE_PATHS: CelRule = CelRule {
    rule: "self.flavor != 'zip' || (has(self.loadPredictFnModulePath) && has(self.loadModelFnModulePath))",
    message: "a zip artifact needs loadPredictFnModulePath and loadModelFnModulePath",
};
pub const FRAMEWORK_IMAGE: CelRule = CelRule {
    rule: "self.type == 'pytorch' ? has(self.pytorchImageTag) : self.type == 'tensorflow' ? has(self.tensorflowVersion) : (has(self.imageRepository) && has(self.imageTag))",
    message: "framework needs pytorchImageTag (pytorch), tensorflowVersion (tensorflow) or imageRepository and imageTag (custom)",
};
