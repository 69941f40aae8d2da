//! One request's attempts over its plan: which candidate next, after how
//! long, or stop.
//!
//! Rules:
//! - Candidates are tried in plan order. After a retryable failure the next
//!   untried candidate is tried at once (a fallback: another provider does
//!   not share the first one's overload, so nothing to wait for).
//! - When every candidate was tried, a new round starts (a retry): the
//!   candidate ready soonest (ties: plan order), after the larger of the
//!   jittered backoff and that candidate's own `retry-after`.
//! - A candidate that answered "not again" (`x-should-retry: false`, a
//!   spend cap, a client error with `fallback_on_client_errors`, an
//!   untranslatable request) is not tried again in this request.
//! - At most `max_attempts` attempts (an untranslatable one is not
//!   counted: nothing was sent), and no attempt that would start after the
//!   deadline.
//! - A candidate whose breaker is open is skipped when the plan has more
//!   than one; when all are open the request stops with the time until
//!   the first half-opens.

use std::time::{Duration, Instant};

use super::breaker::{Admission, Report};
use super::health::Health;
use super::retry::{backoff, classify, is_target_failure, Class, Jitter, Outcome};
use super::{Candidate, Plan, Routing};

/// What the proxy does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send to a candidate, after a wait.
    Try(Step),
    /// No more attempts.
    Stop(StopReason),
}

/// One attempt to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Index into the plan's candidates.
    pub candidate: usize,
    /// Wait this long first.
    pub after: Duration,
    /// Why this attempt.
    pub kind: StepKind,
}

/// Why an attempt is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// The request's first attempt.
    First,
    /// Another candidate after a failure, in the same round.
    FallBack,
    /// A new round over candidates tried before, after a backoff.
    Retry,
}

impl StepKind {
    /// `first`, `fallback` or `retry` (logs, metrics, receipts).
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::First => "first",
            StepKind::FallBack => "fallback",
            StepKind::Retry => "retry",
        }
    }
}

/// Why the attempts ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The last attempt's answer reached (or is reaching) the client.
    Answered,
    /// The last answer is final (a client error, or a failure after the
    /// first byte): the client gets it.
    Final,
    /// `max_attempts` reached, or no candidate left to try: the client
    /// gets the last failure.
    Exhausted,
    /// The next attempt would start after the deadline.
    Deadline,
    /// Every candidate's breaker is open; the first half-opens after this.
    AllOpen {
        /// Time until the first breaker half-opens (a `retry-after`).
        retry_in: Duration,
    },
}

impl StopReason {
    /// `answered`, `final`, `exhausted`, `deadline` or `all_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Answered => "answered",
            StopReason::Final => "final",
            StopReason::Exhausted => "exhausted",
            StopReason::Deadline => "deadline",
            StopReason::AllOpen { .. } => "all_open",
        }
    }
}

/// One request's attempts: state between [`Attempts::first`] and the last
/// [`Attempts::report`].
#[derive(Debug)]
pub struct Attempts {
    plan: Plan,
    max_attempts: u32,
    deadline: Instant,
    backoff_base: Duration,
    backoff_max: Duration,
    fallback_on_client_errors: bool,
    /// Attempts sent so far.
    made: u32,
    /// Rounds started after the first.
    retries: u32,
    /// The attempt in flight and its breaker admission.
    current: Option<(usize, Admission)>,
    tried: Vec<bool>,
    /// Never again in this request.
    barred: Vec<bool>,
    /// Not before this instant (a `retry-after`).
    not_before: Vec<Option<Instant>>,
}

