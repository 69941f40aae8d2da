//! What a durable usage record costs on this machine, from the raw disk up
//! to tollgate's journal, so the dataplane bench's durable rows can be
//! judged against a floor.
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench cargo bench --bench durability
//! cargo bench --bench durability -- --ops 3000 --idle-ops 200 --idle-ms 20
//! ```
//!
//! Each case runs `--ops` operations back to back, then `--idle-ops` with
//! `--idle-ms` of idleness before each (a request in front of a provider
//! that takes that long: the machine's CPUs go idle in between, so every
//! hand-off between threads also pays for waking a CPU). Reported: latency
//! p50/p99 per operation and the process's CPU time per operation (user +
//! system, all threads, from `/proc/self/stat`).
//!
//! * `fdatasync`: one 256 B `pwrite` into a preallocated file and an
//!   `fdatasync`, on the calling thread (the disk's floor);
//! * `hand-off`: a task on a 2-worker tokio runtime (as pingora's) passes a
//!   record to a writer thread (mutex + condvar) and awaits a oneshot
//!   answer, no disk: the two thread wake-ups the journal adds;
//! * `hand-off+fdatasync`: the same, the writer thread doing the write and
//!   `fdatasync`: the floor for any design that keeps the disk off the
//!   async threads;
//! * `block_in_place+fdatasync` / `spawn_blocking+fdatasync`: the write and
//!   `fdatasync` from a runtime task, in place or on tokio's blocking pool
//!   (a journal whose waiting requests synced in place measured no better
//!   in the dataplane bench: +50 µs CPU per request at c=1, and more RSS
//!   from the extra threads; the writer thread stayed);
//! * `journal sync` / `journal nosync`: tollgate's usage journal
//!   (`store::journal`, an in-memory fold), an open record awaited and its
//!   final queued, as a request does (`outbox.sync` true / false).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::sync::oneshot;
use tollgate::meter::event::{CacheOutcome, Charge, OpenRecord, RouteKind, Status};
use tollgate::store::journal::{self, FinalRecord, Fold, FoldError, Journal, JournalMetrics, Load};

const RECORD_BYTES: usize = 256;

struct Options {
    ops: usize,
    idle_ops: usize,
    idle: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Options::parse(&args).and_then(|o| run(&o)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("durability bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            ops: 3000,
            idle_ops: 200,
            idle: Duration::from_millis(20),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--ops" => o.ops = value()?.parse()?,
                "--idle-ops" => o.idle_ops = value()?.parse()?,
                "--idle-ms" => o.idle = Duration::from_millis(value()?.parse()?),
                other => {
                    bail!("unknown argument {other:?}; usage: --ops N --idle-ops N --idle-ms MS")
                }
            }
        }
        if o.ops == 0 {
            bail!("--ops must be at least 1");
        }
        Ok(o)
    }
}

/// Latencies (µs, sorted) and CPU µs per operation.
struct Sample {
    latencies: Vec<f64>,
    cpu_us: f64,
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of this process, all threads.
fn process_cpu(ticks: u64) -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// Runs `ops` operations, `idle` apart, timing each; CPU is read around
/// the whole run (the clock ticks are too coarse for one operation), so
/// the idle runs include their timers' wake-ups.
fn measure(
    runtime: &tokio::runtime::Runtime,
    ops: usize,
    idle: Duration,
    ticks: u64,
    mut op: impl FnMut() -> Result<Duration>,
) -> Result<Sample> {
    let mut latencies = Vec::with_capacity(ops);
    let before = process_cpu(ticks)?;
    for _ in 0..ops {
        if !idle.is_zero() {
            runtime.block_on(async { tokio::time::sleep(idle).await });
        }
        latencies.push(op()?.as_secs_f64() * 1e6);
    }
    let cpu = process_cpu(ticks)?.saturating_sub(before);
    latencies.sort_by(f64::total_cmp);
    Ok(Sample {
        latencies,
        cpu_us: cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
    })
}

/// A preallocated file, like a journal segment.
fn segment(dir: &Path, name: &str) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))?;
    file.write_all_at(&vec![0_u8; 8 << 20], 0)?;
    file.sync_all()?;
    Ok(file)
}

/// A writer thread answering each request over a oneshot, optionally
/// after a write + fdatasync.
struct Writer {
    queue: Arc<(Mutex<VecDeque<oneshot::Sender<()>>>, Condvar)>,
}

