//! Throwaway servers for the tests of every module: an open nats-server and a queue on it, or
//! one started with a configuration of the test's own.

use std::path::Path;
use std::time::Duration;

use super::{Connection, Error, Queue, QueueSettings};
use crate::nats_server::{self, NatsServer};

pub struct TestServer {
    /// An open connection to it, without credentials.
    pub connection: Connection,
    server: NatsServer,
}

impl TestServer {
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// A server on `port` (a random one when `None`) with `config`.
pub async fn start_on_port(config: &str, port: Option<u16>) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = nats_server::start(Path::new("nats-server"), config, port)
        .await
        .expect("nats-server on PATH (scripts/setup installs it)");
    TestServer {
        connection: Connection::open(server.url()).expect("a plain URL"),
        server,
    }
}

pub async fn start_with_config(config: &str) -> TestServer {
    start_on_port(config, None).await
}

/// An open server and a queue connected to it.
pub async fn start_with_queue() -> (TestServer, Queue) {
    let server = start_with_config("").await;
    let queue = Queue::connect(
        &server.connection,
        QueueSettings::default(),
        Duration::from_secs(5),
    )
    .await
    .expect("connects");
    (server, queue)
}

/// Connects once, without waiting for the server.
pub async fn connects(connection: &Connection) -> Result<Queue, Error> {
    Queue::connect(connection, QueueSettings::default(), Duration::ZERO).await
}

/// Panics unless `outcome` is a refused connection (`why` says what was tried).
pub fn is_refused(outcome: Result<Queue, Error>, why: &str) {
    match outcome {
        Ok(_) => panic!("connected {why}"),
        Err(Error::Connect { .. }) => {}
        Err(other) => panic!("{why}: failed after connecting: {other}"),
    }
}
