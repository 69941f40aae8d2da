//! The usage journal: an append-only, checksummed log of usage records in
//! `data_dir/journal/`, the one durability wait on the request path.
//!
//! # Records and when they are written
//!
//! - An **open** record ([`OpenRecord`]: event id, time, identity, provider,
//!   model, route, the worst-case cost and what it reserved per budget
//!   period) is appended right before a request's first byte goes to the
//!   provider, and the request waits for it: with `outbox.sync = true`
//!   until it is `fdatasync`ed (strict: survives a machine crash), with
//!   `outbox.sync = false` until it is `write`n to the kernel (survives a
//!   process crash, not a machine crash; synced within
//!   [`BACKGROUND_SYNC`]). When a stream's reservation grows at
//!   `message_start` (its real input outgrew the estimate) the open record
//!   is journaled again, waited on the same way; the later one counts.
//!   Concurrent requests share one write and one `fdatasync` (group
//!   commit). A request that finds no commit under way commits on its own
//!   thread ([`Load`] and `Journal::inline` say how); the records queued
//!   meanwhile go to the writer thread, which commits them together, one
//!   group per round of its loop, while more arrive (see `Queue`):
//!   - with `sync`, while other requests are in flight, inside
//!     `tokio::task::block_in_place`, so the worker's other tasks move to
//!     another thread first and no async worker blocks on the disk; only
//!     while the journal is warm (a commit ended within [`WARM`]): after a
//!     quiet spell the writer thread commits and the request awaits a
//!     oneshot;
//!   - with `sync`, when no other request is in flight and the runtime has
//!     another worker, directly: there is nobody on this worker to move,
//!     and moving it cost ~40 µs CPU per request at c=1 (`block_in_place`
//!     hands the worker to another thread every time). The price: a
//!     request that arrives during that commit is read once it ends. Its
//!     own commit could not have started earlier (commits take turns), so
//!     it loses only the time it would have spent getting its record ready
//!     (tens of µs); a cache hit arriving then waits up to one commit;
//!   - without `sync`, directly: the commit is a `write(2)` to the page
//!     cache, shorter than the handoff `block_in_place` would cost.
//!
//!   A direct commit that finds the segment held (a rotation holds it for
//!   tens of ms, a background sync for one `fdatasync`) waits with its
//!   worker moved, and so does one that would commit again for records
//!   queued meanwhile. On a current-thread runtime the writer thread
//!   commits.
//!   While the writer folds, the next request takes a lead handed to it
//!   over, so folds do not hold commits up. (Measured on the dataplane
//!   bench at c=64: more throughput and less CPU per request in most runs
//!   than handing every commit to the writer thread.)
//! - A **final** record ([`FinalRecord`]: the [`UsageEvent`] and what it
//!   spent per budget period) is appended when the answer completes,
//!   without anyone waiting. Its budget spend is settled in memory *before*
//!   it is queued. Cache hits and coalesced followers spend nothing and
//!   have only a final record. While the journal is active (a commit
//!   within `NAPPING`, 50 ms) the writer naps [`DETACHED_WINDOW`] (5 ms) at
//!   a time and, at each nap's end, writes the finals no commit took
//!   along: nothing on the request path wakes it. After a quiet spell it
//!   sleeps until woken: a final then wakes it and is written with the
//!   next open record's commit or at the end of the window the writer
//!   then gathers for, whichever comes first. A crash loses the finals queued in
//!   that last window that had not reached the kernel yet: for a request
//!   with an open record that means it comes back as `interrupted`, never
//!   that it vanishes; a cache hit or follower in that window is lost.
//!
//! # Framing
//!
//! A segment file `NNNNNNNNNNNNNNNNNNNN.wal` is a run of frames:
//! `len: u32 LE | crc32(payload): u32 LE | payload`, the payload being
//! `seq: u64 LE` then the [`Record`] as MessagePack (named fields). Reading
//! stops at the first frame that is short, zero, oversized, fails its
//! checksum or does not decode: a torn tail is ignored, as if truncated at
//! the last good frame. Every record has a sequence number, increasing in
//! write order.
//!
//! # Folding, the watermark and rotation
//!
//! The writer thread hands journaled finals to the [`Fold`] (the sled
//! ledger: outbox tree and budget spend) off the request path and outside
//! the segment's lock (requests commit meanwhile), in batches: at most
//! `FOLD_EVERY` (50 ms) after the first of a batch was journaled, or once
//! `FOLD_BATCH` (1024) wait, and always before a rotation or shutdown. (Folding
//! after every group commit cost more CPU per request than the rest of the
//! request.) The usage report and the admin `/events` read the ledger, so
//! they see an event up to that long after its answer. The fold persists
//! budget spend, then the watermark `W` = the last sequence number written
//! (the store keeps a prefix of its writes, so a stored `W` implies the
//! spend written before it). Finals are settled
//! before they are journaled, so at that moment the spend includes every
//! final with `seq <= W`. Once the segment passes [`Options::rotate_bytes`]
//! the writer checkpoints the fold (a sled flush), starts a new segment,
//! re-writes the still-open records it keeps in memory into it (with their
//! own sequence numbers), syncs it and deletes the old one.
//!
//! # Recovery (at start-up, before traffic)
//!
//! All segments are read in order. Then:
//! 1. every open record without a final becomes a final with status
//!    `interrupted`, `usage_incomplete`, `cost_nusd` = its worst case, and
//!    charges = what it reserved; these are appended (and synced) to a new
//!    segment first, with new sequence numbers above both the old records
//!    and `W`, so a crash during recovery never charges them twice;
//! 2. every final (old and new) is inserted into the outbox unless its
//!    event id is already there (idempotent);
//! 3. every final with `seq > W` has its charges added to the budget spend
//!    again (its spend may or may not have been persisted: counting it
//!    twice over-counts a little, never under-counts);
//! 4. spend is persisted with `W` = the last sequence number, the fold
//!    checkpointed, and the old segments deleted.
//!
//! New sequence numbers always start above `W`, even when the journal lost
//! its unsynced tail (`outbox.sync = false` and a machine crash).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::meter::event::{Charge, OpenRecord, OpenRecordRef, UsageEvent};

