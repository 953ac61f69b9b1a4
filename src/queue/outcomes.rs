//! The last hour of callback attempt outcomes per endpoint, for the console's figures. The
//! dispatcher publishes one empty message per attempt on a subject that names the endpoint and
//! the outcome, into a stream that keeps an hour of them (and at most
//! [`MAX_PER_OUTCOME`] per endpoint and outcome); a reader asks the server for each subject's
//! message count, so reading costs one request however many callbacks there were.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;

use super::{Error, Queue, QueueSettings, names};
use crate::crd::EndpointId;

/// How far back the tally reaches.
pub const TALLY_WINDOW: Duration = Duration::from_secs(3600);

/// Messages kept per endpoint and outcome: bounds the stream of a busy endpoint, whose counts
/// then cover the most recent attempts of the hour (its rates stay right).
const MAX_PER_OUTCOME: i64 = 100_000;

/// What one callback attempt led to, as the dispatcher's metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

pub(super) async fn ensure(js: &jetstream::Context, settings: &QueueSettings) -> Result<(), Error> {
    let config = stream::Config {
        name: names::CALLBACK_OUTCOMES_STREAM.into(),
        subjects: vec![names::callback_outcome_subject("*", "*")],
        max_age: TALLY_WINDOW,
        max_messages_per_subject: MAX_PER_OUTCOME,
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
    /// Counts one attempt. Not waited for: the tally is for people to look at, and a lost
    /// count must never hold up or fail a delivery.
    pub(super) async fn count_attempt(&self, endpoint: &EndpointId, outcome: AttemptOutcome) {
        let subject = names::callback_outcome_subject(&endpoint.to_string(), outcome.as_str());
        if let Err(error) = self.js.client().publish(subject, bytes::Bytes::new()).await {
            tracing::debug!(%error, endpoint = %endpoint, "a callback outcome was not counted");
        }
    }

    /// The endpoint's attempts of the last hour, from the server's per-subject counts.
    pub(super) async fn attempt_tally(&self, endpoint: &EndpointId) -> Result<OutcomeTally, Error> {
        let stream_name = names::CALLBACK_OUTCOMES_STREAM;
        let read_error = |source: super::NatsError| Error::Read {
            key: format!("{stream_name} subject counts"),
            source,
        };
        let filter = names::callback_outcome_subject(&endpoint.to_string(), "*");
        let stream = self
            .js
            .get_stream_no_info(stream_name)
            .await
            .map_err(|e| read_error(e.into()))?;
        let counts: Vec<(String, usize)> = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| read_error(e.into()))?
            .try_collect()
            .await
            .map_err(|e| read_error(e.into()))?;
        let mut tally = OutcomeTally::default();
        for (subject, count) in counts {
            let outcome = AttemptOutcome::ALL
                .into_iter()
                .find(|outcome| subject.ends_with(&format!(".{}", outcome.as_str())));
            if let Some(outcome) = outcome {
                tally.add(outcome, count as u64);
            }
        }
        Ok(tally)
    }
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

    #[tokio::test]
    async fn counts_each_endpoints_attempts_by_outcome() {
        let (_server, queue) = testing::start_with_queue().await;
        let ours = EndpointId::for_resource("default", "ours");
        let theirs = EndpointId::for_resource("default", "theirs");
        for outcome in [
            AttemptOutcome::Delivered,
            AttemptOutcome::Delivered,
            AttemptOutcome::Retry,
            AttemptOutcome::DeadLettered,
        ] {
            queue.count_attempt(&ours, outcome).await;
        }
        queue.count_attempt(&theirs, AttemptOutcome::Retry).await;
        let expected = OutcomeTally {
            delivered: 2,
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
