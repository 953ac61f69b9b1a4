//! The one validation step of ferry's resources: a raw ModelBundle, or a ModelEndpoint with the
//! bundle it runs, becomes a validated value — the only input of the operator's builders and
//! what every entry point (the operator, `ferry dev`, the Launch API, the manifest loader) hands
//! on. Every rule is checked here, once: the schema's bounds and patterns and the CRD's CEL
//! rules (from the constants of `rules`; a test holds the CRD and this step to the same
//! verdicts), and what no schema can say — names and labels Kubernetes would refuse on the
//! endpoint's children, the ports and variables the worker pod reserves, credentials over
//! plain http.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use kube::ResourceExt;
use regex::Regex;

use super::artifact::{ArtifactFlavor, ArtifactSpec, FrameworkKind};
use super::names::{is_dns_label, is_label_key, is_label_value};
use super::rules::{self, Bounds, Pattern};
use super::{
    EndpointId, EndpointType, ModelBundle, ModelBundleSpec, ModelEndpoint, ModelEndpointSpec,
    PostInferenceHook,
};
use crate::worker::{FORWARDER_ADMIN_PORT, FORWARDER_SERVE_PORT, MODEL_PORT_ENV};

/// Bounded reasons of a refusal, for conditions, Events and metrics.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const BASIC_AUTH_OVER_HTTP: &str = "BasicAuthOverHttp";
}

/// What is wrong with a resource, in words a user can act on. The first rule broken is reported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message(Spelling::Manifest))]
pub enum Invalid {
    /// A required text is empty.
    Empty {
        field: &'static str,
    },
    /// A number outside its bounds.
    OutOfBounds {
        bounds: Bounds,
        value: i64,
    },
    /// An entry of a list outside the bounds of its entries.
    EntryOutOfBounds {
        bounds: Bounds,
        value: u32,
    },
    /// A list longer or shorter than its bounds.
    Length {
        bounds: Bounds,
        length: usize,
    },
    /// A text that does not match its pattern.
    Pattern {
        pattern: Pattern,
        value: String,
    },
    MissingLabel {
        key: &'static str,
    },
    LabelKey {
        key: String,
    },
    LabelValue {
        key: String,
        value: String,
    },
    MinAboveMax {
        min: u32,
        max: u32,
    },
    GpusWithoutType {
        gpus: u32,
    },
    TypeWithoutGpus {
        gpu_type: String,
    },
    GpuType {
        gpu_type: String,
    },
    UrlWithoutHook,
    BasicAuthOverHttp,
    /// A name that must be a DNS label; `why` ends the message.
    DnsLabel {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    /// The model's port is one the forwarder listens on in the same pod.
    PortClash {
        port: u16,
    },
    /// The bundle sets the variable that carries the model's port to another port.
    ReservedEnv {
        port: u16,
    },
    /// Neither or both of a bundle's forms: an image (with its command) or an artifact.
    ImageOrArtifact,
    /// A zip artifact without the module paths of its functions.
    ZipWithoutModulePaths,
    /// An artifact's framework without the image it names.
    FrameworkImage {
        framework: FrameworkKind,
    },
    /// The endpoint's bundle breaks a rule.
    InBundle {
        bundle: String,
        invalid: Box<Invalid>,
    },
}

impl Invalid {
    /// Bounded reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::BasicAuthOverHttp => reason::BASIC_AUTH_OVER_HTTP,
            Invalid::InBundle { invalid, .. } => invalid.reason(),
            _ => reason::INVALID_SPEC,
        }
    }
}

/// A ModelBundle whose spec keeps every rule.
#[derive(Clone, Debug)]
pub struct ValidatedBundle(ModelBundle);

impl ValidatedBundle {
    pub fn bundle(&self) -> &ModelBundle {
        &self.0
    }

    pub fn into_bundle(self) -> ModelBundle {
        self.0
    }
}

/// A ModelEndpoint whose spec keeps every rule, with the valid bundle it runs.
#[derive(Clone, Debug)]
pub struct ValidatedEndpoint {
    endpoint: ModelEndpoint,
    bundle: ValidatedBundle,
}

impl ValidatedEndpoint {
    pub fn endpoint(&self) -> &ModelEndpoint {
        &self.endpoint
    }

    pub fn spec(&self) -> &ModelEndpointSpec {
        &self.endpoint.spec
    }

    pub fn bundle(&self) -> &ModelBundle {
        self.bundle.bundle()
    }

    pub fn endpoint_id(&self) -> EndpointId {
        self.endpoint.endpoint_id()
    }

