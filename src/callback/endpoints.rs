//! What the dispatcher knows per endpoint and per destination: each endpoint's delivery settings
//! (read from its published policy, dropped when the policy changes) and a bound on concurrent
//! attempts per destination host, so one slow receiver cannot occupy every delivery slot.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::deliver::Timeouts;
use super::schedule::RetrySchedule;
use super::sign::SigningKey;
use crate::crd::EndpointId;
use crate::queue::{self, Queue};
use crate::seal::KeyRing;
use crate::task::{CallbackAuth, CallbackPolicy};

/// An endpoint's callback settings, ready to use.
#[derive(Debug)]
pub struct EndpointDelivery {
    pub keys: Vec<SigningKey>,
    pub schedule: RetrySchedule,
    pub timeouts: Timeouts,
    pub default_auth: Option<CallbackAuth>,
    pub allowed_hosts: Vec<String>,
    /// Why the endpoint's sealed secrets do not open (another key ring sealed them): its
    /// callbacks are refused rather than sent unsigned or without their credentials.
    pub unopened: Option<String>,
}

impl EndpointDelivery {
    pub fn from_policy(
        policy: CallbackPolicy,
        defaults: Timeouts,
        ring: &KeyRing,
        endpoint: &EndpointId,
    ) -> Self {
        let (secrets, unopened) = match policy.open_secrets(ring, endpoint) {
            Ok(secrets) => (secrets, None),
            Err(error) => {
                tracing::error!(%endpoint, %error, "the endpoint's callback secrets do not open with this key ring");
                let message = format!("the endpoint's callback secrets do not open: {error}");
                (Default::default(), Some(message))
            }
        };
        // Policies are validated when resolved; a key that fails to parse here is skipped rather
        // than blocking every callback of the endpoint.
        let keys = secrets
            .signing_secrets
            .iter()
            .filter_map(|secret| SigningKey::parse(secret).ok())
            .collect();
        let schedule = policy
            .retry_schedule_seconds
            .as_deref()
            .map_or_else(RetrySchedule::default, RetrySchedule::with_delays);
        let seconds = |value: Option<u32>, default: Duration| {
            value.map_or(default, |s| Duration::from_secs(s.into()))
        };
        EndpointDelivery {
            keys,
            schedule,
            timeouts: Timeouts {
                connect: seconds(policy.connect_timeout_seconds, defaults.connect),
                total: seconds(policy.attempt_timeout_seconds, defaults.total),
            },
            default_auth: secrets.default_auth,
            allowed_hosts: policy.allowed_hosts,
            unopened,
        }
    }
}

/// Endpoint settings read on first use and forgotten when their policy changes.
pub struct EndpointCache {
    queue: Queue,
    defaults: Timeouts,
    ring: Arc<KeyRing>,
    entries: Mutex<HashMap<EndpointId, Arc<EndpointDelivery>>>,
}

impl EndpointCache {
    pub fn new(queue: Queue, defaults: Timeouts, ring: Arc<KeyRing>) -> Self {
        EndpointCache {
            queue,
            defaults,
            ring,
            entries: Mutex::default(),
        }
    }

    pub async fn get(&self, endpoint: &EndpointId) -> Result<Arc<EndpointDelivery>, queue::Error> {
        if let Some(found) = self.lock().get(endpoint) {
            return Ok(found.clone());
        }
        let policy = self
            .queue
            .callback_policy(endpoint)
            .await?
            .unwrap_or_default();
        let delivery = Arc::new(EndpointDelivery::from_policy(
            policy,
            self.defaults,
            &self.ring,
            endpoint,
        ));
        self.lock().insert(endpoint.clone(), delivery.clone());
        Ok(delivery)
    }