/// The journal's directory under the data dir.
pub const DIR: &str = "journal";
/// Segment file suffix.
const SUFFIX: &str = ".wal";
/// `len` and `crc` before each payload.
const FRAME_HEADER: usize = 8;
/// No record is near this large; a larger `len` is garbage.
const MAX_FRAME: usize = 16 << 20;
/// At most this many records go into one group commit.
const MAX_BATCH: usize = 4096;
/// How long records nobody waits on are gathered before they are written.
pub const DETACHED_WINDOW: Duration = Duration::from_millis(5);
/// Records nobody waited to be synced on are synced at most this late.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(20);
/// A segment is preallocated this far past the rotation size (the last
/// group commit before a rotation may pass it).
const PREALLOC_SLACK: u64 = 256 << 10;
/// Finals are folded into the ledger in batches: at the latest this long
/// after the first of a batch was journaled (they are durable in the
/// journal meanwhile; a sled apply per group commit cost more CPU than the
/// rest of the request).
const FOLD_EVERY: Duration = Duration::from_millis(50);
/// ...or once this many are waiting.
const FOLD_BATCH: usize = 1024;
/// A request among others ([`Load::Shared`], with `sync`) commits its
/// record on its own thread only if the last commit ended less than this
/// long ago. Measured on the dataplane bench (c=1,
/// this VM): back to back, committing on the request's thread saved
/// 24-40 µs per request against handing off to the writer; after 20 ms of
/// quiet (a slow upstream) it cost 60-135 µs more, waking the idle vCPUs
/// for the worker hand-over that `block_in_place` makes.
pub const WARM: Duration = Duration::from_millis(2);
/// The fold's periodic work (pruning) runs at least this often when idle.
const TICK: Duration = Duration::from_secs(1);
/// While a commit happened within this long, the writer naps one
/// `detached_window` at a time and looks at the queue itself: requests then
/// never wake it (a wake is a futex call on the request's thread, and a
/// contended queue lock when the writer gets up; at 20 ms between requests
/// that was two per request). After a quiet spell it sleeps until woken:
/// short, so a trickle of requests costs a few naps each, not 200 a second.
const NAPPING: Duration = Duration::from_millis(50);
/// Default segment size that triggers a rotation.
pub const ROTATE_BYTES: u64 = 4 << 20;

/// One journaled record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Open(OpenRecord),
    Final(FinalRecord),
}

/// A request's usage event and what it spent per budget period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRecord {
    pub event: UsageEvent,
    pub charges: Vec<Charge>,
}

/// Failures of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding a journal record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("folding the journal into the ledger: {0}")]
    Fold(String),
    #[error("the journal writer has stopped")]
    Closed,
    #[error("journal commit failed: {0}")]
    Commit(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An error of the store the journal folds into.
pub type FoldError = Box<dyn std::error::Error + Send + Sync>;

/// Where journaled finals end up (the ledger). Called on the writer thread
/// only. See the module doc for the rules.
pub trait Fold: Send + 'static {
    /// `W`: every final with `seq <= W` has its spend in the durable spend.
    fn watermark(&self) -> u64;
    /// Recovery: inserts the finals not yet stored, charges those above the
    /// watermark, persists spend with watermark `upto` and checkpoints.
    fn recover(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError>;
    /// Stores freshly journaled finals (their spend is already settled) and
    /// persists spend with watermark `upto`.
    fn fold(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError>;
    /// Makes everything folded so far durable.
    fn checkpoint(&mut self) -> Result<(), FoldError>;
    /// Periodic upkeep (pruning), at least every second.
    fn tick(&mut self) {}
}

/// How the journal writes.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `fdatasync` before an open record's waiter is answered (`outbox.sync`).
    pub sync: bool,
    /// Segment size that triggers a rotation.
    pub rotate_bytes: u64,
    /// How long records nobody waits on are gathered ([`DETACHED_WINDOW`]).
    pub detached_window: Duration,
    /// How soon after the last commit a request among others still
    /// commits on its own thread ([`WARM`]).
    pub warm: Duration,
}

/// Metrics the journal keeps.
#[derive(Clone)]
pub struct JournalMetrics {
    /// Time of one group commit (write + fdatasync when one is waited on).
    pub commit_seconds: Histogram,
    /// Records per group commit.
    pub batch_records: Histogram,
    /// Failed writes, syncs or folds.
    pub errors: IntCounter,
}

/// What recovery found at start-up.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Requests that were at the provider when the sidecar stopped.
    pub interrupted: Vec<UsageEvent>,
    /// Finals replayed into the fold.
    pub finals: usize,
    /// A segment ended in a torn or corrupt frame (ignored).
    pub torn: bool,
}

type Ack = oneshot::Sender<Result<(), String>>;

struct Cmd {
    entry: Entry,
    ack: Option<Ack>,
}

/// A queued record, encoded by whoever queued it: a commit only frames
/// it. (A request's open commit takes along the finals queued since the
/// last commit, and encoding those there put them before its send.)
// Finals are most of what is queued: boxing them would cost an allocation
// each to save space for the opens.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Open {
        event_id: String,
        /// The [`Record`]'s MessagePack, as [`encode`] writes it.
        payload: Vec<u8>,
    },
    Final {
        record: FinalRecord,
        payload: Vec<u8>,
    },
}

