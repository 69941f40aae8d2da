//! The account ledger: usage events shipped by sidecars, stored once per
//! event id (ingest is idempotent: at-least-once on the wire, exactly-once
//! here), and rolled up by any dimensions over a time range.
//!
//! Rows are keyed `account, 0, time, event id`, so one account's period is
//! one contiguous range of the store. Each event also adds to a per-day
//! rollup row (`account, 0, day, its other dimensions`) in the same atomic
//! step, so a rollup over whole days reads one row per day and group
//! instead of every event: a month of one account is a few hundred rows,
//! however many requests it made. A range that starts or ends inside a day
//! is answered exactly from the events.

use serde::Deserialize;

use super::{ApiError, Control, Principal};
use crate::meter::event::UsageEvent;
use crate::store::LedgerRow;
use crate::usage_report::{day_of, Dim, GroupBy, Totals, UsageReport};

const DAY_US: i64 = 86_400_000_000;

/// The dimensions of a rollup row besides its account and day.
type RollupDims = (String, String, String, String, String, String, String);

/// The rollup row key of `e`: account, 0, day, then its other dimensions
/// (workload, model, provider, tags, cache, route, status).
fn rollup_key(e: &UsageEvent) -> Result<Vec<u8>, ApiError> {
    let dims: RollupDims = (
        e.workload.clone(),
        e.model.clone(),
        e.provider.clone(),
        Dim::Tag.value(e),
        Dim::Cache.value(e),
        Dim::Route.value(e),
        Dim::Status.value(e),
    );
    let mut k = bound(&e.account, e.ts.div_euclid(DAY_US));
    rmp_serde::encode::write(&mut k, &dims)
        .map_err(|e| ApiError::internal(format!("encoding a rollup key: {e}")))?;
    Ok(k)
}

/// What an ingest answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    /// Events stored now.
    pub accepted: usize,
    /// Events the ledger held already (re-sent after a lost ack).
    pub duplicates: usize,
    /// Events for accounts this credential does not serve (a request the
    /// sidecar refused before it knew the account, say): not stored, and
    /// acknowledged so they do not block the sidecar's outbox.
    #[serde(default)]
    pub refused: usize,
}

/// The ledger key of `e`.
fn key(e: &UsageEvent) -> Vec<u8> {
    let mut k = Vec::with_capacity(e.account.len() + 1 + 8 + 16);
    k.extend_from_slice(e.account.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_key(e.ts));
    match uuid::Uuid::parse_str(&e.event_id) {
        Ok(id) => k.extend_from_slice(id.as_bytes()),
        Err(_) => k.extend_from_slice(e.event_id.as_bytes()),
    }
    k
}

/// Microseconds as 8 bytes that sort like the signed number.
fn ts_key(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn bound(account: &str, ts: i64) -> Vec<u8> {
    let mut k = account.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&ts_key(ts));
    k
}

/// `GET /api/v1/llm/usage` query.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Dimensions, comma-separated (default `account,model,day`).
    pub group_by: Option<String>,
    /// RFC 3339 or `YYYY-MM-DD` (UTC midnight): events at or after.
    pub from: Option<String>,
    /// RFC 3339 or `YYYY-MM-DD`: events before.
    pub to: Option<String>,
    /// Only this account (a gateway key always reads its own).
    pub account: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Microseconds since the epoch of an RFC 3339 time or a `YYYY-MM-DD` day.
fn parse_when(key: &str, s: &str) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).or_else(|_| {
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
            .map(|d| d.midnight().assume_utc())
    });
    t.map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| {
            ApiError::invalid(format!(
                "{key}: not an RFC 3339 time or a YYYY-MM-DD day: {s:?}"
            ))
        })
}

impl Control {
    /// Stores a batch of MessagePack-encoded events from a sidecar: those
    /// of the accounts its credential serves; the others are refused.
    /// Durable before the ack.
    pub fn ingest(&self, sidecar: &Principal, body: &[u8]) -> Result<Ack, ApiError> {
        let Principal::Sidecar { accounts, name, .. } = sidecar else {
            return Err(ApiError::forbidden("only a sidecar credential ships usage"));
        };
        let events: Vec<UsageEvent> = rmp_serde::from_slice(body).map_err(|e| {
            ApiError::invalid(format!("not a MessagePack array of usage events: {e}"))
        })?;
        // Another account's ledger is never written; those events are
        // acknowledged as refused (and counted) so the outbox moves on.
        let total_received = events.len();
        let events: Vec<UsageEvent> = events
            .into_iter()
            .filter(|e| accounts.is_empty() || accounts.contains(&e.account))
            .collect();
        let refused = total_received - events.len();
        if refused > 0 {
            self.metrics
                .ingest_events
                .with_label_values(&["refused"])
                .inc_by(refused as u64);
        }
        let mut rows = Vec::with_capacity(events.len());
        for e in &events {
            let value = rmp_serde::to_vec_named(e)
                .map_err(|e| ApiError::internal(format!("encoding an event: {e}")))?;
            rows.push(LedgerRow {
                key: key(e),
                event: value,
                rollup_key: rollup_key(e)?,
                totals: Totals::of(e).to_array(),
            });
        }
        let total = rows.len();
        let new = self.records.ledger.insert_new(rows)?;
        self.records.ledger.flush()?;
        let accepted = new.len();
        // Each event's charges count once, when it is first stored.
        let fresh: Vec<&UsageEvent> = new.iter().filter_map(|&i| events.get(i)).collect();
        self.ship_charges(name, accounts, &fresh)?;
        let m = &self.metrics;
        m.ingest_batches.inc();
        m.ingest_events
            .with_label_values(&["new"])
            .inc_by(accepted as u64);
        m.ingest_events
            .with_label_values(&["duplicate"])
            .inc_by((total - accepted) as u64);
        m.ledger_events.add(accepted as i64);
        Ok(Ack {
            accepted,
            duplicates: total - accepted,
            refused,
        })
    }

