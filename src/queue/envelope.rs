//! How ferry's values are written into NATS: JSON inside the versioned envelope
//! ([`Versioned`]), so that a reader knows which shape it holds.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use super::Error;
use crate::task::Versioned;

pub(super) fn encode<T: Serialize + Clone>(value: &T) -> Bytes {
    // Serializing our own plain structs to JSON cannot fail: no maps with non-string keys.
    Bytes::from(serde_json::to_vec(&Versioned::V1(value.clone())).unwrap_or_default())
}

pub(super) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice::<Versioned<T>>(bytes)
        .map(Versioned::into_inner)
        .map_err(|source| Error::Decode { what, source })
}
