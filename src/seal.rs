//! Sealing: the credentials and signing secrets ferry keeps in JetStream are encrypted and
//! authenticated (XChaCha20-Poly1305) under a key ring that only the operator, the gateway and
//! the dispatcher hold, so a process that can read the queue (a model, a forwarder) sees no
//! secret and cannot forge or redirect one. The ring also derives each endpoint's serving token,
//! the credential the gateway presents to the endpoint's serving forwarders.
//!
//! A ring is read from a file of base64 keys (32 bytes each), one a line: the first seals and
//! derives tokens, the others only open what was sealed before a rotation. Every sealed blob
//! names the key that sealed it.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crd::EndpointId;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Version prefix of a sealed blob: `v1.<key id>.<base64url of nonce and ciphertext>`.
const BLOB_VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading the key file {path}")]
    ReadKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} holds no key")]
    NoKey { path: String },
    #[error(
        "line {line} of the key file {path} is not a base64 key of {KEY_LEN} bytes (generate one with `head -c 32 /dev/urandom | base64`)"
    )]
    BadKey { path: String, line: usize },
    #[error("sealed with key {key_id}, which this key ring does not hold")]
    UnknownKey { key_id: String },
    #[error("not a sealed value of this ferry version")]
    Malformed,
    #[error(
        "the sealed value does not open under key {key_id}: another key of that id, or altered or moved"
    )]
    Tampered { key_id: String },
    #[error("encoding the value to seal")]
    Encode(#[source] serde_json::Error),
    #[error("decoding the opened value")]
    Decode(#[source] serde_json::Error),
}

struct RingKey {
    id: String,
    cipher: XChaCha20Poly1305,
    /// Derives serving tokens; kept apart from the sealing key by derivation.
    token_key: [u8; 32],
}

/// The keys a process seals and opens with; the first is current.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|key| key.id.as_str()).collect();
        write!(f, "KeyRing({ids:?})")
    }
}

fn derive(key: &[u8; KEY_LEN], label: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(label.as_bytes());
    hash.update(key);
    hash.finalize().into()
}

impl RingKey {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        let id = derive(key, "ferry key id\0")[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        RingKey {
            id,
            cipher: XChaCha20Poly1305::new(&derive(key, "ferry seal\0").into()),
            token_key: derive(key, "ferry serving token\0"),
        }
    }
}

impl KeyRing {
    /// A ring of these keys, the first current.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Option<Self> {
        (!keys.is_empty()).then(|| KeyRing {
            keys: keys.iter().map(RingKey::new).collect(),
        })
    }

    /// A ring of one fresh random key: for one run of `ferry dev`.
    pub fn generate() -> Self {
        KeyRing {
            keys: vec![RingKey::new(&random_key())],
        }
    }

    /// Reads a key file: base64 keys one a line, the current one first; blank lines and
    /// `#` comments are skipped.
    pub fn read(path: &Path) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SealError::ReadKeyFile {
            path: shown.clone(),
            source,
        })?;
        let ring = Self::parse(&text, &shown)?;
        tracing::info!(path = %shown, current_key = ring.current_key_id(), keys = ring.keys.len(), "key ring read");
        Ok(ring)
    }

    fn parse(text: &str, path: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = STANDARD
                .decode(line)
                .ok()
                .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes).ok())
                .ok_or_else(|| SealError::BadKey {
                    path: path.into(),
                    line: index + 1,
                })?;
            keys.push(key);
        }
        Self::new(&keys).ok_or_else(|| SealError::NoKey { path: path.into() })
    }

    /// Id of the current key, as sealed blobs name it.
    pub fn current_key_id(&self) -> &str {
        &self.current().id
    }

    fn current(&self) -> &RingKey {
        // A ring is never empty: `new` and `parse` refuse an empty one.
        &self.keys[0]
    }

    fn seal_bytes(&self, plain: &[u8], context: &Context) -> String {
        let key = self.current();
        let nonce = XNonce::generate();
        let payload = Payload {
            msg: plain,
            aad: context.0.as_bytes(),
        };
        // Encryption fails only for messages beyond ChaCha20's 256 GiB limit.
        let sealed = key.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!(
            "{BLOB_VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(&blob)
        )
    }

    fn open_bytes(&self, sealed: &str, context: &Context) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(BLOB_VERSION), Some(key_id), Some(data)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|key| key.id == key_id)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: key_id.into(),
            })?;
        let blob = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Malformed)?;
        let payload = Payload {
            msg: ciphertext,
            aad: context.0.as_bytes(),
        };
        key.cipher
            .decrypt(&nonce, payload)
            .map_err(|_| SealError::Tampered {
                key_id: key_id.into(),
            })
    }

    /// The tokens that admit the gateway to `endpoint`'s serving forwarders, current key's
    /// first: a forwarder started before a rotation holds an older key's token.
    pub fn serving_tokens(&self, endpoint: &EndpointId) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| serving_token(&key.token_key, endpoint))
            .collect()
    }

    /// The token the operator gives `endpoint`'s forwarders now.
    pub fn serving_token(&self, endpoint: &EndpointId) -> String {
        serving_token(&self.current().token_key, endpoint)
    }
}

