//! The artifact form of a ModelBundle: a Launch callable (cloudpickle) or zip bundle — an
//! artifact at a location, the pip requirements it needs, the framework whose image runs it,
//! and how ferry's Python runtime (`runtimes/python`) loads it.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;

/// A model packaged as Launch packages it, served by ferry's Python runtime.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = rules::ZIP_NEEDS_MODULE_PATHS)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSpec {
    /// `cloudpickle` (Launch's callable bundles) or `zip` (its bundles of directories).
    pub flavor: ArtifactFlavor,
    /// Where the artifact is: `s3://`, `gs://`, `az://` or `file://` (and, in `ferry dev`, a
    /// local path).
    #[schemars(regex(pattern = rules::ARTIFACT_LOCATION.regex))]
    pub location: String,
    /// pip requirements installed beside the runtime before the model loads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// The framework whose image runs the model in a cluster.
    pub framework: Framework,
    /// Source of the callable that returns the predict function (cloudpickle; for reference:
    /// the pickled function in the artifact is what runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_predict_fn: Option<String>,
    /// Source of the callable that returns the model (cloudpickle; for reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_model_fn: Option<String>,
    /// `package.module.function` returning the predict function (zip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_predict_fn_module_path: Option<String>,
    /// `package.module.function` returning the model (zip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_model_fn_module_path: Option<String>,
    /// Configuration handed to the load functions as `app_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_config: Option<AppConfig>,
}

/// How the artifact is packaged.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFlavor {
    /// A cloudpickled dict of `load_model_fn` and `load_predict_fn`.
    Cloudpickle,
    /// A zip of Python packages; the functions are named by module path.
    Zip,
}

impl ArtifactFlavor {
    /// The flavor as Launch's API and ferry's runtime name it.
    pub fn launch_name(self) -> &'static str {
        match self {
            ArtifactFlavor::Cloudpickle => "cloudpickle_artifact",
            ArtifactFlavor::Zip => "zip_artifact",
        }
    }

    /// The packaging Launch's `/v1` bundle view names for the flavor.
    pub fn packaging_type(self) -> &'static str {
        match self {
            ArtifactFlavor::Cloudpickle => "cloudpickle",
            ArtifactFlavor::Zip => "zip",
        }
    }
}

/// The framework image an artifact runs in.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[x_kube(validation = rules::FRAMEWORK_IMAGE)]
#[serde(rename_all = "camelCase")]
pub struct Framework {
    /// `pytorch`, `tensorflow` or `custom` (an image of your own).
    #[serde(rename = "type")]
    pub kind: FrameworkKind,
    /// Tag of the PyTorch runtime image (pytorch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pytorch_image_tag: Option<String>,
    /// Tag of the TensorFlow runtime image (tensorflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorflow_version: Option<String>,
    /// Repository of the image (custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repository: Option<String>,
    /// Tag of the image (custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
}

impl Framework {
    /// The tag of the framework's runtime image, or the image itself for `custom`; `None`
    /// where the spec lacks it (the validation step refuses such a spec).
    pub fn image_tag(&self) -> Option<&str> {
        match self.kind {
            FrameworkKind::Pytorch => self.pytorch_image_tag.as_deref(),
            FrameworkKind::Tensorflow => self.tensorflow_version.as_deref(),
            FrameworkKind::Custom => self.image_tag.as_deref(),
        }
    }
}

/// A framework of Launch's bundles.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum FrameworkKind {
    Pytorch,
    Tensorflow,
    Custom,
}

impl FrameworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameworkKind::Pytorch => "pytorch",
            FrameworkKind::Tensorflow => "tensorflow",
            FrameworkKind::Custom => "custom",
        }
    }
}

/// A JSON object of any shape, as Launch's `app_config`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct AppConfig(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for AppConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AppConfig".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A JSON object handed to the load functions as app_config.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}
