use std::collections::BTreeSet;

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;
use crate::crd::names::API_VERSION;
use crate::crd::rules::CelRule;

fn bundle_json() -> Value {
    json!({"apiVersion": API_VERSION, "kind": "ModelBundle", "metadata": {"name": "model", "namespace": "ml"},
        "spec": {"image": "registry.local/model:1", "command": ["python3", "serve.py"]}})
}

/// A valid endpoint with room for every bound: `maxWorkers` at its maximum.
fn endpoint_json() -> Value {
    json!({"apiVersion": API_VERSION, "kind": "ModelEndpoint", "metadata": {"name": "demo", "namespace": "ml"},
        "spec": {"bundle": "model", "labels": {"team": "t", "product": "p"}, "maxWorkers": 1000,
            "postInferenceHooks": ["callback"], "defaultCallbackUrl": "https://example.com/cb"}})
}

fn bundle() -> ModelBundle {
    serde_json::from_value(bundle_json()).expect("bundle parses")
}

fn endpoint() -> ModelEndpoint {
    serde_json::from_value(endpoint_json()).expect("endpoint parses")
}

/// Sets `spec.<dotted path>` of a manifest, making the objects on the way.
fn set(manifest: &mut Value, path: &str, value: Value) {
    let mut node = &mut manifest["spec"];
    let (parents, last) = path.rsplit_once('.').unwrap_or(("", path));
    for part in parents.split('.').filter(|part| !part.is_empty()) {
        if node.get(part).is_none() {
            node[part] = json!({});
        }
        node = &mut node[part];
    }
    node[last] = value;
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("json")
}

fn message_of<T>(result: Result<T, Invalid>) -> String {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(invalid) => invalid.to_string(),
    }
}

#[test]
fn a_valid_endpoint_and_bundle_pass_and_keep_what_they_were_given() {
    let validated = validate(&endpoint(), &bundle()).expect("valid");
    assert_eq!(to_json(validated.endpoint()), to_json(&endpoint()));
    assert_eq!(to_json(validated.bundle()), to_json(&bundle()));
    assert_eq!(validated.endpoint_id(), endpoint().endpoint_id());
}

#[test]
fn messages_name_the_field_the_value_and_what_would_do() {
    let mut spec = endpoint();
    (spec.spec.min_workers, spec.spec.max_workers) = (5, 2);
    let refused = validate(&spec, &bundle()).expect_err("min above max");
    assert_eq!(
        refused.to_string(),
        "minWorkers (5) must not exceed maxWorkers (2)"
    );
    assert_eq!(
        refused.message(Spelling::Launch),
        "min_workers (5) must not exceed max_workers (2)"
    );
    assert_eq!(refused.reason(), "InvalidSpec");

    let mut spec = endpoint();
    spec.spec.per_worker = 0;
    assert_eq!(
        message_of(validate(&spec, &bundle())),
        "perWorker must be between 1 and 10000, not 0"
    );
    let mut spec = endpoint();
    spec.spec.labels.remove("team");
    assert_eq!(
        message_of(validate(&spec, &bundle())),
        "labels must include team and product; \"team\" is missing"
    );
    let mut spec = endpoint();
    spec.spec.cpus = "lots".into();
    assert_eq!(
        message_of(validate(&spec, &bundle())),
        "cpus \"lots\" is not a quantity such as 2, 0.5, 500m or 8Gi"
    );
}

#[test]
fn a_broken_bundle_is_named_in_the_endpoints_refusal() {
    let mut broken = bundle();
    broken.spec.port = FORWARDER_ADMIN_PORT;
    let refused = validate(&endpoint(), &broken).expect_err("port clash");
    assert!(
        refused
            .to_string()
            .starts_with("ModelBundle model: port 9464"),
        "{refused}"
    );
    assert_eq!(refused.reason(), "InvalidSpec");
    assert_eq!(
        validate_bundle(&broken).expect_err("alone too"),
        Invalid::PortClash {
            port: FORWARDER_ADMIN_PORT
        }
    );
}

