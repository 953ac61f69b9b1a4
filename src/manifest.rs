//! Reads ModelBundle/ModelEndpoint manifests from YAML files, as `kubectl apply -f` would take
//! them: with the schema's defaults, through the validation step every entry point uses (the
//! rules the API server applies, and those it cannot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;

use kube::ResourceExt;
use serde::Deserialize;

use crate::callback::policy::{PolicyError, check_opted_in, secret_names};
use crate::crd::names::GROUP;
use crate::crd::validate::{ValidatedBundle, ValidatedEndpoint, validate, validate_bundle};
use crate::crd::{ModelBundle, ModelEndpoint, namespace_of};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML")]
    Yaml {
        path: PathBuf,
        // Boxed: the parser's error is large, and every `Result` of this module would carry it.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: document {index} is not a Kubernetes object")]
    Document {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {kind} {name} is invalid: {message}")]
    Invalid {
        path: PathBuf,
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error(
        "ModelEndpoint {namespace}/{endpoint} names bundle {bundle}, which no manifest defines"
    )]
    MissingBundle {
        namespace: String,
        endpoint: String,
        bundle: String,
    },
    #[error("ModelEndpoint {namespace}/{endpoint}: SecretNotOptedIn: {source}")]
    SecretNotOptedIn {
        namespace: String,
        endpoint: String,
        #[source]
        source: PolicyError,
    },
}

/// The resources a set of manifests declares, each endpoint with its bundle.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub bundles: Vec<ValidatedBundle>,
    pub endpoints: Vec<ValidatedEndpoint>,
    /// Secrets the endpoints refer to (signing secrets, callback credentials).
    pub secrets: Vec<Secret>,
}

impl Manifests {
    /// The data of a Secret in the endpoint's namespace, `stringData` merged over `data`.
    pub fn secret_data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secret = self
            .secrets
            .iter()
            .find(|s| s.name_any() == name && namespace_of(*s) == namespace)?;
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect();
        for (key, value) in secret.string_data.iter().flatten() {
            data.insert(key.clone(), value.clone().into_bytes());
        }
        Some(data)
    }

    /// The operator's rule: an endpoint uses only Secrets labelled as callback credentials.
    /// (A Secret no manifest defines is left for the policy to report as missing.)
    fn check_secrets_opt_in(&self, endpoint: &ModelEndpoint) -> Result<(), PolicyError> {
        let namespace = namespace_of(endpoint);
        for name in secret_names(&endpoint.spec) {
            let secret = self
                .secrets
                .iter()
                .find(|s| s.name_any() == name && namespace_of(*s) == namespace);
            if let Some(secret) = secret {
                check_opted_in(&name, secret.metadata.labels.as_ref())?;
            }
        }
        Ok(())
    }

    pub fn bundle_for(&self, endpoint: &ModelEndpoint) -> Option<&ModelBundle> {
        let namespace = namespace_of(endpoint);
        self.bundles
            .iter()
            .map(ValidatedBundle::bundle)
            .find(|bundle| {
                bundle.name_any() == endpoint.spec.bundle && namespace_of(*bundle) == namespace
            })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Loads every `.yaml`/`.yml` file in `paths` (directories are read one level deep, sorted by
/// name); documents of other kinds are skipped. Every endpoint must find its bundle.
pub fn load(paths: &[PathBuf]) -> Result<Manifests, Error> {
    let mut manifests = Manifests::default();
    let mut endpoints = Vec::new();
    for file in yaml_files(paths)? {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Read {
            path: file.clone(),
            source,
        })?;
        parse_into(&mut manifests, &mut endpoints, &file, &text)?;
    }
    for (path, endpoint) in endpoints {
        let validated = manifests.validate_endpoint(&path, &endpoint)?;
        manifests.endpoints.push(validated);
    }
    Ok(manifests)
}

impl Manifests {
    /// Checks an endpoint read from `path` with its bundle, and that its Secrets opt in.
    fn validate_endpoint(
        &self,
        path: &Path,
        endpoint: &ModelEndpoint,
    ) -> Result<ValidatedEndpoint, Error> {
        let Some(bundle) = self.bundle_for(endpoint) else {
            return Err(Error::MissingBundle {
                namespace: namespace_of(endpoint),
                endpoint: endpoint.name_any(),
                bundle: endpoint.spec.bundle.clone(),
            });
        };
        let validated = validate(endpoint, bundle).map_err(|invalid| Error::Invalid {
            path: path.into(),
            kind: "ModelEndpoint",
            name: endpoint.name_any(),
            message: invalid.to_string(),
        })?;
        self.check_secrets_opt_in(endpoint)
            .map_err(|source| Error::SecretNotOptedIn {
                namespace: namespace_of(endpoint),
                endpoint: endpoint.name_any(),
                source,
            })?;
        Ok(validated)
    }
}

fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|p| is_yaml(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|ext| ext.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads the documents of one file: Secrets and valid bundles into `manifests`, endpoints into
/// `endpoints` (checked once every bundle is read).
fn parse_into(
    manifests: &mut Manifests,
    endpoints: &mut Vec<(PathBuf, ModelEndpoint)>,
    path: &Path,
    text: &str,
) -> Result<(), Error> {
    // Each document goes through JSON, as the API server sees it; empty documents are skipped.
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|source| Error::Yaml {
            path: path.into(),
            source: Box::new(source),
        })?;
    for (index, value) in documents.into_iter().enumerate() {
        let document = |source| Error::Document {
            path: path.into(),
            index,
            source,
        };
        let meta = TypeMeta::deserialize(&value).map_err(document)?;
        if meta.api_version == "v1" && meta.kind == "Secret" {
            manifests
                .secrets
                .push(Secret::deserialize(&value).map_err(document)?);
            continue;
        }
        if meta.api_version.split('/').next() != Some(GROUP) {
            continue;
        }
        let invalid = |kind: &'static str, message: String| Error::Invalid {
            path: path.into(),
            kind,
            name: name_of(&value),
            message,
        };
        match meta.kind.as_str() {
            "ModelBundle" => {
                let bundle = ModelBundle::deserialize(&value)
                    .map_err(|e| invalid("ModelBundle", e.to_string()))?;
                let validated =
                    validate_bundle(&bundle).map_err(|e| invalid("ModelBundle", e.to_string()))?;
                manifests.bundles.push(validated);
            }
            "ModelEndpoint" => {
                let endpoint = ModelEndpoint::deserialize(&value)
                    .map_err(|e| invalid("ModelEndpoint", e.to_string()))?;
                endpoints.push((path.into(), endpoint));
            }
            _ => {}
        }
    }
    Ok(())
}

