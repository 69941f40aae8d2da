//! The embedded backend: sled.

use std::path::Path;

use bytes::Bytes;

use super::{
    AppendLog, CacheKey, CacheRecords, ControlRecords, EventRecords, IdempotencyRecords, KeyStore,
    LedgerRecords, LedgerRow, RollupTotals, StoreError,
};
use crate::budget::{SpendError, SpendRecords};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError(e.to_string())
    }
}

const ENTRY: u8 = b'e';
const ACCESS: u8 = b'a';

/// The cache's own database, under the data dir: its writes must not ride
/// on the usage journal's syncs.
pub const CACHE_DIR: &str = "cache";
const CACHE_TREE: &str = "cache";

/// Opens a sled database; `None` when another process holds it (a running
/// sidecar: ask it instead).
pub fn open_db(path: &Path, cache_bytes: u64) -> Result<Option<sled::Db>, StoreError> {
    match sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .open()
    {
        Ok(db) => Ok(Some(db)),
        Err(sled::Error::Io(e))
            if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
        {
            Ok(None)
        }
        Err(e) => Err(StoreError(format!("opening {}: {e}", path.display()))),
    }
}

/// The cache's records in one sled tree (so an entry and its access record
/// are written together by one atomic batch):
/// - `e` + key → the entry
/// - `a` + key → the access record
pub struct CacheTree {
    tree: sled::Tree,
}

impl CacheTree {
    /// The records in `tree`.
    pub fn new(tree: sled::Tree) -> CacheTree {
        CacheTree { tree }
    }

    /// The cache of `data_dir` (`data_dir/cache`), with `cache_bytes` of
    /// page cache; `None` when a running sidecar holds it.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<Option<CacheTree>, StoreError> {
        let Some(db) = open_db(&data_dir.join(CACHE_DIR), cache_bytes)? else {
            return Ok(None);
        };
        Ok(Some(CacheTree::new(db.open_tree(CACHE_TREE)?)))
    }
}

fn prefixed(tag: u8, key: &CacheKey) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = tag;
    k[1..].copy_from_slice(key);
    k
}

fn key_of(k: &[u8]) -> Option<CacheKey> {
    k.get(1..33)?.try_into().ok()
}

impl CacheRecords for CacheTree {
    fn entry(&self, key: &CacheKey) -> Result<Option<Bytes>, StoreError> {
        // Zero copy: the bytes keep sled's buffer alive.
        Ok(self.tree.get(prefixed(ENTRY, key))?.map(Bytes::from_owner))
    }