impl Writer {
    fn start(file: Option<std::fs::File>) -> Writer {
        let queue: Arc<(Mutex<VecDeque<oneshot::Sender<()>>>, Condvar)> = Arc::default();
        let q = queue.clone();
        std::thread::spawn(move || {
            let mut at = 0_u64;
            let record = [0x5a_u8; RECORD_BYTES];
            loop {
                let acks: Vec<_> = {
                    let (lock, wake) = &*q;
                    let Ok(mut g) = lock.lock() else { return };
                    while g.is_empty() {
                        g = match wake.wait(g) {
                            Ok(g) => g,
                            Err(_) => return,
                        };
                    }
                    g.drain(..).collect()
                };
                if let Some(f) = &file {
                    if f.write_all_at(&record, at)
                        .and_then(|()| f.sync_data())
                        .is_err()
                    {
                        return;
                    }
                    at = (at + RECORD_BYTES as u64) % (8 << 20);
                }
                for ack in acks {
                    let _ = ack.send(());
                }
            }
        });
        Writer { queue }
    }

    async fn round_trip(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        {
            let (lock, wake) = &*self.queue;
            lock.lock().map_err(|_| anyhow!("poisoned"))?.push_back(ack);
            wake.notify_one();
        }
        done.await.map_err(|_| anyhow!("writer gone"))
    }
}

/// The journal's fold, in memory: the ledger is not what is measured.
struct NoFold;

impl Fold for NoFold {
    fn watermark(&self) -> u64 {
        0
    }
    fn recover(&mut self, _: &[(u64, FinalRecord)], _: u64) -> Result<(), FoldError> {
        Ok(())
    }
    fn fold(&mut self, _: &[(u64, FinalRecord)], _: u64) -> Result<(), FoldError> {
        Ok(())
    }
    fn checkpoint(&mut self) -> Result<(), FoldError> {
        Ok(())
    }
}

fn open_record(n: usize) -> OpenRecord {
    OpenRecord {
        event_id: format!("01a23deb-1603-76a4-bf17-{n:012x}"),
        ts: 1_764_806_400_000,
        sidecar_id: "tg-bench".into(),
        account: "bench".into(),
        workload: String::new(),
        tags: Vec::new(),
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5-20250929".into(),
        route: RouteKind::Sync,
        cache: CacheOutcome::Miss,
        worst_nusd: 3_900_000,
        reserved: vec![Charge {
            budget: "bench-month".into(),
            period: "2026-12".into(),
            nusd: 3_900_000,
        }],
        idempotency_key: None,
    }
}

fn open_journal(dir: &Path, sync: bool) -> Result<Journal> {
    let metrics = JournalMetrics {
        commit_seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "commit", "commit",
        ))?,
        batch_records: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "batch", "batch",
        ))?,
        errors: prometheus::IntCounter::new("errors", "errors")?,
    };
    let options = journal::Options {
        sync,
        rotate_bytes: journal::ROTATE_BYTES,
        detached_window: journal::DETACHED_WINDOW,
        warm: journal::WARM,
    };
    let (journal, _) = Journal::open(dir, options, metrics, Box::new(NoFold))?;
    Ok(journal)
}

