//! The usage outbox: a sled tree of MessagePack-encoded [`UsageEvent`]s.
//!
//! Durability is by group commit. Requests hand their event to one writer
//! thread and wait; the writer takes everything queued, applies it as one
//! sled batch and flushes once, then wakes every waiter. Under load many
//! requests share one fsync, and no async worker thread ever blocks on disk.
//!
//! Standalone (no control endpoint) the outbox is the local ledger, pruned by
//! age (`outbox.retention`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use super::event::UsageEvent;

/// Name of the sled tree holding events.
pub const TREE: &str = "outbox";
/// At most this many events go into one batch / one flush.
const MAX_BATCH: usize = 4096;
/// How often the writer prunes events older than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long events nobody waits on (`outbox.sync = false`, dropped
/// requests) are gathered before they are written.
const DETACHED_WINDOW: Duration = Duration::from_millis(5);

/// Failures of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {0}")]
    Store(#[from] sled::Error),
    #[error("encoding a usage event: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a usage event: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the outbox writer has stopped")]
    Closed,
    #[error("outbox flush failed: {0}")]
    Flush(String),
}

/// Metrics the outbox keeps up to date.
#[derive(Clone)]
pub struct OutboxMetrics {
    /// Events held in the outbox.
    pub depth: IntGauge,
    /// Failed writes or flushes.
    pub errors: IntCounter,
    /// Time of one group commit (batch apply + flush).
    pub flush_seconds: Histogram,
    /// Events per group commit.
    pub batch_size: Histogram,
}

type Ack = oneshot::Sender<Result<(), String>>;

/// Writes other state that must be durable with the events (budget spend);
/// the writer calls it before each batch is applied and flushed.
pub type StateHook = Arc<dyn Fn() -> Result<(), sled::Error> + Send + Sync>;

enum Cmd {
    Append(Box<UsageEvent>, Option<Ack>),
}

impl Cmd {
    /// A request is waiting for this event to be durable.
    fn waited_on(&self) -> bool {
        match self {
            Cmd::Append(_, ack) => ack.is_some(),
        }
    }
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    tree: sled::Tree,
    healthy: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Outbox {
    /// Opens the outbox tree in `db` and starts its writer thread.
    pub fn open(
        db: &sled::Db,
        retention: Duration,
        metrics: OutboxMetrics,
        hook: Option<StateHook>,
    ) -> Result<Outbox, OutboxError> {
        let tree = db.open_tree(TREE)?;
        metrics
            .depth
            .set(i64::try_from(tree.len()).unwrap_or(i64::MAX));
        let (tx, rx) = mpsc::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            db: db.clone(),
            tree: tree.clone(),
            retention,
            metrics,
            healthy: healthy.clone(),
            hook,
        };
        let handle = std::thread::Builder::new()
            .name("tollgate-outbox".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OutboxError::Flush(format!("starting the writer thread: {e}")))?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                tree,
                healthy,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Appends an event and returns once it is flushed to disk.
    pub async fn append(&self, event: UsageEvent) -> Result<(), OutboxError> {
        let (ack, done) = oneshot::channel();
        self.send(Cmd::Append(Box::new(event), Some(ack)))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OutboxError::Flush(e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Queues an event without waiting; the writer flushes it with the next
    /// batch (and at [`Outbox::close`]). For paths that cannot await, such as
    /// a request dropped mid-flight.
    pub fn append_detached(&self, event: UsageEvent) -> Result<(), OutboxError> {
        self.send(Cmd::Append(Box::new(event), None))
    }

    fn send(&self, cmd: Cmd) -> Result<(), OutboxError> {
        let guard = self.inner.tx.lock().map_err(|_| OutboxError::Closed)?;
        match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| OutboxError::Closed),
            None => Err(OutboxError::Closed),
        }
    }

    /// False after a write or flush failed, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Stops the writer after it has written and flushed everything queued.
    pub fn close(&self) {
        if let Ok(mut tx) = self.inner.tx.lock() {
            tx.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("outbox writer thread panicked");
            }
        }
    }

