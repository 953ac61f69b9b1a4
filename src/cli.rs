//! Command-line arguments: one `Args` struct per role; every flag also reads an environment
//! variable so the same image is configured the same way in a pod and on a laptop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::callback::Guard;
use crate::dispatcher::{DispatcherSettings, Timeouts};
use crate::operator::build::WorkerNetworkPolicy;
use crate::worker::env as forwarder_env;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Serve machine-learning models as endpoints and deliver their results to callback URLs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Role,
    /// Log line format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Check the role's configuration (flags and environment) and its NATS server, then exit
    /// without serving: 0 when the role would start. No environment variable on purpose: a
    /// stray one would keep a pod from ever serving.
    #[arg(long, global = true)]
    pub check_config: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Role {
    /// Run the whole system on this machine from ModelBundle/ModelEndpoint manifests.
    Dev(DevArgs),
    /// Serve the Launch-compatible HTTP API.
    Gateway(GatewayArgs),
    /// Pull an endpoint's tasks, call the model container, record results (the worker sidecar).
    Forwarder(ForwarderArgs),
    /// Deliver callbacks (the callback controller).
    Dispatcher(DispatcherArgs),
    /// Reconcile ModelBundles and ModelEndpoints into worker Deployments, Services and queues.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Generate NATS authorization: the server's configuration, a `.creds` file per role with
    /// that role's subject permissions, and the account signing seed.
    NatsAuth(NatsAuthArgs),
    /// Measure a running gateway: submit tasks and time their callbacks.
    Bench(BenchArgs),
    /// Serve the benchmark's instant model (x + len(y)) on 0.0.0.0:$PORT.
    BenchModel(BenchModelArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct NatsAuthArgs {
    /// Directory to write into (it must exist); files are readable by their owner only.
    #[arg(long, env = "FERRY_NATS_AUTH_OUT")]
    pub out: PathBuf,
    /// Instead of a new authorization, print the credentials of the forwarder of this endpoint
    /// (end_…) alone, issued with the account signing key an earlier run wrote to --out.
    #[arg(long = "forwarder-of", env = "FERRY_NATS_AUTH_FORWARDER_OF")]
    pub forwarder_of: Option<String>,
    /// How long issued forwarder credentials are valid; the server refuses them after.
    #[arg(long = "valid-for-seconds", env = "FERRY_NATS_AUTH_VALID_FOR_SECONDS", default_value = "604800", value_parser = parse_positive_seconds)]
    pub valid_for: Duration,
}

#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server with JetStream.
    #[arg(
        long = "nats-url",
        env = forwarder_env::NATS_URL,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// How long task records and callback states are kept, in seconds.
    #[arg(long, env = forwarder_env::RESULT_RETENTION_SECONDS, default_value = "86400", value_parser = parse_seconds)]
    pub result_retention: Duration,
    #[command(flatten)]
    pub access: NatsAccessArgs,
}

impl NatsArgs {
    /// The validated connection: refuses a URL that carries credentials.
    pub fn connection(&self) -> Result<crate::queue::Connection, crate::queue::ConfigError> {
        self.access.connection(&self.url)
    }
}

/// Credentials and TLS towards NATS, the same for every role. Secrets come from files (mounted
/// Secrets), never from the URL or a flag's value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NatsAccessArgs {
    /// A `.creds` file (user JWT and NKey seed).
    #[arg(long = "nats-creds-file", env = forwarder_env::NATS_CREDS_FILE,
          conflicts_with_all = ["nats_nkey_seed_file", "nats_user", "nats_token_file"])]
    pub nats_creds_file: Option<PathBuf>,
    /// A file holding an NKey user seed.
    #[arg(long = "nats-nkey-seed-file", env = forwarder_env::NATS_NKEY_SEED_FILE,
          conflicts_with_all = ["nats_user", "nats_token_file"])]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// User name; its password is read from --nats-password-file.
    #[arg(long = "nats-user", env = forwarder_env::NATS_USER, requires = "nats_password_file",
          conflicts_with = "nats_token_file")]
    pub nats_user: Option<String>,
    /// A file holding the password of --nats-user.
    #[arg(long = "nats-password-file", env = forwarder_env::NATS_PASSWORD_FILE, requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    /// A file holding a token.
    #[arg(long = "nats-token-file", env = forwarder_env::NATS_TOKEN_FILE)]
    pub nats_token_file: Option<PathBuf>,
    /// PEM certificates that sign the NATS server's certificate.
    #[arg(long = "nats-tls-ca-file", env = forwarder_env::NATS_TLS_CA_FILE)]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that verifies clients (with --nats-tls-key-file).
    #[arg(long = "nats-tls-cert-file", env = forwarder_env::NATS_TLS_CERT_FILE, requires = "nats_tls_key_file")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// PEM key of --nats-tls-cert-file.
    #[arg(long = "nats-tls-key-file", env = forwarder_env::NATS_TLS_KEY_FILE, requires = "nats_tls_cert_file")]
    pub nats_tls_key_file: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    #[arg(long = "nats-tls-required", env = forwarder_env::NATS_TLS_REQUIRED, default_value = "false", action = clap::ArgAction::Set)]
    pub nats_tls_required: bool,
}

