//! What the dispatcher knows per endpoint: its delivery settings, read from its published policy
//! and dropped when the policy changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::deliver::Timeouts;
use super::schedule::RetrySchedule;
use super::sign::SigningKey;
use crate::crd::EndpointId;
use crate::queue::{self, Queue};
use crate::task::{CallbackAuth, CallbackPolicy};

/// An endpoint's callback settings, ready to use.
#[derive(Debug)]
pub struct EndpointDelivery {
    pub keys: Vec<SigningKey>,
    pub schedule: RetrySchedule,
    pub timeouts: Timeouts,
    pub default_auth: Option<CallbackAuth>,
    pub allowed_hosts: Vec<String>,
}

impl EndpointDelivery {
    pub fn from_policy(policy: CallbackPolicy, defaults: Timeouts) -> Self {
        // Policies are validated when resolved; a key that fails to parse here is skipped rather
        // than blocking every callback of the endpoint.
        let keys = policy
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
            default_auth: policy.default_auth,
            allowed_hosts: policy.allowed_hosts,
        }
    }
}

/// Endpoint settings read on first use and forgotten when their policy changes.
pub struct EndpointCache {
    queue: Queue,
    defaults: Timeouts,
    entries: Mutex<HashMap<EndpointId, Arc<EndpointDelivery>>>,
}

impl EndpointCache {
    pub fn new(queue: Queue, defaults: Timeouts) -> Self {
        EndpointCache {
            queue,
            defaults,
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
        let delivery = Arc::new(EndpointDelivery::from_policy(policy, self.defaults));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_override_the_defaults() {
        let policy = CallbackPolicy {
            retry_schedule_seconds: Some(vec![1]),
            attempt_timeout_seconds: Some(2),
            signing_secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            ..Default::default()
        };
        let delivery = EndpointDelivery::from_policy(policy, Timeouts::default());
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
