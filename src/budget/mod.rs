//! Budgets that cannot be overshot: reserve the worst case before a request
//! is forwarded, settle to the real cost after it.
//!
//! Every budget that applies to a request is checked and reserved under one
//! lock, all or nothing, so concurrent requests can never together reserve
//! more than a ceiling holds: the sum of `spent + reserved` never passes
//! `limit`. Settling replaces a reservation by the real cost, which is never
//! more than the worst case the reservation priced (see [`estimate`]).
//!
//! Spend per period is durable with the usage journal
//! ([`crate::store::journal`]): a request's open record (journaled before it
//! is sent) carries what it reserved, its final record what it spent. The
//! journal's writer persists the changed periods to the `budgets` sled tree
//! ([`Ledger::persist_upto`]) together with the journal's watermark, and at
//! start-up adds back what the journal holds beyond that watermark
//! ([`Ledger::charge`]), so a crash never leaves less spend than was
//! billed. Periods are UTC calendar days and months; a reservation settles
//! in the period it was made in.

pub mod alerts;
pub mod estimate;

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus::{Gauge, IntCounter};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::meter::event::Charge;
use crate::meter::money::format_usd;
use crate::scope::Scope;
use alerts::{Alert, AlertSink};
use estimate::Estimate;

/// A budget's period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// A ceiling on each request's worst case.
    Request,
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "request" => Some(Period::Request),
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Request => "request",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period holding `unix_secs`: its key (`2026-11-23`, `2026-11`)
    /// and its `[start, end)` in unix seconds. `None` for `Request`.
    pub fn window(self, unix_secs: i64) -> Option<(String, i64, i64)> {
        let at = time::OffsetDateTime::from_unix_timestamp(unix_secs).ok()?;
        let date = at.date();
        let (key, start, end) = match self {
            Period::Request => return None,
            Period::Day => {
                let next = date.next_day()?;
                (format!("{date}"), date, next)
            }
            Period::Month => {
                let first = date.replace_day(1).ok()?;
                let next = match first.month() {
                    time::Month::December => {
                        time::Date::from_calendar_date(first.year() + 1, time::Month::January, 1)
                    }
                    m => time::Date::from_calendar_date(first.year(), m.next(), 1),
                }
                .ok()?;
                (
                    format!("{:04}-{:02}", first.year(), u8::from(first.month())),
                    first,
                    next,
                )
            }
        };
        let secs = |d: time::Date| d.midnight().assume_utc().unix_timestamp();
        Some((key, secs(start), secs(end)))
    }
}

/// What to do with a request whose worst case does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInsufficient {
    /// Refuse it (402 `budget_exceeded`).
    Deny,
    /// Lower its `max_tokens` to what the budget can pay for.
    Clamp,
}

/// One configured budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Unique; names it in errors, metrics and the store.
    pub name: String,
    pub scope: Scope,
    pub period: Period,
    /// The ceiling, nano-USD.
    pub limit_nusd: u64,
    /// Fractions of the limit that fire an alert when crossed, ascending.
    pub soft_thresholds: Vec<f64>,
    /// Where alerts are POSTed; `None` = metric and log only.
    pub alert_webhook: Option<String>,
    pub on_insufficient: OnInsufficient,
    /// Held by the control endpoint and spent from leases (see
    /// [`crate::lease`]): what to do when the lease is gone and the
    /// control endpoint cannot be reached. `None`: a local budget.
    pub lease: Option<OnUnreachable>,
    /// Removed by the control endpoint: applies to nothing, but keeps its
    /// slot (reservations name budgets by slot) and its stored spend.
    pub retired: bool,
}

/// What a leased budget does once its lease is spent (or expired) and the
/// control endpoint cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnreachable {
    /// Refuse what the lease cannot cover.
    Deny,
    /// Spend up to this sidecar's share of the budget's allowance beyond
    /// the lease, reported when the control endpoint is back.
    Allow,
}

/// This sidecar's lease of a budget period, as last granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Total grant for the period (consumption included), nano-USD.
    pub granted: u64,
    /// Spend allowed beyond `granted` while the control endpoint is unreachable.
    pub overdraft: u64,
    /// The limit the grant was made under (another one voids it).
    pub limit: u64,
    /// Good until (the renewal's send time plus its TTL).
    pub valid_until: std::time::Instant,
    /// Renew when the room left falls below this.
    pub low_water: u64,
}

/// A leased budget period as the renewal task sees it.
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub budget: String,
    pub period: String,
    pub limit_nusd: u64,
    pub consumed_nusd: u64,
    pub reserved_nusd: u64,
    /// The current lease, if any.
    pub held: Option<Held>,
    /// The largest worst case of a request waiting for a grant (0: none).
    pub need_nusd: u64,
    /// A request was refused for lack of lease: return the unused room.
    pub starved: bool,
    /// The largest worst case reserved lately (decays).
    pub peak_worst_nusd: u64,
}

/// The source of "now" (UTC unix seconds); injected in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// Per-budget metrics (handles resolved once, not per request).
#[derive(Clone)]
pub struct BudgetGauges {
    pub remaining_usd: Gauge,
    pub reserved_usd: Gauge,
    pub spent_usd: Gauge,
}

/// Metrics the ledger keeps, one entry per budget.
#[derive(Clone, Default)]
pub struct LedgerMetrics {
    pub gauges: Vec<BudgetGauges>,
    /// Alerts fired, per budget.
    pub alerts: Vec<IntCounter>,
}

/// Durable state of one budget period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    spent: u64,
    /// Bit i set: `soft_thresholds[i]` has fired this period.
    fired: u64,
}

#[derive(Debug)]
struct PeriodState {
    key: String,
    start: i64,
    end: i64,
    stored: Stored,
    reserved: u64,
    dirty: bool,
    /// Leased budgets: the lease and what the renewal task should know.
    lease: Option<Held>,
    need: u64,
    starved: bool,
    peak_worst: u64,
}

