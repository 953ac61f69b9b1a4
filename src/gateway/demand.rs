//! The sync and streaming requests this gateway holds per endpoint — the load those endpoints
//! are scaled by. Waiting requests count too: an endpoint at zero workers has demand before it
//! has a worker to see it. Reported to the autoscalers as [`LoadReport`]s: at once when an
//! endpoint's demand appears (the wake) or exceeds what was last reported (a burst), and every
//! [`REPORT_EVERY`] while there is any, ending with one report of zero.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::autoscale::REPORT_EVERY;
use crate::crd::EndpointId;
use crate::queue::GatewayQueue;
use crate::queue::LoadReport;

/// Reports prompted by growing demand come at most this often (per gateway).
const MIN_REPORT_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Count {
    current: u64,
    /// The most held at once since the last report: a burst between reports still counts.
    peak: u64,
    /// What the last report said.
    reported: u64,
}

#[derive(Clone)]
pub struct Demand {
    /// This gateway, in its reports.
    source: Arc<str>,
    /// Endpoints with demand, or with some since their last report.
    counts: Arc<Mutex<HashMap<EndpointId, Count>>>,
    /// Fires when an endpoint's demand appears or grows past its last report.
    grew: Arc<Notify>,
}

impl Demand {
    /// Demand reported under a name unique to this process (host name and a fresh id).
    pub fn for_this_process() -> Self {
        let host = crate::telemetry::host_name().unwrap_or_else(|| "gateway".into());
        Demand::new(format!("{host}/{}", uuid::Uuid::now_v7()))
    }

    pub fn new(source: String) -> Self {
        Demand {
            source: source.into(),
            counts: Arc::default(),
            grew: Arc::default(),
        }
    }

    /// Counts one request for `endpoint` until the returned guard drops.
    pub fn hold(&self, endpoint: &EndpointId) -> Held {
        let mut counts = self.lock();
        let count = counts.entry(endpoint.clone()).or_default();
        count.current += 1;
        count.peak = count.peak.max(count.current);
        let grew = count.current > count.reported;
        drop(counts);
        if grew {
            self.grew.notify_one();
        }
        Held {
            demand: self.clone(),
            endpoint: endpoint.clone(),
        }
    }

    /// Publishes the reports until `stop`; a failed publish is logged and the next one follows.
    pub async fn report(self, queue: GatewayQueue, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        loop {
            let grew = tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => false,
                _ = self.grew.notified() => true,
            };
            for report in self.take_reports() {
                if let Err(error) = queue.publish_load(&report).await {
                    tracing::warn!(endpoint = %report.endpoint, error = %crate::telemetry::error_chain(&error), "reporting load failed");
                }
            }
            if grew {
                // A steady stream of new highs must not turn into a stream of reports.
                tokio::time::sleep(MIN_REPORT_GAP).await;
            }
        }
    }

    /// One report per endpoint with demand since the last call (a last one of zero when it is
    /// gone); starts the next interval's peaks at what is held now.
    fn take_reports(&self) -> Vec<LoadReport> {
        let mut reports = Vec::new();
        self.lock().retain(|endpoint, count| {
            reports.push(LoadReport {
                endpoint: endpoint.clone(),
                source: self.source.to_string(),
                in_flight: count.peak,
            });
            let reported_zero = count.peak == 0;
            count.reported = count.peak;
            count.peak = count.current;
            // A report of zero is the endpoint's last until its demand appears again.
            !reported_zero
        });
        reports
    }

    fn release(&self, endpoint: &EndpointId) {
        if let Some(count) = self.lock().get_mut(endpoint) {
            count.current = count.current.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointId, Count>> {
        // Every critical section is a few integer updates: a panic cannot leave them half done.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One request held; releases it when dropped.
pub struct Held {
    demand: Demand,
    endpoint: EndpointId,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.demand.release(&self.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(reports: &[LoadReport], endpoint: &EndpointId) -> Option<u64> {
        reports
            .iter()
            .find(|report| &report.endpoint == endpoint)
            .map(|report| report.in_flight)
    }

    #[test]
    fn reports_the_peak_since_the_last_report_then_a_zero_then_nothing() {
        let demand = Demand::new("gw".into());
        let endpoint = EndpointId::for_resource("ml", "a");
        let first = demand.hold(&endpoint);
        let second = demand.hold(&endpoint);
        drop(first);
        let reports = demand.take_reports();
        assert_eq!(
            in_flight(&reports, &endpoint),
            Some(2),
            "the peak, not the current 1"
        );
        assert_eq!(reports[0].source, "gw");
        assert_eq!(in_flight(&demand.take_reports(), &endpoint), Some(1));
        drop(second);
        assert_eq!(
            in_flight(&demand.take_reports(), &endpoint),
            Some(1),
            "held during the interval"
        );
        assert_eq!(
            in_flight(&demand.take_reports(), &endpoint),
            Some(0),
            "gone: one zero"
        );
        assert!(demand.take_reports().is_empty(), "then silence");
    }

    async fn notified(demand: &Demand) -> bool {
        let wait = Duration::from_millis(100);
        tokio::time::timeout(wait, demand.grew.notified())
            .await
            .is_ok()
    }

    // Paused: a wake never comes from elsewhere, so the wait for one ends at once when none is due.
    #[tokio::test(start_paused = true)]
    async fn new_demand_and_new_highs_wake_the_reporter_and_steady_demand_does_not() {
        let demand = Demand::new("gw".into());
        let endpoint = EndpointId::for_resource("ml", "a");
        let first = demand.hold(&endpoint);
        assert!(
            notified(&demand).await,
            "the first request wakes the endpoint"
        );
        demand.take_reports();
        drop(first);
        let _again = demand.hold(&endpoint);
        assert!(!notified(&demand).await, "as many as reported: not news");
        let _more = demand.hold(&endpoint);
        assert!(notified(&demand).await, "more than reported: a burst");
    }
}
