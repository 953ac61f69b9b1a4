//! The endpoint's worker Secret: credentials only the `ferry forwarder` sidecar of the
//! endpoint's pods receives (as environment variables taken from it), never the model
//! container. Owned by the ModelEndpoint, so it goes with it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector};
use kube::{Resource, ResourceExt};

use super::BuildError;
use crate::crd::ModelEndpoint;
use crate::forwarder::env as forwarder_env;

/// Key of the serving token: what the gateway presents to the endpoint's serving forwarders.
pub const SERVING_TOKEN_KEY: &str = "serving-token";

/// Name of the endpoint's worker Secret.
pub fn worker_secret_name(endpoint: &ModelEndpoint) -> String {
    format!("{}-worker", endpoint.name_any())
}

/// The worker Secret of `endpoint` holding `serving_token`.
pub fn build_worker_secret(
    endpoint: &ModelEndpoint,
    serving_token: &str,
) -> Result<Secret, BuildError> {
    let owner = endpoint
        .controller_owner_ref(&())
        .ok_or(BuildError::NoUid)?;
    let labels = super::build_labels(endpoint)?;
    let data = BTreeMap::from([(
        SERVING_TOKEN_KEY.to_owned(),
        ByteString(serving_token.as_bytes().to_vec()),
    )]);
    Ok(Secret {
        metadata: super::child_meta(endpoint, worker_secret_name(endpoint), &labels, &owner),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    })
}

/// The forwarder's variable `name` taken from `key` of the worker Secret.
pub fn worker_secret_env(endpoint: &ModelEndpoint, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: worker_secret_name(endpoint),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The serving token, for forwarders that serve the gateway (sync and streaming endpoints).
pub fn serving_token_env(endpoint: &ModelEndpoint) -> EnvVar {
    worker_secret_env(endpoint, forwarder_env::SERVING_TOKEN, SERVING_TOKEN_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::endpoint;

    #[test]
    fn the_worker_secret_is_owned_by_its_endpoint_and_holds_the_token() {
        let endpoint = endpoint();
        let owner = endpoint.controller_owner_ref(&()).expect("uid");
        let secret = build_worker_secret(&endpoint, "tok").expect("builds");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-worker"));
        assert_eq!(secret.metadata.owner_references, Some(vec![owner]));
        let data = secret.data.expect("data");
        assert_eq!(data[SERVING_TOKEN_KEY].0, b"tok");
        let env = serving_token_env(&endpoint);
        let from = env
            .value_from
            .and_then(|from| from.secret_key_ref)
            .expect("secret ref");
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("demo-worker", SERVING_TOKEN_KEY)
        );
        assert_eq!(env.value, None, "never inline");
    }
}
