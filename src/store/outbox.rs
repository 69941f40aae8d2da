//! The usage outbox: MessagePack-encoded [`UsageEvent`]s kept through
//! [`EventRecords`] (sled's `EventTree` in the sidecar: the local ledger),
//! fed by the usage journal.
//!
//! Requests never wait on sled. What they wait on (and what makes a crash
//! lose no request and no spend) is the journal ([`crate::store::journal`]):
//! an open record group-committed before the request is sent, a final
//! record queued when it completes. The journal's writer thread folds
//! finals into the outbox and persists budget spend with its watermark
//! ([`SpendStore`]) off the request path; sled is flushed when the journal
//! rotates a segment and at shutdown.
//!
//! Standalone (no control endpoint) the outbox is the local ledger, pruned by
//! age (`outbox.retention`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::meter::event::{Charge, OpenRecordRef, UsageEvent};
use crate::store::journal::{
    self, FinalRecord, Fold, FoldError, Journal, JournalError, JournalMetrics, Load, Recovery,
};
use crate::store::{EventRecords, StoreError};

/// How often events older than the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Failures of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {0}")]
    Store(#[from] StoreError),
    #[error("encoding a usage event: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a usage event: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the outbox writer has stopped")]
    Closed,
    #[error("usage journal commit failed: {0}")]
    Flush(String),
}

/// Metrics the outbox keeps up to date.
#[derive(Clone)]
pub struct OutboxMetrics {
    /// Events held in the outbox.
    pub depth: IntGauge,
    /// Failed writes, syncs or folds.
    pub errors: IntCounter,
    /// Time of one journal group commit (write + fdatasync).
    pub flush_seconds: Histogram,
    /// Records per journal group commit.
    pub batch_size: Histogram,
}

/// Budget spend, as the journal's fold needs it (the budget ledger).
pub trait SpendStore: Send + Sync {
    /// The journal sequence number up to which every final's spend is in
    /// the durable spend (0 when none is stored).
    fn watermark(&self) -> u64;
    /// Adds spend found at recovery.
    fn charge(&self, charges: &[Charge]);
    /// Persists changed spend, then the watermark.
    fn persist_upto(&self, watermark: u64) -> Result<(), crate::budget::SpendError>;
}

impl SpendStore for crate::budget::Ledger {
    fn watermark(&self) -> u64 {
        crate::budget::Ledger::watermark(self)
    }

    fn charge(&self, charges: &[Charge]) {
        crate::budget::Ledger::charge(self, charges);
    }

    fn persist_upto(&self, watermark: u64) -> Result<(), crate::budget::SpendError> {
        crate::budget::Ledger::persist_upto(self, watermark)
    }
}

/// How the outbox keeps events.
#[derive(Clone, Copy, Debug)]
pub struct OutboxOptions {
    /// How long events are kept.
    pub retention: Duration,
    /// `outbox.sync`: open records are fdatasync'd before a request is sent
    /// (else written to the kernel and synced in the background).
    pub sync: bool,
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Journal,
    events: Arc<dyn EventRecords>,
}

impl Outbox {
    /// Opens the outbox on `events` and the journal in `journal_dir`,
    /// recovers what an earlier run left in the journal (see
    /// [`crate::store::journal`]) and starts the journal's writer.
    pub fn open(
        events: Arc<dyn EventRecords>,
        journal_dir: &Path,
        options: OutboxOptions,
        metrics: OutboxMetrics,
        spend: Option<Arc<dyn SpendStore>>,
    ) -> Result<(Outbox, Recovery), OutboxError> {
        metrics
            .depth
            .set(i64::try_from(events.len()?).unwrap_or(i64::MAX));
        let mut fold = LedgerFold {
            events: events.clone(),
            spend,
            retention: options.retention,
            depth: metrics.depth.clone(),
            last_prune: Instant::now(),
        };
        fold.prune();
        let (journal, recovery) = Journal::open(
            journal_dir,
            journal::Options {
                sync: options.sync,
                rotate_bytes: journal::ROTATE_BYTES,
                detached_window: journal::DETACHED_WINDOW,
                warm: journal::WARM,
            },
            JournalMetrics {
                commit_seconds: metrics.flush_seconds.clone(),
                batch_records: metrics.batch_size.clone(),
                errors: metrics.errors.clone(),
            },
            Box::new(fold),
        )?;
        Ok((
            Outbox {
                inner: Arc::new(Inner { journal, events }),
            },
            recovery,
        ))
    }