fn name_of(value: &serde_json::Value) -> String {
    value["metadata"]["name"]
        .as_str()
        .unwrap_or("(unnamed)")
        .to_owned()
}

#[cfg(test)]
mod examples_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("test file written");
    }

    const BUNDLE: &str = "apiVersion: ferry.dev/v1alpha1\nkind: ModelBundle\nmetadata: {name: b}\nspec: {image: python:3.12, command: [python3, m.py]}\n";
    const ENDPOINT: &str = "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {name: e}\nspec: {bundle: b, labels: {team: t, product: p}}\n";

    #[test]
    fn loads_multi_document_files_and_skips_other_kinds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: YQ==}\nstringData: {b: bee}\n";
        let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let text = format!("{BUNDLE}---\n{other}---\n{ENDPOINT}---\n{secret}");
        write(dir.path(), "all.yaml", &text);
        write(dir.path(), "notes.txt", "not yaml: [");
        let manifests = load(&[dir.path().into()]).expect("loads");
        assert_eq!((manifests.bundles.len(), manifests.endpoints.len()), (1, 1));
        assert!(
            manifests
                .bundle_for(manifests.endpoints[0].endpoint())
                .is_some()
        );
        let data = manifests
            .secret_data("default", "s")
            .expect("secret loaded");
        assert_eq!(
            (data["a"].as_slice(), data["b"].as_slice()),
            (&b"a"[..], &b"bee"[..])
        );
        assert!(manifests.secret_data("other", "s").is_none());
    }

    #[test]
    fn broken_yaml_and_documents_that_are_not_objects_name_their_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "broken.yaml", "kind: [unclosed\n");
        let error = load(&[dir.path().join("broken.yaml")]).expect_err("bad YAML");
        assert!(matches!(error, Error::Yaml { .. }), "{error}");
        write(
            dir.path(),
            "scalar.yaml",
            &format!("{BUNDLE}---\njust words\n"),
        );
        let error = load(&[dir.path().join("scalar.yaml")]).expect_err("not an object");
        assert!(
            matches!(&error, Error::Document { index: 1, path, .. } if path.ends_with("scalar.yaml")),
            "{error}"
        );
    }

    #[test]
    fn an_endpoint_without_its_bundle_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "e.yaml", ENDPOINT);
        let error = load(&[dir.path().into()]).expect_err("missing bundle");
        assert!(matches!(error, Error::MissingBundle { .. }), "{error}");
    }

    #[test]
    fn an_endpoint_naming_a_secret_that_does_not_opt_in_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "b.yaml", BUNDLE);
        let endpoint = ENDPOINT.replace(
            "spec: {",
            "spec: {callbacks: {signingSecret: {name: hooks}}, ",
        );
        assert_ne!(endpoint, ENDPOINT, "the fixture has a spec to extend");
        write(dir.path(), "e.yaml", &endpoint);
        let secret = |labels: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: hooks\n{labels}stringData: {{signingSecret: x}}\n"
            )
        };
        write(dir.path(), "s.yaml", &secret(""));
        let error = load(&[dir.path().into()]).expect_err("not opted in");
        assert!(
            matches!(&error, Error::SecretNotOptedIn { source: PolicyError::NotOptedIn { name }, .. } if name == "hooks"),
            "{error}"
        );
        write(
            dir.path(),
            "s.yaml",
            &secret("  labels: {ferry.dev/callback-credentials: \"true\"}\n"),
        );
        load(&[dir.path().into()]).expect("opted in");
    }

    #[test]
    fn rule_violations_name_the_file_the_resource_and_the_rule() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "b.yaml", BUNDLE);
        write(
            dir.path(),
            "e.yaml",
            &ENDPOINT.replace("product: p", "owner: p"),
        );
        let error = load(&[dir.path().into()])
            .expect_err("labels rule")
            .to_string();
        assert!(
            error.contains("e.yaml: ModelEndpoint e is invalid")
                && error.contains("team and product"),
            "{error}"
        );

        // A bound the schema holds and serde does not.
        write(
            dir.path(),
            "e.yaml",
            &ENDPOINT.replace("spec: {", "spec: {maxWorkers: 0, "),
        );
        let error = load(&[dir.path().into()]).expect_err("a bound").to_string();
        assert!(
            error.ends_with("maxWorkers must be between 1 and 1000, not 0"),
            "{error}"
        );

        // A rule no schema can hold: the model's port is the forwarder's.
        write(dir.path(), "e.yaml", ENDPOINT);
        write(
            dir.path(),
            "b.yaml",
            &BUNDLE.replace("spec: {", "spec: {port: 9464, "),
        );
        let error = load(&[dir.path().into()])
            .expect_err("a port clash")
            .to_string();
        assert!(
            error.contains("b.yaml: ModelBundle b is invalid: port 9464"),
            "{error}"
        );
    }
}
