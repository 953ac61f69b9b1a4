//! Entry point: parses the command line, installs signal handling on one cancellation token and
//! starts the chosen role.

mod admin;
mod bench;
mod callback;
mod catalog;
mod cli;
mod crd;
mod dev;
mod forwarder;
mod gateway;
mod manifest;
mod queue;
mod task;
mod telemetry;

use clap::Parser;
use kube::CustomResourceExt;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Role};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // TLS for callbacks uses ring, the provider kube already links; the result only says whether
    // another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    match cli.role {
        Role::Dev(args) => dev::run(args, cancel).await,
        Role::Gateway(args) => gateway::run(args, cancel).await,
        Role::Forwarder(args) => forwarder::run(args, cancel).await,
        Role::Dispatcher(args) => callback::run(args, cancel).await,
        Role::Bench(args) => bench::run(args, cancel).await,
        Role::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
    }
}

/// Both CRDs as one multi-document YAML stream, as `crds/` holds it.
fn crd_yaml() -> anyhow::Result<String> {
    let bundle = serde_yaml::to_string(&crd::ModelBundle::crd())?;
    let endpoint = serde_yaml::to_string(&crd::ModelEndpoint::crd())?;
    Ok(format!("---\n{bundle}---\n{endpoint}"))
}

async fn cancel_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