impl PeriodState {
    fn new(stored: Stored, key: String, start: i64, end: i64) -> PeriodState {
        PeriodState {
            key,
            start,
            end,
            stored,
            reserved: 0,
            dirty: false,
            lease: None,
            need: 0,
            starved: false,
            peak_worst: 0,
        }
    }

    /// What can still be reserved under `b`'s rules.
    fn room(&self, b: &Budget, unreachable: bool, now: std::time::Instant) -> u64 {
        let used = self.stored.spent.saturating_add(self.reserved);
        let cap = match b.lease {
            None => b.limit_nusd,
            Some(on) => match &self.lease {
                Some(l) if l.limit == b.limit_nusd => {
                    if unreachable && on == OnUnreachable::Allow {
                        l.granted.saturating_add(l.overdraft)
                    } else if now < l.valid_until {
                        l.granted
                    } else {
                        0
                    }
                }
                _ => 0,
            },
        };
        cap.saturating_sub(used)
    }
}

#[derive(Debug, Default)]
struct BudgetState {
    current: Option<PeriodState>,
    /// Earlier periods that still hold reservations.
    older: Vec<PeriodState>,
}

/// A refusal: which budget, and what it has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub budget: String,
    pub scope: String,
    pub period: Period,
    pub limit_nusd: u64,
    /// What the budget could still reserve.
    pub remaining_nusd: u64,
    /// The worst case that did not fit.
    pub needed_nusd: u64,
    /// The budget is leased and its lease could not cover the request.
    pub lease: bool,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.period {
            Period::Request => "per-request ceiling".to_string(),
            p => format!("{} budget", p.as_str()),
        };
        write!(
            f,
            "budget {:?} ({}, {per} of ${}) has ${} remaining; this request can cost up to ${}",
            self.budget,
            self.scope,
            format_usd(self.limit_nusd),
            format_usd(self.remaining_nusd),
            format_usd(self.needed_nusd),
        )
    }
}

/// Money held for one request until it settles.
#[derive(Debug, Default)]
pub struct Reservation {
    /// (budget index, period key, amount) for each stateful budget.
    parts: Vec<(usize, String, u64)>,
    /// The worst case reserved, nano-USD.
    pub amount: u64,
    /// Budgets with a per-request ceiling that applied.
    request_ceilings: Vec<usize>,
}

impl Reservation {
    /// True when no budget applied.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.request_ceilings.is_empty()
    }
}

/// The answer to [`Ledger::reserve`].
#[derive(Debug)]
pub enum Decision {
    /// Forward as asked.
    Admit(Reservation),
    /// Forward with `max_tokens` lowered to this, for the named budget.
    Clamp(Reservation, u64, String),
    Deny(Denied),
    /// A leased budget's lease cannot cover it yet: a grant was asked for;
    /// try again when one lands (see [`Ledger::reserve_or_wait`]).
    AwaitLease,
}

/// A budget's figures now, for `tollgate budget status` and `/budgets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub scope: String,
    pub period: String,
    /// The current period's key (`""` for per-request ceilings).
    pub period_key: String,
    pub limit_nusd: u64,
    pub spent_nusd: u64,
    pub reserved_nusd: u64,
    pub remaining_nusd: u64,
}

impl Status {
    fn of(b: &Budget, period_key: String, spent: u64, reserved: u64) -> Status {
        Status {
            name: b.name.clone(),
            scope: b.scope.to_string(),
            period: b.period.as_str().into(),
            period_key,
            limit_nusd: b.limit_nusd,
            spent_nusd: spent,
            reserved_nusd: reserved,
            remaining_nusd: b.limit_nusd.saturating_sub(spent).saturating_sub(reserved),
        }
    }
}

/// Where spend per budget and period is kept (sled's `SpendTree` in the
/// sidecar). Records are opaque here; the watermark is the usage journal's
/// (see `crate::store::journal`), written after the spend.
pub trait SpendRecords: Send + Sync {
    /// The record of `budget` in `period`.
    fn get(&self, budget: &str, period: &str) -> Result<Option<Vec<u8>>, SpendError>;
    /// Writes records `(budget, period, record)` and then, when given, the
    /// watermark. After a crash the store holds a prefix of its writes: a
    /// stored watermark implies the records written with it; newer records
    /// under an older watermark are fine (recovery charges the finals past
    /// the watermark again: over, never under).
    fn put(
        &self,
        records: &[(&str, &str, Vec<u8>)],
        watermark: Option<u64>,
    ) -> Result<(), SpendError>;
    /// The stored watermark (0: none).
    fn watermark(&self) -> Result<u64, SpendError>;
}

/// The spend store failed.
#[derive(Debug, thiserror::Error)]
#[error("budget spend store: {0}")]
pub struct SpendError(pub String);

/// Budgets and their state.
pub struct Ledger {
    /// Append-only slots: a budget keeps its index for life, so a
    /// reservation's parts stay valid across a sync that changes the set.
    budgets: arc_swap::ArcSwap<Vec<Budget>>,
    /// Names of the budgets that came from the control endpoint.
    synced: Mutex<std::collections::BTreeSet<String>>,
    state: Mutex<Vec<BudgetState>>,
    store: Option<Arc<dyn SpendRecords>>,
    clock: Arc<dyn Clock>,
    alerts: AlertSink,
    metrics: LedgerMetrics,
    /// Wakes the lease renewal task (set once it runs).
    lease_wake: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The last renewal failed to reach the control endpoint.
    unreachable: std::sync::atomic::AtomicBool,
}

fn load(store: Option<&dyn SpendRecords>, budget: &str, period: &str) -> Stored {
    let Some(store) = store else {
        return Stored::default();
    };
    match store.get(budget, period) {
        Ok(Some(bytes)) => rmp_serde::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(budget, period, error = %e, "unreadable budget state; starting the period from zero");
            Stored::default()
        }),
        Ok(None) => Stored::default(),
        Err(e) => {
            tracing::error!(budget, period, error = %e, "reading budget state failed");
            Stored::default()
        }
    }
}

