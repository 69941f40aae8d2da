//! The journal's framing, group commit, rotation and recovery rules.

use super::*;
use crate::meter::event::{CacheOutcome, RouteKind, Status};

pub(crate) fn event(id: &str, cost: u64) -> UsageEvent {
    let mut e = OpenRecord::of_test(id).interrupted();
    e.status = Status::Ok;
    e.usage_incomplete = false;
    e.cost_nusd = cost;
    e
}

impl OpenRecord {
    fn of_test(id: &str) -> OpenRecord {
        OpenRecord {
            event_id: id.into(),
            ts: 1,
            sidecar_id: "s".into(),
            account: "acme".into(),
            workload: String::new(),
            tags: vec![("team".into(), "x".into())],
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            route: RouteKind::Stream,
            cache: CacheOutcome::Miss,
            worst_nusd: 9_000,
            reserved: vec![Charge {
                budget: "day".into(),
                period: "2026-12-03".into(),
                nusd: 9_000,
            }],
            idempotency_key: Some(format!("k-{id}")),
        }
    }
}

fn open(id: &str) -> Record {
    Record::Open(OpenRecord::of_test(id))
}

fn fin(id: &str, cost: u64) -> Record {
    Record::Final(FinalRecord {
        event: event(id, cost),
        charges: vec![Charge {
            budget: "day".into(),
            period: "2026-12-03".into(),
            nusd: cost,
        }],
    })
}

#[derive(Default)]
struct Seen {
    recovered: Vec<(u64, FinalRecord)>,
    folded: Vec<(u64, FinalRecord)>,
    upto: u64,
    checkpoints: usize,
}

/// An in-memory fold; `slow` makes every fold take that long (a busy ledger).
#[derive(Clone, Default)]
struct MemFold {
    seen: Arc<Mutex<Seen>>,
    watermark: u64,
    slow: Option<Duration>,
}

