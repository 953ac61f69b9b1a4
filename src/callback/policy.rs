//! Turns an endpoint's callback settings (`defaultCallbackAuth`, `callbacks`) and the Secrets
//! they name into the [`CallbackPolicy`] the dispatcher delivers by. Pure: the caller (ferry dev
//! from manifests, the operator from the API) supplies the Secret lookup.

use std::collections::BTreeMap;

use crate::crd::{CallbackAuthKind, EndpointId, ModelEndpointSpec};
use crate::seal::{Context, KeyRing, SealError, Sealed};
use crate::task::{CallbackAuth, CallbackPolicy, CallbackSecrets};

use super::sign::{KeyError, SigningKey};
use crate::crd::names::CALLBACK_CREDENTIALS_LABEL;

/// Key of the signing secret in its Secret when the reference names none.
pub const DEFAULT_SIGNING_KEY: &str = "signingSecret";
const BASIC_USERNAME: &str = "username";
const BASIC_PASSWORD: &str = "password";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("Secret {name} not found")]
    SecretNotFound { name: String },
    #[error(
        "Secret {name} is not labelled {CALLBACK_CREDENTIALS_LABEL}=\"true\"; ferry uses only Secrets that opt in as callback credentials"
    )]
    NotOptedIn { name: String },
    #[error("Secret {name} has no key {key}")]
    MissingKey { name: String, key: String },
    #[error("Secret {name} key {key} is not UTF-8 text")]
    NotText { name: String, key: String },
    #[error("Secret {name} key {key} holds an invalid signing secret")]
    InvalidSigningSecret {
        name: String,
        key: String,
        #[source]
        source: KeyError,
    },
    /// Sealing fails only if the secrets do not encode, which ours always do.
    #[error("sealing the endpoint's callback secrets: {0}")]
    Seal(String),
}

impl PolicyError {
    /// A bounded reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyError::SecretNotFound { .. } => "SecretNotFound",
            PolicyError::NotOptedIn { .. } => "SecretNotOptedIn",
            PolicyError::MissingKey { .. } | PolicyError::NotText { .. } => "SecretKeyMissing",
            PolicyError::InvalidSigningSecret { .. } => "InvalidSigningSecret",
            PolicyError::Seal(_) => "SealFailed",
        }
    }
}

/// Names of the Secrets the endpoint's callback settings read.
pub fn secret_names(spec: &ModelEndpointSpec) -> Vec<String> {
    let signing = spec
        .callbacks
        .as_ref()
        .and_then(|c| c.signing_secret.as_ref())
        .map(|s| s.name.clone());
    let auth = spec
        .default_callback_auth
        .as_ref()
        .map(|a| a.secret_name.clone());
    signing.into_iter().chain(auth).collect()
}

/// Refuses Secret `name` unless its `labels` opt it in as callback credentials.
pub fn check_opted_in(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), PolicyError> {
    let opted_in = labels
        .and_then(|labels| labels.get(CALLBACK_CREDENTIALS_LABEL))
        .is_some_and(|value| value == "true");
    if opted_in {
        Ok(())
    } else {
        Err(PolicyError::NotOptedIn { name: name.into() })
    }
}

