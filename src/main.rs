//! Entry point: parses the command line, installs signal handling on one cancellation token and
//! starts the chosen role.

mod admin;
mod api_client;
mod autoscale;
mod bench;
mod callback;
mod catalog;
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
mod process_group;
mod python_runtime;
mod queue;
mod seal;
mod storage;
mod task;
mod telemetry;
mod worker;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cli::Cli;

/// Many small, short-lived allocations per task on several threads: mimalloc serves them with
/// less CPU than the system allocator (measured with `ferry bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format.into());
    // TLS for callbacks uses ring, the provider kube already links; the result only says whether
    // another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if cli.check_config {
        return cli::check::run(cli.role).await;
    }
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    cli.role.run(cancel).await
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
