//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! keyed by the decoded part of a `whsec_…` secret. During a key rotation the endpoint lists
//! both secrets and every callback carries both signatures, space-separated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Standard Webhooks header carrying the signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("signing secrets start with whsec_")]
    Prefix,
    #[error("the part after whsec_ is not base64")]
    Base64,
    #[error("the signing secret is shorter than 16 bytes")]
    TooShort,
}

/// A decoded signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| KeyError::Base64)?;
        if key.len() < 16 {
            return Err(KeyError::TooShort);
        }
        Ok(SigningKey(key))
    }

    fn signature(&self, content: &[u8]) -> String {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(content);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// The `webhook-signature` value for one message under every key.
pub fn sign(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(format!("{id}.{timestamp}.").as_bytes());
    content.extend_from_slice(body);
    keys.iter()
        .map(|key| format!("v1,{}", key.signature(&content)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference libraries.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key =
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret");
        let signature = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let old = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let new =
            SigningKey::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).expect("valid");
        let both = sign(&[old.clone(), new.clone()], "id", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            parts,
            vec![sign(&[old], "id", 1, b"{}"), sign(&[new], "id", 1, b"{}")]
        );
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(KeyError::Prefix)
        );
        assert_eq!(SigningKey::parse("whsec_***"), Err(KeyError::Base64));
        assert_eq!(SigningKey::parse("whsec_c2hvcnQ="), Err(KeyError::TooShort));
    }
}
