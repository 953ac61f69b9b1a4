//! Bounds on concurrent delivery attempts per key: the dispatcher keeps one [`Slots`] per
//! endpoint and one per destination (the address and port an attempt connects to), so neither
//! one tenant nor one receiver — however many host names point at it — can hold every
//! delivery slot.
//!
//! Each key gets its own limit, made on first use and dropped when its last slot is returned
//! and nobody waits for one: memory follows the attempts in flight, not the keys ever seen.
//!
//! A job refused a slot is told when to come back. While its key keeps returning slots, it gets
//! the next turn in a schedule spaced by how long the key holds a slot over its number of
//! slots — the pace it takes jobs at when busy, whatever the demand (the time between two
//! returns would slow the schedule down with each lull and keep it slow) — so a backlog for a
//! fast receiver comes back at the pace the receiver takes it, each job about once, instead of
//! churning through the queue or waiting out long backoffs. A key that has returned no slot for
//! [`STUCK_AFTER`] is stuck (a hanging receiver): its jobs are refused at once, without a
//! place in line or a turn, and back off on their own.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A key that has returned no slot for this long (or since it was first used) is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);
/// How long a slot is assumed to be held before the key has returned any.
const FIRST_HOLD_GUESS: Duration = STUCK_AFTER;
/// Weight of the newest hold of a slot in the running estimate, as 1/n.
const HOLD_SMOOTHING: u32 = 8;

/// Why no slot was given, and when to come back.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The key is moving: come back after this long, the job's turn.
    Turn(Duration),
    /// The key has returned no slot for [`STUCK_AFTER`]: back off.
    Stuck,
}

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
    pace: Mutex<Pace>,
}

/// How fast a key takes jobs when busy, and the turns given out to refused jobs.
struct Pace {
    /// When a slot was last returned, or the limit made.
    last_return: Instant,
    /// Running estimate of how long a slot is held.
    hold: Duration,
    /// The key's slots.
    slots: u32,
    /// The latest turn given out.
    next_turn: Instant,
}

impl Pace {
    fn new(per_key: usize, now: Instant) -> Self {
        Pace {
            last_return: now,
            hold: FIRST_HOLD_GUESS,
            slots: u32::try_from(per_key.max(1)).unwrap_or(u32::MAX),
            next_turn: now,
        }
    }

    /// A slot held for `held` is returned at `now`.
    fn returned(&mut self, now: Instant, held: Duration) {
        self.hold = (self.hold * (HOLD_SMOOTHING - 1) + held) / HOLD_SMOOTHING;
        self.last_return = now;
    }

    fn is_stuck(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_return) >= STUCK_AFTER
    }

    /// The next turn for a refused job, or `Stuck`.
    fn turn(&mut self, now: Instant) -> Busy {
        if self.is_stuck(now) {
            return Busy::Stuck;
        }
        self.next_turn = self.next_turn.max(now) + self.hold / self.slots;
        Busy::Turn(self.next_turn - now)
    }
}

/// A held slot; returned when dropped.
pub struct Slot<K: Hash + Eq + Clone> {
    /// The permit, with when it was taken.
    permit: Option<(OwnedSemaphorePermit, Instant)>,
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

