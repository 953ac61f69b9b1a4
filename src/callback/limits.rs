//! Bounds on concurrent delivery attempts per key: the dispatcher keeps one [`Slots`] per
//! endpoint and one per destination (the address and port an attempt connects to), so neither
//! one tenant nor one receiver — however many host names point at it — can hold every
//! delivery slot.
//!
//! Each key gets its own limit, made on first use and dropped when its last slot is returned
//! and nobody waits for one: memory follows the attempts in flight, not the keys ever seen.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent attempts allowed per key, and a bounded line of attempts waiting briefly for one
/// of them: a fast receiver momentarily at its bound keeps its jobs flowing, while a hanging
/// one holds at most its bound plus its line (the line's for a moment each).
pub struct Slots<K: Hash + Eq + Clone> {
    per_key: usize,
    line: usize,
    limits: Arc<Mutex<HashMap<K, Arc<Limit>>>>,
}

struct Limit {
    slots: Arc<Semaphore>,
    line: Arc<Semaphore>,
}

/// A held slot; returned when dropped.
pub struct Slot<K: Hash + Eq + Clone> {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<Limit>,
    key: K,
    limits: Arc<Mutex<HashMap<K, Arc<Limit>>>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// `per_key` attempts at once per key; `line` more may wait for one of them.
    pub fn new(per_key: usize, line: usize) -> Self {
        Slots {
            per_key,
            line,
            limits: Arc::default(),
        }
    }

    /// A slot for `key`: at once, or within `wait` when its line is not full; `None` when the
    /// key keeps its share in flight.
    pub async fn acquire(&self, key: &K, wait: Duration) -> Option<Slot<K>> {
        // The slot owns the only clone of the limit taken here: dropped unfilled, it forgets
        // the limit when nobody else uses it.
        let mut slot = Slot {
            permit: None,
            limit: self.limit(key),
            key: key.clone(),
            limits: self.limits.clone(),
        };
        let semaphore = slot.limit.slots.clone();
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            slot.permit = Some(permit);
            return Some(slot);
        }
        let _in_line = slot.limit.line.clone().try_acquire_owned().ok()?;
        let permit = tokio::time::timeout(wait, semaphore.acquire_owned()).await;
        // The semaphore is never closed: an error cannot happen, and would mean "no slot".
        slot.permit = Some(permit.ok()?.ok()?);
        Some(slot)
    }

    fn limit(&self, key: &K) -> Arc<Limit> {
        let mut limits = lock(&self.limits);
        limits
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Limit {
                    slots: Arc::new(Semaphore::new(self.per_key)),
                    line: Arc::new(Semaphore::new(self.line)),
                })
            })
            .clone()
    }

    /// Keys with a slot held or awaited.
    #[cfg(test)]
    fn keys(&self) -> usize {
        lock(&self.limits).len()
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        self.permit.take();
        let mut limits = lock(&self.limits);
        // Clones of a limit are only taken under this lock: when the map's and this one are
        // the last, nobody holds or awaits a slot of the key, and nobody can start to.
        if Arc::strong_count(&self.limit) == 2 {
            limits.remove(&self.key);
        }
    }
}

fn lock<K>(
    limits: &Mutex<HashMap<K, Arc<Limit>>>,
) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Limit>>> {
    // Every critical section is a single map operation: a poisoned map is still whole.
    limits
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_key_does_not_take_slots_from_others() {
        let slots = Slots::new(2, 2);
        let now = Duration::ZERO;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(slots.acquire(&"slow", now).await.expect("free slot"));
        }
        assert!(slots.acquire(&"slow", now).await.is_none());
        assert!(slots.acquire(&"fast", now).await.is_some());
        drop(held);
        assert!(slots.acquire(&"slow", now).await.is_some());
    }

    #[tokio::test]
    async fn a_job_waits_briefly_in_a_bounded_line_for_its_keys_slot() {
        tokio::time::pause();
        let slots = Arc::new(Slots::new(1, 1));
        let held = slots.acquire(&"h", Duration::ZERO).await.expect("slot");
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(&"h", Duration::from_secs(5)).await })
        };
        // Let the waiting job take its place in the line.
        tokio::task::yield_now().await;
        assert!(
            slots.acquire(&"h", Duration::from_secs(5)).await.is_none(),
            "the line (one long) is full"
        );
        drop(held);
        assert!(
            waiting.await.expect("joined").is_some(),
            "the waiting job got the slot"
        );
        let _held = slots.acquire(&"h", Duration::ZERO).await.expect("slot");
        assert!(
            slots.acquire(&"h", Duration::from_secs(1)).await.is_none(),
            "no slot within the wait"
        );
    }

    #[tokio::test]
    async fn limits_are_forgotten_once_no_slot_is_held() {
        let slots = Slots::new(1, 1);
        let first = slots.acquire(&1, Duration::ZERO).await.expect("slot");
        let second = slots.acquire(&2, Duration::ZERO).await.expect("slot");
        assert!(slots.acquire(&1, Duration::ZERO).await.is_none());
        assert_eq!(slots.keys(), 2);
        drop(first);
        assert_eq!(slots.keys(), 1);
        drop(second);
        assert_eq!(slots.keys(), 0);
        assert!(slots.acquire(&1, Duration::ZERO).await.is_some());
    }
}
