//! Launch's artifact bundle flavors, `cloudpickle_artifact` and `zip_artifact`: a create
//! request's flavor mapped onto a ModelBundle's artifact form, and that form answered back in
//! the shape the Launch client parses (`CloudpickleArtifactFlavor`, `ZipArtifactFlavor`, and
//! the framework as `PytorchFramework`, `TensorflowFramework` or `CustomFramework`). Pure.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::crd::artifact::{AppConfig, ArtifactFlavor, ArtifactSpec, Framework, FrameworkKind};

/// Launch's name of the custom framework.
const CUSTOM_BASE_IMAGE: &str = "custom_base_image";

/// The artifact fields of a `/v2/model-bundles` flavor.
#[derive(Deserialize, Clone, Debug, Default, ToSchema)]
pub struct ArtifactFields {
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
    #[serde(default)]
    pub framework: Option<LaunchFramework>,
    #[serde(default)]
    pub load_predict_fn: Option<String>,
    #[serde(default)]
    pub load_model_fn: Option<String>,
    #[serde(default)]
    pub load_predict_fn_module_path: Option<String>,
    #[serde(default)]
    pub load_model_fn_module_path: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub app_config: Option<Value>,
}

/// A framework as Launch's client sends it.
#[derive(Deserialize, Clone, Debug, ToSchema)]
pub struct LaunchFramework {
    pub framework_type: String,
    #[serde(default)]
    pub pytorch_image_tag: Option<String>,
    #[serde(default)]
    pub tensorflow_version: Option<String>,
    #[serde(default)]
    pub image_repository: Option<String>,
    #[serde(default)]
    pub image_tag: Option<String>,
}

/// The artifact flavor Launch names `flavor`, if it is one.
pub fn artifact_flavor(flavor: &str) -> Option<ArtifactFlavor> {
    [ArtifactFlavor::Cloudpickle, ArtifactFlavor::Zip]
        .into_iter()
        .find(|known| known.launch_name() == flavor)
}

/// The artifact form of a request's flavor; the validation step judges the rest. The error
/// names what is missing or wrong, as Launch spells it.
pub fn artifact_spec(
    flavor: ArtifactFlavor,
    fields: ArtifactFields,
) -> Result<ArtifactSpec, String> {
    let location = fields
        .location
        .filter(|location| !location.is_empty())
        .ok_or("flavor.location is required: where the artifact was uploaded")?;
    let framework = fields.framework.ok_or(
        "flavor.framework is required: {\"framework_type\": \"pytorch\" | \"tensorflow\" | \"custom_base_image\", ...}",
    )?;
    let kind = match framework.framework_type.as_str() {
        "pytorch" => FrameworkKind::Pytorch,
        "tensorflow" => FrameworkKind::Tensorflow,
        CUSTOM_BASE_IMAGE => FrameworkKind::Custom,
        other => {
            return Err(format!(
                "flavor.framework.framework_type {other:?} is not pytorch, tensorflow or {CUSTOM_BASE_IMAGE}"
            ));
        }
    };
    let app_config = match fields.app_config {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(AppConfig(map)),
        Some(_) => return Err("flavor.app_config must be a JSON object".into()),
    };
    Ok(ArtifactSpec {
        flavor,
        location,
        requirements: fields.requirements,
        framework: Framework {
            kind,
            pytorch_image_tag: framework.pytorch_image_tag,
            tensorflow_version: framework.tensorflow_version,
            image_repository: framework.image_repository,
            image_tag: framework.image_tag,
        },
        load_predict_fn: fields.load_predict_fn,
        load_model_fn: fields.load_model_fn,
        load_predict_fn_module_path: fields.load_predict_fn_module_path,
        load_model_fn_module_path: fields.load_model_fn_module_path,
        app_config,
    })
}

/// An artifact bundle's `/v2` flavor, as the client's `CloudpickleArtifactFlavor` and
/// `ZipArtifactFlavor` read it.
#[derive(Serialize, ToSchema)]
pub struct ArtifactFlavorView {
    /// `cloudpickle_artifact` or `zip_artifact`.
    pub flavor: &'static str,
    pub requirements: Vec<String>,
    pub framework: FrameworkView,
    #[schema(value_type = Option<Object>)]
    pub app_config: Option<AppConfig>,
    pub location: String,
    /// The source of the function returning the predict function (cloudpickle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_predict_fn: Option<String>,
    /// The source of the function returning the model (cloudpickle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_model_fn: Option<String>,
    /// `package.module.function` (zip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_predict_fn_module_path: Option<String>,
    /// `package.module.function` (zip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_model_fn_module_path: Option<String>,
}

/// A framework as the client's `PytorchFramework`, `TensorflowFramework` and
/// `CustomFramework` read it.
#[derive(Serialize, ToSchema)]
pub struct FrameworkView {
    /// `pytorch`, `tensorflow` or `custom_base_image`.
    pub framework_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch_image_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensorflow_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
}

