//! Flag groups several roles share — NATS access, the seal key ring, HTTP listener bounds, API
//! keys, task queue bounds, the callback guard — and what each becomes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::{parse_positive_seconds, parse_seconds};
use crate::callback::Guard;
use crate::queue::{Connection, QueueLimits, QueueSettings};
use crate::worker::env as forwarder_env;

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
    pub fn connection(&self) -> Result<Connection, crate::queue::ConfigError> {
        self.access.connection(&self.url)
    }

    /// The queue's settings, with `task_limits` for a role that makes task queues.
    pub fn queue_settings(&self, task_limits: Option<&TaskQueueArgs>) -> QueueSettings {
        QueueSettings {
            result_retention: self.result_retention,
            task_limits: task_limits.map(TaskQueueArgs::limits).unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// How many copies JetStream keeps of what ferry stores, for the roles that create streams and
/// buckets (gateway, operator, dispatcher, `ferry dev`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicasArgs {
    /// Replicas of every stream and bucket ferry creates: 1 on a single server, 3 on a
    /// JetStream cluster of three or more servers (a queue then survives the loss of a node).
    /// Existing ones are brought to this count.
    #[arg(long = "nats-replicas", env = "FERRY_NATS_REPLICAS", default_value = "1",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
}

impl ReplicasArgs {
    /// `settings` with these replicas.
    pub fn apply(&self, settings: QueueSettings) -> QueueSettings {
        QueueSettings {
            replicas: usize::from(self.nats_replicas),
            ..settings
        }
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
    /// Seconds a task submission waits for NATS to take the task (through a reconnection)
    /// before it is answered 503.
    #[arg(long, env = "FERRY_SUBMIT_PATIENCE_SECONDS", default_value = "10", value_parser = parse_positive_seconds)]
    pub submit_patience: Duration,
}

impl TaskQueueArgs {
    pub fn limits(&self) -> QueueLimits {
        let clamp = |value: std::num::NonZeroU64| i64::try_from(value.get()).unwrap_or(i64::MAX);
        QueueLimits {
            max_tasks: clamp(self.task_queue_max_tasks),
            max_bytes: self.task_queue_max_bytes.map(clamp),
            submit_patience: self.submit_patience,
        }
    }
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
