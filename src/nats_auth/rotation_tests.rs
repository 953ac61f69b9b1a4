//! Credentials rotated on disk: a client reconnecting after its server was replaced reads its
//! `.creds` file again and is the new user, as the operator's renewed forwarder credentials
//! and re-issued role credentials require.

use std::time::Duration;

use super::{AuthSet, write_private};
use crate::queue::testing::{connects, is_refused, start_on_port};
use crate::queue::{Connection, Credentials, Role};

type Connected = tokio::sync::watch::Receiver<bool>;

async fn connect_watching(connection: &Connection) -> (async_nats::Client, Connected) {
    let (sender, receiver) = tokio::sync::watch::channel(false);
    let options = connection
        .options()
        .await
        .expect("options")
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                match event {
                    async_nats::Event::Connected => sender.send_replace(true),
                    async_nats::Event::Disconnected => sender.send_replace(false),
                    _ => false,
                };
            }
        });
    let client = options.connect(connection.url()).await.expect("connects");
    (client, receiver)
}

async fn until(connected: &mut Connected, state: bool) {
    tokio::time::timeout(
        Duration::from_secs(30),
        connected.wait_for(|now| *now == state),
    )
    .await
    .unwrap_or_else(|_| panic!("the client never became connected={state}"))
    .expect("client alive");
}

#[tokio::test]
async fn a_replaced_creds_file_is_read_again_when_the_client_reconnects() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (before, after) = (AuthSet::generate(), AuthSet::generate());
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("operator.creds");
    let old_copy = dir.path().join("old.creds");
    for path in [&creds, &old_copy] {
        write_private(path, &before.role_creds(Role::Operator).expect("creds")).expect("write");
    }
    let config = |auth: &AuthSet| auth.server_config().expect("config");
    // The server picks its port; its successor takes the same one (the connections the first
    // one closes leave it in TIME_WAIT, so no other `bind` to port 0 is handed it meanwhile).
    let first = start_on_port(&config(&before), None).await;
    let port: u16 = url::Url::parse(first.connection.url())
        .ok()
        .and_then(|url| url.port())
        .expect("the server's URL names its port");
    let connection = first
        .connection
        .clone()
        .with_credentials(Credentials::CredsFile(creds.clone()))
        .for_role(Role::Operator);
    let (client, mut connected) = connect_watching(&connection).await;
    until(&mut connected, true).await;

    // The credentials are rotated while the server is replaced by one that knows only the
    // new ones (another operator and account altogether).
    write_private(&creds, &after.role_creds(Role::Operator).expect("creds")).expect("rotate");
    first.stop().await;
    until(&mut connected, false).await;
    let second = start_on_port(&config(&after), Some(port)).await;
    until(&mut connected, true).await;
    let info = client
        .request("$JS.API.INFO", "".into())
        .await
        .expect("the reconnected client is the new user, allowed the JetStream API");
    assert!(!info.payload.is_empty());

    let stale = second
        .connection
        .clone()
        .with_credentials(Credentials::CredsFile(old_copy))
        .for_role(Role::Operator);
    is_refused(connects(&stale).await, "with the replaced credentials");
}
