//! Rate limits: requests-per-minute and tokens-per-minute token buckets.
//!
//! A bucket holds up to its per-minute figure and refills continuously
//! (`rpm / 60` a second). A request takes one request and its estimated
//! tokens from every bucket that applies, all or nothing; when the answer
//! is known the token charge is corrected to the real count. The state is
//! one mutex over small maps: the critical section is a few arithmetic
//! operations per rule, far below a microsecond.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::identity::Identity;
use crate::scope::Scope;

/// What a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleScope {
    /// A scope of identities (`[[rate_limits]]`).
    Scope(Scope),
    /// Requests made with one gateway key (its `rpm` / `tpm`).
    Key(String),
}

/// One rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub scope: RuleScope,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    pub tpm: Option<u64>,
}

impl Rule {
    /// `account:acme`, `key:ci`…: names the rule in metrics and messages.
    pub fn label(&self) -> String {
        match &self.scope {
            RuleScope::Scope(s) => s.to_string(),
            RuleScope::Key(k) => format!("key:{k}"),
        }
    }

    fn instance<'a>(&self, id: &'a Identity) -> Option<&'a str> {
        match &self.scope {
            RuleScope::Scope(s) => s.instance(id),
            RuleScope::Key(k) => (id.key.as_deref() == Some(k.as_str())).then_some(""),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: u64, now: Instant) -> Bucket {
        Bucket {
            capacity: capacity as f64,
            level: capacity as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * self.capacity / 60.0).min(self.capacity);
        // Callers' instants may arrive out of order: time never runs back.
        self.at = self.at.max(now);
    }

    /// Time until `need` is available (zero when it is).
    fn wait_for(&self, need: f64) -> Duration {
        let missing = need - self.level;
        if missing <= 0.0 || self.capacity <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing * 60.0 / self.capacity)
    }

    fn until_full(&self) -> Duration {
        self.wait_for(self.capacity)
    }
}

#[derive(Clone, Copy, Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Which figure ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// A refused request: what to tell the client.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimited {
    /// The rule that refused (`account:acme`).
    pub rule: String,
    pub kind: LimitKind,
    /// When to retry.
    pub retry_after: Duration,
    /// The rule's figures, for `x-ratelimit-*` headers.
    pub requests: Option<Figures>,
    pub tokens: Option<Figures>,
}

/// A bucket's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Token charges of an admitted request, to correct with the real count.
#[derive(Debug, Default)]
pub struct Admission {
    charged: Vec<(usize, String, f64)>,
}

/// Buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 10_000;

/// The rate limiter.
pub struct Limiter {
    rules: Vec<Rule>,
    state: Mutex<HashMap<(usize, String), Buckets>>,
}