    /// Journals a request's open record; returns once it is committed
    /// (fdatasync'd with `outbox.sync`, written to the kernel otherwise).
    pub async fn begin(&self, record: OpenRecordRef<'_>, load: Load) -> Result<(), OutboxError> {
        let done = self.inner.journal.open_record(record, load)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OutboxError::Flush(e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Queues a request's final event and what it spent (already settled)
    /// without waiting; it reaches the disk with the next group commit.
    pub fn append(&self, event: UsageEvent, charges: Vec<Charge>) -> Result<(), OutboxError> {
        Ok(self
            .inner
            .journal
            .final_record(FinalRecord { event, charges })?)
    }

    /// Journals final events with what they spent (already settled) and
    /// returns once all are committed (like an open record: synced with
    /// `outbox.sync`).
    pub async fn append_committed(
        &self,
        finals: Vec<(UsageEvent, Vec<Charge>)>,
    ) -> Result<(), OutboxError> {
        let acks = self.inner.journal.finals_acked(
            finals
                .into_iter()
                .map(|(event, charges)| FinalRecord { event, charges })
                .collect(),
        )?;
        for done in acks {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(OutboxError::Flush(e)),
                Err(_) => return Err(OutboxError::Closed),
            }
        }
        Ok(())
    }

    /// Whether the ledger holds the event `event_id` at `ts` (every
    /// journaled final is in it once recovery ran).
    pub fn contains(&self, event_id: &str, ts: i64) -> Result<bool, OutboxError> {
        let key = event_key_of(event_id, ts);
        Ok(self.inner.events.contains(&key)?)
    }

    /// False after a write or flush failed, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.inner.journal.healthy()
    }

    /// Stops the writer after it has written, synced and folded everything
    /// queued and flushed the store.
    pub fn close(&self) {
        self.inner.journal.close();
    }

    /// Calls `f` with every stored event, oldest first (streamed: the
    /// ledger is never held in memory whole).
    pub fn for_each_event(&self, f: &mut dyn FnMut(UsageEvent)) -> Result<(), OutboxError> {
        for_each_event(self.inner.events.as_ref(), f)
    }

    /// The `limit` most recent events, oldest first.
    pub fn latest(&self, limit: usize) -> Result<Vec<UsageEvent>, OutboxError> {
        self.inner
            .events
            .latest(limit)?
            .iter()
            .map(|v| Ok(rmp_serde::from_slice(v)?))
            .collect()
    }

    /// Number of stored events (may walk them all: not for the request path).
    pub fn len(&self) -> usize {
        self.inner.events.len().unwrap_or(0)
    }

