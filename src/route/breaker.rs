//! A circuit breaker per target: closed → open after `failures` failures
//! within `window` → half-open after `open_for`, where at most `probes`
//! attempts are let through at once → closed on a probe's success, open
//! again on a probe's failure. Time is passed in, so tests need no sleep.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The breaker's settings (`[routing] breaker_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    /// The sliding window failures are counted in.
    pub window: Duration,
    /// How long it stays open before half-opening.
    pub open_for: Duration,
    /// Attempts let through at once while half-open.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(30),
            probes: 1,
        }
    }
}

/// A breaker's state, as metrics and `tollgate status` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests pass.
    Closed,
    /// Requests are refused until `open_for` has passed.
    Open,
    /// A limited number of probes pass.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How many times a breaker entered each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Into open (from closed or half-open).
    pub opened: u64,
    /// Into half-open.
    pub half_opened: u64,
    /// Into closed (from half-open).
    pub closed: u64,
}

/// How an attempt got through: its report must say the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The breaker was closed.
    Normal,
    /// A half-open probe; it holds one of the probe slots until reported.
    Probe,
}

/// What an attempt tells the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The target answered.
    Success,
    /// The target failed ([`super::retry::is_target_failure`]).
    Failure,
    /// Says nothing about the target (a client error, an untranslatable
    /// request, an attempt never made): frees a probe slot only.
    Neutral,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

/// One target's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Inner,
    /// Failure times within the window (closed state only).
    failures: VecDeque<Instant>,
    transitions: Transitions,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Inner::Closed,
            failures: VecDeque::new(),
            transitions: Transitions::default(),
        }
    }

    /// The state at `now` (an open breaker whose time is up half-opens).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.tick(now);
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The transitions so far.
    pub fn transitions(&self) -> Transitions {
        self.transitions
    }

    /// Whether an attempt would be admitted at `now`, without taking a slot.
    pub fn admits(&mut self, now: Instant) -> bool {
        self.tick(now);
        match self.inner {
            Inner::Closed => true,
            Inner::Open { .. } => false,
            Inner::HalfOpen { in_flight } => in_flight < self.settings.probes,
        }
    }

    /// How long until an open breaker half-opens (zero when it is not open).
    pub fn opens_in(&mut self, now: Instant) -> Duration {
        self.tick(now);
        match self.inner {
            Inner::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Admits an attempt at `now`, taking a probe slot when half-open.
    pub fn acquire(&mut self, now: Instant) -> Option<Admission> {
        self.tick(now);
        match &mut self.inner {
            Inner::Closed => Some(Admission::Normal),
            Inner::Open { .. } => None,
            Inner::HalfOpen { in_flight } if *in_flight < self.settings.probes => {
                *in_flight += 1;
                Some(Admission::Probe)
            }
            Inner::HalfOpen { .. } => None,
        }
    }

    /// Records how an admitted attempt went.
    pub fn record(&mut self, admission: Admission, report: Report, now: Instant) {
        self.tick(now);
        match (self.inner, admission) {
            (Inner::HalfOpen { in_flight }, Admission::Probe) => {
                let in_flight = in_flight.saturating_sub(1);
                self.inner = Inner::HalfOpen { in_flight };
                match report {
                    Report::Success => {
                        self.inner = Inner::Closed;
                        self.failures.clear();
                        self.transitions.closed += 1;
                    }
                    Report::Failure => self.open(now),
                    Report::Neutral => {}
                }
            }
            (Inner::Closed, Admission::Normal) if report == Report::Failure => {
                self.failures.push_back(now);
                self.forget_old(now);
                if self.failures.len() >= self.settings.failures as usize {
                    self.open(now);
                }
            }
            // An attempt admitted before the state changed (a slow one
            // finishing while open, or a late probe after closing) says
            // nothing about the current state.
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.inner = Inner::Open {
            until: now + self.settings.open_for,
        };
        self.failures.clear();
        self.transitions.opened += 1;
    }

    fn tick(&mut self, now: Instant) {
        if let Inner::Open { until } = self.inner {
            if now >= until {
                self.inner = Inner::HalfOpen { in_flight: 0 };
                self.transitions.half_opened += 1;
            }
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&t) = self.failures.front() {
            if now.saturating_duration_since(t) >= self.settings.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            probes: 2,
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn fail(b: &mut Breaker, at: Instant) {
        let a = b.acquire(at).unwrap();
        b.record(a, Report::Failure, at);
    }

    #[test]
    fn opens_after_n_failures_in_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        fail(&mut b, t0);
        fail(&mut b, secs(t0, 5));
        // The first failure has left the window.
        fail(&mut b, secs(t0, 11));
        assert_eq!(b.state(secs(t0, 11)), BreakerState::Closed);
        fail(&mut b, secs(t0, 12));
        assert_eq!(b.state(secs(t0, 12)), BreakerState::Open);
        assert_eq!(b.acquire(secs(t0, 13)), None);
        assert_eq!(b.opens_in(secs(t0, 13)), Duration::from_secs(29));
        assert_eq!(b.transitions().opened, 1);
    }

    #[test]
    fn successes_and_neutral_reports_do_not_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..10 {
            let a = b.acquire(secs(t0, i)).unwrap();
            b.record(a, Report::Neutral, secs(t0, i));
            b.record(a, Report::Success, secs(t0, i));
        }
        assert_eq!(b.state(secs(t0, 10)), BreakerState::Closed);
    }

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        b
    }

    #[test]
    fn half_open_lets_a_limited_number_of_probes_through() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t = secs(t0, 30);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        let p1 = b.acquire(t).unwrap();
        let p2 = b.acquire(t).unwrap();
        assert_eq!((p1, p2), (Admission::Probe, Admission::Probe));
        assert!(!b.admits(t));
        assert_eq!(b.acquire(t), None);
        // A neutral probe frees its slot without deciding anything.
        b.record(p1, Report::Neutral, t);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        assert!(b.admits(t));
        b.record(p2, Report::Success, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert_eq!(
            b.transitions(),
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 1
            }
        );
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t = secs(t0, 31);
        let p = b.acquire(t).unwrap();
        b.record(p, Report::Failure, t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(b.opens_in(t), Duration::from_secs(30));
        assert_eq!(b.transitions().opened, 2);
    }

    #[test]
    fn late_reports_of_normal_attempts_are_ignored_while_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        let slow = b.acquire(t0).unwrap();
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        b.record(slow, Report::Success, secs(t0, 1));
        assert_eq!(b.state(secs(t0, 1)), BreakerState::Open);
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
    }
}
