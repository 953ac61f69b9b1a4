//! When to try a callback again: the retry schedule as data and pure functions over it.

use std::time::Duration;

/// What a delivery attempt came to, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// 408, 429, 5xx, timeouts and connection errors: worth retrying for as long as the schedule runs.
    Transient { retry_after: Option<Duration> },
    /// Other 4xx and redirects (never followed): likely a receiver bug, retried only a few times.
    Rejected,
    /// 410 Gone: the receiver asks us to stop.
    Gone,
    /// The URL may not be called (the SSRF guard or the endpoint's host allowlist refused it).
    Refused,
}

/// What the dispatcher does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    RetryIn(Duration),
    GiveUp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetrySchedule {
    /// Delay before attempt n+2 (the first attempt is immediate); its length bounds the attempts.
    pub delays: Vec<Duration>,
    /// Attempts allowed when the receiver rejects the request with a 4xx.
    pub rejected_attempts: u32,
    /// Each delay is varied by up to this fraction either way, so retries of many callbacks spread out.
    pub jitter: f64,
    /// A receiver's `Retry-After` is honoured up to this long.
    pub max_retry_after: Duration,
}

impl Default for RetrySchedule {
    /// Close to Svix's: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 28 hours in all).
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        RetrySchedule {
            delays: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            rejected_attempts: 3,
            jitter: 0.2,
            max_retry_after: Duration::from_secs(6 * 3600),
        }
    }
}

impl RetrySchedule {
    /// The default schedule with other delays (in seconds) between attempts.
    pub fn with_delays(seconds: &[u32]) -> Self {
        let delays = seconds
            .iter()
            .map(|s| Duration::from_secs(u64::from(*s)))
            .collect();
        RetrySchedule {
            delays,
            ..RetrySchedule::default()
        }
    }

    /// Decides after attempt number `attempt` (1-based). `unit_random` in [0, 1) picks the jitter.
    pub fn next(&self, attempt: u32, verdict: Verdict, unit_random: f64) -> Next {
        let retry_after = match verdict {
            Verdict::Delivered => return Next::Done,
            Verdict::Gone | Verdict::Refused => return Next::GiveUp,
            Verdict::Rejected if attempt >= self.rejected_attempts => return Next::GiveUp,
            Verdict::Rejected => None,
            Verdict::Transient { retry_after } => retry_after,
        };
        let Some(base) = self.delays.get(attempt.saturating_sub(1) as usize) else {
            return Next::GiveUp;
        };
        let jittered = base.mul_f64(1.0 + self.jitter * (2.0 * unit_random - 1.0));
        let honoured = retry_after.map_or(jittered, |asked| {
            asked.min(self.max_retry_after).max(jittered)
        });
        Next::RetryIn(honoured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIDDLE: f64 = 0.5; // no jitter

    #[test]
    fn delivered_and_gone_end_at_once() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.next(1, Verdict::Delivered, MIDDLE), Next::Done);
        assert_eq!(schedule.next(1, Verdict::Gone, MIDDLE), Next::GiveUp);
        assert_eq!(schedule.next(1, Verdict::Refused, MIDDLE), Next::GiveUp);
    }

    #[test]
    fn an_endpoint_schedule_bounds_the_attempts() {
        let schedule = RetrySchedule::with_delays(&[1, 2]);
        let transient = Verdict::Transient { retry_after: None };
        assert_eq!(
            schedule.next(2, transient, MIDDLE),
            Next::RetryIn(Duration::from_secs(2))
        );
        assert_eq!(schedule.next(3, transient, MIDDLE), Next::GiveUp);
    }

    #[test]
    fn transient_failures_follow_the_schedule_then_give_up() {
        let schedule = RetrySchedule::default();
        let transient = Verdict::Transient { retry_after: None };
        assert_eq!(
            schedule.next(1, transient, MIDDLE),
            Next::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            schedule.next(2, transient, MIDDLE),
            Next::RetryIn(Duration::from_secs(300))
        );
        assert_eq!(
            schedule.next(7, transient, MIDDLE),
            Next::RetryIn(Duration::from_secs(36_000))
        );
        assert_eq!(schedule.next(8, transient, MIDDLE), Next::GiveUp);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let schedule = RetrySchedule::default();
        let transient = Verdict::Transient { retry_after: None };
        assert_eq!(
            schedule.next(1, transient, 0.0),
            Next::RetryIn(Duration::from_secs(4))
        );
        let Next::RetryIn(high) = schedule.next(1, transient, 0.999_999) else {
            panic!("retries")
        };
        assert!(
            high > Duration::from_millis(5990) && high <= Duration::from_secs(6),
            "{high:?}"
        );
    }

    #[test]
    fn a_jittered_one_second_delay_stays_under_a_second_and_is_kept() {
        let schedule = RetrySchedule::with_delays(&[1]);
        let transient = Verdict::Transient { retry_after: None };
        assert_eq!(
            schedule.next(1, transient, 0.0),
            Next::RetryIn(Duration::from_millis(800)),
            "the queue schedules this delay as it is (not at once)"
        );
    }

    #[test]
    fn retries_429_honouring_retry_after_within_bounds() {
        let schedule = RetrySchedule::default();
        let asked = |secs| Verdict::Transient {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            schedule.next(1, asked(60), MIDDLE),
            Next::RetryIn(Duration::from_secs(60))
        );
        // Never sooner than the schedule, never later than the cap.
        assert_eq!(
            schedule.next(1, asked(1), MIDDLE),
            Next::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            schedule.next(1, asked(86_400), MIDDLE),
            Next::RetryIn(Duration::from_secs(6 * 3600))
        );
    }

    #[test]
    fn rejections_are_retried_only_a_few_times() {
        let schedule = RetrySchedule::default();
        assert!(matches!(
            schedule.next(1, Verdict::Rejected, MIDDLE),
            Next::RetryIn(_)
        ));
        assert!(matches!(
            schedule.next(2, Verdict::Rejected, MIDDLE),
            Next::RetryIn(_)
        ));
        assert_eq!(schedule.next(3, Verdict::Rejected, MIDDLE), Next::GiveUp);
    }
}
