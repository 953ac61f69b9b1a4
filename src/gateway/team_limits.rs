//! Per-team fairness at the gateway: a token bucket per team bounds how fast a team submits
//! tasks and changes endpoints, and a quota bounds how many of its async tasks are unfinished
//! across all its endpoints. Either refusal is a 429 with `Retry-After`; another team is never
//! slowed by it. Callers without a team (an open `ferry dev` gateway) are not limited.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::{AppState, auth::Principal, error::AppError};
use crate::crd::EndpointType;

/// How long a team over its task quota is asked to wait: its workers drain the queues meanwhile.
const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A team's sustained rate and the burst it may spend at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second; positive and finite.
    pub per_second: f64,
    /// Most tokens a team holds (a fresh team starts with a full bucket).
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// A limit of `per_second` (0 = none) with `burst` (0 = one second's worth, at least 1).
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        if per_second <= 0.0 || !per_second.is_finite() {
            return None;
        }
        // Saturating float-to-int cast: a rate beyond u32 tokens is a bucket of u32::MAX.
        let one_second = per_second.ceil() as u32;
        let burst =
            NonZeroU32::new(if burst == 0 { one_second } else { burst }).unwrap_or(NonZeroU32::MIN);
        Some(RateLimit { per_second, burst })
    }
}

/// A team's bucket: the tokens it held at `updated`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A team's first bucket holds its whole burst.
    fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(limit.burst.get()),
            updated: now,
        }
    }
}

/// Refills `bucket` up to `now` and takes one token, or says how long until one is there.
fn compute_take(bucket: &mut Bucket, limit: RateLimit, now: Instant) -> Result<(), Duration> {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    let capacity = f64::from(limit.burst.get());
    bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(capacity);
    bucket.updated = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        Ok(())
    } else {
        // A configured rate of nearly nothing asks for a wait beyond any `Duration`.
        let wait = (1.0 - bucket.tokens) / limit.per_second;
        Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
    }
}

/// The gateway's per-team limits and the buckets of the teams seen so far (at most one per
/// configured team, so the map stays as small as the key list).
#[derive(Debug, Default)]
pub struct TeamLimits {
    rate: Option<RateLimit>,
    max_unfinished_tasks: Option<NonZeroU64>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl TeamLimits {
    pub fn new(rate: Option<RateLimit>, max_unfinished_tasks: Option<NonZeroU64>) -> Self {
        TeamLimits {
            rate,
            max_unfinished_tasks,
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from the caller's team's bucket, or refuses with the wait until the
    /// next token.
    pub(super) fn admit(&self, principal: &Principal) -> Result<(), AppError> {
        let (Some(limit), Some(team)) = (self.rate, principal.scope()) else {
            return Ok(());
        };
        let now = Instant::now();
        let taken = {
            // A poisoned lock only means another request panicked mid-update; the map is intact.
            let mut buckets = self
                .buckets
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let bucket = buckets
                .entry(team.to_owned())
                .or_insert_with(|| Bucket::full(limit, now));
            compute_take(bucket, limit, now)
        };
        taken.map_err(|retry_after| AppError::TooMany {
            detail: format!(
                "team {team} is over its request rate ({} per second); retry later",
                limit.per_second
            ),
            retry_after,
        })
    }
}

/// Refuses a new async task when the caller's team already has its quota of unfinished ones
/// (queued or running) across its async endpoints. Concurrent submissions can each see the
/// last free place, so a team may pass its quota by the submissions in flight at that moment.
pub(super) async fn admit_queued_task(
    state: &AppState,
    principal: &Principal,
) -> Result<(), AppError> {
    let (Some(quota), Some(team)) = (state.limits.max_unfinished_tasks, principal.scope()) else {
        return Ok(());
    };
    let endpoints = state.catalog.find_endpoints(Some(team), None);
    let ids: Vec<_> = endpoints
        .iter()
        .filter(|endpoint| endpoint.spec.endpoint_type == EndpointType::Async)
        .map(|endpoint| endpoint.endpoint_id())
        .collect();
    let backlogs = ids.iter().map(|id| state.queue.backlog(id));
    // An endpoint whose queue cannot be read (not made yet, or gone) holds nothing to count.
    let unfinished: u64 = join_all(backlogs)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .map(|backlog| backlog.queued + backlog.in_flight)
        .sum();
    if unfinished < quota.get() {
        return Ok(());
    }
    Err(AppError::TooMany {
        detail: format!(
            "team {team} has {quota} unfinished async tasks, its quota; the task was not \
             accepted, retry later"
        ),
        retry_after: QUOTA_RETRY_AFTER,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit::new(per_second, burst).expect("a limit")
    }

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let limit = limit(2.0, 3);
        let mut bucket = Bucket::full(limit, start);
        for _ in 0..3 {
            assert_eq!(compute_take(&mut bucket, limit, start), Ok(()));
        }
        let wait = compute_take(&mut bucket, limit, start).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        let later = start + Duration::from_millis(500);
        assert_eq!(compute_take(&mut bucket, limit, later), Ok(()));
        assert!(compute_take(&mut bucket, limit, later).is_err());
        // A long pause refills no more than the burst.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(compute_take(&mut bucket, limit, much_later), Ok(()));
        }
        assert!(compute_take(&mut bucket, limit, much_later).is_err());
    }

    #[test]
    fn a_slow_rate_asks_for_a_long_wait() {
        let start = Instant::now();
        let limit = limit(0.1, 1);
        let mut bucket = Bucket::full(limit, start);
        assert_eq!(compute_take(&mut bucket, limit, start), Ok(()));
        let wait = compute_take(&mut bucket, limit, start).expect_err("empty");
        assert_eq!(wait.as_secs_f64().round(), 10.0);
    }

    #[test]
    fn a_rate_of_nearly_nothing_asks_for_the_longest_wait_without_panicking() {
        let start = Instant::now();
        let limit = limit(1e-300, 1);
        let mut bucket = Bucket::full(limit, start);
        assert_eq!(compute_take(&mut bucket, limit, start), Ok(()));
        let wait = compute_take(&mut bucket, limit, start).expect_err("empty");
        assert_eq!(wait, Duration::MAX);
    }

    #[test]
    fn zero_means_no_limit_and_burst_defaults_to_a_second() {
        assert_eq!(RateLimit::new(0.0, 10), None);
        assert_eq!(RateLimit::new(f64::NAN, 10), None);
        assert_eq!(limit(5.5, 0).burst.get(), 6);
        assert_eq!(limit(0.2, 0).burst.get(), 1);
        assert_eq!(limit(5.0, 40).burst.get(), 40);
    }
}