#[test]
fn basic_credentials_over_plain_http_have_their_own_reason() {
    let mut spec = endpoint();
    spec.spec.default_callback_url = Some("http://hooks.example.com/cb".into());
    spec.spec.default_callback_auth = Some(crate::crd::CallbackAuthRef {
        kind: crate::crd::CallbackAuthKind::Basic,
        secret_name: "hook-credentials".into(),
    });
    let refused = validate(&spec, &bundle()).expect_err("refused");
    assert_eq!(refused, Invalid::BasicAuthOverHttp);
    assert_eq!(refused.reason(), "BasicAuthOverHttp");
    assert!(refused.to_string().contains("allowBasicAuthOverHttp"));

    let mut over_https = spec.clone();
    over_https.spec.default_callback_url = Some("https://hooks.example.com/cb".into());
    assert!(validate(&over_https, &bundle()).is_ok());
    let mut upper_case = spec.clone();
    upper_case.spec.default_callback_url = Some("HTTP://hooks.example.com/cb".into());
    assert!(validate(&upper_case, &bundle()).is_err());
    let mut allowed = spec.clone();
    allowed.spec.callbacks = Some(crate::crd::CallbackPolicySpec {
        allow_basic_auth_over_http: true,
        ..Default::default()
    });
    assert!(validate(&allowed, &bundle()).is_ok());
    let mut mtls = spec;
    if let Some(auth) = mtls.spec.default_callback_auth.as_mut() {
        auth.kind = crate::crd::CallbackAuthKind::Mtls;
    }
    assert!(validate(&mtls, &bundle()).is_ok());
}

#[test]
fn launch_names_are_dns_labels() {
    check_dns_label("name", "demo-2").expect("a label");
    let refused = check_dns_label("name", "Bad_Name").expect_err("not a label");
    assert!(
        refused
            .to_string()
            .starts_with("name \"Bad_Name\" must be at most 63")
    );
    assert!(check_dns_label("name", &"x".repeat(64)).is_err());
}

#[test]
fn every_pattern_compiles() {
    for pattern in rules::PATTERNS {
        assert!(COMPILED.contains_key(pattern.regex), "{}", pattern.regex);
    }
    for good in ["1", "0.5", "500m", "8Gi", "16G"] {
        check_pattern(rules::CPUS, good).expect(good);
    }
    for bad in ["", "lots", "1.", ".5", "8 Gi", "-1", "1Gi "] {
        assert!(check_pattern(rules::CPUS, bad).is_err(), "{bad}");
    }
}

// The CRD and the step, side by side: what `kubectl apply` would check (the OpenAPI schema and
// the CEL rules) against what this step checks.

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Everyone accepts it.
    Accept,
    /// The schema refuses it (a bound, a pattern), and so does the step.
    Schema,
    /// This CEL rule refuses it, and so does the step.
    Cel(CelRule),
    /// The CRD lets it in; the step refuses what Kubernetes would refuse on the children, or
    /// what would break the worker pod.
    StepOnly,
}

struct Verdicts {
    schema: Vec<String>,
    cel: Result<(), String>,
    step: Result<(), Refusal>,
}

/// Why the step refused: the manifest does not parse (a number out of its type's range), or a
/// rule.
#[derive(Debug)]
enum Refusal {
    Parse(String),
    Rule(Invalid),
}

/// The CRD's CEL rule that `invalid` is the step's side of, if any.
fn cel_rule_of(invalid: &Invalid) -> Option<CelRule> {
    match invalid {
        Invalid::ImageOrArtifact => Some(rules::IMAGE_OR_ARTIFACT),
        Invalid::ZipWithoutModulePaths => Some(rules::ZIP_NEEDS_MODULE_PATHS),
        Invalid::FrameworkImage { .. } => Some(rules::FRAMEWORK_IMAGE),
        Invalid::Empty { field: "bundle" } => Some(rules::BUNDLE_NOT_EMPTY),
        Invalid::MissingLabel { .. } => Some(rules::TEAM_AND_PRODUCT_LABELS),
        Invalid::MinAboveMax { .. } => Some(rules::MIN_WITHIN_MAX),
        Invalid::GpusWithoutType { .. } | Invalid::TypeWithoutGpus { .. } => {
            Some(rules::GPUS_WITH_GPU_TYPE)
        }
        Invalid::UrlWithoutHook => Some(rules::DEFAULT_URL_NEEDS_HOOK),
        Invalid::InBundle { invalid, .. } => cel_rule_of(invalid),
        _ => None,
    }
}