impl Ledger {
    pub fn new(
        budgets: Vec<Budget>,
        store: Option<Arc<dyn SpendRecords>>,
        clock: Arc<dyn Clock>,
        alerts: AlertSink,
        metrics: LedgerMetrics,
    ) -> Ledger {
        let state = budgets.iter().map(|_| BudgetState::default()).collect();
        let ledger = Ledger {
            budgets: arc_swap::ArcSwap::from_pointee(budgets),
            synced: Mutex::new(std::collections::BTreeSet::new()),
            state: Mutex::new(state),
            store,
            clock,
            alerts,
            metrics,
            lease_wake: std::sync::OnceLock::new(),
            unreachable: std::sync::atomic::AtomicBool::new(false),
        };
        // Load the current periods now so the gauges are right from the start.
        let now = ledger.clock.now();
        let mut state = ledger.lock();
        for i in 0..ledger.budgets.load().len() {
            ledger.roll(&mut state[i], i, now);
            ledger.update_gauges(&state[i], i);
        }
        drop(state);
        ledger
    }

    /// The budgets in force (local and synced).
    pub fn budgets(&self) -> Vec<Budget> {
        self.budgets
            .load()
            .iter()
            .filter(|b| !b.retired)
            .cloned()
            .collect()
    }

    /// True when no budget is in force (the stage is skipped).
    pub fn is_empty(&self) -> bool {
        self.budgets.load().iter().all(|b| b.retired)
    }

