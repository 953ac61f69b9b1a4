//! The endpoint's worker Secret: credentials only the `ferry forwarder` sidecar of the
//! endpoint's pods receives (an environment variable and a mounted file taken from it), never
//! the model container. Owned by the ModelEndpoint, so it goes with it. It holds the serving
//! token and, when the operator issues them, the forwarder's NATS credentials: a user of the
//! endpoint alone that expires, renewed while a third of its validity is left.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, Secret, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use kube::ResourceExt;

use super::BuildError;
use crate::crd::validate::ValidatedEndpoint;
use crate::crd::{EndpointId, ModelEndpoint};
use crate::nats_auth::ForwarderIssuer;
use crate::worker::env as forwarder_env;

/// Key of the serving token: what the gateway presents to the endpoint's serving forwarders.
pub const SERVING_TOKEN_KEY: &str = "serving-token";
/// Key of the forwarder's NATS `.creds` file (a user JWT narrowed to the endpoint, and its seed).
pub const NATS_CREDS_KEY: &str = "nats.creds";
/// When the stored NATS credentials expire (RFC 3339).
pub const NATS_CREDS_EXPIRES_ANNOTATION: &str = "ferry.dev/nats-creds-expires";
/// The public key that signed them: credentials of a replaced signing key are issued again.
pub const NATS_CREDS_ISSUER_ANNOTATION: &str = "ferry.dev/nats-creds-issuer";
/// Where the forwarder container finds [`NATS_CREDS_KEY`].
pub const NATS_CREDS_DIR: &str = "/var/run/secrets/ferry.dev/nats";
const NATS_CREDS_VOLUME: &str = "nats-creds";
/// World-readable inside the volume: the forwarder runs as a fixed non-root user and the file
/// is root's; only the forwarder container mounts it.
const NATS_CREDS_MODE: i32 = 0o444;

/// The forwarder's NATS credentials as a worker Secret holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderCreds {
    /// The `.creds` file.
    pub creds: String,
    pub expires: Timestamp,
    /// Public key of the signing key that issued them.
    pub issuer: String,
}

impl ForwarderCreds {
    /// The credentials `secret` holds, when it holds them whole.
    pub fn stored_in(secret: &Secret) -> Option<Self> {
        let annotations = secret.metadata.annotations.as_ref()?;
        let expires = annotations
            .get(NATS_CREDS_EXPIRES_ANNOTATION)?
            .parse()
            .ok()?;
        let issuer = annotations.get(NATS_CREDS_ISSUER_ANNOTATION)?.clone();
        let bytes = secret.data.as_ref()?.get(NATS_CREDS_KEY)?;
        let creds = String::from_utf8(bytes.0.clone()).ok()?;
        Some(ForwarderCreds {
            creds,
            expires,
            issuer,
        })
    }

    /// When they are due for renewal: a third of `validity` before they expire.
    pub fn renew_at(&self, validity: Duration) -> Timestamp {
        self.expires
            .checked_sub(validity / 3)
            .unwrap_or(Timestamp::MIN)
    }
}

/// How the operator issues forwarders' NATS credentials.
pub struct ForwarderCredsIssuing {
    pub issuer: ForwarderIssuer,
    /// How long issued credentials are valid.
    pub validity: Duration,
}

impl ForwarderCredsIssuing {
    /// The credentials a worker Secret of `endpoint` should hold at `now`: `stored` while more
    /// than a third of the validity is left and this issuer signed them, else new ones.
    pub fn compute_forwarder_creds(
        &self,
        endpoint: &EndpointId,
        stored: Option<ForwarderCreds>,
        now: Timestamp,
    ) -> Result<ForwarderCreds, crate::nats_auth::Error> {
        let issuer = self.issuer.signing_key();
        if let Some(stored) = stored
            && stored.issuer == issuer
            && stored.renew_at(self.validity) > now
        {
            return Ok(stored);
        }
        let expires = now
            .checked_add(self.validity)
            .map_err(|_| crate::nats_auth::Error::ValidFor)?;
        Ok(ForwarderCreds {
            creds: self.issuer.forwarder_creds(endpoint, expires)?,
            expires,
            issuer,
        })
    }
}

/// Name of the endpoint's worker Secret.
pub fn worker_secret_name(endpoint: &ModelEndpoint) -> String {
    format!("{}-worker", endpoint.name_any())
}

/// The worker Secret of `endpoint` holding `serving_token` and, when issued, the forwarder's
/// NATS credentials.
pub fn build_worker_secret(
    validated: &ValidatedEndpoint,
    serving_token: &str,
    nats_creds: Option<&ForwarderCreds>,
) -> Result<Secret, BuildError> {
    let endpoint = validated.endpoint();
    let owner = super::owner_of(validated)?;
    let labels = super::build_labels(endpoint);
    let mut data = BTreeMap::from([(
        SERVING_TOKEN_KEY.to_owned(),
        ByteString(serving_token.as_bytes().to_vec()),
    )]);
    let mut metadata = super::child_meta(endpoint, worker_secret_name(endpoint), &labels, &owner);
    if let Some(nats) = nats_creds {
        data.insert(
            NATS_CREDS_KEY.to_owned(),
            ByteString(nats.creds.as_bytes().to_vec()),
        );
        metadata.annotations = Some(BTreeMap::from([
            (
                NATS_CREDS_EXPIRES_ANNOTATION.to_owned(),
                nats.expires.to_string(),
            ),
            (NATS_CREDS_ISSUER_ANNOTATION.to_owned(), nats.issuer.clone()),
        ]));
    }
    Ok(Secret {
        metadata,
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

/// The worker Secret's NATS credentials as a volume of one file: a Secret volume (no
/// `subPath`), so the kubelet replaces the file when the operator renews them.
pub fn nats_creds_volume(endpoint: &ModelEndpoint) -> Volume {
    Volume {
        name: NATS_CREDS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(worker_secret_name(endpoint)),
            items: Some(vec![KeyToPath {
                key: NATS_CREDS_KEY.into(),
                path: NATS_CREDS_KEY.into(),
                mode: None,
            }]),
            default_mode: Some(NATS_CREDS_MODE),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// The forwarder container's mount of [`nats_creds_volume`].
pub fn nats_creds_mount() -> VolumeMount {
    VolumeMount {
        name: NATS_CREDS_VOLUME.into(),
        mount_path: NATS_CREDS_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The forwarder's `--nats-creds-file`, pointing into [`nats_creds_mount`].
pub fn nats_creds_env() -> EnvVar {
    EnvVar {
        name: forwarder_env::NATS_CREDS_FILE.into(),
        value: Some(format!("{NATS_CREDS_DIR}/{NATS_CREDS_KEY}")),
        value_from: None,
    }
}

#[cfg(test)]
mod tests;
