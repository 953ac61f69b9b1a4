//! Every example and benchmark manifest of the repository loads and fits the CRDs.

use std::path::Path;

use kube::CustomResourceExt;

#[test]
fn examples_validate_against_the_crd_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let validators = [
        crate::crd::ModelBundle::crd(),
        crate::crd::ModelEndpoint::crd(),
    ]
    .map(|crd| {
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("schema");
        let schema = serde_json::to_value(schema).expect("schema serializes");
        (
            crd.spec.names.kind,
            jsonschema::validator_for(&schema).expect("schema compiles"),
        )
    });
    let mut checked = 0;
    for dir in [
        "examples",
        "benches/manifests",
        "benches/scaling",
        "benches/instant",
        "benches/slow",
        "benches/serving",
    ] {
        let dir = root.join(dir);
        // Loaded beside the examples, as `ferry dev` runs them (the bundles they name).
        let manifests =
            crate::manifest::load(&[root.join("examples/test-bundle.yaml"), dir.clone()])
                .unwrap_or_else(|error| panic!("{} loads and passes CEL: {error}", dir.display()));
        assert!(!manifests.endpoints.is_empty(), "{}", dir.display());
        for entry in std::fs::read_dir(&dir).expect("manifest dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|ext| ext != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let documents: Vec<serde_json::Value> =
                serde_saphyr::from_multiple(&text).expect("YAML");
            for value in documents {
                let Some((_, validator)) = validators
                    .iter()
                    .find(|(kind, _)| value["kind"] == kind.as_str())
                else {
                    continue;
                };
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 7, "checked {checked} manifests");
}
