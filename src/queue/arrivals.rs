//! Arrival notices: a payload-free core NATS message on `ferry.arrivals.<endpoint>` when tasks
//! are submitted, at most one per endpoint per [`NOTICE_GAP`] from each process. Autoscalers
//! subscribe to wake an idle endpoint at once and to follow a burst within the gap, without
//! receiving every task (subscribing to the task subjects would copy each payload to them).

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

/// When each endpoint was last announced.
#[derive(Debug, Default)]
pub struct Notices {
    last: Mutex<HashMap<EndpointId, Instant>>,
}

impl Notices {
    /// True (and remembered) when `endpoint` was not announced within the gap before `now`.
    fn due(&self, endpoint: &EndpointId, now: Instant) -> bool {
        // One map operation per call: a panic cannot leave it half done.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < NOTICE_GAP;
        if last.get(endpoint).is_some_and(fresh) {
            return false;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| fresh(at));
        }
        last.insert(endpoint.clone(), now);
        true
    }
}

impl Queue {
    /// Tells autoscalers the endpoint has new tasks, unless this process just did. A notice
    /// that cannot be sent only delays scaling to the autoscaler's next reading.
    pub(super) async fn announce_arrival(&self, endpoint: &EndpointId) {
        if !self.notices.due(endpoint, Instant::now()) {
            return;
        }
        let subject = names::arrivals_subject(endpoint);
        if let Err(error) = self.js.client().publish(subject, Default::default()).await {
            tracing::debug!(%endpoint, %error, "announcing new tasks failed");
        }
    }

    /// The endpoint of every arrival notice from now on.
    pub async fn all_task_arrivals(&self) -> Result<impl Stream<Item = EndpointId> + use<>, Error> {
        let subscriber = self
            .subscribe(names::ALL_ARRIVALS_SUBJECTS.to_owned())
            .await?;
        Ok(subscriber.filter_map(|message| async move {
            names::endpoint_of_arrivals_subject(message.subject.as_str())
        }))
    }

    /// Fires on each arrival notice for the endpoint from now on.
    pub async fn task_arrivals(
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
    fn an_endpoint_is_announced_at_most_once_per_gap() {
        let notices = Notices::default();
        let (a, b) = (
            EndpointId::for_resource("ml", "a"),
            EndpointId::for_resource("ml", "b"),
        );
        let start = Instant::now();
        assert!(notices.due(&a, start));
        assert!(!notices.due(&a, start + Duration::from_millis(50)));
        assert!(
            notices.due(&b, start + Duration::from_millis(50)),
            "per endpoint"
        );
        assert!(notices.due(&a, start + NOTICE_GAP));
    }

    #[test]
    fn remembered_endpoints_stay_bounded() {
        let notices = Notices::default();
        let start = Instant::now();
        for index in 0..REMEMBERED {
            notices.due(&EndpointId::for_resource("ml", &index.to_string()), start);
        }
        let later = start + NOTICE_GAP;
        assert!(notices.due(&EndpointId::for_resource("ml", "new"), later));
        assert_eq!(notices.last.lock().expect("lock").len(), 1);
    }
}