    fn has_entry(&self, key: &CacheKey) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(prefixed(ENTRY, key))?)
    }

    fn put(&self, key: &CacheKey, entry: Vec<u8>, access: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(&prefixed(ENTRY, key)[..], entry);
        batch.insert(&prefixed(ACCESS, key)[..], access);
        Ok(self.tree.apply_batch(batch)?)
    }

    fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(&prefixed(ENTRY, key)[..]);
        batch.remove(&prefixed(ACCESS, key)[..]);
        Ok(self.tree.apply_batch(batch)?)
    }

    fn touch(&self, key: &CacheKey, access: &[u8]) -> Result<(), StoreError> {
        self.tree
            .fetch_and_update(prefixed(ACCESS, key), |old| old.map(|_| access.to_vec()))?;
        Ok(())
    }

    fn accesses(&self) -> Result<Vec<(CacheKey, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([ACCESS]) {
            let (k, v) = item?;
            match key_of(&k) {
                Some(key) => out.push((key, v.to_vec())),
                // Not ours: a key of the wrong length is dropped.
                None => {
                    self.tree.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    fn scan_entries(&self, f: &mut dyn FnMut(&CacheKey, &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([ENTRY]) {
            let (k, v) = item?;
            let Some(key) = key_of(&k) else { continue };
            if !f(&key, &v) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// The key store in one sled tree: id → record.
pub struct KeyTree {
    tree: sled::Tree,
}

impl KeyTree {
    /// The records in `tree`.
    pub fn new(tree: sled::Tree) -> KeyTree {
        KeyTree { tree }
    }
}

impl KeyStore for KeyTree {
    fn put(&self, id: &str, record: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.insert(id.as_bytes(), record)?.is_some())
    }

    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.tree.remove(id.as_bytes())?.is_some())
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item?;
                let id = String::from_utf8(k.to_vec())
                    .map_err(|_| StoreError("a key-store id is not UTF-8".into()))?;
                Ok((id, v.to_vec()))
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// The sled tree of budget spend (`budgets`): `budget \0 period` → the
/// record, and the journal's watermark under its own key.
pub struct SpendTree {
    tree: sled::Tree,
}

/// The tree's name in the sidecar's database.
pub const SPEND_TREE: &str = "budgets";
const WATERMARK_KEY: &[u8] = b"\0journal_watermark";

impl SpendTree {
    /// The spend in `tree`.
    pub fn new(tree: sled::Tree) -> SpendTree {
        SpendTree { tree }
    }

    /// The spend tree of the sidecar's database `db`.
    pub fn open(db: &sled::Db) -> Result<SpendTree, StoreError> {
        Ok(SpendTree::new(db.open_tree(SPEND_TREE)?))
    }
}

fn spend_key(budget: &str, period: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(budget.len() + period.len() + 1);
    k.extend_from_slice(budget.as_bytes());
    k.push(0);
    k.extend_from_slice(period.as_bytes());
    k
}

impl From<sled::Error> for SpendError {
    fn from(e: sled::Error) -> Self {
        SpendError(e.to_string())
    }
}

impl SpendRecords for SpendTree {
    fn get(&self, budget: &str, period: &str) -> Result<Option<Vec<u8>>, SpendError> {
        Ok(self
            .tree
            .get(spend_key(budget, period))?
            .map(|v| v.to_vec()))
    }

    fn put(
        &self,
        records: &[(&str, &str, Vec<u8>)],
        watermark: Option<u64>,
    ) -> Result<(), SpendError> {
        // One insert each, the watermark last, not one batch: sled writes
        // out its log buffer for every batch, waking all of its I/O
        // threads, several times a second at a trickle of requests. sled
        // recovers a prefix of its writes, so a stored watermark still
        // implies the spend before it; a crash between them leaves newer
        // spend under an older watermark, and recovery then charges the
        // finals past it again: over, never under.
        for (budget, period, record) in records {
            self.tree
                .insert(spend_key(budget, period), record.as_slice())?;
        }
        if let Some(w) = watermark {
            self.tree.insert(WATERMARK_KEY, &w.to_be_bytes()[..])?;
        }
        Ok(())
    }

    fn watermark(&self) -> Result<u64, SpendError> {
        Ok(match self.tree.get(WATERMARK_KEY)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            _ => 0,
        })
    }
}

/// The outbox tree's name in the sidecar's database.
pub const EVENT_TREE: &str = "outbox";

/// Events removed per sled batch.
const REMOVE_BATCH: usize = 1024;

/// The usage events in one sled tree (`outbox`).
pub struct EventTree {
    tree: sled::Tree,
}

impl EventTree {
    /// The events in `tree`.
    pub fn new(tree: sled::Tree) -> EventTree {
        EventTree { tree }
    }

    /// The outbox of the sidecar's database `db`.
    pub fn open(db: &sled::Db) -> Result<EventTree, StoreError> {
        Ok(EventTree::new(db.open_tree(EVENT_TREE)?))
    }
}

impl EventRecords for EventTree {
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    fn insert(&self, events: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        // One insert each: a sled batch writes out the log buffer (see
        // `SpendTree::put`), and nothing needs a fold's events atomic
        // (recovery re-inserts what is missing).
        for (k, v) in events {
            self.tree.insert(k, v)?;
        }
        Ok(())
    }

    fn latest(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = self
            .tree
            .iter()
            .rev()
            .take(limit)
            .map(|item| Ok(item?.1.to_vec()))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.tree.iter() {
            let (k, v) = item?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    fn remove_all(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        // Bounded batches: a day of pruned events in one would be copied
        // into one write at once.
        for part in keys.chunks(REMOVE_BATCH) {
            let mut batch = sled::Batch::default();
            for k in part {
                batch.remove(k.as_slice());
            }
            self.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.tree.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// An [`AppendLog`] in one sled tree, keyed by the big-endian number.
pub struct LogTree {
    tree: sled::Tree,
    /// The last number given; appends are numbered under this lock.
    last: std::sync::Mutex<u64>,
}

impl LogTree {
    /// The log in `tree`, numbering on from its last record.
    pub fn new(tree: sled::Tree) -> Result<LogTree, StoreError> {
        let last = match tree.last()? {
            Some((k, _)) => k
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError("a log record key is not 8 bytes".into()))?,
            None => 0,
        };
        Ok(LogTree {
            tree,
            last: std::sync::Mutex::new(last),
        })
    }
}

impl AppendLog for LogTree {
    fn append(&self, record: &[u8]) -> Result<u64, StoreError> {
        let mut last = self
            .last
            .lock()
            .map_err(|_| StoreError("the log's lock is poisoned".into()))?;
        let n = *last + 1;
        self.tree.insert(n.to_be_bytes(), record)?;
        *last = n;
        Ok(n)
    }

    fn last(&self) -> Result<u64, StoreError> {
        self.last
            .lock()
            .map(|l| *l)
            .map_err(|_| StoreError("the log's lock is poisoned".into()))
    }

    fn scan_from(
        &self,
        from: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.tree.range(from.to_be_bytes()..) {
            let (k, v) = item?;
            let Ok(n) = k.as_ref().try_into().map(u64::from_be_bytes) else {
                continue;
            };
            if !f(n, &v) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// A [`LedgerRecords`] in two sled trees: the events, and the rollup rows
/// (each a little-endian `[u64; 7]`), written together in one transaction.
pub struct LedgerTree {
    events: sled::Tree,
    rollups: sled::Tree,
}

impl LedgerTree {
    /// The ledger in `events` and `rollups`.
    pub fn new(events: sled::Tree, rollups: sled::Tree) -> LedgerTree {
        LedgerTree { events, rollups }
    }
}

fn totals_from(bytes: &[u8]) -> RollupTotals {
    let mut t = [0u64; 7];
    for (i, chunk) in bytes.chunks_exact(8).take(7).enumerate() {
        t[i] = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    t
}

fn totals_bytes(t: &RollupTotals) -> [u8; 56] {
    let mut b = [0u8; 56];
    for (i, v) in t.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

impl LedgerRecords for LedgerTree {
    fn insert_new(&self, rows: Vec<LedgerRow>) -> Result<Vec<usize>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        let result = (&self.events, &self.rollups).transaction(|(events, rollups)| {
            // Built afresh by each attempt: a conflicting transaction reruns.
            let mut new = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                if events.get(&r.key)?.is_some() {
                    continue;
                }
                events.insert(r.key.as_slice(), r.event.as_slice())?;
                let mut t = rollups
                    .get(&r.rollup_key)?
                    .map(|b| totals_from(&b))
                    .unwrap_or_default();
                for (sum, add) in t.iter_mut().zip(r.totals) {
                    *sum = sum.saturating_add(add);
                }
                rollups.insert(r.rollup_key.as_slice(), &totals_bytes(&t)[..])?;
                new.push(i);
            }
            Ok::<Vec<usize>, ConflictableTransactionError<()>>(new)
        });
        match result {
            Ok(n) => Ok(n),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => {
                Err(StoreError("the ledger transaction aborted".into()))
            }
        }
    }

    fn scan_range(
        &self,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.events.range(from..to) {
            let (_, v) = item?;
            if !f(&v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_rollups(
        &self,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], RollupTotals) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.rollups.range(from..to) {
            let (k, v) = item?;
            if !f(&k, totals_from(&v)) {
                break;
            }
        }
        Ok(())
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.events.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.events.flush()?;
        self.rollups.flush()?;
        Ok(())
    }
}

/// The control endpoint's records in the sled database `db`, one tree each.
pub fn control_records(db: &sled::Db) -> Result<ControlRecords, StoreError> {
    let table = |name: &str| -> Result<std::sync::Arc<dyn KeyStore>, StoreError> {
        Ok(std::sync::Arc::new(KeyTree::new(db.open_tree(name)?)))
    };
    Ok(ControlRecords {
        accounts: table("accounts")?,
        gateway_keys: table("gateway_keys")?,
        sidecars: table("sidecars")?,
        provider_keys: table("provider_keys")?,
        budgets: table("budgets")?,
        aliases: table("aliases")?,
        leases: table("leases")?,
        audit: std::sync::Arc::new(LogTree::new(db.open_tree("audit")?)?),
        ledger: std::sync::Arc::new(LedgerTree::new(
            db.open_tree("ledger")?,
            db.open_tree("ledger_rollups")?,
        )),
    })
}

const IDEMPOTENCY_TREE: &str = "idempotency";

/// Answers kept for idempotent retries, in their own tree of the
/// sidecar's store (never the cache's).
pub struct IdempotencyTree {
    tree: sled::Tree,
}

impl IdempotencyTree {
    /// The records in `tree`.
    pub fn new(tree: sled::Tree) -> IdempotencyTree {
        IdempotencyTree { tree }
    }

    /// The idempotency tree of `db`.
    pub fn open(db: &sled::Db) -> Result<IdempotencyTree, StoreError> {
        Ok(IdempotencyTree::new(db.open_tree(IDEMPOTENCY_TREE)?))
    }
}

impl IdempotencyRecords for IdempotencyTree {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.tree.get(key)?.map(Bytes::from_owner))
    }

    fn put(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key, record)?;
        Ok(())
    }

    fn remove_if(&self, key: &[u8], expected: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .tree
            .compare_and_swap(key, Some(expected), None::<&[u8]>)?
            .is_ok())
    }

    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.tree.iter() {
            let (k, v) = item?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

const BATCH_TREE: &str = "batches";
/// Batch input files uploaded through the sidecar (OpenAI `purpose=batch`),
/// priced per item, kept for `batches.retention` after their upload.
const BATCH_INPUT_TREE: &str = "batch_inputs";

/// Tracked batches, in their own tree of the sidecar's store.
pub struct BatchTree {
    tree: sled::Tree,
}

impl BatchTree {
    /// The records in `tree`.
    pub fn new(tree: sled::Tree) -> BatchTree {
        BatchTree { tree }
    }

    /// The batch tree of `db`.
    pub fn open(db: &sled::Db) -> Result<BatchTree, StoreError> {
        Ok(BatchTree::new(db.open_tree(BATCH_TREE)?))
    }

    /// The tree of `db` that keeps uploaded batch input files
    /// (`crate::batch::UploadedInput`), with the same guarantees.
    pub fn open_inputs(db: &sled::Db) -> Result<BatchTree, StoreError> {
        Ok(BatchTree::new(db.open_tree(BATCH_INPUT_TREE)?))
    }
}

impl crate::store::BatchRecords for BatchTree {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    fn put(&self, key: &str, record: &[u8], replaces: Option<&str>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if let Some(old) = replaces.filter(|old| *old != key) {
            batch.remove(old.as_bytes());
        }
        batch.insert(key.as_bytes(), record);
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let had = self.tree.remove(key.as_bytes())?.is_some();
        self.tree.flush()?;
        Ok(had)
    }

    fn scan(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.tree.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k);
            if !f(&key, &v) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cache_tree() -> (tempfile::TempDir, CacheTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("cache").unwrap();
        (dir, CacheTree::new(tree))
    }

    #[test]
    fn spend_records_suite() {
        crate::store::suite::spend_records(|| {
            let dir = tempfile::tempdir().unwrap();
            let tree = sled::open(dir.path())
                .unwrap()
                .open_tree(SPEND_TREE)
                .unwrap();
            (dir, SpendTree::new(tree))
        });
    }

    #[test]
    fn event_records_suite() {
        crate::store::suite::event_records(|| {
            let dir = tempfile::tempdir().unwrap();
            let tree = sled::open(dir.path())
                .unwrap()
                .open_tree(EVENT_TREE)
                .unwrap();
            (dir, EventTree::new(tree))
        });
    }

    #[test]
    fn key_store_suite() {
        crate::store::suite::key_store(|| {
            let dir = tempfile::tempdir().unwrap();
            let tree = sled::open(dir.path()).unwrap().open_tree("keys").unwrap();
            (dir, KeyTree::new(tree))
        });
    }

    #[test]
    fn append_log_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::suite::append_log(|| {
            let db = sled::open(dir.path().join(uuid::Uuid::now_v7().to_string())).unwrap();
            let tree = db.open_tree("audit").unwrap();
            (db.clone(), LogTree::new(tree).unwrap())
        });
        // Numbering goes on after a reopen.
        let db = sled::open(dir.path().join("reopen")).unwrap();
        let log = LogTree::new(db.open_tree("audit").unwrap()).unwrap();
        assert_eq!(log.append(b"a").unwrap(), 1);
        assert_eq!(log.append(b"b").unwrap(), 2);
        drop(log);
        let log = LogTree::new(db.open_tree("audit").unwrap()).unwrap();
        assert_eq!(log.append(b"c").unwrap(), 3);
    }

    #[test]
    fn ledger_records_suite() {
        crate::store::suite::ledger_records(|| {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            let tree = LedgerTree::new(db.open_tree("ledger").unwrap(), db.open_tree("r").unwrap());
            (dir, tree)
        });
    }

    #[test]
    fn cache_records_suite() {
        crate::store::suite::cache_records(cache_tree);
    }

    #[test]
    fn batch_records_suite() {
        crate::store::suite::batch_records(|| {
            let dir = tempfile::tempdir().unwrap();
            let tree = sled::open(dir.path())
                .unwrap()
                .open_tree(BATCH_TREE)
                .unwrap();
            (dir, BatchTree::new(tree))
        });
    }

    #[test]
    fn idempotency_records_suite() {
        crate::store::suite::idempotency_records(|| {
            let dir = tempfile::tempdir().unwrap();
            let tree = sled::open(dir.path())
                .unwrap()
                .open_tree(IDEMPOTENCY_TREE)
                .unwrap();
            (dir, IdempotencyTree::new(tree))
        });
    }
}