impl Entry {
    fn open(record: OpenRecordRef<'_>) -> Result<Entry, JournalError> {
        Ok(Entry::Open {
            event_id: record.event_id.to_string(),
            payload: payload(&RecordRef::Open(record))?,
        })
    }

    fn final_record(record: FinalRecord) -> Result<Entry, JournalError> {
        let payload = payload(&RecordRef::Final(&record))?;
        Ok(Entry::Final { record, payload })
    }

    fn event_id(&self) -> &str {
        match self {
            Entry::Open { event_id, .. } => event_id,
            Entry::Final { record, .. } => &record.event.event_id,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Entry::Open { payload, .. } | Entry::Final { payload, .. } => payload,
        }
    }
}

/// [`Record`] by reference: the same encoding without a copy of it.
#[derive(Serialize)]
#[serde(rename = "Record")]
enum RecordRef<'a> {
    Open(OpenRecordRef<'a>),
    Final(&'a FinalRecord),
}

/// Handle to the journal; shared by reference (wrap in an `Arc`).
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, recovers what an earlier run
    /// left into `fold` and starts the writer thread.
    pub fn open(
        dir: &Path,
        options: Options,
        metrics: JournalMetrics,
        mut fold: Box<dyn Fold>,
    ) -> Result<(Journal, Recovery), JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let old = segments(dir)?;
        let mut recovery = Recovery::default();
        let mut records = Vec::new();
        for (_, path) in &old {
            let bytes = fs::read(path).map_err(io_err(path))?;
            let (mut found, good) = decode(&bytes);
            if good < bytes.len() && bytes[good..].iter().any(|b| *b != 0) {
                tracing::warn!(segment = %path.display(), at = good, "journal segment ends in a torn or corrupt frame; ignored from there");
                recovery.torn = true;
            }
            records.append(&mut found);
        }
        let last = records.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        // Above every old record, the watermark and every old segment's
        // name (an empty segment is named after a seq it never used): the
        // new segment's name is new.
        let last_name = old.last().map_or(0, |(n, _)| *n);
        let mut next_seq = last.max(fold.watermark()).max(last_name) + 1;
        let Paired { open, mut finals } = pair(records);

        // The interrupted finals go to disk before anything is charged.
        let path = segment_path(dir, next_seq);
        let file = create(&path, options.rotate_bytes.saturating_add(PREALLOC_SLACK))?;
        let mut buf = Vec::new();
        for (_, o) in open {
            let record = Record::Final(FinalRecord {
                event: o.interrupted(),
                charges: o.reserved.clone(),
            });
            encode(&mut buf, next_seq, &record)?;
            recovery.interrupted.push(o.interrupted());
            if let Record::Final(f) = record {
                finals.push((next_seq, f));
            }
            next_seq += 1;
        }
        file.write_all_at(&buf, 0).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        sync_dir(dir)?;
        recovery.finals = finals.len();
        fold.recover(&finals, next_seq - 1)
            .map_err(|e| JournalError::Fold(e.to_string()))?;
        for (_, p) in &old {
            fs::remove_file(p).map_err(io_err(p))?;
        }
        sync_dir(dir)?;
        if !recovery.interrupted.is_empty() {
            tracing::warn!(
                interrupted = recovery.interrupted.len(),
                "requests in flight when the sidecar stopped are recorded as interrupted at their worst case"
            );
        }

        let shared = Arc::new(Shared {
            queue: Queue::default(),
            segment: Mutex::new(Segment {
                dir: dir.to_path_buf(),
                path,
                file,
                bytes: buf.len() as u64,
                carried: buf.len() as u64,
                next_seq,
                open: HashMap::new(),
                unsynced: false,
                last_sync: Instant::now(),
                written: Vec::new(),
                written_since: None,
                notice: None,
                buf: Vec::with_capacity(64 << 10),
            }),
            healthy: AtomicBool::new(true),
            epoch: Instant::now(),
            last_commit_us: AtomicU64::new(0),
            #[cfg(test)]
            led: Mutex::new(Vec::new()),
            metrics,
            options,
        });
        let writer = Writer {
            shared: shared.clone(),
            fold,
            last_tick: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("tollgate-journal".into())
            .spawn(move || writer.run())
            .map_err(io_err(dir))?;
        Ok((
            Journal {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            recovery,
        ))
    }

    /// Appends an open record; resolves once it is committed (synced with
    /// `sync`, written to the kernel otherwise).
    pub fn open_record(
        &self,
        record: OpenRecordRef<'_>,
        load: Load,
    ) -> Result<oneshot::Receiver<Result<(), String>>, JournalError> {
        self.committed(Entry::open(record)?, load)
    }

    /// Queues a final record; nobody waits for it.
    pub fn final_record(&self, record: FinalRecord) -> Result<(), JournalError> {
        self.shared.queue.push(
            Cmd {
                entry: Entry::final_record(record)?,
                ack: None,
            },
            false,
        )?;
        Ok(())
    }

    /// Appends final records and resolves each once it is committed like
    /// an open record (a settlement that must know its events are on disk
    /// before it marks itself done). They are queued together, so they
    /// share a commit.
    pub fn finals_acked(
        &self,
        records: Vec<FinalRecord>,
    ) -> Result<Vec<oneshot::Receiver<Result<(), String>>>, JournalError> {
        let mut done = Vec::with_capacity(records.len());
        let cmds = records
            .into_iter()
            .map(|f| {
                let entry = Entry::final_record(f)?;
                let (ack, rx) = oneshot::channel();
                done.push(rx);
                Ok(Cmd {
                    entry,
                    ack: Some(ack),
                })
            })
            .collect::<Result<Vec<Cmd>, JournalError>>()?;
        let how = self.inline(Load::Shared);
        let lead = self.shared.queue.push_all(cmds, how.is_some())?;
        self.lead_if(how.filter(|_| lead));
        Ok(done)
    }

    /// Queues a record someone waits on. When no commit is under way the
    /// caller may commit it (and whatever else is queued) on its own
    /// thread, which saves a wake of the writer thread and a wake back:
    /// see `inline` and the module docs for when, and whether its worker
    /// moves first. Otherwise the writer thread commits it.
    fn committed(
        &self,
        entry: Entry,
        load: Load,
    ) -> Result<oneshot::Receiver<Result<(), String>>, JournalError> {
        let (ack, done) = oneshot::channel();
        let cmd = Cmd {
            entry,
            ack: Some(ack),
        };
        let how = self.inline(load);
        let lead = self.shared.queue.push(cmd, how.is_some())?;
        self.lead_if(how.filter(|_| lead));
        Ok(done)
    }

    /// How this caller would commit on its own thread, if it may (see the
    /// module docs).
    fn inline(&self, load: Load) -> Option<Inline> {
        // Elsewhere a busy segment (a rotation, a background sync) would
        // stop the only thread: the writer commits.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        if !self.shared.options.sync {
            return Some(Inline::Direct);
        }
        if load == Load::Alone && runtime.metrics().num_workers() >= 2 {
            Some(Inline::Direct)
        } else if self.shared.warm() {
            Some(Inline::Moved)
        } else {
            None
        }
    }

    /// Commits as the lead, `how` `inline` said, when the queue gave the
    /// lead to this caller (`Some`).
    fn lead_if(&self, how: Option<Inline>) {
        let Some(how) = how else {
            return;
        };
        /// Hands the lead to the writer if the commit panics, or
        /// `block_in_place` refuses to run: a lead never let go would leave
        /// every later record queued with nobody to commit it.
        struct Unwind<'a>(&'a Queue, bool);
        impl Drop for Unwind<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.give_up();
                }
            }
        }
        let mut unwind = Unwind(&self.shared.queue, true);
        let shared = &self.shared;
        let held = match how {
            // A rotation (tens of ms) holds the segment: wait for it with
            // the worker moved, so what arrives meanwhile is served.
            Inline::Direct => match shared.segment.try_lock() {
                Ok(seg) => Some(seg),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
            Inline::Moved => None,
        };
        #[cfg(test)]
        shared
            .led
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(match held {
                Some(_) => Inline::Direct,
                None => Inline::Moved,
            });
        match held {
            Some(seg) => {
                if shared.lead_round(Some(seg)) == Then::Again {
                    // Others queued meanwhile: this worker moves before
                    // it commits for them.
                    tokio::task::block_in_place(|| shared.lead());
                }
            }
            None => tokio::task::block_in_place(|| shared.lead()),
        }
        unwind.1 = false;
    }

    /// False after a write, sync or fold failed, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Stops the writer once everything queued is written, synced and folded.
    pub fn close(&self) {
        self.shared.queue.close();
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("journal writer thread panicked");
            }
        }
    }

    /// Holds the segment, as a slow commit would (tests).
    #[cfg(test)]
    fn hold(&self) -> MutexGuard<'_, Segment> {
        self.shared.segment()
    }

    /// Records queued and not yet taken by a committer (tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.queue.state().cmds.len()
    }

    /// How the leads requests took so far committed (tests).
    #[cfg(test)]
    fn led(&self) -> Vec<Inline> {
        self.shared
            .led
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What else the caller's process is doing, which decides how a request
/// that leads commits on its own thread (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// No other request is in flight: with another runtime worker, a
    /// commit may block this one (see the module docs for what that costs
    /// a request arriving meanwhile).
    Alone,
    /// Other requests may be in flight (or the caller cannot tell).
    Shared,
}