/// True when `invalid` is the step's side of a bound or pattern of the schema.
fn is_schema_rule(invalid: &Invalid) -> bool {
    match invalid {
        Invalid::OutOfBounds { .. }
        | Invalid::EntryOutOfBounds { .. }
        | Invalid::Length { .. }
        | Invalid::Pattern { .. } => true,
        Invalid::InBundle { invalid, .. } => is_schema_rule(invalid),
        _ => false,
    }
}

fn schema_errors<K: CustomResourceExt>(manifest: &Value) -> Vec<String> {
    let schema = K::crd().spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("schema");
    let schema = serde_json::to_value(schema).expect("schema serializes");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(manifest)
        .map(|e| e.to_string())
        .collect()
}

fn verdicts_for_endpoint(manifest: &Value) -> Verdicts {
    let parsed = serde_json::from_value::<ModelEndpoint>(manifest.clone());
    Verdicts {
        schema: schema_errors::<ModelEndpoint>(manifest),
        cel: match &parsed {
            Ok(endpoint) => endpoint.validate_cel().map_err(|e| e.to_string()),
            // What does not parse never reaches CEL; the schema's verdict decides.
            Err(_) => Ok(()),
        },
        step: parsed
            .map_err(|e| Refusal::Parse(e.to_string()))
            .and_then(|endpoint| {
                validate(&endpoint, &bundle())
                    .map(drop)
                    .map_err(Refusal::Rule)
            }),
    }
}

fn verdicts_for_bundle(manifest: &Value) -> Verdicts {
    let parsed = serde_json::from_value::<ModelBundle>(manifest.clone());
    Verdicts {
        schema: schema_errors::<ModelBundle>(manifest),
        cel: match &parsed {
            Ok(bundle) => bundle.validate_cel().map_err(|e| e.to_string()),
            Err(_) => Ok(()),
        },
        step: parsed
            .map_err(|e| Refusal::Parse(e.to_string()))
            .and_then(|bundle| validate_bundle(&bundle).map(drop).map_err(Refusal::Rule)),
    }
}

fn assert_verdicts(case: &str, expect: Expect, verdicts: &Verdicts) {
    let crd_accepts = verdicts.schema.is_empty() && verdicts.cel.is_ok();
    let context = format!(
        "{case}: schema {:?}, CEL {:?}, step {:?}",
        verdicts.schema, verdicts.cel, verdicts.step
    );
    match expect {
        Expect::Accept | Expect::Schema | Expect::Cel(_) => {
            assert_eq!(
                crd_accepts,
                verdicts.step.is_ok(),
                "the CRD and the step disagree: {context}"
            );
        }
        Expect::StepOnly => {
            assert!(crd_accepts && verdicts.step.is_err(), "{context}");
        }
    }
    // Both refuse by the same rule.
    let step = verdicts.step.as_ref().err();
    match expect {
        Expect::Accept => assert!(crd_accepts, "{context}"),
        Expect::Schema => assert!(
            !verdicts.schema.is_empty()
                && step.is_some_and(|refusal| match refusal {
                    Refusal::Parse(error) => !error.is_empty(),
                    Refusal::Rule(invalid) => is_schema_rule(invalid),
                }),
            "{context}"
        ),
        Expect::Cel(rule) => assert!(
            verdicts
                .cel
                .as_ref()
                .is_err_and(|e| e.contains(rule.message))
                && matches!(step, Some(Refusal::Rule(invalid)) if cel_rule_of(invalid) == Some(rule)),
            "{context}"
        ),
        Expect::StepOnly => assert!(
            matches!(step, Some(Refusal::Rule(invalid)) if cel_rule_of(invalid).is_none()),
            "{context}"
        ),
    }
}

