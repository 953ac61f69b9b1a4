//! NATS JWTs (the `ed25519-nkey` kind nats-server verifies): base64url header and claims, signed
//! by an NKey. Only the claims ferry issues are modelled.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("signing a NATS JWT")]
pub struct SignError(#[source] pub nkeys::error::Error);

/// `-1` in NATS limits: no limit.
const UNLIMITED: i64 = -1;

/// Encodes `nats` claims about `subject` issued and signed by `issuer`.
pub fn encode(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: Value,
) -> Result<String, SignError> {
    encode_expiring(issuer, subject, name, nats, None)
}

/// [`encode`], valid until `expires` (the server refuses it after).
pub fn encode_expiring(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: Value,
    expires: Option<jiff::Timestamp>,
) -> Result<String, SignError> {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let mut claims = json!({
        "iat": jiff::Timestamp::now().as_second(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    if let Some(expires) = expires {
        claims["exp"] = json!(expires.as_second());
    }
    // The claims' id: a digest of the claims without it.
    let digest = Sha256::digest(claims.to_string().as_bytes());
    claims["jti"] = Value::String(digest.iter().map(|b| format!("{b:02x}")).collect());
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).map_err(SignError)?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

pub fn operator_claims(system_account: &str) -> Value {
    json!({"type": "operator", "version": 2, "system_account": system_account})
}

/// An account; `jetstream` gives it unlimited JetStream storage on the server.
pub fn account_claims(signing_keys: &[String], jetstream: bool) -> Value {
    let storage = if jetstream { UNLIMITED } else { 0 };
    json!({
        "type": "account",
        "version": 2,
        "signing_keys": signing_keys,
        "limits": {
            "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, "imports": UNLIMITED,
            "exports": UNLIMITED, "wildcards": true, "conn": UNLIMITED, "leaf": UNLIMITED,
            "mem_storage": storage, "disk_storage": storage, "streams": UNLIMITED,
            "consumer": UNLIMITED,
        },
        // Users without permissions of their own may do nothing.
        "default_permissions": {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}},
    })
}

/// A user of `account` allowed exactly `publish` and `subscribe`.
pub fn user_claims(account: &str, publish: &[String], subscribe: &[String]) -> Value {
    json!({
        "type": "user",
        "version": 2,
        "issuer_account": account,
        "pub": {"allow": publish},
        "sub": {"allow": subscribe},
        "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
    })
}

/// The `.creds` file of a user: its JWT and seed, in the decorated form NATS clients read.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}