/// How a leading caller commits on its own thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inline {
    /// On the thread as it is.
    Direct,
    /// Inside `block_in_place`: the worker's other tasks move away first.
    Moved,
}

/// Every record of the journal in `dir`, segment by segment (for reading a
/// stopped sidecar's journal); torn tails are skipped.
pub fn read(dir: &Path) -> Result<Vec<(u64, Record)>, JournalError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut records = Vec::new();
    for (_, path) in segments(dir)? {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        records.append(&mut decode(&bytes).0);
    }
    Ok(records)
}

/// Journal records paired up by event id.
#[derive(Debug, Default)]
pub struct Paired {
    /// Open records without a final, oldest first.
    pub open: Vec<(u64, OpenRecord)>,
    /// Every final.
    pub finals: Vec<(u64, FinalRecord)>,
}

/// Splits records into the open ones without a final and the finals.
pub fn pair(records: Vec<(u64, Record)>) -> Paired {
    let mut open = HashMap::new();
    let mut finals = Vec::new();
    for (seq, record) in records {
        match record {
            Record::Open(o) => {
                open.insert(o.event_id.clone(), (seq, o));
            }
            Record::Final(f) => finals.push((seq, f)),
        }
    }
    // Not assumed to follow their open record in file order.
    for (_, f) in &finals {
        open.remove(&f.event.event_id);
    }
    let mut open: Vec<(u64, OpenRecord)> = open.into_values().collect();
    open.sort_by_key(|(seq, _)| *seq);
    Paired { open, finals }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// The segment files in `dir` and their names' numbers, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Creates a segment, filled with `prealloc` zero bytes: appends then
/// overwrite blocks the file already has, so an `fdatasync` writes the data
/// and no file-size or extent change (on ext4 here: ~40 µs less CPU and
/// ~90 µs less wait per sync). Readers stop at the first zero frame.
fn create(path: &Path, prealloc: u64) -> Result<File, JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    let zeros = [0u8; 64 << 10];
    let mut at = 0;
    while at < prealloc {
        let n = zeros
            .len()
            .min(usize::try_from(prealloc - at).unwrap_or(zeros.len()));
        file.write_all_at(&zeros[..n], at).map_err(io_err(path))?;
        at += n as u64;
    }
    Ok(file)
}