/// Resolves the policy of `endpoint`, its secrets sealed under `ring`; `secret(name)` returns a
/// Secret's data in the endpoint's namespace.
pub fn resolve_policy(
    endpoint: &EndpointId,
    spec: &ModelEndpointSpec,
    secret: impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
    ring: &KeyRing,
) -> Result<CallbackPolicy, PolicyError> {
    let text = |name: &str, key: &str| -> Result<String, PolicyError> {
        let data = secret(name).ok_or_else(|| PolicyError::SecretNotFound { name: name.into() })?;
        let value = data.get(key).ok_or_else(|| PolicyError::MissingKey {
            name: name.into(),
            key: key.into(),
        })?;
        String::from_utf8(value.clone()).map_err(|_| PolicyError::NotText {
            name: name.into(),
            key: key.into(),
        })
    };
    let settings = spec.callbacks.clone().unwrap_or_default();
    let signing_secrets = match &settings.signing_secret {
        None => Vec::new(),
        Some(selector) => {
            let key = selector.key.as_deref().unwrap_or(DEFAULT_SIGNING_KEY);
            let secrets: Vec<String> = text(&selector.name, key)?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            for value in &secrets {
                SigningKey::parse(value).map_err(|source| PolicyError::InvalidSigningSecret {
                    name: selector.name.clone(),
                    key: key.into(),
                    source,
                })?;
            }
            secrets
        }
    };
    let default_auth = match &spec.default_callback_auth {
        None => None,
        Some(reference) => Some(match reference.kind {
            CallbackAuthKind::Basic => CallbackAuth::Basic {
                username: text(&reference.secret_name, BASIC_USERNAME)?,
                password: text(&reference.secret_name, BASIC_PASSWORD)?,
            },
            CallbackAuthKind::Mtls => CallbackAuth::Mtls {
                cert: text(&reference.secret_name, TLS_CERT)?,
                key: text(&reference.secret_name, TLS_KEY)?,
            },
        }),
    };
    let secrets = CallbackSecrets {
        signing_secrets,
        default_auth,
    };
    let secrets = if secrets == CallbackSecrets::default() {
        None
    } else {
        let context = Context::callback_secrets(endpoint);
        Some(
            Sealed::seal(ring, &secrets, &context)
                .map_err(|error: SealError| PolicyError::Seal(error.to_string()))?,
        )
    };
    Ok(CallbackPolicy {
        secrets,
        retry_schedule_seconds: settings.retry_schedule_seconds,
        attempt_timeout_seconds: settings.attempt_timeout_seconds,
        connect_timeout_seconds: settings.connect_timeout_seconds,
        allowed_hosts: settings.allowed_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CallbackAuthRef, CallbackPolicySpec, ModelEndpoint, SecretKeySelector};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn endpoint() -> EndpointId {
        EndpointId::for_resource("ml", "e")
    }

    fn resolve(
        spec: &ModelEndpointSpec,
        secret: impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
    ) -> Result<CallbackPolicy, PolicyError> {
        resolve_policy(&endpoint(), spec, secret, &KeyRing::generate())
    }

    fn spec() -> ModelEndpointSpec {
        let yaml = "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {name: e}\nspec: {bundle: b, labels: {team: t, product: p}}\n";
        serde_saphyr::from_str::<ModelEndpoint>(yaml)
            .expect("endpoint")
            .spec
    }

    fn secrets(
        name: &'static str,
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>> {
        move |wanted: &str| {
            (wanted == name).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect()
            })
        }
    }

    #[test]
    fn only_secrets_labelled_as_callback_credentials_opt_in() {
        let labels = |value: &str| {
            BTreeMap::from([(CALLBACK_CREDENTIALS_LABEL.to_owned(), value.to_owned())])
        };
        assert_eq!(check_opted_in("s", Some(&labels("true"))), Ok(()));
        for refused in [
            Some(labels("false")),
            Some(labels("yes")),
            Some(BTreeMap::new()),
            None,
        ] {
            let error = check_opted_in("s", refused.as_ref()).expect_err("refused");
            assert_eq!(error.reason(), "SecretNotOptedIn");
        }
    }

    #[test]
    fn no_settings_mean_an_empty_policy() {
        assert_eq!(resolve(&spec(), |_| None), Ok(CallbackPolicy::default()));
    }

    #[test]
    fn signing_secrets_and_basic_auth_come_from_secrets() {
        let mut spec = spec();
        spec.callbacks = Some(CallbackPolicySpec {
            signing_secret: Some(SecretKeySelector {
                name: "hooks".into(),
                key: None,
            }),
            retry_schedule_seconds: Some(vec![1, 2]),
            ..Default::default()
        });
        spec.default_callback_auth = Some(CallbackAuthRef {
            kind: CallbackAuthKind::Basic,
            secret_name: "hooks".into(),
        });
        const HOOKS: &[(&str, &str)] = &[
            (
                "signingSecret",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            ("username", "u"),
            ("password", "p"),
        ];
        let ring = KeyRing::generate();
        let policy =
            resolve_policy(&endpoint(), &spec, secrets("hooks", HOOKS), &ring).expect("resolves");
        let wire = serde_json::to_string(&policy).expect("serializes");
        assert!(!wire.contains("MfKQ9r8GKYqr"), "sealed: {wire}");
        let secrets = policy.open_secrets(&ring, &endpoint()).expect("opens");
        let other = EndpointId::for_resource("ml", "other");
        assert!(
            policy.open_secrets(&ring, &other).is_err(),
            "bound to its endpoint"
        );
        assert_eq!(
            secrets.signing_secrets,
            vec![
                SECRET.to_owned(),
                "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()
            ]
        );
        assert_eq!(
            secrets.default_auth,
            Some(CallbackAuth::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(policy.retry_schedule_seconds, Some(vec![1, 2]));
    }

    #[test]
    fn missing_secrets_and_keys_are_named() {
        let mut spec = spec();
        spec.default_callback_auth = Some(CallbackAuthRef {
            kind: CallbackAuthKind::Mtls,
            secret_name: "tls".into(),
        });
        let error = resolve(&spec, |_| None).expect_err("no secret");
        assert_eq!(error, PolicyError::SecretNotFound { name: "tls".into() });
        assert_eq!(error.reason(), "SecretNotFound");
        let error = resolve(&spec, secrets("tls", &[("tls.crt", "C")])).expect_err("no key");
        assert_eq!(
            error,
            PolicyError::MissingKey {
                name: "tls".into(),
                key: "tls.key".into()
            }
        );
    }

    #[test]
    fn invalid_signing_secrets_are_refused() {
        let mut spec = spec();
        spec.callbacks = Some(CallbackPolicySpec {
            signing_secret: Some(SecretKeySelector {
                name: "hooks".into(),
                key: Some("k".into()),
            }),
            ..Default::default()
        });
        let error =
            resolve(&spec, secrets("hooks", &[("k", "plain-text")])).expect_err("no prefix");
        assert_eq!(error.reason(), "InvalidSigningSecret");
    }
}
