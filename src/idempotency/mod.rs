//! Idempotent retries (`Idempotency-Key`, Stripe's rules): the first
//! request with a key runs; its complete answer is kept for the key's TTL
//! and a retry with the same key, account and fingerprint gets it again
//! without a second provider call or a second charge.
//!
//! - [`key`]: key validation, the fingerprint, the stored record (pure).
//! - [`Idempotency`]: the keys in flight (in memory: a retry waits on the
//!   first) and the answers kept (in the store, behind
//!   [`crate::store::IdempotencyRecords`], so they survive a restart and
//!   memory holds only what is in flight).
//!
//! Stored answers live in their own tree, never shared with the exact
//! cache. Expired ones are ignored when read and removed by [`Idempotency::sweep`].
//! The request-path stage that uses this is `proxy::idempotency`.

pub mod key;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::watch;

pub use key::{Fingerprint, Record};

use crate::store::{IdempotencyRecords, StoreError};

/// What `tollgate_idempotency_requests_total` counts, by `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first request with its key: it runs.
    First,
    /// A retry answered with the stored answer.
    Replay,
    /// A retry that waited for the first (then counted again as replay,
    /// first or conflict).
    Wait,
    /// A retry refused with 409: the first is still running.
    Conflict,
    /// The key was used with another request (422).
    Mismatch,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::First => "first",
            Outcome::Replay => "replay",
            Outcome::Wait => "wait",
            Outcome::Conflict => "conflict",
            Outcome::Mismatch => "mismatch",
        }
    }
}

/// How a key in flight ended.
#[derive(Clone, Debug)]
pub enum Settled {
    /// Its answer, kept: waiters replay it.
    Stored(Arc<Record>),
    /// No answer kept (refused, cut, unreachable): a waiter runs itself.
    Released,
}

/// A key in flight.
struct Slot {
    fingerprint: Fingerprint,
    done: watch::Sender<Option<Settled>>,
}

/// What a key is when a request arrives with it.
pub enum Found {
    /// Nobody has used it: this request runs and must settle the claim.
    First(Claim),
    /// Its answer (same request): replay it.
    Stored(Arc<Record>),
    /// Used with another request.
    Mismatch,
    /// The same request is running: wait for it (or refuse with 409).
    Running(Wait),
}

/// A wait on a key in flight.
pub struct Wait {
    rx: watch::Receiver<Option<Settled>>,
}

impl Wait {
    /// How the key's first request ended.
    pub async fn done(mut self) -> Settled {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Settled::Released),
            // The first request's claim went without a word: as released.
            Err(_) => Settled::Released,
        }
    }
}

/// Idempotency keys: the ones in flight and the answers kept.
pub struct Idempotency {
    /// How long an answer is kept (`idempotency_ttl`).
    pub ttl: Duration,
    /// How long a retry waits for the first request (`idempotency_wait`).
    pub wait: Duration,
    records: Arc<dyn IdempotencyRecords>,
    slots: Mutex<HashMap<Vec<u8>, Arc<Slot>>>,
    /// `tollgate_idempotency_requests_total` by outcome.
    counts: IntCounterVec,
}

/// Rounds of looking again when the key changed hands while we looked.
const ROUNDS: usize = 4;

impl Idempotency {
    /// Keys over `records`.
    pub fn new(
        records: Arc<dyn IdempotencyRecords>,
        ttl: Duration,
        wait: Duration,
        counts: IntCounterVec,
    ) -> Idempotency {
        Idempotency {
            ttl,
            wait,
            records,
            slots: Mutex::default(),
            counts,
        }
    }