/// Makes a created or deleted segment's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Appends one frame to `buf`.
fn encode(buf: &mut Vec<u8>, seq: u64, record: &Record) -> Result<(), JournalError> {
    frame(buf, seq, &payload(record)?)
}

/// A record's MessagePack (named fields), a frame's payload after its
/// sequence number.
fn payload<R: Serialize + ?Sized>(record: &R) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::with_capacity(256);
    rmp_serde::encode::write_named(&mut out, record)?;
    Ok(out)
}

/// Appends one frame of an encoded record (see [`payload`]) to `buf`.
fn frame(buf: &mut Vec<u8>, seq: u64, record: &[u8]) -> Result<(), JournalError> {
    let Ok(len) = u32::try_from(8 + record.len()) else {
        return Err(JournalError::Commit("record too large".into()));
    };
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(record);
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The frames of a segment up to the first bad one, and where that is.
fn decode(bytes: &[u8]) -> (Vec<(u64, Record)>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(8..=MAX_FRAME).contains(&len) {
            break;
        }
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[..8]);
        let Ok(record) = rmp_serde::from_slice::<Record>(&payload[8..]) else {
            break;
        };
        records.push((u64::from_le_bytes(seq), record));
        at += FRAME_HEADER + len;
    }
    (records, at)
}

// === impl Shared ===

/// What the handle's committers and the writer thread share.
struct Shared {
    queue: Queue,
    /// The segment being written; whoever commits holds it.
    segment: Mutex<Segment>,
    healthy: AtomicBool,
    metrics: JournalMetrics,
    options: Options,
    /// When the last commit ended, µs after `epoch`.
    epoch: Instant,
    last_commit_us: AtomicU64,
    /// How each lead taken by a request committed (tests).
    #[cfg(test)]
    led: Mutex<Vec<Inline>>,
}

impl Shared {
    fn segment(&self) -> MutexGuard<'_, Segment> {
        // A panic mid-commit answered no waiter of that batch (they see
        // the journal closed); what was written stays consistent.
        self.segment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits what is queued as a request that holds the lead, then
    /// hands the lead on (see [`Queue::finish`]); commits again while
    /// records wait and the writer is busy folding.
    fn lead(&self) {
        while self.lead_round(None) == Then::Again {}
    }

    /// One commit as the leading request (on `held`, the segment already
    /// locked, if given); then what [`Queue::finish`] says.
    fn lead_round(&self, held: Option<MutexGuard<'_, Segment>>) -> Then {
        let notice = {
            let mut seg = held.unwrap_or_else(|| self.segment());
            let mut batch = Vec::new();
            self.queue.drain(&mut batch, false);
            seg.commit(&mut batch, self);
            std::mem::take(&mut seg.notice)
        };
        self.queue.finish(notice, Committer::Request)
    }

    /// Commits what is queued as the writer thread (`lead`: the lead was
    /// handed to it). Its own upkeep follows: nothing to be noticed.
    fn writer_commit(&self, batch: &mut Vec<Cmd>, lead: bool) {
        let mut seg = self.segment();
        self.queue.drain(batch, lead);
        seg.commit(batch, self);
        seg.notice = None;
    }

    fn committed_now(&self) {
        let us = self.epoch.elapsed().as_micros() as u64;
        self.last_commit_us.store(us, Ordering::Relaxed);
    }

    /// Whether the last commit ended less than `d` ago.
    fn committed_within(&self, d: Duration) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64;
        let last = self.last_commit_us.load(Ordering::Relaxed);
        now.saturating_sub(last) < d.as_micros() as u64
    }

    /// Whether the journal committed within [`NAPPING`]: the writer naps.
    fn active(&self) -> bool {
        self.committed_within(NAPPING)
    }

    /// Whether the journal committed within [`Options::warm`]: then a request
    /// commits on its own thread; after a quiet spell the writer does.
    fn warm(&self) -> bool {
        self.committed_within(self.options.warm)
    }

    fn failed(&self, what: &str, error: &str) {
        self.healthy.store(false, Ordering::Relaxed);
        self.metrics.errors.inc();
        tracing::error!(error, "{what} failed");
    }
}

// === impl Segment ===

