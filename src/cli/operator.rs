//! `ferry operator`'s flags and the settings they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::shared::{HttpArgs, NatsArgs, ReplicasArgs, SealArgs, TaskQueueArgs};
use super::{parse_positive_seconds, parse_seconds};
use crate::nats_auth::ForwarderIssuer;
use crate::operator::build::{RuntimeImages, Settings as WorkerSettings, WorkerNetworkPolicy};
use crate::operator::{ForwarderCredsIssuing, LeaseChoice, Settings};
use crate::queue::Role;
use crate::worker::env as forwarder_env;

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub replicas: ReplicasArgs,
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
    /// Repositories of the images artifact (cloudpickle and zip) bundles run in, by
    /// framework: `pytorch=REPOSITORY,tensorflow=REPOSITORY`, tagged with the bundle's
    /// `pytorchImageTag` or `tensorflowVersion`. Custom-framework bundles name their own image.
    #[arg(long, env = "FERRY_RUNTIME_IMAGES", default_value = "pytorch=pytorch/pytorch,tensorflow=tensorflow/tensorflow", value_parser = RuntimeImages::parse)]
    pub runtime_images: RuntimeImages,
    /// Internal address ranges (CIDRs) the worker pods' forwarders may fetch task inputs given
    /// by URL from; none by default.
    #[arg(long, env = "FERRY_WORKER_INPUT_ALLOW_CIDRS", value_delimiter = ',')]
    pub worker_input_allow_cidrs: Vec<ipnet::IpNet>,
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

fn parse_worker_network_policy(text: &str) -> Result<WorkerNetworkPolicy, String> {
    serde_json::from_str(text).map_err(|error| format!("not a worker NetworkPolicy: {error}"))
}

impl OperatorArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings {
            connection: self.nats.connection()?.for_role(Role::Operator),
            queue: self
                .replicas
                .apply(self.nats.queue_settings(Some(&self.task_queue))),
            ring: self.seal.key_ring()?,
            workers: WorkerSettings {
                forwarder_image: self.forwarder_image.clone(),
                nats_url: self.nats.url.clone(),
                result_retention: self.nats.result_retention,
                predict_timeout: self.predict_timeout,
                gpu_node_label: self.gpu_node_label.clone(),
                worker_network_policy: self.worker_network_policy.clone(),
                forwarder_nats_creds: self.forwarder_creds.nats_account_file.is_some(),
                runtime_images: self.runtime_images.clone(),
                input_allow_cidrs: self.worker_input_allow_cidrs.clone(),
            },
            forwarder_creds: self.forwarder_creds.issuing()?,
            namespace: self.namespace.clone(),
            reconcile_concurrency: self.reconcile_concurrency.get(),
            resync: self.resync,
            scale_down_delay: self.scale_down_delay,
            lease: LeaseChoice {
                name: self.lease.lease_name.clone(),
                namespace: self.lease.lease_namespace.clone(),
                identity: self.lease.identity.clone(),
                duration: self.lease.lease_duration,
            },
            admin_listen: self.admin_listen,
            http: self.http.limits(),
        })
    }
}

impl ForwarderCredsArgs {
    /// How forwarders' NATS credentials are issued; `None` without the account's files.
    fn issuing(&self) -> Result<Option<ForwarderCredsIssuing>, crate::nats_auth::Error> {
        let (Some(account), Some(seed)) = (
            &self.nats_account_file,
            &self.nats_account_signing_seed_file,
        ) else {
            return Ok(None);
        };
        Ok(Some(ForwarderCredsIssuing {
            issuer: ForwarderIssuer::from_files(account, seed)?,
            validity: self.valid_for,
        }))
    }
}