    /// Counts an outcome.
    pub fn count(&self, outcome: Outcome) {
        self.counts.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Looks `key` up (an account-scoped [`key::slot_key`]) for a request
    /// with `fingerprint`, and claims it when nobody has used it. Reads
    /// the store (one point lookup) without holding the lock.
    pub fn begin(
        self: &Arc<Self>,
        key: Vec<u8>,
        fingerprint: Fingerprint,
        now_us: i64,
    ) -> Result<Found, StoreError> {
        for _ in 0..ROUNDS {
            if let Some(found) = self.in_flight(&key, &fingerprint) {
                return Ok(found);
            }
            if let Some(found) = self.stored(&key, &fingerprint, now_us)? {
                return Ok(found);
            }
            let slot = {
                let Ok(mut slots) = self.slots.lock() else {
                    return Err(StoreError("idempotency slots poisoned".into()));
                };
                if slots.contains_key(&key) {
                    // Claimed by another since we looked: look again.
                    continue;
                }
                let slot = Arc::new(Slot {
                    fingerprint,
                    done: watch::channel(None).0,
                });
                slots.insert(key.clone(), slot.clone());
                slot
            };
            let claim = Claim {
                keys: self.clone(),
                key,
                slot,
                settled: false,
            };
            // An answer may have been stored (and its slot let go) between
            // the lookup and the claim.
            if let Some(found) = self.stored(&claim.key, &fingerprint, now_us)? {
                return Ok(found);
            }
            return Ok(Found::First(claim));
        }
        Err(StoreError(
            "idempotency key kept changing hands; try again".into(),
        ))
    }

    fn in_flight(&self, key: &[u8], fingerprint: &Fingerprint) -> Option<Found> {
        let slots = self.slots.lock().ok()?;
        let slot = slots.get(key)?;
        if &slot.fingerprint != fingerprint {
            return Some(Found::Mismatch);
        }
        let settled = slot.done.borrow().clone();
        match settled {
            None => Some(Found::Running(Wait {
                rx: slot.done.subscribe(),
            })),
            Some(Settled::Stored(record)) => Some(Found::Stored(record)),
            // On its way out of the map.
            Some(Settled::Released) => None,
        }
    }

    fn stored(
        &self,
        key: &[u8],
        fingerprint: &Fingerprint,
        now_us: i64,
    ) -> Result<Option<Found>, StoreError> {
        let Some(bytes) = self.records.get(key)? else {
            return Ok(None);
        };
        let record = match Record::decode(&bytes) {
            Ok(r) if !r.expired(now_us) => r,
            // Expired (lazily ignored; the sweep removes it) or unreadable.
            _ => return Ok(None),
        };
        if &record.fingerprint != fingerprint {
            return Ok(Some(Found::Mismatch));
        }
        Ok(Some(Found::Stored(Arc::new(record))))
    }

    /// Removes expired answers; returns how many. Blocking: run it off the
    /// request path.
    pub fn sweep(&self, now_us: i64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        self.records.scan(&mut |k, v| {
            if key::expires_us(v).is_none_or(|t| t <= now_us) {
                expired.push((k.to_vec(), v.to_vec()));
            }
            true
        })?;
        let mut removed = 0;
        for (k, v) in expired {
            if self.records.remove_if(&k, &v)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Makes every kept answer durable (at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.records.flush()
    }

    /// Keys in flight.
    pub fn in_flight_len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn let_go(&self, key: &[u8], slot: &Arc<Slot>) {
        if let Ok(mut slots) = self.slots.lock() {
            if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                slots.remove(key);
            }
        }
    }
}

/// The first request's hold on its key. [`Claim::store`] keeps its answer;
/// dropped without one, the key is released (a retry runs again).
pub struct Claim {
    keys: Arc<Idempotency>,
    key: Vec<u8>,
    slot: Arc<Slot>,
    settled: bool,
}

impl Claim {
    /// The fingerprint the answer is kept for.
    pub fn fingerprint(&self) -> Fingerprint {
        self.slot.fingerprint
    }

    /// When an answer kept now expires.
    pub fn expires_us(&self, now_us: i64) -> i64 {
        now_us.saturating_add(i64::try_from(self.keys.ttl.as_micros()).unwrap_or(i64::MAX))
    }

    /// Keeps `record`: waiters get it at once; it is written to the store
    /// and flushed on the blocking pool (off the request path: the client
    /// is not kept waiting for the disk), and the key stays in memory until
    /// it is.
    pub fn store(mut self, record: Record) {
        self.settled = true;
        let record = Arc::new(record);
        self.slot
            .done
            .send_replace(Some(Settled::Stored(record.clone())));
        let keys = self.keys.clone();
        let key = std::mem::take(&mut self.key);
        let slot = self.slot.clone();
        let write = move || {
            match record.encode() {
                Ok(bytes) => {
                    // Durable at once: a retry after a crash must not run again.
                    if let Err(e) = keys
                        .records
                        .put(&key, &bytes)
                        .and_then(|()| keys.records.flush())
                    {
                        tracing::warn!(error = %e, "idempotent answer not stored; a retry runs again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "idempotent answer not encodable"),
            }
            keys.let_go(&key, &slot);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.slot.done.send_replace(Some(Settled::Released));
        self.keys.let_go(&self.key, &self.slot);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    struct Mem(Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>);

    impl IdempotencyRecords for Mem {
        fn get(&self, key: &[u8]) -> Result<Option<bytes::Bytes>, StoreError> {
            Ok(self.0.lock().unwrap().get(key).cloned().map(Into::into))
        }
        fn put(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
            self.0.lock().unwrap().insert(key.to_vec(), record.to_vec());
            Ok(())
        }
        fn remove_if(&self, key: &[u8], expected: &[u8]) -> Result<bool, StoreError> {
            let mut m = self.0.lock().unwrap();
            if m.get(key).map(Vec::as_slice) == Some(expected) {
                m.remove(key);
                return Ok(true);
            }
            Ok(false)
        }
        fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
            for (k, v) in self.0.lock().unwrap().iter() {
                if !f(k, v) {
                    break;
                }
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn keys() -> Arc<Idempotency> {
        let counts =
            IntCounterVec::new(prometheus::Opts::new("t_total", "t"), &["outcome"]).unwrap();
        Arc::new(Idempotency::new(
            Arc::new(Mem(Mutex::default())),
            Duration::from_secs(60),
            Duration::from_secs(1),
            counts,
        ))
    }

    fn record(fp: Fingerprint, expires_us: i64) -> Record {
        Record {
            fingerprint: fp,
            expires_us,
            status: 200,
            headers: Vec::new(),
            body: b"answer".to_vec(),
            model: String::new(),
        }
    }

    #[test]
    fn first_then_running_then_released() {
        let k = keys();
        let Found::First(claim) = k.begin(b"k".to_vec(), [1; 32], 0).unwrap() else {
            panic!("first")
        };
        assert!(matches!(
            k.begin(b"k".to_vec(), [1; 32], 0).unwrap(),
            Found::Running(_)
        ));
        assert!(matches!(
            k.begin(b"k".to_vec(), [2; 32], 0).unwrap(),
            Found::Mismatch
        ));
        drop(claim);
        assert_eq!(k.in_flight_len(), 0);
        assert!(matches!(
            k.begin(b"k".to_vec(), [2; 32], 0).unwrap(),
            Found::First(_)
        ));
    }

    #[test]
    fn stored_answers_replay_until_they_expire() {
        let k = keys();
        let Found::First(claim) = k.begin(b"k".to_vec(), [1; 32], 0).unwrap() else {
            panic!("first")
        };
        // No runtime here: written at once.
        claim.store(record([1; 32], 100));
        assert_eq!(k.in_flight_len(), 0);
        let Found::Stored(r) = k.begin(b"k".to_vec(), [1; 32], 50).unwrap() else {
            panic!("stored")
        };
        assert_eq!(r.body, b"answer");
        assert!(matches!(
            k.begin(b"k".to_vec(), [3; 32], 50).unwrap(),
            Found::Mismatch
        ));
        assert_eq!(k.sweep(50).unwrap(), 0);
        // Expired: ignored, then swept.
        assert!(matches!(
            k.begin(b"other".to_vec(), [1; 32], 50).unwrap(),
            Found::First(_)
        ));
        assert_eq!(k.sweep(100).unwrap(), 1);
        assert!(matches!(
            k.begin(b"k".to_vec(), [3; 32], 100).unwrap(),
            Found::First(_)
        ));
    }

    #[tokio::test]
    async fn waiters_get_the_answer() {
        let k = keys();
        let Found::First(claim) = k.begin(b"k".to_vec(), [1; 32], 0).unwrap() else {
            panic!("first")
        };
        let Found::Running(wait) = k.begin(b"k".to_vec(), [1; 32], 0).unwrap() else {
            panic!("running")
        };
        let waiter = tokio::spawn(wait.done());
        claim.store(record([1; 32], i64::MAX));
        let Settled::Stored(r) = waiter.await.unwrap() else {
            panic!("stored")
        };
        assert_eq!(r.status, 200);
    }
}
