//! Launch's create and update requests for endpoints and bundles: parsed, mapped onto ferry's
//! resources, and checked with the validation step every entry point uses (`crd::validate`),
//! whose messages then name the fields as Launch does. Pure.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use super::artifacts::{self, ArtifactFields};
use crate::catalog::NamedSecret;
use crate::crd::names::API_VERSION;
use crate::crd::rules::{self, Bounds};
use crate::crd::validate::{
    self, Spelling, ValidatedBundle, ValidatedEndpoint, check_dns_label, validate_bundle,
};
use crate::crd::{
    CallbackAuthKind, CallbackAuthRef, EndpointType, ModelBundle, ModelBundleSpec, ModelEndpoint,
    PostInferenceHook, Quantity,
};

/// A problem with a request, in words for the client (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

impl From<validate::Invalid> for Invalid {
    fn from(refused: validate::Invalid) -> Self {
        Invalid(refused.message(Spelling::Launch))
    }
}

/// A number or a string, as Launch clients send `cpus`, `memory` and `storage`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum NumberOrText {
    Number(serde_json::Number),
    Text(String),
}

impl utoipa::PartialSchema for NumberOrText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let of = |kind| ObjectBuilder::new().schema_type(kind);
        let either = OneOfBuilder::new()
            .item(of(Type::Number))
            .item(of(Type::String));
        either
            .description(Some("A Kubernetes quantity: `1`, `\"500m\"`, `\"8Gi\"`"))
            .into()
    }
}

impl utoipa::ToSchema for NumberOrText {}

impl NumberOrText {
    /// The quantity as the spec holds it; the validation step judges it.
    fn quantity(&self) -> Quantity {
        match self {
            NumberOrText::Number(number) => Quantity(number.to_string()),
            NumberOrText::Text(text) => Quantity(text.trim().to_owned()),
        }
    }
}

/// A count of a request as the spec holds it: one no spec can hold is out of its bounds.
fn count(value: i64, bounds: Bounds) -> Result<u32, Invalid> {
    u32::try_from(value).map_err(|_| validate::Invalid::OutOfBounds { bounds, value }.into())
}

/// `POST /v1/model-endpoints`.
#[derive(Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct CreateEndpoint {
    pub name: String,
    pub model_bundle_id: String,
    pub endpoint_type: String,
    #[serde(default)]
    pub cpus: Option<NumberOrText>,
    #[serde(default)]
    pub gpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<NumberOrText>,
    #[serde(default)]
    pub storage: Option<NumberOrText>,
    #[serde(default)]
    pub gpu_type: Option<String>,
    pub min_workers: i64,
    pub max_workers: i64,
    pub per_worker: i64,
    #[serde(default)]
    pub concurrent_requests_per_worker: Option<i64>,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub post_inference_hooks: Option<Vec<String>>,
    #[serde(default)]
    pub default_callback_url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::task::CallbackAuth>)]
    pub default_callback_auth: Option<Value>,
    #[serde(default)]
    pub task_expires_seconds: Option<i64>,
    #[serde(default)]
    pub queue_message_timeout_seconds: Option<i64>,
}

/// `PUT /v1/model-endpoints/{id}`: every field optional; absent or null keeps the current value.
#[derive(Deserialize, Clone, Debug, Default, utoipa::ToSchema)]
pub struct UpdateEndpoint {
    #[serde(default)]
    pub model_bundle_id: Option<String>,
    #[serde(default)]
    pub cpus: Option<NumberOrText>,
    #[serde(default)]
    pub gpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<NumberOrText>,
    #[serde(default)]
    pub storage: Option<NumberOrText>,
    #[serde(default)]
    pub gpu_type: Option<String>,
    #[serde(default)]
    pub min_workers: Option<i64>,
    #[serde(default)]
    pub max_workers: Option<i64>,
    #[serde(default)]
    pub per_worker: Option<i64>,
    #[serde(default)]
    pub concurrent_requests_per_worker: Option<i64>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub post_inference_hooks: Option<Vec<String>>,
    #[serde(default)]
    pub default_callback_url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::task::CallbackAuth>)]
    pub default_callback_auth: Option<Value>,
    #[serde(default)]
    pub task_expires_seconds: Option<i64>,
    #[serde(default)]
    pub queue_message_timeout_seconds: Option<i64>,
}

