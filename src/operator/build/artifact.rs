//! The worker pod of an artifact bundle: an init container (the ferry image, `ferry
//! fetch-artifact`) fetches the artifact and writes ferry's Python runtime into a shared
//! emptyDir; the model container runs the framework's runtime image — a PyTorch or TensorFlow
//! image of the operator's choice, tagged as the bundle says, or the bundle's own custom image —
//! installs the bundle's requirements into the shared volume and serves the artifact with
//! `python -m ferry_runtime`.

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, EnvVar, Volume, VolumeMount};

use super::env_var;
use super::security;
use crate::crd::artifact::{ArtifactSpec, Framework, FrameworkKind};
use crate::python_runtime::{self, env as runtime_env, fetch_env};

/// The init container that fetches the artifact.
pub const FETCH_CONTAINER: &str = "fetch-artifact";
/// The emptyDir the init container fills and the model reads.
const SHARED_VOLUME: &str = "ferry-artifact";
const SHARED_DIR: &str = "/ferry";
const ARTIFACT_PATH: &str = "/ferry/artifact/bundle";
const RUNTIME_DIR: &str = "/ferry/runtime";
const PACKAGES_DIR: &str = "/ferry/packages";
/// Installs the requirements (the script's arguments) where Python finds them, then serves.
const INSTALL_THEN_SERVE: &str = "python -m pip install --no-cache-dir --disable-pip-version-check --target /ferry/packages \"$@\" && exec python -m ferry_runtime";
/// The user the runtime runs as unless the bundle asks for root: the official framework images
/// run as root, which a non-root pod refuses.
const RUNTIME_USER: i64 = 65_532;

/// Repositories of the framework runtime images; a bundle's framework names the tag.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeImages {
    pub pytorch: String,
    pub tensorflow: String,
}

impl Default for RuntimeImages {
    fn default() -> Self {
        RuntimeImages {
            pytorch: "pytorch/pytorch".into(),
            tensorflow: "tensorflow/tensorflow".into(),
        }
    }
}

impl RuntimeImages {
    /// `pytorch=REPOSITORY,tensorflow=REPOSITORY`; a framework left out keeps its default.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut images = RuntimeImages::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (framework, repository) = entry
                .split_once('=')
                .filter(|(_, repository)| !repository.is_empty())
                .ok_or_else(|| format!("{entry:?} is not FRAMEWORK=REPOSITORY"))?;
            match framework {
                "pytorch" => images.pytorch = repository.into(),
                "tensorflow" => images.tensorflow = repository.into(),
                other => {
                    return Err(format!(
                        "{other:?} is not pytorch or tensorflow (custom bundles name their own image)"
                    ));
                }
            }
        }
        Ok(images)
    }

    /// The image `framework` runs in.
    pub fn image_for(&self, framework: &Framework) -> String {
        // The validation step refused frameworks without their tag (and custom ones without a
        // repository).
        let tag = framework.image_tag().unwrap_or("latest");
        let repository = match framework.kind {
            FrameworkKind::Pytorch => self.pytorch.as_str(),
            FrameworkKind::Tensorflow => self.tensorflow.as_str(),
            FrameworkKind::Custom => framework.image_repository.as_deref().unwrap_or_default(),
        };
        format!("{repository}:{tag}")
    }
}

/// The model container serving `artifact`: its image, command, environment and the shared
/// volume, in place of what an image bundle names.
pub fn shape_model_container(
    container: &mut Container,
    artifact: &ArtifactSpec,
    images: &RuntimeImages,
    run_as_root: bool,
) {
    let packages = python_runtime::packages(artifact);
    let command = if packages.is_empty() {
        vec!["python".into(), "-m".into(), python_runtime::MODULE.into()]
    } else {
        let script = ["sh", "-c", INSTALL_THEN_SERVE, "ferry-runtime"];
        script
            .into_iter()
            .map(String::from)
            .chain(packages)
            .collect()
    };
    let mut env: Vec<EnvVar> = python_runtime::settings_env(artifact, ARTIFACT_PATH.as_ref())
        .into_iter()
        .map(|(name, value)| env_var(&name, value))
        .collect();
    env.extend([
        env_var(
            runtime_env::PYTHONPATH,
            format!("{RUNTIME_DIR}:{PACKAGES_DIR}"),
        ),
        // Probes reach the model on the pod's address, not its loopback.
        env_var(runtime_env::HOST, "0.0.0.0".into()),
    ]);
    let mut own_env = container.env.take().unwrap_or_default();
    own_env.retain(|var| !env.iter().any(|set| set.name == var.name));
    own_env.extend(env);
    container.image = Some(images.image_for(&artifact.framework));
    container.command = Some(command);
    container.args = None;
    container.env = Some(own_env);
    container.volume_mounts = Some(vec![shared_mount()]);
    if let Some(context) = container.security_context.as_mut().filter(|_| !run_as_root) {
        context.run_as_user = Some(RUNTIME_USER);
    }
}

