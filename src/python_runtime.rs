//! ferry's Python runtime (`runtimes/python`) as the binary carries it: its sources, embedded so
//! an installed `ferry` needs no checkout, written into a directory `python -m ferry_runtime`
//! imports from; the environment it reads an artifact bundle's settings from; and the artifact
//! fetched beside it (`ferry fetch-artifact`, the worker pod's init container). `ferry dev`
//! and the operator both hand the runtime its settings through here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::crd::artifact::{ArtifactFlavor, ArtifactSpec};

/// The module `python -m` runs to serve an artifact.
pub const MODULE: &str = "ferry_runtime";

/// The runtime's sources: (file name in the `ferry_runtime` package, contents).
pub const SOURCES: [(&str, &str); 5] = [
    (
        "__init__.py",
        include_str!("../runtimes/python/ferry_runtime/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../runtimes/python/ferry_runtime/__main__.py"),
    ),
    (
        "load.py",
        include_str!("../runtimes/python/ferry_runtime/load.py"),
    ),
    (
        "server.py",
        include_str!("../runtimes/python/ferry_runtime/server.py"),
    ),
    (
        "settings.py",
        include_str!("../runtimes/python/ferry_runtime/settings.py"),
    ),
];

/// The environment the runtime reads (`ferry_runtime/settings.py`).
pub mod env {
    pub const FLAVOR: &str = "FERRY_BUNDLE_FLAVOR";
    pub const ARTIFACT: &str = "FERRY_BUNDLE_ARTIFACT";
    pub const LOAD_PREDICT_FN: &str = "FERRY_BUNDLE_LOAD_PREDICT_FN";
    pub const LOAD_MODEL_FN: &str = "FERRY_BUNDLE_LOAD_MODEL_FN";
    pub const APP_CONFIG: &str = "FERRY_BUNDLE_APP_CONFIG";
    /// The address the runtime listens on; loopback unless widened.
    pub const HOST: &str = "FERRY_RUNTIME_HOST";
    /// Where Python finds the runtime's package (and installed requirements).
    pub const PYTHONPATH: &str = "PYTHONPATH";
}

/// The runtime's settings for `artifact`, fetched to the local file `artifact_path`.
pub fn settings_env(artifact: &ArtifactSpec, artifact_path: &Path) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::from([
        (
            env::FLAVOR.to_owned(),
            artifact.flavor.launch_name().to_owned(),
        ),
        (
            env::ARTIFACT.to_owned(),
            artifact_path.display().to_string(),
        ),
    ]);
    let module_paths = [
        (env::LOAD_PREDICT_FN, &artifact.load_predict_fn_module_path),
        (env::LOAD_MODEL_FN, &artifact.load_model_fn_module_path),
    ];
    for (name, path) in module_paths {
        if let Some(path) = path {
            vars.insert(name.to_owned(), path.clone());
        }
    }
    if let Some(config) = &artifact.app_config {
        // A map of JSON values always serializes.
        let json = serde_json::to_string(&config.0).unwrap_or_default();
        vars.insert(env::APP_CONFIG.to_owned(), json);
    }
    vars
}

/// What pip installs beside the runtime for `artifact`: its requirements, and cloudpickle for
/// a callable bundle (unpickling it needs cloudpickle) unless the requirements name it.
pub fn packages(artifact: &ArtifactSpec) -> Vec<String> {
    let mut packages: Vec<String> = artifact
        .requirements
        .iter()
        .map(|package| package.trim().to_owned())
        .filter(|package| !package.is_empty() && !package.starts_with('#'))
        .collect();
    let has_cloudpickle = packages
        .iter()
        .any(|package| package.to_ascii_lowercase().starts_with("cloudpickle"));
    if artifact.flavor == ArtifactFlavor::Cloudpickle && !has_cloudpickle {
        packages.push("cloudpickle".into());
    }
    packages
}

/// Writes the runtime's package into `dir` (as `dir/ferry_runtime/`), for `PYTHONPATH=dir`.
pub fn write_sources(dir: &Path) -> std::io::Result<()> {
    let package = dir.join(MODULE);
    std::fs::create_dir_all(&package)?;
    for (name, text) in SOURCES {
        std::fs::write(package.join(name), text)?;
    }
    Ok(())
}