/// The segment file being appended to and what was written to it.
struct Segment {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes written to the current segment (the next write's offset).
    bytes: u64,
    /// Of those, the open records carried over at its start.
    carried: u64,
    next_seq: u64,
    /// Open records without a final yet (encoded), carried into each new
    /// segment.
    open: HashMap<String, (u64, Vec<u8>)>,
    /// Written but not yet synced.
    unsynced: bool,
    last_sync: Instant,
    /// Journaled finals not yet folded, and when the first of them was.
    written: Vec<(u64, FinalRecord)>,
    written_since: Option<Instant>,
    /// A commit gave the writer thread something to do (a fold, a
    /// background sync, a rotation) that it may not know of yet: by when
    /// (the earliest, if several).
    notice: Option<Instant>,
    buf: Vec<u8>,
}

impl Segment {
    /// Writes a batch (one write), syncs it when a waiter needs that and
    /// answers the waiters; the finals wait for the writer's fold.
    fn commit(&mut self, batch: &mut Vec<Cmd>, shared: &Shared) {
        if batch.is_empty() {
            return;
        }
        let options = &shared.options;
        let started = Instant::now();
        self.buf.clear();
        let mut acks = Vec::new();
        let mut written = Vec::with_capacity(batch.len());
        let mut result: Result<(), String> = Ok(());
        for Cmd { entry, ack } in batch.drain(..) {
            match frame(&mut self.buf, self.next_seq, entry.payload()) {
                Ok(()) => {
                    written.push((self.next_seq, entry));
                    self.next_seq += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, request_id = entry.event_id(), "usage record not journaled");
                    result = Err(e.to_string());
                }
            }
            if let Some(ack) = ack {
                acks.push(ack);
            }
        }
        let size = written.len();
        let sync = options.sync && !acks.is_empty();
        let write = self
            .file
            .write_all_at(&self.buf, self.bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match write {
            Ok(()) => {
                let was_over = self.bytes >= options.rotate_bytes;
                self.bytes += self.buf.len() as u64;
                if !was_over && self.bytes >= options.rotate_bytes {
                    self.notice_by(Instant::now());
                }
                if sync {
                    self.unsynced = false;
                    self.last_sync = Instant::now();
                } else if !self.buf.is_empty() && !self.unsynced {
                    // The background sync is due this long after the first unsynced write.
                    self.last_sync = Instant::now();
                    self.unsynced = true;
                    self.notice_by(self.last_sync + BACKGROUND_SYNC);
                }
            }
            Err(e) => {
                // The next write goes to the same offset, over whatever of
                // this one reached the file.
                result = Err(format!("writing {}: {e}", self.path.display()));
            }
        }
        shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        shared.metrics.batch_records.observe(size as f64);
        shared.committed_now();
        match &result {
            Ok(()) => shared.healthy.store(true, Ordering::Relaxed),
            Err(e) => shared.failed("journal commit", e),
        }
        for ack in acks {
            // A waiter that went away (request dropped) no longer needs the answer.
            let _ = ack.send(result.clone());
        }
        for (seq, entry) in written {
            match entry {
                Entry::Open { event_id, payload } => {
                    self.open.insert(event_id, (seq, payload));
                }
                Entry::Final { record: f, .. } => {
                    self.open.remove(&f.event.event_id);
                    if result.is_err() {
                        // Not in the journal (a full disk): the log keeps
                        // the event (it holds no secret) so the ledger can
                        // be rebuilt; the fold still tries.
                        log_unwritten(&f);
                    }
                    let since = *self.written_since.get_or_insert_with(Instant::now);
                    if self.written.is_empty() {
                        self.notice_by(since + FOLD_EVERY);
                    } else if self.written.len() + 1 == FOLD_BATCH {
                        self.notice_by(Instant::now());
                    }
                    self.written.push((seq, f));
                }
            }
        }
    }

    /// Notes work for the writer thread due by `at`.
    fn notice_by(&mut self, at: Instant) {
        self.notice = Some(self.notice.map_or(at, |n| n.min(at)));
    }

    /// When the writer thread next has work here: a fold or a background
    /// sync. (A rotation is tried on every wake once due; the commit that
    /// makes it due wakes the writer.)
    fn due(&self) -> Option<Instant> {
        if self.written.len() >= FOLD_BATCH {
            return Some(Instant::now());
        }
        let fold = self.written_since.map(|since| since + FOLD_EVERY);
        let sync = self.unsynced.then(|| self.last_sync + BACKGROUND_SYNC);
        fold.into_iter().chain(sync).min()
    }

    /// The journaled finals for the fold, with the watermark: every final
    /// with a sequence number up to it was settled before it was queued.
    fn take_written(&mut self) -> (Vec<(u64, FinalRecord)>, u64) {
        self.written_since = None;
        (std::mem::take(&mut self.written), self.next_seq - 1)
    }

    fn sync(&mut self, shared: &Shared) {
        if !self.unsynced {
            return;
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                // Tried again a background-sync interval later, not at once.
                self.last_sync = Instant::now();
                shared.failed("journal sync", &format!("{}: {e}", self.path.display()));
            }
        }
    }
}

// === impl Writer ===

/// The writer thread: commits what no request commits itself, folds the
/// finals into the ledger, syncs in the background and rotates.
struct Writer {
    shared: Arc<Shared>,
    fold: Box<dyn Fold>,
    last_tick: Instant,
}

