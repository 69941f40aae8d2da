//! Leases: how a fleet of sidecars shares one hard budget without ever
//! overshooting it.
//!
//! The control endpoint keeps, per budget and period, a [`Book`] of what
//! each sidecar (a *holder*: its credential's name and its `sidecar_id`)
//! has been granted and has consumed. A sidecar spends only from its grant:
//! it reserves each request's worst case against `granted − consumed −
//! reserved`, exactly as it reserves against a local budget. The book never
//! grants more than `limit − Σ other holders' max(granted, consumed)`, so at
//! every moment spend plus outstanding grants is within the limit.
//!
//! The protocol is absolute, not incremental, so a lost or repeated call
//! changes nothing: a sidecar says "I have consumed C, hold R in flight and
//! want W of room beyond that"; the answer is its new total grant (at least
//! `C + R`: what is in flight may all be spent). Asking for less than it
//! holds returns the rest; asking for no room at shutdown returns all.
//!
//! Consumption reaches the book two ways: each renewal reports the
//! sidecar's counter (the authority: it includes spend not shipped yet),
//! and each shipped usage event carries the charges it made, added once
//! per event id at ingest. Both count the same settled charges, so they
//! agree once everything is shipped; the book takes the larger of the two,
//! so neither can make it count less than was spent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sidecar's renewal: `POST /api/v1/leases`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The sidecar's `sidecar_id` (with its credential, the holder).
    pub sidecar_id: String,
    /// Random, kept in the sidecar's data dir: two live processes with one
    /// `sidecar_id` are refused rather than merged.
    pub instance: String,
    pub leases: Vec<LeaseAsk>,
}

/// One budget period in a renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    pub budget: String,
    /// The period's key (`2026-12-03`, `2026-12`) by the sidecar's clock.
    pub period: String,
    /// What this sidecar has spent in the period, all told, nano-USD.
    pub consumed_nusd: u64,
    /// What its requests in flight hold.
    pub reserved_nusd: u64,
    /// Room wanted beyond `consumed + reserved`.
    pub want_nusd: u64,
    /// The worst case of a request waiting for this grant (0: none).
    #[serde(default)]
    pub need_nusd: u64,
    /// The grant the sidecar holds while this renewal is in flight: it may
    /// admit requests up to it until the answer arrives, so a smaller
    /// answer only takes effect at its next renewal (0: nothing more will
    /// be admitted, e.g. a lease returned at shutdown).
    #[serde(default)]
    pub held_nusd: u64,
}

/// The answer to a renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// How long the grants are good for, from when the renewal was sent.
    pub ttl_ms: u64,
    pub leases: Vec<LeaseGrant>,
}

/// One budget period's grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub budget: String,
    pub period: String,
    /// The holder's total grant for the period (consumption included).
    pub granted_nusd: u64,
    /// What the book counts as this holder's consumption (never less than
    /// reported; a sidecar that reported less catches up to it).
    pub consumed_nusd: u64,
    /// What this holder may spend beyond its grant while the control
    /// endpoint is unreachable (`on_control_unreachable = "allow"`): its
    /// share of the budget's allowance.
    pub overdraft_nusd: u64,
    /// The budget's limit the grant was made under: a sidecar that syncs
    /// another limit drops the grant and renews.
    pub limit_nusd: u64,
    /// Why nothing was granted (no such budget, a period not current…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one holder has of a budget period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub instance: String,
    pub granted: u64,
    /// Consumption as last reported by a renewal.
    pub reported: u64,
    /// Consumption from shipped events.
    pub shipped: u64,
    /// Unix ms.
    pub expires_at_ms: i64,
    pub renewed_at_ms: i64,
    pub overdraft: u64,
    /// The grant the holder held when its last renewal cut it: it may have
    /// admitted requests up to that before the cut reached it, so the book
    /// keeps it from others until the holder's next renewal (whose
    /// consumption and reservations then cover those requests).
    #[serde(default)]
    pub shrunk_from: u64,
}

impl Holder {
    /// Its consumption: the larger of the two reports.
    pub fn consumed(&self) -> u64 {
        self.reported.max(self.shipped)
    }
    fn holds(&self) -> u64 {
        self.granted.max(self.shrunk_from).max(self.consumed())
    }
    fn live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// The rules a grant is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    pub limit_nusd: u64,
    pub ttl_ms: i64,
    /// After a lease expired this long ago with no word from its holder,
    /// its unconsumed part is free again. `None`: never (the safe default:
    /// a holder that comes back may have spent all of it).
    pub reclaim_after_ms: Option<i64>,
    /// Spend allowed beyond the leases while the control endpoint is
    /// unreachable, for the whole fleet (0: deny).
    pub allowance_nusd: u64,
}