    /// Every stored event, oldest first.
    pub fn events(&self) -> impl Iterator<Item = Result<UsageEvent, OutboxError>> + '_ {
        read_events(&self.inner.tree)
    }

    /// The `limit` most recent events, oldest first.
    pub fn latest(&self, limit: usize) -> Result<Vec<UsageEvent>, OutboxError> {
        let mut events = self
            .inner
            .tree
            .iter()
            .rev()
            .take(limit)
            .map(|item| {
                let (_, value) = item?;
                Ok(rmp_serde::from_slice(&value)?)
            })
            .collect::<Result<Vec<UsageEvent>, OutboxError>>()?;
        events.reverse();
        Ok(events)
    }

    /// Number of stored events (walks the whole tree: not for the request path).
    pub fn len(&self) -> usize {
        self.inner.tree.len()
    }

    /// True when no event is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.tree.is_empty()
    }
}

/// Reads every event of an outbox tree, oldest first (keys are UUID v7, so
/// byte order is time order). Used by `tollgate usage` on a stopped sidecar.
pub fn read_events(tree: &sled::Tree) -> impl Iterator<Item = Result<UsageEvent, OutboxError>> {
    tree.iter().map(|item| {
        let (_, value) = item?;
        Ok(rmp_serde::from_slice(&value)?)
    })
}

