//! How `ferry dev` starts a bundle's model: an image bundle's own command, or, for an artifact
//! bundle, ferry's Python runtime (`python -m ferry_runtime`, its sources embedded in the
//! binary) from a venv keyed by the hash of the bundle's requirements and of the runtime, under
//! the user's cache directory. A venv is built once, pip's progress in the log, and reused by
//! every later start; one that fails to build is reported, not retried. The artifact is read
//! where it lies (a local path or `file://`) or fetched into the cache (`s3://`, `gs://`,
//! `az://`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::crd::ModelBundle;
use crate::crd::artifact::ArtifactSpec;
use crate::python_runtime;

/// Lines of a failed build's output kept in its error.
const OUTPUT_TAIL_LINES: usize = 15;
/// The file whose presence says a venv is complete.
const READY_MARKER: &str = "ferry-ready";
/// Where in a venv the runtime's package is written.
const RUNTIME_DIR: &str = "ferry-runtime";

/// A model process to start: a program, its arguments and its environment.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle {bundle} has no command: ferry dev runs bundle commands as local processes")]
    NoCommand { bundle: String },
    #[error("artifact {location:?}: {why}")]
    Artifact { location: String, why: String },
    #[error("building the Python environment for bundle {bundle} failed: {why}")]
    Build { bundle: String, why: String },
}

/// The Python environments of one `ferry dev` session.
pub struct Environments {
    /// The Python venvs are made with.
    python: PathBuf,
    /// `ferry`'s cache directory: venvs in `venvs/`, fetched artifacts in `artifacts/`.
    cache: PathBuf,
    /// One build at a time: two workers of one bundle start together and share the result.
    building: tokio::sync::Mutex<()>,
}

impl Environments {
    pub fn new(python: PathBuf, cache: PathBuf) -> Self {
        Environments {
            python,
            cache,
            building: tokio::sync::Mutex::new(()),
        }
    }

    /// How to start `bundle`'s model, building its venv first if it has none yet.
    pub async fn command_for(&self, bundle: &ModelBundle) -> Result<ModelCommand, Error> {
        let spec = &bundle.spec;
        let Some(artifact) = &spec.artifact else {
            let (program, args) = spec.command.split_first().ok_or_else(|| Error::NoCommand {
                bundle: bundle.name_any(),
            })?;
            return Ok(ModelCommand {
                program: program.into(),
                args: args.iter().chain(&spec.args).cloned().collect(),
                env: spec.env.clone(),
            });
        };
        let artifact_path = self.artifact_path(&artifact.location).await?;
        let venv = self.venv(&bundle.name_any(), artifact).await?;
        let mut env = spec.env.clone();
        env.extend(python_runtime::settings_env(artifact, &artifact_path));
        env.insert(
            python_runtime::env::PYTHONPATH.to_owned(),
            venv.join(RUNTIME_DIR).display().to_string(),
        );
        Ok(ModelCommand {
            program: venv.join("bin/python"),
            args: vec!["-m".into(), python_runtime::MODULE.into()],
            env,
        })
    }

    /// The local file of an artifact: where it lies, or fetched into the cache.
    async fn artifact_path(&self, location: &str) -> Result<PathBuf, Error> {
        let failed = |why: String| Error::Artifact {
            location: location.into(),
            why,
        };
        let path = match url::Url::parse(location) {
            Ok(url) if url.scheme() == "file" => url
                .to_file_path()
                .map_err(|()| failed("not a local file".into()))?,
            Ok(url) if crate::storage::is_object_scheme(url.scheme()) => {
                let dest = self.cache.join("artifacts").join(short_hash([location]));
                crate::storage::fetch_to_file(location, &dest)
                    .await
                    .map_err(|error| failed(crate::telemetry::error_chain(&error)))?;
                dest
            }
            Ok(url) if url.scheme().len() > 1 => {
                return Err(failed(
                    "ferry dev reads artifacts from local paths and file, s3, gs and az URLs"
                        .into(),
                ));
            }
            // A path, or a Windows-style drive letter read as a scheme.
            _ => std::path::absolute(location).map_err(|error| failed(error.to_string()))?,
        };
        if !path.is_file() {
            return Err(failed(format!("{} is not a file", path.display())));
        }
        Ok(path)
    }