    pub fn into_parts(self) -> (ModelEndpoint, ModelBundle) {
        (self.endpoint, self.bundle.into_bundle())
    }
}

/// Checks `bundle` against every rule of a ModelBundle.
pub fn validate_bundle(bundle: &ModelBundle) -> Result<ValidatedBundle, Invalid> {
    check_bundle(&bundle.spec)?;
    Ok(ValidatedBundle(bundle.clone()))
}

/// Checks `endpoint` against every rule of a ModelEndpoint, and `bundle` — the ModelBundle the
/// endpoint names, as the caller found it — against those of a ModelBundle.
pub fn validate(
    endpoint: &ModelEndpoint,
    bundle: &ModelBundle,
) -> Result<ValidatedEndpoint, Invalid> {
    let bundle = validate_bundle(bundle).map_err(|invalid| Invalid::InBundle {
        bundle: bundle.name_any(),
        invalid: Box::new(invalid),
    })?;
    check_endpoint(endpoint)?;
    Ok(ValidatedEndpoint {
        endpoint: endpoint.clone(),
        bundle,
    })
}

/// Refuses `value` for `field` unless it is a DNS label (RFC 1123), as Kubernetes requires of
/// a Service's name and Launch of every name.
pub fn check_dns_label(field: &'static str, value: &str) -> Result<(), Invalid> {
    check_dns_label_because(field, value, "")
}

fn check_dns_label_because(
    field: &'static str,
    value: &str,
    why: &'static str,
) -> Result<(), Invalid> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(Invalid::DnsLabel {
            field,
            value: value.to_owned(),
            why,
        })
    }
}

fn check_bundle(spec: &ModelBundleSpec) -> Result<(), Invalid> {
    match &spec.artifact {
        Some(artifact) if spec.image.is_empty() && spec.command.is_empty() => {
            check_artifact(artifact)?;
        }
        None if !spec.image.is_empty() => {}
        _ => return Err(Invalid::ImageOrArtifact),
    }
    check_bounds(rules::PORT, spec.port.into())?;
    if [FORWARDER_ADMIN_PORT, FORWARDER_SERVE_PORT].contains(&spec.port) {
        return Err(Invalid::PortClash { port: spec.port });
    }
    if spec
        .env
        .get(MODEL_PORT_ENV)
        .is_some_and(|port| *port != spec.port.to_string())
    {
        return Err(Invalid::ReservedEnv { port: spec.port });
    }
    check_pattern(rules::PREDICT_ROUTE, &spec.predict_route)?;
    check_pattern(rules::HEALTHCHECK_ROUTE, &spec.healthcheck_route)?;
    if let Some(route) = &spec.streaming_predict_route {
        check_pattern(rules::STREAMING_PREDICT_ROUTE, route)?;
    }
    check_bounds(
        rules::READINESS_INITIAL_DELAY_SECONDS,
        spec.readiness_initial_delay_seconds,
    )
}

fn check_artifact(artifact: &ArtifactSpec) -> Result<(), Invalid> {
    check_pattern(rules::ARTIFACT_LOCATION, &artifact.location)?;
    let module_paths = [
        &artifact.load_predict_fn_module_path,
        &artifact.load_model_fn_module_path,
    ];
    if artifact.flavor == ArtifactFlavor::Zip && module_paths.iter().any(|path| path.is_none()) {
        return Err(Invalid::ZipWithoutModulePaths);
    }
    let framework = &artifact.framework;
    let named = match framework.kind {
        FrameworkKind::Custom => {
            framework.image_repository.is_some() && framework.image_tag.is_some()
        }
        _ => framework.image_tag().is_some(),
    };
    if !named {
        return Err(Invalid::FrameworkImage {
            framework: framework.kind,
        });
    }
    Ok(())
}

fn check_endpoint(endpoint: &ModelEndpoint) -> Result<(), Invalid> {
    let spec = &endpoint.spec;
    if spec.endpoint_type != EndpointType::Async {
        let why = ": it names the Service of a sync or streaming endpoint";
        check_dns_label_because("metadata.name", &endpoint.name_any(), why)?;
    }
    check_not_empty("bundle", &spec.bundle)?;
    check_labels(&spec.labels)?;
    check_resources(spec)?;
    check_workers(spec)?;
    check_callbacks(spec)?;
    check_bounds(rules::TASK_EXPIRES_SECONDS, spec.task_expires_seconds)?;
    check_bounds(
        rules::QUEUE_MESSAGE_TIMEOUT_SECONDS,
        spec.queue_message_timeout_seconds,
    )
}

