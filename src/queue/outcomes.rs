//! The last hour of callback attempt outcomes per endpoint, for the console's figures. Each
//! dispatcher counts its attempts in memory, per endpoint, outcome and minute
//! ([`AttemptCounts`]), and about once a second publishes the counts that changed, each on a
//! subject naming the endpoint, the outcome, the minute and the dispatcher. The stream keeps
//! only the last message of each subject, for an hour: a reader takes those of the endpoint and
//! sums the last 60 minutes'. Reading costs one ordered read of at most 3 × 61 messages per
//! dispatcher process of the hour, whatever the traffic; counting costs no message per attempt
//! (one per attempt was a stored message per callback). A dispatcher that stops without its last
//! flush loses at most a second's counts, of a figure for people to look at.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;

use super::{Error, Queue, QueueSettings, names};
use crate::crd::EndpointId;
use crate::task::now_ms;

/// How far back the tally reaches, in whole minutes.
const TALLY_MINUTES: u64 = 60;

/// How long a count is kept after its last change: its minute is then out of the tally.
pub const TALLY_WINDOW: Duration = Duration::from_secs(TALLY_MINUTES * 60 + 60);

/// How often a dispatcher publishes the counts that changed.
pub const TALLY_FLUSH: Duration = Duration::from_secs(1);

/// What one callback attempt led to, as the dispatcher's metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Delivered,
    Retry,
    DeadLettered,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::DeadLettered => "dead_lettered",
        }
    }

    const ALL: [AttemptOutcome; 3] = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry,
        AttemptOutcome::DeadLettered,
    ];
}

/// An endpoint's callback attempts of the last hour, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeTally {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl OutcomeTally {
    fn add(&mut self, outcome: AttemptOutcome, count: u64) {
        match outcome {
            AttemptOutcome::Delivered => self.delivered += count,
            AttemptOutcome::Retry => self.retried += count,
            AttemptOutcome::DeadLettered => self.dead_lettered += count,
        }
    }

    /// The share of attempts that delivered; `None` without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        let attempts = self.delivered + self.retried + self.dead_lettered;
        (attempts > 0).then(|| self.delivered as f64 / attempts as f64)
    }
}

/// One dispatcher's attempts per endpoint, outcome and minute: the current minute's running
/// counts, and earlier minutes' until they are published.
#[derive(Debug)]
pub struct AttemptCounts {
    /// Names this dispatcher's subjects, so dispatchers never overwrite each other's counts.
    dispatcher: String,
    counts: Mutex<HashMap<(EndpointId, AttemptOutcome, u64), Count>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    attempts: u64,
    published: bool,
}

impl Default for AttemptCounts {
    fn default() -> Self {
        AttemptCounts {
            dispatcher: format!("{:016x}", rand::random::<u64>()),
            counts: Mutex::default(),
        }
    }
}

fn minute_of(at_ms: u64) -> u64 {
    at_ms / 60_000
}

impl AttemptCounts {
    pub fn add(&self, endpoint: &EndpointId, outcome: AttemptOutcome) {
        self.add_at(endpoint, outcome, now_ms());
    }

    fn add_at(&self, endpoint: &EndpointId, outcome: AttemptOutcome, at_ms: u64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts
            .entry((endpoint.clone(), outcome, minute_of(at_ms)))
            .or_default();
        count.attempts += 1;
        count.published = false;
    }

    /// The counts changed since the last call, as (subject, attempts); counts of minutes before
    /// `now_ms`'s are forgotten once returned.
    fn take_changed(&self, now_ms: u64) -> Vec<(String, u64)> {
        let current = minute_of(now_ms);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = counts
            .iter_mut()
            .filter(|(_, count)| !count.published)
            .map(|((endpoint, outcome, minute), count)| {
                count.published = true;
                let subject = names::callback_outcome_subject(
                    &endpoint.to_string(),
                    outcome.as_str(),
                    *minute,
                    &self.dispatcher,
                );
                (subject, count.attempts)
            })
            .collect();
        counts.retain(|(_, _, minute), _| *minute >= current);
        changed
    }
}

pub(super) async fn ensure(js: &jetstream::Context, settings: &QueueSettings) -> Result<(), Error> {
    let config = stream::Config {
        name: names::CALLBACK_OUTCOMES_STREAM.into(),
        subjects: vec![names::ALL_CALLBACK_OUTCOME_SUBJECTS.into()],
        max_age: TALLY_WINDOW,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::Old,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map(drop)
        .map_err(|source| Error::EnsureStream {
            stream: names::CALLBACK_OUTCOMES_STREAM.into(),
            source: source.into(),
        })
}

impl Queue {
    /// Publishes the counts that changed since the last flush. Not waited for: the tally is
    /// for people to look at, and a lost count must never hold up or fail a delivery.
    pub(super) async fn publish_attempt_counts(&self, counts: &AttemptCounts) {
        for (subject, attempts) in counts.take_changed(now_ms()) {
            let payload = bytes::Bytes::from(attempts.to_string());
            if let Err(error) = self.js.client().publish(subject, payload).await {
                tracing::debug!(%error, "callback outcomes were not counted");
            }
        }
    }

    /// The endpoint's attempts of the last hour: the sum of the last count of each of its
    /// subjects of the last 60 minutes.
    pub(super) async fn attempt_tally(&self, endpoint: &EndpointId) -> Result<OutcomeTally, Error> {
        let stream_name = names::CALLBACK_OUTCOMES_STREAM;
        let read_error = |source: super::NatsError| Error::Read {
            key: format!("{stream_name} counts"),
            source,
        };
        let stream = self
            .js
            .get_stream_no_info(stream_name)
            .await
            .map_err(|e| read_error(e.into()))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: names::callback_outcome_subjects_of(endpoint),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| read_error(e.into()))?;
        // The counts present when the reading began; later ones wait for the next reading.
        let present = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| read_error(e.into()))?;
        let oldest = minute_of(now_ms()).saturating_sub(TALLY_MINUTES - 1);
        let mut tally = OutcomeTally::default();
        for _ in 0..present {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| read_error(e.into()))?;
            if let Some((outcome, minute, attempts)) =
                parse_count(&message.subject, &message.payload)
                && minute >= oldest
            {
                tally.add(outcome, attempts);
            }
        }
        Ok(tally)
    }
}