impl Fold for MemFold {
    fn watermark(&self) -> u64 {
        self.watermark
    }
    fn recover(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError> {
        let mut s = self.seen.lock().unwrap();
        s.recovered.extend_from_slice(finals);
        s.upto = upto;
        Ok(())
    }
    fn fold(&mut self, finals: &[(u64, FinalRecord)], upto: u64) -> Result<(), FoldError> {
        if let Some(d) = self.slow {
            std::thread::sleep(d);
        }
        let mut s = self.seen.lock().unwrap();
        s.folded.extend_from_slice(finals);
        s.upto = upto;
        Ok(())
    }
    fn checkpoint(&mut self) -> Result<(), FoldError> {
        self.seen.lock().unwrap().checkpoints += 1;
        Ok(())
    }
}

/// Journals an open record for `id` and waits until it is committed.
async fn opened(journal: &Journal, id: &str) {
    opened_as(journal, id, Load::Shared).await;
}

async fn opened_as(journal: &Journal, id: &str, load: Load) {
    journal
        .open_record(OpenRecord::of_test(id).as_ref(), load)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
}

fn metrics() -> JournalMetrics {
    JournalMetrics {
        commit_seconds: Histogram::with_opts(prometheus::HistogramOpts::new("c", "c")).unwrap(),
        batch_records: Histogram::with_opts(prometheus::HistogramOpts::new("b", "b")).unwrap(),
        errors: IntCounter::new("e", "e").unwrap(),
    }
}

fn options(rotate_bytes: u64) -> Options {
    Options {
        sync: true,
        rotate_bytes,
        detached_window: DETACHED_WINDOW,
        // Requests commit on their own threads whenever they can (the
        // tests that need the writer run on a current-thread runtime).
        warm: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn an_open_record_does_not_wait_out_the_detached_window() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(3);
    let opts = Options {
        detached_window: window,
        ..options(ROTATE_BYTES)
    };
    let (journal, _) =
        Journal::open(dir.path(), opts, metrics(), Box::new(MemFold::default())).unwrap();
    let Record::Final(f) = fin("done", 1) else {
        unreachable!()
    };
    // The writer is gathering finals for `window` when the open arrives.
    journal.final_record(f).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    opened(&journal, "next").await;
    assert!(started.elapsed() < window / 3, "{:?}", started.elapsed());
    journal.close();
}

#[test]
fn frames_round_trip() {
    let records = vec![(1, open("a")), (2, fin("a", 300)), (7, open("b"))];
    let mut buf = Vec::new();
    for (seq, r) in &records {
        encode(&mut buf, *seq, r).unwrap();
    }
    let (decoded, end) = decode(&buf);
    assert_eq!(decoded, records);
    assert_eq!(end, buf.len());
    // Zeros (a preallocated or empty tail) end the log quietly.
    buf.extend_from_slice(&[0; 64]);
    assert_eq!(decode(&buf).0.len(), 3);
}

/// Queued records are encoded by reference: byte for byte what the
/// stored [`Record`] encodes to, so earlier segments and later reads agree.
#[test]
fn queued_entries_encode_as_records_do() {
    let mut no_key = OpenRecord::of_test("b");
    no_key.idempotency_key = None;
    no_key.tags.clear();
    for o in [OpenRecord::of_test("a"), no_key] {
        let Entry::Open { payload, event_id } = Entry::open(o.as_ref()).unwrap() else {
            panic!("an open entry");
        };
        assert_eq!(event_id, o.event_id);
        assert_eq!(payload, payload_of(&Record::Open(o)));
    }
    let Record::Final(f) = fin("a", 300) else {
        panic!("a final");
    };
    let Entry::Final { payload, record } = Entry::final_record(f.clone()).unwrap() else {
        panic!("a final entry");
    };
    assert_eq!(record, f);
    assert_eq!(payload, payload_of(&Record::Final(f)));
}

fn payload_of(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    rmp_serde::encode::write_named(&mut out, record).unwrap();
    out
}

#[test]
fn a_torn_or_corrupt_tail_is_ignored() {
    let mut buf = Vec::new();
    encode(&mut buf, 1, &open("a")).unwrap();
    encode(&mut buf, 2, &fin("a", 300)).unwrap();
    let good = buf.len();
    encode(&mut buf, 3, &open("b")).unwrap();
    // Torn: the last frame only partly written.
    let torn = &buf[..buf.len() - 5];
    assert_eq!(decode(torn), (decode(&buf[..good]).0, good));
    // Corrupt: a flipped byte in the last frame's payload.
    let mut bad = buf.clone();
    let at = good + FRAME_HEADER + 12;
    bad[at] ^= 0x40;
    let (records, end) = decode(&bad);
    assert_eq!((records.len(), end), (2, good));
    // Recovery reads up to there: "a" is final, nothing is interrupted.
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join(DIR);
    fs::create_dir_all(&j).unwrap();
    fs::write(segment_path(&j, 1), &bad).unwrap();
    let fold = MemFold::default();
    let (journal, recovery) =
        Journal::open(&j, options(ROTATE_BYTES), metrics(), Box::new(fold.clone())).unwrap();
    assert!(recovery.torn);
    assert!(recovery.interrupted.is_empty());
    assert_eq!(fold.seen.lock().unwrap().recovered.len(), 1);
    journal.close();
    assert_eq!(segments(&j).unwrap().len(), 1, "the old segment is gone");
}

fn final_of(id: &str, cost: u64) -> FinalRecord {
    match fin(id, cost) {
        Record::Final(f) => f,
        Record::Open(_) => unreachable!(),
    }
}

/// Waits (on a plain thread) until `n` records are queued.
fn wait_queued(journal: &Journal, n: usize) {
    let started = Instant::now();
    while journal.queued() < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {n} queued",
            journal.queued()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A journal in `dir` with the default options and an in-memory fold.
fn open_with(dir: &Path, m: JournalMetrics) -> Arc<Journal> {
    let (journal, _) =
        Journal::open(dir, options(ROTATE_BYTES), m, Box::new(MemFold::default())).unwrap();
    Arc::new(journal)
}

/// The requests a restart on `dir` finds interrupted.
fn interrupted_at_restart(dir: &Path) -> Vec<UsageEvent> {
    let (journal, recovery) = Journal::open(
        dir,
        options(ROTATE_BYTES),
        metrics(),
        Box::new(MemFold::default()),
    )
    .unwrap();
    journal.close();
    recovery.interrupted
}

#[tokio::test]
async fn the_writer_commits_what_queued_during_a_commit_at_once() {
    // A current-thread runtime cannot block: the writer thread commits.
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let journal = open_with(dir.path(), m.clone());
    // A commit is under way (it holds the segment) while 100 requests and
    // a final queue: they share the next commit, however the machine
    // schedules them.
    let held = journal.hold();
    journal.final_record(final_of("first", 1)).unwrap();
    let waits: Vec<_> = (0..100)
        .map(|i| {
            journal
                .open_record(OpenRecord::of_test(&format!("r{i}")).as_ref(), Load::Shared)
                .unwrap()
        })
        .collect();
    assert_eq!(journal.queued(), 101);
    drop(held);
    for done in waits {
        done.await.unwrap().unwrap();
    }
    assert_eq!(m.batch_records.get_sample_count(), 1, "one shared commit");
    assert_eq!(m.batch_records.get_sample_sum() as u64, 101);
    journal.close();
    // All 100 are still open: they survive into the next start as interrupted.
    let interrupted = interrupted_at_restart(dir.path());
    assert_eq!(interrupted.len(), 100);
    assert!(interrupted
        .iter()
        .all(|e| e.status == Status::Interrupted && e.cost_nusd == 9_000 && e.usage_incomplete));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_commits_its_own_record_when_no_commit_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let journal = open_with(dir.path(), m.clone());
    // Committed on this thread before `open_record` returns: no wait for
    // the writer thread.
    let j = journal.clone();
    let answered = tokio::spawn(async move {
        let mut done = j
            .open_record(OpenRecord::of_test("alone").as_ref(), Load::Shared)
            .unwrap();
        done.try_recv()
    })
    .await
    .unwrap();
    assert!(matches!(answered, Ok(Ok(()))), "{answered:?}");

    // While one request's commit holds the segment, 100 others queue and
    // take the lead from none: the leader's commit takes them all.
    let held = journal.hold();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let j = journal.clone();
            tokio::spawn(async move {
                opened(&j, &format!("r{i}")).await;
            })
        })
        .collect();
    // (Blocks this thread, not the runtime's workers the tasks run on.)
    wait_queued(&journal, 100);
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        m.batch_records.get_sample_count(),
        2,
        "the first, then one shared commit"
    );
    assert_eq!(m.batch_records.get_sample_sum() as u64, 101);
    journal.close();
    assert_eq!(interrupted_at_restart(dir.path()).len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finals_a_request_committed_are_folded_without_waiting_for_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let fold = MemFold::default();
    let (journal, _) = Journal::open(
        dir.path(),
        options(ROTATE_BYTES),
        metrics(),
        Box::new(fold.clone()),
    )
    .unwrap();
    journal.final_record(final_of("a", 300)).unwrap();
    // The next request's own commit takes the final along; the writer is
    // told it has a fold to do.
    opened(&journal, "b").await;
    let started = Instant::now();
    loop {
        if fold.seen.lock().unwrap().folded.len() == 1 {
            break;
        }
        // FOLD_EVERY (50 ms), well before the writer's idle tick (1 s).
        assert!(started.elapsed() < TICK / 2, "not folded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fold.seen.lock().unwrap().folded[0].1.event.event_id, "a");
    journal.close();
}

/// Requests spaced wider than the detached window (a slow upstream) never
/// wake an active writer, neither for their finals nor for the work their
/// commits leave it; the finals are still written and folded on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_writer_naps_and_requests_never_wake_it() {
    let dir = tempfile::tempdir().unwrap();
    let fold = MemFold::default();
    let options = Options {
        sync: false,
        ..options(ROTATE_BYTES)
    };
    let (journal, _) =
        Journal::open(dir.path(), options, metrics(), Box::new(fold.clone())).unwrap();
    opened_as(&journal, "first", Load::Alone).await;
    journal.final_record(final_of("first", 10)).unwrap();
    tokio::time::sleep(DETACHED_WINDOW * 2).await;
    let before = journal.shared.queue.state().request_wakes;
    for i in 0..5 {
        let id = format!("r{i}");
        opened_as(&journal, &id, Load::Alone).await;
        journal.final_record(final_of(&id, 10)).unwrap();
        tokio::time::sleep(DETACHED_WINDOW * 4).await;
    }
    assert_eq!(journal.shared.queue.state().request_wakes, before);
    let started = Instant::now();
    while fold.seen.lock().unwrap().folded.len() < 6 {
        // Written within a nap, folded FOLD_EVERY later: well before the
        // idle tick.
        assert!(started.elapsed() < TICK / 2, "not folded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    journal.close();
}

#[tokio::test]
async fn rotation_keeps_open_records() {
    let dir = tempfile::tempdir().unwrap();
    let fold = MemFold::default();
    // Every commit passes the size: every commit rotates.
    let (journal, _) =
        Journal::open(dir.path(), options(1), metrics(), Box::new(fold.clone())).unwrap();
    opened(&journal, "a").await;
    opened(&journal, "b").await;
    let Record::Final(f) = fin("b", 300) else {
        unreachable!()
    };
    journal.final_record(f).unwrap();
    journal.close();
    {
        let s = fold.seen.lock().unwrap();
        assert_eq!(s.folded.len(), 1);
        assert!(
            s.checkpoints >= 3,
            "each rotation checkpoints the ledger first"
        );
    }
    let segs = segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 1, "old segments are deleted");
    let left = read(dir.path()).unwrap();
    assert_eq!(left.len(), 1, "only the open record is carried: {left:?}");
    assert!(matches!(&left[0].1, Record::Open(o) if o.event_id == "a"));
    // "a" never finished: at the next start it is interrupted.
    let fold = MemFold::default();
    let (journal, recovery) =
        Journal::open(dir.path(), options(1), metrics(), Box::new(fold.clone())).unwrap();
    assert_eq!(recovery.interrupted.len(), 1);
    assert_eq!(recovery.interrupted[0].event_id, "a");
    let s = fold.seen.lock().unwrap();
    assert_eq!(s.recovered.len(), 1);
    assert_eq!(
        s.recovered[0].1.charges[0].nusd, 9_000,
        "charged its reservation"
    );
    drop(s);
    journal.close();
}

#[test]
fn restarts_never_reuse_a_segment_name() {
    let dir = tempfile::tempdir().unwrap();
    // A clean shutdown leaves an empty segment named after the next seq,
    // and the ledger's watermark just below it.
    let fold = MemFold {
        watermark: 9,
        ..MemFold::default()
    };
    write_segment(dir.path(), 10, &[]);
    let (journal, _) =
        Journal::open(dir.path(), options(ROTATE_BYTES), metrics(), Box::new(fold)).unwrap();
    let segs = segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].0 > 10, "{segs:?}");
    journal.close();
    let fold = MemFold {
        watermark: 9,
        ..MemFold::default()
    };
    let (journal, _) =
        Journal::open(dir.path(), options(ROTATE_BYTES), metrics(), Box::new(fold)).unwrap();
    assert_eq!(
        segments(dir.path()).unwrap().len(),
        1,
        "the live segment survives"
    );
    journal.close();
}

#[test]
fn recovery_numbers_new_records_above_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(
        dir.path(),
        1,
        &[(1, open("a")), (2, open("b")), (3, fin("b", 5))],
    );
    // The ledger already holds spend up to seq 40 (the journal lost its
    // unsynced tail): "a"'s interrupted final must still be charged.
    let fold = MemFold {
        watermark: 40,
        ..MemFold::default()
    };
    let (journal, recovery) = Journal::open(
        dir.path(),
        options(ROTATE_BYTES),
        metrics(),
        Box::new(fold.clone()),
    )
    .unwrap();
    assert_eq!(recovery.finals, 2);
    let s = fold.seen.lock().unwrap();
    let a = s
        .recovered
        .iter()
        .find(|(_, f)| f.event.event_id == "a")
        .unwrap();
    assert_eq!(a.0, 41);
    assert_eq!(s.upto, 41);
    drop(s);
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lead_is_let_go_once_the_queue_is_quiet() {
    // Without sync every lead starts direct; records queued meanwhile make
    // it move its worker and commit again.
    leads_let_go(false, Load::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lead_is_let_go_once_the_queue_is_quiet_when_requests_say_they_are_alone() {
    // (Each says so, as a request alone would: leads start direct too.)
    leads_let_go(true, Load::Alone).await;
}

/// Requests committing inline, leads handed to the writer and finals
/// gathered by it, all at once: afterwards nobody holds the lead, so the
/// next request commits at once instead of waiting for a timed wake.
async fn leads_let_go(sync: bool, load: Load) {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync,
        detached_window: Duration::from_millis(1),
        ..options(ROTATE_BYTES)
    };
    // Slow folds: leads handed to the writer are taken over by requests.
    let fold = MemFold {
        slow: Some(Duration::from_millis(3)),
        ..MemFold::default()
    };
    let (journal, _) = Journal::open(dir.path(), opts, metrics(), Box::new(fold.clone())).unwrap();
    let journal = Arc::new(journal);
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let j = journal.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let id = format!("t{t}-{i}");
                    opened_as(&j, &id, load).await;
                    j.final_record(final_of(&id, 1)).unwrap();
                    if i % 7 == 0 {
                        tokio::time::sleep(Duration::from_micros(1500)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let started = Instant::now();
    loop {
        let quiet = {
            let st = journal.shared.queue.state();
            st.cmds.is_empty() && !st.leading
        };
        if quiet {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lead is stuck"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    journal.close();
    assert_eq!(
        fold.seen.lock().unwrap().folded.len(),
        3200,
        "every final folded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_quiet_spell_the_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        warm: Duration::ZERO,
        ..options(ROTATE_BYTES)
    };
    let (journal, _) =
        Journal::open(dir.path(), opts, metrics(), Box::new(MemFold::default())).unwrap();
    // With a commit under way this returns at once (a request committing
    // itself would wait here for the segment): the writer has it.
    let held = journal.hold();
    let mut done = journal
        .open_record(OpenRecord::of_test("cold").as_ref(), Load::Shared)
        .unwrap();
    assert!(matches!(
        done.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    drop(held);
    done.await.unwrap().unwrap();
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_s_finals_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let journal = open_with(dir.path(), m.clone());
    let finals = (0..20).map(|i| final_of(&format!("f{i}"), 5)).collect();
    for done in journal.finals_acked(finals).unwrap() {
        done.await.unwrap().unwrap();
    }
    assert_eq!(m.batch_records.get_sample_count(), 1);
    assert_eq!(m.batch_records.get_sample_sum() as u64, 20);
    journal.close();
}

/// Journals an open record under `load` on a runtime with `workers`
/// workers; returns whether it was committed before `open_record`
/// returned, and how the request's lead committed.
fn lead_on(workers: usize, sync: bool, warm: Duration, load: Load) -> (bool, Vec<Inline>) {
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
    }
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync,
        warm,
        ..options(ROTATE_BYTES)
    };
    let (journal, _) =
        Journal::open(dir.path(), opts, metrics(), Box::new(MemFold::default())).unwrap();
    let journal = Arc::new(journal);
    // The writer's start-up upkeep holds the segment a moment: a direct
    // lead finding it held would move.
    wait_writer_idle(&journal);
    let j = journal.clone();
    let answered = runtime.block_on(async move {
        tokio::spawn(async move {
            let mut done = j
                .open_record(OpenRecord::of_test("r").as_ref(), load)
                .unwrap();
            let at_once = done.try_recv().is_ok();
            if !at_once {
                done.await.unwrap().unwrap();
            }
            at_once
        })
        .await
        .unwrap()
    });
    let led = journal.led();
    journal.close();
    (answered, led)
}

fn wait_writer_idle(journal: &Journal) {
    let started = Instant::now();
    while !journal.shared.queue.state().idle {
        assert!(started.elapsed() < Duration::from_secs(10), "writer busy");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_request_alone_commits_on_its_worker_as_it_is() {
    let warm = Duration::from_secs(3600);
    // Nobody else is in flight and another worker is free: no handoff,
    // even after a quiet spell.
    assert_eq!(
        lead_on(2, true, warm, Load::Alone),
        (true, vec![Inline::Direct])
    );
    assert_eq!(
        lead_on(2, true, Duration::ZERO, Load::Alone),
        (true, vec![Inline::Direct])
    );
    // Others in flight: the worker's tasks move to another thread first.
    assert_eq!(
        lead_on(2, true, warm, Load::Shared),
        (true, vec![Inline::Moved])
    );
    // A lone worker would stop the whole runtime: it moves too.
    assert_eq!(
        lead_on(1, true, warm, Load::Alone),
        (true, vec![Inline::Moved])
    );
    // A current-thread runtime cannot move its tasks: the writer commits.
    assert_eq!(lead_on(0, true, warm, Load::Alone).1, vec![]);
}

#[test]
fn without_sync_a_request_writes_its_record_itself() {
    // A write to the page cache: direct, warm or cold, even with one worker.
    for workers in [1, 2] {
        for load in [Load::Alone, Load::Shared] {
            assert_eq!(
                lead_on(workers, false, Duration::ZERO, load),
                (true, vec![Inline::Direct]),
                "{workers} workers, {load:?}"
            );
        }
    }
    // A current-thread runtime's only thread would wait out a busy
    // segment: the writer commits.
    assert_eq!(lead_on(0, false, Duration::ZERO, Load::Alone).1, vec![]);
}

#[test]
fn a_request_alone_moves_its_worker_while_the_segment_is_held() {
    // A rotation holds the segment for tens of ms: a request alone waits
    // for it with its worker moved, so what arrives meanwhile is served.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = open_with(dir.path(), metrics());
    let held = journal.hold();
    let j = journal.clone();
    let task = runtime.spawn(async move { opened_as(&j, "r", Load::Alone).await });
    let started = Instant::now();
    while journal.led().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "never led");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(journal.led(), vec![Inline::Moved]);
    drop(held);
    runtime.block_on(task).unwrap();
    // Free again: the next one commits as it is.
    wait_writer_idle(&journal);
    let j = journal.clone();
    runtime
        .block_on(runtime.spawn(async move { opened_as(&j, "s", Load::Alone).await }))
        .unwrap();
    assert_eq!(journal.led(), vec![Inline::Moved, Inline::Direct]);
    journal.close();
}

#[tokio::test]
async fn a_lead_given_up_mid_commit_goes_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_with(dir.path(), metrics());
    // Asleep until its idle tick: only a handover wakes it sooner.
    wait_writer_idle(&journal);
    let (ack, done) = oneshot::channel();
    let cmd = Cmd {
        entry: Entry::open(OpenRecord::of_test("r").as_ref()).unwrap(),
        ack: Some(ack),
    };
    assert!(
        journal.shared.queue.push(cmd, true).unwrap(),
        "took the lead"
    );
    // What the unwind guard does when a request's commit panics, while the
    // writer folds (a request finishing then would be asked to go again).
    journal.shared.queue.busy(true);
    journal.shared.queue.give_up();
    tokio::time::timeout(TICK / 2, done)
        .await
        .expect("nobody committed the record")
        .unwrap()
        .unwrap();
    journal.shared.queue.busy(false);
    let started = Instant::now();
    while journal.shared.queue.state().leading {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lead is stuck"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    journal.close();
    assert_eq!(interrupted_at_restart(dir.path()).len(), 1);
}
