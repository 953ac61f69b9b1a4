//! Recent DNS answers of callback hosts, so a busy endpoint's submissions do not each wait for a
//! lookup (and, in a cluster, its search-domain queries). Answers are kept briefly and vetted
//! again on every use; failures are not kept, so a host that comes back is usable at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused. Short: a host that moves is followed within seconds.
pub const KEEP_FOR: Duration = Duration::from_secs(10);

/// Hosts kept at most; bounds memory against submissions naming ever new hosts.
const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct DnsCache {
    answers: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl DnsCache {
    /// The answer for `host` if it is younger than [`KEEP_FOR`] at `now`.
    pub fn get(&self, host: &str, now: Instant) -> Option<Vec<IpAddr>> {
        let answers = self.lock();
        let (at, ips) = answers.get(host)?;
        (now.saturating_duration_since(*at) < KEEP_FOR).then(|| ips.clone())
    }

    pub fn put(&self, host: &str, ips: Vec<IpAddr>, now: Instant) {
        let mut answers = self.lock();
        if answers.len() >= CAPACITY && !answers.contains_key(host) {
            answers.retain(|_, (at, _)| now.saturating_duration_since(*at) < KEEP_FOR);
            if answers.len() >= CAPACITY {
                // All fresh: many hosts at once. Starting over costs lookups, not correctness.
                answers.clear();
            }
        }
        answers.insert(host.to_owned(), (now, ips));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<IpAddr>)>> {
        // Each critical section is one map operation: a panic cannot leave it half done.
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(text: &str) -> Vec<IpAddr> {
        vec![text.parse().expect("address")]
    }

    #[test]
    fn answers_are_reused_until_they_are_too_old() {
        let cache = DnsCache::default();
        let start = Instant::now();
        assert_eq!(cache.get("a.test", start), None);
        cache.put("a.test", ips("192.0.2.1"), start);
        assert_eq!(
            cache.get("a.test", start + Duration::from_secs(9)),
            Some(ips("192.0.2.1"))
        );
        assert_eq!(cache.get("a.test", start + KEEP_FOR), None);
        assert_eq!(cache.get("b.test", start), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = DnsCache::default();
        let start = Instant::now();
        for index in 0..CAPACITY {
            cache.put(&format!("old-{index}.test"), ips("192.0.2.1"), start);
        }
        let later = start + KEEP_FOR;
        cache.put("new.test", ips("192.0.2.2"), later);
        assert_eq!(cache.lock().len(), 1, "the stale answers made room");
        for index in 0..CAPACITY * 2 {
            cache.put(&format!("many-{index}.test"), ips("192.0.2.3"), later);
        }
        assert!(cache.lock().len() <= CAPACITY);
        assert!(
            cache.get("many-8191.test", later).is_some(),
            "the newest is kept"
        );
    }
}