    /// Sets the ledger gauge from the store.
    pub fn count_ledger(&self) -> Result<(), ApiError> {
        self.metrics
            .ledger_events
            .set(self.records.ledger.len()? as i64);
        Ok(())
    }

    /// The rollup `q` asks for, as `caller` may see it.
    pub fn usage(&self, caller: &Principal, q: &UsageQuery) -> Result<UsageReport, ApiError> {
        let account = match (caller, &q.account) {
            (Principal::Admin { .. }, a) => a.clone(),
            (Principal::Gateway { account, .. }, None) => Some(account.clone()),
            (p, Some(a)) => {
                p.reads_account(a)?;
                Some(a.clone())
            }
            (Principal::Sidecar { .. }, None) => {
                return Err(ApiError::forbidden(
                    "a sidecar credential cannot read usage",
                ))
            }
        };
        let by = GroupBy::parse(q.group_by.as_deref().unwrap_or("account,model,day"))
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let from = q
            .from
            .as_deref()
            .map(|s| parse_when("from", s))
            .transpose()?
            .unwrap_or(i64::MIN);
        let to =
            q.to.as_deref()
                .map(|s| parse_when("to", s))
                .transpose()?
                .unwrap_or(i64::MAX);
        let mut report = UsageReport::new(&by);
        let mut bad = None;
        let whole_days = |t: i64| t == i64::MIN || t == i64::MAX || t.rem_euclid(DAY_US) == 0;
        if whole_days(from) && whole_days(to) {
            // One row per day and group: see the module's doc.
            let day = |t: i64| match t {
                i64::MIN => i64::MIN,
                i64::MAX => i64::MAX,
                t => t.div_euclid(DAY_US),
            };
            let mut add = |k: &[u8], t: [u64; 7]| match decode_rollup(k) {
                Some((account, day, dims)) => {
                    let value = |d: Dim| match d {
                        Dim::Account => account.clone(),
                        Dim::Day => day_of(day * DAY_US),
                        Dim::Workload => dims.0.clone(),
                        Dim::Model => dims.1.clone(),
                        Dim::Provider => dims.2.clone(),
                        Dim::Tag => dims.3.clone(),
                        Dim::Cache => dims.4.clone(),
                        Dim::Route => dims.5.clone(),
                        Dim::Status => dims.6.clone(),
                    };
                    report.add_group(&value, &Totals::from_array(t));
                    true
                }
                None => {
                    bad = Some("a rollup row key does not decode".to_string());
                    false
                }
            };
            match &account {
                Some(a) => self.records.ledger.scan_rollups(
                    &bound(a, day(from)),
                    &bound(a, day(to)),
                    &mut add,
                )?,
                None => self
                    .records
                    .ledger
                    .scan_rollups(&[], &[0xff; 1], &mut add)?,
            }
        } else {
            let mut add = |v: &[u8]| match rmp_serde::from_slice::<UsageEvent>(v) {
                Ok(e) => {
                    if e.ts >= from && e.ts < to {
                        report.add(&e);
                    }
                    true
                }
                Err(e) => {
                    bad = Some(format!("a ledger row does not decode: {e}"));
                    false
                }
            };
            match &account {
                Some(a) => {
                    self.records
                        .ledger
                        .scan_range(&bound(a, from), &bound(a, to), &mut add)?
                }
                None => self.records.ledger.scan_range(&[], &[0xff; 1], &mut add)?,
            }
        }
        if let Some(e) = bad {
            return Err(ApiError::internal(format!(
                "a ledger row does not decode: {e}"
            )));
        }
        Ok(report)
    }
}

/// (account, day, other dimensions) of a rollup row key.
fn decode_rollup(k: &[u8]) -> Option<(String, i64, RollupDims)> {
    let zero = k.iter().position(|&b| b == 0)?;
    let account = std::str::from_utf8(&k[..zero]).ok()?.to_string();
    let day_bytes: [u8; 8] = k.get(zero + 1..zero + 9)?.try_into().ok()?;
    let day = (u64::from_be_bytes(day_bytes) ^ (1 << 63)) as i64;
    let dims = rmp_serde::from_slice(k.get(zero + 9..)?).ok()?;
    Some((account, day, dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_account_then_time() {
        assert!(ts_key(-1) < ts_key(0));
        assert!(ts_key(0) < ts_key(1));
        assert!(ts_key(i64::MIN) < ts_key(i64::MAX));
        assert!(bound("a", 5) < bound("a", 6));
        assert!(bound("a", i64::MAX) < bound("b", i64::MIN));
        assert_eq!(
            parse_when("from", "2026-12-01").unwrap(),
            1_796_083_200_000_000
        );
        assert!(parse_when("from", "yesterday").is_err());
    }
}