type Case = (&'static str, fn(&mut Value), Expect);

fn endpoint_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        ("as given", |_| {}, Accept),
        (
            "min above max",
            |m| {
                set(m, "minWorkers", json!(3));
                set(m, "maxWorkers", json!(2))
            },
            Cel(rules::MIN_WITHIN_MAX),
        ),
        (
            "min equal to max",
            |m| {
                set(m, "minWorkers", json!(2));
                set(m, "maxWorkers", json!(2))
            },
            Accept,
        ),
        (
            "gpus without gpuType",
            |m| set(m, "gpus", json!(1)),
            Cel(rules::GPUS_WITH_GPU_TYPE),
        ),
        (
            "gpuType without gpus",
            |m| set(m, "gpuType", json!("nvidia-ampere-a10")),
            Cel(rules::GPUS_WITH_GPU_TYPE),
        ),
        (
            "gpus with gpuType",
            |m| {
                set(m, "gpus", json!(2));
                set(m, "gpuType", json!("nvidia-ampere-a10"))
            },
            Accept,
        ),
        (
            "a default URL without the hook",
            |m| set(m, "postInferenceHooks", json!([])),
            Cel(rules::DEFAULT_URL_NEEDS_HOOK),
        ),
        (
            "the hook without a default URL",
            |m| {
                drop(
                    m["spec"]
                        .as_object_mut()
                        .map(|s| s.remove("defaultCallbackUrl")),
                )
            },
            Accept,
        ),
        (
            "no team label",
            |m| set(m, "labels", json!({"product": "p"})),
            Cel(rules::TEAM_AND_PRODUCT_LABELS),
        ),
        (
            "no product label",
            |m| set(m, "labels", json!({"team": "t"})),
            Cel(rules::TEAM_AND_PRODUCT_LABELS),
        ),
        (
            "an empty bundle name",
            |m| set(m, "bundle", json!("")),
            Cel(rules::BUNDLE_NOT_EMPTY),
        ),
        (
            "an ftp default URL",
            |m| set(m, "defaultCallbackUrl", json!("ftp://example.com")),
            Schema,
        ),
        (
            "a default URL with a space",
            |m| set(m, "defaultCallbackUrl", json!("https://a b")),
            Schema,
        ),
        (
            "a plain http default URL",
            |m| set(m, "defaultCallbackUrl", json!("http://example.com")),
            Accept,
        ),
        ("cpus in words", |m| set(m, "cpus", json!("lots")), Schema),
        (
            "memory with a space",
            |m| set(m, "memory", json!("8 Gi")),
            Schema,
        ),
        (
            "storage ending in a dot",
            |m| set(m, "storage", json!("1.")),
            Schema,
        ),
        ("millicpus", |m| set(m, "cpus", json!("500m")), Accept),
        ("half a cpu", |m| set(m, "cpus", json!("0.5")), Accept),
        ("cpus as a number", |m| set(m, "cpus", json!(4)), Accept),
        (
            "no retries",
            |m| set(m, "callbacks.retryScheduleSeconds", json!([])),
            Schema,
        ),
        (
            "too many retries",
            |m| set(m, "callbacks.retryScheduleSeconds", json!(vec![5; 51])),
            Schema,
        ),
        (
            "as many retries as allowed",
            |m| set(m, "callbacks.retryScheduleSeconds", json!(vec![5; 50])),
            Accept,
        ),
        (
            "a retry at once",
            |m| set(m, "callbacks.retryScheduleSeconds", json!([5, 0])),
            Schema,
        ),
        (
            "a retry too late",
            |m| set(m, "callbacks.retryScheduleSeconds", json!([259_201])),
            Schema,
        ),
        (
            "retries at the bounds",
            |m| set(m, "callbacks.retryScheduleSeconds", json!([1, 259_200])),
            Accept,
        ),
        (
            "a label value with a space",
            |m| set(m, "labels", json!({"team": "my team", "product": "p"})),
            StepOnly,
        ),
        (
            "an upper-case label prefix",
            |m| {
                set(
                    m,
                    "labels",
                    json!({"team": "t", "product": "p", "Example.com/x": "y"}),
                )
            },
            StepOnly,
        ),
        (
            "a dotted name for a sync endpoint",
            |m| {
                m["metadata"]["name"] = json!("demo.v2");
                set(m, "endpointType", json!("sync"))
            },
            StepOnly,
        ),
        (
            "a dotted name for an async endpoint",
            |m| m["metadata"]["name"] = json!("demo.v2"),
            Accept,
        ),
        (
            "a gpuType no label can hold",
            |m| {
                set(m, "gpus", json!(1));
                set(m, "gpuType", json!("a10 (large)"))
            },
            StepOnly,
        ),
        // The schema's pattern holds only a quantity written as text.
        (
            "a negative cpu count",
            |m| set(m, "cpus", json!(-1)),
            StepOnly,
        ),
        (
            "basic credentials over plain http",
            |m| {
                set(m, "defaultCallbackUrl", json!("http://example.com"));
                set(
                    m,
                    "defaultCallbackAuth",
                    json!({"kind": "basic", "secretName": "login"}),
                );
            },
            StepOnly,
        ),
        (
            "basic credentials over plain http, allowed",
            |m| {
                set(m, "defaultCallbackUrl", json!("http://example.com"));
                set(
                    m,
                    "defaultCallbackAuth",
                    json!({"kind": "basic", "secretName": "login"}),
                );
                set(m, "callbacks.allowBasicAuthOverHttp", json!(true));
            },
            Accept,
        ),
    ]
}

