//! The CRDs as printed: the same as `crds/`, read back unchanged, listed under `ferry`, and
//! their schema bounds enforced.

use std::path::Path;

use kube::CustomResourceExt;

const CRDS_FILE: &str = "crds/ferry.dev.yaml";

#[test]
fn crds_directory_matches_the_rust_types() {
    let on_disk = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CRDS_FILE))
        .expect("crds/ferry.dev.yaml exists");
    let generated = super::yaml().expect("CRDs serialize");
    assert!(
        on_disk == generated,
        "{CRDS_FILE} is stale: run `cargo run -- crd > {CRDS_FILE}`"
    );
}

#[test]
fn both_kinds_are_listed_by_kubectl_get_ferry() {
    for names in [
        super::ModelBundle::crd().spec.names,
        super::ModelEndpoint::crd().spec.names,
    ] {
        assert_eq!(
            names.categories,
            Some(vec!["ferry".to_string()]),
            "{}",
            names.kind
        );
    }
}

#[test]
fn printed_crds_read_back_as_the_same_definitions() {
    let printed = super::yaml().expect("CRDs serialize");
    let read: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        serde_saphyr::from_multiple(&printed).expect("printed CRDs parse");
    assert_eq!(
        read,
        [super::ModelBundle::crd(), super::ModelEndpoint::crd()]
    );
}

/// Every example and benchmark manifest fits its CRD's OpenAPI schema (types, bounds,
/// patterns) and passes the CEL rules, as `kubectl apply` would check them.
#[test]
fn the_schema_rejects_out_of_bounds_values() {
    let crd = super::ModelEndpoint::crd();
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("schema");
    let validator =
        jsonschema::validator_for(&serde_json::to_value(schema).expect("json")).expect("compiles");
    let endpoint = |spec: serde_json::Value| serde_json::json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint", "metadata": {"name": "x"}, "spec": spec});
    let labels = serde_json::json!({"team": "t", "product": "p"});
    assert!(validator.is_valid(&endpoint(
        serde_json::json!({"bundle": "b", "labels": labels})
    )));
    assert!(!validator.is_valid(&endpoint(
        serde_json::json!({"bundle": "b", "labels": labels, "maxWorkers": 0})
    )));
    assert!(!validator.is_valid(&endpoint(
        serde_json::json!({"bundle": "b", "labels": labels, "endpointType": "batch"})
    )));
    assert!(!validator.is_valid(&endpoint(
        serde_json::json!({"bundle": "b", "labels": labels, "defaultCallbackUrl": "ftp://x"})
    )));
    assert!(!validator.is_valid(&endpoint(
        serde_json::json!({"bundle": "b", "labels": labels, "cpus": "lots"})
    )));
}