    pub fn forget(&self, endpoint: &EndpointId) {
        self.lock().remove(endpoint);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointId, Arc<EndpointDelivery>>> {
        // Every critical section is a single map operation: a poisoned map is still whole.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Hosts share this many limits (by hash), which bounds memory whatever the number of hosts.
const HOST_SHARDS: usize = 1024;

/// Concurrent attempts allowed per destination host, and a bounded line of attempts waiting
/// briefly for one of them: a fast receiver that is momentarily at its bound keeps its jobs
/// flowing, while a hanging one holds at most its bound plus the line of the dispatcher's
/// attempts (the line's for a moment each).
pub struct HostSlots {
    shards: Vec<Shard>,
}

struct Shard {
    slots: Arc<Semaphore>,
    line: Arc<Semaphore>,
}

impl HostSlots {
    pub fn new(per_host: usize, line: usize) -> Self {
        HostSlots {
            shards: (0..HOST_SHARDS)
                .map(|_| Shard {
                    slots: Arc::new(Semaphore::new(per_host)),
                    line: Arc::new(Semaphore::new(line)),
                })
                .collect(),
        }
    }

    /// A slot for `host`: at once, or within `wait` when the line for one is not full; `None`
    /// when the host keeps its share in flight.
    pub async fn acquire(&self, host: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        host.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() as usize) % HOST_SHARDS];
        if let Ok(slot) = shard.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let _in_line = shard.line.clone().try_acquire_owned().ok()?;
        let slot = tokio::time::timeout(wait, shard.slots.clone().acquire_owned()).await;
        // The semaphore is never closed: an error cannot happen, and would mean "no slot".
        slot.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_host_does_not_take_slots_from_others() {
        let slots = HostSlots::new(2, 2);
        let now = Duration::ZERO;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(slots.acquire("slow.example", now).await.expect("free slot"));
        }
        assert!(slots.acquire("slow.example", now).await.is_none());
        assert!(slots.acquire("fast.example", now).await.is_some());
        drop(held);
        assert!(slots.acquire("slow.example", now).await.is_some());
    }

    #[tokio::test]
    async fn a_job_waits_briefly_in_a_bounded_line_for_its_hosts_slot() {
        let slots = Arc::new(HostSlots::new(1, 1));
        let held = slots
            .acquire("h.example", Duration::ZERO)
            .await
            .expect("slot");
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire("h.example", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            slots
                .acquire("h.example", Duration::from_secs(5))
                .await
                .is_none(),
            "the line (one long) is full"
        );
        drop(held);
        assert!(
            waiting.await.expect("joined").is_some(),
            "the waiting job got the slot"
        );
        let _held = slots
            .acquire("h.example", Duration::ZERO)
            .await
            .expect("slot");
        assert!(
            slots
                .acquire("h.example", Duration::from_millis(50))
                .await
                .is_none(),
            "no slot within the wait"
        );
    }

    #[test]
    fn policies_override_the_defaults() {
        let ring = KeyRing::generate();
        let endpoint = EndpointId::for_resource("ml", "e");
        let secrets = crate::task::CallbackSecrets {
            signing_secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            default_auth: None,
        };
        let context = crate::seal::Context::callback_secrets(&endpoint);
        let policy = CallbackPolicy {
            retry_schedule_seconds: Some(vec![1]),
            attempt_timeout_seconds: Some(2),
            secrets: Some(crate::seal::Sealed::seal(&ring, &secrets, &context).expect("seals")),
            ..Default::default()
        };
        let elsewhere = EndpointDelivery::from_policy(
            policy.clone(),
            Timeouts::default(),
            &KeyRing::generate(),
            &endpoint,
        );
        assert!(elsewhere.keys.is_empty());
        assert!(
            elsewhere.unopened.is_some(),
            "another ring's secrets are refused"
        );
        let delivery = EndpointDelivery::from_policy(policy, Timeouts::default(), &ring, &endpoint);
        assert_eq!(delivery.unopened, None);
        assert_eq!(delivery.schedule.delays, vec![Duration::from_secs(1)]);
        assert_eq!(
            delivery.timeouts,
            Timeouts {
                connect: Duration::from_secs(5),
                total: Duration::from_secs(2)
            }
        );
        assert_eq!(delivery.keys.len(), 1);
    }
}
