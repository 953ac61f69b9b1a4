//! Whether this process's connection to NATS is up, and waiting for it to come up or go down.
//!
//! The client library keeps what it is handed while the connection is down and sends it once
//! it reconnects, however long that takes. So a submission hands the server nothing unless the
//! connection is up at that moment: a refusal is certain only for a task never handed over.
//! The client's own state says at once whether it is up; the connection events (mirrored here)
//! say when that changes.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a wait for the connection looks at the client's state again, should a change
/// have come before the wait began to listen for it.
const RECHECK: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub(super) struct Link {
    client: async_nats::Client,
    /// True after a "connected" event, false after a "disconnected" one.
    events: watch::Receiver<bool>,
}

/// Connection options that report the connection's ups and downs to the returned receiver.
pub(super) fn report_events(
    options: ConnectOptions,
    events: watch::Sender<bool>,
) -> ConnectOptions {
    options.event_callback(move |event| {
        match event {
            Event::Connected => events.send_replace(true),
            Event::Disconnected => events.send_replace(false),
            _ => *events.borrow(),
        };
        std::future::ready(())
    })
}

impl Link {
    pub(super) fn new(client: async_nats::Client, events: watch::Receiver<bool>) -> Self {
        Link { client, events }
    }

    pub(super) fn is_up(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// True once the connection is up, at once when it is; false when it is still down at
    /// `deadline`.
    pub(super) async fn up_by(&self, deadline: Instant) -> bool {
        let mut events = self.events.clone();
        loop {
            if self.is_up() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let wake = deadline.min(Instant::now() + RECHECK);
            let _ = tokio::time::timeout_at(wake, events.changed()).await;
        }
    }

    /// Resolves when the connection goes down after this call.
    pub(super) async fn went_down(&self) {
        let mut events = self.events.clone();
        events.borrow_and_update();
        while events.changed().await.is_ok() {
            if !*events.borrow_and_update() {
                return;
            }
        }
        // The client is gone: it will not come back up either.
        std::future::pending::<()>().await
    }
}
