//! The cache store: entries kept through [`CacheRecords`] (sled's
//! `CacheTree` in the sidecar), with an in-memory index for
//! least-recently-used eviction under a byte cap and TTL expiry.
//!
//! Each key has two records, written and removed together:
//! - the entry: `[u32 LE header length][rmp header][u32 LE message length]
//!   [message][pre-rendered stream]`;
//! - the access record: `[last access µs u64 BE][size u64 BE][expires µs i64 BE]`.
//!
//! Only the small access records are read at start-up to rebuild the index,
//! so opening a full cache does not read its entries. Access times are
//! written back by the writer thread, so the LRU order survives a restart.
//!
//! The cache has a store of its own (`data_dir/cache`): its writes must not
//! ride on the usage journal's syncs, and losing its last half second in a
//! crash costs nothing but a few misses.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::key::Key;
use super::CacheMetrics;
use crate::dialect::Usage;
use crate::store::{self, CacheRecords};

/// Store failures; the request goes on uncached.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache {0}")]
    Records(#[from] store::StoreError),
    #[error("cache entry encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cache entry is corrupt: {0}")]
    Corrupt(String),
}

/// What an entry says about the call that produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub account: String,
    pub provider: String,
    /// The model the provider reported.
    pub model: String,
    /// When the answer was stored, µs since the epoch.
    pub created_us: i64,
    /// The original call's usage (a hit is priced from it: what it saved).
    pub usage: Usage,
    /// What the original call cost.
    pub cost_nusd: u64,
    /// The provider's request id of the original call.
    pub upstream_request_id: Option<String>,
}

/// A stored answer: the complete message (Anthropic `Message`, OpenAI
/// `chat.completion`) as JSON, and where it came from. Both byte fields
/// share the stored value (no copy).
#[derive(Clone, Debug)]
pub struct Entry {
    pub meta: EntryMeta,
    pub message: Bytes,
    /// The message pre-rendered as the provider's stream (Anthropic; OpenAI
    /// without the usage chunk), so a stream hit is a copy, not a
    /// re-synthesis. Empty when not rendered.
    pub stream: Bytes,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    access: u64,
    size: u64,
    expires_us: i64,
}

#[derive(Default)]
struct Index {
    slots: HashMap<Key, Slot>,
    /// (last access, key): the front is the least recently used.
    order: BTreeSet<(u64, Key)>,
    bytes: u64,
    /// Access clock: wall µs, but never repeating or going back.
    clock: u64,
}

impl Index {
    fn tick(&mut self, now_us: i64) -> u64 {
        self.clock = (now_us.max(0) as u64).max(self.clock + 1);
        self.clock
    }

    fn remove(&mut self, key: &Key) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.order.remove(&(slot.access, *key));
        self.bytes = self.bytes.saturating_sub(slot.size);
        Some(slot)
    }

    fn put(&mut self, key: Key, slot: Slot) {
        self.remove(&key);
        self.order.insert((slot.access, key));
        self.bytes += slot.size;
        self.slots.insert(key, slot);
    }

    fn touch(&mut self, key: &Key, access: u64) -> Option<Slot> {
        let slot = self.slots.get_mut(key)?;
        self.order.remove(&(slot.access, *key));
        slot.access = access;
        self.order.insert((access, *key));
        Some(*slot)
    }
}

/// What [`Store::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// Larger than the whole cap: not stored.
    TooLarge,
}

/// Counts of the store, for `tollgate cache stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// The cache store.
pub struct Store {
    records: Arc<dyn CacheRecords>,
    index: Mutex<Index>,
    max_bytes: u64,
    metrics: Option<CacheMetrics>,
    /// Entries read since their access time was last written: hits only
    /// note it here, and [`Store::persist_access`] writes it back off the
    /// request path (a sled write per hit would double a hit's cost).
    touched: Mutex<std::collections::HashSet<Key>>,
}

/// At most this many keys wait for their access time to be written back;
/// past it the LRU order of the excess is kept in memory only.
const MAX_TOUCHED: usize = 100_000;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn access_record(slot: &Slot) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&slot.access.to_be_bytes());
    v[8..16].copy_from_slice(&slot.size.to_be_bytes());
    v[16..].copy_from_slice(&slot.expires_us.to_be_bytes());
    v
}

fn parse_access(v: &[u8]) -> Option<Slot> {
    let access = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let size = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    let expires_us = i64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
    Some(Slot {
        access,
        size,
        expires_us,
    })
}

/// Where the parts of a stored value are.
struct Layout {
    meta: EntryMeta,
    message: std::ops::Range<usize>,
    stream: std::ops::Range<usize>,
}

