//! What a consumer does with a message it holds, for tasks and callback jobs alike: renew the
//! lease while working on it, and hand back what it received but will not start.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::{Stream, StreamExt};

use super::Error;

/// How long a stopping consumer waits for more deliveries already on their way to it.
const IN_TRANSIT_WAIT: Duration = Duration::from_millis(100);

/// A message held by a consumer: the server hands it to another after the ack wait unless the
/// holder renews its lease, acknowledges it, or hands it back.
pub trait Held {
    #[doc(hidden)]
    fn message(&self) -> &jetstream::Message;

    /// Tells the server the holder is still busy with it, restarting its ack timer.
    fn keep_alive(&self) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sync,
    {
        ack_with(self.message(), AckKind::Progress)
    }

    /// Returns it to the queue unstarted, to be handed out again at once.
    fn hand_back(&self) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sync,
    {
        ack_with(self.message(), AckKind::Nak(None))
    }
}

async fn ack_with(message: &jetstream::Message, kind: AckKind) -> Result<(), Error> {
    message
        .ack_with(kind)
        .await
        .map_err(|source| Error::Ack { source })
}

/// Renews the lease on `held` every `every` until dropped (it never returns on its own).
pub async fn keep_alive_while_held<H: Held + Sync>(
    held: &H,
    every: Duration,
) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(error) = held.keep_alive().await {
            tracing::warn!(%error, "renewing a lease failed");
        }
    }
}

/// Hands back every delivery a stopping consumer already received (or that is on its way)
/// but will not start, so another consumer gets it now rather than after the ack wait.
/// Returns how many were handed back.
pub async fn hand_back_unstarted<H: Held + Sync>(
    mut deliveries: Pin<&mut impl Stream<Item = Result<H, Error>>>,
) -> usize {
    let mut handed_back = 0;
    while let Ok(Some(delivery)) = tokio::time::timeout(IN_TRANSIT_WAIT, deliveries.next()).await {
        let Ok(held) = delivery else { continue };
        match held.hand_back().await {
            Ok(()) => handed_back += 1,
            Err(error) => tracing::warn!(%error, "handing back a delivery failed"),
        }
    }
    handed_back
}