impl Limiter {
    pub fn new(rules: Vec<Rule>) -> Limiter {
        Limiter {
            rules,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// A limiter over `rules` that keeps this one's buckets for every rule
    /// it still has unchanged: a new snapshot does not refill a window that
    /// a burst just emptied.
    pub fn succeed(&self, rules: Vec<Rule>) -> Limiter {
        let mut carried = HashMap::new();
        if let Ok(old) = self.state.lock() {
            for ((i, instance), b) in old.iter() {
                let Some(rule) = self.rules.get(*i) else {
                    continue;
                };
                if let Some(j) = rules.iter().position(|r| r == rule) {
                    carried.insert((j, instance.clone()), *b);
                }
            }
        }
        Limiter {
            rules,
            state: Mutex::new(carried),
        }
    }

    /// True when no rule is configured (the stage is skipped).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Admits a request estimated at `tokens`, or says why not. A request
    /// larger than a whole minute of tokens is charged the whole minute
    /// rather than refused forever.
    pub fn admit(
        &self,
        id: &Identity,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, RateLimited> {
        let applicable: Vec<(usize, &str)> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.instance(id).map(|inst| (i, inst)))
            .collect();
        if applicable.is_empty() {
            return Ok(Admission::default());
        }
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.len() > MAX_BUCKETS {
            // `account:*` / `workload:*` make a bucket per name a client
            // sends: drop the full ones (a full bucket is the same as none).
            state.retain(|_, b| {
                let full = |x: &mut Option<Bucket>| {
                    x.as_mut().is_none_or(|x| {
                        x.refill(now);
                        x.level >= x.capacity
                    })
                };
                !(full(&mut b.requests) && full(&mut b.tokens))
            });
        }
        // Check every bucket first, then take from all: all or nothing. The
        // refusal reports the rule with the longest wait, so one retry-after
        // is enough.
        let mut worst: Option<RateLimited> = None;
        for &(i, inst) in &applicable {
            let rule = &self.rules[i];
            let b = state
                .entry((i, inst.to_string()))
                .or_insert_with(|| Buckets {
                    requests: rule.rpm.map(|n| Bucket::full(n, now)),
                    tokens: rule.tpm.map(|n| Bucket::full(n, now)),
                });
            let mut refused = None;
            if let Some(r) = b.requests.as_mut() {
                r.refill(now);
                if r.level < 1.0 {
                    refused = Some((LimitKind::Requests, r.wait_for(1.0)));
                }
            }
            if let Some(t) = b.tokens.as_mut() {
                t.refill(now);
                let need = (tokens as f64).min(t.capacity);
                let wait = t.wait_for(need);
                if !wait.is_zero() && refused.is_none_or(|(_, w)| wait > w) {
                    refused = Some((LimitKind::Tokens, wait));
                }
            }
            if let Some((kind, wait)) = refused {
                let fig = |b: &Option<Bucket>, n: Option<u64>| {
                    b.as_ref().zip(n).map(|(b, limit)| Figures {
                        limit,
                        remaining: b.level.max(0.0) as u64,
                        reset: b.until_full(),
                    })
                };
                let limited = RateLimited {
                    rule: rule.label(),
                    kind,
                    // Whole seconds for `retry-after`, never zero.
                    retry_after: wait.max(Duration::from_millis(1)),
                    requests: fig(&b.requests, rule.rpm),
                    tokens: fig(&b.tokens, rule.tpm),
                };
                if worst
                    .as_ref()
                    .is_none_or(|w| limited.retry_after > w.retry_after)
                {
                    worst = Some(limited);
                }
            }
        }
        if let Some(limited) = worst {
            return Err(limited);
        }
        let mut admission = Admission::default();
        for (i, inst) in applicable {
            if let Some(b) = state.get_mut(&(i, inst.to_string())) {
                if let Some(r) = b.requests.as_mut() {
                    r.level -= 1.0;
                }
                if let Some(t) = b.tokens.as_mut() {
                    let need = (tokens as f64).min(t.capacity);
                    t.level -= need;
                    admission.charged.push((i, inst.to_string(), need));
                }
            }
        }
        Ok(admission)
    }

    /// Corrects an admission's token charge to the real `tokens` (a
    /// refund when fewer were used, a debt when more).
    pub fn settle(&self, admission: &Admission, tokens: u64, now: Instant) {
        if admission.charged.is_empty() {
            return;
        }
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (i, inst, charged) in &admission.charged {
            if let Some(t) = state
                .get_mut(&(*i, inst.clone()))
                .and_then(|b| b.tokens.as_mut())
            {
                t.refill(now);
                t.level = (t.level + charged - tokens as f64).min(t.capacity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(account: &str) -> Identity {
        Identity {
            account: account.into(),
            ..Identity::default()
        }
    }

    fn rule(scope: &str, rpm: Option<u64>, tpm: Option<u64>) -> Rule {
        Rule {
            scope: RuleScope::Scope(Scope::parse(scope, true).unwrap()),
            rpm,
            tpm,
        }
    }

    #[test]
    fn requests_per_minute_refill() {
        let l = Limiter::new(vec![rule("account:acme", Some(2), None)]);
        let t0 = Instant::now();
        assert!(l.admit(&id("acme"), 0, t0).is_ok());
        assert!(l.admit(&id("acme"), 0, t0).is_ok());
        let err = l.admit(&id("acme"), 0, t0).unwrap_err();
        assert_eq!(err.kind, LimitKind::Requests);
        assert_eq!(err.rule, "account:acme");
        // 2 per minute: one more after 30 s.
        assert!((29.9..=30.1).contains(&err.retry_after.as_secs_f64()));
        assert_eq!(err.requests.unwrap().remaining, 0);
        assert!(
            l.admit(&id("other"), 0, t0).is_ok(),
            "other accounts are not limited"
        );
        assert!(l
            .admit(&id("acme"), 0, t0 + Duration::from_secs(30))
            .is_ok());
    }

    #[test]
    fn tokens_all_or_nothing_and_settle() {
        let l = Limiter::new(vec![rule("account:*", Some(100), Some(1000))]);
        let t0 = Instant::now();
        let a = l.admit(&id("acme"), 800, t0).unwrap();
        let err = l.admit(&id("acme"), 300, t0).unwrap_err();
        assert_eq!(err.kind, LimitKind::Tokens);
        // A refused request took nothing: the request bucket is untouched.
        assert_eq!(err.requests.unwrap().remaining, 99);
        // The call used only 100 tokens: 700 come back.
        l.settle(&a, 100, t0);
        assert!(l.admit(&id("acme"), 800, t0).is_ok());
        // Separate buckets per account.
        assert!(l.admit(&id("beta"), 900, t0).is_ok());
        // Larger than a minute's worth: charged the minute, not refused forever.
        let l = Limiter::new(vec![rule("all", None, Some(10))]);
        assert!(l.admit(&id("x"), 50, t0).is_ok());
        assert!(l.admit(&id("x"), 1, t0).is_err());
    }

    #[test]
    fn the_longest_wait_is_reported() {
        let l = Limiter::new(vec![
            rule("all", Some(60), None),
            rule("account:acme", Some(1), None),
        ]);
        let t0 = Instant::now();
        assert!(l.admit(&id("acme"), 0, t0).is_ok());
        let err = l.admit(&id("acme"), 0, t0).unwrap_err();
        assert_eq!(err.rule, "account:acme");
        assert!(err.retry_after >= Duration::from_secs(59));
    }

    #[test]
    fn full_buckets_are_dropped_when_there_are_many() {
        let l = Limiter::new(vec![rule("account:*", Some(10), None)]);
        let t0 = Instant::now();
        for i in 0..=MAX_BUCKETS {
            assert!(l.admit(&id(&format!("a{i}")), 0, t0).is_ok());
        }
        // A minute later every bucket is full again: the next admission prunes them.
        assert!(l
            .admit(&id("late"), 0, t0 + Duration::from_secs(60))
            .is_ok());
        assert!(l.state.lock().unwrap().len() <= 1);
    }

    #[test]
    fn a_successor_keeps_the_windows_of_unchanged_rules() {
        let now = Instant::now();
        let l = Limiter::new(vec![rule("account:acme", Some(1), None)]);
        assert!(l.admit(&id("acme"), 1, now).is_ok());
        assert!(l.admit(&id("acme"), 1, now).is_err());
        // Same rule, another added: still empty. A changed rule starts afresh.
        let next = l.succeed(vec![
            rule("account:beta", Some(1), None),
            rule("account:acme", Some(1), None),
        ]);
        assert!(next.admit(&id("acme"), 1, now).is_err());
        assert!(next.admit(&id("beta"), 1, now).is_ok());
        let changed = next.succeed(vec![rule("account:acme", Some(2), None)]);
        assert!(changed.admit(&id("acme"), 1, now).is_ok());
    }

    #[test]
    fn per_key_rules() {
        let l = Limiter::new(vec![Rule {
            scope: RuleScope::Key("ci".into()),
            rpm: Some(1),
            tpm: None,
        }]);
        let t0 = Instant::now();
        let mut with_key = id("acme");
        with_key.key = Some("ci".into());
        assert!(l.admit(&with_key, 0, t0).is_ok());
        assert!(l.admit(&with_key, 0, t0).is_err());
        assert!(l.admit(&id("acme"), 0, t0).is_ok());
    }
}