/// Reads a stored value: `[u32 LE header length][rmp header]
/// [u32 LE message length][message][pre-rendered stream (may be empty)]`.
fn decode(value: &[u8]) -> Result<Layout, StoreError> {
    let corrupt = |m: &str| StoreError::Corrupt(m.to_string());
    let u32_at = |at: usize| -> Result<usize, StoreError> {
        value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| corrupt("short"))
    };
    let header_len = u32_at(0)?;
    let header = value
        .get(4..4 + header_len)
        .ok_or_else(|| corrupt("header past the end"))?;
    let meta: EntryMeta =
        rmp_serde::from_slice(header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let at = 4 + header_len;
    let message_len = u32_at(at)?;
    let message = at + 4..at + 4 + message_len;
    if message.end > value.len() {
        return Err(corrupt("message past the end"));
    }
    Ok(Layout {
        meta,
        stream: message.end..value.len(),
        message,
    })
}

impl Store {
    /// Opens the store in `tree` and rebuilds its index from the access
    /// records (read-only: [`Store::maintain`] drops what is expired and
    /// over the cap).
    pub fn open(
        records: Arc<dyn CacheRecords>,
        max_bytes: u64,
        metrics: Option<CacheMetrics>,
    ) -> Result<Store, StoreError> {
        let mut index = Index::default();
        for (key, access) in records.accesses()? {
            match parse_access(&access) {
                Some(slot) if records.has_entry(&key)? => {
                    index.clock = index.clock.max(slot.access);
                    index.put(Key(key), slot);
                }
                // An access record without its entry, or unreadable.
                _ => records.remove(&key)?,
            }
        }
        let store = Store {
            records,
            index: Mutex::new(index),
            max_bytes,
            metrics,
            touched: Mutex::default(),
        };
        store.update_gauges();
        Ok(store)
    }

    /// Writes back the access times of the entries read since the last
    /// call, so the LRU order survives a restart (called by the writer
    /// thread about once a second and when drained).
    pub fn persist_access(&self) -> Result<(), StoreError> {
        let keys = match self.touched.lock() {
            Ok(mut touched) => std::mem::take(&mut *touched),
            Err(_) => return Ok(()),
        };
        for key in keys {
            let Some(slot) = self
                .index
                .lock()
                .ok()
                .and_then(|index| index.slots.get(&key).copied())
            else {
                continue;
            };
            // Only while the record exists: never resurrect an entry that an
            // eviction or purge removed meanwhile.
            let record = access_record(&slot);
            self.records.touch(&key.0, &record)?;
        }
        Ok(())
    }

    /// Drops expired entries and evicts down to the cap.
    pub fn maintain(&self) -> Result<(), StoreError> {
        self.sweep(now_us())?;
        self.evict()?;
        self.update_gauges();
        Ok(())
    }

    /// The entry for `key` stored less than `ttl` ago, marking it used.
    pub fn get(&self, key: &Key, ttl: Duration) -> Result<Option<Entry>, StoreError> {
        let now = now_us();
        {
            let Ok(mut index) = self.index.lock() else {
                return Ok(None);
            };
            let Some(slot) = index.slots.get(key).copied() else {
                return Ok(None);
            };
            if slot.expires_us <= now {
                drop(index);
                self.drop_expired(key)?;
                return Ok(None);
            }
            let access = index.tick(now);
            index.touch(key, access);
        }
        let Some(value) = self.records.entry(&key.0)? else {
            // The index outlived its entry (removed concurrently): forget it.
            self.forget(key)?;
            return Ok(None);
        };
        let layout = match decode(&value) {
            Ok(d) => d,
            Err(e) => {
                self.forget(key)?;
                return Err(e);
            }
        };
        // The reader's TTL may be shorter than the writer's.
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        if layout.meta.created_us.saturating_add(ttl_us) <= now {
            return Ok(None);
        }
        if let Ok(mut touched) = self.touched.lock() {
            if touched.len() < MAX_TOUCHED {
                touched.insert(*key);
            }
        }
        Ok(Some(Entry {
            meta: layout.meta,
            message: value.slice(layout.message),
            stream: value.slice(layout.stream),
        }))
    }