    /// Puts the control endpoint's budgets in force: changed ones in
    /// place (their spend so far is kept), new ones added, missing ones
    /// retired. A synced budget never replaces a local one of the same name.
    pub fn sync_budgets(&self, synced: Vec<Budget>) {
        let mut state = self.lock();
        let mut names = match self.synced.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let mut list: Vec<Budget> = (**self.budgets.load()).clone();
        for b in list.iter_mut() {
            if names.contains(&b.name) && !synced.iter().any(|s| s.name == b.name) {
                b.retired = true;
            }
        }
        let now = self.clock.now();
        for b in synced {
            match list.iter().position(|x| x.name == b.name) {
                Some(i) if !names.contains(&b.name) => {
                    tracing::warn!(budget = %b.name, "a synced budget has a local budget's name; the local one stays");
                    let _ = i;
                }
                Some(i) => {
                    if list[i].period != b.period {
                        // Another period: its state starts from the store.
                        state[i] = BudgetState::default();
                    }
                    list[i] = b;
                }
                None => {
                    names.insert(b.name.clone());
                    list.push(b);
                    state.push(BudgetState::default());
                }
            }
        }
        self.budgets.store(Arc::new(list));
        for i in 0..state.len() {
            self.roll(&mut state[i], i, now);
            self.update_gauges(&state[i], i);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BudgetState>> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Moves budget `i` to the period holding `now`, keeping the old one
    /// while reservations are outstanding in it.
    fn roll(&self, st: &mut BudgetState, i: usize, now: i64) {
        if st
            .current
            .as_ref()
            .is_some_and(|c| now >= c.start && now < c.end)
        {
            return;
        }
        let budgets = self.budgets.load();
        let Some(b) = budgets.get(i) else {
            return;
        };
        let Some((key, start, end)) = b.period.window(now) else {
            return;
        };
        if let Some(old) = st.current.take() {
            if old.reserved > 0 || old.dirty {
                st.older.push(old);
            }
        }
        // A clock that went back finds its period among the older ones.
        let pos = st.older.iter().position(|p| p.key == key);
        st.current = Some(match pos {
            Some(pos) => st.older.swap_remove(pos),
            None => PeriodState::new(load(self.store.as_deref(), &b.name, &key), key, start, end),
        });
    }

    /// Reserves the worst case of a request against every budget that
    /// applies to `id`, or refuses it.
    pub fn reserve(&self, id: &Identity, est: &Estimate) -> Decision {
        self.reserve_with(id, est, false)
    }

    /// [`Ledger::reserve`], except that when only a leased budget's lease
    /// is short it asks the renewal task for a grant and answers
    /// [`Decision::AwaitLease`] instead of clamping or refusing.
    pub fn reserve_or_wait(&self, id: &Identity, est: &Estimate) -> Decision {
        self.reserve_with(id, est, true)
    }

    /// Reserves a batch: `total` (every item's worst case) against each
    /// period budget, while a per-request ceiling applies to each item
    /// (`largest` is the dearest item's worst case). All or nothing; a
    /// clamp budget that is short refuses (a batch's items are not
    /// rewritten). `may_wait` as in [`Ledger::reserve_or_wait`].
    pub fn reserve_batch(
        &self,
        id: &Identity,
        total: u64,
        largest: u64,
        may_wait: bool,
    ) -> Decision {
        let est = Estimate {
            input_tokens: 0,
            typical_tokens: 0,
            max_tokens: 0,
            choices: 1,
            // No output to clamp: what does not fit is refused.
            input_nusd: total,
            output_rate: 0,
            worst_nusd: total,
        };
        self.reserve_inner(id, &est, may_wait, largest)
    }

    /// Holds again what a reservation held before a restart (a batch still
    /// open at the provider): `charges` name the budget periods and the
    /// amount; nothing is checked (the money was reserved before). Budgets
    /// no longer configured are skipped.
    pub fn hold(&self, charges: &[Charge]) -> Reservation {
        let mut res = Reservation::default();
        self.with_periods(charges, "a held batch", |i, p, c| {
            p.reserved = p.reserved.saturating_add(c.nusd);
            res.parts.push((i, c.period.clone(), c.nusd));
            res.amount = res.amount.max(c.nusd);
        });
        res
    }

    fn reserve_with(&self, id: &Identity, est: &Estimate, may_wait: bool) -> Decision {
        self.reserve_inner(id, est, may_wait, est.worst_nusd)
    }

    /// `per_request`: what a per-request ceiling is checked against.
    fn reserve_inner(
        &self,
        id: &Identity,
        est: &Estimate,
        may_wait: bool,
        per_request: u64,
    ) -> Decision {
        let budgets = self.budgets.load();
        let applicable: Vec<usize> = (0..budgets.len())
            .filter(|&i| !budgets[i].retired && budgets[i].scope.instance(id).is_some())
            .collect();
        if applicable.is_empty() {
            return Decision::Admit(Reservation::default());
        }
        let now = self.clock.now();
        let instant = std::time::Instant::now();
        let unreachable = self.is_unreachable();
        let mut state = self.lock();
        // What each budget can still take.
        let mut room = Vec::with_capacity(applicable.len());
        for &i in &applicable {
            let b = &budgets[i];
            let available = match b.period {
                Period::Request => b.limit_nusd,
                _ => {
                    self.roll(&mut state[i], i, now);
                    let cur = state[i].current.as_ref();
                    cur.map_or(0, |c| c.room(b, unreachable, instant))
                }
            };
            room.push((i, available));
        }
        // A short lease is asked to grow before anything is refused.
        let short_leases: Vec<usize> = room
            .iter()
            .filter(|&&(i, a)| a < est.worst_nusd && budgets[i].lease.is_some())
            .map(|&(i, _)| i)
            .collect();
        if !short_leases.is_empty() {
            if may_wait && !unreachable {
                for &i in &short_leases {
                    if let Some(c) = state[i].current.as_mut() {
                        c.need = c.need.max(est.worst_nusd);
                    }
                }
                drop(state);
                self.wake_leases();
                return Decision::AwaitLease;
            }
            if !may_wait {
                // Refused for good: the unused room goes back to the fleet.
                for &i in &short_leases {
                    if let Some(c) = state[i].current.as_mut() {
                        c.need = 0;
                        c.starved = true;
                    }
                }
                self.wake_leases();
            }
        }
        let mut amount = est.worst_nusd;
        let mut clamped: Option<(u64, usize)> = None;
        let need = |i: usize| match budgets[i].period {
            Period::Request => per_request,
            _ => est.worst_nusd,
        };
        let short: Vec<(usize, u64)> = room
            .iter()
            .copied()
            .filter(|&(i, available)| available < need(i))
            .collect();
        if !short.is_empty() {
            let deny = |(i, available): (usize, u64)| {
                let b = &budgets[i];
                Decision::Deny(Denied {
                    budget: b.name.clone(),
                    scope: b.scope.to_string(),
                    period: b.period,
                    limit_nusd: b.limit_nusd,
                    remaining_nusd: available,
                    needed_nusd: need(i),
                    lease: b.lease.is_some(),
                })
            };
            // A deny budget that is short refuses outright.
            if let Some(&s) = short
                .iter()
                .find(|(i, _)| budgets[*i].on_insufficient == OnInsufficient::Deny)
            {
                return deny(s);
            }
            // Only clamp budgets are short: fit the output to the tightest.
            let tightest = short
                .iter()
                .copied()
                .min_by_key(|&(_, a)| a)
                .unwrap_or(short[0]);
            let max_tokens = est.affordable_max_tokens(tightest.1);
            if max_tokens == 0 {
                return deny(tightest);
            }
            let fitted = est.with_max_tokens(max_tokens);
            amount = fitted.worst_nusd;
            clamped = Some((max_tokens, tightest.0));
        }
        let mut res = Reservation {
            amount,
            ..Reservation::default()
        };
        let mut low = false;
        for (i, available) in room {
            if budgets[i].period == Period::Request {
                res.request_ceilings.push(i);
                continue;
            }
            if let Some(cur) = state[i].current.as_mut() {
                cur.reserved += amount;
                res.parts.push((i, cur.key.clone(), amount));
                if budgets[i].lease.is_some() {
                    cur.peak_worst = cur.peak_worst.max(amount);
                    cur.starved = false;
                    let left = available.saturating_sub(amount);
                    low |= cur.lease.as_ref().is_none_or(|l| left < l.low_water);
                }
            }
            self.update_gauges(&state[i], i);
        }
        if low {
            drop(state);
            self.wake_leases();
        }
        match clamped {
            Some((n, i)) => Decision::Clamp(res, n, budgets[i].name.clone()),
            None => Decision::Admit(res),
        }
    }

    /// Grows a reservation by `extra` (when the real input turned out larger
    /// than estimated), if every budget can take it. All or nothing.
    pub fn extend(&self, res: &mut Reservation, extra: u64) -> Result<(), Denied> {
        let budgets = self.budgets.load();
        if extra == 0 || res.is_empty() {
            return Ok(());
        }
        let wanted = res.amount.saturating_add(extra);
        let mut state = self.lock();
        // Refusals state what the budget could hold for this request and
        // what it now needs in all.
        for &i in &res.request_ceilings {
            let b = &budgets[i];
            if wanted > b.limit_nusd {
                return Err(self.denied(i, b.limit_nusd, wanted));
            }
        }
        let unreachable = self.is_unreachable();
        let instant = std::time::Instant::now();
        for (i, key, _) in &res.parts {
            let b = &budgets[*i];
            let st = &state[*i];
            let p = st
                .current
                .iter()
                .chain(st.older.iter())
                .find(|p| p.key == *key);
            let available = p.map_or(0, |p| p.room(b, unreachable, instant));
            if available < extra {
                return Err(self.denied(*i, available.saturating_add(res.amount), wanted));
            }
        }
        for (i, key, amount) in &mut res.parts {
            if let Some(p) = period_mut(&mut state[*i], key) {
                p.reserved += extra;
                *amount += extra;
            }
        }
        for (i, _, _) in &res.parts {
            self.update_gauges(&state[*i], *i);
        }
        res.amount = wanted;
        Ok(())
    }

    fn denied(&self, i: usize, remaining: u64, needed: u64) -> Denied {
        let budgets = self.budgets.load();
        let b = &budgets[i];
        Denied {
            budget: b.name.clone(),
            scope: b.scope.to_string(),
            period: b.period,
            limit_nusd: b.limit_nusd,
            remaining_nusd: remaining,
            needed_nusd: needed,
            lease: b.lease.is_some(),
        }
    }

    /// Replaces a reservation by the real cost `actual_nusd`, and fires the
    /// soft thresholds the spend crossed.
    pub fn settle(&self, res: Reservation, actual_nusd: u64) {
        let budgets = self.budgets.load();
        if res.parts.is_empty() {
            return;
        }
        let mut fired = Vec::new();
        {
            let mut state = self.lock();
            for (i, key, amount) in &res.parts {
                let b = &budgets[*i];
                let st = &mut state[*i];
                if let Some(p) = period_mut(st, key) {
                    p.reserved = p.reserved.saturating_sub(*amount);
                    p.stored.spent = p.stored.spent.saturating_add(actual_nusd);
                    p.dirty = true;
                    for (t, threshold) in b.soft_thresholds.iter().enumerate() {
                        let bit = 1u64 << t;
                        let line = (b.limit_nusd as f64 * threshold).ceil() as u64;
                        if p.stored.fired & bit == 0 && p.stored.spent >= line {
                            p.stored.fired |= bit;
                            fired.push(Alert {
                                budget: b.name.clone(),
                                scope: b.scope.to_string(),
                                period: b.period.as_str().to_string(),
                                period_key: p.key.clone(),
                                spent_usd: format_usd(p.stored.spent),
                                limit_usd: format_usd(b.limit_nusd),
                                threshold: *threshold,
                                webhook: b.alert_webhook.clone(),
                                index: *i,
                            });
                        }
                    }
                }
                self.update_gauges(st, *i);
            }
        }
        for alert in fired {
            if let Some(c) = self.metrics.alerts.get(alert.index) {
                c.inc();
            }
            self.alerts.fire(alert);
        }
    }

    fn update_gauges(&self, st: &BudgetState, i: usize) {
        let budgets = self.budgets.load();
        let (Some(g), Some(cur)) = (self.metrics.gauges.get(i), st.current.as_ref()) else {
            return;
        };
        let b = &budgets[i];
        let usd = |n: u64| n as f64 / 1e9;
        g.spent_usd.set(usd(cur.stored.spent));
        g.reserved_usd.set(usd(cur.reserved));
        g.remaining_usd.set(usd(b
            .limit_nusd
            .saturating_sub(cur.stored.spent)
            .saturating_sub(cur.reserved)));
    }

    /// What `res` holds (`nusd` = `None`) or spent (`Some`) per budget
    /// period, for the usage journal.
    pub fn charges(&self, res: &Reservation, nusd: Option<u64>) -> Vec<Charge> {
        let budgets = self.budgets.load();
        res.parts
            .iter()
            .map(|(i, key, amount)| Charge {
                budget: budgets[*i].name.clone(),
                period: key.clone(),
                nusd: nusd.unwrap_or(*amount),
            })
            .collect()
    }

    /// Adds spend found in the usage journal at start-up (no alerts fire:
    /// the money was spent before).
    pub fn charge(&self, charges: &[Charge]) {
        self.with_periods(charges, "journaled spend", |_, p, c| {
            p.stored.spent = p.stored.spent.saturating_add(c.nusd);
            p.dirty = true;
        });
    }

    /// Calls `f` with the budget index and period each of `charges` names
    /// (an earlier period is loaded from the store; only the current
    /// period's bounds are ever consulted). Per-request budgets and budgets
    /// no longer configured are skipped (`what` names the charges in the log).
    fn with_periods(
        &self,
        charges: &[Charge],
        what: &str,
        mut f: impl FnMut(usize, &mut PeriodState, &Charge),
    ) {
        let budgets = self.budgets.load();
        let mut state = self.lock();
        for c in charges {
            let Some(i) = budgets.iter().position(|b| b.name == c.budget) else {
                tracing::warn!(budget = %c.budget, "{what} for a budget no longer configured; ignored");
                continue;
            };
            if budgets[i].period == Period::Request {
                continue;
            }
            let st = &mut state[i];
            if period_mut(st, &c.period).is_none() {
                st.older.push(PeriodState::new(
                    load(self.store.as_deref(), &c.budget, &c.period),
                    c.period.clone(),
                    0,
                    0,
                ));
            }
            if let Some(p) = period_mut(st, &c.period) {
                f(i, p, c);
            }
            self.update_gauges(&state[i], i);
        }
    }

    /// Writes every period changed since the last call to the store.
    pub fn persist(&self) -> Result<(), SpendError> {
        self.persist_with(None)
    }

    /// [`Ledger::persist`], then the journal's watermark: the spend written
    /// includes every journaled final up to `watermark`.
    pub fn persist_upto(&self, watermark: u64) -> Result<(), SpendError> {
        self.persist_with(Some(watermark))
    }

    /// The journal watermark stored with the spend (0: none).
    pub fn watermark(&self) -> u64 {
        let Some(store) = &self.store else {
            return 0;
        };
        match store.watermark() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "reading the journal watermark failed");
                0
            }
        }
    }

    fn persist_with(&self, watermark: Option<u64>) -> Result<(), SpendError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let budgets = self.budgets.load();
        if budgets.is_empty() {
            return Ok(());
        }
        let mut writes = Vec::new();
        {
            let mut state = self.lock();
            for (i, st) in state.iter_mut().enumerate() {
                let Some(b) = budgets.get(i) else { continue };
                let name = &b.name;
                for p in st.current.iter_mut().chain(st.older.iter_mut()) {
                    if p.dirty {
                        p.dirty = false;
                        writes.push((i, name.as_str(), p.key.clone(), p.stored));
                    }
                }
            }
        }
        if writes.is_empty() && watermark.is_none() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(writes.len());
        for (_, name, period, stored) in &writes {
            match rmp_serde::to_vec(stored) {
                Ok(bytes) => records.push((*name, period.as_str(), bytes)),
                Err(e) => tracing::error!(error = %e, "encoding budget state failed"),
            }
        }
        let result = store.put(&records, watermark);
        let mut state = self.lock();
        if result.is_err() {
            // Not written: dirty again, for the next attempt.
            for (i, _, key, _) in &writes {
                if let Some(p) = period_mut(&mut state[*i], key) {
                    p.dirty = true;
                }
            }
        }
        // Old periods that are written and hold nothing are done.
        for st in state.iter_mut() {
            st.older.retain(|p| p.reserved > 0 || p.dirty);
        }
        result
    }

    /// Whether any budget applies to requests of `id`.
    pub fn applies(&self, id: &Identity) -> bool {
        self.budgets
            .load()
            .iter()
            .any(|b| !b.retired && b.scope.instance(id).is_some())
    }

    /// Every budget's figures now.
    pub fn status(&self) -> Vec<Status> {
        let now = self.clock.now();
        let budgets = self.budgets.load();
        let mut state = self.lock();
        (0..budgets.len())
            .filter(|&i| !budgets[i].retired)
            .map(|i| {
                let b = &budgets[i];
                self.roll(&mut state[i], i, now);
                self.update_gauges(&state[i], i);
                let (key, spent, reserved) = state[i]
                    .current
                    .as_ref()
                    .map_or((String::new(), 0, 0), |c| {
                        (c.key.clone(), c.stored.spent, c.reserved)
                    });
                Status::of(b, key, spent, reserved)
            })
            .collect()
    }
}