impl From<CreateEndpoint> for UpdateEndpoint {
    fn from(create: CreateEndpoint) -> Self {
        UpdateEndpoint {
            model_bundle_id: Some(create.model_bundle_id),
            cpus: create.cpus,
            gpus: create.gpus,
            memory: create.memory,
            storage: create.storage,
            gpu_type: create.gpu_type,
            min_workers: Some(create.min_workers),
            max_workers: Some(create.max_workers),
            per_worker: Some(create.per_worker),
            concurrent_requests_per_worker: create.concurrent_requests_per_worker,
            labels: Some(create.labels),
            post_inference_hooks: create.post_inference_hooks,
            default_callback_url: create.default_callback_url,
            default_callback_auth: create.default_callback_auth,
            task_expires_seconds: create.task_expires_seconds,
            queue_message_timeout_seconds: create.queue_message_timeout_seconds,
        }
    }
}

/// A new endpoint named `name` in `namespace` running `bundle`, built from the defaults of a
/// minimal manifest and then the request (as an update of nothing).
pub fn new_endpoint(
    namespace: &str,
    create: CreateEndpoint,
    bundle: &ModelBundle,
) -> Result<(ValidatedEndpoint, Vec<NamedSecret>), Invalid> {
    // Launch takes only names that are DNS labels.
    check_dns_label("name", &create.name)?;
    let endpoint_type = match create.endpoint_type.as_str() {
        "async" => EndpointType::Async,
        "sync" => EndpointType::Sync,
        "streaming" => EndpointType::Streaming,
        other => {
            return Err(invalid(format!(
                "endpoint_type {other:?} is not async, sync or streaming"
            )));
        }
    };
    let minimal = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "ModelEndpoint",
        "metadata": {"name": create.name, "namespace": namespace},
        "spec": {"bundle": bundle.name_any(), "labels": {}},
    });
    let mut endpoint: ModelEndpoint = serde_json::from_value(minimal)
        .map_err(|error| invalid(format!("building the endpoint: {error}")))?;
    endpoint.spec.endpoint_type = endpoint_type;
    endpoint.spec.labels.clear();
    update_endpoint(&endpoint, create.into(), bundle)
}