    /// Stores an answer (and its pre-rendered `stream` form, possibly
    /// empty) for `ttl`, evicting least-recently-used entries to stay under
    /// the cap. An answer larger than the whole cap is not stored.
    pub fn put(
        &self,
        key: &Key,
        meta: &EntryMeta,
        message: &[u8],
        stream: &[u8],
        ttl: Duration,
    ) -> Result<Put, StoreError> {
        let header = rmp_serde::to_vec_named(meta)?;
        let (Ok(header_len), Ok(message_len)) =
            (u32::try_from(header.len()), u32::try_from(message.len()))
        else {
            return Ok(Put::TooLarge);
        };
        let mut value = Vec::with_capacity(8 + header.len() + message.len() + stream.len());
        value.extend_from_slice(&header_len.to_le_bytes());
        value.extend_from_slice(&header);
        value.extend_from_slice(&message_len.to_le_bytes());
        value.extend_from_slice(message);
        value.extend_from_slice(stream);
        let size = (value.len() + 24 + 2 * 33) as u64;
        if size > self.max_bytes {
            return Ok(Put::TooLarge);
        }
        let now = now_us();
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let access = match self.index.lock() {
            Ok(mut index) => index.tick(now),
            Err(_) => return Ok(Put::TooLarge),
        };
        let slot = Slot {
            access,
            size,
            expires_us: meta.created_us.saturating_add(ttl_us),
        };
        // sled first, then the index: a reader that finds the key indexed
        // always finds its entry.
        self.records.put(&key.0, value, &access_record(&slot))?;
        if let Ok(mut index) = self.index.lock() {
            index.put(*key, slot);
        }
        self.evict()?;
        self.update_gauges();
        Ok(Put::Stored)
    }