/// The `/v2` flavor of an artifact bundle.
pub fn flavor_view(artifact: &ArtifactSpec) -> ArtifactFlavorView {
    let mut view = ArtifactFlavorView {
        flavor: artifact.flavor.launch_name(),
        requirements: artifact.requirements.clone(),
        framework: framework_view(&artifact.framework),
        app_config: artifact.app_config.clone(),
        location: artifact.location.clone(),
        load_predict_fn: None,
        load_model_fn: None,
        load_predict_fn_module_path: None,
        load_model_fn_module_path: None,
    };
    match artifact.flavor {
        // The client requires both sources; a bundle written as a manifest may have none.
        ArtifactFlavor::Cloudpickle => {
            view.load_predict_fn = Some(artifact.load_predict_fn.clone().unwrap_or_default());
            view.load_model_fn = Some(artifact.load_model_fn.clone().unwrap_or_default());
        }
        ArtifactFlavor::Zip => {
            view.load_predict_fn_module_path = artifact.load_predict_fn_module_path.clone();
            view.load_model_fn_module_path = artifact.load_model_fn_module_path.clone();
        }
    }
    view
}

pub fn framework_view(framework: &Framework) -> FrameworkView {
    let mut view = FrameworkView {
        framework_type: match framework.kind {
            FrameworkKind::Pytorch => "pytorch",
            FrameworkKind::Tensorflow => "tensorflow",
            FrameworkKind::Custom => CUSTOM_BASE_IMAGE,
        },
        pytorch_image_tag: None,
        tensorflow_version: None,
        image_repository: None,
        image_tag: None,
    };
    match framework.kind {
        FrameworkKind::Pytorch => view.pytorch_image_tag = framework.pytorch_image_tag.clone(),
        FrameworkKind::Tensorflow => view.tensorflow_version = framework.tensorflow_version.clone(),
        FrameworkKind::Custom => {
            view.image_repository = framework.image_repository.clone();
            view.image_tag = framework.image_tag.clone();
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_json(view: ArtifactFlavorView) -> Value {
        serde_json::to_value(view).expect("json")
    }

    fn fields(body: Value) -> ArtifactFields {
        serde_json::from_value(body).expect("the client's flavor parses")
    }

    #[test]
    fn a_callable_flavor_maps_onto_an_artifact_and_back() {
        let sent = json!({"flavor": "cloudpickle_artifact", "requirements": ["cloudpickle==2.2.1"],
            "framework": {"framework_type": "pytorch", "pytorch_image_tag": "2.5.1-cuda12.4-cudnn9-runtime"},
            "app_config": {"scale": 2}, "location": "file:///tmp/bundles/b1",
            "load_predict_fn": "def load_predict_fn(model):\n    return model\n",
            "load_model_fn": "def load_model_fn():\n    return 1\n"});
        let artifact =
            artifact_spec(ArtifactFlavor::Cloudpickle, fields(sent.clone())).expect("valid");
        assert_eq!(
            artifact.framework.image_tag(),
            Some("2.5.1-cuda12.4-cudnn9-runtime")
        );
        assert_eq!(to_json(flavor_view(&artifact)), sent);
    }

    #[test]
    fn a_zip_flavor_with_a_custom_image_round_trips() {
        let sent = json!({"flavor": "zip_artifact", "requirements": [],
            "framework": {"framework_type": "custom_base_image", "image_repository": "python", "image_tag": "3.12"},
            "app_config": null, "location": "s3://models/b.zip",
            "load_predict_fn_module_path": "pkg.serve.load_predict_fn",
            "load_model_fn_module_path": "pkg.serve.load_model_fn"});
        let artifact = artifact_spec(ArtifactFlavor::Zip, fields(sent.clone())).expect("valid");
        assert_eq!(artifact.framework.kind, FrameworkKind::Custom);
        assert_eq!(to_json(flavor_view(&artifact)), sent);
    }

    #[test]
    fn missing_or_unknown_parts_are_named() {
        let framework = json!({"framework_type": "tensorflow", "tensorflow_version": "2.18.0"});
        let cases = [
            (json!({"framework": framework}), "flavor.location"),
            (
                json!({"location": "s3://b/k"}),
                "flavor.framework is required",
            ),
            (
                json!({"location": "s3://b/k", "framework": {"framework_type": "jax"}}),
                "\"jax\"",
            ),
            (
                json!({"location": "s3://b/k", "framework": framework, "app_config": "x"}),
                "app_config",
            ),
        ];
        for (body, expected) in cases {
            let error = artifact_spec(ArtifactFlavor::Zip, fields(body)).expect_err(expected);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        assert_eq!(artifact_flavor("zip_artifact"), Some(ArtifactFlavor::Zip));
        assert_eq!(artifact_flavor("triton_enhanced_runnable_image"), None);
    }
}
