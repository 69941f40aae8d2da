//! Storage: the traits the rest of tollgate keeps its state through, and
//! their embedded backend (sled, in [`sled`]). No sled type appears outside
//! this folder's backend modules, so a second backend (PostgreSQL for the
//! control endpoint) implements the same traits and runs the same test
//! suite (`suite.rs`, written once against the traits).
//!
//! The usage journal ([`journal`]) is the one store of its own kind: an
//! append-only log of usage records that a request waits on, folded into
//! the ledger (behind [`journal::Fold`]) off the request path.

pub mod journal;
pub mod outbox;
pub mod sled;
#[cfg(test)]
pub(crate) mod suite;

use bytes::Bytes;

/// A storage backend failed (I/O, corruption, a full disk). The message
/// never holds a credential.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// The usage ledger's events (the outbox): encoded events under
/// time-ordered keys (UUID v7 bytes), so key order is time order.
pub trait EventRecords: Send + Sync {
    /// Whether an event is stored under `key`.
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// Stores `(key, event)` pairs in order (a key already there is
    /// replaced). Not atomic: after a crash a prefix of them may be stored;
    /// the journal's recovery inserts the rest.
    fn insert(&self, events: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError>;
    /// The `limit` newest events, oldest first.
    fn latest(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Calls `f` with every event, oldest first, until it returns false.
    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>;
    /// Removes the event under `key`.
    fn remove(&self, key: &[u8]) -> Result<(), StoreError>;
    /// Removes the events under `keys` (at once where the backend can).
    fn remove_all(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        keys.iter().try_for_each(|k| self.remove(k))
    }
    /// How many events are stored (may walk them all).
    fn len(&self) -> Result<usize, StoreError>;
    /// Whether no event is stored.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// Makes everything written so far durable (for sled: the whole
    /// database, budget spend included).
    fn flush(&self) -> Result<(), StoreError>;
}

/// A cache key (blake3 of the canonical request).
pub type CacheKey = [u8; 32];

/// The exact cache's records: for each key an entry (the stored answer,
/// opaque bytes) and a small access record (LRU and expiry figures),
/// written and removed together.
pub trait CacheRecords: Send + Sync {
    /// The entry of `key`; the bytes share the backend's buffer where it can.
    fn entry(&self, key: &CacheKey) -> Result<Option<Bytes>, StoreError>;
    /// Whether `key` has an entry.
    fn has_entry(&self, key: &CacheKey) -> Result<bool, StoreError>;
    /// Stores an entry and its access record, atomically.
    fn put(&self, key: &CacheKey, entry: Vec<u8>, access: &[u8]) -> Result<(), StoreError>;
    /// Removes an entry and its access record, atomically.
    fn remove(&self, key: &CacheKey) -> Result<(), StoreError>;
    /// Replaces the access record of `key` only while it exists (never
    /// resurrects a removed entry).
    fn touch(&self, key: &CacheKey, access: &[u8]) -> Result<(), StoreError>;
    /// Every access record (small: read at start-up to rebuild the index).
    fn accesses(&self) -> Result<Vec<(CacheKey, Vec<u8>)>, StoreError>;
    /// Calls `f` with every entry until it returns false.
    fn scan_entries(&self, f: &mut dyn FnMut(&CacheKey, &[u8]) -> bool) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Answers kept for idempotent retries: one opaque record (an expiry
/// prefix, then the answer) per account-scoped key.
pub trait IdempotencyRecords: Send + Sync {
    /// The record under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    /// Stores `record` under `key`, replacing any.
    fn put(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError>;
    /// Removes the record under `key` only while it is still `expected`
    /// (a sweep never removes an answer stored again since it looked).
    fn remove_if(&self, key: &[u8], expected: &[u8]) -> Result<bool, StoreError>;
    /// Calls `f` with every record, in key order, until it returns false.
    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Batches tracked from submit to settlement (`crate::batch`): one opaque
/// record per key (`provider/batch id`). Every write is durable when it
/// returns (a batch's reservation and its settled marker live here).
pub trait BatchRecords: Send + Sync {
    /// The record under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `record` under `key` (replacing any) and, in the same atomic
    /// step, removes the record under `replaces` (a batch renamed when the
    /// provider names it); durable on return.
    fn put(&self, key: &str, record: &[u8], replaces: Option<&str>) -> Result<(), StoreError>;
    /// Removes the record under `key`; durable on return. Whether there was one.
    fn remove(&self, key: &str) -> Result<bool, StoreError>;
    /// Calls `f` with every record, in key order, until it returns false.
    fn scan(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError>;
}

/// Secrets kept for accounts: sealed provider keys (BYOK, an AEAD envelope
/// made above this layer) and hashed credentials, each an opaque record
/// under a namespaced id (`byok/acme/anthropic`, `sidecar/<hash>`). The
/// store never sees a secret in the clear.
pub trait KeyStore: Send + Sync {
    /// Stores `record` under `id`, replacing any; returns whether one was replaced.
    fn put(&self, id: &str, record: &[u8]) -> Result<bool, StoreError>;
    /// The record under `id`.
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes the record under `id`; returns whether there was one.
    fn remove(&self, id: &str) -> Result<bool, StoreError>;
    /// Every record whose id starts with `prefix`, in id order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// An append-only log of opaque records (the control endpoint's audit
/// log), numbered by the store in append order from 1.
pub trait AppendLog: Send + Sync {
    /// Appends `record`; returns its number.
    fn append(&self, record: &[u8]) -> Result<u64, StoreError>;
    /// The number of the last record (0 when empty).
    fn last(&self) -> Result<u64, StoreError>;
    /// Records numbered `from` and above, in order, until `f` returns false.
    fn scan_from(&self, from: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool)
        -> Result<(), StoreError>;
    /// Makes everything appended so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Totals kept per rollup row: requests, input, output, cache-write and
/// cache-read tokens, cost and saved (nano-USD).
pub type RollupTotals = [u64; 7];

/// The control endpoint's usage ledger: each event once, under a key the
/// caller derives from the event alone (account, time, event id), so a
/// re-sent event lands on its own key and one account's period is one
/// key range; and per-day rollup rows, added to in the same atomic step
/// as the events they count, so rollups count each event exactly once.
pub trait LedgerRecords: Send + Sync {
    /// Stores every `(key, event, rollup key, totals)` whose key is new and
    /// adds its totals to its rollup row, all or nothing; returns the
    /// indexes of the rows that were new (the others were there already
    /// and change nothing).
    fn insert_new(&self, rows: Vec<LedgerRow>) -> Result<Vec<usize>, StoreError>;
    /// Events with keys in `from..to`, in key order, until `f` returns false.
    fn scan_range(
        &self,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Rollup rows with keys in `from..to`, in key order, until `f` returns false.
    fn scan_rollups(
        &self,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], RollupTotals) -> bool,
    ) -> Result<(), StoreError>;
    /// Events stored.
    fn len(&self) -> Result<usize, StoreError>;
    /// Whether there are none.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// Makes everything stored so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// One event for [`LedgerRecords::insert_new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    pub key: Vec<u8>,
    pub event: Vec<u8>,
    pub rollup_key: Vec<u8>,
    pub totals: RollupTotals,
}

/// The control endpoint's records, each kind in its own table, and its
/// audit log. The control logic sees only these traits.
#[derive(Clone)]
pub struct ControlRecords {
    /// Accounts by name.
    pub accounts: std::sync::Arc<dyn KeyStore>,
    /// Gateway keys by the hex SHA-256 of the key.
    pub gateway_keys: std::sync::Arc<dyn KeyStore>,
    /// Sidecar credentials by the hex SHA-256 of the credential.
    pub sidecars: std::sync::Arc<dyn KeyStore>,
    /// Sealed provider keys (BYOK) by `<account>/<provider>`.
    pub provider_keys: std::sync::Arc<dyn KeyStore>,
    /// Budgets by name.
    pub budgets: std::sync::Arc<dyn KeyStore>,
    /// Model aliases by name.
    pub aliases: std::sync::Arc<dyn KeyStore>,
    /// Lease books (`crate::lease::Book`) by `<budget>/<period>`.
    pub leases: std::sync::Arc<dyn KeyStore>,
    /// The audit log.
    pub audit: std::sync::Arc<dyn AppendLog>,
    /// The usage ledger.
    pub ledger: std::sync::Arc<dyn LedgerRecords>,
}

impl ControlRecords {
    /// Makes every table durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.accounts.flush()?;
        self.gateway_keys.flush()?;
        self.sidecars.flush()?;
        self.provider_keys.flush()?;
        self.budgets.flush()?;
        self.aliases.flush()?;
        self.leases.flush()?;
        self.ledger.flush()?;
        self.audit.flush()
    }
}
