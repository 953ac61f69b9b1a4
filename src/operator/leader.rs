//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once. The leader renews the Lease every third of its duration; a replica takes
//! it over once it has seen the same holder and renew time for a whole duration (measured on
//! its own clock, so clock skew between nodes does not matter). Writes carry the Lease's
//! `resourceVersion`: of two replicas racing for it, one gets a conflict and stays standby. A
//! leader that cannot renew within two thirds of the duration stops reconciling and fails, so
//! it has stopped before anyone else may take over.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::Metrics;

/// How long a stopping leader lets the reconciles under way finish before it hands the Lease
/// back anyway: below the chart's 30 s `terminationGracePeriodSeconds`, so the release is
/// never cut off by SIGKILL. A reconcile cut short is redone by the next leader.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The Lease as configured: what is not given is found at start.
#[derive(Clone, Debug)]
pub struct LeaseChoice {
    pub name: String,
    /// The client's default namespace when absent.
    pub namespace: Option<String>,
    /// The host name (the pod name) when absent.
    pub identity: Option<String>,
    pub duration: Duration,
}

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseSettings {
    pub fn resolve(lease: LeaseChoice, client: &Client) -> Self {
        let identity = lease
            .identity
            .or_else(crate::telemetry::host_name)
            .unwrap_or_else(|| format!("ferry-operator-{}", uuid::Uuid::now_v7()));
        LeaseSettings {
            name: lease.name,
            namespace: lease
                .namespace
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            identity,
            duration: lease.duration.max(Duration::from_secs(3)),
        }
    }

    fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lost the leader Lease {name}")]
    Lost { name: String },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Lost { .. } => "LeaseLost",
        }
    }
}

/// The Lease holder and renew time last seen, and when this replica first saw them.
#[derive(Clone, Debug, PartialEq)]
struct Observation {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen_at: Instant,
}

/// The spec that makes `identity` the holder, or `None` while another holder's Lease is valid.
fn decide_claim(
    current: Option<&LeaseSpec>,
    identity: &str,
    expired: bool,
    duration_seconds: i32,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let holder = current
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let ours = holder == Some(identity);
    if holder.is_some() && !ours && !expired {
        return None;
    }
    let transitions = current.and_then(|spec| spec.lease_transitions).unwrap_or(0);
    Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: if ours {
            current.and_then(|spec| spec.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || holder.is_none() && current.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    })
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observation>,
}

impl Elector {
    /// Takes or renews the Lease; `Ok(false)` when another replica holds it.
    async fn try_claim(&mut self) -> Result<bool, kube::Error> {
        let name = self.settings.name.clone();
        let current = self.api.get_opt(&name).await?;
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let expired = self.observe(spec);
        let Some(claim) = decide_claim(
            spec,
            &self.settings.identity,
            expired,
            self.settings.duration_seconds(),
            Timestamp::now(),
        ) else {
            return Ok(false);
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..Default::default()
                    },
                    spec: Some(claim),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // The resourceVersion read above makes this write fail if anyone wrote since.
                lease.spec = Some(claim);
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Records what the Lease says now; true once it has said the same for a whole duration.
    fn observe(&mut self, spec: Option<&LeaseSpec>) -> bool {
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renew_time = spec.and_then(|s| s.renew_time.clone());
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(self.settings.duration, Duration::from_secs);
        match &self.observed {
            Some(seen) if seen.holder == holder && seen.renew_time == renew_time => {
                seen.seen_at.elapsed() >= duration
            }
            _ => {
                self.observed = Some(Observation {
                    holder,
                    renew_time,
                    seen_at: Instant::now(),
                });
                false
            }
        }
    }

    /// Hands the Lease back on shutdown so a standby replica takes over at once.
    async fn release(&mut self) {
        let name = &self.settings.name;
        let result = async {
            let Some(mut lease) = self.api.get_opt(name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(name, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %name, "leader Lease released"),
            Err(error) => {
                tracing::warn!(lease = %name, %error, "releasing the leader Lease failed")
            }
        }
    }
}

/// Waits for the Lease, runs `work` while holding it, and stops it when `cancel` fires (then
/// releases the Lease) or when the Lease is lost (then fails).
pub async fn run_while_leader<F, Fut>(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    work: F,
) -> Result<(), Error>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: None,
    };
    let lease = settings.name.as_str();
    tracing::info!(lease, namespace = %settings.namespace, identity = %settings.identity, "waiting for the leader Lease");
    loop {
        match elector.try_claim().await {
            Ok(true) => break,
            Ok(false) => tracing::debug!(lease, "another replica leads"),
            Err(error) => {
                tracing::warn!(lease, %error, "claiming the leader Lease failed; retrying")
            }
        }
        // Lease changes are not pushed to standbys; they check at a fraction of the duration.
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(settings.renew_every()) => {}
        }
    }
    tracing::info!(lease, identity = %settings.identity, "leading");
    metrics.leader.set(1);
    let stop = cancel.child_token();
    let mut worker = tokio::spawn(work(stop.clone()));
    let mut renewed = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = &mut worker => break Ok(()),
            _ = tokio::time::sleep(settings.renew_every()) => {}
        }
        match elector.try_claim().await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => break Err(Error::Lost { name: lease.into() }),
            Err(error) if renewed.elapsed() < settings.renew_deadline() => {
                tracing::warn!(lease, %error, "renewing the leader Lease failed; retrying");
            }
            Err(error) => {
                tracing::error!(lease, %error, "could not renew the leader Lease in time");
                break Err(Error::Lost { name: lease.into() });
            }
        }
    };
    stop.cancel();
    if !finish_within(worker, STOP_GRACE).await {
        tracing::warn!(
            lease,
            grace_seconds = STOP_GRACE.as_secs(),
            "reconciles still under way when the stop grace ran out; cut short"
        );
    }
    metrics.leader.set(0);
    match &outcome {
        Ok(()) => elector.release().await,
        Err(error) => tracing::error!(
            lease,
            reason = error.reason(),
            "stopped reconciling: {error}"
        ),
    }
    outcome
}

