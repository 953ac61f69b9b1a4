//! Artifact bundles (Launch's `cloudpickle_artifact` and `zip_artifact`) replayed as the client
//! sends and reads them, and a zip bundle served end to end by `ferry dev` from a venv it builds
//! once and reuses.

use std::path::Path;

use super::{WAIT, seed_create_body};
use crate::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// What `create_model_bundle_from_callable_v2` sends (the sources as `inspect.getsource` gives
/// them).
fn callable_create(name: &str) -> Value {
    json!({"name": name, "schema_location": "file:///tmp/schemas/1", "metadata": {"owner": "ml"},
        "flavor": {"flavor": "cloudpickle_artifact",
            "load_predict_fn": "def load_predict_fn(model):\n    return model\n",
            "load_model_fn": "def load_model_fn():\n    return lambda x: x\n",
            "framework": {"framework_type": "pytorch", "pytorch_image_tag": "2.5.1-cuda12.4-cudnn9-runtime"},
            "requirements": ["numpy==2.1.0"], "app_config": {"scale": 2},
            "location": "file:///tmp/bundles/callable.pkl"}})
}

/// What `create_model_bundle_from_dirs_v2` sends for the bundle at `location`.
fn zip_create(name: &str, location: &str, requirements: Value) -> Value {
    json!({"name": name, "schema_location": "file:///tmp/schemas/2",
        "flavor": {"flavor": "zip_artifact",
            "load_predict_fn_module_path": "doubler.serve.load_predict_fn",
            "load_model_fn_module_path": "doubler.serve.load_model_fn",
            "framework": {"framework_type": "custom_base_image", "image_repository": "python", "image_tag": "3.12-slim"},
            "requirements": requirements, "app_config": {"factor": 2}, "location": location}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_bundles_are_answered_in_the_flavors_the_client_parses() {
    let empty = tempfile::tempdir().unwrap();
    let dev = Dev::start(empty.path(), None).await;
    let callable = callable_create("callable");
    let (status, created) = dev.post("/v2/model-bundles", &callable).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["model_bundle_id"].as_str().unwrap();
    // The flavor comes back as sent: the client's models parse it by its `flavor` and its
    // framework by `framework_type`.
    let (_, view) = dev.get(&format!("/v2/model-bundles/{id}")).await;
    assert_eq!(view["flavor"], callable["flavor"], "{view}");
    assert_eq!(
        (&view["id"], &view["name"]),
        (&json!(id), &json!("callable"))
    );
    for field in ["created_at", "metadata", "model_artifact_ids"] {
        assert!(!view[field].is_null(), "{field}: {view}");
    }
    let zipped = zip_create("zipped", "s3://models/zipped.zip", json!([]));
    let (status, created) = dev.post("/v2/model-bundles", &zipped).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (_, latest) = dev.get("/v2/model-bundles/latest?model_name=zipped").await;
    assert_eq!(latest["flavor"], zipped["flavor"], "{latest}");
    let (_, listing) = dev.get("/v2/model-bundles").await;
    let flavors: Vec<&Value> = listing["model_bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bundle| &bundle["flavor"]["flavor"])
        .collect();
    assert!(
        flavors.contains(&&json!("cloudpickle_artifact"))
            && flavors.contains(&&json!("zip_artifact")),
        "{listing}"
    );
    // The v1 view names the artifact and its requirements.
    let (_, v1) = dev
        .get("/v1/model-bundles/latest?model_name=callable")
        .await;
    assert_eq!(
        (&v1["location"], &v1["requirements"], &v1["packaging_type"]),
        (
            &json!("file:///tmp/bundles/callable.pkl"),
            &json!(["numpy==2.1.0"]),
            &json!("cloudpickle")
        ),
        "{v1}"
    );

    // A clone takes a new app_config.
    let (status, cloned) = dev
        .post(
            "/v2/model-bundles/clone-with-changes",
            &json!({"original_model_bundle_id": id, "new_app_config": {"scale": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cloned}");
    let (_, clone) = dev
        .get(&format!(
            "/v2/model-bundles/{}",
            cloned["model_bundle_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        clone["flavor"]["app_config"],
        json!({"scale": 3}),
        "{clone}"
    );

    // Bad ones: what is wrong, as the client's fields are named.
    let mut no_paths = zip_create("bad", "s3://models/b.zip", json!([]));
    no_paths["flavor"]
        .as_object_mut()
        .unwrap()
        .remove("load_model_fn_module_path");
    let mut no_tag = zip_create("bad", "s3://models/b.zip", json!([]));
    no_tag["flavor"]["framework"] = json!({"framework_type": "pytorch"});
    let mut no_location = callable_create("bad");
    no_location["flavor"]
        .as_object_mut()
        .unwrap()
        .remove("location");
    let cases = [
        (no_paths, "load_model_fn_module_path"),
        (no_tag, "pytorch_image_tag"),
        (no_location, "flavor.location"),
    ];
    for (body, expected) in cases {
        let (status, answer) = dev.post("/v2/model-bundles", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{expected:?} not in {detail:?}");
    }
    let mut mistyped = zip_create("bad", "s3://models/b.zip", json!([]));
    mistyped["flavor"]["requirements"] = json!("numpy");
    let (status, answer) = dev.post("/v2/model-bundles", &mistyped).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let detail = answer["detail"][0]["msg"].as_str().unwrap_or_default();
    assert!(detail.contains("expected a sequence"), "{answer}");
}

/// A zip of the package `doubler` whose predict function doubles `n` by the app_config's
/// factor, and says whether the module `reuse_probe` is importable from its environment.
fn write_zip(dir: &Path) -> String {
    let zip = dir.join("doubler.zip");
    let script = r#"
import sys, zipfile
serve = '''
def load_model_fn(app_config):
    return app_config["factor"]

def load_predict_fn(app_config, model):
    def predict(request):
        try:
            import reuse_probe  # noqa: F401
            reused = True
        except ImportError:
            reused = False
        return {"doubled": request["n"] * model, "reused": reused}
    return predict
'''
with zipfile.ZipFile(sys.argv[1], "w") as archive:
    archive.writestr("doubler/__init__.py", "")
    archive.writestr("doubler/serve.py", serve)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&zip)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    url::Url::from_file_path(&zip).unwrap().to_string()
}

async fn create_endpoint(dev: &Dev, name: &str, bundle_id: &str) {
    let mut body = seed_create_body(bundle_id, "http://127.0.0.1:9/");
    body["name"] = json!(name);
    body["post_inference_hooks"] = json!([]);
    body.as_object_mut().unwrap().remove("default_callback_url");
    let (status, created) = dev.post("/v1/model-endpoints", &body).await;
    assert_eq!(status, StatusCode::OK, "{created}");
}

async fn create_bundle(dev: &Dev, body: &Value) -> String {
    let (status, created) = dev.post("/v2/model-bundles", body).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["model_bundle_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bundle_runs_in_a_venv_built_once_and_reused() {
    let files = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let location = write_zip(files.path());
    let cache_flag = cache.path().display().to_string();
    let empty = tempfile::tempdir().unwrap();
    let dev = Dev::start_with(empty.path(), None, &["--cache-dir", &cache_flag]).await;

    let bundle = create_bundle(&dev, &zip_create("doubler", &location, json!([]))).await;
    create_endpoint(&dev, "doubler", &bundle).await;
    let endpoint = dev.ready_endpoint("doubler").await;
    let task = dev.submit(&endpoint, json!({"args": {"n": 21}})).await;
    let task = dev.finished_task(&task, WAIT).await;
    assert_eq!(
        task["result"]["result"],
        json!({"doubled": 42, "reused": false}),
        "{task}"
    );

    // One venv, complete; a module planted in it is there for the next bundle of the same
    // requirements: its venv was reused, not built again.
    let venvs = venvs_in(cache.path());
    assert_eq!(venvs.len(), 1, "{venvs:?}");
    std::fs::write(venvs[0].join("ferry-runtime/reuse_probe.py"), "").unwrap();
    // A local path works as well as a file:// URL.
    let path = url::Url::parse(&location).unwrap().to_file_path().unwrap();
    let again = zip_create("again", &path.display().to_string(), json!([]));
    let bundle = create_bundle(&dev, &again).await;
    create_endpoint(&dev, "again", &bundle).await;
    let endpoint = dev.ready_endpoint("again").await;
    let task = dev.submit(&endpoint, json!({"args": {"n": 5}})).await;
    let task = dev.finished_task(&task, WAIT).await;
    assert_eq!(
        task["result"]["result"],
        json!({"doubled": 10, "reused": true}),
        "{task}"
    );
}

/// The venvs in `ferry dev`'s cache directory `cache`.
fn venvs_in(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache.join("venvs"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_whose_environment_cannot_be_built_fails_its_endpoint_with_the_reason() {
    let files = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let location = write_zip(files.path());
    let cache_flag = cache.path().display().to_string();
    let empty = tempfile::tempdir().unwrap();
    let dev = Dev::start_with(empty.path(), None, &["--cache-dir", &cache_flag]).await;

    // pip refuses the requirement before it looks anything up: no network is involved.
    let broken = zip_create("broken", &location, json!(["not a requirement!"]));
    let bundle = create_bundle(&dev, &broken).await;
    create_endpoint(&dev, "broken", &bundle).await;
    let view = eventually("the endpoint fails", WAIT * 4, || async {
        let (_, listing) = dev.get("/v1/model-endpoints?name=broken").await;
        let view = listing["model_endpoints"][0].clone();
        (view["status"] == "UPDATE_FAILED").then_some(view)
    })
    .await;
    let reason = view["status_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("building the Python environment for bundle broken failed")
            && reason.contains("not a requirement!"),
        "{view}"
    );
    // Nothing half-built is left to be taken for a venv.
    let left = venvs_in(cache.path());
    assert!(left.is_empty(), "{left:?}");

    // A missing artifact fails too, naming it.
    let missing = zip_create(
        "missing",
        "file:///nonexistent/ferry/doubler.zip",
        json!([]),
    );
    let bundle = create_bundle(&dev, &missing).await;
    create_endpoint(&dev, "missing", &bundle).await;
    let view = eventually("the endpoint fails", WAIT, || async {
        let (_, listing) = dev.get("/v1/model-endpoints?name=missing").await;
        let view = listing["model_endpoints"][0].clone();
        (view["status"] == "UPDATE_FAILED").then_some(view)
    })
    .await;
    assert!(
        view["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("/nonexistent/ferry/doubler.zip"),
        "{view}"
    );
}
