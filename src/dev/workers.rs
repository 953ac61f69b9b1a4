//! Local workers: each runs the bundle's model command as a process on a free loopback port (given in
//! `PORT`, as in a pod) beside an in-process forwarder, and is restarted if the model exits,
//! as a ReplicaSet would.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::port_owner;
use super::python::ModelCommand;
use crate::admin::Readiness;
use crate::catalog::Catalog;
use crate::crd::EndpointType;
use crate::crd::{ModelBundle, ModelEndpoint};
use crate::forwarder::{Forwarder, ForwarderMetrics, InputFetcher, ModelClient, Probing, serve};
use crate::process_group::ProcessGroup;
use crate::queue::ForwarderQueue;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const RESTART_DELAY: Duration = Duration::from_secs(1);

/// How long a stopping serving worker, already gone from the catalog, keeps answering: past
/// the gateway's idle hold of its connections, so none it closes then is still taken.
const HANDOVER_DELAY: Duration =
    Duration::from_secs(crate::gateway::WORKER_CONNECTION_IDLE.as_secs() + 1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("finding a free port")]
    Port(#[source] std::io::Error),
    #[error("starting `{program}` for bundle {bundle}")]
    Spawn {
        program: String,
        bundle: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything one local worker needs.
#[derive(Clone)]
pub struct Worker {
    pub name: String,
    pub endpoint: Arc<ModelEndpoint>,
    pub bundle: Arc<ModelBundle>,
    /// How the model process starts.
    pub command: Arc<ModelCommand>,
    pub catalog: Catalog,
    pub queue: ForwarderQueue,
    pub metrics: Arc<ForwarderMetrics>,
    /// What the gateway presents to this worker when it serves (sync and streaming).
    pub serving_token: String,
    /// The group the model process starts in: it dies with `ferry dev`.
    pub children: Arc<ProcessGroup>,
    /// Fetches the inputs of tasks given by URL.
    pub inputs: InputFetcher,
}

impl Worker {
    /// Runs the worker until `cancel`; `readiness` turns true once its forwarder takes tasks.
    pub async fn run(self, readiness: Readiness, cancel: CancellationToken) {
        loop {
            match self.run_once(&readiness, &cancel).await {
                Ok(()) => return,
                Err(error) => tracing::error!(worker = %self.name, %error, "worker failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESTART_DELAY) => tracing::info!(worker = %self.name, "restarting worker"),
            }
        }
    }

    /// One life of the model process. `Ok` when cancelled; `Err` when the model stopped by itself.
    async fn run_once(
        &self,
        readiness: &Readiness,
        cancel: &CancellationToken,
    ) -> Result<(), BoxError> {
        let port = free_port().map_err(Error::Port)?;
        let mut child = self.spawn_model(port)?;
        let spec = &self.bundle.spec;
        let base = url::Url::parse(&format!("http://127.0.0.1:{port}"))?;
        let model = ModelClient::new(
            &base,
            &spec.predict_route,
            &spec.healthcheck_route,
            Duration::from_secs(600),
        )?
        .with_streaming_route(spec.streaming_predict_route.as_deref())?
        .with_inputs(self.inputs.clone());
        // The port was free when chosen, but another process may have taken it since (this
        // model then fails to bind it and exits): only this model's answer makes it ready.
        let model = match child.id() {
            Some(pid) => model.with_ready_check(Arc::new(move || {
                port_owner::listened_by(port, pid) != Some(false)
            })),
            None => model,
        };
        let stop_forwarder = cancel.child_token();
        let forwarding = self.forward(model, readiness.clone(), stop_forwarder.clone());
        let mut forwarding = std::pin::pin!(forwarding);
        tokio::select! {
            result = &mut forwarding => {
                let _ = child.kill().await;
                result?;
                Ok(())
            }
            status = child.wait() => {
                stop_forwarder.cancel();
                let _ = forwarding.await;
                Err(exited(status).into())
            }
        }
    }

    /// The forwarder beside the model: pulling the queue for async endpoints, serving the
    /// gateway's requests (registered in the catalog while up) for sync and streaming ones.
    async fn forward(
        &self,
        model: ModelClient,
        readiness: Readiness,
        stop: CancellationToken,
    ) -> Result<(), BoxError> {
        let concurrency = self.endpoint.spec.concurrent_requests_per_worker as usize;
        let endpoint_id = self.endpoint.endpoint_id();
        if self.endpoint.spec.endpoint_type == EndpointType::Async {
            let metrics = self.metrics.clone();
            let forwarder = Forwarder {
                queue: self.queue.clone(),
                endpoint_id,
                model,
                concurrency,
                metrics,
            };
            return Ok(forwarder.run(readiness, stop).await?);
        }
        if !model.wait_until_ready(&stop, Probing::Starting).await {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let server = Arc::new(serve::Server {
            endpoint_id: endpoint_id.clone(),
            token: self.serving_token.clone(),
            model,
            slots,
            queue: self.queue.clone(),
        });
        // Listed before it counts as ready: the gateway relies on this order (`sync::reach_worker`).
        self.catalog.add_worker(&endpoint_id, url.clone());
        readiness.set_ready();
        tracing::info!(worker = %self.name, %url, "serving sync and streaming requests");
        // Only this process's gateway connects: the default bounds serve it.
        let limits = crate::http_server::Limits::default();
        // Gone from the catalog at once, so the gateway sends no more while it hands over.
        let (catalog, id, listed) = (self.catalog.clone(), endpoint_id.clone(), url.clone());
        let leaving = stop.clone();
        tokio::spawn(async move {
            leaving.cancelled().await;
            catalog.remove_worker(&id, &listed);
        });
        let served = serve::serve(listener, server, limits, HANDOVER_DELAY, stop).await;
        self.catalog.remove_worker(&endpoint_id, &url);
        Ok(served?)
    }

    fn spawn_model(&self, port: u16) -> Result<Child, Error> {
        let bundle = kube::ResourceExt::name_any(self.bundle.as_ref());
        let model = self.command.as_ref();
        let mut command = Command::new(&model.program);
        self.children.enroll(&mut command);
        let mut child = command
            .args(&model.args)
            .envs(&model.env)
            .env(crate::worker::MODEL_PORT_ENV, port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: model.program.display().to_string(),
                bundle,
                source,
            })?;
        tracing::info!(worker = %self.name, port, pid = child.id(), "started model process");
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(log_lines(self.name.clone(), stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_lines(self.name.clone(), stderr));
        }
        Ok(child)
    }
}

fn exited(status: std::io::Result<std::process::ExitStatus>) -> String {
    let status = status.map_or_else(|error| error.to_string(), |status| status.to_string());
    format!("model process exited ({status})")
}

async fn log_lines(worker: String, output: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "model", %worker, "{line}");
    }
}

fn free_port() -> std::io::Result<u16> {
    // The port is released before the model binds it; another process could take it in between,
    // in which case the model exits and the worker restarts on a new port (`port_owner`).
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
