//! Arrival notices: a payload-free core NATS message on `ferry.arrivals.<endpoint>` when tasks
//! are submitted, at most one per endpoint per [`NOTICE_GAP`] from each process: the first at
//! once, and one more at the end of the gap when tasks came during it. Autoscalers subscribe to
//! wake an idle endpoint at once and to follow a burst within the gap, without receiving every
//! task (subscribing to the task subjects would copy each payload to them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use super::{Error, Queue, names};
use crate::crd::EndpointId;

/// Fewest time between two notices for one endpoint from one process.
const NOTICE_GAP: Duration = Duration::from_millis(100);

/// Endpoints remembered at most; beyond it, those noticed longer than the gap ago are dropped.
const REMEMBERED: usize = 4096;

/// When to announce an endpoint's new tasks.
#[derive(Debug, PartialEq, Eq)]
enum Notice {
    Now,
    /// At the end of the current gap.
    After(Duration),
    /// One is already due at the end of the gap.
    Pending,
}

/// When each endpoint's latest notice was sent or is due.
#[derive(Debug, Default)]
pub struct Notices {
    latest: Mutex<HashMap<EndpointId, Instant>>,
}

impl Notices {
    fn notice(&self, endpoint: &EndpointId, now: Instant) -> Notice {
        // One map operation per call: a panic cannot leave it half done.
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.len() >= REMEMBERED && !latest.contains_key(endpoint) {
            latest.retain(|_, at| now < *at + NOTICE_GAP);
        }
        match latest.get(endpoint).copied() {
            Some(at) if at > now => Notice::Pending,
            Some(at) if now < at + NOTICE_GAP => {
                latest.insert(endpoint.clone(), at + NOTICE_GAP);
                Notice::After(at + NOTICE_GAP - now)
            }
            _ => {
                latest.insert(endpoint.clone(), now);
                Notice::Now
            }
        }
    }
}

impl Queue {
    /// Tells autoscalers the endpoint has new tasks, now or at the end of the current gap. A
    /// notice that cannot be sent only delays scaling to the autoscaler's next reading.
    pub(super) async fn announce_arrival(&self, endpoint: &EndpointId) {
        let delay = match self.notices.notice(endpoint, Instant::now()) {
            Notice::Pending => return,
            Notice::Now => Duration::ZERO,
            Notice::After(delay) => delay,
        };
        let client = self.js.client();
        let subject = names::arrivals_subject(endpoint);
        let publish = async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = client.publish(subject, Default::default()).await {
                tracing::debug!(%error, "announcing new tasks failed");
            }
        };
        if delay.is_zero() {
            publish.await;
        } else {
            tokio::spawn(publish);
        }
    }

    /// The endpoint of every arrival notice from now on.
    pub(super) async fn all_task_arrivals(
        &self,
    ) -> Result<impl Stream<Item = EndpointId> + use<>, Error> {
        let subscriber = self
            .subscribe(names::ALL_ARRIVALS_SUBJECTS.to_owned())
            .await?;
        Ok(subscriber.filter_map(|message| async move {
            names::endpoint_of_arrivals_subject(message.subject.as_str())
        }))
    }

    /// Fires on each arrival notice for the endpoint from now on.
    pub(super) async fn task_arrivals(
        &self,
        endpoint: &EndpointId,
    ) -> Result<impl Stream<Item = ()> + use<>, Error> {
        let subscriber = self.subscribe(names::arrivals_subject(endpoint)).await?;
        Ok(subscriber.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_announced_at_once_then_once_more_at_the_end_of_the_gap() {
        let notices = Notices::default();
        let (a, b) = (
            EndpointId::for_resource("ml", "a"),
            EndpointId::for_resource("ml", "b"),
        );
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(notices.notice(&a, start), Notice::Now);
        assert_eq!(
            notices.notice(&a, at(30)),
            Notice::After(Duration::from_millis(70)),
            "tasks during the gap: one more notice when it ends"
        );
        assert_eq!(notices.notice(&a, at(60)), Notice::Pending);
        assert_eq!(notices.notice(&b, at(60)), Notice::Now, "per endpoint");
        assert_eq!(
            notices.notice(&a, at(150)),
            Notice::After(Duration::from_millis(50)),
            "within the gap after the trailing notice"
        );
        assert_eq!(notices.notice(&a, at(400)), Notice::Now);
    }

    #[test]
    fn remembered_endpoints_stay_bounded() {
        let notices = Notices::default();
        let start = Instant::now();
        for index in 0..REMEMBERED {
            notices.notice(&EndpointId::for_resource("ml", &index.to_string()), start);
        }
        let later = start + NOTICE_GAP;
        let new = EndpointId::for_resource("ml", "new");
        assert_eq!(notices.notice(&new, later), Notice::Now);
        assert_eq!(notices.latest.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_run_of_submissions_is_announced_at_once_and_at_the_end_of_the_gap() {
        use crate::queue::QueueSpec;
        use crate::task::{TaskId, TaskMessage};
        use futures::StreamExt;

        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", "a");
        queue
            .ensure_task_queue(&QueueSpec {
                endpoint_id: endpoint.clone(),
                task_expiry: Duration::from_secs(60),
                ack_wait: Duration::from_secs(30),
            })
            .await
            .expect("queue");
        let arrivals = queue.all_task_arrivals().await.expect("subscribed");
        let mut arrivals = std::pin::pin!(arrivals);
        for _ in 0..5 {
            let task = TaskMessage {
                task_id: TaskId::generate(&endpoint),
                endpoint_id: endpoint.clone(),
                args: serde_json::json!({}),
                input_url: None,
                callback: None,
                submitted_at_ms: 0,
                record_revision: None,
            };
            queue.submit(&task, None).await.expect("submitted");
        }
        // Only a guard against a hang: the gap's length is the pure test's to check.
        let wait = Duration::from_secs(10);
        let first = tokio::time::timeout(wait, arrivals.next()).await;
        assert_eq!(first.ok().flatten(), Some(endpoint.clone()));
        let second = tokio::time::timeout(wait, arrivals.next()).await;
        assert_eq!(
            second.ok().flatten(),
            Some(endpoint.clone()),
            "the tasks of the gap are announced at its end"
        );
        // Another endpoint's notice, announced at once, comes next: the run had no third.
        let marker = EndpointId::for_resource("ml", "b");
        queue.announce_arrival(&marker).await;
        let next = tokio::time::timeout(wait, arrivals.next()).await;
        assert_eq!(next.ok().flatten(), Some(marker), "and nothing more");
    }
}