impl Writer {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut batch = Vec::with_capacity(64);
        // Finals queued without a commit to take them along are gathered
        // this long, so a quiet sidecar does not pay a write per request;
        // an open record arriving meanwhile takes them along.
        let mut gather_until: Option<Instant> = None;
        loop {
            if self.last_tick.elapsed() >= TICK {
                shared.queue.busy(true);
                self.fold.tick();
                shared.queue.busy(false);
                self.last_tick = Instant::now();
            }
            let mut until = self.last_tick + TICK;
            if let Some(g) = gather_until {
                until = until.min(g);
            }
            if let Some(d) = shared.segment().due() {
                until = until.min(d);
            }
            let nap = gather_until.is_none() && shared.active();
            if nap {
                until = until.min(Instant::now() + shared.options.detached_window);
            }
            let wake = shared
                .queue
                .wait(until, gather_until.is_none() && !nap, nap);
            if wake.closed {
                break;
            }
            if wake.poked {
                // The lead was handed here: commit. Records queued
                // meanwhile keep it here (`finish` pokes again), after
                // this round's upkeep.
                shared.writer_commit(&mut batch, true);
                shared.queue.finish(None, Committer::Writer);
                gather_until = None;
            } else if gather_until.is_some_and(|g| Instant::now() >= g) {
                // Nobody took them along: write them now.
                shared.writer_commit(&mut batch, false);
                gather_until = None;
            } else if nap && wake.queued {
                // Queued during the nap (at most a window ago) and not
                // taken along by a commit: written now.
                shared.writer_commit(&mut batch, false);
            } else if wake.queued && gather_until.is_none() {
                gather_until = Some(Instant::now() + shared.options.detached_window);
            }
            self.upkeep();
        }
        // Closed: nothing new is queued; write what is, sync, fold all.
        {
            let mut seg = shared.segment();
            loop {
                shared.queue.drain(&mut batch, false);
                if batch.is_empty() {
                    break;
                }
                seg.commit(&mut batch, &shared);
            }
            seg.sync(&shared);
        }
        self.fold_written(true);
        if let Err(e) = self.fold.checkpoint() {
            shared.failed("final checkpoint of the ledger", &e.to_string());
            return;
        }
        // Leave a segment with only what is still open (nothing, after a
        // drained shutdown).
        self.rotate();
    }

    /// The background sync, the fold and the rotation, each when due.
    fn upkeep(&mut self) {
        let shared = self.shared.clone();
        let rotate = {
            let mut seg = shared.segment();
            if seg.unsynced && seg.last_sync.elapsed() >= BACKGROUND_SYNC {
                seg.sync(&shared);
            }
            seg.bytes >= shared.options.rotate_bytes && seg.bytes > seg.carried
        };
        self.fold_written(false);
        if rotate {
            self.rotate();
        }
    }

    /// Folds the journaled finals (`all`, or once the batch is old or big
    /// enough) into the ledger, outside the segment's lock.
    fn fold_written(&mut self, all: bool) {
        let (finals, upto) = {
            let mut seg = self.shared.segment();
            let due = seg.written.len() >= FOLD_BATCH
                || seg
                    .written_since
                    .is_some_and(|since| since.elapsed() >= FOLD_EVERY);
            if !(all || due) || seg.written.is_empty() {
                return;
            }
            seg.take_written()
        };
        // A request may take the lead over from this thread meanwhile.
        self.shared.queue.busy(true);
        self.fold(&finals, upto);
        self.shared.queue.busy(false);
    }

    fn fold(&mut self, finals: &[(u64, FinalRecord)], upto: u64) {
        if finals.is_empty() {
            return;
        }
        if let Err(e) = self.fold.fold(finals, upto) {
            self.shared
                .failed("folding usage events into the ledger", &e.to_string());
            for (_, f) in finals {
                log_unwritten(f);
            }
        }
    }

    /// Once the ledger is durable past the current segment: a new segment
    /// with the still-open records, and the old one deleted. Commits wait
    /// meanwhile (once per [`Options::rotate_bytes`]).
    fn rotate(&mut self) {
        let shared = self.shared.clone();
        let mut seg = shared.segment();
        if seg.bytes == seg.carried {
            // Nothing new since this segment started: a rotation would
            // change nothing (and reuse its name).
            return;
        }
        // The old segment goes: everything in it must be in the ledger.
        let (finals, upto) = seg.take_written();
        self.fold(&finals, upto);
        if let Err(e) = self.fold.checkpoint() {
            shared.failed("checkpoint of the ledger", &e.to_string());
            return;
        }
        let path = segment_path(&seg.dir, seg.next_seq);
        let mut open: Vec<&(u64, Vec<u8>)> = seg.open.values().collect();
        open.sort_by_key(|(seq, _)| *seq);
        let mut buf = Vec::new();
        for (seq, o) in open {
            if let Err(e) = frame(&mut buf, *seq, o) {
                shared.failed("re-encoding an open record", &e.to_string());
                return;
            }
        }
        let prealloc = shared.options.rotate_bytes.saturating_add(PREALLOC_SLACK);
        let made = create(&path, prealloc).and_then(|file| {
            file.write_all_at(&buf, 0).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            sync_dir(&seg.dir)?;
            Ok(file)
        });
        let file = match made {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&path);
                shared.failed("starting a journal segment", &e.to_string());
                return;
            }
        };
        let old = std::mem::replace(&mut seg.path, path);
        seg.file = file;
        seg.bytes = buf.len() as u64;
        seg.carried = seg.bytes;
        seg.unsynced = false;
        if let Err(e) = fs::remove_file(&old) {
            // Harmless: its finals are folded (re-folding is idempotent)
            // and its open records are in the new segment too.
            tracing::warn!(segment = %old.display(), error = %e, "old journal segment not deleted");
        }
    }
}

/// Writes an event that is not in the journal or the ledger to the log, so
/// the ledger can be rebuilt from it (events hold no secrets).
fn log_unwritten(f: &FinalRecord) {
    let json = serde_json::to_string(&f.event).unwrap_or_default();
    tracing::error!(target: "tollgate::unwritten_event", request_id = %f.event.event_id, event = %json, "usage event not written to the journal or the outbox");
}

// === impl Queue ===

/// Records waiting for a committer, and who commits them.
///
/// At most one committer holds the *lead* at a time: a request's own
/// thread or the writer thread. It commits everything queued and looks
/// again before it lets go, so a record someone waits on never sits in
/// the queue with nobody to commit it. A request that queues one while
/// nobody leads takes the lead (or, where it cannot block, hands it to the
/// writer); while someone leads it only queues, and the records queued
/// during one commit share the next (group commit). A leading request
/// hands the records left over to the writer rather than wait for them.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    cmds: Vec<Cmd>,
    closed: bool,
    /// The writer sleeps with nothing to gather: any record wakes it.
    idle: bool,
    /// The writer sleeps, not napping (see [`NAPPING`]): a commit's
    /// notice wakes it if the work is due before `until`. (Awake, it sees
    /// the notice before it next waits; napping, when it gets up, within a
    /// window.)
    asleep: bool,
    /// When the writer's wait ends by itself.
    until: Option<Instant>,
    /// A committer holds the lead.
    leading: bool,
    /// The lead is the writer's: commit what is queued now.
    poked: bool,
    /// A commit left the writer work it may not know of (see `Segment::notice`).
    recheck: bool,
    /// The writer is folding: a request takes a lead handed to it over.
    writer_busy: bool,
    /// How often a request woke the writer (tests).
    #[cfg(test)]
    request_wakes: usize,
}

/// Who finished a commit as the lead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Committer {
    Request,
    Writer,
}

/// What becomes of the lead after a commit.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    /// Let go: nothing anyone waits on is queued.
    Released,
    /// Handed to the writer thread.
    Writer,
    /// The committer commits again.
    Again,
}

