//! What the router remembers per target, shared by all worker threads: its
//! circuit breaker and a moving average of its time to first token. One
//! `Mutex` per target (held for a few field updates, never across I/O), in
//! a map that only grows, up to [`MAX_TRACKED`] targets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::breaker::{Admission, Breaker, BreakerSettings, BreakerState, Report, Transitions};
use super::Target;

/// Most targets tracked. Clients name native models freely, so the map is
/// bounded; a target beyond it has no breaker (always admitted) and no
/// latency samples.
pub const MAX_TRACKED: usize = 4096;

/// Weight of a new time-to-first-token sample in the moving average.
pub const TTFT_ALPHA: f64 = 0.3;

#[derive(Debug)]
struct Entry {
    breaker: Breaker,
    ttft: Option<Duration>,
}

/// One target's state, for metrics and `tollgate status`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetStatus {
    /// The target.
    pub target: Target,
    /// Its breaker's state now.
    pub state: BreakerState,
    /// Its breaker's transitions so far.
    pub transitions: Transitions,
    /// The moving average of its time to first token, if measured.
    pub ttft: Option<Duration>,
}

/// Per-target breakers and latency averages.
#[derive(Debug)]
pub struct Health {
    settings: BreakerSettings,
    map: RwLock<HashMap<Target, Arc<Mutex<Entry>>>>,
}

impl Health {
    /// Empty: every target closed, unmeasured.
    pub fn new(settings: BreakerSettings) -> Health {
        Health {
            settings,
            map: RwLock::new(HashMap::new()),
        }
    }

    fn entry(&self, t: &Target) -> Option<Arc<Mutex<Entry>>> {
        if let Some(e) = read(&self.map).get(t) {
            return Some(Arc::clone(e));
        }
        let mut map = write(&self.map);
        if map.len() >= MAX_TRACKED && !map.contains_key(t) {
            return None;
        }
        let e = map.entry(t.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Entry {
                breaker: Breaker::new(self.settings),
                ttft: None,
            }))
        });
        Some(Arc::clone(e))
    }

    fn with<R>(&self, t: &Target, untracked: R, f: impl FnOnce(&mut Entry) -> R) -> R {
        match self.entry(t) {
            Some(e) => f(&mut e.lock().unwrap_or_else(|p| p.into_inner())),
            None => untracked,
        }
    }

    /// Whether `t`'s breaker would admit an attempt at `now`.
    pub fn admits(&self, t: &Target, now: Instant) -> bool {
        self.with(t, true, |e| e.breaker.admits(now))
    }

    /// Admits an attempt on `t` at `now`, if its breaker lets it through.
    pub fn acquire(&self, t: &Target, now: Instant) -> Option<Admission> {
        self.with(t, Some(Admission::Normal), |e| e.breaker.acquire(now))
    }

    /// Records an admitted attempt's result.
    pub fn record(&self, t: &Target, admission: Admission, report: Report, now: Instant) {
        self.with(t, (), |e| e.breaker.record(admission, report, now));
    }

    /// How long until `t`'s breaker half-opens (zero unless open).
    pub fn opens_in(&self, t: &Target, now: Instant) -> Duration {
        self.with(t, Duration::ZERO, |e| e.breaker.opens_in(now))
    }

    /// Adds a time-to-first-token sample of `t`.
    pub fn observe_ttft(&self, t: &Target, sample: Duration) {
        self.with(t, (), |e| {
            e.ttft = Some(match e.ttft {
                None => sample,
                Some(avg) => avg.mul_f64(1.0 - TTFT_ALPHA) + sample.mul_f64(TTFT_ALPHA),
            });
        });
    }

    /// The moving average of `t`'s time to first token, if measured.
    pub fn ttft(&self, t: &Target) -> Option<Duration> {
        read(&self.map)
            .get(t)
            .and_then(|e| e.lock().unwrap_or_else(|p| p.into_inner()).ttft)
    }

    /// Every tracked target's state at `now`, sorted by target.
    pub fn snapshot(&self, now: Instant) -> Vec<TargetStatus> {
        let entries: Vec<(Target, Arc<Mutex<Entry>>)> = read(&self.map)
            .iter()
            .map(|(t, e)| (t.clone(), Arc::clone(e)))
            .collect();
        let mut out: Vec<TargetStatus> = entries
            .into_iter()
            .map(|(target, e)| {
                let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                TargetStatus {
                    target,
                    state: e.breaker.state(now),
                    transitions: e.breaker.transitions(),
                    ttft: e.ttft,
                }
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }
}

// A poisoned lock only means another thread panicked mid-update of a few
// counters; the data is still usable.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_of_time_to_first_token() {
        let h = Health::new(BreakerSettings::default());
        let t = Target::new("anthropic", "claude-sonnet-4-5");
        assert_eq!(h.ttft(&t), None);
        h.observe_ttft(&t, Duration::from_millis(1000));
        assert_eq!(h.ttft(&t), Some(Duration::from_millis(1000)));
        h.observe_ttft(&t, Duration::from_millis(2000));
        assert_eq!(h.ttft(&t), Some(Duration::from_millis(1300)));
    }

    #[test]
    fn shared_breakers_and_a_snapshot() {
        let h = Arc::new(Health::new(BreakerSettings {
            failures: 2,
            ..BreakerSettings::default()
        }));
        let t = Target::new("openai", "gpt-5");
        let now = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let h = Arc::clone(&h);
                let t = t.clone();
                s.spawn(move || {
                    let a = h.acquire(&t, now).unwrap();
                    h.record(&t, a, Report::Failure, now);
                });
            }
        });
        assert!(!h.admits(&t, now));
        let snap = h.snapshot(now);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].state, BreakerState::Open);
        assert_eq!(snap[0].transitions.opened, 1);
    }
}