    /// Removes every entry (of `account` only, when given); returns how many.
    pub fn purge(&self, account: Option<&str>) -> Result<u64, StoreError> {
        let mut doomed = Vec::new();
        self.records.scan_entries(&mut |key, value| {
            let matches = match account {
                None => true,
                Some(a) => decode(value).map(|l| l.meta.account == a).unwrap_or(true),
            };
            if matches {
                doomed.push(Key(*key));
            }
            true
        })?;
        let removed = doomed.len() as u64;
        for key in &doomed {
            self.forget(key)?;
        }
        self.update_gauges();
        Ok(removed)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.records.flush()?)
    }

    /// Entry count and bytes.
    pub fn stats(&self) -> Stats {
        let (entries, bytes) = self
            .index
            .lock()
            .map(|i| (i.slots.len() as u64, i.bytes))
            .unwrap_or_default();
        Stats {
            entries,
            bytes,
            max_bytes: self.max_bytes,
        }
    }

    /// Removes an entry and its index record.
    fn forget(&self, key: &Key) -> Result<(), StoreError> {
        if let Ok(mut index) = self.index.lock() {
            index.remove(key);
        }
        self.records.remove(&key.0)?;
        Ok(())
    }

    fn drop_expired(&self, key: &Key) -> Result<(), StoreError> {
        self.forget(key)?;
        if let Some(m) = &self.metrics {
            m.expirations.inc();
        }
        self.update_gauges();
        Ok(())
    }

    /// Drops every entry past its expiry.
    fn sweep(&self, now: i64) -> Result<(), StoreError> {
        let expired: Vec<Key> = match self.index.lock() {
            Ok(i) => i
                .slots
                .iter()
                .filter(|(_, s)| s.expires_us <= now)
                .map(|(k, _)| *k)
                .collect(),
            Err(_) => return Ok(()),
        };
        for key in &expired {
            self.forget(key)?;
        }
        if let Some(m) = &self.metrics {
            m.expirations.inc_by(expired.len() as u64);
        }
        Ok(())
    }

    /// Evicts least-recently-used entries until the store fits its cap.
    fn evict(&self) -> Result<(), StoreError> {
        loop {
            let victim = match self.index.lock() {
                Ok(i) if i.bytes > self.max_bytes => i.order.first().map(|(_, k)| *k),
                _ => None,
            };
            let Some(key) = victim else { return Ok(()) };
            self.forget(&key)?;
            if let Some(m) = &self.metrics {
                m.evictions.inc();
            }
        }
    }

    fn update_gauges(&self) {
        if let Some(m) = &self.metrics {
            let s = self.stats();
            m.entries.set(s.entries as i64);
            m.bytes.set(s.bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(account: &str) -> EntryMeta {
        EntryMeta {
            account: account.into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            created_us: now_us(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            cost_nusd: 123,
            upstream_request_id: Some("req_1".into()),
        }
    }

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn tree(dir: &std::path::Path) -> Arc<dyn CacheRecords> {
        records(&sled::open(dir).unwrap())
    }

    fn records(db: &sled::Db) -> Arc<dyn CacheRecords> {
        Arc::new(crate::store::sled::CacheTree::new(
            db.open_tree("cache").unwrap(),
        ))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn put_get_round_trip_and_reader_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(tree(dir.path()), 1 << 20, None).unwrap();
        assert!(store.get(&key(1), HOUR).unwrap().is_none());
        assert!(
            store
                .put(&key(1), &meta("a"), b"{\"x\":1}", b"", HOUR)
                .unwrap()
                != Put::TooLarge
        );
        let e = store.get(&key(1), HOUR).unwrap().unwrap();
        assert_eq!(e.meta, meta_with_created(&e.meta));
        assert_eq!(&e.message[..], b"{\"x\":1}");
        assert!(e.stream.is_empty());
        // A reader with a zero TTL sees nothing; the entry stays.
        assert!(store.get(&key(1), Duration::ZERO).unwrap().is_none());
        assert!(store.get(&key(1), HOUR).unwrap().is_some());
    }

    fn meta_with_created(m: &EntryMeta) -> EntryMeta {
        EntryMeta {
            created_us: m.created_us,
            ..meta("a")
        }
    }

    #[test]
    fn writer_ttl_expires_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(tree(dir.path()), 1 << 20, None).unwrap();
        store
            .put(&key(1), &meta("a"), b"{}", b"", Duration::from_millis(1))
            .unwrap();
        store
            .put(&key(2), &meta("a"), b"{}", b"", Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.get(&key(1), HOUR).unwrap().is_none());
        assert_eq!(store.stats().entries, 1);
        // The sweep drops the other one without it being asked for.
        store.maintain().unwrap();
        assert_eq!(store.stats().entries, 0);
        assert_eq!(store.stats().bytes, 0);
    }

    #[test]
    fn lru_eviction_under_the_cap_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![b'x'; 1000];
        let one = {
            let probe = tempfile::tempdir().unwrap();
            let store = Store::open(tree(probe.path()), 1 << 20, None).unwrap();
            store.put(&key(1), &meta("a"), &body, b"", HOUR).unwrap();
            store.stats().bytes
        };
        // Room for three entries.
        let cap = one * 3 + one / 2;
        // One Db for both "runs" (sled may still hold a dropped Db's lock
        // for a moment); the second Store rebuilds its index from the tree.
        let db = sled::open(dir.path()).unwrap();
        {
            let store = Store::open(records(&db), cap, None).unwrap();
            for n in 1..=3 {
                store.put(&key(n), &meta("a"), &body, b"", HOUR).unwrap();
            }
            // 1 becomes the most recently used; 2 is now the oldest.
            assert!(store.get(&key(1), HOUR).unwrap().is_some());
            store.put(&key(4), &meta("a"), &body, b"", HOUR).unwrap();
            assert!(store.get(&key(2), HOUR).unwrap().is_none());
            assert_eq!(store.stats().entries, 3);
            // Hits only note their access; the writer writes it back.
            store.persist_access().unwrap();
        }
        // The order is persisted: after a restart 3 is the oldest.
        let store = Store::open(records(&db), cap, None).unwrap();
        assert_eq!(store.stats().entries, 3);
        store.put(&key(5), &meta("a"), &body, b"", HOUR).unwrap();
        assert!(store.get(&key(3), HOUR).unwrap().is_none());
        for n in [1, 4, 5] {
            assert!(store.get(&key(n), HOUR).unwrap().is_some(), "{n}");
        }
        // Too big for the whole cap: not stored.
        assert_eq!(
            store
                .put(&key(6), &meta("a"), &vec![0; cap as usize], b"", HOUR)
                .unwrap(),
            Put::TooLarge
        );
    }

    #[test]
    fn purge_all_or_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(tree(dir.path()), 1 << 20, None).unwrap();
        store.put(&key(1), &meta("a"), b"{}", b"", HOUR).unwrap();
        store.put(&key(2), &meta("b"), b"{}", b"", HOUR).unwrap();
        store.put(&key(3), &meta("b"), b"{}", b"", HOUR).unwrap();
        assert_eq!(store.purge(Some("b")).unwrap(), 2);
        assert!(store.get(&key(1), HOUR).unwrap().is_some());
        assert_eq!(store.purge(None).unwrap(), 1);
        assert_eq!(store.stats().entries, 0);
        assert_eq!(store.stats().bytes, 0);
    }

    #[test]
    fn access_times_are_written_back_later_and_never_resurrect() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(tree(dir.path()), 1 << 20, None).unwrap();
        store.put(&key(1), &meta("a"), b"{}", b"", HOUR).unwrap();
        store.put(&key(2), &meta("a"), b"{}", b"", HOUR).unwrap();
        let record = |n: u8| {
            store
                .records
                .accesses()
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key(n).0)
                .and_then(|(_, v)| parse_access(&v))
        };
        let stored = record(1).unwrap().access;
        // A hit moves the entry in memory only...
        assert!(store.get(&key(1), HOUR).unwrap().is_some());
        assert!(store.get(&key(2), HOUR).unwrap().is_some());
        assert_eq!(record(1).unwrap().access, stored);
        // ...until written back, unless it was removed meanwhile.
        assert_eq!(store.purge(None).unwrap(), 2);
        store.put(&key(1), &meta("a"), b"{}", b"", HOUR).unwrap();
        let after_put = record(1).unwrap().access;
        store.persist_access().unwrap();
        assert_eq!(record(1).unwrap().access, after_put);
        assert!(record(2).is_none(), "a purged entry came back");
        assert!(store.get(&key(1), HOUR).unwrap().is_some());
        store.persist_access().unwrap();
        assert!(record(1).unwrap().access > after_put);
    }
}