impl Ledger {
    /// Registers what wakes the lease renewal task.
    pub fn on_lease_wanted(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.lease_wake.set(wake);
    }

    fn wake_leases(&self) {
        if let Some(wake) = self.lease_wake.get() {
            wake();
        }
    }

    /// Whether the last renewal could not reach the control endpoint.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records whether the control endpoint answered the last renewal.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable
            .store(unreachable, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every leased budget's current period, for the renewal task. Lets
    /// the largest recent worst case decay, so one big request does not
    /// size leases for ever.
    pub fn lease_views(&self) -> Vec<LeaseView> {
        let now = self.clock.now();
        let budgets = self.budgets.load();
        let mut state = self.lock();
        let mut out = Vec::new();
        for (i, b) in budgets.iter().enumerate() {
            if b.retired || b.lease.is_none() || b.period == Period::Request {
                continue;
            }
            self.roll(&mut state[i], i, now);
            let Some(c) = state[i].current.as_mut() else {
                continue;
            };
            out.push(LeaseView {
                budget: b.name.clone(),
                period: c.key.clone(),
                limit_nusd: b.limit_nusd,
                consumed_nusd: c.stored.spent,
                reserved_nusd: c.reserved,
                held: c.lease.clone(),
                need_nusd: c.need,
                starved: c.starved,
                peak_worst_nusd: c.peak_worst,
            });
            c.peak_worst -= c.peak_worst / 16;
        }
        out
    }

    /// Lowers `budget`'s lease for `period` to `cap` (never below what is
    /// spent and reserved now) when a renewal asks for less than it holds:
    /// room given back is not admitted meanwhile. Returns the grant that
    /// stays in force until the answer (0: none).
    pub fn cap_lease(&self, budget: &str, period: &str, cap: u64) -> u64 {
        let budgets = self.budgets.load();
        let Some(i) = budgets.iter().position(|b| b.name == budget) else {
            return 0;
        };
        let mut state = self.lock();
        let Some(p) = period_mut(&mut state[i], period) else {
            return 0;
        };
        let used = p.stored.spent.saturating_add(p.reserved);
        match p.lease.as_mut() {
            Some(l)
                if l.limit == budgets[i].limit_nusd
                    && std::time::Instant::now() < l.valid_until =>
            {
                l.granted = l.granted.min(cap.max(used));
                l.granted
            }
            _ => 0,
        }
    }

    /// Puts a grant in force for `budget`'s `period`. A grant counting
    /// more consumption than this sidecar knows of (its spend was lost in
    /// a crash) raises the local figure to it.
    pub fn apply_lease(&self, budget: &str, period: &str, held: Held, consumed: u64) {
        let budgets = self.budgets.load();
        let Some(i) = budgets.iter().position(|b| b.name == budget) else {
            return;
        };
        let mut state = self.lock();
        if let Some(p) = period_mut(&mut state[i], period) {
            p.lease = Some(held);
            p.need = 0;
            p.starved = false;
            if consumed > p.stored.spent {
                p.stored.spent = consumed;
                p.dirty = true;
            }
        }
    }
}

fn period_mut<'a>(st: &'a mut BudgetState, key: &str) -> Option<&'a mut PeriodState> {
    if st.current.as_ref().is_some_and(|c| c.key == key) {
        return st.current.as_mut();
    }
    st.older.iter_mut().find(|p| p.key == key)
}

