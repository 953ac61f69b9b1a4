//! Load reports of sync and streaming endpoints: gateways publish them on core NATS (no stream:
//! a report is worth only its freshness) and autoscalers subscribe.

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Error, Queue, names};
use crate::crd::EndpointId;

/// One gateway's sync and streaming requests for one endpoint, including those waiting for a
/// worker: the most it held at once since its previous report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub endpoint: EndpointId,
    /// The reporting gateway, so reports of several gateways add up.
    pub source: String,
    pub in_flight: u64,
}

impl Queue {
    pub(super) async fn publish_load(&self, report: &LoadReport) -> Result<(), Error> {
        let subject = names::load_subject(&report.endpoint);
        let payload = serde_json::to_vec(report).map_err(|source| Error::Decode {
            what: "load report",
            source,
        })?;
        self.js
            .client()
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|source| Error::Publish {
                subject,
                source: source.into(),
            })
    }

    /// Every report published from now on, for `endpoint` or, when `None`, for all endpoints.
    /// Reports that do not parse are skipped.
    pub(super) async fn load_reports(
        &self,
        endpoint: Option<&EndpointId>,
    ) -> Result<impl Stream<Item = LoadReport> + use<>, Error> {
        let subject =
            endpoint.map_or_else(|| names::ALL_LOAD_SUBJECTS.to_owned(), names::load_subject);
        let subscriber = self.subscribe(subject).await?;
        Ok(subscriber.filter_map(|message| async move {
            serde_json::from_slice(&message.payload)
                .inspect_err(
                    |error| tracing::debug!(%error, "skipping a load report that does not parse"),
                )
                .ok()
        }))
    }
}
