//! The words of a refusal: what rule a value breaks and what would keep it, naming fields as
//! manifests spell them or, for the Launch API, as its requests do.

use std::borrow::Cow;

use super::Invalid;
use crate::crd::artifact::FrameworkKind;
use crate::crd::rules::Bounds;
use crate::worker::MODEL_PORT_ENV;

/// How a message names fields: as manifests spell them, or as Launch's requests do (the same
/// names in snake_case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    Manifest,
    Launch,
}

impl Spelling {
    fn field(self, name: &str) -> Cow<'_, str> {
        match self {
            Spelling::Manifest => Cow::Borrowed(name),
            Spelling::Launch => Cow::Owned(snake_case(name)),
        }
    }
}

fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

impl Invalid {
    /// The message, naming fields as `spelling` does.
    pub fn message(&self, spelling: Spelling) -> String {
        let name = |field| spelling.field(field);
        let between = |bounds: &Bounds| format!("between {} and {}", bounds.min, bounds.max);
        match self {
            Invalid::Empty { field } => format!("{} must not be empty", name(field)),
            Invalid::OutOfBounds { bounds, value } => {
                format!(
                    "{} must be {}, not {value}",
                    name(bounds.field),
                    between(bounds)
                )
            }
            Invalid::EntryOutOfBounds { bounds, value } => format!(
                "each entry of {} must be {}, not {value}",
                name(bounds.field.trim_end_matches("[]")),
                between(bounds)
            ),
            Invalid::Length { bounds, length } => format!(
                "{} must have {} entries, not {length}",
                name(bounds.field),
                between(bounds)
            ),
            Invalid::Pattern { pattern, value } => format!(
                "{} {value:?} is not {}",
                name(pattern.field),
                pattern.expected
            ),
            Invalid::MissingLabel { key } => {
                format!("labels must include team and product; {key:?} is missing")
            }
            Invalid::LabelKey { key } => format!(
                "label key {key:?} is not a valid Kubernetes label key: an optional DNS prefix \
                 and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending \
                 with a letter or digit"
            ),
            Invalid::LabelValue { key, value } => format!(
                "label {key}={value:?} is not a valid Kubernetes label value: at most 63 \
                 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ),
            Invalid::MinAboveMax { min, max } => format!(
                "{} ({min}) must not exceed {} ({max})",
                name("minWorkers"),
                name("maxWorkers")
            ),
            Invalid::GpusWithoutType { gpus } => format!(
                "gpus and {gpu_type} must be set together: gpus is {gpus} and {gpu_type} is unset",
                gpu_type = name("gpuType")
            ),
            Invalid::TypeWithoutGpus { gpu_type } => format!(
                "gpus and {field} must be set together: {field} is {gpu_type:?} and gpus is 0",
                field = name("gpuType")
            ),
            Invalid::GpuType { gpu_type } => format!(
                "{} {gpu_type:?} is not a valid Kubernetes label value, and the workers' nodes \
                 are selected by a label of that value",
                name("gpuType")
            ),
            Invalid::UrlWithoutHook => format!(
                "{} needs the callback post-inference hook: add callback to {}",
                name("defaultCallbackUrl"),
                name("postInferenceHooks")
            ),
            Invalid::BasicAuthOverHttp => format!(
                "{} is basic and {} is plain http: use https or set {}",
                name("defaultCallbackAuth"),
                name("defaultCallbackUrl"),
                name("callbacks.allowBasicAuthOverHttp")
            ),
            Invalid::DnsLabel { field, value, why } => format!(
                "{} {value:?} must be at most 63 lowercase letters, digits or '-', starting and \
                 ending with a letter or digit{why}",
                name(field)
            ),
            Invalid::PortClash { port } => format!(
                "port {port} is taken by the forwarder beside the model in the worker pod; the \
                 model must listen on another"
            ),
            Invalid::ReservedEnv { port } => {
                format!("env sets {MODEL_PORT_ENV}, which ferry sets from port ({port}): remove it")
            }
            Invalid::ImageOrArtifact => "set either image (with its command) or artifact: a \
                bundle runs an image of its own or an artifact in ferry's Python runtime"
                .to_owned(),
            Invalid::ZipWithoutModulePaths => format!(
                "a zip artifact needs {} and {}",
                name("artifact.loadPredictFnModulePath"),
                name("artifact.loadModelFnModulePath")
            ),
            Invalid::FrameworkImage { framework } => {
                let needs = match framework {
                    FrameworkKind::Pytorch => name("pytorchImageTag").into_owned(),
                    FrameworkKind::Tensorflow => name("tensorflowVersion").into_owned(),
                    FrameworkKind::Custom => {
                        format!("{} and {}", name("imageRepository"), name("imageTag"))
                    }
                };
                format!("the {} framework needs {needs}", framework.as_str())
            }
            Invalid::InBundle { bundle, invalid } => {
                format!("ModelBundle {bundle}: {}", invalid.message(spelling))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_spelling_is_the_manifest_name_in_snake_case() {
        assert_eq!(
            snake_case("queueMessageTimeoutSeconds"),
            "queue_message_timeout_seconds"
        );
        assert_eq!(
            snake_case("callbacks.allowBasicAuthOverHttp"),
            "callbacks.allow_basic_auth_over_http"
        );
        assert_eq!(snake_case("gpus"), "gpus");
    }
}
