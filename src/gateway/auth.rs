//! API keys: HTTP Basic with the key as user name (the Launch client's way) or a Bearer token.
//! Each key belongs to a team, and a team sees the resources of the namespace of its name.

use std::collections::HashMap;

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine;

use super::{AppState, error::AppError};

#[derive(Debug, thiserror::Error)]
#[error("API key entry `{0}` is not KEY=TEAM")]
pub struct ParseKeysError(String);

/// Who may call the API.
#[derive(Clone, Debug)]
pub enum ApiKeys {
    /// Any key is accepted and sees every namespace (`ferry dev` without configured keys).
    AnyKey,
    /// Only these keys, each scoped to its team's namespace.
    Teams(HashMap<String, String>),
}

impl ApiKeys {
    /// Parses `KEY=TEAM` entries; no entries means any key when `open_when_empty`.
    pub fn parse(entries: &[String], open_when_empty: bool) -> Result<Self, ParseKeysError> {
        if entries.is_empty() && open_when_empty {
            return Ok(ApiKeys::AnyKey);
        }
        let mut teams = HashMap::new();
        for entry in entries {
            match entry.split_once('=') {
                Some((key, team)) if !key.is_empty() && !team.is_empty() => {
                    teams.insert(key.to_owned(), team.to_owned());
                }
                _ => return Err(ParseKeysError(entry.clone())),
            }
        }
        Ok(ApiKeys::Teams(teams))
    }

    fn principal(&self, key: &str) -> Option<Principal> {
        match self {
            ApiKeys::AnyKey => Some(Principal { namespace: None }),
            ApiKeys::Teams(teams) => teams.get(key).map(|team| Principal {
                namespace: Some(team.clone()),
            }),
        }
    }
}

/// The caller, as its API key identifies it.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The namespace whose resources the caller sees; every namespace when `None`.
    pub namespace: Option<String>,
}

impl Principal {
    pub fn scope(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let key = header
            .and_then(api_key_from_header)
            .ok_or(AppError::Unauthorized)?;
        state.keys.principal(&key).ok_or(AppError::Unauthorized)
    }
}

fn api_key_from_header(header: &str) -> Option<String> {
    let (scheme, credentials) = header.split_once(' ')?;
    let key = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')
            .map_or(text.clone(), |(user, _)| user.to_owned())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        credentials.trim().to_owned()
    } else {
        return None;
    };
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_takes_the_user_name_as_key() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("secret-key:")
        );
        assert_eq!(api_key_from_header(&header).as_deref(), Some("secret-key"));
    }

    #[test]
    fn bearer_tokens_are_keys_too() {
        assert_eq!(api_key_from_header("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(api_key_from_header("Digest abc"), None);
        assert_eq!(api_key_from_header("Bearer "), None);
    }

    #[test]
    fn keys_map_to_their_team_namespace() {
        let keys = ApiKeys::parse(&["k1=ml".into()], true).expect("parses");
        assert_eq!(
            keys.principal("k1").and_then(|p| p.namespace),
            Some("ml".into())
        );
        assert!(keys.principal("k2").is_none());
        assert!(ApiKeys::parse(&["novalue".into()], true).is_err());
        assert!(matches!(ApiKeys::parse(&[], true), Ok(ApiKeys::AnyKey)));
        assert!(
            matches!(ApiKeys::parse(&[], false), Ok(ApiKeys::Teams(teams)) if teams.is_empty())
        );
    }
}
