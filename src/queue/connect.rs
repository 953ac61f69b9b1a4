//! How a role reaches NATS: the server URL, credentials read from files, and TLS. Secrets never
//! travel in the URL — it is logged, printed and copied into worker pods — so a URL carrying
//! user information is refused, and credentials are read from their files at every connection
//! and reconnection, so a rotated file (a renewed Secret) is used without a restart.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Auth, AuthError, ConnectOptions};
use nkeys::KeyPair;

use super::{Error, NatsError, Role, permissions};
use crate::crd::EndpointId;

/// Who the role is to the server; at most one kind per connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    /// An open server (a developer's own, or one reached only through a trusted network).
    #[default]
    None,
    /// A `.creds` file: a user JWT and the NKey seed that signs the server's challenge.
    CredsFile(PathBuf),
    /// A file holding an NKey user seed (`SU...`).
    NkeySeedFile(PathBuf),
    /// A user name and a file holding its password.
    UserPassword {
        user: String,
        password_file: PathBuf,
    },
    /// A file holding a token.
    TokenFile(PathBuf),
}

/// TLS towards the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificates that sign the server's certificate (beside the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a server that verifies clients.
    pub client_cert: Option<ClientCert>,
    /// Refuse to talk to the server without TLS.
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the NATS URL `{0}` carries user information: pass credentials with --nats-creds-file, --nats-nkey-seed-file, --nats-user with --nats-password-file, or --nats-token-file"
    )]
    UserinfoInUrl(String),
    #[error("the NATS URL `{0}` is not a URL")]
    BadUrl(String),
}

/// Everything needed to open a connection; the URL holds no secret and may be shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    url: String,
    credentials: Credentials,
    tls: Tls,
    /// The role this process connects as; its reply inboxes are below the role's prefix,
    /// the only one its permissions let it subscribe to.
    role: Role,
    /// Replies below this prefix instead of the role's: a forwarder of one endpoint.
    inbox_prefix: Option<String>,
}

impl Connection {
    /// Checks every server of `url` (comma-separated) for user information.
    pub fn new(url: &str, credentials: Credentials, tls: Tls) -> Result<Self, ConfigError> {
        for server in url.split(',').map(str::trim) {
            check_server_url(server)?;
        }
        Ok(Connection {
            url: url.to_owned(),
            credentials,
            tls,
            role: Role::All,
            inbox_prefix: None,
        })
    }

    /// An open connection to `url`, for a developer's own server and for tests.
    pub fn open(url: &str) -> Result<Self, ConfigError> {
        Connection::new(url, Credentials::None, Tls::default())
    }

    /// The server list, safe to log.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Each server of the list: the client tries them all, at start and on every reconnection,
    /// so one stopped member of a cluster does not keep a role from its queue.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }

    /// The same server with other credentials.
    pub fn with_credentials(self, credentials: Credentials) -> Self {
        Connection {
            credentials,
            ..self
        }
    }

    /// The same connection for `role` (every role in one process when never called).
    pub fn for_role(self, role: Role) -> Self {
        Connection { role, ..self }
    }

    /// The same connection for the forwarder of `endpoint`, whose replies arrive below that
    /// endpoint's own inbox (all its per-endpoint credentials may subscribe to).
    pub fn for_forwarder_of(self, endpoint: &EndpointId) -> Self {
        Connection {
            role: Role::Forwarder,
            inbox_prefix: Some(permissions::forwarder_inbox_prefix(endpoint)),
            ..self
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Client options whose credentials are read from their files at every connection and
    /// reconnection, so a rotated file is used without a restart. They are read once now too,
    /// so a missing or malformed file fails at once.
    pub async fn options(&self) -> Result<ConnectOptions, NatsError> {
        let mut options = match &self.credentials {
            Credentials::None => ConnectOptions::new(),
            credentials => {
                read_auth(credentials, b"")?;
                let credentials = credentials.clone();
                ConnectOptions::with_auth_callback(move |nonce| {
                    let auth = read_auth(&credentials, &nonce).map_err(AuthError::new);
                    std::future::ready(auth)
                })
            }
        };
        options = options
            .name("ferry")
            .custom_inbox_prefix(
                self.inbox_prefix
                    .clone()
                    .unwrap_or_else(|| self.role.inbox_prefix()),
            )
            .connection_timeout(Duration::from_secs(2));
        if let Some(ca_file) = &self.tls.ca_file {
            options = options.add_root_certificates(ca_file.clone());
        }
        if let Some(client) = &self.tls.client_cert {
            options =
                options.add_client_certificate(client.cert_file.clone(), client.key_file.clone());
        }
        Ok(options.require_tls(self.tls.required))
    }
}

/// What the client presents for `credentials`, read from their files now; an NKey (alone or
/// in a `.creds` file) signs the server's `nonce`. The files are a few hundred bytes: read
/// without leaving the connecting task.
fn read_auth(credentials: &Credentials, nonce: &[u8]) -> Result<Auth, NatsError> {
    let mut auth = Auth::new();
    let sign = |seed: &str| {
        let key = KeyPair::from_seed(seed).map_err(|error| format!("reading a seed: {error}"))?;
        let signature = key
            .sign(nonce)
            .map_err(|error| format!("signing: {error}"))?;
        Ok::<_, NatsError>((key.public_key(), signature))
    };
    match credentials {
        Credentials::None => {}
        Credentials::CredsFile(path) => {
            let text = read_secret(path)?;
            let (jwt, seed) = parse_creds(&text)
                .ok_or_else(|| format!("{} is not a .creds file", path.display()))?;
            auth.jwt = Some(jwt.to_owned());
            auth.signature = Some(sign(seed)?.1);
        }
        Credentials::NkeySeedFile(path) => {
            let (public_key, signature) = sign(&read_secret(path)?)?;
            auth.nkey = Some(public_key);
            auth.signature = Some(signature);
        }
        Credentials::UserPassword {
            user,
            password_file,
        } => {
            auth.username = Some(user.clone());
            auth.password = Some(read_secret(password_file)?);
        }
        Credentials::TokenFile(path) => auth.token = Some(read_secret(path)?),
    }
    Ok(auth)
}

/// The user JWT and the NKey seed of a `.creds` file: the first line inside its
/// `-----BEGIN NATS USER JWT-----` and `-----BEGIN USER NKEY SEED-----` blocks.
fn parse_creds(text: &str) -> Option<(&str, &str)> {
    let block = |begin: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|line| line.starts_with("---") && line.contains(begin))?;
        lines
            .next()
            .filter(|line| !line.is_empty() && !line.starts_with("---"))
    };
    Some((
        block("BEGIN NATS USER JWT")?,
        block("BEGIN USER NKEY SEED")?,
    ))
}