/// The environment `ferry fetch-artifact` reads its settings from (the init container's).
pub mod fetch_env {
    pub const LOCATION: &str = "FERRY_ARTIFACT_LOCATION";
    pub const ARTIFACT: &str = "FERRY_ARTIFACT_PATH";
    pub const RUNTIME_DIR: &str = "FERRY_RUNTIME_DIR";
}

/// What `ferry fetch-artifact` does: the artifact at `location` into the file `artifact`, and
/// the runtime's sources into `runtime_dir`.
#[derive(Clone, Debug)]
pub struct FetchSettings {
    pub location: String,
    pub artifact: PathBuf,
    pub runtime_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching the artifact")]
    Artifact(#[source] crate::storage::Error),
    #[error("writing the runtime's sources into {dir}")]
    Sources {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Fetches the artifact and writes the runtime beside it, as the worker pod's init container.
pub async fn fetch(settings: &FetchSettings) -> Result<(), FetchError> {
    let bytes = crate::storage::fetch_to_file(&settings.location, &settings.artifact)
        .await
        .map_err(FetchError::Artifact)?;
    write_sources(&settings.runtime_dir).map_err(|source| FetchError::Sources {
        dir: settings.runtime_dir.display().to_string(),
        source,
    })?;
    tracing::info!(location = %settings.location, bytes, "artifact fetched");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_runtime_reads_the_names_ferry_sets() {
        let source = |file: &str| {
            SOURCES
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, text)| *text)
                .expect("embedded")
        };
        for name in [
            env::FLAVOR,
            env::ARTIFACT,
            env::LOAD_PREDICT_FN,
            env::LOAD_MODEL_FN,
            env::APP_CONFIG,
        ] {
            assert!(
                source("settings.py").contains(&format!("\"{name}\"")),
                "{name}"
            );
        }
        for flavor in [
            crate::crd::artifact::ArtifactFlavor::Cloudpickle,
            crate::crd::artifact::ArtifactFlavor::Zip,
        ] {
            assert!(source("settings.py").contains(flavor.launch_name()));
        }
        assert!(source("__main__.py").contains(&format!("\"{}\"", env::HOST)));
    }

    fn artifact(flavor: ArtifactFlavor, requirements: &[&str]) -> ArtifactSpec {
        serde_json::from_value(serde_json::json!({"flavor": flavor, "location": "s3://b/k",
            "requirements": requirements, "framework": {"type": "pytorch", "pytorchImageTag": "2"}}))
        .expect("an artifact")
    }

    #[test]
    fn callable_bundles_get_cloudpickle_unless_they_pin_it() {
        let callable = artifact(
            ArtifactFlavor::Cloudpickle,
            &["numpy", " ", "# pinned below"],
        );
        assert_eq!(packages(&callable), vec!["numpy", "cloudpickle"]);
        let pinned = artifact(ArtifactFlavor::Cloudpickle, &["cloudpickle==2.2.1"]);
        assert_eq!(packages(&pinned), vec!["cloudpickle==2.2.1"]);
        assert!(packages(&artifact(ArtifactFlavor::Zip, &[])).is_empty());
    }

    #[test]
    fn every_runtime_source_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtimes/python/ferry_runtime");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the runtime's package")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".py"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, embedded);
    }

    #[tokio::test]
    async fn fetch_writes_the_artifact_and_an_importable_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("model.pkl");
        std::fs::write(&source, b"pickled").expect("write");
        let settings = FetchSettings {
            location: url::Url::from_file_path(&source).expect("url").to_string(),
            artifact: dir.path().join("shared/artifact"),
            runtime_dir: dir.path().join("shared/runtime"),
        };
        fetch(&settings).await.expect("fetched");
        assert_eq!(std::fs::read(&settings.artifact).expect("read"), b"pickled");
        assert!(
            settings
                .runtime_dir
                .join("ferry_runtime/__main__.py")
                .is_file()
        );
    }
}
