//! `ferry forwarder`'s flags and the settings they make.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use super::parse_seconds;
use super::shared::{HttpArgs, NatsArgs};
use crate::callback::Guard;
use crate::crd::EndpointId;
use crate::forwarder::{InputFetcher, ModelClient, Serving, Settings};
use crate::worker::env as forwarder_env;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint id {0:?} is not an endpoint id (end_…)")]
    EndpointId(String),
    #[error(
        "--serve-listen needs --serving-token / {}: the token the gateway presents",
        forwarder_env::SERVING_TOKEN
    )]
    NoServingToken,
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
    /// Base URL gateways reach this serving worker at, announced to gateways that serve fixed
    /// manifests (in a cluster they use the endpoint's Service). Defaults to
    /// `http://<--serve-listen>` when that names an address other than 0.0.0.0 or [::].
    #[arg(long, env = "FERRY_ADVERTISE_URL")]
    pub advertise_url: Option<url::Url>,
    /// Seconds a stopping serving worker keeps answering, announced as leaving and not ready,
    /// so gateways and the Service stop sending to it before it closes its connections. Keep
    /// it above the 2 s a gateway keeps an idle connection to a worker.
    #[arg(long = "serve-shutdown-delay-seconds", env = "FERRY_SERVE_SHUTDOWN_DELAY_SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub serve_shutdown_delay: Duration,
    /// Internal address ranges (CIDRs) task inputs given by URL may come from; none by default.
    #[arg(long, env = forwarder_env::INPUT_ALLOW_CIDRS, value_delimiter = ',')]
    pub input_allow_cidrs: Vec<ipnet::IpNet>,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl ForwarderArgs {
    fn advertise_url(&self, listen: SocketAddr) -> Option<String> {
        match &self.advertise_url {
            Some(url) => Some(url.as_str().trim_end_matches('/').to_owned()),
            None if listen.ip().is_unspecified() => None,
            None => Some(format!("http://{listen}")),
        }
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        let endpoint_id = EndpointId::parse(&self.endpoint_id)
            .ok_or_else(|| Error::EndpointId(self.endpoint_id.clone()))?;
        let serving = match (self.serve_listen, &self.serving_token) {
            (None, _) => None,
            (Some(listen), Some(token)) if !token.is_empty() => Some(Serving {
                listen,
                token: token.clone(),
                advertise_url: self.advertise_url(listen),
                shutdown_delay: self.serve_shutdown_delay,
            }),
            (Some(_), _) => return Err(Error::NoServingToken.into()),
        };
        let model = ModelClient::new(
            &self.model_url,
            &self.predict_route,
            &self.healthcheck_route,
            self.predict_timeout,
        )?
        .with_streaming_route(self.streaming_predict_route.as_deref())?
        .with_inputs(InputFetcher::new(
            Guard::new(self.input_allow_cidrs.clone(), Default::default()),
            false,
        )?);
        Ok(Settings {
            // As the forwarder connects: its endpoint's own credentials may use no other inbox.
            connection: self.nats.connection()?.for_forwarder_of(&endpoint_id),
            queue: self.nats.queue_settings(None),
            endpoint_id,
            model,
            concurrency: self.concurrency.get() as usize,
            admin_listen: self.admin_listen,
            serving,
            http: self.http.limits(),
        })
    }
}