/// Why the writer's wait ended.
struct Wake {
    closed: bool,
    poked: bool,
    /// Records are queued.
    queued: bool,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a record; returns whether the caller now holds the lead and
    /// is to commit (only when `inline`: it can block). A final nobody waits
    /// on wakes only an idle writer with nobody leading.
    fn push(&self, cmd: Cmd, inline: bool) -> Result<bool, JournalError> {
        let mut st = self.state();
        if st.closed {
            return Err(JournalError::Closed);
        }
        let acked = cmd.ack.is_some();
        st.cmds.push(cmd);
        if acked {
            return Ok(self.claim(&mut st, inline));
        }
        if !st.leading && st.idle {
            st.idle = false;
            self.wake_from_request(&mut st);
        }
        Ok(false)
    }

    /// Queues records someone waits on, together; like [`Queue::push`].
    fn push_all(&self, cmds: Vec<Cmd>, inline: bool) -> Result<bool, JournalError> {
        let mut st = self.state();
        if st.closed {
            return Err(JournalError::Closed);
        }
        if cmds.is_empty() {
            return Ok(false);
        }
        st.cmds.extend(cmds);
        Ok(self.claim(&mut st, inline))
    }

    /// A record someone waits on was queued: takes the lead for the caller
    /// (`inline`) if nobody has it, or if it was handed to a writer that is
    /// busy folding; else makes sure someone commits it.
    fn claim(&self, st: &mut QueueState, inline: bool) -> bool {
        if !st.leading {
            st.leading = true;
            if inline {
                return true;
            }
            st.poked = true;
            self.wake.notify_one();
        } else if inline && st.poked && st.writer_busy {
            st.poked = false;
            return true;
        }
        false
    }

    /// The writer starts or ends a fold (see [`QueueState::writer_busy`]).
    fn busy(&self, busy: bool) {
        self.state().writer_busy = busy;
    }

    /// A request wakes the writer (counted for the tests).
    fn wake_from_request(&self, st: &mut QueueState) {
        #[cfg(test)]
        {
            st.request_wakes += 1;
        }
        #[cfg(not(test))]
        let _ = st;
        self.wake.notify_one();
    }

    /// Moves what is queued into `batch` (at most [`MAX_BATCH`]). `lead`:
    /// the writer drains as the lead handed to it. (Only that clears the
    /// hand-over: a drain of the writer's own gathered finals must leave
    /// it, or nobody would let the lead go.)
    fn drain(&self, batch: &mut Vec<Cmd>, lead: bool) {
        let mut st = self.state();
        if lead {
            st.poked = false;
        }
        let n = st.cmds.len().min(MAX_BATCH.saturating_sub(batch.len()));
        batch.extend(st.cmds.drain(..n));
    }

    /// The lead's commit is done. If records someone waits on were queued
    /// meanwhile the lead stays taken: the writer keeps it (poking itself,
    /// so it commits again after its upkeep); a request commits again while
    /// the writer is busy folding, else hands it to the writer. Otherwise
    /// it is let go, waking the writer if the commit gave it work
    /// (`notice`) or finals are left for an idle writer.
    fn finish(&self, notice: Option<Instant>, by: Committer) -> Then {
        let mut st = self.state();
        st.recheck |= notice.is_some();
        if st.cmds.iter().any(|c| c.ack.is_some()) {
            if by == Committer::Request && st.writer_busy {
                return Then::Again;
            }
            st.poked = true;
            if by == Committer::Request {
                self.wake.notify_one();
            }
            return Then::Writer;
        }
        st.leading = false;
        // A writer asleep until before the work is due sees it then: the
        // request is spared the wake (a futex call, before its send when
        // its own commit took gathered finals along and made a fold due).
        let due_first = notice.is_some_and(|due| st.until.is_none_or(|until| due < until));
        let wake = (st.asleep && due_first) || (st.idle && !st.cmds.is_empty());
        if by == Committer::Request && wake {
            self.wake_from_request(&mut st);
        }
        Then::Released
    }

    /// A lead given up mid-commit (a panic): the writer takes it over and
    /// commits whatever waits, as when a commit hands it on. (Letting go
    /// through `finish` could leave it taken: `Again` asks the caller to
    /// commit once more.)
    fn give_up(&self) {
        self.state().poked = true;
        self.wake.notify_one();
    }

    /// Stops taking records; the writer drains what is queued and ends.
    fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    /// The writer waits until `until`, the lead is handed to it, the
    /// journal closes, a commit gave it work (unless it `nap`s) or
    /// (`idle`) anything is queued.
    fn wait(&self, until: Instant, idle: bool, nap: bool) -> Wake {
        let mut st = self.state();
        st.idle = idle;
        st.asleep = !nap;
        st.until = Some(until);
        loop {
            let ready =
                st.closed || st.poked || (st.recheck && !nap) || (idle && !st.cmds.is_empty());
            let left = until.saturating_duration_since(Instant::now());
            if ready || left.is_zero() {
                break;
            }
            st = match self.wake.wait_timeout(st, left) {
                Ok((st, _)) => st,
                Err(e) => e.into_inner().0,
            };
        }
        st.idle = false;
        st.asleep = false;
        st.until = None;
        st.recheck = false;
        Wake {
            closed: st.closed,
            poked: st.poked,
            queued: !st.cmds.is_empty(),
        }
    }
}

/// Writes a segment as a crashed writer could have left it (tests).
#[cfg(test)]
pub(crate) fn write_segment(dir: &Path, first_seq: u64, records: &[(u64, Record)]) {
    let mut buf = Vec::new();
    for (seq, r) in records {
        encode(&mut buf, *seq, r).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
    fs::write(segment_path(dir, first_seq), buf).unwrap();
}

#[cfg(test)]
mod tests;
