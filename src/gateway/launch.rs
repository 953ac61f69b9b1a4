//! Launch's create and update requests for endpoints and bundles, checked with the rules the
//! reference server applies (and the one it forgets), and mapped onto ferry's resources. Pure.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::NamedSecret;
use crate::crd::names::API_VERSION;
use crate::crd::{
    CallbackAuthKind, CallbackAuthRef, EndpointType, ModelBundle, ModelBundleSpec, ModelEndpoint,
    ModelEndpointSpec, PostInferenceHook, Quantity,
};

/// A problem with a request, in words for the client (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// A number or a string, as Launch clients send `cpus`, `memory` and `storage`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum NumberOrText {
    Number(serde_json::Number),
    Text(String),
}

impl NumberOrText {
    fn quantity(&self, field: &str) -> Result<Quantity, Invalid> {
        let text = match self {
            NumberOrText::Number(number) => number.to_string(),
            NumberOrText::Text(text) => text.trim().to_owned(),
        };
        let valid = regex_like_quantity(&text);
        if valid {
            Ok(Quantity(text))
        } else {
            Err(invalid(format!(
                "{field} {text:?} is not a quantity such as 2, 0.5, 500m or 8Gi"
            )))
        }
    }
}

fn regex_like_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| text.strip_suffix(suffix))
        .unwrap_or(text);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// `POST /v1/model-endpoints`.
#[derive(Deserialize, Clone, Debug)]
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
    pub default_callback_auth: Option<Value>,
    #[serde(default)]
    pub task_expires_seconds: Option<i64>,
    #[serde(default)]
    pub queue_message_timeout_seconds: Option<i64>,
}

/// `PUT /v1/model-endpoints/{id}`: every field optional; absent or null keeps the current value.
#[derive(Deserialize, Clone, Debug, Default)]
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

/// A new endpoint named `name` in `namespace` running the bundle named `bundle`, built from the
/// defaults of a minimal manifest and then the request (as an update of nothing).
pub fn new_endpoint(
    namespace: &str,
    create: CreateEndpoint,
    bundle: &str,
) -> Result<(ModelEndpoint, Vec<NamedSecret>), Invalid> {
    check_name(&create.name)?;
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
        "spec": {"bundle": bundle, "labels": {}},
    });
    let mut endpoint: ModelEndpoint = serde_json::from_value(minimal)
        .map_err(|error| invalid(format!("building the endpoint: {error}")))?;
    endpoint.spec.endpoint_type = endpoint_type;
    endpoint.spec.labels.clear();
    update_endpoint(&endpoint, create.into(), Some(bundle))
}