fn run(o: &Options) -> Result<String> {
    let ticks = clock_ticks();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-durability-")
        .tempdir_in(std::env::current_dir()?)?;
    // Two workers, as the dataplane bench runs pingora.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows: Vec<(String, Sample, Sample)> = Vec::new();

    let file = segment(dir.path(), "raw")?;
    let record = [0x5a_u8; RECORD_BYTES];
    let mut at = 0_u64;
    let mut raw = || -> Result<Duration> {
        let started = Instant::now();
        file.write_all_at(&record, at)?;
        file.sync_data()?;
        at = (at + RECORD_BYTES as u64) % (8 << 20);
        Ok(started.elapsed())
    };
    let busy = measure(&runtime, o.ops, Duration::ZERO, ticks, &mut raw)?;
    let idle = measure(&runtime, o.idle_ops, o.idle, ticks, &mut raw)?;
    rows.push(("fdatasync (this thread)".into(), busy, idle));

    // The same on a runtime worker: in place (the worker hands its other
    // tasks to another thread meanwhile) and on the blocking pool.
    let file = Arc::new(segment(dir.path(), "inplace")?);
    for (label, in_place) in [
        ("block_in_place+fdatasync", true),
        ("spawn_blocking+fdatasync", false),
    ] {
        let mut n = 0_u64;
        let mut op = || -> Result<Duration> {
            n += 1;
            let at = (n * RECORD_BYTES as u64) % (8 << 20);
            let f = file.clone();
            runtime.block_on(async move {
                tokio::spawn(async move {
                    let started = Instant::now();
                    let write = move || {
                        f.write_all_at(&[0x5a_u8; RECORD_BYTES], at)
                            .and_then(|()| f.sync_data())
                    };
                    if in_place {
                        tokio::task::block_in_place(write)?;
                    } else {
                        tokio::task::spawn_blocking(write).await??;
                    }
                    Ok::<_, anyhow::Error>(started.elapsed())
                })
                .await?
            })
        };
        let busy = measure(&runtime, o.ops, Duration::ZERO, ticks, &mut op)?;
        let idle = measure(&runtime, o.idle_ops, o.idle, ticks, &mut op)?;
        rows.push((label.into(), busy, idle));
    }

    for (label, file) in [
        ("hand-off (no disk)", None),
        ("hand-off+fdatasync", Some(segment(dir.path(), "handoff")?)),
    ] {
        let writer = Arc::new(Writer::start(file));
        let mut op = || -> Result<Duration> {
            let w = writer.clone();
            runtime.block_on(async move {
                tokio::spawn(async move {
                    let started = Instant::now();
                    w.round_trip().await?;
                    Ok::<_, anyhow::Error>(started.elapsed())
                })
                .await?
            })
        };
        let busy = measure(&runtime, o.ops, Duration::ZERO, ticks, &mut op)?;
        let idle = measure(&runtime, o.idle_ops, o.idle, ticks, &mut op)?;
        rows.push((label.into(), busy, idle));
    }

    for (label, sync) in [("journal sync", true), ("journal nosync", false)] {
        let journal = Arc::new(open_journal(
            &dir.path().join(label.replace(' ', "-")),
            sync,
        )?);
        let mut n = 0;
        let mut op = || -> Result<Duration> {
            n += 1;
            let record = open_record(n);
            let j = journal.clone();
            runtime.block_on(async move {
                tokio::spawn(async move {
                    let started = Instant::now();
                    let done = j.open_record(record.as_ref(), Load::Alone)?;
                    done.await?.map_err(|e| anyhow!(e))?;
                    let took = started.elapsed();
                    let mut event = record.interrupted();
                    event.status = Status::Ok;
                    j.final_record(FinalRecord {
                        event,
                        charges: record.reserved.clone(),
                    })?;
                    Ok::<_, anyhow::Error>(took)
                })
                .await?
            })
        };
        let busy = measure(&runtime, o.ops, Duration::ZERO, ticks, &mut op)?;
        let idle = measure(&runtime, o.idle_ops, o.idle, ticks, &mut op)?;
        journal.close();
        rows.push((label.into(), busy, idle));
    }

    let q = |s: &[f64], q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "\n== tollgate durability benchmark ==");
    let _ = writeln!(
        w,
        "disk     : {} ({} B records into a preallocated file)",
        dir.path().display(),
        RECORD_BYTES
    );
    let _ = writeln!(
        w,
        "ops      : {} back to back, then {} each after {} ms idle; CPU = process user+sys per op",
        o.ops,
        o.idle_ops,
        o.idle.as_millis()
    );
    let _ = writeln!(
        w,
        "\n{:<26} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}",
        "case", "p50 µs", "p99 µs", "CPU µs", "idle p50", "idle p99", "idle CPU"
    );
    for (label, busy, idle) in &rows {
        let _ = writeln!(
            w,
            "{:<26} {:>8.0} {:>8.0} {:>8.1}   {:>8.0} {:>8.0} {:>8.1}",
            label,
            q(&busy.latencies, 0.5),
            q(&busy.latencies, 0.99),
            busy.cpu_us,
            if idle.latencies.is_empty() {
                f64::NAN
            } else {
                q(&idle.latencies, 0.5)
            },
            if idle.latencies.is_empty() {
                f64::NAN
            } else {
                q(&idle.latencies, 0.99)
            },
            idle.cpu_us,
        );
    }
    Ok(out)
}