/// The outcome, minute and attempts of a count published on `subject`
/// (`….<outcome>.<minute>.<dispatcher>`); `None` for anything else.
fn parse_count(subject: &str, payload: &[u8]) -> Option<(AttemptOutcome, u64, u64)> {
    let mut tokens = subject.rsplit('.').skip(1);
    let minute = tokens.next()?.parse().ok()?;
    let outcome = tokens.next()?;
    let outcome = AttemptOutcome::ALL
        .into_iter()
        .find(|known| known.as_str() == outcome)?;
    let attempts = std::str::from_utf8(payload).ok()?.parse().ok()?;
    Some((outcome, minute, attempts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing;

    #[test]
    fn the_success_rate_is_the_share_of_delivering_attempts() {
        assert_eq!(OutcomeTally::default().success_rate(), None);
        let tally = OutcomeTally {
            delivered: 3,
            retried: 1,
            dead_lettered: 0,
        };
        assert_eq!(tally.success_rate(), Some(0.75));
    }

    const MINUTE: u64 = 60_000;

    #[test]
    fn running_counts_are_published_when_changed_and_a_past_minute_is_forgotten_once_sent() {
        let counts = AttemptCounts::default();
        let endpoint = EndpointId::for_resource("default", "a");
        let at = 1_000 * MINUTE;
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at);
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at + 1);
        let subject = |minute| {
            names::callback_outcome_subject(
                &endpoint.to_string(),
                "delivered",
                minute,
                &counts.dispatcher,
            )
        };
        assert_eq!(counts.take_changed(at + 2), vec![(subject(1_000), 2)]);
        assert_eq!(counts.take_changed(at + 3), vec![], "nothing changed");
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at + 4);
        assert_eq!(
            counts.take_changed(at + 5),
            vec![(subject(1_000), 3)],
            "the minute's running count, not the increment"
        );
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at + MINUTE - 1);
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at + MINUTE);
        let mut changed = counts.take_changed(at + MINUTE);
        changed.sort();
        assert_eq!(changed, vec![(subject(1_000), 4), (subject(1_001), 1)]);
        counts.add_at(&endpoint, AttemptOutcome::Delivered, at + MINUTE + 1);
        assert_eq!(
            counts.take_changed(at + MINUTE + 2),
            vec![(subject(1_001), 2)],
            "the past minute, once sent, is forgotten"
        );
    }

    #[test]
    fn a_count_is_read_from_its_subject_and_payload() {
        let subject = names::callback_outcome_subject("end_x", "retry", 42, "d1");
        assert_eq!(
            parse_count(&subject, b"7"),
            Some((AttemptOutcome::Retry, 42, 7))
        );
        assert_eq!(parse_count(&subject, b"seven"), None);
        assert_eq!(
            parse_count("ferry.callback-outcomes.end_x.retry", b""),
            None
        );
    }

    #[tokio::test]
    async fn sums_the_last_count_of_every_dispatcher_and_minute_of_the_last_hour() {
        let (_server, queue) = testing::start_with_queue().await;
        let ours = EndpointId::for_resource("default", "ours");
        let theirs = EndpointId::for_resource("default", "theirs");
        let (first, second) = (AttemptCounts::default(), AttemptCounts::default());
        let now = now_ms();
        first.add_at(&ours, AttemptOutcome::Delivered, now);
        first.add_at(&ours, AttemptOutcome::Retry, now);
        first.add_at(&theirs, AttemptOutcome::Retry, now);
        queue.publish_attempt_counts(&first).await;
        // The same minute's running count again: it replaces the first.
        first.add_at(&ours, AttemptOutcome::Delivered, now);
        queue.publish_attempt_counts(&first).await;
        second.add_at(&ours, AttemptOutcome::Delivered, now);
        second.add_at(&ours, AttemptOutcome::DeadLettered, now - 30 * MINUTE);
        // Older than the hour: left out.
        second.add_at(&ours, AttemptOutcome::Delivered, now - 61 * MINUTE);
        queue.publish_attempt_counts(&second).await;
        let expected = OutcomeTally {
            delivered: 3,
            retried: 1,
            dead_lettered: 1,
        };
        // Unacknowledged publishes: wait for the server to have stored them.
        let mut tally = OutcomeTally::default();
        for _ in 0..200 {
            tally = queue.attempt_tally(&ours).await.expect("tally");
            if tally == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tally, expected);
        let other = queue.attempt_tally(&theirs).await.expect("tally");
        assert_eq!(other.retried, 1);
        assert_eq!(other.delivered + other.dead_lettered, 0);
    }
}
