//! Listing one endpoint's dead letters a page at a time, oldest first: an ordered consumer on
//! the dead-letter bucket filtered to the endpoint's keys, started where the previous page
//! ended (or at `since`), reading at most [`SCAN_LIMIT`] entries.

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push::OrderedConfig};
use futures::StreamExt;

use super::super::index::SCAN_LIMIT;
use super::super::results::KV_OPERATION;
use super::super::{Error, NatsError, Queue, names};
use crate::crd::EndpointId;
use crate::task::DeadLetter;

/// Which of an endpoint's dead letters a page lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LetterQuery {
    /// Only letters dead-lettered at or after this Unix time in milliseconds.
    pub since_ms: Option<u64>,
    pub limit: u64,
    /// Where the previous page ended.
    pub from: Option<u64>,
}

/// One page of dead letters, and where the next one starts (`None`: no more).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LetterPage {
    pub letters: Vec<DeadLetter>,
    pub next: Option<u64>,
}

impl Queue {
    /// One page of the endpoint's dead letters, oldest first. The server filters by key, so
    /// another endpoint's letters are never read.
    pub(in crate::queue) async fn dead_letter_page(
        &self,
        endpoint: &EndpointId,
        query: &LetterQuery,
    ) -> Result<LetterPage, Error> {
        let bucket = self.dead_letters_bucket()?;
        let deliver_policy = match (query.from, query.since_ms) {
            (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
            (None, Some(since)) => DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(i128::from(since) * 1_000_000)
                    .map_err(|source| Error::Read {
                        key: format!("{} keys since {since}", names::DEAD_LETTERS_BUCKET),
                        source,
                    })?,
            },
            (None, None) => DeliverPolicy::All,
        };
        let list_error = |source: NatsError| Error::Read {
            key: format!("{} keys", names::DEAD_LETTERS_BUCKET),
            source,
        };
        let consumer = bucket
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!(
                    "{}{}",
                    bucket.prefix,
                    names::dead_letter_keys_of(endpoint)
                ),
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| list_error(e.into()))?;
        let present = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| list_error(e.into()))?;
        let mut page = LetterPage::default();
        let mut read = 0;
        while read < present.min(SCAN_LIMIT) && (page.letters.len() as u64) < query.limit {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| list_error(e.into()))?;
            read += 1;
            let sequence = message.info().map_err(list_error)?.stream_sequence;
            if read < present {
                page.next = Some(sequence + 1);
            } else {
                page.next = None;
            }
            // Removed letters leave a marker carrying this header; a kept letter has none.
            let removed = message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(KV_OPERATION).is_some());
            if !removed {
                let letter = self.decode_carrier(None, "dead letter", &message.payload);
                page.letters.push(letter.await?);
            }
        }
        Ok(page)
    }
}