impl NatsAccessArgs {
    pub fn connection(
        &self,
        url: &str,
    ) -> Result<crate::queue::Connection, crate::queue::ConfigError> {
        use crate::queue::{ClientCert, Credentials, Tls};
        let credentials = match (
            &self.nats_creds_file,
            &self.nats_nkey_seed_file,
            &self.nats_user,
            &self.nats_password_file,
            &self.nats_token_file,
        ) {
            (Some(path), ..) => Credentials::CredsFile(path.clone()),
            (_, Some(path), ..) => Credentials::NkeySeedFile(path.clone()),
            (_, _, Some(user), Some(password_file), _) => Credentials::UserPassword {
                user: user.clone(),
                password_file: password_file.clone(),
            },
            (.., Some(path)) => Credentials::TokenFile(path.clone()),
            _ => Credentials::None,
        };
        let client_cert = self
            .nats_tls_cert_file
            .clone()
            .zip(self.nats_tls_key_file.clone())
            .map(|(cert_file, key_file)| ClientCert {
                cert_file,
                key_file,
            });
        let tls = Tls {
            ca_file: self.nats_tls_ca_file.clone(),
            client_cert,
            required: self.nats_tls_required,
        };
        crate::queue::Connection::new(url, credentials, tls)
    }
}

/// The key ring that seals the secrets kept in NATS (operator, gateway, dispatcher, dev).
#[derive(clap::Args, Debug, Clone)]
pub struct SealArgs {
    /// File of base64 keys of 32 bytes, one a line, the current one first (older ones only
    /// open what they sealed): seals callback credentials and signing secrets kept in NATS and
    /// derives each endpoint's serving token. Required, except by `ferry dev`, which makes a
    /// key per run without it.
    #[arg(long, env = "FERRY_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--seal-key-file / FERRY_SEAL_KEY_FILE is required: the key ring that seals secrets kept in NATS"
)]
pub struct SealKeyMissing;

impl SealArgs {
    /// The ring of the key file, which this role requires.
    pub fn key_ring(&self) -> anyhow::Result<crate::seal::KeyRing> {
        let path = self.seal_key_file.as_ref().ok_or(SealKeyMissing)?;
        Ok(crate::seal::KeyRing::read(path)?)
    }

    /// The ring of the key file, or a fresh key when none is given.
    pub fn key_ring_or_generate(&self) -> anyhow::Result<crate::seal::KeyRing> {
        match &self.seal_key_file {
            Some(path) => Ok(crate::seal::KeyRing::read(path)?),
            None => Ok(crate::seal::KeyRing::generate()),
        }
    }
}

