//! `ferry dispatcher`'s flags and the settings they make.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::parse_seconds;
use super::shared::{GuardArgs, HttpArgs, NatsArgs, ReplicasArgs, SealArgs};
use crate::dispatcher::{Clients, DeliverySettings, Settings, Timeouts};
use crate::queue::Role;
use crate::worker::env as forwarder_env;

#[derive(clap::Args, Debug, Clone)]
pub struct DispatcherArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub replicas: ReplicasArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Address for /healthz, /readyz and /metrics; none when absent.
    #[arg(long, env = forwarder_env::ADMIN_LISTEN)]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// How the dispatcher delivers callbacks.
#[derive(clap::Args, Debug, Clone)]
pub struct DeliveryArgs {
    #[command(flatten)]
    pub guard: GuardArgs,
    /// PEM file of extra CA certificates trusted for callback receivers.
    #[arg(long, env = "FERRY_CALLBACK_CA_FILE")]
    pub callback_ca_file: Option<PathBuf>,
    /// Callbacks in flight at once.
    #[arg(long, env = "FERRY_DISPATCH_CONCURRENCY", default_value = "256")]
    pub dispatch_concurrency: NonZeroU32,
    /// Callbacks in flight at once to one receiver: the address and port connected to,
    /// whatever names lead there.
    #[arg(long, env = "FERRY_PER_HOST_CONCURRENCY", default_value = "32")]
    pub per_host_concurrency: NonZeroU32,
    /// Callbacks in flight at once for one endpoint, whatever their receivers.
    #[arg(long, env = "FERRY_PER_ENDPOINT_CONCURRENCY", default_value = "64")]
    pub per_endpoint_concurrency: NonZeroU32,
    /// Seconds to connect to a receiver, unless the endpoint sets its own.
    #[arg(long, env = "FERRY_CALLBACK_CONNECT_TIMEOUT_SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub callback_connect_timeout: Duration,
    /// Seconds one attempt may take in all, unless the endpoint sets its own.
    #[arg(long, env = "FERRY_CALLBACK_TIMEOUT_SECONDS", default_value = "15", value_parser = parse_seconds)]
    pub callback_timeout: Duration,
    /// Seconds a stopping dispatcher lets attempts under way finish; those still waiting for
    /// an answer then are recorded as cut short and retried. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long = "shutdown-grace-seconds", env = "FERRY_DISPATCHER_SHUTDOWN_GRACE_SECONDS", default_value = "20", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
}

impl DeliveryArgs {
    pub fn settings(&self) -> DeliverySettings {
        DeliverySettings {
            concurrency: self.dispatch_concurrency.get() as usize,
            per_host_concurrency: self.per_host_concurrency.get() as usize,
            per_endpoint_concurrency: self.per_endpoint_concurrency.get() as usize,
            timeouts: Timeouts {
                connect: self.callback_connect_timeout,
                total: self.callback_timeout,
            },
            shutdown_grace: self.shutdown_grace,
        }
    }

    /// The clients callbacks are sent with: the guard (`default_allowed` ranges when the flags
    /// name none) and the extra CA certificates.
    pub fn clients(&self, default_allowed: &[ipnet::IpNet]) -> anyhow::Result<Clients> {
        Ok(Clients::new(
            self.guard.guard(default_allowed)?,
            self.extra_roots()?,
        ))
    }

    fn extra_roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let Some(path) = &self.callback_ca_file else {
            return Ok(Vec::new());
        };
        let pem =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("{} holds no PEM certificates: {e}", path.display()))
    }
}

impl DispatcherArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings {
            connection: self.nats.connection()?.for_role(Role::Dispatcher),
            queue: self.replicas.apply(self.nats.queue_settings(None)),
            ring: self.seal.key_ring()?,
            delivery: self.delivery.settings(),
            clients: self.delivery.clients(&[])?,
            admin_listen: self.admin_listen,
            http: self.http.limits(),
        })
    }
}
