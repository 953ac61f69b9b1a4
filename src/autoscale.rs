//! How many workers an endpoint wants: the one decision both the operator and `ferry dev` scale
//! by. Pure: the caller brings the observed load and the time, and keeps the [`Scaler`] between
//! observations.

use std::time::{Duration, Instant};

use crate::crd::ModelEndpointSpec;

/// What the endpoint's load looks like now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Tasks waiting for a worker (async) — zero for sync and streaming endpoints.
    pub queued: u64,
    /// Tasks or requests workers hold right now.
    pub in_flight: u64,
}

/// Why the desired count is what it is; for status, Events and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The load asks for this many.
    Load,
    /// The load asks for fewer, but not for long enough yet.
    Stabilizing,
    /// Held at `minWorkers`.
    AtMinimum,
    /// Capped at `maxWorkers`.
    AtMaximum,
    /// No work and `minWorkers` is zero.
    Idle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Load => "Load",
            Reason::Stabilizing => "Stabilizing",
            Reason::AtMinimum => "AtMinimum",
            Reason::AtMaximum => "AtMaximum",
            Reason::Idle => "Idle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
}

/// The workers the load alone asks for: ceil(load / perWorker), within [min, max].
pub fn wanted(spec: &ModelEndpointSpec, load: Load) -> Decision {
    let work = load.queued + load.in_flight;
    let per_worker = u64::from(spec.per_worker.max(1));
    let raw = work.div_ceil(per_worker).min(u64::from(u32::MAX)) as u32;
    let (min, max) = (spec.min_workers, spec.max_workers.max(spec.min_workers));
    if raw > max {
        Decision {
            replicas: max,
            reason: Reason::AtMaximum,
        }
    } else if raw <= min {
        let reason = if min == 0 {
            Reason::Idle
        } else {
            Reason::AtMinimum
        };
        Decision {
            replicas: min,
            reason,
        }
    } else {
        Decision {
            replicas: raw,
            reason: Reason::Load,
        }
    }
}

/// Remembers recent wishes so scale-down waits out the stabilization window (the largest wish
/// within the window wins, as the HorizontalPodAutoscaler does), while scale-up is immediate.
#[derive(Clone, Debug)]
pub struct Scaler {
    window: Duration,
    /// (when, wanted replicas), oldest first.
    recent: Vec<(Instant, u32)>,
}

impl Scaler {
    pub fn new(window: Duration) -> Self {
        Scaler {
            window,
            recent: Vec::new(),
        }
    }

    /// The replicas to run now, given the load observed at `now`.
    pub fn decide(&mut self, spec: &ModelEndpointSpec, load: Load, now: Instant) -> Decision {
        let wish = wanted(spec, load);
        self.recent
            .retain(|(at, _)| now.saturating_duration_since(*at) < self.window);
        self.recent.push((now, wish.replicas));
        let held = self
            .recent
            .iter()
            .map(|(_, replicas)| *replicas)
            .max()
            .unwrap_or(wish.replicas);
        // The window may hold wishes from before a spec change: never beyond today's bounds.
        let held = held.clamp(spec.min_workers, spec.max_workers.max(spec.min_workers));
        if held > wish.replicas {
            Decision {
                replicas: held,
                reason: Reason::Stabilizing,
            }
        } else {
            wish
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: u32, max: u32, per_worker: u32) -> ModelEndpointSpec {
        let yaml = format!(
            "{{bundle: b, labels: {{team: t, product: p}}, minWorkers: {min}, maxWorkers: {max}, perWorker: {per_worker}}}"
        );
        serde_yaml::from_str(&yaml).expect("spec")
    }

    fn load(queued: u64, in_flight: u64) -> Load {
        Load { queued, in_flight }
    }

    #[test]
    fn wants_ceil_of_work_over_per_worker_within_bounds() {
        let spec = spec(1, 10, 5);
        assert_eq!(
            wanted(&spec, load(0, 0)),
            Decision {
                replicas: 1,
                reason: Reason::AtMinimum
            }
        );
        assert_eq!(
            wanted(&spec, load(6, 0)),
            Decision {
                replicas: 2,
                reason: Reason::Load
            }
        );
        assert_eq!(
            wanted(&spec, load(10, 5)),
            Decision {
                replicas: 3,
                reason: Reason::Load
            }
        );
        assert_eq!(
            wanted(&spec, load(1000, 0)),
            Decision {
                replicas: 10,
                reason: Reason::AtMaximum
            }
        );
    }

    #[test]
    fn zero_minimum_idles_at_zero_and_one_task_wakes_a_worker() {
        let spec = spec(0, 3, 10);
        assert_eq!(
            wanted(&spec, load(0, 0)),
            Decision {
                replicas: 0,
                reason: Reason::Idle
            }
        );
        assert_eq!(wanted(&spec, load(1, 0)).replicas, 1);
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_out_the_window() {
        let spec = spec(0, 10, 1);
        let mut scaler = Scaler::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(scaler.decide(&spec, load(5, 0), start).replicas, 5);
        let later = start + Duration::from_secs(30);
        assert_eq!(
            scaler.decide(&spec, load(0, 1), later),
            Decision {
                replicas: 5,
                reason: Reason::Stabilizing
            }
        );
        assert_eq!(
            scaler.decide(&spec, load(8, 0), later).replicas,
            8,
            "up at once, even while stabilizing"
        );
        let after_window = later + Duration::from_secs(61);
        assert_eq!(
            scaler.decide(&spec, load(0, 0), after_window),
            Decision {
                replicas: 0,
                reason: Reason::Idle
            }
        );
    }

    #[test]
    fn a_lowered_maximum_applies_at_once() {
        let mut scaler = Scaler::new(Duration::from_secs(60));
        let now = Instant::now();
        scaler.decide(&spec(0, 10, 1), load(10, 0), now);
        assert_eq!(
            scaler
                .decide(&spec(0, 2, 1), load(0, 0), now + Duration::from_secs(1))
                .replicas,
            2
        );
    }
}