fn event_key(event: &UsageEvent) -> Vec<u8> {
    match uuid::Uuid::parse_str(&event.event_id) {
        Ok(id) => id.as_bytes().to_vec(),
        // Not a UUID (never produced by tollgate itself): order by time, then id.
        Err(_) => {
            let mut key = event.ts.to_be_bytes().to_vec();
            key.extend_from_slice(event.event_id.as_bytes());
            key
        }
    }
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    retention: Duration,
    metrics: OutboxMetrics,
    healthy: Arc<AtomicBool>,
    hook: Option<StateHook>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Cmd>) {
        let mut last_prune: Option<Instant> = None;
        let mut batch = Vec::with_capacity(64);
        loop {
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
                last_prune = Some(Instant::now());
            }
            // Wake at least every PRUNE_EVERY so pruning happens on an idle sidecar.
            match rx.recv_timeout(PRUNE_EVERY) {
                Ok(cmd) => batch.push(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            // Nobody waits on these events: gather more for a while, so a
            // quiet sidecar does not pay a store write per request. Sleeping
            // (rather than waiting on the channel) spares every sender a
            // wake-up of this thread.
            if !batch.iter().any(Cmd::waited_on) {
                std::thread::sleep(DETACHED_WINDOW);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
            }
            self.commit(&mut batch);
        }
        if let Some(Err(e)) = self.hook.as_ref().map(|h| h()) {
            tracing::error!(error = %e, "final write of budget state failed");
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final outbox flush failed");
        }
    }

    fn commit(&self, batch: &mut Vec<Cmd>) {
        let started = Instant::now();
        let mut sled_batch = sled::Batch::default();
        let mut acks = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut encode_error = None;
        let size = batch.len();
        for Cmd::Append(event, ack) in batch.drain(..) {
            match rmp_serde::to_vec_named(&*event) {
                Ok(bytes) => sled_batch.insert(event_key(&event), bytes),
                Err(e) => encode_error = Some(e.to_string()),
            }
            if let Some(ack) = ack {
                acks.push(ack);
            }
            events.push(event);
        }
        // An explicit flush (fsync) only when a request waits for it; other
        // events reach the disk with sled's own periodic flush or at close.
        let flush = !acks.is_empty();
        let state = match &self.hook {
            Some(hook) => hook(),
            None => Ok(()),
        };
        let result = state
            .and_then(|()| self.tree.apply_batch(sled_batch))
            .and_then(|()| {
                if flush {
                    self.db.flush().map(|_| ())
                } else {
                    Ok(())
                }
            })
            .map_err(|e| e.to_string());
        let result = match (result, encode_error) {
            (Err(e), _) | (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        };
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(size as f64);
        match &result {
            Ok(()) => {
                // Counted, not measured: sled's `len()` walks the whole tree.
                self.metrics.depth.add(events.len() as i64);
                self.healthy.store(true, Ordering::Relaxed)
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                self.metrics.errors.inc();
                tracing::error!(error = %e, events = size, "writing usage events to the outbox failed");
                // The store is unusable (full disk, I/O error): the log keeps
                // each event (they hold no secrets) so the ledger can be rebuilt.
                for event in &events {
                    let json = serde_json::to_string(event).unwrap_or_default();
                    tracing::error!(target: "tollgate::unwritten_event", event = %json, "usage event not written to the outbox");
                }
            }
        }
        for ack in acks {
            // A waiter that went away (request dropped) no longer needs the answer.
            let _ = ack.send(result.clone());
        }
    }

    /// Deletes events older than the retention.
    fn prune(&self) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let cutoff = now_us - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let mut removed = 0u64;
        for item in self.tree.iter() {
            let Ok((key, value)) = item else { break };
            let ts = rmp_serde::from_slice::<UsageEvent>(&value)
                .map(|e| e.ts)
                .unwrap_or(i64::MIN);
            // Keys are time-ordered: stop at the first event inside the window.
            if ts >= cutoff {
                break;
            }
            if self.tree.remove(key).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "pruned usage events past the outbox retention");
            self.metrics.depth.sub(removed as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::event::{CacheOutcome, RouteKind, Status};

    fn metrics() -> OutboxMetrics {
        OutboxMetrics {
            depth: IntGauge::new("d", "d").unwrap(),
            errors: IntCounter::new("e", "e").unwrap(),
            flush_seconds: Histogram::with_opts(prometheus::HistogramOpts::new("f", "f")).unwrap(),
            batch_size: Histogram::with_opts(prometheus::HistogramOpts::new("b", "b")).unwrap(),
        }
    }

    fn event(ts: i64) -> UsageEvent {
        UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            ts,
            sidecar_id: "s".into(),
            account: "a".into(),
            workload: String::new(),
            tags: vec![],
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            route: RouteKind::Sync,
            cache: CacheOutcome::Bypass,
            input_tokens: 1,
            output_tokens: 2,
            cache_creation_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: 0,
            cost_nusd: 3,
            saved_nusd: 0,
            status: Status::Ok,
            http_status: 200,
            error: None,
            priced: true,
            usage_incomplete: false,
            latency_us: 1,
            ttfb_us: 1,
            upstream_request_id: None,
            idempotency_key: None,
        }
    }

    #[tokio::test]
    async fn concurrent_appends_are_durable_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        {
            let db = sled::open(dir.path()).unwrap();
            let outbox = Outbox::open(&db, Duration::from_secs(3600), metrics(), None).unwrap();
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let o = outbox.clone();
                tasks.push(tokio::spawn(async move { o.append(event(now)).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            outbox.append_detached(event(now)).unwrap();
            outbox.close();
        }
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let events: Vec<_> = read_events(&tree).collect::<Result<_, _>>().unwrap();
        assert_eq!(events.len(), 101);
        assert_eq!(events[0].cost_nusd, 3);
    }

    #[tokio::test]
    async fn prunes_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let tree = db.open_tree(TREE).unwrap();
        // An old event written directly, with an old v7 id so it sorts first.
        let mut old = event(now - 7_200_000_000);
        old.event_id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now / 1_000_000 - 7200) as u64,
            0,
        ))
        .to_string();
        tree.insert(event_key(&old), rmp_serde::to_vec_named(&old).unwrap())
            .unwrap();
        let outbox = Outbox::open(&db, Duration::from_secs(3600), metrics(), None).unwrap();
        outbox.append(event(now)).await.unwrap();
        assert_eq!(outbox.len(), 1, "the old event is pruned at start");
        outbox.close();
    }
}