fn check_server_url(server: &str) -> Result<(), ConfigError> {
    // The client accepts `host:port` without a scheme; read it as nats:// to find userinfo.
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("nats://{server}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|_| ConfigError::BadUrl(redact(server)))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ConfigError::UserinfoInUrl(redact(server)));
    }
    Ok(())
}

/// The URL with anything before an `@` replaced, for messages about a refused URL.
fn redact(server: &str) -> String {
    match (server.find("://"), server.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &server[..scheme], &server[at + 1..])
        }
        (None, Some(at)) => format!("***@{}", &server[at + 1..]),
        _ => server.to_owned(),
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, NatsError> {
    let text = std::fs::read_to_string(path).map_err(|error| read_error(path, error))?;
    Ok(text.trim().to_owned())
}

fn read_error(path: &std::path::Path, error: std::io::Error) -> NatsError {
    format!("reading {}: {error}", path.display()).into()
}

/// Connects (retrying while the server starts, for up to `wait`). Says at the first failed
/// attempt that it is waiting (an operator watching a starting pod sees why it is not ready
/// yet), and once connected after waiting that the wait is over. A refused authorization is
/// not retried: waiting would not change it. The connection's later ups and downs are reported
/// to `events`.
pub(super) async fn connect_with_retry(
    connection: &Connection,
    wait: Duration,
    events: tokio::sync::watch::Sender<bool>,
) -> Result<async_nats::Client, Error> {
    let url = connection.url();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    let failed = |source: NatsError| Error::Connect {
        url: url.to_owned(),
        source,
    };
    loop {
        let options = connection.options().await.map_err(failed)?;
        let options = super::link::report_events(options, events.clone());
        // No notification exists for "the server came up": retry briefly until the deadline.
        match options.connect(connection.servers()).await {
            Ok(client) => {
                if waited {
                    tracing::info!(url, "connected to NATS");
                }
                return Ok(client);
            }
            Err(error)
                if tokio::time::Instant::now() < deadline
                    && error.kind() != async_nats::ConnectErrorKind::AuthorizationViolation =>
            {
                if waited {
                    tracing::debug!(%error, url, "NATS not reachable yet");
                } else {
                    tracing::warn!(%error, url, wait_seconds = wait.as_secs(), "waiting for NATS at {url}");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(failed(error.into())),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn a_url_with_credentials_is_refused_without_repeating_them() {
        for url in [
            "nats://alice:s3cret@nats:4222",
            "nats://t0ken@nats:4222",
            "alice:s3cret@nats:4222",
            "nats://a:4222,tls://bob:s3cret@b:4222",
        ] {
            let error = Connection::open(url).expect_err(url).to_string();
            assert!(error.contains("carries user information"), "{error}");
            assert!(
                !error.contains("s3cret") && !error.contains("t0ken"),
                "{error}"
            );
        }
    }

    #[test]
    fn plain_server_lists_are_accepted() {
        for url in [
            "nats://127.0.0.1:4222",
            "127.0.0.1:4222",
            "tls://a:1, nats://b:2",
        ] {
            assert_eq!(Connection::open(url).expect(url).url(), url);
        }
    }

    #[test]
    fn a_server_list_names_each_server() {
        let connection = Connection::open("nats://a:1, nats://b:2,nats://c:3").unwrap();
        assert_eq!(
            connection.servers(),
            ["nats://a:1", "nats://b:2", "nats://c:3"]
        );
    }
}