/// The init container: the ferry image fetching the artifact and writing the runtime.
pub fn build_fetch_container(artifact: &ArtifactSpec, ferry_image: &str) -> Container {
    Container {
        name: FETCH_CONTAINER.into(),
        image: Some(ferry_image.into()),
        command: Some(vec!["ferry".into(), "fetch-artifact".into()]),
        env: Some(vec![
            env_var(fetch_env::LOCATION, artifact.location.clone()),
            env_var(fetch_env::ARTIFACT, ARTIFACT_PATH.into()),
            env_var(fetch_env::RUNTIME_DIR, RUNTIME_DIR.into()),
        ]),
        volume_mounts: Some(vec![shared_mount()]),
        security_context: Some(security::build_forwarder_security_context()),
        ..Default::default()
    }
}

/// The emptyDir shared by the init container and the model.
pub fn shared_volume() -> Volume {
    Volume {
        name: SHARED_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn shared_mount() -> VolumeMount {
    VolumeMount {
        name: SHARED_VOLUME.into(),
        mount_path: SHARED_DIR.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::ModelBundle;
    use crate::operator::build::{FORWARDER_CONTAINER, MODEL_CONTAINER, Settings, plan};
    use crate::operator::fixtures::{endpoint, settings, validated};
    use k8s_openapi::api::core::v1::PodSpec;

    fn artifact_bundle(requirements: &[&str]) -> ModelBundle {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelBundle",
            "metadata": {"name": "model", "namespace": "ml", "uid": "uid-model"},
            "spec": {"env": {"MODEL_NAME": "demo", "PYTHONPATH": "/mine"}, "artifact": {
                "flavor": "zip", "location": "s3://models/demo.zip", "requirements": requirements,
                "framework": {"type": "pytorch", "pytorchImageTag": "2.5.1-cuda12.4-cudnn9-runtime"},
                "loadPredictFnModulePath": "demo.serve.load_predict_fn",
                "loadModelFnModulePath": "demo.serve.load_model_fn",
                "appConfig": {"threshold": 0.5}}}
        }))
        .expect("an artifact bundle")
    }

    fn pod_of(bundle: &ModelBundle, settings: &Settings) -> PodSpec {
        let built = plan(&validated(&endpoint(), bundle), settings).expect("plan");
        let template = built.deployment.spec.map(|spec| spec.template);
        template.and_then(|template| template.spec).expect("a pod")
    }

    fn named<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
        let found = pod.containers.iter().find(|c| c.name == name);
        found.expect("the container")
    }

    fn env_of(container: &Container) -> BTreeMap<String, String> {
        let vars = container.env.iter().flatten();
        vars.map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn an_artifact_runs_in_its_framework_image_after_an_init_container_fetched_it() {
        let pod = pod_of(&artifact_bundle(&["numpy==2.1.0"]), &settings());
        let fetch = &pod.init_containers.as_ref().expect("an init container")[0];
        assert_eq!(fetch.image.as_deref(), Some("registry.local/ferry:test"));
        assert_eq!(
            fetch.command,
            Some(vec!["ferry".into(), "fetch-artifact".into()])
        );
        let fetch_env = env_of(fetch);
        assert_eq!(fetch_env[fetch_env::LOCATION], "s3://models/demo.zip");
        let shared = |container: &Container| {
            container.volume_mounts.as_ref().expect("mounts")[0]
                .mount_path
                .clone()
        };
        assert_eq!(shared(fetch), SHARED_DIR);
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .any(|volume| volume.name == SHARED_VOLUME && volume.empty_dir.is_some())
        );

        let model = named(&pod, MODEL_CONTAINER);
        assert_eq!(
            model.image.as_deref(),
            Some("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime")
        );
        let command = model.command.clone().expect("a command");
        assert_eq!(command[..2], ["sh", "-c"]);
        assert_eq!(command[3..], ["ferry-runtime", "numpy==2.1.0"]);
        assert_eq!(model.args, None);
        assert_eq!(shared(model), SHARED_DIR);
        let env = env_of(model);
        assert_eq!(env[runtime_env::FLAVOR], "zip_artifact");
        assert_eq!(env[runtime_env::ARTIFACT], fetch_env[fetch_env::ARTIFACT]);
        assert_eq!(env[runtime_env::LOAD_MODEL_FN], "demo.serve.load_model_fn");
        assert_eq!(env[runtime_env::APP_CONFIG], r#"{"threshold":0.5}"#);
        assert_eq!(
            env[runtime_env::PYTHONPATH],
            format!("{}:{PACKAGES_DIR}", fetch_env[fetch_env::RUNTIME_DIR])
        );
        assert_eq!(
            (env["PORT"].as_str(), env["MODEL_NAME"].as_str()),
            ("5005", "demo")
        );
        let names: Vec<_> = model.env.iter().flatten().map(|var| &var.name).collect();
        assert_eq!(
            names
                .iter()
                .filter(|name| **name == runtime_env::PYTHONPATH)
                .count(),
            1
        );
        let context = model.security_context.as_ref().expect("a security context");
        assert_eq!(context.run_as_user, Some(RUNTIME_USER));
        // The forwarder calls the runtime where an image bundle's model would be.
        let forwarder = named(&pod, FORWARDER_CONTAINER);
        assert_eq!(
            env_of(forwarder)["FERRY_MODEL_URL"],
            "http://127.0.0.1:5005"
        );
    }

    #[test]
    fn forwarders_get_the_input_ranges_the_operator_allows() {
        let mut allowing = settings();
        allowing.input_allow_cidrs = vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
        ];
        let image = crate::operator::fixtures::bundle();
        for (settings, expected) in [(settings(), None), (allowing, Some("10.0.0.0/8,fd00::/8"))] {
            let pod = pod_of(&image, &settings);
            let forwarder = named(&pod, FORWARDER_CONTAINER);
            let env = env_of(forwarder);
            assert_eq!(
                env.get("FERRY_INPUT_ALLOW_CIDRS").map(String::as_str),
                expected
            );
        }
    }

    #[test]
    fn without_requirements_the_runtime_starts_at_once_and_image_bundles_fetch_nothing() {
        let pod = pod_of(&artifact_bundle(&[]), &settings());
        let model = named(&pod, MODEL_CONTAINER);
        assert_eq!(
            model.command,
            Some(vec!["python".into(), "-m".into(), "ferry_runtime".into()])
        );
        let image = crate::operator::fixtures::bundle();
        let pod = pod_of(&image, &settings());
        assert_eq!((pod.init_containers, pod.volumes), (None, None));
    }

    #[test]
    fn runtime_images_parse_and_tag_by_the_bundle() {
        let images = RuntimeImages::parse("pytorch=registry.local/pytorch").expect("parses");
        assert_eq!(images.pytorch, "registry.local/pytorch");
        assert_eq!(images.tensorflow, "tensorflow/tensorflow");
        let framework = |json| serde_json::from_value::<Framework>(json).expect("a framework");
        let cases = [
            (
                serde_json::json!({"type": "pytorch", "pytorchImageTag": "2.5"}),
                "registry.local/pytorch:2.5",
            ),
            (
                serde_json::json!({"type": "tensorflow", "tensorflowVersion": "2.18.0"}),
                "tensorflow/tensorflow:2.18.0",
            ),
            (
                serde_json::json!({"type": "custom", "imageRepository": "python", "imageTag": "3.12"}),
                "python:3.12",
            ),
        ];
        for (spec, image) in cases {
            assert_eq!(images.image_for(&framework(spec)), image);
        }
        for bad in ["custom=python", "pytorch", "pytorch="] {
            assert!(RuntimeImages::parse(bad).is_err(), "{bad}");
        }
    }
}