/// The endpoint with `update` applied: absent fields keep their value, labels merge, hooks are
/// kept when omitted. Returns the Secrets the update's credentials go into.
pub fn update_endpoint(
    current: &ModelEndpoint,
    update: UpdateEndpoint,
    bundle: Option<&str>,
) -> Result<(ModelEndpoint, Vec<NamedSecret>), Invalid> {
    let mut endpoint = current.clone();
    let spec = &mut endpoint.spec;
    if let Some(bundle) = bundle {
        spec.bundle = bundle.to_owned();
    }
    if let Some(cpus) = &update.cpus {
        spec.cpus = cpus.quantity("cpus")?;
    }
    if let Some(memory) = &update.memory {
        spec.memory = memory.quantity("memory")?;
    }
    if let Some(storage) = &update.storage {
        spec.storage = storage.quantity("storage")?;
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
    let count = |value: i64, field: &str, min: i64, max: i64| -> Result<u32, Invalid> {
        if (min..=max).contains(&value) {
            Ok(value as u32)
        } else {
            Err(invalid(format!(
                "{field} must be between {min} and {max}, not {value}"
            )))
        }
    };
    if let Some(value) = update.min_workers {
        spec.min_workers = count(value, "min_workers", 0, 1000)?;
    }
    if let Some(value) = update.max_workers {
        spec.max_workers = count(value, "max_workers", 1, 1000)?;
    }
    if let Some(value) = update.per_worker {
        spec.per_worker = count(value, "per_worker", 1, 10_000)?;
    }
    if let Some(value) = update.concurrent_requests_per_worker {
        spec.concurrent_requests_per_worker =
            count(value, "concurrent_requests_per_worker", 1, 1000)?;
    }
    if let Some(value) = update.task_expires_seconds {
        spec.task_expires_seconds = count(value, "task_expires_seconds", 10, 2_592_000)?;
    }
    if let Some(value) = update.queue_message_timeout_seconds {
        spec.queue_message_timeout_seconds =
            count(value, "queue_message_timeout_seconds", 1, 43_200)?;
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
    check_spec(&endpoint.spec)?;
    endpoint
        .validate_cel()
        .map_err(|errors| invalid(errors.to_string()))?;
    Ok((endpoint, secrets))
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

/// A DNS label of at most 63 characters, as Launch and Kubernetes both require.
fn check_name(name: &str) -> Result<(), Invalid> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "name {name:?} must be at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        )))
    }
}

/// The rules that span fields, and label values Kubernetes accepts.
fn check_spec(spec: &ModelEndpointSpec) -> Result<(), Invalid> {
    for required in ["team", "product"] {
        if !spec.labels.contains_key(required) {
            return Err(invalid(format!("labels must include {required:?}")));
        }
    }
    for (key, value) in &spec.labels {
        let valid = value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value
                .bytes()
                .next()
                .is_none_or(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_none_or(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(invalid(format!(
                "label {key}={value:?} is not a valid Kubernetes label value"
            )));
        }
    }
    if spec.min_workers > spec.max_workers {
        return Err(invalid(format!(
            "min_workers ({}) must not exceed max_workers ({})",
            spec.min_workers, spec.max_workers
        )));
    }
    if (spec.gpus > 0) != spec.gpu_type.is_some() {
        return Err(invalid("gpus and gpu_type must be set together"));
    }
    if spec.default_callback_url.is_some() && !spec.has_hook(PostInferenceHook::Callback) {
        return Err(invalid(
            "default_callback_url needs the callback post-inference hook",
        ));
    }
    Ok(())
}

/// `POST /v2/model-bundles` with the `runnable_image` flavor.
#[derive(Deserialize, Clone, Debug)]
pub struct CreateBundle {
    pub name: String,
    pub flavor: BundleFlavor,
}

#[derive(Deserialize, Clone, Debug)]
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
}

pub fn new_bundle(namespace: &str, create: CreateBundle) -> Result<ModelBundle, Invalid> {
    check_name(&create.name)?;
    let flavor = create.flavor;
    if !matches!(
        flavor.flavor.as_str(),
        "runnable_image" | "streaming_enhanced_runnable_image"
    ) {
        return Err(invalid(format!(
            "flavor {:?} is not supported; ferry runs runnable_image bundles",
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
    for route in [
        &flavor.predict_route,
        &flavor.healthcheck_route,
        &flavor.streaming_predict_route,
    ]
    .into_iter()
    .flatten()
    {
        if !route.starts_with('/') {
            return Err(invalid(format!("route {route:?} must start with /")));
        }
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
    let metadata = ObjectMeta {
        name: Some(create.name),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    Ok(ModelBundle { metadata, spec })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let (endpoint, secrets) =
            new_endpoint("team-a", seed_create(), "test-bundle").expect("valid");
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
            let error = new_endpoint("ns", request, "b").expect_err(expected);
            assert!(
                error.0.contains(expected),
                "{expected:?} not in {:?}",
                error.0
            );
        }
    }

    #[test]
    fn updates_keep_absent_fields_merge_labels_and_keep_hooks() {
        let (current, _) = new_endpoint("ns", seed_create(), "test-bundle").expect("valid");
        let update: UpdateEndpoint = serde_json::from_value(json!({
            "model_bundle_id": "bun_y", "cpus": 2, "gpus": null, "memory": null, "storage": "20Gi",
            "min_workers": 2, "max_workers": 3, "per_worker": null, "high_priority": false,
            "labels": {"owner": "ml"}, "default_callback_url": null
        }))
        .expect("parses");
        let (updated, _) = update_endpoint(&current, update, Some("other-bundle")).expect("valid");
        let spec = &updated.spec;
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
        let (current, _) = new_endpoint("ns", request, "b").expect("valid");
        assert!(current.spec.default_callback_auth.is_some());
        let update: UpdateEndpoint =
            serde_json::from_value(json!({"post_inference_hooks": []})).expect("parses");
        let (updated, _) = update_endpoint(&current, update, None).expect("valid");
        let spec = &updated.spec;
        assert!(!spec.has_hook(PostInferenceHook::Callback));
        assert_eq!(spec.default_callback_url, None);
        assert_eq!(spec.default_callback_auth, None);

        let update: UpdateEndpoint = serde_json::from_value(json!({
            "post_inference_hooks": [], "default_callback_url": "https://example.com/b"
        }))
        .expect("parses");
        let error = update_endpoint(&current, update, None).expect_err("a URL without the hook");
        assert!(error.0.contains("needs the callback"), "{}", error.0);
    }

    #[test]
    fn callback_credentials_go_into_a_secret_not_the_spec() {
        let mut request = seed_create();
        request.default_callback_auth =
            Some(json!({"kind": "basic", "username": "u", "password": "p"}));
        let (endpoint, secrets) = new_endpoint("ns", request, "b").expect("valid");
        let reference = endpoint
            .spec
            .default_callback_auth
            .clone()
            .expect("a reference");
        assert_eq!(
            reference.secret_name,
            "demo-endpoint-callback-callback-auth"
        );
        assert_eq!(secrets[0].data["password"], b"p".to_vec());
        assert!(
            !serde_json::to_string(&endpoint.spec)
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
        assert_eq!(bundle.spec.image, "registry/model:v3");
        assert_eq!(bundle.spec.command, vec!["python3", "serve.py"]);
        assert_eq!(
            (
                bundle.spec.predict_route.as_str(),
                bundle.spec.healthcheck_route.as_str()
            ),
            ("/infer", "/readyz")
        );
        assert_eq!(bundle.spec.port, 5005);
        let cloudpickle: CreateBundle = serde_json::from_value(
            json!({"name": "b", "flavor": {"flavor": "cloudpickle_artifact"}}),
        )
        .expect("parses");
        assert!(
            new_bundle("ns", cloudpickle)
                .expect_err("unsupported")
                .0
                .contains("runnable_image")
        );
    }

    #[test]
    fn quantities_accept_numbers_and_kubernetes_suffixes() {
        for good in ["1", "0.5", "500m", "8Gi", "16G"] {
            assert!(regex_like_quantity(good), "{good}");
        }
        for bad in ["", "lots", "1.", ".5", "8 Gi", "-1"] {
            assert!(!regex_like_quantity(bad), "{bad}");
        }
    }
}
