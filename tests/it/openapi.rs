//! The OpenAPI document a real `ferry dev` serves at `/openapi.json`, without an API key, is
//! valid OpenAPI 3.1 by openapi-spec-validator (`scripts/validate-openapi`, which keeps the
//! validator in a venv of its own) — and the validator refuses a broken copy of it.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

/// Whether `scripts/validate-openapi` accepts `document`; its output when it does not.
fn validate(document: &Value) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(document).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate-openapi");
    let output = Command::new(script).arg(file.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

#[tokio::test]
async fn ferry_dev_serves_a_valid_openapi_31_document_without_a_key() {
    let manifests = Manifests::with_example_bundle();
    let dev = Dev::start(manifests.path(), None).await;
    let response = dev
        .http
        .get(format!("{}/openapi.json", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/v1/async-tasks",
        "/v2/model-bundles",
        "/v1/callbacks/dead-letters",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    validate(&document).unwrap_or_else(|errors| panic!("invalid document: {errors}"));

    let mut dangling = document.clone();
    dangling["paths"]["/v1/async-tasks"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = json!({"$ref": "#/components/schemas/NoSuchSchema"});
    let mut unversioned = document.clone();
    unversioned.as_object_mut().unwrap().remove("info");
    let mut misplaced = document;
    misplaced["paths"]["/v1/async-tasks"]["get"]["parameters"][0]["in"] = json!("body");
    for (broken, what) in [
        (dangling, "a reference to no schema"),
        (unversioned, "no info"),
        (misplaced, "a parameter in the body"),
    ] {
        assert!(validate(&broken).is_err(), "{what} passed validation");
    }
}
