//! `ferry fetch-artifact`'s flags: the worker pod's init container of an artifact bundle.

use std::path::PathBuf;

use crate::python_runtime::{FetchSettings, fetch_env};

#[derive(clap::Args, Debug, Clone)]
pub struct FetchArtifactArgs {
    /// Where the artifact is: an s3://, gs://, az:// or file:// URL (the clouds' credentials
    /// come from their usual environment variables and files).
    #[arg(long, env = fetch_env::LOCATION)]
    pub location: String,
    /// The file the artifact is written to.
    #[arg(long, env = fetch_env::ARTIFACT)]
    pub artifact: PathBuf,
    /// The directory ferry's Python runtime is written into (for PYTHONPATH).
    #[arg(long, env = fetch_env::RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
}

impl FetchArtifactArgs {
    pub fn settings(&self) -> FetchSettings {
        FetchSettings {
            location: self.location.clone(),
            artifact: self.artifact.clone(),
            runtime_dir: self.runtime_dir.clone(),
        }
    }
}
