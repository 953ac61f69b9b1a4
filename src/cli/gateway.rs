//! `ferry gateway`'s flags and the settings they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse_seconds;
use super::shared::{
    AuthArgs, GuardArgs, HttpArgs, NatsArgs, ReplicasArgs, SealArgs, TaskQueueArgs,
};
use crate::gateway::{ApiKeys, RateLimit, Settings, TeamLimits};
use crate::http_server::Handover;
use crate::manifest;
use crate::queue::Role;

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub replicas: ReplicasArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Serve a fixed set of endpoints from these ModelBundle/ModelEndpoint manifests (files or
    /// directories), read-only. Without them the gateway uses the cluster's Kubernetes API.
    #[arg(long, env = "FERRY_MANIFESTS", value_delimiter = ',')]
    pub manifests: Vec<PathBuf>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value = "10485760")]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub task_queue: TaskQueueArgs,
    #[command(flatten)]
    pub team_limits: TeamLimitArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// How a stopping gateway hands its traffic over.
#[derive(clap::Args, Debug, Clone)]
pub struct ShutdownArgs {
    /// Seconds a stopping gateway reports not ready (/readyz 503) while still serving every
    /// request, so Service endpoints and load balancers stop routing to it first.
    #[arg(long = "shutdown-delay-seconds", env = "FERRY_GATEWAY_SHUTDOWN_DELAY_SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub shutdown_delay: Duration,
    /// Seconds it then lets requests under way finish, accepting no new connections; a request
    /// still waiting for its answer then gets 503 with Retry-After (a stream is cut off). Keep
    /// delay + grace below the pod's terminationGracePeriodSeconds.
    #[arg(long = "request-grace-seconds", env = "FERRY_GATEWAY_REQUEST_GRACE_SECONDS", default_value = "20", value_parser = parse_seconds)]
    pub request_grace: Duration,
}

impl ShutdownArgs {
    pub fn shutdown(&self) -> Handover {
        Handover {
            delay: self.shutdown_delay,
            grace: Some(self.request_grace),
        }
    }
}

/// Per-team fairness at the gateway: each API key's team has its own budget.
#[derive(clap::Args, Debug, Clone)]
pub struct TeamLimitArgs {
    /// Task submissions and endpoint changes per second per team (sustained); beyond it and
    /// the burst, 429 with Retry-After. 0 = no limit.
    #[arg(long, env = "FERRY_TEAM_SUBMIT_RATE", default_value = "5000", value_parser = parse_rate)]
    pub team_submit_rate: f64,
    /// Requests a team may make at once above the rate; 0 = one second's worth.
    #[arg(long, env = "FERRY_TEAM_SUBMIT_BURST", default_value = "10000")]
    pub team_submit_burst: u32,
    /// Unfinished (queued or running) async tasks a team may have across its endpoints;
    /// submissions beyond get 429. 0 = no quota (each endpoint's queue bound still holds).
    #[arg(long, env = "FERRY_TEAM_MAX_UNFINISHED_TASKS", default_value = "0")]
    pub team_max_unfinished_tasks: u64,
}

impl TeamLimitArgs {
    pub fn limits(&self) -> TeamLimits {
        TeamLimits::new(
            RateLimit::new(self.team_submit_rate, self.team_submit_burst),
            std::num::NonZeroU64::new(self.team_max_unfinished_tasks),
        )
    }
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "`{value}` is not a rate: give requests per second, 0 or more"
        )),
    }
}

impl GatewayArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let keys = ApiKeys::parse(&self.auth.api_keys, false)?;
        if matches!(&keys, ApiKeys::Teams(teams) if teams.is_empty()) {
            anyhow::bail!(
                "no API keys configured: set --api-keys / FERRY_API_KEYS to KEY=TEAM pairs"
            );
        }
        Ok(Settings {
            listen: self.listen,
            connection: self.nats.connection()?.for_role(Role::Gateway),
            queue: self
                .replicas
                .apply(self.nats.queue_settings(Some(&self.task_queue))),
            keys,
            guard: self.guard.guard(&[])?,
            ring: self.seal.key_ring()?,
            limits: self.team_limits.limits(),
            manifests: self.manifests()?,
            max_body_bytes: self.max_body_bytes,
            http: self.http.limits(),
            shutdown: self.shutdown.shutdown(),
        })
    }

    fn manifests(&self) -> anyhow::Result<Option<manifest::Manifests>> {
        if self.manifests.is_empty() {
            return Ok(None);
        }
        let manifests = manifest::load(&self.manifests)?;
        if manifests.endpoints.is_empty() {
            anyhow::bail!(
                "no ModelEndpoint found in {}: a gateway serving manifests serves their endpoints",
                self.manifests
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Some(manifests))
    }
}