/// Launch's required labels, and keys and values Kubernetes takes on the worker pods.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if let Some(key) = rules::REQUIRED_LABELS
        .into_iter()
        .find(|key| !labels.contains_key(*key))
    {
        return Err(Invalid::MissingLabel { key });
    }
    for (key, value) in labels {
        if !is_label_key(key) {
            return Err(Invalid::LabelKey { key: key.clone() });
        }
        if !is_label_value(value) {
            return Err(Invalid::LabelValue {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    Ok(())
}

fn check_resources(spec: &ModelEndpointSpec) -> Result<(), Invalid> {
    check_pattern(rules::CPUS, &spec.cpus.0)?;
    check_pattern(rules::MEMORY, &spec.memory.0)?;
    check_pattern(rules::STORAGE, &spec.storage.0)?;
    check_bounds(rules::GPUS, spec.gpus)?;
    match (spec.gpus, &spec.gpu_type) {
        (0, None) => Ok(()),
        (0, Some(gpu_type)) => Err(Invalid::TypeWithoutGpus {
            gpu_type: gpu_type.clone(),
        }),
        (gpus, None) => Err(Invalid::GpusWithoutType { gpus }),
        (_, Some(gpu_type)) if !is_label_value(gpu_type) => Err(Invalid::GpuType {
            gpu_type: gpu_type.clone(),
        }),
        (_, Some(_)) => Ok(()),
    }
}

fn check_workers(spec: &ModelEndpointSpec) -> Result<(), Invalid> {
    check_bounds(rules::MIN_WORKERS, spec.min_workers)?;
    check_bounds(rules::MAX_WORKERS, spec.max_workers)?;
    if spec.min_workers > spec.max_workers {
        return Err(Invalid::MinAboveMax {
            min: spec.min_workers,
            max: spec.max_workers,
        });
    }
    check_bounds(rules::PER_WORKER, spec.per_worker)?;
    check_bounds(
        rules::CONCURRENT_REQUESTS_PER_WORKER,
        spec.concurrent_requests_per_worker,
    )
}

fn check_callbacks(spec: &ModelEndpointSpec) -> Result<(), Invalid> {
    if let Some(url) = &spec.default_callback_url {
        check_pattern(rules::DEFAULT_CALLBACK_URL, url)?;
        if !spec.has_hook(PostInferenceHook::Callback) {
            return Err(Invalid::UrlWithoutHook);
        }
    }
    if spec.default_basic_auth_over_http() {
        return Err(Invalid::BasicAuthOverHttp);
    }
    let Some(policy) = &spec.callbacks else {
        return Ok(());
    };
    if let Some(schedule) = &policy.retry_schedule_seconds {
        let bounds = rules::RETRY_SCHEDULE_LENGTH;
        if !(bounds.min as usize..=bounds.max as usize).contains(&schedule.len()) {
            return Err(Invalid::Length {
                bounds,
                length: schedule.len(),
            });
        }
        let bounds = rules::RETRY_DELAY_SECONDS;
        if let Some(&value) = schedule.iter().find(|delay| !bounds.contains(**delay)) {
            return Err(Invalid::EntryOutOfBounds { bounds, value });
        }
    }
    if let Some(seconds) = policy.attempt_timeout_seconds {
        check_bounds(rules::ATTEMPT_TIMEOUT_SECONDS, seconds)?;
    }
    if let Some(seconds) = policy.connect_timeout_seconds {
        check_bounds(rules::CONNECT_TIMEOUT_SECONDS, seconds)?;
    }
    Ok(())
}

fn check_not_empty(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        Err(Invalid::Empty { field })
    } else {
        Ok(())
    }
}

fn check_bounds(bounds: Bounds, value: u32) -> Result<(), Invalid> {
    if bounds.contains(value) {
        Ok(())
    } else {
        Err(Invalid::OutOfBounds {
            bounds,
            value: value.into(),
        })
    }
}

/// Every pattern of `rules`, compiled once.
static COMPILED: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
    rules::PATTERNS
        .iter()
        .filter_map(|pattern| Some((pattern.regex, Regex::new(pattern.regex).ok()?)))
        .collect()
});

fn check_pattern(pattern: Pattern, value: &str) -> Result<(), Invalid> {
    // A pattern that did not compile matches nothing; the tests compile every one.
    let matches = COMPILED
        .get(pattern.regex)
        .is_some_and(|regex| regex.is_match(value));
    if matches {
        Ok(())
    } else {
        Err(Invalid::Pattern {
            pattern,
            value: value.to_owned(),
        })
    }
}

mod message;
pub use message::Spelling;

#[cfg(test)]
mod tests;
