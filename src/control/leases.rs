//! Leases of the budgets the control endpoint holds (the rules are in
//! [`crate::lease`]): sidecars renew with `POST /api/v1/leases`, shipped
//! events add their charges, and `GET /api/v1/budgets/{name}/status`
//! shows limit, consumed, leased per sidecar and left. Every book change
//! is durable before its answer: a grant the control endpoint forgot in a
//! crash could be granted twice. Fleet-wide soft thresholds fire here,
//! once per budget, threshold and period.

use std::collections::HashMap;

use serde::Serialize;

use super::budgets::BudgetRecord;
use super::{model, ApiError, Control, Principal};
use crate::budget::alerts::Alert;
use crate::budget::Period;
use crate::lease::{self, Book, LeaseGrant, LeaseRequest, LeaseResponse, Terms};
use crate::meter::event::UsageEvent;
use crate::meter::money::format_usd;

/// How far a sidecar's clock may be off at a period boundary and still
/// renew for the period it sees.
const SKEW_S: i64 = 300;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn book_id(budget: &str, period: &str) -> String {
    format!("{budget}/{period}")
}

/// A budget's figures, fleet-wide.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BudgetStatus {
    pub name: String,
    pub account: String,
    pub period: String,
    pub period_key: String,
    pub limit_usd: String,
    /// Consumed by the whole fleet this period.
    pub spent_usd: String,
    /// Granted to sidecars and not consumed yet.
    pub leased_usd: String,
    /// Neither spent nor leased.
    pub left_usd: String,
    pub sidecars: Vec<HolderStatus>,
}

/// One sidecar's lease.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct HolderStatus {
    /// `<credential name>/<sidecar_id>`.
    pub sidecar: String,
    pub granted_usd: String,
    pub spent_usd: String,
    pub held_usd: String,
    pub expires_at: String,
    pub renewed_at: String,
}