/// The endpoint with `update` applied, running `bundle` (the one it names, or the one it runs):
/// absent fields keep their value, labels merge, hooks are kept when omitted. Returns the
/// Secrets the update's credentials go into.
pub fn update_endpoint(
    current: &ModelEndpoint,
    update: UpdateEndpoint,
    bundle: &ModelBundle,
) -> Result<(ValidatedEndpoint, Vec<NamedSecret>), Invalid> {
    let mut endpoint = current.clone();
    let spec = &mut endpoint.spec;
    spec.bundle = bundle.name_any();
    if let Some(cpus) = &update.cpus {
        spec.cpus = cpus.quantity();
    }
    if let Some(memory) = &update.memory {
        spec.memory = memory.quantity();
    }
    if let Some(storage) = &update.storage {
        spec.storage = storage.quantity();
    }
    if let Some(gpus) = update.gpus {
        spec.gpus = gpus;
    }
    if update.gpu_type.is_some() {
        spec.gpu_type = update.gpu_type.clone();
    }
    if spec.gpus == 0 && update.gpus.is_some() && update.gpu_type.is_none() {
        spec.gpu_type = None;
    }
    if let Some(value) = update.min_workers {
        spec.min_workers = count(value, rules::MIN_WORKERS)?;
    }
    if let Some(value) = update.max_workers {
        spec.max_workers = count(value, rules::MAX_WORKERS)?;
    }
    if let Some(value) = update.per_worker {
        spec.per_worker = count(value, rules::PER_WORKER)?;
    }
    if let Some(value) = update.concurrent_requests_per_worker {
        spec.concurrent_requests_per_worker = count(value, rules::CONCURRENT_REQUESTS_PER_WORKER)?;
    }
    if let Some(value) = update.task_expires_seconds {
        spec.task_expires_seconds = count(value, rules::TASK_EXPIRES_SECONDS)?;
    }
    if let Some(value) = update.queue_message_timeout_seconds {
        spec.queue_message_timeout_seconds = count(value, rules::QUEUE_MESSAGE_TIMEOUT_SECONDS)?;
    }
    if let Some(labels) = update.labels {
        spec.labels.extend(labels);
    }
    if let Some(hooks) = &update.post_inference_hooks {
        spec.post_inference_hooks = parse_hooks(hooks)?;
        // Launch's client never sends `default_callback_url: null`: dropping the callback hook
        // is how a user turns callbacks off, so the default target and its credentials go too.
        if !spec.has_hook(PostInferenceHook::Callback) && update.default_callback_url.is_none() {
            spec.default_callback_url = None;
            spec.default_callback_auth = None;
        }
    }
    if let Some(url) = update.default_callback_url {
        // The guard's rule for any callback URL, as a task's own is held to at submission.
        crate::callback::guard::check_syntax(&url)
            .map_err(|refusal| invalid(format!("default_callback_url {url:?} {refusal}")))?;
        spec.default_callback_url = Some(url);
    }
    let mut secrets = Vec::new();
    if let Some(auth) = update.default_callback_auth.filter(|auth| !auth.is_null()) {
        let (reference, secret) = callback_auth_secret(&endpoint, auth)?;
        endpoint.spec.default_callback_auth = Some(reference);
        secrets.push(secret);
    }
    let validated = validate::validate(&endpoint, bundle)?;
    Ok((validated, secrets))
}

/// Launch's `callback_auth` (`{"kind": "basic", "username", "password"}` or
/// `{"kind": "mtls", "cert", "key"}`) stored in a Secret named after the endpoint.
fn callback_auth_secret(
    endpoint: &ModelEndpoint,
    auth: Value,
) -> Result<(CallbackAuthRef, NamedSecret), Invalid> {
    let auth: crate::task::CallbackAuth = serde_json::from_value(auth).map_err(|error| {
        invalid(format!(
            "default_callback_auth is not basic or mtls credentials: {error}"
        ))
    })?;
    let (kind, data) = match auth {
        crate::task::CallbackAuth::Basic { username, password } => (
            CallbackAuthKind::Basic,
            BTreeMap::from([
                ("username".to_owned(), username.into_bytes()),
                ("password".to_owned(), password.into_bytes()),
            ]),
        ),
        crate::task::CallbackAuth::Mtls { cert, key } => (
            CallbackAuthKind::Mtls,
            BTreeMap::from([
                ("tls.crt".to_owned(), cert.into_bytes()),
                ("tls.key".to_owned(), key.into_bytes()),
            ]),
        ),
    };
    let name = format!("{}-callback-auth", kube::ResourceExt::name_any(endpoint));
    let namespace = crate::crd::namespace_of(endpoint);
    Ok((
        CallbackAuthRef {
            kind,
            secret_name: name.clone(),
        },
        NamedSecret {
            namespace,
            name,
            data,
        },
    ))
}

fn parse_hooks(hooks: &[String]) -> Result<Vec<PostInferenceHook>, Invalid> {
    hooks
        .iter()
        .map(|hook| match hook.as_str() {
            "callback" => Ok(PostInferenceHook::Callback),
            other => Err(invalid(format!(
                "post_inference_hooks: {other:?} is not a known hook (callback)"
            ))),
        })
        .collect()
}

/// `POST /v2/model-bundles` with the `runnable_image` flavor or an artifact one
/// (`cloudpickle_artifact`, `zip_artifact`).
#[derive(Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct CreateBundle {
    pub name: String,
    pub flavor: BundleFlavor,
}

#[derive(Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct BundleFlavor {
    pub flavor: String,
    #[serde(default)]
    pub repository: String,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub predict_route: Option<String>,
    #[serde(default)]
    pub healthcheck_route: Option<String>,
    #[serde(default)]
    pub streaming_predict_route: Option<String>,
    #[serde(default)]
    pub readiness_initial_delay_seconds: Option<u32>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(flatten)]
    pub artifact: ArtifactFields,
}