/// Two live sidecars presented one holder name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sidecar_id {0:?} is used by two running sidecars with this credential; give each its own sidecar_id")]
pub struct HolderConflict(pub String);

/// One budget period's leases, as the control endpoint keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub holders: BTreeMap<String, Holder>,
    /// Bit i set: the budget's `soft_thresholds[i]` has fired this period.
    pub fired: u64,
}

impl Book {
    /// Everything consumed in the period, fleet-wide.
    pub fn consumed(&self) -> u64 {
        self.holders.values().map(Holder::consumed).sum()
    }

    /// What `h` keeps from others: its grant, unless it has expired past
    /// the reclaim time, then only what it consumed.
    fn held_by(h: &Holder, terms: &Terms, now_ms: i64) -> u64 {
        match terms.reclaim_after_ms {
            Some(r) if now_ms >= h.expires_at_ms.saturating_add(r) => h.consumed(),
            _ => h.holds(),
        }
    }

    /// Granted and not consumed, fleet-wide: the money leases hold.
    pub fn outstanding(&self, terms: &Terms, now_ms: i64) -> u64 {
        self.holders
            .values()
            .map(|h| Self::held_by(h, terms, now_ms).saturating_sub(h.consumed()))
            .sum()
    }

    /// Neither consumed nor leased.
    pub fn free(&self, terms: &Terms, now_ms: i64) -> u64 {
        let held: u64 = self
            .holders
            .values()
            .map(|h| Self::held_by(h, terms, now_ms))
            .sum();
        terms.limit_nusd.saturating_sub(held)
    }

    /// Renews `holder`'s lease as `ask` says. The grant is at least what
    /// the holder consumed and holds in flight, and never takes the book
    /// past the limit: it is capped by what no one else holds, shared out
    /// among the holders with live leases as the budget runs low, and
    /// never below one request's `need` while that fits.
    pub fn renew(
        &mut self,
        holder: &str,
        instance: &str,
        ask: &LeaseAsk,
        terms: &Terms,
        now_ms: i64,
    ) -> Result<LeaseGrant, HolderConflict> {
        let others: u64 = self
            .holders
            .iter()
            .filter(|(k, _)| k.as_str() != holder)
            .map(|(_, h)| Self::held_by(h, terms, now_ms))
            .sum();
        let sharing = 1 + self
            .holders
            .iter()
            .filter(|(k, h)| k.as_str() != holder && h.live(now_ms) && h.granted > h.consumed())
            .count() as u64;
        // Shares of the allowance never sum past it: a holder's share is
        // cut to what the others' (possibly older, larger) shares leave.
        let others_overdraft: u64 = self
            .holders
            .iter()
            .filter(|(k, _)| k.as_str() != holder)
            .map(|(_, h)| h.overdraft)
            .sum();
        let h = self.holders.entry(holder.to_string()).or_default();
        if !h.instance.is_empty() && h.instance != instance && h.live(now_ms) {
            return Err(HolderConflict(holder.to_string()));
        }
        h.instance = instance.to_string();
        h.reported = h.reported.max(ask.consumed_nusd);
        let consumed = h.consumed();
        let base = consumed.saturating_add(ask.reserved_nusd);
        let avail = terms.limit_nusd.saturating_sub(others).saturating_sub(base);
        let fair = ask.need_nusd.max(avail / sharing);
        let room = ask.want_nusd.min(fair).min(avail);
        h.granted = base.saturating_add(room);
        h.shrunk_from = if h.granted < ask.held_nusd {
            ask.held_nusd
        } else {
            0
        };
        h.expires_at_ms = now_ms.saturating_add(terms.ttl_ms);
        h.renewed_at_ms = now_ms;
        h.overdraft = (terms.allowance_nusd / sharing)
            .min(terms.allowance_nusd.saturating_sub(others_overdraft));
        Ok(LeaseGrant {
            budget: ask.budget.clone(),
            period: ask.period.clone(),
            granted_nusd: h.granted,
            consumed_nusd: consumed,
            overdraft_nusd: h.overdraft,
            limit_nusd: terms.limit_nusd,
            error: None,
        })
    }

