//! The cache writer: one thread that stores answers off the request path,
//! and sweeps expired entries once a minute.
//!
//! A miss hands its answer over through a bounded queue and goes on; the
//! writer also pre-renders the stream form (so stream hits are a copy).
//! While an answer waits to be stored its flight stays findable
//! ([`Release`]), so identical requests arriving meanwhile are answered
//! from it rather than calling the provider again. When the queue is full
//! the answer is not cached (counted in `tollgate_cache_errors_total`).
//! About once a second it writes back the access times of hit entries
//! (hits only note them), so the LRU order survives a restart.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::flight::Release;
use super::key::Key;
use super::store::{EntryMeta, Store};
use super::CacheMetrics;
use crate::dialect::Dialect;

/// Answers waiting to be stored.
const QUEUE: usize = 1024;
/// How often expired entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often hits' access times are written back (the LRU order a crash
/// can lose).
const PERSIST_ACCESS_EVERY: Duration = Duration::from_secs(1);

/// One answer to store.
pub struct Job {
    pub key: Key,
    pub meta: EntryMeta,
    pub message: Bytes,
    pub ttl: Duration,
    pub dialect: Dialect,
    /// Lets go of the finished flight once stored (or dropped).
    pub release: Option<Release>,
}

enum Msg {
    Put(Box<Job>),
    /// Answered once everything queued before it is stored.
    Drain(SyncSender<()>),
}

/// The handle the request path submits to.
pub struct Writer {
    tx: SyncSender<Msg>,
    metrics: CacheMetrics,
}

impl Writer {
    /// Starts the writer thread.
    pub fn spawn(store: Arc<Store>, metrics: CacheMetrics) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel(QUEUE);
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("tollgate-cache-writer".into())
            .spawn(move || run(&rx, &store, &thread_metrics))?;
        Ok(Writer { tx, metrics })
    }

    /// Waits (up to `limit`) until every answer queued so far is stored:
    /// at shutdown, before the store's last flush.
    pub fn drain(&self, limit: Duration) -> bool {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Msg::Drain(done)).is_err() {
            return false;
        }
        wait.recv_timeout(limit).is_ok()
    }

    /// Queues an answer; never blocks.
    pub fn submit(&self, job: Job) {
        match self.tx.try_send(Msg::Put(Box::new(job))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.errors.inc();
                tracing::debug!("cache writer queue full; answer not cached");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.errors.inc();
            }
        }
    }
}

fn run(rx: &Receiver<Msg>, store: &Store, metrics: &CacheMetrics) {
    let mut last_sweep = Instant::now();
    let mut last_persist = Instant::now();
    loop {
        match rx.recv_timeout(PERSIST_ACCESS_EVERY) {
            Ok(Msg::Put(job)) => write(store, metrics, *job),
            Ok(Msg::Drain(done)) => {
                persist_access(store, metrics);
                last_persist = Instant::now();
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                persist_access(store, metrics);
                return;
            }
        }
        if last_persist.elapsed() >= PERSIST_ACCESS_EVERY {
            last_persist = Instant::now();
            persist_access(store, metrics);
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            if let Err(e) = store.maintain() {
                metrics.errors.inc();
                tracing::warn!(error = %e, "cache sweep failed");
            }
        }
    }
}

fn persist_access(store: &Store, metrics: &CacheMetrics) {
    if let Err(e) = store.persist_access() {
        metrics.errors.inc();
        tracing::warn!(error = %e, "writing cache access times failed");
    }
}

fn write(store: &Store, metrics: &CacheMetrics, job: Job) {
    // Anthropic has one stream form; for OpenAI the common one (no usage chunk).
    let stream = crate::dialect::replay(job.dialect, &job.message, false).unwrap_or_default();
    if let Err(e) = store.put(&job.key, &job.meta, &job.message, &stream, job.ttl) {
        metrics.errors.inc();
        tracing::warn!(error = %e, "cache write failed");
    }
    drop(job.release);
}