impl Attempts {
    /// The attempts of `plan` under `routing`, the clock starting at `now`.
    pub fn new(plan: Plan, routing: &Routing, now: Instant) -> Attempts {
        let n = plan.candidates.len();
        Attempts {
            plan,
            max_attempts: routing.max_attempts.max(1),
            deadline: now + routing.deadline,
            backoff_base: routing.backoff_base,
            backoff_max: routing.backoff_max,
            fallback_on_client_errors: routing.fallback_on_client_errors,
            made: 0,
            retries: 0,
            current: None,
            tried: vec![false; n],
            barred: vec![false; n],
            not_before: vec![None; n],
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Candidate `i` of the plan.
    pub fn candidate(&self, i: usize) -> Option<&Candidate> {
        self.plan.candidates.get(i)
    }

    /// Attempts sent so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Time left until the deadline (bounds each attempt's timeouts).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// The first attempt.
    pub fn first(&mut self, health: &Health, now: Instant) -> Next {
        self.pick(health, now, StepKind::First, Duration::ZERO)
    }

    /// Reports the outcome of the attempt in flight and says what next.
    /// `Outcome::Success` also feeds the target's time to first token.
    pub fn report(
        &mut self,
        health: &Health,
        outcome: &Outcome,
        first_byte_after: Option<Duration>,
        now: Instant,
        jitter: &mut dyn Jitter,
    ) -> Next {
        let Some((i, admission)) = self.current.take() else {
            return Next::Stop(StopReason::Exhausted);
        };
        let target = &self.plan.candidates[i].target;
        let report = match outcome {
            Outcome::Success => Report::Success,
            o if is_target_failure(o) => Report::Failure,
            _ => Report::Neutral,
        };
        health.record(target, admission, report, now);
        if let (Outcome::Success, Some(ttft)) = (outcome, first_byte_after) {
            health.observe_ttft(target, ttft);
        }
        if *outcome != Outcome::Untranslatable {
            self.made += 1;
        }
        match classify(outcome, self.fallback_on_client_errors) {
            Class::Done => return Next::Stop(StopReason::Answered),
            Class::Stop => return Next::Stop(StopReason::Final),
            Class::OtherTarget => self.barred[i] = true,
            Class::Retryable { retry_after } => {
                self.not_before[i] = retry_after.map(|d| now + d);
            }
        }
        if self.made >= self.max_attempts {
            return Next::Stop(StopReason::Exhausted);
        }
        if self.open_candidates().any(|c| !self.tried[c]) {
            // Untried candidates whose breakers are all open leave a new
            // round over the tried ones.
            if let next @ Next::Try(_) = self.pick(health, now, StepKind::FallBack, Duration::ZERO)
            {
                return next;
            }
        }
        let wait = backoff(self.backoff_base, self.backoff_max, self.retries, jitter);
        self.retries += 1;
        self.tried.fill(false);
        self.pick(health, now, StepKind::Retry, wait)
    }

    /// Candidates not barred.
    fn open_candidates(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.plan.candidates.len()).filter(|&c| !self.barred[c])
    }

    /// The next untried candidate that is ready soonest after `wait` and
    /// whose breaker admits it.
    fn pick(&mut self, health: &Health, now: Instant, kind: StepKind, wait: Duration) -> Next {
        let lone = self.plan.candidates.len() == 1;
        let mut ready: Vec<(Duration, usize)> = self
            .open_candidates()
            .filter(|&c| !self.tried[c])
            .map(|c| {
                let own =
                    self.not_before[c].map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                (wait.max(own), c)
            })
            .collect();
        if ready.is_empty() {
            return Next::Stop(StopReason::Exhausted);
        }
        // Stable: ties keep plan order.
        ready.sort_by_key(|&(after, _)| after);
        let mut retry_in: Option<Duration> = None;
        for (after, c) in ready {
            if now + after >= self.deadline {
                continue;
            }
            let target = &self.plan.candidates[c].target;
            let admission = match health.acquire(target, now) {
                Some(a) => a,
                None if lone => Admission::Normal,
                None => {
                    let opens = health.opens_in(target, now);
                    retry_in = Some(retry_in.map_or(opens, |r| r.min(opens)));
                    continue;
                }
            };
            self.tried[c] = true;
            self.current = Some((c, admission));
            return Next::Try(Step {
                candidate: c,
                after,
                kind,
            });
        }
        match retry_in {
            Some(retry_in) if kind == StepKind::First => {
                Next::Stop(StopReason::AllOpen { retry_in })
            }
            Some(_) => Next::Stop(StopReason::Exhausted),
            None => Next::Stop(StopReason::Deadline),
        }
    }
}
