//! API keys: HTTP Basic with the key as user name (the Launch client's way) or a Bearer token.
//! Each key belongs to a team, and a team sees the resources of the namespace of its name.
//! Keys are at least [`MIN_KEY_LENGTH`] characters, kept only as SHA-256 digests, and a
//! presented key is compared with every one of them in constant time, so neither the timing of
//! an answer nor an error message tells anything about a configured key.

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, error::AppError};

/// The fewest characters a configured API key may have.
pub const MIN_KEY_LENGTH: usize = 24;

/// A configured entry that cannot be used. Messages name the entry by position (1-based) and
/// team, never by its key.
#[derive(Debug, thiserror::Error)]
pub enum ParseKeysError {
    #[error("API key entry #{position} is not KEY=TEAM")]
    Malformed { position: usize },
    #[error(
        "API key #{position} (team `{team}`) is shorter than {MIN_KEY_LENGTH} characters; use a \
         random key of at least {MIN_KEY_LENGTH}"
    )]
    TooShort { position: usize, team: String },
}

/// Who may call the API.
#[derive(Clone, Debug)]
pub enum ApiKeys {
    /// Any key is accepted and sees every namespace (`ferry dev` without configured keys).
    AnyKey,
    /// Only these keys, each scoped to its team's namespace.
    Teams(Vec<TeamKey>),
}

/// A configured key, as its digest, and the team it belongs to.
#[derive(Clone)]
pub struct TeamKey {
    digest: [u8; 32],
    team: String,
}

impl std::fmt::Debug for TeamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeamKey({}, ..)", self.team)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Parses `KEY=TEAM` entries; no entries means any key when `open_when_empty`.
    pub fn parse(entries: &[String], open_when_empty: bool) -> Result<Self, ParseKeysError> {
        if entries.is_empty() && open_when_empty {
            return Ok(ApiKeys::AnyKey);
        }
        let mut teams = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let position = index + 1;
            let (key, team) = entry
                .split_once('=')
                .filter(|(key, team)| !key.is_empty() && !team.is_empty())
                .ok_or(ParseKeysError::Malformed { position })?;
            if key.chars().count() < MIN_KEY_LENGTH {
                return Err(ParseKeysError::TooShort {
                    position,
                    team: team.to_owned(),
                });
            }
            teams.push(TeamKey {
                digest: digest(key),
                team: team.to_owned(),
            });
        }
        Ok(ApiKeys::Teams(teams))
    }

    /// The caller a presented key identifies. Every configured key is compared, each in constant
    /// time, whichever matches.
    fn principal(&self, key: &str) -> Option<Principal> {
        match self {
            ApiKeys::AnyKey => Some(Principal { namespace: None }),
            ApiKeys::Teams(teams) => {
                let presented = digest(key);
                let mut found = None;
                for team_key in teams {
                    if bool::from(team_key.digest.ct_eq(&presented)) {
                        found = Some(&team_key.team);
                    }
                }
                found.map(|team| Principal {
                    namespace: Some(team.clone()),
                })
            }
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

    const ML_KEY: &str = "ml-team-key-0123456789abcdef";
    const OPS_KEY: &str = "ops-team-key-0123456789abcdef";

    #[test]
    fn keys_map_to_their_team_namespace() {
        let entries = [format!("{ML_KEY}=ml"), format!("{OPS_KEY}=ops")];
        let keys = ApiKeys::parse(&entries, true).expect("parses");
        assert_eq!(
            keys.principal(ML_KEY).and_then(|p| p.namespace),
            Some("ml".into())
        );
        assert_eq!(
            keys.principal(OPS_KEY).and_then(|p| p.namespace),
            Some("ops".into())
        );
        assert!(keys.principal("ml-team-key-0123456789abcdeX").is_none());
        assert!(keys.principal(&ML_KEY[..MIN_KEY_LENGTH - 1]).is_none());
        assert!(ApiKeys::parse(&["novalue".into()], true).is_err());
        assert!(matches!(ApiKeys::parse(&[], true), Ok(ApiKeys::AnyKey)));
        assert!(
            matches!(ApiKeys::parse(&[], false), Ok(ApiKeys::Teams(teams)) if teams.is_empty())
        );
    }

    #[test]
    fn short_keys_are_refused_by_position_and_team_without_showing_them() {
        let short = "short-key-of-23-chars-x";
        assert_eq!(short.len(), MIN_KEY_LENGTH - 1);
        let entries = [format!("{ML_KEY}=ml"), format!("{short}=ops")];
        let error = ApiKeys::parse(&entries, false)
            .expect_err("a short key")
            .to_string();
        assert!(error.contains("#2") && error.contains("`ops`"), "{error}");
        assert!(error.contains("shorter than 24 characters"), "{error}");
        assert!(!error.contains(short), "{error}");
        let exact = format!("{}=ops", &ML_KEY[..MIN_KEY_LENGTH]);
        assert!(ApiKeys::parse(&[exact], false).is_ok());
    }

    #[test]
    fn malformed_entries_are_refused_without_showing_them() {
        let secretish = "a-long-secret-without-a-team-1234";
        for entry in [
            secretish.to_owned(),
            format!("={secretish}"),
            format!("{secretish}="),
        ] {
            let error = ApiKeys::parse(&[format!("{ML_KEY}=ml"), entry], false)
                .expect_err("malformed")
                .to_string();
            assert_eq!(error, "API key entry #2 is not KEY=TEAM");
        }
    }
}