impl Control {
    /// The fleet-wide alerts' receiver (taken once, by the server).
    pub fn take_alerts(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::budget::alerts::Alert>> {
        self.alert_rx.lock().ok()?.take()
    }

    fn terms(&self, b: &crate::snapshot::SyncedBudget) -> Terms {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Terms {
            limit_nusd: b.limit_nusd,
            ttl_ms: ms(self.config.lease_ttl),
            reclaim_after_ms: self.config.lease_reclaim_after.map(ms),
            allowance_nusd: if b.on_control_unreachable == "allow" {
                b.unreachable_allowance_nusd
            } else {
                0
            },
        }
    }

    /// The book `id`, read from the store the first time.
    fn book<'a>(
        &self,
        books: &'a mut HashMap<String, Book>,
        id: &str,
    ) -> Result<&'a mut Book, ApiError> {
        if !books.contains_key(id) {
            let book = match self.records.leases.get(id)? {
                Some(bytes) => model::decode(&bytes)?,
                None => Book::default(),
            };
            books.insert(id.to_string(), book);
        }
        books
            .get_mut(id)
            .ok_or_else(|| ApiError::internal("a lease book vanished"))
    }

    fn books(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Book>>, ApiError> {
        self.leases
            .lock()
            .map_err(|_| ApiError::internal("the lease books' lock is poisoned"))
    }

    /// The budget `name` if `accounts` (a credential's; empty: all) serve it.
    fn leased_budget(
        &self,
        name: &str,
        accounts: &[String],
    ) -> Result<Option<BudgetRecord>, ApiError> {
        let Some(bytes) = self.records.budgets.get(name)? else {
            return Ok(None);
        };
        let rec: BudgetRecord = model::decode(&bytes)?;
        let served = accounts.is_empty() || accounts.contains(&rec.budget.account);
        let leased = Period::parse(&rec.budget.period).is_some_and(|p| p != Period::Request);
        Ok((served && leased).then_some(rec))
    }

    /// Fires the thresholds `book` crossed (after its write is durable).
    fn alerts_for(&self, rec: &BudgetRecord, period_key: &str, book: &mut Book) -> Vec<Alert> {
        let b = &rec.budget;
        let consumed = book.consumed();
        book.crossed(b.limit_nusd, &b.soft_thresholds)
            .into_iter()
            .map(|threshold| Alert {
                budget: b.name.clone(),
                scope: format!("account:{}", b.account),
                period: b.period.clone(),
                period_key: period_key.to_string(),
                spent_usd: format_usd(consumed),
                limit_usd: format_usd(b.limit_nusd),
                threshold,
                webhook: b.alert_webhook.clone(),
                index: 0,
            })
            .collect()
    }

    fn fire(&self, alerts: Vec<Alert>) {
        for a in alerts {
            self.metrics.alerts.inc();
            self.alerts.fire(a);
        }
    }

    /// Writes the changed books, then makes them durable (outside the
    /// lock, so concurrent renewals share a flush).
    fn write_books(
        &self,
        books: &HashMap<String, Book>,
        changed: &[String],
    ) -> Result<(), ApiError> {
        for id in changed {
            if let Some(book) = books.get(id) {
                self.records.leases.put(id, &model::encode(book)?)?;
            }
        }
        Ok(())
    }

    /// `POST /api/v1/leases`: renews a sidecar's leases.
    pub fn renew_leases(
        &self,
        sidecar: &Principal,
        req: &LeaseRequest,
    ) -> Result<LeaseResponse, ApiError> {
        let started = std::time::Instant::now();
        let Principal::Sidecar { name, accounts, .. } = sidecar else {
            return Err(ApiError::forbidden(
                "only a sidecar credential holds leases",
            ));
        };
        crate::identity::check_name("sidecar_id", &req.sidecar_id)
            .map_err(|e| ApiError::invalid(e.0))?;
        if req.instance.is_empty() || req.instance.len() > 64 {
            return Err(ApiError::invalid("instance: 1 to 64 characters"));
        }
        let holder = lease::holder(name, &req.sidecar_id);
        let now = now_ms();
        let now_s = now / 1000;
        let mut out = Vec::with_capacity(req.leases.len());
        let mut alerts = Vec::new();
        let mut conflict = None;
        {
            let mut books = self.books()?;
            let mut changed = Vec::new();
            for ask in &req.leases {
                let Some(rec) = self.leased_budget(&ask.budget, accounts)? else {
                    out.push(LeaseGrant {
                        budget: ask.budget.clone(),
                        period: ask.period.clone(),
                        granted_nusd: ask.consumed_nusd.saturating_add(ask.reserved_nusd),
                        consumed_nusd: ask.consumed_nusd,
                        error: Some("no leased budget of that name for this sidecar".into()),
                        ..LeaseGrant::default()
                    });
                    continue;
                };
                let period = Period::parse(&rec.budget.period).unwrap_or(Period::Month);
                let current = [now_s - SKEW_S, now_s, now_s + SKEW_S]
                    .iter()
                    .filter_map(|t| period.window(*t))
                    .any(|(key, ..)| key == ask.period);
                let mut ask = ask.clone();
                if !current {
                    // Its consumption still counts; no new room.
                    ask.want_nusd = 0;
                    ask.need_nusd = 0;
                }
                let terms = self.terms(&rec.budget);
                let id = book_id(&ask.budget, &ask.period);
                let book = self.book(&mut books, &id)?;
                match book.renew(&holder, &req.instance, &ask, &terms, now) {
                    Ok(mut g) => {
                        if !current {
                            g.error = Some(format!(
                                "period {:?} is not current on the control endpoint",
                                ask.period
                            ));
                        }
                        alerts.extend(self.alerts_for(&rec, &ask.period, book));
                        changed.push(id);
                        out.push(g);
                    }
                    Err(e) => {
                        conflict = Some(e);
                        break;
                    }
                }
            }
            self.write_books(&books, &changed)?;
        }
        self.records.leases.flush()?;
        self.fire(alerts);
        let m = &self.metrics;
        if let Some(e) = conflict {
            m.lease_renewals.with_label_values(&["conflict"]).inc();
            return Err(ApiError::conflict(e.to_string()));
        }
        m.lease_renewals.with_label_values(&["granted"]).inc();
        m.lease_seconds.observe(started.elapsed().as_secs_f64());
        Ok(LeaseResponse {
            ttl_ms: u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            leases: out,
        })
    }

    /// Adds the charges of newly stored events to the leased budgets'
    /// books (called by ingest with the events it stored for the first
    /// time, so each event counts once).
    pub(super) fn ship_charges(
        &self,
        credential: &str,
        accounts: &[String],
        events: &[&UsageEvent],
    ) -> Result<(), ApiError> {
        if events.iter().all(|e| e.charges.is_empty()) {
            return Ok(());
        }
        let mut alerts = Vec::new();
        {
            let mut books = self.books()?;
            let mut changed = Vec::new();
            for e in events {
                for c in &e.charges {
                    let Some(rec) = self.leased_budget(&c.budget, accounts)? else {
                        continue;
                    };
                    // A sidecar's local budget may share the name.
                    if rec.budget.account != e.account {
                        continue;
                    }
                    let id = book_id(&c.budget, &c.period);
                    let book = self.book(&mut books, &id)?;
                    book.shipped(&lease::holder(credential, &e.sidecar_id), c.nusd);
                    alerts.extend(self.alerts_for(&rec, &c.period, book));
                    if !changed.contains(&id) {
                        changed.push(id);
                    }
                }
            }
            self.write_books(&books, &changed)?;
        }
        self.records.leases.flush()?;
        self.fire(alerts);
        Ok(())
    }

    /// `GET /api/v1/budgets/{name}/status`: the current period's figures.
    pub fn budget_status(&self, caller: &Principal, name: &str) -> Result<BudgetStatus, ApiError> {
        let Some(bytes) = self.records.budgets.get(name)? else {
            return Err(ApiError::not_found(format!("no budget {name:?}")));
        };
        let rec: BudgetRecord = model::decode(&bytes)?;
        caller.reads_account(&rec.budget.account)?;
        let b = &rec.budget;
        let now = now_ms();
        let period = Period::parse(&b.period).unwrap_or(Period::Month);
        let period_key = period
            .window(now / 1000)
            .map(|(k, ..)| k)
            .unwrap_or_default();
        let terms = self.terms(b);
        let mut books = self.books()?;
        let book = if period_key.is_empty() {
            Book::default()
        } else {
            self.book(&mut books, &book_id(name, &period_key))?.clone()
        };
        drop(books);
        let ms = |t: i64| model::rfc3339(t.div_euclid(1000));
        Ok(BudgetStatus {
            name: b.name.clone(),
            account: b.account.clone(),
            period: b.period.clone(),
            limit_usd: format_usd(b.limit_nusd),
            spent_usd: format_usd(book.consumed()),
            leased_usd: format_usd(book.outstanding(&terms, now)),
            left_usd: format_usd(book.free(&terms, now)),
            sidecars: book
                .holders
                .iter()
                .map(|(k, h)| HolderStatus {
                    sidecar: k.clone(),
                    granted_usd: format_usd(h.granted),
                    spent_usd: format_usd(h.consumed()),
                    held_usd: format_usd(h.granted.saturating_sub(h.consumed())),
                    expires_at: ms(h.expires_at_ms),
                    renewed_at: ms(h.renewed_at_ms),
                })
                .collect(),
            period_key,
        })
    }
}
