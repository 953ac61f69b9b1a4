//! `ferry serving-token`: the token an endpoint's serving workers expect from gateways, for
//! workers run outside a cluster (in a cluster the operator puts it in the worker Secret).

use super::shared::SealArgs;
use crate::crd::EndpointId;
use crate::worker::env as forwarder_env;

#[derive(clap::Args, Debug, Clone)]
pub struct ServingTokenArgs {
    #[command(flatten)]
    pub seal: SealArgs,
    /// Id of the endpoint (end_…), as `GET /v1/model-endpoints` lists it.
    #[arg(long, env = forwarder_env::ENDPOINT_ID)]
    pub endpoint_id: String,
}

impl ServingTokenArgs {
    pub fn run(&self) -> anyhow::Result<()> {
        let endpoint = EndpointId::parse(&self.endpoint_id).ok_or_else(|| {
            anyhow::anyhow!(
                "endpoint id {:?} is not an endpoint id (end_…)",
                self.endpoint_id
            )
        })?;
        println!("{}", self.seal.key_ring()?.serving_token(&endpoint));
        Ok(())
    }
}