pub fn new_bundle(namespace: &str, create: CreateBundle) -> Result<ValidatedBundle, Invalid> {
    // Launch takes only names that are DNS labels.
    check_dns_label("name", &create.name)?;
    let flavor = create.flavor;
    let metadata = ObjectMeta {
        name: Some(create.name),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    if let Some(artifact_flavor) = artifacts::artifact_flavor(&flavor.flavor) {
        let artifact =
            artifacts::artifact_spec(artifact_flavor, flavor.artifact).map_err(invalid)?;
        let spec: ModelBundleSpec = serde_json::from_value(serde_json::json!({}))
            .map_err(|error| invalid(format!("building the bundle: {error}")))?;
        let spec = ModelBundleSpec {
            artifact: Some(artifact),
            ..spec
        };
        return Ok(validate_bundle(&ModelBundle { metadata, spec })?);
    }
    if !matches!(
        flavor.flavor.as_str(),
        "runnable_image" | "streaming_enhanced_runnable_image"
    ) {
        return Err(invalid(format!(
            "flavor {:?} is not supported; ferry runs runnable_image, cloudpickle_artifact and zip_artifact bundles",
            flavor.flavor
        )));
    }
    if flavor
        .protocol
        .as_deref()
        .is_some_and(|protocol| protocol != "http")
    {
        return Err(invalid("protocol must be http"));
    }
    if flavor.repository.is_empty() {
        return Err(invalid("flavor.repository is required"));
    }
    let image = if flavor.tag.is_empty() {
        flavor.repository
    } else {
        format!("{}:{}", flavor.repository, flavor.tag)
    };
    let defaults: ModelBundleSpec =
        serde_json::from_value(serde_json::json!({ "image": image }))
            .map_err(|error| invalid(format!("building the bundle: {error}")))?;
    let spec = ModelBundleSpec {
        command: flavor.command,
        env: flavor.env,
        predict_route: flavor
            .predict_route
            .unwrap_or(defaults.predict_route.clone()),
        healthcheck_route: flavor
            .healthcheck_route
            .unwrap_or(defaults.healthcheck_route.clone()),
        streaming_predict_route: flavor.streaming_predict_route,
        readiness_initial_delay_seconds: flavor.readiness_initial_delay_seconds.unwrap_or_default(),
        ..defaults
    };
    Ok(validate_bundle(&ModelBundle { metadata, spec })?)
}

/// `POST /v2/model-bundles/clone-with-changes` (and its `/v1` twin).
#[derive(Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct CloneBundle {
    pub original_model_bundle_id: String,
    /// Refused: a runnable image has no app_config.
    #[serde(default)]
    pub new_app_config: Option<Value>,
}

/// Longest name a clone keeps of its original's, leaving room for `-clone-` and the suffix.
const CLONE_NAME_PREFIX_MAX: usize = 63 - "-clone-".len() - 8;

