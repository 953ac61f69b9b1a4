//! `ferry dev`'s NATS server: a throwaway one that admits only ferry. Its authorization is
//! generated at start and the credentials stay in the store directory (readable by this user
//! only), so a model process started beside it cannot connect; each endpoint's local
//! forwarders get credentials of their own, as the operator issues them in a cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::crd::EndpointId;
use crate::nats_server::{self, NatsServer};
use crate::process_group::ProcessGroup;
use crate::queue::{Connection, Credentials, ForwarderQueue, Queue, QueueSettings, Role};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Server(#[from] nats_server::Error),
    #[error("generating the server's authorization or a forwarder's credentials")]
    Auth(#[from] crate::nats_auth::Error),
    #[error("the server reported an address that is no NATS URL")]
    Url(#[from] crate::queue::ConfigError),
    #[error("connecting an endpoint's forwarders with their own credentials")]
    ForwarderQueue(#[source] crate::queue::Error),
}

pub struct LocalNats {
    /// How ferry's own roles connect to it.
    pub connection: Connection,
    /// How the forwarders of local workers connect to it.
    pub forwarders: ForwarderAccess,
    _server: NatsServer,
}

/// Starts the server as a member of `group`, so that it dies with `ferry dev`; with
/// `monitor_port`, it serves its monitoring endpoints (`/varz`, `/jsz`) there on 127.0.0.1.
pub async fn start(
    program: &Path,
    group: &ProcessGroup,
    monitor_port: Option<u16>,
) -> Result<LocalNats, Error> {
    let auth = crate::nats_auth::AuthSet::generate();
    let mut config = auth.server_config()?;
    if let Some(port) = monitor_port {
        config.push_str(&nats_server::monitoring_config(Some(port)));
    }
    let server = nats_server::start_in(program, &config, None, Some(group)).await?;
    let creds = server.store_dir().join("ferry.creds");
    crate::nats_auth::write_private(&creds, &auth.role_creds(Role::All)?)?;
    let open = Connection::open(server.url())?;
    Ok(LocalNats {
        connection: open.clone().with_credentials(Credentials::CredsFile(creds)),
        forwarders: ForwarderAccess::Issued {
            connection: Box::new(open),
            issuer: Arc::new(auth.forwarder_issuer()),
            dir: server.store_dir().to_owned(),
        },
        _server: server,
    })
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
    ) -> Result<ForwarderQueue, Error> {
        let ForwarderAccess::Issued {
            connection,
            issuer,
            dir,
        } = self
        else {
            return Ok(shared.forwarder(endpoint));
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
            .map(|queue| queue.forwarder(endpoint))
            .map_err(Error::ForwarderQueue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dev_server_admits_ferry_and_refuses_a_process_without_its_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let group = ProcessGroup::start().expect("sh starts");
        let nats = start(Path::new("nats-server"), &group, None)
            .await
            .expect("nats-server on PATH (scripts/setup installs it)");
        let settings = QueueSettings::default();
        Queue::connect(&nats.connection, settings.clone(), Duration::from_secs(5))
            .await
            .expect("ferry connects");
        let anonymous = Connection::open(nats.connection.url()).expect("URL");
        let refused = Queue::connect(&anonymous, settings, Duration::ZERO).await;
        assert!(
            matches!(refused, Err(crate::queue::Error::Connect { .. })),
            "a model process holds no credentials"
        );
    }
}