fn bundle_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        ("as given", |_| {}, Accept),
        (
            "an empty image",
            |m| set(m, "image", json!("")),
            Cel(rules::IMAGE_OR_ARTIFACT),
        ),
        ("an artifact", to_artifact, Accept),
        (
            "an artifact and an image",
            |m| {
                to_artifact(m);
                set(m, "image", json!("registry.local/model:1"))
            },
            Cel(rules::IMAGE_OR_ARTIFACT),
        ),
        (
            "an artifact and a command",
            |m| {
                to_artifact(m);
                set(m, "command", json!(["python3"]))
            },
            Cel(rules::IMAGE_OR_ARTIFACT),
        ),
        (
            "an artifact with an empty image",
            |m| {
                to_artifact(m);
                set(m, "image", json!(""))
            },
            Accept,
        ),
        (
            "an artifact without a location",
            |m| {
                to_artifact(m);
                set(m, "artifact.location", json!(""))
            },
            Schema,
        ),
        (
            "a zip artifact without module paths",
            |m| {
                to_artifact(m);
                m["spec"]["artifact"]
                    .as_object_mut()
                    .map(|artifact| artifact.remove("loadModelFnModulePath"));
            },
            Cel(rules::ZIP_NEEDS_MODULE_PATHS),
        ),
        (
            "a cloudpickle artifact",
            |m| {
                to_artifact(m);
                set(m, "artifact.flavor", json!("cloudpickle"));
                m["spec"]["artifact"]
                    .as_object_mut()
                    .map(|artifact| artifact.remove("loadModelFnModulePath"));
            },
            Accept,
        ),
        (
            "a pytorch framework without its tag",
            |m| {
                to_artifact(m);
                set(m, "artifact.framework", json!({"type": "pytorch"}))
            },
            Cel(rules::FRAMEWORK_IMAGE),
        ),
        (
            "a pytorch framework",
            |m| {
                to_artifact(m);
                set(
                    m,
                    "artifact.framework",
                    json!({"type": "pytorch", "pytorchImageTag": "2.5.1-cuda12.4-cudnn9-runtime"}),
                )
            },
            Accept,
        ),
        (
            "a custom framework without a tag",
            |m| {
                to_artifact(m);
                set(
                    m,
                    "artifact.framework",
                    json!({"type": "custom", "imageRepository": "python"}),
                )
            },
            Cel(rules::FRAMEWORK_IMAGE),
        ),
        (
            "a tensorflow framework",
            |m| {
                to_artifact(m);
                set(
                    m,
                    "artifact.framework",
                    json!({"type": "tensorflow", "tensorflowVersion": "2.18.0"}),
                )
            },
            Accept,
        ),
        (
            "an unknown framework",
            |m| {
                to_artifact(m);
                set(m, "artifact.framework", json!({"type": "jax"}))
            },
            Schema,
        ),
        (
            "a relative predict route",
            |m| set(m, "predictRoute", json!("predict")),
            Schema,
        ),
        (
            "a relative healthcheck route",
            |m| set(m, "healthcheckRoute", json!("readyz")),
            Schema,
        ),
        (
            "a relative streaming route",
            |m| set(m, "streamingPredictRoute", json!("stream")),
            Schema,
        ),
        (
            "a streaming route",
            |m| set(m, "streamingPredictRoute", json!("/stream")),
            Accept,
        ),
        (
            "the forwarder's admin port",
            |m| set(m, "port", json!(FORWARDER_ADMIN_PORT)),
            StepOnly,
        ),
        (
            "the forwarder's serving port",
            |m| set(m, "port", json!(FORWARDER_SERVE_PORT)),
            StepOnly,
        ),
        (
            "PORT set to another port",
            |m| set(m, "env", json!({"PORT": "80"})),
            StepOnly,
        ),
        (
            "PORT set to the port",
            |m| set(m, "env", json!({"PORT": "5005"})),
            Accept,
        ),
    ]
}