/// Budget figures from a stopped sidecar's store (nothing is reserved).
pub fn status_offline(budgets: &[Budget], store: &dyn SpendRecords, now: i64) -> Vec<Status> {
    budgets
        .iter()
        .map(|b| {
            let (key, spent) = match b.period.window(now) {
                Some((key, ..)) => {
                    let spent = load(Some(store), &b.name, &key).spent;
                    (key, spent)
                }
                None => (String::new(), 0),
            };
            Status::of(b, key, spent, 0)
        })
        .collect()
}

/// A fixed-width table of budget figures (USD).
pub fn render_status(statuses: &[Status]) -> String {
    if statuses.is_empty() {
        return "no budgets configured\n".into();
    }
    let mut lines = vec![[
        "budget",
        "scope",
        "period",
        "current",
        "limit_usd",
        "spent_usd",
        "reserved_usd",
        "remaining_usd",
    ]
    .map(String::from)
    .to_vec()];
    for s in statuses {
        lines.push(vec![
            s.name.clone(),
            s.scope.clone(),
            s.period.clone(),
            if s.period_key.is_empty() {
                "-".into()
            } else {
                s.period_key.clone()
            },
            format_usd(s.limit_nusd),
            format_usd(s.spent_nusd),
            format_usd(s.reserved_nusd),
            format_usd(s.remaining_nusd),
        ]);
    }
    crate::table::render(&lines, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    struct FakeClock(AtomicI64);

    impl Clock for FakeClock {
        fn now(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn at(s: &str) -> i64 {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    }

    fn budget(name: &str, period: Period, limit: u64, on: OnInsufficient) -> Budget {
        Budget {
            name: name.into(),
            scope: Scope::Account("acme".into()),
            period,
            limit_nusd: limit,
            soft_thresholds: vec![0.5, 0.8],
            alert_webhook: None,
            on_insufficient: on,
            lease: None,
            retired: false,
        }
    }

    fn acme() -> Identity {
        Identity {
            account: "acme".into(),
            ..Identity::default()
        }
    }

    fn est(worst: u64) -> Estimate {
        Estimate {
            input_tokens: 10,
            typical_tokens: 10,
            max_tokens: 1000,
            choices: 1,
            input_nusd: worst / 2,
            output_rate: (worst - worst / 2) * 1000,
            worst_nusd: worst,
        }
    }

    fn ledger(
        budgets: Vec<Budget>,
        tree: Option<Arc<dyn SpendRecords>>,
        clock: Arc<FakeClock>,
    ) -> Ledger {
        Ledger::new(
            budgets,
            tree,
            clock,
            AlertSink::default(),
            LedgerMetrics::default(),
        )
    }

    #[test]
    fn a_batch_reserves_its_sum_per_period_and_each_item_per_request() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let l = ledger(
            vec![
                budget("day", Period::Day, 10_000, OnInsufficient::Deny),
                budget("each", Period::Request, 3_000, OnInsufficient::Deny),
                budget("clamp", Period::Month, 50_000, OnInsufficient::Clamp),
            ],
            None,
            clock,
        );
        // One item over the per-request ceiling: refused, whatever the sum.
        assert!(matches!(
            l.reserve_batch(&acme(), 3_500, 3_500, false),
            Decision::Deny(d) if d.budget == "each" && d.needed_nusd == 3_500
        ));
        // Four items of 2,500: each fits the per-request ceiling, the sum the day.
        let held = match l.reserve_batch(&acme(), 10_000, 2_500, false) {
            Decision::Admit(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(l.status()[0].reserved_nusd, 10_000);
        // A sum over what the day has left: refused.
        assert!(matches!(
            l.reserve_batch(&acme(), 1, 1, false),
            Decision::Deny(d) if d.budget == "day"
        ));
        // Held again (a restart) from what it held per period.
        let charges = l.charges(&held, None);
        l.settle(held, 4_000);
        assert_eq!(l.status()[0].spent_nusd, 4_000);
        let again = l.hold(&charges);
        assert_eq!(l.status()[0].reserved_nusd, 10_000);
        assert_eq!(l.status()[2].reserved_nusd, 10_000);
        l.settle(again, 0);
        assert_eq!(l.status()[0].reserved_nusd, 0);
        // A clamp budget that is short refuses a batch (its items are not rewritten).
        assert!(matches!(
            l.reserve_batch(&acme(), 60_000, 1, false),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn synced_budgets_change_in_place_and_retire_without_losing_reservations() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let l = ledger(
            vec![budget(
                "local",
                Period::Day,
                1_000_000,
                OnInsufficient::Deny,
            )],
            None,
            clock,
        );
        assert_eq!(l.budgets().len(), 1);
        // A synced budget joins; a synced budget never replaces a local one.
        l.sync_budgets(vec![
            budget("fleet", Period::Day, 2_000, OnInsufficient::Deny),
            budget("local", Period::Day, 1, OnInsufficient::Deny),
        ]);
        assert_eq!(l.budgets().len(), 2);
        assert_eq!(l.status()[0].limit_nusd, 1_000_000);
        let held = match l.reserve(&acme(), &est(1_500)) {
            Decision::Admit(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(
            matches!(l.reserve(&acme(), &est(1_500)), Decision::Deny(d) if d.budget == "fleet")
        );
        // Raising the limit takes effect at once, spend and holds kept.
        l.sync_budgets(vec![budget(
            "fleet",
            Period::Day,
            4_000,
            OnInsufficient::Deny,
        )]);
        let second = match l.reserve(&acme(), &est(1_500)) {
            Decision::Admit(r) => r,
            other => panic!("{other:?}"),
        };
        // Retired: it applies to nothing, and what it held still settles.
        l.sync_budgets(vec![]);
        assert_eq!(l.budgets().len(), 1);
        assert!(matches!(
            l.reserve(&acme(), &est(900_000)),
            Decision::Admit(_)
        ));
        l.settle(held, 100);
        l.settle(second, 100);
        // Back again under the same name: its spend this period was kept.
        l.sync_budgets(vec![budget(
            "fleet",
            Period::Day,
            4_000,
            OnInsufficient::Deny,
        )]);
        let fleet = l.status().into_iter().find(|s| s.name == "fleet").unwrap();
        assert_eq!((fleet.spent_nusd, fleet.reserved_nusd), (200, 0));
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let l = Arc::new(ledger(
            vec![budget("b", Period::Day, 10_000, OnInsufficient::Deny)],
            None,
            clock,
        ));
        let admitted: Vec<_> = (0..64)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || match l.reserve(&acme(), &est(1_000)) {
                    Decision::Admit(r) => Some(r),
                    _ => None,
                })
            })
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(admitted.len(), 10, "exactly the worst cases that fit");
        for r in admitted {
            l.settle(r, 400);
        }
        let s = &l.status()[0];
        assert_eq!(
            (s.spent_nusd, s.reserved_nusd, s.remaining_nusd),
            (4_000, 0, 6_000)
        );
        // Other accounts are not in scope.
        let other = Identity {
            account: "other".into(),
            ..Identity::default()
        };
        assert!(matches!(l.reserve(&other, &est(1_000_000)), Decision::Admit(r) if r.is_empty()));
    }

    #[test]
    fn clamp_fits_output_to_what_remains() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let l = ledger(
            vec![budget("b", Period::Month, 1_000, OnInsufficient::Clamp)],
            None,
            clock,
        );
        // Worst case 2000: input 1000 + 1000 tokens at 1000 nusd/MTok... the
        // input alone (1000) exhausts the budget, so nothing fits: denied.
        assert!(matches!(l.reserve(&acme(), &est(2_000)), Decision::Deny(_)));
        let e = Estimate {
            input_tokens: 10,
            typical_tokens: 10,
            max_tokens: 1000,
            choices: 1,
            input_nusd: 100,
            output_rate: 1_000_000, // 1 nusd per token
            worst_nusd: 1_100,
        };
        match l.reserve(&acme(), &e) {
            Decision::Clamp(r, n, name) => {
                assert_eq!((n, name.as_str()), (900, "b"));
                assert_eq!(r.amount, 1_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.status()[0].remaining_nusd, 0);
    }

    #[test]
    fn per_request_ceiling_and_extend() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let l = ledger(
            vec![
                budget("per-req", Period::Request, 1_500, OnInsufficient::Deny),
                budget("day", Period::Day, 2_000, OnInsufficient::Deny),
            ],
            None,
            clock,
        );
        match l.reserve(&acme(), &est(2_000)) {
            Decision::Deny(d) => assert_eq!(d.budget, "per-req"),
            other => panic!("{other:?}"),
        }
        let Decision::Admit(mut r) = l.reserve(&acme(), &est(1_000)) else {
            panic!()
        };
        assert!(l.extend(&mut r, 400).is_ok());
        assert_eq!(r.amount, 1_400);
        let err = l.extend(&mut r, 200).unwrap_err();
        assert_eq!(err.budget, "per-req");
        l.settle(r, 1_400);
        assert_eq!(l.status()[1].spent_nusd, 1_400);
    }

    fn spend(db: &sled::Db) -> Arc<dyn SpendRecords> {
        Arc::new(crate::store::sled::SpendTree::open(db).unwrap())
    }

    #[test]
    fn periods_roll_over_and_spend_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-30T23:59:59Z"))));
        let budgets = vec![
            budget("day", Period::Day, 10_000, OnInsufficient::Deny),
            budget("month", Period::Month, 100_000, OnInsufficient::Deny),
        ];
        let l = ledger(budgets.clone(), Some(spend(&db)), clock.clone());
        let Decision::Admit(r) = l.reserve(&acme(), &est(1_000)) else {
            panic!()
        };
        // The clock crosses midnight and the month end while it is in flight.
        clock.0.store(at("2026-12-01T00:00:01Z"), Ordering::SeqCst);
        let Decision::Admit(r2) = l.reserve(&acme(), &est(1_000)) else {
            panic!()
        };
        l.settle(r, 700);
        l.settle(r2, 300);
        let now = l.status();
        assert_eq!(
            (now[0].period_key.as_str(), now[0].spent_nusd),
            ("2026-12-01", 300)
        );
        assert_eq!(
            (now[1].period_key.as_str(), now[1].spent_nusd),
            ("2026-12", 300)
        );
        l.persist().unwrap();
        drop(l);
        // A restart (new ledger on the same store) sees both periods.
        let tree = spend(&db);
        let before = status_offline(&budgets, tree.as_ref(), at("2026-11-30T12:00:00Z"));
        assert_eq!((before[0].spent_nusd, before[1].spent_nusd), (700, 700));
        let l = ledger(budgets, Some(tree), clock.clone());
        assert_eq!(l.status()[0].spent_nusd, 300);
        clock.0.store(at("2026-12-02T00:00:00Z"), Ordering::SeqCst);
        assert_eq!(l.status()[0].spent_nusd, 0, "a new day starts from zero");
        assert_eq!(l.status()[1].spent_nusd, 300, "the month goes on");
    }

    #[test]
    fn thresholds_fire_once_per_period() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-23T12:00:00Z"))));
        let (sink, mut rx) = AlertSink::channel();
        let mut b = budget("b", Period::Day, 10_000, OnInsufficient::Deny);
        b.alert_webhook = Some("http://127.0.0.1:9/alerts".into());
        let l = Ledger::new(vec![b], None, clock.clone(), sink, LedgerMetrics::default());
        let spend = |n: u64| {
            let Decision::Admit(r) = l.reserve(&acme(), &est(1_000)) else {
                panic!()
            };
            l.settle(r, n);
        };
        spend(4_000);
        assert!(rx.try_recv().is_err());
        spend(1_000); // 50 %
        let a = rx.try_recv().unwrap();
        assert_eq!(
            (a.threshold, a.spent_usd.as_str(), a.period_key.as_str()),
            (0.5, "0.000005", "2026-11-23")
        );
        spend(100);
        assert!(rx.try_recv().is_err(), "0.5 fires once");
        spend(4_000); // 91 %: 0.8 fires
        assert_eq!(rx.try_recv().unwrap().threshold, 0.8);
        assert!(rx.try_recv().is_err());
        clock.0.store(at("2026-11-24T00:00:00Z"), Ordering::SeqCst);
        spend(6_000);
        assert_eq!(rx.try_recv().unwrap().threshold, 0.5, "again the next day");
    }

    #[test]
    fn windows() {
        assert_eq!(
            Period::Month.window(at("2026-12-31T23:59:59Z")).unwrap(),
            (
                "2026-12".into(),
                at("2026-12-01T00:00:00Z"),
                at("2027-01-01T00:00:00Z")
            )
        );
        assert_eq!(
            Period::Day.window(at("2028-02-29T10:00:00Z")).unwrap(),
            (
                "2028-02-29".into(),
                at("2028-02-29T00:00:00Z"),
                at("2028-03-01T00:00:00Z")
            )
        );
        assert!(Period::Request.window(0).is_none());
    }
}