/// Waits up to `grace` for `work` to finish, then aborts it; whether it finished.
async fn finish_within(mut work: tokio::task::JoinHandle<()>, grace: Duration) -> bool {
    match tokio::time::timeout(grace, &mut work).await {
        Ok(_) => true,
        Err(_) => {
            work.abort();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_outlasts_the_stop_grace_is_cut_short() {
        let finishing = tokio::spawn(tokio::time::sleep(STOP_GRACE / 2));
        assert!(finish_within(finishing, STOP_GRACE).await);

        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = tokio::spawn(async move {
            let _dropped_when_aborted = dropped_tx;
            std::future::pending::<()>().await;
        });
        let started = Instant::now();
        assert!(!finish_within(stuck, STOP_GRACE).await);
        assert_eq!(started.elapsed(), STOP_GRACE);
        assert!(dropped_rx.await.is_err(), "the stuck work was aborted");
    }

    fn held_by(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(Timestamp::from_second(10).expect("time"))),
            renew_time: Some(MicroTime(Timestamp::from_second(20).expect("time"))),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(100).expect("time")
    }

    #[test]
    fn a_missing_lease_is_taken() {
        let claim = decide_claim(None, "a", false, 15, now()).expect("taken");
        assert_eq!(claim.holder_identity.as_deref(), Some("a"));
        assert_eq!(claim.lease_duration_seconds, Some(15));
        assert_eq!(claim.renew_time, Some(MicroTime(now())));
        assert_eq!(claim.lease_transitions, Some(0));
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_left_alone() {
        assert_eq!(
            decide_claim(Some(&held_by("b", 2)), "a", false, 15, now()),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counted() {
        let claim = decide_claim(Some(&held_by("b", 2)), "a", true, 15, now()).expect("taken");
        assert_eq!(claim.holder_identity.as_deref(), Some("a"));
        assert_eq!(claim.acquire_time, Some(MicroTime(now())));
        assert_eq!(claim.lease_transitions, Some(3));
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let current = held_by("a", 2);
        let claim = decide_claim(Some(&current), "a", false, 15, now()).expect("renewed");
        assert_eq!(claim.acquire_time, current.acquire_time);
        assert_eq!(claim.renew_time, Some(MicroTime(now())));
        assert_eq!(claim.lease_transitions, Some(2));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut released = held_by("b", 2);
        released.holder_identity = None;
        let claim = decide_claim(Some(&released), "a", false, 15, now()).expect("taken");
        assert_eq!(claim.lease_transitions, Some(3));
    }
}