/// Turns the bundle into a zip artifact of a custom framework, with every field set.
fn to_artifact(manifest: &mut Value) {
    let spec = manifest["spec"].as_object_mut().expect("a spec");
    spec.remove("image");
    spec.remove("command");
    set(
        manifest,
        "artifact",
        json!({"flavor": "zip", "location": "s3://models/bundle.zip", "requirements": ["numpy"],
            "framework": {"type": "custom", "imageRepository": "python", "imageTag": "3.12-slim"},
            "loadPredictFnModulePath": "model.serve.load_predict_fn",
            "loadModelFnModulePath": "model.serve.load_model_fn",
            "appConfig": {"threshold": 0.5, "labels": ["a", "b"]}}),
    );
}

/// What must accompany a value of a bound for the rest of the spec to stay valid.
type Accompany = fn(&mut Value, i64);

/// Every bound of an endpoint.
fn endpoint_bounds() -> Vec<(Bounds, Accompany)> {
    let plain: Accompany = |_, _| {};
    vec![
        (rules::GPUS, |m, gpus| {
            if gpus > 0 {
                set(m, "gpuType", json!("nvidia-ampere-a10"));
            }
        }),
        (rules::MIN_WORKERS, plain),
        (rules::MAX_WORKERS, |m, _| set(m, "minWorkers", json!(0))),
        (rules::PER_WORKER, plain),
        (rules::CONCURRENT_REQUESTS_PER_WORKER, plain),
        (rules::TASK_EXPIRES_SECONDS, plain),
        (rules::QUEUE_MESSAGE_TIMEOUT_SECONDS, plain),
        (rules::ATTEMPT_TIMEOUT_SECONDS, plain),
        (rules::CONNECT_TIMEOUT_SECONDS, plain),
    ]
}

const BUNDLE_BOUNDS: [Bounds; 2] = [rules::PORT, rules::READINESS_INITIAL_DELAY_SECONDS];

/// Each bound at both ends and just beyond them.
fn bound_cases(bounds: Bounds) -> [(i64, Expect); 4] {
    let (min, max) = (i64::from(bounds.min), i64::from(bounds.max));
    [
        (min - 1, Expect::Schema),
        (min, Expect::Accept),
        (max, Expect::Accept),
        (max + 1, Expect::Schema),
    ]
}

#[test]
fn the_crd_and_the_step_refuse_the_same_endpoints() {
    for (case, mutate, expect) in endpoint_cases() {
        let mut manifest = endpoint_json();
        mutate(&mut manifest);
        assert_verdicts(case, expect, &verdicts_for_endpoint(&manifest));
    }
    for (bounds, accompany) in endpoint_bounds() {
        for (value, expect) in bound_cases(bounds) {
            let mut manifest = endpoint_json();
            set(&mut manifest, bounds.field, json!(value));
            accompany(&mut manifest, value);
            let case = format!("{} = {value}", bounds.field);
            assert_verdicts(&case, expect, &verdicts_for_endpoint(&manifest));
        }
    }
}

#[test]
fn the_crd_and_the_step_refuse_the_same_bundles() {
    for (case, mutate, expect) in bundle_cases() {
        let mut manifest = bundle_json();
        mutate(&mut manifest);
        assert_verdicts(case, expect, &verdicts_for_bundle(&manifest));
    }
    for bounds in BUNDLE_BOUNDS {
        for (value, expect) in bound_cases(bounds) {
            let mut manifest = bundle_json();
            set(&mut manifest, bounds.field, json!(value));
            let case = format!("{} = {value}", bounds.field);
            assert_verdicts(&case, expect, &verdicts_for_bundle(&manifest));
        }
    }
}