    /// Adds spend from shipped events of `holder`.
    pub fn shipped(&mut self, holder: &str, nusd: u64) {
        let h = self.holders.entry(holder.to_string()).or_default();
        h.shipped = h.shipped.saturating_add(nusd);
    }

    /// The soft thresholds (fractions of `limit`) that fleet-wide
    /// consumption has crossed for the first time this period; marks them.
    pub fn crossed(&mut self, limit_nusd: u64, thresholds: &[f64]) -> Vec<f64> {
        let consumed = self.consumed();
        let mut out = Vec::new();
        for (i, t) in thresholds.iter().enumerate().take(64) {
            let bit = 1u64 << i;
            let line = (limit_nusd as f64 * t).ceil() as u64;
            if self.fired & bit == 0 && consumed >= line {
                self.fired |= bit;
                out.push(*t);
            }
        }
        out
    }
}

/// A holder's name: its credential's name and its `sidecar_id`.
pub fn holder(credential: &str, sidecar_id: &str) -> String {
    format!("{credential}/{sidecar_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(limit: u64) -> Terms {
        Terms {
            limit_nusd: limit,
            ttl_ms: 60_000,
            reclaim_after_ms: None,
            allowance_nusd: 0,
        }
    }

    fn ask(consumed: u64, reserved: u64, want: u64, need: u64) -> LeaseAsk {
        LeaseAsk {
            budget: "b".into(),
            period: "2026-12".into(),
            consumed_nusd: consumed,
            reserved_nusd: reserved,
            want_nusd: want,
            need_nusd: need,
            held_nusd: 0,
        }
    }

    /// A holder may admit requests under its old grant while the renewal
    /// that cuts it is in flight: the cut only frees room for others once
    /// the holder renews again (its report then covers those requests).
    #[test]
    fn a_cut_grant_is_kept_from_others_until_the_next_renewal() {
        let t = terms(1000);
        let mut b = Book::default();
        b.renew("a", "1", &ask(0, 0, 800, 0), &t, 0).unwrap();
        // a returns room (nothing in flight) while holding 800.
        let cut = LeaseAsk {
            held_nusd: 800,
            ..ask(100, 0, 0, 0)
        };
        assert_eq!(b.renew("a", "1", &cut, &t, 1).unwrap().granted_nusd, 100);
        // Meanwhile a may have admitted up to 800: b gets only the rest.
        assert_eq!(
            b.renew("b", "2", &ask(0, 0, 900, 0), &t, 2)
                .unwrap()
                .granted_nusd,
            200
        );
        assert_eq!(b.free(&t, 2), 0);
        // a's next renewal reports what it admitted before the cut arrived
        // (300 in flight) and holds the cut grant: the rest is free again.
        let next = LeaseAsk {
            held_nusd: 100,
            ..ask(100, 300, 0, 0)
        };
        assert_eq!(b.renew("a", "1", &next, &t, 3).unwrap().granted_nusd, 400);
        assert_eq!(b.free(&t, 3), 400);
        // A lease returned at shutdown (held 0) frees its room at once.
        let closing = ask(400, 0, 0, 0);
        assert_eq!(
            b.renew("a", "1", &closing, &t, 4).unwrap().granted_nusd,
            400
        );
        assert_eq!(b.free(&t, 4), 400);
    }

    #[test]
    fn grants_never_pass_the_limit() {
        let t = terms(1000);
        let mut b = Book::default();
        let g = b.renew("a", "1", &ask(0, 0, 600, 0), &t, 0).unwrap();
        assert_eq!(g.granted_nusd, 600);
        // b shares what is left with a, which holds unused room.
        let g = b.renew("b", "2", &ask(0, 0, 600, 0), &t, 0).unwrap();
        assert_eq!(g.granted_nusd, 200);
        assert_eq!(b.free(&t, 0), 200);
        // A need is met while it fits, whatever the share.
        let g = b.renew("c", "3", &ask(0, 0, 300, 150), &t, 0).unwrap();
        assert_eq!(g.granted_nusd, 150);
        let g = b.renew("d", "4", &ask(0, 0, 300, 100), &t, 0).unwrap();
        assert_eq!(g.granted_nusd, 50);
        assert_eq!(b.free(&t, 0), 0);
        let held: u64 = b.holders.values().map(|h| h.granted).sum();
        assert_eq!(held, 1000);
    }

    #[test]
    fn renewal_is_absolute_and_returns_what_is_not_wanted() {
        let t = terms(1000);
        let mut b = Book::default();
        b.renew("a", "1", &ask(0, 0, 800, 0), &t, 0).unwrap();
        // Repeated: the same grant, not twice as much.
        let g = b.renew("a", "1", &ask(0, 0, 800, 0), &t, 0).unwrap();
        assert_eq!(g.granted_nusd, 800);
        // Consumed 300, wants 100 more: the rest goes back.
        let g = b.renew("a", "1", &ask(300, 50, 100, 0), &t, 10).unwrap();
        assert_eq!(g.granted_nusd, 450);
        assert_eq!(b.free(&t, 10), 550);
        // Shutdown: nothing wanted, nothing in flight.
        let g = b.renew("a", "1", &ask(320, 0, 0, 0), &t, 20).unwrap();
        assert_eq!(g.granted_nusd, 320);
        assert_eq!(b.consumed(), 320);
        assert_eq!(b.outstanding(&t, 20), 0);
    }

    #[test]
    fn shipped_and_reported_consumption_take_the_larger() {
        let t = terms(1000);
        let mut b = Book::default();
        b.renew("a", "1", &ask(100, 0, 100, 0), &t, 0).unwrap();
        b.shipped("a", 150);
        assert_eq!(b.consumed(), 150);
        // A late renewal reporting less than shipped does not lower it,
        // and tells the sidecar what the book counts.
        let g = b.renew("a", "1", &ask(120, 0, 100, 0), &t, 1).unwrap();
        assert_eq!(g.consumed_nusd, 150);
        assert_eq!(g.granted_nusd, 250);
    }

    #[test]
    fn expired_leases_are_free_only_after_the_reclaim_time() {
        let mut t = terms(1000);
        let mut b = Book::default();
        b.renew("a", "1", &ask(100, 0, 900, 0), &t, 0).unwrap();
        // Expired, reclaim never: still held.
        assert_eq!(b.free(&t, 120_000), 0);
        t.reclaim_after_ms = Some(60_000);
        assert_eq!(b.free(&t, 100_000), 0);
        assert_eq!(b.free(&t, 120_000), 900);
    }

    #[test]
    fn two_live_instances_of_one_holder_are_refused() {
        let t = terms(1000);
        let mut b = Book::default();
        b.renew("a", "1", &ask(0, 0, 10, 0), &t, 0).unwrap();
        assert!(b.renew("a", "2", &ask(0, 0, 10, 0), &t, 1).is_err());
        // Once the first has expired, a new instance takes over its record.
        let g = b.renew("a", "2", &ask(0, 0, 10, 0), &t, 60_001).unwrap();
        assert_eq!(g.granted_nusd, 10);
    }

    #[test]
    fn a_lowered_limit_grants_nothing_new_but_covers_what_is_in_flight() {
        let mut b = Book::default();
        b.renew("a", "1", &ask(0, 0, 500, 0), &terms(1000), 0)
            .unwrap();
        let g = b
            .renew("a", "1", &ask(400, 50, 500, 0), &terms(300), 1)
            .unwrap();
        assert_eq!(g.granted_nusd, 450);
        assert_eq!(b.free(&terms(300), 1), 0);
    }

    #[test]
    fn the_allowance_is_shared_and_thresholds_fire_once() {
        let mut t = terms(1000);
        t.allowance_nusd = 100;
        let mut b = Book::default();
        let g = b.renew("a", "1", &ask(0, 0, 100, 0), &t, 0).unwrap();
        assert_eq!(g.overdraft_nusd, 100);
        // b's share waits until a's shrinks: never more than 100 in all.
        let g = b.renew("b", "1", &ask(0, 0, 100, 0), &t, 0).unwrap();
        assert_eq!(g.overdraft_nusd, 0);
        let g = b.renew("a", "1", &ask(0, 0, 100, 0), &t, 1).unwrap();
        assert_eq!(g.overdraft_nusd, 50);
        let g = b.renew("b", "1", &ask(0, 0, 100, 0), &t, 1).unwrap();
        assert_eq!(g.overdraft_nusd, 50);
        b.shipped("a", 600);
        assert_eq!(b.crossed(1000, &[0.5, 0.9]), vec![0.5]);
        assert!(b.crossed(1000, &[0.5, 0.9]).is_empty());
        b.shipped("b", 300);
        assert_eq!(b.crossed(1000, &[0.5, 0.9]), vec![0.9]);
    }
}
