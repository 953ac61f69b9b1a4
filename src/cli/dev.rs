//! `ferry dev`'s flags and the settings they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dispatcher::DeliveryArgs;
use super::parse_seconds;
use super::shared::{AuthArgs, HttpArgs, NatsAccessArgs, ReplicasArgs, SealArgs, TaskQueueArgs};
use crate::dev::{Nats, Settings};
use crate::gateway::ApiKeys;
use crate::manifest;
use crate::queue::QueueSettings;
use crate::worker::env as forwarder_env;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// ModelBundle/ModelEndpoint manifests: YAML files or directories of them. Without any,
    /// `ferry dev` starts empty: create bundles and endpoints through the API.
    pub manifests: Vec<PathBuf>,
    /// Address the HTTP API listens on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:5005")]
    pub listen: SocketAddr,
    /// Use this NATS server instead of starting one.
    #[arg(long, env = forwarder_env::NATS_URL)]
    pub nats_url: Option<String>,
    /// The nats-server program to start when no URL is given.
    #[arg(long, env = "FERRY_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Port of 127.0.0.1 where the started nats-server serves its monitoring endpoints
    /// (`/varz`, `/jsz`): what `ferry bench --nats-monitor` reads. None without it.
    #[arg(long, env = "FERRY_NATS_MONITOR_PORT")]
    pub nats_monitor_port: Option<u16>,
    /// Credentials and TLS for the server given by --nats-url.
    #[command(flatten)]
    pub nats_access: NatsAccessArgs,
    #[command(flatten)]
    pub replicas: ReplicasArgs,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value = "10485760")]
    pub max_body_bytes: usize,
    /// Seconds the load must ask for fewer workers before they are stopped.
    #[arg(long = "scale-down-delay-seconds", env = "FERRY_SCALE_DOWN_DELAY_SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub scale_down_delay: Duration,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub task_queue: TaskQueueArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// The Python that makes the venvs artifact (cloudpickle and zip) bundles run in.
    #[arg(long, env = "FERRY_DEV_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Where venvs and fetched artifacts are kept between sessions; `$XDG_CACHE_HOME/ferry`
    /// (else `~/.cache/ferry`) when unset.
    #[arg(long, env = "FERRY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl DevArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let nats = match &self.nats_url {
            Some(url) => Nats::Connect(self.nats_access.connection(url)?),
            None => Nats::Start {
                program: self.nats_server.clone(),
                monitor_port: self.nats_monitor_port,
            },
        };
        // Callbacks go to receivers on this machine unless the flags say otherwise.
        let loopback = ["127.0.0.0/8".parse()?, "::1/128".parse()?];
        Ok(Settings {
            manifests: manifest::load(&self.manifests)?,
            listen: self.listen,
            nats,
            keys: ApiKeys::parse(&self.auth.api_keys, true)?,
            ring: self.seal.key_ring_or_generate()?,
            clients: self.delivery.clients(&loopback)?,
            delivery: self.delivery.settings(),
            queue: self.replicas.apply(QueueSettings {
                task_limits: self.task_queue.limits(),
                ..Default::default()
            }),
            scale_down_delay: self.scale_down_delay,
            max_body_bytes: self.max_body_bytes,
            http: self.http.limits(),
            python: self.python.clone(),
            cache_dir: match &self.cache_dir {
                Some(dir) => dir.clone(),
                None => default_cache_dir()?,
            },
        })
    }
}

/// `$XDG_CACHE_HOME/ferry`, else `$HOME/.cache/ferry`.
fn default_cache_dir() -> anyhow::Result<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let base = match (non_empty("XDG_CACHE_HOME"), non_empty("HOME")) {
        (Some(cache), _) => PathBuf::from(cache),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) => anyhow::bail!("set --cache-dir: neither XDG_CACHE_HOME nor HOME is set"),
    };
    Ok(base.join("ferry"))
}