    /// The venv `artifact` runs in: built now unless a complete one is in the cache.
    async fn venv(&self, bundle: &str, artifact: &ArtifactSpec) -> Result<PathBuf, Error> {
        let packages = python_runtime::packages(artifact);
        let dir = self
            .cache
            .join("venvs")
            .join(venv_key(&self.python, &packages));
        if dir.join(READY_MARKER).is_file() {
            return Ok(dir);
        }
        let _building = self.building.lock().await;
        if dir.join(READY_MARKER).is_file() {
            tracing::info!(bundle, venv = %dir.display(), "reusing the Python environment");
            return Ok(dir);
        }
        tracing::info!(bundle, venv = %dir.display(), ?packages, "building the Python environment (once; reused after)");
        let partial = dir.with_extension(format!("building-{}", std::process::id()));
        let built = self.build(bundle, &partial, &packages).await;
        let placed = built.and_then(|()| {
            std::fs::rename(&partial, &dir).or_else(|error| {
                // Another `ferry dev` placed the same venv first.
                if dir.join(READY_MARKER).is_file() {
                    Ok(())
                } else {
                    Err(format!("placing it at {}: {error}", dir.display()))
                }
            })
        });
        let _ = std::fs::remove_dir_all(&partial);
        placed.map_err(|why| Error::Build {
            bundle: bundle.into(),
            why,
        })?;
        tracing::info!(bundle, venv = %dir.display(), "Python environment ready");
        Ok(dir)
    }

    async fn build(&self, bundle: &str, dir: &Path, packages: &[String]) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(dir);
        let mut venv = Command::new(&self.python);
        venv.args(["-m", "venv"]);
        if packages.is_empty() {
            venv.arg("--without-pip");
        }
        run_logged(bundle, venv.arg(dir)).await?;
        if !packages.is_empty() {
            let mut pip = Command::new(dir.join("bin/python"));
            pip.args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ]);
            run_logged(bundle, pip.args(packages)).await?;
        }
        python_runtime::write_sources(&dir.join(RUNTIME_DIR))
            .map_err(|error| format!("writing the runtime: {error}"))?;
        std::fs::write(dir.join(READY_MARKER), b"")
            .map_err(|error| format!("marking it complete: {error}"))
    }
}

/// The name of a venv: the hash of the Python it is made with, the packages it holds and the
/// runtime's sources, so a new ferry version or requirement gets a venv of its own.
fn venv_key(python: &Path, packages: &[String]) -> String {
    let python = python.display().to_string();
    let mut parts: Vec<&str> = vec![&python];
    parts.extend(packages.iter().map(String::as_str));
    parts.extend(
        python_runtime::SOURCES
            .iter()
            .flat_map(|(name, text)| [*name, *text]),
    );
    short_hash(parts)
}

fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Runs `command`, logging each line it prints; on failure, its last lines.
async fn run_logged(bundle: &str, command: &mut Command) -> Result<(), String> {
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("starting {program}: {error}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (out, err) = tokio::join!(log_lines(bundle, stdout), log_lines(bundle, stderr));
    let status = child
        .wait()
        .await
        .map_err(|error| format!("waiting for {program}: {error}"))?;
    if status.success() {
        return Ok(());
    }
    let mut tail: Vec<String> = out.into_iter().chain(err).collect();
    let skip = tail.len().saturating_sub(OUTPUT_TAIL_LINES);
    tail.drain(..skip);
    Err(format!(
        "{program} exited with {status}: {}",
        tail.join("\n")
    ))
}

async fn log_lines(bundle: &str, output: Option<impl AsyncRead + Unpin>) -> Vec<String> {
    let mut kept = Vec::new();
    let Some(output) = output else {
        return kept;
    };
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "venv", bundle, "{line}");
        kept.push(line);
        if kept.len() > OUTPUT_TAIL_LINES {
            kept.remove(0);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venvs_are_keyed_by_python_and_packages() {
        let python = Path::new("python3");
        let numpy = venv_key(python, &["numpy".into()]);
        assert_eq!(numpy, venv_key(python, &["numpy".into()]));
        assert_ne!(numpy, venv_key(python, &["numpy==2".into()]));
        assert_ne!(numpy, venv_key(Path::new("python3.12"), &["numpy".into()]));
        assert_ne!(
            venv_key(python, &["a".into(), "b".into()]),
            venv_key(python, &["ab".into()])
        );
    }
}