/// Every CEL rule, bound and pattern in the CRDs, found by walking their schemas: `(path,
/// what)`, such as `("spec.gpus", "maximum 16")`.
fn crd_rules<K: CustomResourceExt>() -> BTreeSet<(String, String)> {
    fn walk(node: &Value, path: &str, found: &mut BTreeSet<(String, String)>) {
        for rule in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            found.insert((
                path.into(),
                format!(
                    "rule {} / {}",
                    rule["rule"].as_str().unwrap_or_default(),
                    rule["message"].as_str().unwrap_or_default()
                ),
            ));
        }
        for key in ["minimum", "maximum", "minItems", "maxItems"] {
            if let Some(number) = node[key].as_f64() {
                found.insert((path.into(), format!("{key} {number}")));
            }
        }
        if let Some(pattern) = node["pattern"].as_str() {
            found.insert((path.into(), format!("pattern {pattern}")));
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            walk(
                child,
                format!("{path}.{name}").trim_start_matches('.'),
                found,
            );
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), found);
        }
    }
    let schema = K::crd().spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("schema");
    let mut found = BTreeSet::new();
    walk(&serde_json::to_value(schema).expect("json"), "", &mut found);
    found
}

fn bounds_rules(bounds: Bounds) -> [(String, String); 2] {
    let (path, min, max) = match bounds.field.strip_suffix("[]") {
        Some(_) => (format!("spec.{}", bounds.field), "minimum", "maximum"),
        None if bounds == rules::RETRY_SCHEDULE_LENGTH => {
            (format!("spec.{}", bounds.field), "minItems", "maxItems")
        }
        None => (format!("spec.{}", bounds.field), "minimum", "maximum"),
    };
    [
        (path.clone(), format!("{min} {}", f64::from(bounds.min))),
        (path, format!("{max} {}", f64::from(bounds.max))),
    ]
}

fn cel_rule(path: &str, rule: CelRule) -> (String, String) {
    (
        path.into(),
        format!("rule {} / {}", rule.rule, rule.message),
    )
}

fn pattern_rule(pattern: Pattern) -> (String, String) {
    (
        format!("spec.{}", pattern.field),
        format!("pattern {}", pattern.regex),
    )
}

/// The CRDs hold exactly the rules of `rules` (each exercised above); a rule added to the CRD
/// without the step, or the other way round, fails here.
#[test]
fn the_crds_carry_exactly_the_rules_the_step_checks() {
    let mut endpoint_rules: BTreeSet<_> = endpoint_bounds()
        .into_iter()
        .map(|(bounds, _)| bounds)
        .chain([rules::RETRY_SCHEDULE_LENGTH, rules::RETRY_DELAY_SECONDS])
        .flat_map(bounds_rules)
        .collect();
    endpoint_rules.extend(
        [
            rules::CPUS,
            rules::MEMORY,
            rules::STORAGE,
            rules::DEFAULT_CALLBACK_URL,
        ]
        .map(pattern_rule),
    );
    endpoint_rules.extend([
        cel_rule("spec", rules::MIN_WITHIN_MAX),
        cel_rule("spec", rules::GPUS_WITH_GPU_TYPE),
        cel_rule("spec", rules::DEFAULT_URL_NEEDS_HOOK),
        cel_rule("spec.bundle", rules::BUNDLE_NOT_EMPTY),
        cel_rule("spec.labels", rules::TEAM_AND_PRODUCT_LABELS),
    ]);
    let spec_only = |found: BTreeSet<(String, String)>| -> BTreeSet<_> {
        found
            .into_iter()
            .filter(|(path, _)| path.starts_with("spec"))
            .collect()
    };
    assert_eq!(spec_only(crd_rules::<ModelEndpoint>()), endpoint_rules);

    let mut bundle_rules: BTreeSet<_> = BUNDLE_BOUNDS.into_iter().flat_map(bounds_rules).collect();
    bundle_rules.extend(
        [
            rules::PREDICT_ROUTE,
            rules::HEALTHCHECK_ROUTE,
            rules::STREAMING_PREDICT_ROUTE,
            rules::ARTIFACT_LOCATION,
        ]
        .map(pattern_rule),
    );
    bundle_rules.extend([
        cel_rule("spec", rules::IMAGE_OR_ARTIFACT),
        cel_rule("spec.artifact", rules::ZIP_NEEDS_MODULE_PATHS),
        cel_rule("spec.artifact.framework", rules::FRAMEWORK_IMAGE),
    ]);
    assert_eq!(spec_only(crd_rules::<ModelBundle>()), bundle_rules);
}