    /// True when no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Calls `f` with every stored event, oldest first (keys are UUID v7, so
/// byte order is time order). Used by `tollgate usage` on a stopped sidecar.
pub fn for_each_event(
    events: &dyn EventRecords,
    f: &mut dyn FnMut(UsageEvent),
) -> Result<(), OutboxError> {
    let mut failed = None;
    events.scan(&mut |_, v| match rmp_serde::from_slice(v) {
        Ok(e) => {
            f(e);
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The events a stopped sidecar's journal holds that its outbox does not
/// (yet): finals not folded, and open records without a final as
/// `interrupted` (what the next start will record). For `tollgate usage`
/// after a crash.
pub fn unfolded_events(
    stored: &dyn EventRecords,
    journal_dir: &Path,
) -> Result<Vec<UsageEvent>, OutboxError> {
    let paired = journal::pair(journal::read(journal_dir)?);
    let mut events = Vec::new();
    for (_, f) in paired.finals {
        if !stored.contains(&event_key(&f.event))? {
            events.push(f.event);
        }
    }
    events.extend(paired.open.iter().map(|(_, o)| o.interrupted()));
    Ok(events)
}

fn event_key(event: &UsageEvent) -> Vec<u8> {
    event_key_of(&event.event_id, event.ts)
}

fn event_key_of(event_id: &str, ts: i64) -> Vec<u8> {
    match uuid::Uuid::parse_str(event_id) {
        Ok(id) => id.as_bytes().to_vec(),
        // Not a UUID (never produced by tollgate itself): order by time, then id.
        Err(_) => {
            let mut key = ts.to_be_bytes().to_vec();
            key.extend_from_slice(event_id.as_bytes());
            key
        }
    }
}

// === impl LedgerFold ===

/// The journal's fold into the ledger: events into the outbox, spend into
/// the budget ledger.
struct LedgerFold {
    events: Arc<dyn EventRecords>,
    spend: Option<Arc<dyn SpendStore>>,
    retention: Duration,
    depth: IntGauge,
    last_prune: Instant,
}

impl Fold for LedgerFold {
    fn watermark(&self) -> u64 {
        self.spend.as_ref().map_or(0, |s| s.watermark())
    }

    fn recover(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError> {
        let watermark = self.watermark();
        let mut batch = Vec::new();
        for (seq, f) in finals {
            let key = event_key(&f.event);
            if !self.events.contains(&key)? {
                batch.push((key, rmp_serde::to_vec_named(&f.event)?));
            }
            if *seq > watermark {
                if let Some(spend) = &self.spend {
                    spend.charge(&f.charges);
                }
            }
        }
        let added = batch.len() as i64;
        self.events.insert(batch)?;
        self.depth.add(added);
        if let Some(spend) = &self.spend {
            spend.persist_upto(upto)?;
        }
        self.checkpoint()
    }

    fn fold(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError> {
        if finals.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(finals.len());
        for (_, f) in finals {
            batch.push((event_key(&f.event), rmp_serde::to_vec_named(&f.event)?));
        }
        self.events.insert(batch)?;
        // Counted, not measured: a store's length may walk every event.
        self.depth.add(finals.len() as i64);
        if let Some(spend) = &self.spend {
            spend.persist_upto(upto)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), FoldError> {
        // One flush makes the whole store durable, budget spend included.
        self.events.flush()?;
        Ok(())
    }

    fn tick(&mut self) {
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune();
        }
    }
}

impl LedgerFold {
    /// Deletes events older than the retention.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let cutoff = now_us - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let mut doomed = Vec::new();
        let scanned = self.events.scan(&mut |key, value| {
            let ts = rmp_serde::from_slice::<UsageEvent>(value)
                .map(|e| e.ts)
                .unwrap_or(i64::MIN);
            // Keys are time-ordered: stop at the first event inside the window.
            if ts >= cutoff {
                return false;
            }
            doomed.push(key.to_vec());
            true
        });
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "reading the outbox to prune it failed");
        }
        let removed = match self.events.remove_all(&doomed) {
            Ok(()) => doomed.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "pruning the outbox failed");
                0
            }
        };
        if removed > 0 {
            tracing::info!(removed, "pruned usage events past the outbox retention");
            self.depth.sub(removed as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::alerts::AlertSink;
    use crate::budget::{Budget, Ledger, LedgerMetrics, OnInsufficient, Period, SystemClock};
    use crate::dialect::Usage;
    use crate::meter::event::{OpenRecord, Status};
    use crate::scope::Scope;
    use crate::store::journal::{write_segment, Record};

    fn metrics() -> OutboxMetrics {
        OutboxMetrics {
            depth: IntGauge::new("d", "d").unwrap(),
            errors: IntCounter::new("e", "e").unwrap(),
            flush_seconds: Histogram::with_opts(prometheus::HistogramOpts::new("f", "f")).unwrap(),
            batch_size: Histogram::with_opts(prometheus::HistogramOpts::new("b", "b")).unwrap(),
        }
    }

    fn options() -> OutboxOptions {
        OutboxOptions {
            retention: Duration::from_secs(3600),
            sync: true,
        }
    }

    fn now_us() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    }

    fn event(ts: i64) -> UsageEvent {
        UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            ts,
            sidecar_id: "s".into(),
            account: "acme".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            usage: Usage {
                input_tokens: 1,
                output_tokens: 2,
                cache_creation_input_tokens: 0,
                cache_creation_1h_input_tokens: 0,
                cache_read_input_tokens: 0,
                reported_cost_nusd: None,
                fast: false,
                us_only: false,
            },
            cost_nusd: 3,
            http_status: 200,
            priced: true,
            latency_us: 1,
            ttfb_us: 1,
            ..UsageEvent::default()
        }
    }

    fn today() -> String {
        Period::Day.window(now_us() / 1_000_000).unwrap().0
    }

    fn charge(nusd: u64) -> Vec<Charge> {
        vec![Charge {
            budget: "day".into(),
            period: today(),
            nusd,
        }]
    }

    fn ledger(db: &sled::Db) -> Arc<Ledger> {
        Arc::new(Ledger::new(
            vec![Budget {
                name: "day".into(),
                scope: Scope::Account("acme".into()),
                period: Period::Day,
                limit_nusd: 1_000_000,
                soft_thresholds: vec![],
                alert_webhook: None,
                on_insufficient: OnInsufficient::Deny,
                lease: None,
                retired: false,
            }],
            Some(Arc::new(crate::store::sled::SpendTree::open(db).unwrap())),
            Arc::new(SystemClock),
            AlertSink::default(),
            LedgerMetrics::default(),
        ))
    }

    fn spent(l: &Ledger) -> u64 {
        l.status()[0].spent_nusd
    }

    fn event_tree(db: &sled::Db) -> Arc<dyn EventRecords> {
        Arc::new(crate::store::sled::EventTree::open(db).unwrap())
    }

    fn stored(db: &sled::Db) -> Vec<UsageEvent> {
        let mut all = Vec::new();
        for_each_event(event_tree(db).as_ref(), &mut |e| all.push(e)).unwrap();
        all
    }

    fn open_record(e: &UsageEvent, worst: u64) -> OpenRecord {
        OpenRecord::of(e, worst, charge(worst))
    }

    #[tokio::test]
    async fn finals_are_folded_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_us();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            let (outbox, _) = Outbox::open(
                event_tree(&db),
                &dir.path().join("j"),
                options(),
                metrics(),
                None,
            )
            .unwrap();
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let o = outbox.clone();
                tasks.push(tokio::spawn(async move {
                    let e = event(now);
                    o.begin(open_record(&e, 10).as_ref(), Load::Shared)
                        .await
                        .unwrap();
                    o.append(e, Vec::new()).unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            outbox.append(event(now), Vec::new()).unwrap();
            outbox.close();
        }
        let db = sled::open(dir.path().join("db")).unwrap();
        let events = stored(&db);
        assert_eq!(events.len(), 101);
        assert!(events
            .iter()
            .all(|e| e.status == Status::Ok && e.cost_nusd == 3));
    }

    #[tokio::test]
    async fn open_without_final_becomes_interrupted_at_its_worst_case() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("j");
        let db = sled::open(dir.path().join("db")).unwrap();
        let (a, b) = (event(now_us()), event(now_us()));
        // A crash left: "a" in flight, "b" complete (settled at 300, its
        // spend never persisted: no watermark yet).
        write_segment(
            &j,
            1,
            &[
                (1, Record::Open(open_record(&a, 5_000))),
                (2, Record::Open(open_record(&b, 5_000))),
                (
                    3,
                    Record::Final(FinalRecord {
                        event: b.clone(),
                        charges: charge(300),
                    }),
                ),
            ],
        );
        let l = ledger(&db);
        let (outbox, recovery) =
            Outbox::open(event_tree(&db), &j, options(), metrics(), Some(l.clone())).unwrap();
        assert_eq!(recovery.interrupted.len(), 1);
        outbox.close();
        let events = stored(&db);
        assert_eq!(events.len(), 2);
        let got_a = events.iter().find(|e| e.event_id == a.event_id).unwrap();
        assert_eq!(
            (got_a.status, got_a.cost_nusd, got_a.usage_incomplete),
            (Status::Interrupted, 5_000, true)
        );
        assert_eq!(got_a.account, "acme");
        assert_eq!(spent(&l), 5_300, "the worst case of a, the real cost of b");
        // A second start (or a crash right after recovery) changes nothing.
        drop(l);
        let l = ledger(&db);
        let (outbox, recovery) =
            Outbox::open(event_tree(&db), &j, options(), metrics(), Some(l.clone())).unwrap();
        assert!(recovery.interrupted.is_empty());
        outbox.close();
        assert_eq!(stored(&db).len(), 2);
        assert_eq!(spent(&l), 5_300);
    }

    #[tokio::test]
    async fn finals_past_the_watermark_are_charged_once_and_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("j");
        let db = sled::open(dir.path().join("db")).unwrap();
        let (b, c) = (event(now_us()), event(now_us()));
        // The ledger persisted b's 300 with watermark 5, and b is in the outbox.
        {
            let l = ledger(&db);
            l.charge(&charge(300));
            l.persist_upto(5).unwrap();
            let tree = db.open_tree(crate::store::sled::EVENT_TREE).unwrap();
            tree.insert(event_key(&b), rmp_serde::to_vec_named(&b).unwrap())
                .unwrap();
        }
        write_segment(
            &j,
            4,
            &[
                (
                    5,
                    Record::Final(FinalRecord {
                        event: b.clone(),
                        charges: charge(300),
                    }),
                ),
                (
                    6,
                    Record::Final(FinalRecord {
                        event: c.clone(),
                        charges: charge(100),
                    }),
                ),
            ],
        );
        let l = ledger(&db);
        let (outbox, recovery) =
            Outbox::open(event_tree(&db), &j, options(), metrics(), Some(l.clone())).unwrap();
        assert_eq!(recovery.finals, 2);
        outbox.close();
        assert_eq!(
            spent(&l),
            400,
            "b counted once, c (past the watermark) added"
        );
        let events = stored(&db);
        assert_eq!(events.len(), 2, "b is not duplicated");
        assert_eq!(l.watermark(), 6);
    }

    #[tokio::test]
    async fn live_spend_is_persisted_with_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("j");
        let db = sled::open(dir.path().join("db")).unwrap();
        let l = ledger(&db);
        let (outbox, _) =
            Outbox::open(event_tree(&db), &j, options(), metrics(), Some(l.clone())).unwrap();
        let e = event(now_us());
        outbox
            .begin(open_record(&e, 900).as_ref(), Load::Alone)
            .await
            .unwrap();
        // Settled (as a request does) before the final is queued.
        l.charge(&charge(250));
        outbox.append(e, charge(250)).unwrap();
        outbox.close();
        drop(l);
        // Restart: the final is at or below the watermark: not charged again.
        let l = ledger(&db);
        assert_eq!(spent(&l), 250);
        let (outbox, recovery) =
            Outbox::open(event_tree(&db), &j, options(), metrics(), Some(l.clone())).unwrap();
        assert!(recovery.interrupted.is_empty());
        outbox.close();
        assert_eq!(spent(&l), 250);
        assert_eq!(stored(&db).len(), 1);
    }

    #[tokio::test]
    async fn prunes_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let now = now_us();
        let tree = db.open_tree(crate::store::sled::EVENT_TREE).unwrap();
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
        let (outbox, _) = Outbox::open(
            event_tree(&db),
            &dir.path().join("j"),
            options(),
            metrics(),
            None,
        )
        .unwrap();
        outbox.append(event(now), Vec::new()).unwrap();
        outbox.close();
        assert_eq!(outbox.len(), 1, "the old event is pruned at start");
    }
}
