//! `ferry nats-auth`'s flags.

use std::path::PathBuf;
use std::time::Duration;

use super::parse_positive_seconds;
use crate::crd::EndpointId;
use crate::nats_auth::{Error, Settings};

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

impl NatsAuthArgs {
    pub fn settings(&self) -> Result<Settings, Error> {
        let out = self.out.clone();
        let Some(endpoint) = &self.forwarder_of else {
            return Ok(Settings::Generate { out });
        };
        Ok(Settings::IssueForwarder {
            out,
            endpoint: EndpointId::parse(endpoint)
                .ok_or_else(|| Error::EndpointId(endpoint.clone()))?,
            valid_for: self.valid_for,
        })
    }
}
