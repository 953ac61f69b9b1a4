//! What a consumer does with a message it holds, for tasks and callback jobs alike: renew the
//! lease while working on it, and hand back what it received but will not start.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Error, NatsError};

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

    /// Done with it: the server removes it from the queue.
    fn ack(&self) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sync,
    {
        ack_with(self.message(), AckKind::Ack)
    }

    /// Returns it to the queue unstarted, to be handed out again at once.
    fn hand_back(&self) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sync,
    {
        ack_with(self.message(), AckKind::Nak(None))
    }
}

pub(super) async fn ack_with(message: &jetstream::Message, kind: AckKind) -> Result<(), Error> {
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

/// Longest a pull request waits on the server for messages before it is renewed; also the
/// longest a stopping consumer waits for the answer to its last request.
const PULL_EXPIRY: Duration = Duration::from_secs(2);
/// Pause before asking again after a pull request could not be made.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Pulls a consumer's messages one request at a time, each for no more messages than the holder
/// has room to start: nothing waits in a client-side buffer while its lease runs out, and a
/// stopping holder knows exactly what is still on its way to it.
pub struct Puller<H> {
    consumer: PullConsumer,
    /// The connection acknowledgements go out on: flushed before a stopping consumer returns.
    client: async_nats::Client,
    consumer_name: &'static str,
    request: Option<Batch>,
    wrap: Box<dyn Fn(jetstream::Message) -> H + Send + Sync>,
}

impl<H: Held + Sync> Puller<H> {
    /// A puller of the durable consumer `consumer_name` on `stream`.
    pub(super) async fn open(
        js: &jetstream::Context,
        stream: &str,
        consumer_name: &'static str,
        wrap: impl Fn(jetstream::Message) -> H + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        let consumer = js
            .get_consumer_from_stream(consumer_name, stream)
            .await
            .map_err(|error| Error::Receive {
                consumer: consumer_name.into(),
                source: error.into(),
            })?;
        Ok(Puller {
            consumer,
            client: js.client(),
            consumer_name,
            request: None,
            wrap: Box::new(wrap),
        })
    }

    /// The server's ack wait: how long a holder may keep a message without a sign of life.
    pub fn ack_wait(&self) -> Duration {
        self.consumer.cached_info().config.ack_wait
    }

    fn receive_error(&self, source: NatsError) -> Error {
        Error::Receive {
            consumer: self.consumer_name.into(),
            source,
        }
    }

    /// Asks the server for up to `room` messages unless a request is still open.
    async fn request(&mut self, room: usize) -> Result<(), Error> {
        if self.request.is_none() {
            let batch = self
                .consumer
                .batch()
                .max_messages(room.max(1))
                .expires(PULL_EXPIRY)
                .messages()
                .await
                .map_err(|error| self.receive_error(error.into()))?;
            self.request = Some(batch);
        }
        Ok(())
    }

    /// The next message of the open request; `None` when the request is answered in full or
    /// expired. Cancel-safe: a message not returned stays with the request.
    async fn next(&mut self) -> Option<Result<H, Error>> {
        let batch = self.request.as_mut()?;
        match batch.next().await {
            Some(Ok(message)) => Some(Ok((self.wrap)(message))),
            Some(Err(error)) => {
                self.request = None;
                Some(Err(self.receive_error(error)))
            }
            None => {
                self.request = None;
                None
            }
        }
    }

    /// Stops pulling: hands back everything the open request still brings (it ends within
    /// [`PULL_EXPIRY`]), so another consumer gets it now rather than after the ack wait.
    async fn stop(mut self) -> usize {
        let mut handed_back = 0;
        while let Some(delivery) = self.next().await {
            let Ok(held) = delivery else { continue };
            match held.hand_back().await {
                Ok(()) => handed_back += 1,
                Err(error) => tracing::warn!(%error, "handing back a delivery failed"),
            }
        }
        handed_back
    }
}

/// Runs `handle` on each message of `puller`, at most `concurrency` at once, until `cancel`;
/// then hands back what was received but not started and waits for the handlers under way.
pub async fn consume<H, F, Fut>(
    mut puller: Puller<H>,
    concurrency: usize,
    cancel: &CancellationToken,
    handle: F,
) where
    H: Held + Sync + Send + 'static,
    F: Fn(H) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        if running.len() >= concurrency {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = running.join_next() => continue,
            }
        }
        if let Err(error) = puller.request(concurrency - running.len()).await {
            tracing::warn!(%error, source = ?std::error::Error::source(&error), "pulling messages");
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = tokio::time::sleep(PULL_RETRY) => continue,
            }
        }
        let delivery = tokio::select! {
            _ = cancel.cancelled() => break,
            delivery = puller.next() => delivery,
        };
        match delivery {
            Some(Ok(held)) => {
                running.spawn(handle(held));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, source = ?std::error::Error::source(&error), "receiving messages");
            }
            None => {}
        }
    }
    let client = puller.client.clone();
    let handed_back = puller.stop().await;
    tracing::info!(
        in_flight = running.len(),
        handed_back,
        "stopped taking work; finishing what was started, the rest handed back"
    );
    while running.join_next().await.is_some() {}
    // Acknowledgements are sent without waiting for the server; ones still buffered when the
    // process exits would be lost, and their messages handed out again after the ack wait.
    match tokio::time::timeout(PULL_EXPIRY, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "sending the last acknowledgements failed"),
        Err(_) => tracing::warn!("sending the last acknowledgements timed out"),
    }
}