    /// A slot for `key`: at once, or within `wait` when its line is not full; otherwise when
    /// to come back, as the key keeps its share in flight.
    pub async fn acquire(&self, key: &K, wait: Duration) -> Result<Slot<K>, Busy> {
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
            slot.permit = Some((permit, Instant::now()));
            return Ok(slot);
        }
        if slot.limit.pace().is_stuck(Instant::now()) {
            // Waiting in line for a stuck key would only hold the dispatcher's capacity.
            return Err(Busy::Stuck);
        }
        let waited = match slot.limit.line.clone().try_acquire_owned() {
            Ok(_in_line) => tokio::time::timeout(wait, semaphore.acquire_owned()).await,
            Err(_) => return Err(slot.limit.turn()),
        };
        // The semaphore is never closed: an error cannot happen, and would mean "no slot".
        match waited {
            Ok(Ok(permit)) => {
                slot.permit = Some((permit, Instant::now()));
                Ok(slot)
            }
            _ => Err(slot.limit.turn()),
        }
    }

    fn limit(&self, key: &K) -> Arc<Limit> {
        let mut limits = lock(&self.limits);
        limits
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Limit {
                    slots: Arc::new(Semaphore::new(self.per_key)),
                    line: Arc::new(Semaphore::new(self.line)),
                    pace: Mutex::new(Pace::new(self.per_key, Instant::now())),
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

impl Limit {
    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        // Every critical section is a few assignments: a poisoned pace is still whole.
        self.pace
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn turn(&self) -> Busy {
        self.pace().turn(Instant::now())
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some((_permit, taken)) = self.permit.take() {
            let now = Instant::now();
            self.limit.pace().returned(now, now - taken);
        }
        let mut limits = lock(&self.limits);
        // Clones of a limit are only taken under this lock: when the map's and this one are
        // the last, nobody holds or awaits a slot of the key, and nobody can start to.
        if Arc::strong_count(&self.limit) == 2 {
            limits.remove(&self.key);
        }
    }
}

/// A slot of `destination`, when the attempt has one, then a slot of `endpoint`, within `wait`
/// in all; or when to come back when either keeps its share in flight. The destination comes
/// first: a job waiting for a receiver at its bound (a hanging one) holds none of its
/// endpoint's share, so the endpoint's other receivers keep all of it. The job then waits for
/// its endpoint only while the endpoint moves (a stuck one refuses at once), so the destination
/// slot it holds meanwhile is soon used or returned. A job refused a place in line whose turn
/// comes within [`NEAR_TURN`] waits for it and tries again.
pub async fn reserve<E, D>(
    endpoints: (&Slots<E>, &E),
    destinations: (&Slots<D>, Option<&D>),
    wait: Duration,
) -> Result<(Option<Slot<D>>, Slot<E>), Busy>
where
    E: Hash + Eq + Clone,
    D: Hash + Eq + Clone,
{
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match reserve_once(endpoints, destinations, left).await {
            Err(Busy::Turn(after)) if waits_for_turn(after, Instant::now(), deadline) => {
                tokio::time::sleep(after).await;
            }
            reserved => return reserved,
        }
    }
}

/// A refused job whose turn comes this soon waits for it rather than going back to the queue:
/// a key's turns are spaced by its pace, so the jobs that wait so are those it takes within
/// this moment (one or two of a slow or hanging key's), and a fast receiver's burst is taken
/// at its pace without a put-back and redelivery for each job.
const NEAR_TURN: Duration = Duration::from_millis(50);

/// Whether a job refused with a turn `after` from `now` waits for it, by `deadline`.
fn waits_for_turn(after: Duration, now: Instant, deadline: Instant) -> bool {
    after <= NEAR_TURN && now + after < deadline
}

async fn reserve_once<E, D>(
    (endpoints, endpoint): (&Slots<E>, &E),
    (destinations, destination): (&Slots<D>, Option<&D>),
    wait: Duration,
) -> Result<(Option<Slot<D>>, Slot<E>), Busy>
where
    E: Hash + Eq + Clone,
    D: Hash + Eq + Clone,
{
    let destination = match destination {
        Some(destination) => Some(destinations.acquire(destination, wait).await?),
        None => None,
    };
    let endpoint = endpoints.acquire(endpoint, wait).await?;
    Ok((destination, endpoint))
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
        assert!(slots.acquire(&"slow", now).await.is_err());
        assert!(slots.acquire(&"fast", now).await.is_ok());
        drop(held);
        assert!(slots.acquire(&"slow", now).await.is_ok());
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
            slots.acquire(&"h", Duration::from_secs(5)).await.is_err(),
            "the line (one long) is full"
        );
        drop(held);
        assert!(
            waiting.await.expect("joined").is_ok(),
            "the waiting job got the slot"
        );
        let _held = slots.acquire(&"h", Duration::ZERO).await.expect("slot");
        assert!(
            slots.acquire(&"h", Duration::from_secs(1)).await.is_err(),
            "no slot within the wait"
        );
    }

    #[tokio::test]
    async fn limits_are_forgotten_once_no_slot_is_held() {
        let slots = Slots::new(1, 1);
        let first = slots.acquire(&1, Duration::ZERO).await.expect("slot");
        let second = slots.acquire(&2, Duration::ZERO).await.expect("slot");
        assert!(slots.acquire(&1, Duration::ZERO).await.is_err());
        assert_eq!(slots.keys(), 2);
        drop(first);
        assert_eq!(slots.keys(), 1);
        drop(second);
        assert_eq!(slots.keys(), 0);
        assert!(slots.acquire(&1, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn refused_jobs_get_turns_spaced_by_how_long_the_key_holds_a_slot_over_its_slots() {
        tokio::time::pause();
        let slots = Slots::new(2, 0);
        // One slot stays held, so the key's limit (and its pace) is kept; the other is held
        // 10 ms at a time for a while: two slots held 10 ms each take a job every 5 ms.
        let _anchor = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
        for _ in 0..64 {
            let held = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
            tokio::time::advance(Duration::from_millis(10)).await;
            drop(held);
        }
        let _held = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
        let turns: Vec<Duration> = futures::future::join_all(
            (0..3).map(|_| async { slots.acquire(&"fast", Duration::ZERO).await.err() }),
        )
        .await
        .into_iter()
        .map(|busy| match busy {
            Some(Busy::Turn(after)) => after,
            other => panic!("a turn, not {other:?}"),
        })
        .collect();
        let gap = turns[0];
        assert!(
            gap > Duration::from_millis(4) && gap < Duration::from_millis(6),
            "{gap:?}"
        );
        assert_eq!(turns, vec![gap, gap * 2, gap * 3], "one turn after another");
    }

    #[tokio::test]
    async fn a_job_waiting_for_its_receiver_holds_none_of_its_endpoints_share() {
        tokio::time::pause();
        let endpoints = Slots::new(2, 4);
        let destinations = Arc::new(Slots::new(1, 4));
        // One attempt hangs at its receiver: one of the endpoint's two slots.
        let _hanging = reserve(
            (&endpoints, &"tenant"),
            (&destinations, Some(&"hanging")),
            Duration::ZERO,
        )
        .await
        .expect("free slots");
        let endpoints = Arc::new(endpoints);
        // The next job for that receiver waits in its line...
        let waiting = {
            let (endpoints, destinations) = (endpoints.clone(), destinations.clone());
            tokio::spawn(async move {
                let reserved = reserve(
                    (&endpoints, &"tenant"),
                    (&destinations, Some(&"hanging")),
                    STUCK_AFTER,
                )
                .await;
                reserved.err()
            })
        };
        tokio::task::yield_now().await;
        // ...while a job of the same endpoint for another receiver takes the endpoint's other
        // slot at once.
        let fast = reserve(
            (&endpoints, &"tenant"),
            (&destinations, Some(&"fast")),
            Duration::ZERO,
        )
        .await;
        assert!(fast.is_ok(), "{:?}", fast.err());
        assert_eq!(
            waiting.await.expect("joined"),
            Some(Busy::Stuck),
            "the waiting job gets no slot of the hanging receiver"
        );
    }

    #[tokio::test]
    async fn lulls_in_demand_do_not_slow_a_keys_turns() {
        tokio::time::pause();
        let slots = Slots::new(2, 0);
        let _anchor = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
        // Each job is answered in 1 ms, and the next comes 100 ms later.
        for _ in 0..64 {
            let held = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
            tokio::time::advance(Duration::from_millis(1)).await;
            drop(held);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let _held = slots.acquire(&"fast", Duration::ZERO).await.expect("slot");
        let refused = slots.acquire(&"fast", Duration::ZERO).await.err();
        assert!(
            matches!(refused, Some(Busy::Turn(after)) if after < Duration::from_millis(1)),
            "the key takes a job every half millisecond when busy: {refused:?}"
        );
    }

    #[test]
    fn only_a_near_turn_within_the_wait_is_waited_for() {
        let now = Instant::now();
        let deadline = now + STUCK_AFTER;
        assert!(waits_for_turn(NEAR_TURN, now, deadline));
        assert!(!waits_for_turn(NEAR_TURN * 2, now, deadline), "far");
        assert!(
            !waits_for_turn(NEAR_TURN, deadline - NEAR_TURN / 2, deadline),
            "past the wait"
        );
    }

    /// Reserves a slot of `key` (no destination) within `wait`, by itself.
    async fn reserve_alone(
        slots: &Slots<&'static str>,
        key: &'static str,
        wait: Duration,
    ) -> Result<(), Busy> {
        let none: Slots<&str> = Slots::new(1, 1);
        reserve((slots, &key), (&none, None), wait)
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn a_job_refused_by_a_fast_key_waits_for_its_near_turn_instead_of_going_back() {
        tokio::time::pause();
        // Thirty-two slots, no line: a refused job's first turn is a 32nd of a second away.
        let slots = Arc::new(Slots::new(32, 0));
        let mut held = Vec::new();
        for _ in 0..32 {
            held.push(slots.acquire(&"fast", Duration::ZERO).await.expect("slot"));
        }
        let refused = {
            let slots = slots.clone();
            tokio::spawn(async move { reserve_alone(&slots, "fast", STUCK_AFTER).await })
        };
        tokio::task::yield_now().await;
        // A slot comes back before the turn: the job takes it then.
        held.pop();
        let asked = Instant::now();
        assert_eq!(refused.await.expect("joined"), Ok(()));
        assert!(asked.elapsed() <= NEAR_TURN, "{:?}", asked.elapsed());
    }

    #[tokio::test]
    async fn a_job_refused_by_a_slow_key_goes_back_at_once_with_its_turn() {
        tokio::time::pause();
        // One slot, no line: a turn is a second away.
        let slots = Slots::new(1, 0);
        let _held = slots.acquire(&"slow", Duration::ZERO).await.expect("slot");
        let asked = Instant::now();
        let refused = reserve_alone(&slots, "slow", STUCK_AFTER).await;
        assert!(
            matches!(refused, Err(Busy::Turn(after)) if after > NEAR_TURN),
            "{refused:?}"
        );
        assert_eq!(asked.elapsed(), Duration::ZERO, "not waited for");
    }

    #[tokio::test]
    async fn a_key_that_returns_no_slot_is_stuck() {
        tokio::time::pause();
        let slots = Slots::new(1, 1);
        let _held = slots
            .acquire(&"hanging", Duration::ZERO)
            .await
            .expect("slot");
        assert!(
            matches!(
                slots.acquire(&"hanging", Duration::ZERO).await.err(),
                Some(Busy::Turn(_))
            ),
            "refused before it could be stuck: a turn"
        );
        let waited = slots.acquire(&"hanging", STUCK_AFTER).await.err();
        assert_eq!(waited, Some(Busy::Stuck));
        let asked = Instant::now();
        let refused = slots.acquire(&"hanging", STUCK_AFTER).await.err();
        assert_eq!(refused, Some(Busy::Stuck));
        assert_eq!(
            asked.elapsed(),
            Duration::ZERO,
            "no wait in line once stuck"
        );
    }
}
