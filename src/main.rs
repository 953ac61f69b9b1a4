//! Entry point: parses the command line, installs signal handling on one cancellation token and
//! starts the chosen role.

mod admin;
mod autoscale;
mod bench;
mod callback;
mod catalog;
mod check;
mod cli;
mod crd;
mod dev;
mod dispatcher;
mod forwarder;
mod gateway;
mod http_server;
mod manifest;
mod metrics;
mod nats_auth;
mod nats_server;
mod operator;
mod queue;
mod seal;
mod task;
mod telemetry;
mod worker;

use clap::Parser;
use kube::CustomResourceExt;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Role};

/// Many small, short-lived allocations per task on several threads: mimalloc serves them with
/// less CPU than the system allocator (measured with `ferry bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // TLS for callbacks uses ring, the provider kube already links; the result only says whether
    // another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if cli.check_config {
        return check::run(cli.role).await;
    }
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    match cli.role {
        Role::Dev(args) => dev::run(args, cancel).await,
        Role::Gateway(args) => gateway::run(args, cancel).await,
        Role::Forwarder(args) => forwarder::run(args, cancel).await,
        Role::Dispatcher(args) => dispatcher::run(args, cancel).await,
        Role::Operator(args) => operator::run(args, cancel).await,
        Role::Bench(args) => bench::run(args, cancel).await,
        Role::BenchModel(args) => bench::model::run(args, cancel).await,
        Role::NatsAuth(args) => {
            nats_auth::run(&args)?;
            Ok(())
        }
        Role::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
    }
}

/// Both CRDs as one multi-document YAML stream, as `crds/` holds it.
fn crd_yaml() -> anyhow::Result<String> {
    // Lists at their key's indentation, as kubectl prints them.
    let options =
        || serde_saphyr::ser_options! { compact_list_indent: true, folded_wrap_chars: usize::MAX };
    let bundle = serde_saphyr::to_string_with_options(&crd::ModelBundle::crd(), options())?;
    let endpoint = serde_saphyr::to_string_with_options(&crd::ModelEndpoint::crd(), options())?;
    Ok(format!("---\n{bundle}---\n{endpoint}"))
}

async fn cancel_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                cancel.cancel();
                return;
            }
        };
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted: shutting down"),
        _ = terminate.recv() => tracing::info!("terminated: shutting down"),
    }
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kube::CustomResourceExt;

    const CRDS_FILE: &str = "crds/ferry.dev.yaml";

    #[test]
    fn crds_directory_matches_the_rust_types() {
        let on_disk =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CRDS_FILE))
                .expect("crds/ferry.dev.yaml exists");
        let generated = super::crd_yaml().expect("CRDs serialize");
        assert!(
            on_disk == generated,
            "{CRDS_FILE} is stale: run `cargo run -- crd > {CRDS_FILE}`"
        );
    }

    #[test]
    fn both_kinds_are_listed_by_kubectl_get_ferry() {
        for names in [
            crate::crd::ModelBundle::crd().spec.names,
            crate::crd::ModelEndpoint::crd().spec.names,
        ] {
            assert_eq!(
                names.categories,
                Some(vec!["ferry".to_string()]),
                "{}",
                names.kind
            );
        }
    }

    #[test]
    fn printed_crds_read_back_as_the_same_definitions() {
        let printed = super::crd_yaml().expect("CRDs serialize");
        let read: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            serde_saphyr::from_multiple(&printed).expect("printed CRDs parse");
        assert_eq!(
            read,
            [
                crate::crd::ModelBundle::crd(),
                crate::crd::ModelEndpoint::crd()
            ]
        );
    }

    /// Every example and benchmark manifest fits its CRD's OpenAPI schema (types, bounds,
    /// patterns) and passes the CEL rules, as `kubectl apply` would check them.
    #[test]
    fn examples_validate_against_the_crd_schemas() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let validators = [
            crate::crd::ModelBundle::crd(),
            crate::crd::ModelEndpoint::crd(),
        ]
        .map(|crd| {
            let schema = crd.spec.versions[0]
                .schema
                .clone()
                .and_then(|s| s.open_api_v3_schema)
                .expect("schema");
            let schema = serde_json::to_value(schema).expect("schema serializes");
            (
                crd.spec.names.kind,
                jsonschema::validator_for(&schema).expect("schema compiles"),
            )
        });
        let mut checked = 0;
        for dir in [
            "examples",
            "benches/manifests",
            "benches/scaling",
            "benches/instant",
        ] {
            let dir = root.join(dir);
            // Loaded beside the examples, as `ferry dev` runs them (the bundles they name).
            let manifests =
                crate::manifest::load(&[root.join("examples/test-bundle.yaml"), dir.clone()])
                    .unwrap_or_else(|error| {
                        panic!("{} loads and passes CEL: {error}", dir.display())
                    });
            assert!(!manifests.endpoints.is_empty(), "{}", dir.display());
            for entry in std::fs::read_dir(&dir).expect("manifest dir") {
                let path = entry.expect("entry").path();
                if path.extension().is_none_or(|ext| ext != "yaml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("readable");
                let documents: Vec<serde_json::Value> =
                    serde_saphyr::from_multiple(&text).expect("YAML");
                for value in documents {
                    let Some((_, validator)) = validators
                        .iter()
                        .find(|(kind, _)| value["kind"] == kind.as_str())
                    else {
                        continue;
                    };
                    let errors: Vec<String> = validator
                        .iter_errors(&value)
                        .map(|e| e.to_string())
                        .collect();
                    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 7, "checked {checked} manifests");
    }

    #[test]
    fn the_schema_rejects_out_of_bounds_values() {
        let crd = crate::crd::ModelEndpoint::crd();
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("schema");
        let validator = jsonschema::validator_for(&serde_json::to_value(schema).expect("json"))
            .expect("compiles");
        let endpoint = |spec: serde_json::Value| serde_json::json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint", "metadata": {"name": "x"}, "spec": spec});
        let labels = serde_json::json!({"team": "t", "product": "p"});
        assert!(validator.is_valid(&endpoint(
            serde_json::json!({"bundle": "b", "labels": labels})
        )));
        assert!(!validator.is_valid(&endpoint(
            serde_json::json!({"bundle": "b", "labels": labels, "maxWorkers": 0})
        )));
        assert!(!validator.is_valid(&endpoint(
            serde_json::json!({"bundle": "b", "labels": labels, "endpointType": "batch"})
        )));
        assert!(!validator.is_valid(&endpoint(
            serde_json::json!({"bundle": "b", "labels": labels, "defaultCallbackUrl": "ftp://x"})
        )));
        assert!(!validator.is_valid(&endpoint(
            serde_json::json!({"bundle": "b", "labels": labels, "cpus": "lots"})
        )));
    }
}