/// A copy of `original` under a name of its own (`<name>-clone-<suffix>`): a bundle's id
/// follows from its name, so a clone sharing its original's name would replace it. A runnable
/// image has no app_config, so a new one is refused rather than dropped unseen; an artifact's
/// is replaced by it.
pub fn cloned_bundle(
    original: &ModelBundle,
    request: &CloneBundle,
    suffix: &str,
) -> Result<ValidatedBundle, Invalid> {
    let mut spec = original.spec.clone();
    match (request.new_app_config.clone(), spec.artifact.as_mut()) {
        (None | Some(Value::Null), _) => {}
        (Some(Value::Object(config)), Some(artifact)) => {
            artifact.app_config = Some(crate::crd::artifact::AppConfig(config));
        }
        (Some(_), Some(_)) => return Err(invalid("new_app_config must be a JSON object")),
        (Some(_), None) => {
            return Err(invalid(
                "new_app_config: runnable_image bundles have no app_config; set the image's env instead",
            ));
        }
    }
    let name = original.name_any();
    let mut prefix: String = name.chars().take(CLONE_NAME_PREFIX_MAX).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let metadata = ObjectMeta {
        name: Some(format!("{prefix}-clone-{suffix}")),
        namespace: original.metadata.namespace.clone(),
        ..Default::default()
    };
    let clone = ModelBundle { metadata, spec };
    check_dns_label("name", &clone.name_any())?;
    Ok(validate_bundle(&clone)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid bundle named `name` in namespace `ns`.
    fn bundle(name: &str) -> ModelBundle {
        serde_json::from_value(json!({"apiVersion": API_VERSION, "kind": "ModelBundle",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"image": "python:3.12"}}))
        .expect("bundle parses")
    }

    /// The body the Launch client sends in the callbacks example.
    fn seed_create() -> CreateEndpoint {
        serde_json::from_value(json!({"endpoint_type":"async","metadata":{},"memory":"8Gi","cpus":1,"max_workers":1,
            "model_bundle_id":"bun_x","min_workers":1,"gpus":0,"name":"demo-endpoint-callback","per_worker":10,
            "storage":"16Gi","labels":{"team":"MY_TEAM","product":"MY_PRODUCT"},"post_inference_hooks":["callback"],
            "high_priority":false,"default_callback_url":"https://example.com"}))
        .expect("the client's body parses")
    }

    #[test]
    fn the_seed_request_maps_onto_a_model_endpoint() {
        let (validated, secrets) =
            new_endpoint("team-a", seed_create(), &bundle("test-bundle")).expect("valid");
        let endpoint = validated.endpoint();
        let spec = &endpoint.spec;
        assert_eq!(endpoint.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            (spec.bundle.as_str(), spec.endpoint_type),
            ("test-bundle", EndpointType::Async)
        );
        assert_eq!(
            (
                spec.cpus.0.as_str(),
                spec.memory.0.as_str(),
                spec.storage.0.as_str()
            ),
            ("1", "8Gi", "16Gi")
        );
        assert_eq!(
            (spec.min_workers, spec.max_workers, spec.per_worker),
            (1, 1, 10)
        );
        assert_eq!(
            spec.default_callback_url.as_deref(),
            Some("https://example.com")
        );
        assert!(spec.has_hook(PostInferenceHook::Callback));
        assert!(secrets.is_empty());
    }

    #[test]
    fn launch_validation_rules_give_clear_messages() {
        type Mutation = fn(&mut CreateEndpoint);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.name = "Bad_Name".into(), "name"),
            (|r| r.name = "x".repeat(64), "at most 63"),
            (|r| drop(r.labels.remove("team")), "\"team\""),
            (
                |r| drop(r.labels.insert("team".into(), "not ok!".into())),
                "label value",
            ),
            (|r| r.min_workers = -1, "min_workers"),
            (
                |r| (r.min_workers, r.max_workers) = (3, 2),
                "must not exceed",
            ),
            (|r| r.per_worker = 0, "per_worker"),
            (|r| r.gpus = Some(1), "gpu_type"),
            (
                |r| r.default_callback_url = Some("ftp://x".into()),
                "http or https",
            ),
            (
                |r| r.post_inference_hooks = Some(vec!["telepathy".into()]),
                "not a known hook",
            ),
            (|r| r.endpoint_type = "batch".into(), "endpoint_type"),
            (
                |r| r.cpus = Some(NumberOrText::Text("lots".into())),
                "quantity",
            ),
        ];
        for (mutate, expected) in cases {
            let mut request = seed_create();
            mutate(&mut request);
            let error = new_endpoint("ns", request, &bundle("b")).expect_err(expected);
            assert!(
                error.0.contains(expected),
                "{expected:?} not in {:?}",
                error.0
            );
        }
    }

    #[test]
    fn updates_keep_absent_fields_merge_labels_and_keep_hooks() {
        let (current, _) =
            new_endpoint("ns", seed_create(), &bundle("test-bundle")).expect("valid");
        let current = current.endpoint();
        let update: UpdateEndpoint = serde_json::from_value(json!({
            "model_bundle_id": "bun_y", "cpus": 2, "gpus": null, "memory": null, "storage": "20Gi",
            "min_workers": 2, "max_workers": 3, "per_worker": null, "high_priority": false,
            "labels": {"owner": "ml"}, "default_callback_url": null
        }))
        .expect("parses");
        let (updated, _) =
            update_endpoint(current, update, &bundle("other-bundle")).expect("valid");
        let spec = updated.spec();
        assert_eq!(spec.bundle, "other-bundle");
        assert_eq!(
            (
                spec.cpus.0.as_str(),
                spec.memory.0.as_str(),
                spec.storage.0.as_str()
            ),
            ("2", "8Gi", "20Gi")
        );
        assert_eq!(
            (spec.min_workers, spec.max_workers, spec.per_worker),
            (2, 3, 10)
        );
        assert_eq!(spec.labels.len(), 3);
        assert_eq!(
            spec.default_callback_url.as_deref(),
            Some("https://example.com")
        );
        assert!(spec.has_hook(PostInferenceHook::Callback));
    }

    #[test]
    fn removing_the_callback_hook_clears_the_default_target_and_its_credentials() {
        let mut request = seed_create();
        request.default_callback_auth =
            Some(json!({"kind": "basic", "username": "u", "password": "p"}));
        let (current, _) = new_endpoint("ns", request, &bundle("b")).expect("valid");
        let current = current.endpoint();
        assert!(current.spec.default_callback_auth.is_some());
        let update: UpdateEndpoint =
            serde_json::from_value(json!({"post_inference_hooks": []})).expect("parses");
        let (updated, _) = update_endpoint(current, update, &bundle("b")).expect("valid");
        let spec = updated.spec();
        assert!(!spec.has_hook(PostInferenceHook::Callback));
        assert_eq!(spec.default_callback_url, None);
        assert_eq!(spec.default_callback_auth, None);

        let update: UpdateEndpoint = serde_json::from_value(json!({
            "post_inference_hooks": [], "default_callback_url": "https://example.com/b"
        }))
        .expect("parses");
        let error =
            update_endpoint(current, update, &bundle("b")).expect_err("a URL without the hook");
        assert!(error.0.contains("needs the callback"), "{}", error.0);
    }

    #[test]
    fn callback_credentials_go_into_a_secret_not_the_spec() {
        let mut request = seed_create();
        request.default_callback_auth =
            Some(json!({"kind": "basic", "username": "u", "password": "p"}));
        let (endpoint, secrets) = new_endpoint("ns", request, &bundle("b")).expect("valid");
        let reference = endpoint
            .spec()
            .default_callback_auth
            .clone()
            .expect("a reference");
        assert_eq!(
            reference.secret_name,
            "demo-endpoint-callback-callback-auth"
        );
        assert_eq!(secrets[0].data["password"], b"p".to_vec());
        assert!(
            !serde_json::to_string(endpoint.spec())
                .expect("json")
                .contains("\"p\"")
        );
    }

    #[test]
    fn runnable_image_bundles_map_onto_model_bundles() {
        let create: CreateBundle = serde_json::from_value(json!({"name": "test-bundle", "schema_location": "s",
            "flavor": {"flavor": "runnable_image", "repository": "registry/model", "tag": "v3",
                "command": ["python3", "serve.py"], "env": {"A": "1"}, "predict_route": "/infer", "protocol": "http"}}))
        .expect("parses");
        let bundle = new_bundle("ns", create).expect("valid");
        let spec = &bundle.bundle().spec;
        assert_eq!(spec.image, "registry/model:v3");
        assert_eq!(spec.command, vec!["python3", "serve.py"]);
        assert_eq!(
            (spec.predict_route.as_str(), spec.healthcheck_route.as_str()),
            ("/infer", "/readyz")
        );
        assert_eq!(spec.port, 5005);
        let triton: CreateBundle = serde_json::from_value(
            json!({"name": "b", "flavor": {"flavor": "triton_enhanced_runnable_image"}}),
        )
        .expect("parses");
        assert!(
            new_bundle("ns", triton)
                .expect_err("unsupported")
                .0
                .contains("zip_artifact")
        );
        let relative: CreateBundle = serde_json::from_value(json!({"name": "b", "flavor": {
            "flavor": "runnable_image", "repository": "r", "healthcheck_route": "readyz"}}))
        .expect("parses");
        assert_eq!(
            new_bundle("ns", relative).expect_err("a relative route").0,
            "healthcheck_route \"readyz\" is not an HTTP path starting with /"
        );
    }

    /// What `create_model_bundle_from_dirs_v2` sends.
    fn zip_create() -> CreateBundle {
        serde_json::from_value(json!({"name": "zipped", "schema_location": "file:///tmp/s",
            "flavor": {"flavor": "zip_artifact", "requirements": ["numpy"],
                "framework": {"framework_type": "custom_base_image", "image_repository": "python", "image_tag": "3.12-slim"},
                "location": "file:///tmp/bundles/b.zip",
                "load_predict_fn_module_path": "pkg.serve.load_predict_fn",
                "load_model_fn_module_path": "pkg.serve.load_model_fn"}}))
        .expect("parses")
    }

    #[test]
    fn artifact_bundles_map_onto_the_artifact_form() {
        let bundle = new_bundle("ns", zip_create()).expect("valid");
        let spec = &bundle.bundle().spec;
        assert!(spec.image.is_empty() && spec.command.is_empty());
        let artifact = spec.artifact.as_ref().expect("an artifact");
        assert_eq!(artifact.location, "file:///tmp/bundles/b.zip");
        assert_eq!(artifact.requirements, vec!["numpy"]);
        assert_eq!((spec.predict_route.as_str(), spec.port), ("/predict", 5005));

        let mut without_paths = zip_create();
        without_paths.flavor.artifact.load_model_fn_module_path = None;
        assert_eq!(
            new_bundle("ns", without_paths)
                .expect_err("no module path")
                .0,
            "a zip artifact needs artifact.load_predict_fn_module_path and \
             artifact.load_model_fn_module_path"
        );
        let mut untagged = zip_create();
        if let Some(framework) = untagged.flavor.artifact.framework.as_mut() {
            framework.image_tag = None;
        }
        let refused = new_bundle("ns", untagged).expect_err("no tag").0;
        assert!(
            refused.contains("image_repository and image_tag"),
            "{refused}"
        );
    }

    #[test]
    fn a_clone_of_an_artifact_takes_its_new_app_config() {
        let original = new_bundle("ns", zip_create()).expect("valid").into_bundle();
        let request = CloneBundle {
            original_model_bundle_id: original.bundle_id().to_string(),
            new_app_config: Some(json!({"threshold": 0.5})),
        };
        let clone = cloned_bundle(&original, &request, "0a1b2c3d").expect("valid");
        let config = clone
            .bundle()
            .spec
            .artifact
            .as_ref()
            .and_then(|a| a.app_config.clone());
        assert_eq!(
            serde_json::to_value(config).expect("json"),
            json!({"threshold": 0.5})
        );
    }

    #[test]
    fn a_clone_copies_its_original_under_a_name_of_its_own() {
        let original = bundle(&"b".repeat(63));
        let request = CloneBundle {
            original_model_bundle_id: original.bundle_id().to_string(),
            new_app_config: None,
        };
        let clone = cloned_bundle(&original, &request, "0a1b2c3d").expect("valid");
        let clone = clone.bundle();
        assert_eq!(clone.spec, original.spec);
        assert_eq!(clone.metadata.namespace.as_deref(), Some("ns"));
        let name = clone.name_any();
        assert!(
            name.ends_with("-clone-0a1b2c3d") && name.len() == 63,
            "{name}"
        );
        assert_ne!(clone.bundle_id(), original.bundle_id());
        let with_config = CloneBundle {
            new_app_config: Some(json!({"threshold": 0.5})),
            ..request
        };
        let refused =
            cloned_bundle(&original, &with_config, "0a1b2c3d").expect_err("no app_config");
        assert!(refused.0.contains("app_config"), "{}", refused.0);
    }
}