/// How the role's HTTP listeners bound their connections.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Seconds a connection may take to send a request's header (from its first byte, or
    /// from connecting); slower ones are closed.
    #[arg(long = "http-header-timeout-seconds", env = "FERRY_HTTP_HEADER_TIMEOUT_SECONDS", default_value = "5", value_parser = parse_positive_seconds)]
    pub header_timeout: Duration,
    /// Seconds a keep-alive connection may wait for its next request before it is closed.
    #[arg(long = "http-idle-timeout-seconds", env = "FERRY_HTTP_IDLE_TIMEOUT_SECONDS", default_value = "120", value_parser = parse_positive_seconds)]
    pub idle_timeout: Duration,
    /// Connections served at once per listener; more wait to be accepted until one closes.
    #[arg(
        long = "http-max-connections",
        env = "FERRY_HTTP_MAX_CONNECTIONS",
        default_value = "4096"
    )]
    pub max_connections: NonZeroU32,
}

impl HttpArgs {
    pub fn limits(&self) -> crate::http_server::Limits {
        crate::http_server::Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.get() as usize,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// API keys and the team each belongs to, as `KEY=TEAM` pairs separated by commas.
    #[arg(long, env = "FERRY_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
}

/// Bounds of each endpoint's task queue, applied where queues are made (operator, gateway,
/// `ferry dev`).
#[derive(clap::Args, Debug, Clone)]
pub struct TaskQueueArgs {
    /// Tasks an endpoint's queue holds (waiting or running); submissions beyond get 429.
    #[arg(long, env = "FERRY_TASK_QUEUE_MAX_TASKS", default_value = "100000")]
    pub task_queue_max_tasks: std::num::NonZeroU64,
    /// Bytes an endpoint's queue holds; no bound when absent (JetStream reserves this much
    /// storage per endpoint up front).
    #[arg(long, env = "FERRY_TASK_QUEUE_MAX_BYTES")]
    pub task_queue_max_bytes: Option<std::num::NonZeroU64>,
}

impl TaskQueueArgs {
    pub fn limits(&self) -> crate::queue::QueueLimits {
        let clamp = |value: std::num::NonZeroU64| i64::try_from(value.get()).unwrap_or(i64::MAX);
        crate::queue::QueueLimits {
            max_tasks: clamp(self.task_queue_max_tasks),
            max_bytes: self.task_queue_max_bytes.map(clamp),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsArgs,
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
    pub fn limits(&self) -> crate::gateway::TeamLimits {
        crate::gateway::TeamLimits::new(
            crate::gateway::RateLimit::new(self.team_submit_rate, self.team_submit_burst),
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

#[derive(clap::Args, Debug, Clone)]
pub struct ForwarderArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Id of the endpoint whose tasks this worker runs.
    #[arg(long, env = forwarder_env::ENDPOINT_ID)]
    pub endpoint_id: String,
    /// Base URL of the model container.
    #[arg(long, env = forwarder_env::MODEL_URL, default_value = "http://127.0.0.1:5005")]
    pub model_url: url::Url,
    /// Path that takes a task's args and answers with its result.
    #[arg(long, env = forwarder_env::PREDICT_ROUTE, default_value = "/predict")]
    pub predict_route: String,
    /// Path that answers 200 once the model is ready.
    #[arg(long, env = forwarder_env::HEALTHCHECK_ROUTE, default_value = "/readyz")]
    pub healthcheck_route: String,
    /// Tasks run at once.
    #[arg(long, env = forwarder_env::CONCURRENCY, default_value = "1")]
    pub concurrency: NonZeroU32,
    /// Longest a model may take on one task, in seconds.
    #[arg(long, env = forwarder_env::PREDICT_TIMEOUT_SECONDS, default_value = "600", value_parser = parse_seconds)]
    pub predict_timeout: Duration,
    /// Address for /healthz, /readyz and /metrics; none when absent.
    #[arg(long, env = forwarder_env::ADMIN_LISTEN)]
    pub admin_listen: Option<SocketAddr>,
    /// Serve sync and streaming requests on this address instead of pulling queued tasks
    /// (the worker of a sync or streaming endpoint).
    #[arg(long, env = forwarder_env::SERVE_LISTEN)]
    pub serve_listen: Option<SocketAddr>,
    /// Path of the model's streaming predictions (server-sent events), if it has one.
    #[arg(long, env = forwarder_env::STREAMING_PREDICT_ROUTE)]
    pub streaming_predict_route: Option<String>,
    /// The token the gateway presents to this endpoint's serving workers; requests without it
    /// are refused. Required with --serve-listen; set by the operator from the worker Secret.
    #[arg(long, env = forwarder_env::SERVING_TOKEN, hide_env_values = true)]
    pub serving_token: Option<String>,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DispatcherArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
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

/// Where callbacks may go (the SSRF guard), for the gateway's submission check and the dispatcher.
#[derive(clap::Args, Debug, Clone)]
pub struct GuardArgs {
    /// Internal address ranges callbacks may reach anyway, as CIDRs (`none` for no exception).
    /// Default: none; loopback in `ferry dev`.
    #[arg(long, env = "FERRY_CALLBACK_ALLOW_CIDRS", value_delimiter = ',')]
    pub callback_allow_cidrs: Option<Vec<String>>,
    /// Fixed DNS answers for callback hosts, as HOST=IP pairs (split-horizon DNS, tests).
    #[arg(long, env = "FERRY_CALLBACK_RESOLVE", value_delimiter = ',')]
    pub callback_resolve: Vec<String>,
    /// Seconds a DNS lookup of a callback host may take before the URL is refused for now
    /// (503 at submission, a retried attempt at delivery).
    #[arg(long = "callback-dns-timeout-seconds", env = "FERRY_CALLBACK_DNS_TIMEOUT_SECONDS", default_value = "5", value_parser = parse_positive_seconds)]
    pub callback_dns_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardArgsError {
    #[error("--callback-allow-cidrs: `{0}` is not a CIDR such as 10.0.0.0/8")]
    Cidr(String),
    #[error("--callback-resolve: `{0}` is not HOST=IP")]
    Resolve(String),
}

impl GuardArgs {
    /// The guard these flags describe; `default_allowed` applies when no ranges are given.
    pub fn guard(&self, default_allowed: &[ipnet::IpNet]) -> Result<Guard, GuardArgsError> {
        let allowed = match &self.callback_allow_cidrs {
            None => default_allowed.to_vec(),
            Some(ranges) => ranges
                .iter()
                .filter(|range| !range.is_empty() && range.as_str() != "none")
                .map(|range| {
                    range
                        .parse()
                        .map_err(|_| GuardArgsError::Cidr(range.clone()))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut overrides: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for entry in &self.callback_resolve {
            let (host, ip) = entry
                .split_once('=')
                .ok_or_else(|| GuardArgsError::Resolve(entry.clone()))?;
            let ip = ip
                .parse()
                .map_err(|_| GuardArgsError::Resolve(entry.clone()))?;
            overrides
                .entry(host.to_ascii_lowercase())
                .or_default()
                .push(ip);
        }
        Ok(Guard::new(allowed, overrides).with_lookup_timeout(self.callback_dns_timeout))
    }
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
    pub fn settings(&self) -> DispatcherSettings {
        DispatcherSettings {
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

    pub fn extra_roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let Some(path) = &self.callback_ca_file else {
            return Ok(Vec::new());
        };
        let pem =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("{} holds no PEM certificates: {e}", path.display()))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Image of the `ferry forwarder` sidecar in every worker pod: the operator's own image.
    #[arg(long, env = "FERRY_FORWARDER_IMAGE")]
    pub forwarder_image: String,
    /// Longest a model may take on one task, in seconds; worker pods get this much (plus a
    /// margin) to finish their tasks when they stop.
    #[arg(long, env = forwarder_env::PREDICT_TIMEOUT_SECONDS, default_value = "600", value_parser = parse_seconds)]
    pub predict_timeout: Duration,
    /// Node label that carries an endpoint's `gpuType`; GPU workers are scheduled on nodes with it.
    #[arg(
        long,
        env = "FERRY_GPU_NODE_LABEL",
        default_value = "k8s.amazonaws.com/accelerator"
    )]
    pub gpu_node_label: String,
    /// Watch only this namespace; all namespaces when absent.
    #[arg(long, env = "FERRY_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Endpoints reconciled at once.
    #[arg(long, env = "FERRY_RECONCILE_CONCURRENCY", default_value = "16")]
    pub reconcile_concurrency: std::num::NonZeroU16,
    /// Seconds between reconciles of an unchanged endpoint (refreshes its backlog in status).
    #[arg(long, env = "FERRY_RESYNC_SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub resync: Duration,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = forwarder_env::ADMIN_LISTEN, default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Seconds the load must ask for fewer workers before an async endpoint is scaled in.
    #[arg(long = "scale-down-delay-seconds", env = "FERRY_SCALE_DOWN_DELAY_SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub scale_down_delay: Duration,
    /// Give every endpoint a default-deny NetworkPolicy over its workers, as JSON naming the
    /// peers it admits: `{"gateway": [..], "nats": [..], "natsPort": 4222, "dns": [..]}`
    /// (Kubernetes NetworkPolicyPeers). No policy when absent.
    #[arg(long, env = "FERRY_WORKER_NETWORK_POLICY", value_parser = parse_worker_network_policy)]
    pub worker_network_policy: Option<WorkerNetworkPolicy>,
    #[command(flatten)]
    pub forwarder_creds: ForwarderCredsArgs,
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub task_queue: TaskQueueArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The operator issues each endpoint's forwarders NATS credentials of their own (the files
/// `ferry nats-auth --out DIR` writes). Without them, worker pods get no NATS credentials.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ForwarderCredsArgs {
    /// The account's public key (`account.pub`).
    #[arg(
        long = "nats-account-file",
        env = "FERRY_NATS_ACCOUNT_FILE",
        requires = "nats_account_signing_seed_file"
    )]
    pub nats_account_file: Option<PathBuf>,
    /// The account signing key's seed (`account-signing.nk`).
    #[arg(
        long = "nats-account-signing-seed-file",
        env = "FERRY_NATS_ACCOUNT_SIGNING_SEED_FILE",
        requires = "nats_account_file"
    )]
    pub nats_account_signing_seed_file: Option<PathBuf>,
    /// How long issued forwarder credentials are valid; renewed when a third is left.
    #[arg(long = "forwarder-creds-valid-for-seconds", env = "FERRY_FORWARDER_CREDS_VALID_FOR_SECONDS",
          default_value = "86400", value_parser = parse_positive_seconds)]
    pub valid_for: Duration,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LeaseArgs {
    /// Name of the coordination.k8s.io Lease that elects the active operator replica.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; the client's default namespace when absent.
    #[arg(long, env = "FERRY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, env = "FERRY_LEASE_DURATION_SECONDS", default_value = "15", value_parser = parse_seconds)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease; the host name (the pod name) when absent.
    #[arg(long, env = "FERRY_LEASE_IDENTITY")]
    pub identity: Option<String>,
}

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
    /// Credentials and TLS for the server given by --nats-url.
    #[command(flatten)]
    pub nats_access: NatsAccessArgs,
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
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the gateway to measure.
    #[arg(
        long,
        env = "FERRY_BENCH_GATEWAY",
        default_value = "http://127.0.0.1:5005"
    )]
    pub gateway: url::Url,
    /// Name of an async endpoint with the callback hook.
    #[arg(
        long,
        env = "FERRY_BENCH_ENDPOINT",
        default_value = "demo-endpoint-callback"
    )]
    pub endpoint: String,
    /// API key sent to the gateway.
    #[arg(long, env = "LAUNCH_API_KEY", default_value = "bench")]
    pub api_key: String,
    /// Tasks to submit.
    #[arg(long, env = "FERRY_BENCH_TASKS", default_value = "10000")]
    pub tasks: u64,
    /// Submissions per second; 0 submits as fast as the gateway accepts them.
    #[arg(long, env = "FERRY_BENCH_RATE", default_value = "0")]
    pub rate: u64,
    /// Submissions in flight at once.
    #[arg(long, env = "FERRY_BENCH_SUBMIT_CONCURRENCY", default_value = "64")]
    pub submit_concurrency: usize,
    /// Seconds to wait for outstanding callbacks after the last submission.
    #[arg(long, env = "FERRY_BENCH_DRAIN_TIMEOUT_SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub drain_timeout: Duration,
    /// Percent of tasks whose callbacks go to a receiver that never answers (the rest are
    /// measured): shows whether one hanging receiver slows the others.
    #[arg(long, env = "FERRY_BENCH_HANGING_PERCENT", default_value = "0", value_parser = clap::value_parser!(u8).range(0..100))]
    pub hanging_percent: u8,
    /// Processes whose CPU time is summed and reported per task (for example the `ferry dev`,
    /// `nats-server` and model processes), as comma-separated pids.
    #[arg(long, env = "FERRY_BENCH_CPU_PIDS", value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
    /// How callback URLs name the benchmark's receiver, which listens on 127.0.0.1: a name
    /// such as `localhost` measures the lookups the SSRF guard makes.
    #[arg(long, env = "FERRY_BENCH_CALLBACK_HOST", default_value = "127.0.0.1")]
    pub callback_host: String,
    /// Measure waking instead: this many times, wait for the endpoint (with `minWorkers: 0`) to
    /// idle at zero workers, send one task and time its first worker and its result.
    #[arg(long, env = "FERRY_BENCH_WAKE_ROUNDS", default_value = "0")]
    pub wake_rounds: usize,
    /// Measure scaling out instead: with the endpoint at its minimum, send this many tasks at
    /// once and time each added worker.
    #[arg(long, env = "FERRY_BENCH_BURST", default_value = "0")]
    pub burst: usize,
    /// Measure a dispatcher's catch-up instead: queue this many callbacks on a nats-server of
    /// its own, then start `ferry dispatcher` and time the drain (`--hanging-percent` of them
    /// go to a receiver that never answers).
    #[arg(long, env = "FERRY_BENCH_CALLBACK_BACKLOG", default_value = "0")]
    pub callback_backlog: u64,
    /// Seconds each task of a wake or burst measurement asks the model to take (`sleep`).
    #[arg(long, env = "FERRY_BENCH_TASK_SECONDS", default_value = "1.0")]
    pub task_seconds: f64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchModelArgs {
    /// Port to listen on (`ferry dev` and pods give it as PORT).
    #[arg(long, env = "PORT")]
    pub port: u16,
}

fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        Duration::ZERO => Err("must be at least 1 second".into()),
        seconds => Ok(seconds),
    }
}

fn parse_worker_network_policy(text: &str) -> Result<WorkerNetworkPolicy, String> {
    serde_json::from_str(text).map_err(|error| format!("not a worker NetworkPolicy: {error}"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    use super::Cli;

    /// Every flag of every role as (role, flag, env var); built-in `--help`/`--version` aside.
    fn flags() -> Vec<(String, String, Option<String>)> {
        let mut cli = Cli::command();
        cli.build();
        let mut flags = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
                flags.push((command.get_name().to_owned(), long.to_owned(), env));
            }
        }
        flags
    }

    /// Keys that `pairs` maps to more than one value, with those values.
    fn ambiguous(pairs: impl Iterator<Item = (String, String)>) -> Vec<(String, BTreeSet<String>)> {
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (key, value) in pairs {
            seen.entry(key).or_default().insert(value);
        }
        seen.into_iter()
            .filter(|(_, values)| values.len() > 1)
            .collect()
    }

    #[test]
    fn every_flag_reads_an_environment_variable() {
        let missing: Vec<_> = flags()
            .into_iter()
            // A mode, not a setting: an environment variable left behind would keep a pod
            // from ever serving.
            .filter(|(_, flag, env)| env.is_none() && flag != "check-config")
            .map(|(role, flag, _)| format!("ferry {role} --{flag}"))
            .collect();
        assert!(missing.is_empty(), "flags without env: {missing:?}");
    }

    #[test]
    fn one_flag_has_one_env_var_in_every_role_and_an_env_var_one_flag() {
        let named: Vec<(String, String)> = flags()
            .into_iter()
            .map(|(_, flag, env)| (flag, env.unwrap_or_default()))
            .collect();
        let flag_to_envs = ambiguous(named.iter().cloned());
        assert!(
            flag_to_envs.is_empty(),
            "one flag, several env vars: {flag_to_envs:?}"
        );
        let env_to_flags = ambiguous(named.into_iter().map(|(flag, env)| (env, flag)));
        assert!(
            env_to_flags.is_empty(),
            "one env var, several flags: {env_to_flags:?}"
        );
    }
}
