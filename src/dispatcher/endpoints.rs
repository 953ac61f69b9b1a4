//! What the dispatcher knows per endpoint: its delivery settings, read from its published policy
//! and dropped when the policy changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::deliver::Timeouts;
use super::schedule::RetrySchedule;
use crate::callback::sign::SigningKey;
use crate::crd::EndpointId;
use crate::queue::{self, DispatcherQueue};
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
    queue: DispatcherQueue,
    defaults: Timeouts,
    ring: Arc<KeyRing>,
    entries: Mutex<HashMap<EndpointId, Arc<EndpointDelivery>>>,
}

impl EndpointCache {
    pub fn new(queue: DispatcherQueue, defaults: Timeouts, ring: Arc<KeyRing>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