fn serving_token(token_key: &[u8; 32], endpoint: &EndpointId) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token_key) else {
        return String::new();
    };
    mac.update(endpoint.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A fresh random key.
pub fn random_key() -> [u8; KEY_LEN] {
    use rand::RngCore;
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// What a sealed value belongs to, bound into its seal: a value moved to another task or
/// endpoint, or a target given another URL, no longer opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context(String);

impl Context {
    /// A task's callback target (its URL and credentials); `task` is the task's id (generic so
    /// sealing, below the wire types, does not import them).
    pub fn callback_target(endpoint: &EndpointId, task: &impl std::fmt::Display) -> Self {
        Context(format!("ferry callback target\0{endpoint}\0{task}"))
    }

    /// An endpoint's callback secrets (signing secrets, default credentials).
    pub fn callback_secrets(endpoint: &EndpointId) -> Self {
        Context(format!("ferry callback secrets\0{endpoint}"))
    }
}

/// A `T` sealed under a [`KeyRing`]: on the wire it is an opaque string, so whoever reads it
/// without the ring learns nothing, and the type has no way to hold `T` in clear.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed<T> {
    blob: String,
    #[serde(skip)]
    sealed: PhantomData<fn() -> T>,
}

impl<T> Clone for Sealed<T> {
    fn clone(&self) -> Self {
        Sealed {
            blob: self.blob.clone(),
            sealed: PhantomData,
        }
    }
}

impl<T> PartialEq for Sealed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.blob == other.blob
    }
}

impl<T> fmt::Debug for Sealed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_id = self.blob.split('.').nth(1).unwrap_or("?");
        write!(f, "Sealed(key {key_id})")
    }
}

impl<T: Serialize + DeserializeOwned> Sealed<T> {
    pub fn seal(ring: &KeyRing, value: &T, context: &Context) -> Result<Self, SealError> {
        let plain = serde_json::to_vec(value).map_err(SealError::Encode)?;
        Ok(Sealed {
            blob: ring.seal_bytes(&plain, context),
            sealed: PhantomData,
        })
    }

    pub fn open(&self, ring: &KeyRing, context: &Context) -> Result<T, SealError> {
        let plain = ring.open_bytes(&self.blob, context)?;
        serde_json::from_slice(&plain).map_err(SealError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str) -> EndpointId {
        EndpointId::for_resource("ml", name)
    }

    fn ring(keys: &[u8]) -> KeyRing {
        let keys: Vec<[u8; KEY_LEN]> = keys.iter().map(|byte| [*byte; KEY_LEN]).collect();
        KeyRing::new(&keys).expect("keys")
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_context_and_shows_nothing() {
        let ring = ring(&[1]);
        let here = Context::callback_secrets(&endpoint("a"));
        let sealed = Sealed::seal(&ring, &"hunter2-password".to_string(), &here).expect("seals");
        let wire = serde_json::to_string(&sealed).expect("serializes");
        assert!(!wire.contains("hunter2"), "{wire}");
        assert!(wire.starts_with(&format!("\"v1.{}.", ring.current_key_id())));
        let back: Sealed<String> = serde_json::from_str(&wire).expect("parses");
        assert_eq!(back.open(&ring, &here).expect("opens"), "hunter2-password");
        let elsewhere = Context::callback_secrets(&endpoint("b"));
        assert!(matches!(
            back.open(&ring, &elsewhere),
            Err(SealError::Tampered { .. })
        ));
        assert_eq!(
            format!("{back:?}"),
            format!("Sealed(key {})", ring.current_key_id())
        );
    }

    #[test]
    fn a_rotated_ring_opens_old_values_and_seals_with_the_new_key() {
        let context = Context::callback_secrets(&endpoint("a"));
        let old = ring(&[1]);
        let sealed = Sealed::seal(&old, &7u32, &context).expect("seals");
        let rotated = ring(&[2, 1]);
        assert_eq!(sealed.open(&rotated, &context).expect("opens"), 7);
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        let resealed = Sealed::seal(&rotated, &7u32, &context).expect("seals");
        assert!(matches!(
            resealed.open(&old, &context),
            Err(SealError::UnknownKey { key_id }) if key_id == rotated.current_key_id()
        ));
    }

    #[test]
    fn altered_or_foreign_blobs_are_refused() {
        let ring = ring(&[1]);
        let context = Context::callback_secrets(&endpoint("a"));
        let sealed = Sealed::seal(&ring, &7u32, &context).expect("seals");
        let mut blob = sealed.blob.clone().into_bytes();
        let last = blob.len() - 2;
        blob[last] = if blob[last] == b'A' { b'B' } else { b'A' };
        let altered: Sealed<u32> =
            serde_json::from_value(serde_json::Value::String(String::from_utf8(blob).unwrap()))
                .expect("a string");
        assert!(matches!(
            altered.open(&ring, &context),
            Err(SealError::Tampered { .. })
        ));
        let plain: Sealed<u32> = serde_json::from_str("\"7\"").expect("a string");
        assert!(matches!(
            plain.open(&ring, &context),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn key_files_list_the_current_key_first() {
        let one = STANDARD.encode([1u8; KEY_LEN]);
        let two = STANDARD.encode([2u8; KEY_LEN]);
        let text = format!("# rotated\n{two}\n\n{one}\n");
        let parsed = KeyRing::parse(&text, "keys").expect("parses");
        assert_eq!(parsed.current_key_id(), ring(&[2]).current_key_id());
        assert_eq!(parsed.keys.len(), 2);
        assert!(matches!(
            KeyRing::parse("# none\n", "keys"),
            Err(SealError::NoKey { .. })
        ));
        let short = STANDARD.encode([1u8; 16]);
        let error = KeyRing::parse(&format!("{one}\n{short}\n"), "keys").expect_err("short");
        assert!(matches!(error, SealError::BadKey { line: 2, .. }));
        assert!(
            !error.to_string().contains(&short),
            "no key material in errors"
        );
    }

    #[test]
    fn serving_tokens_differ_per_endpoint_and_key() {
        let rotated = ring(&[2, 1]);
        let a = rotated.serving_tokens(&endpoint("a"));
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], rotated.serving_token(&endpoint("a")));
        assert_eq!(a[1], ring(&[1]).serving_token(&endpoint("a")));
        assert_ne!(a[0], a[1]);
        assert_ne!(a[0], rotated.serving_token(&endpoint("b")));
    }
}
