//! Data-plane benchmark: what tollgate adds on top of a provider.
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench cargo bench --bench dataplane
//! cargo bench --bench dataplane -- --duration 5 --threads 1 --targets direct,bare,tollgate
//! ```
//!
//! Against the in-repo fake provider on loopback, `wrk` (closed loop,
//! keep-alive) measures, for each workload and concurrency:
//!
//! * `direct`: the fake itself (the baseline for "added" latency);
//! * `bare`: a bare pingora passthrough to the fake (a `ProxyHttp` whose
//!   `upstream_peer` is all it does): the floor, pingora's own proxying cost;
//! * `tollgate`: the real release binary, default config (durable usage
//!   events: `outbox.sync = true`), key injection on, admin listener on,
//!   log level `warn`;
//! * `tollgate-before`: `tollgate`'s config run from another build
//!   (`TOLLGATE_BENCH_BEFORE_BIN`), so a change's before/after comes from
//!   one run with the rows interleaved (this VM's noise moves whole runs);
//! * `tollgate-nosync`: the same with `outbox.sync = false`, which isolates
//!   the cost of waiting for the group commit's fsync;
//! * `tollgate-routed`: `tollgate` with the request's model an alias of one
//!   target of the same dialect (the route stage and its body rewrite);
//! * `tollgate-translated`: the alias's target speaks the other dialect
//!   (OpenAI Chat Completions): the request, the answer and every stream
//!   event are translated;
//! * `tollgate-budget`: `tollgate` with a local monthly budget on every
//!   request (reserve before, settle after);
//! * `tollgate-leased`: the same budget held by a control endpoint (a
//!   `tollgate control` process on loopback) and spent from a lease: with
//!   the lease warm, no request waits on the control endpoint, so this row
//!   should match `tollgate-budget`.
//!
//! Each row runs in two passes of half `--duration` (each after its own
//! warm-up): every target in order, then every target in reverse order, and
//! a target's figures add both up. On this VM the target that ran first in
//! a row was 35-40% slower at c=64, whichever of two binaries it was; two
//! passes give every target the same average position.
//!
//! Every server is its own process so that the driver's CPU is not mixed in:
//! the fake and the bare passthrough are this binary re-executed with the
//! hidden `--serve-fake PORT THREADS` / `--serve-bare PORT UPSTREAM THREADS`
//! arguments; tollgate is `CARGO_BIN_EXE_tollgate`. Children die with the
//! driver (they are dropped on exit and on panic, started under
//! `setpriv --pdeathsig KILL` when available, and the re-executed ones also
//! exit when their stdin pipe closes).
//!
//! The report (stdout) has p50/p99 latency, requests per second, the proxy's
//! CPU time per request, tollgate's added p50/p99 (tollgate − direct), the
//! c=64 throughput ratio tollgate / bare, tollgate's RSS after the runs, and
//! tollgate's own view (its `tollgate_added_latency_seconds` and outbox group
//! commit metrics). Progress goes to stderr. Not run by CI.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

/// Model named in every request (priced in the built-in table).
const MODEL: &str = "claude-sonnet-4-5-20250929";
/// SSE events wanted in the `stream50` workload.
const STREAM_EVENTS: usize = 50;
/// Events of the `big` scenario that are not text deltas: message_start,
/// content_block_start, content_block_stop, message_delta, message_stop.
const BIG_FIXED_EVENTS: usize = 5;
/// The key tollgate injects (the fake accepts anything).
const INJECTED_KEY: &str = "sk-ant-bench-injected-0000";
/// The credential the load generator sends (tollgate strips it).
const CLIENT_KEY: &str = "sk-ant-bench-client-0000";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--serve-fake") => serve_fake(args.get(1..).unwrap_or_default()),
        Some("--serve-bare") => serve_bare(args.get(1..).unwrap_or_default()),
        _ => Options::parse(&args).and_then(|o| run(&o, &args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dataplane bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// Non-streaming `POST /v1/messages`, small body (~0.7 KB answer).
    NonStream,
    /// Streaming, 50 SSE events (fake scenario `big`, calibrated).
    Stream50,
    /// Streaming, 11 small SSE events, one body chunk each (`slow`, delay 0).
    Stream11,
}

impl Workload {
    fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "nonstream" => Workload::NonStream,
            "stream50" => Workload::Stream50,
            "stream11" => Workload::Stream11,
            other => bail!("unknown workload {other:?} (nonstream, stream50, stream11)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::NonStream => "nonstream",
            Workload::Stream50 => "stream50",
            Workload::Stream11 => "stream11",
        }
    }

    fn stream(self) -> bool {
        self != Workload::NonStream
    }

    fn body(self) -> String {
        let stream = if self.stream() {
            ",\"stream\":true"
        } else {
            ""
        };
        // The prompt names the workload: each has its own cache key.
        format!(
            "{{\"model\":\"{MODEL}\",\"max_tokens\":256{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello in one short sentence ({}).\"}}]}}",
            self.name()
        )
    }

    /// Request headers (besides content-type), `big_bytes` for `stream50`.
    fn headers(self, big_bytes: u64) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("anthropic-version", "2023-06-01".to_owned()),
            ("x-api-key", CLIENT_KEY.to_owned()),
        ];
        match self {
            Workload::NonStream => {}
            Workload::Stream50 => {
                h.push(("x-fake-scenario", "big".to_owned()));
                h.push(("x-fake-big-bytes", big_bytes.to_string()));
            }
            Workload::Stream11 => {
                h.push(("x-fake-scenario", "slow".to_owned()));
                h.push(("x-fake-delay-ms", "0".to_owned()));
            }
        }
        h
    }

    /// SSE events every answer must have (`None` for JSON).
    fn expected_events(self) -> Option<usize> {
        match self {
            Workload::NonStream => None,
            Workload::Stream50 => Some(STREAM_EVENTS),
            Workload::Stream11 => Some(11),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Direct,
    Bare,
    Tollgate,
    /// `tollgate`'s config on another build (`TOLLGATE_BENCH_BEFORE_BIN`):
    /// a before/after pair measured in one run, rows interleaved.
    TollgateBefore,
    TollgateNoSync,
    /// The exact cache on, every request different: the miss path.
    TollgateMiss,
    /// The exact cache on, every request the same: hits.
    TollgateHit,
    /// The model is an alias of one same-dialect target.
    TollgateRouted,
    /// The model is an alias of one target in the other dialect.
    TollgateTranslated,
    /// A local budget on every request.
    TollgateBudget,
    /// The same budget held by a control endpoint, spent from a lease.
    TollgateLeased,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "direct" => Kind::Direct,
            "bare" => Kind::Bare,
            "tollgate" => Kind::Tollgate,
            "tollgate-before" => Kind::TollgateBefore,
            "tollgate-nosync" => Kind::TollgateNoSync,
            "tollgate-miss" => Kind::TollgateMiss,
            "tollgate-hit" => Kind::TollgateHit,
            "tollgate-routed" => Kind::TollgateRouted,
            "tollgate-translated" => Kind::TollgateTranslated,
            "tollgate-budget" => Kind::TollgateBudget,
            "tollgate-leased" => Kind::TollgateLeased,
            other => {
                bail!("unknown target {other:?} (direct, bare, tollgate, tollgate-before, tollgate-nosync, tollgate-miss, tollgate-hit, tollgate-routed, tollgate-translated, tollgate-budget, tollgate-leased)")
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bare => "bare",
            Kind::Tollgate => "tollgate",
            Kind::TollgateBefore => "tollgate-before",
            Kind::TollgateNoSync => "tollgate-nosync",
            Kind::TollgateMiss => "tollgate-miss",
            Kind::TollgateHit => "tollgate-hit",
            Kind::TollgateRouted => "tollgate-routed",
            Kind::TollgateTranslated => "tollgate-translated",
            Kind::TollgateBudget => "tollgate-budget",
            Kind::TollgateLeased => "tollgate-leased",
        }
    }

    /// A tollgate (metered, with receipts and an admin listener).
    fn is_tollgate(self) -> bool {
        !matches!(self, Kind::Direct | Kind::Bare)
    }
}

struct Options {
    warmup: Duration,
    duration: Duration,
    threads: Vec<usize>,
    concurrency: Vec<usize>,
    workloads: Vec<Workload>,
    kinds: Vec<Kind>,
    fake_threads: usize,
    wrk_threads: usize,
    /// Restart each tollgate (empty store) before each of its rows.
    fresh: bool,
    /// The fake's time to first byte under load (`x-fake-ttfb-ms`), so
    /// requests overlap the way they do in front of a real provider.
    upstream_delay_ms: u64,
    /// Sequential requests per target, workload and upstream delay in the
    /// first-byte section (0 skips it).
    first_byte_requests: usize,
    /// The fake's time to first byte in each pass of the first-byte section.
    first_byte_delays_ms: Vec<u64>,
    /// Rounds of the first-byte section, each on freshly started proxies,
    /// their samples pooled (see [`first_byte_rounds`]).
    first_byte_rounds: usize,
}

const USAGE: &str = "usage: cargo bench --bench dataplane -- [--warmup SECS] [--duration SECS] \
[--threads 1,2] [--concurrency 1,64] [--workloads nonstream,stream50[,stream11]] \
[--targets direct,bare,tollgate,tollgate-before,tollgate-nosync,tollgate-miss,tollgate-hit] [--fake-threads N] \
[--wrk-threads N] [--fresh] [--upstream-delay-ms N] [--first-byte-requests N] [--first-byte-delays-ms 0,20] \
[--first-byte-rounds N]";

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            threads: vec![1, 2],
            concurrency: vec![1, 64],
            workloads: vec![Workload::NonStream, Workload::Stream50],
            kinds: vec![
                Kind::Direct,
                Kind::Bare,
                Kind::Tollgate,
                Kind::TollgateNoSync,
            ],
            fake_threads: 2,
            wrk_threads: 2,
            fresh: false,
            upstream_delay_ms: 0,
            first_byte_requests: 300,
            first_byte_delays_ms: vec![0, 20],
            first_byte_rounds: 1,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to harness-less targets.
                "--bench" => {}
                "--warmup" => o.warmup = Duration::from_secs_f64(value()?.parse()?),
                "--duration" => o.duration = Duration::from_secs_f64(value()?.parse()?),
                "--threads" => o.threads = list(&value()?, |s| Ok(s.parse()?))?,
                "--concurrency" => o.concurrency = list(&value()?, |s| Ok(s.parse()?))?,
                "--workloads" => o.workloads = list(&value()?, Workload::parse)?,
                "--targets" => o.kinds = list(&value()?, Kind::parse)?,
                "--fake-threads" => o.fake_threads = value()?.parse()?,
                "--wrk-threads" => o.wrk_threads = value()?.parse()?,
                "--fresh" => o.fresh = true,
                "--upstream-delay-ms" => o.upstream_delay_ms = value()?.parse()?,
                "--first-byte-requests" => o.first_byte_requests = value()?.parse()?,
                "--first-byte-delays-ms" => {
                    o.first_byte_delays_ms = list(&value()?, |s| Ok(s.parse()?))?;
                }
                "--first-byte-rounds" => o.first_byte_rounds = value()?.parse::<usize>()?.max(1),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if !o.kinds.contains(&Kind::Direct) {
            o.kinds.insert(0, Kind::Direct); // the baseline of every "added" figure
        }
        o.kinds.sort();
        o.kinds.dedup();
        if o.threads.contains(&0) || o.concurrency.contains(&0) || o.wrk_threads == 0 {
            bail!("threads, concurrency and wrk threads must be at least 1");
        }
        Ok(o)
    }
}

fn list<T>(s: &str, f: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(f)
        .collect()
}

/// Appends per sample of the fdatasync probe.
const FSYNC_PROBES: usize = 200;
/// Bytes per append (about one usage-journal open record).
const FSYNC_PROBE_BYTES: usize = 256;

/// What the fdatasync probe measured.
#[derive(Clone, Copy)]
struct SyncProbe {
    p50_us: f64,
    p99_us: f64,
    /// CPU (user + system) this thread spent per append + sync, µs: what a
    /// commit costs the machine besides the wait (on a VM the device kicks
    /// are exits, part of it system time).
    cpu_us: f64,
}

/// This thread's time on a CPU so far (user + system), µs: the first field
/// of `/proc/thread-self/schedstat` (ns; `getrusage` would need unsafe code
/// and `/proc/…/stat` counts 10 ms ticks).
fn thread_cpu_us() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e3)
}

/// p50 and p99 (µs) of appending a small record to a file in `dir` and
/// `sync_data`-ing it, and its CPU per sample: the floor of a usage-journal
/// group commit here. With `idle`, each sample follows that long asleep, as
/// a request's commit does behind an upstream that takes that long (an
/// idle vCPU wakes slower).
fn fdatasync_latency(dir: &Path, idle: Duration) -> Result<SyncProbe> {
    let mut prober = SyncProber::create(dir)?;
    let mut samples = Vec::with_capacity(FSYNC_PROBES);
    let mut cpu = 0.0;
    for _ in 0..FSYNC_PROBES {
        let (us, cpu_us) = prober.probe(idle)?;
        samples.push(us);
        cpu += cpu_us;
    }
    prober.remove()?;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Ok(SyncProbe {
        p50_us: at(0.5),
        p99_us: at(0.99),
        cpu_us: cpu / FSYNC_PROBES as f64,
    })
}

/// One append-and-`sync_data` at a time to a probe file in the bench's
/// directory (see [`fdatasync_latency`]).
struct SyncProber {
    path: PathBuf,
    file: std::fs::File,
}

impl SyncProber {
    fn create(dir: &Path) -> Result<SyncProber> {
        let path = dir.join("fdatasync-probe");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(SyncProber { path, file })
    }

    /// After `idle` asleep, one append + sync: (its latency, this thread's
    /// CPU for it), µs.
    fn probe(&mut self, idle: Duration) -> Result<(f64, f64)> {
        use std::io::Write as _;
        if !idle.is_zero() {
            std::thread::sleep(idle);
        }
        let cpu_before = thread_cpu_us();
        let started = Instant::now();
        self.file.write_all(&[0x5a_u8; FSYNC_PROBE_BYTES])?;
        self.file.sync_data()?;
        let us = started.elapsed().as_secs_f64() * 1e6;
        Ok((us, thread_cpu_us() - cpu_before))
    }

    fn remove(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path)?;
        Ok(())
    }
}

/// p50 (µs) of a round trip to another thread and back (a channel send it
/// waits on, and its answer), each after `idle` asleep: what a hand-off to
/// the journal's writer thread costs here besides the disk.
fn handoff_latency(idle: Duration) -> Result<f64> {
    let (to_tx, to_rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        while to_rx.recv().is_ok() {
            if back_tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::with_capacity(FSYNC_PROBES);
    for _ in 0..FSYNC_PROBES {
        if !idle.is_zero() {
            std::thread::sleep(idle);
        }
        let started = Instant::now();
        to_tx.send(())?;
        back_rx.recv()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(to_tx);
    let _ = peer.join();
    samples.sort_by(f64::total_cmp);
    Ok(samples[(samples.len() - 1) / 2])
}

// ---------------------------------------------------------------------------
// Child modes: the fake provider and the bare pingora passthrough

/// Exits this process when its stdin reaches EOF (the driver is gone).
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut buf = [0_u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// `--serve-fake PORT THREADS`
fn serve_fake(args: &[String]) -> Result<()> {
    let port: u16 = args.first().context("--serve-fake PORT")?.parse()?;
    let threads: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    exit_with_parent();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("fake: bind 127.0.0.1:{port}"))?;
        let fake = fake_provider::FakeProvider::start_on(listener, None).await;
        // The fake records every request with its response; forget them
        // often (each clear frees under the fake's lock, so keep it small)
        // so that a long run neither grows memory nor stalls on one big free.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            fake.clear();
        }
    })
}

/// The floor: pingora proxying to the fake with no stages at all.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// `--serve-bare PORT UPSTREAM THREADS` (never returns on success).
fn serve_bare(args: &[String]) -> Result<()> {
    let port: u16 = args.first().context("--serve-bare PORT")?.parse()?;
    let upstream: SocketAddr = args.get(1).context("--serve-bare PORT UPSTREAM")?.parse()?;
    let threads: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    exit_with_parent();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(proxy);
    server.run_forever()
}

// ---------------------------------------------------------------------------
// Child processes

/// A child process, killed when dropped (also while unwinding a panic).
struct Proc {
    name: String,
    child: Child,
    /// Held open; the re-executed children exit when it closes.
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        env: &[(&str, &str)],
        env_remove: &[String],
    ) -> Result<Proc> {
        let mut cmd = guarded(program.as_os_str());
        cmd.args(args);
        for k in env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawn {name} ({})", program.display()))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_owned(),
            child,
            _stdin: stdin,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// Waits until `addr` accepts connections.
    fn wait_ready(&mut self, addrs: &[SocketAddr]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if addrs
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited early ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept on {addrs:?} within 30 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Still running? (fails with its log when not)
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} died ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let (rss, hwm, _) = self.memory_kib();
        (rss, hwm)
    }

    /// (VmRSS, VmHWM, RssAnon) in KiB. The anonymous part is what the
    /// process allocated; the rest is mapped code, whose size varies with
    /// the kernel's page cache.
    fn memory_kib(&self) -> (u64, u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"), field("RssAnon:"))
    }

    /// User + system CPU time of the whole process so far.
    fn cpu(&self, ticks_per_sec: u64) -> Duration {
        stat_cpu(&format!("/proc/{}/stat", self.pid()), false, ticks_per_sec)
    }
}

/// utime + stime from a `/proc/…/stat` file, plus cutime + cstime (children
/// waited for) with `children`.
fn stat_cpu(path: &str, children: bool, ticks_per_sec: u64) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after `(comm)`: state is the 1st, utime the 12th, stime,
    // cutime and cstime the next three.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(if children { 4 } else { 2 })
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_micros(ticks * 1_000_000 / ticks_per_sec.max(1))
}

/// CPU time the whole machine spent busy so far (all cores; /proc/stat).
fn system_busy(ticks_per_sec: u64) -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy = all but idle, iowait, steal.
    let busy: u64 = fields
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Duration::from_micros(busy * 1_000_000 / ticks_per_sec.max(1))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for `program` that the kernel kills if this driver dies without
/// unwinding (SIGTERM, SIGKILL): `setpriv --pdeathsig KILL -- program` when
/// util-linux's `setpriv` is there.
fn guarded(program: &std::ffi::OsStr) -> Command {
    if have("setpriv", &["--version"]) {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The tollgate binary under test: this build's, or `TOLLGATE_BENCH_BIN`
/// (an older release build, for a before/after A/B on one machine).
fn tollgate_exe() -> PathBuf {
    std::env::var_os("TOLLGATE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate")))
}

/// The other build of a before/after pair (`tollgate-before`).
fn before_exe() -> Result<PathBuf> {
    std::env::var_os("TOLLGATE_BENCH_BEFORE_BIN")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("the tollgate-before target needs TOLLGATE_BENCH_BEFORE_BIN (a release build of tollgate)"))
}

/// A free loopback port (bound, then released: a tiny race, fine here).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------
// Targets

/// One thing wrk is pointed at.
struct Target {
    kind: Kind,
    /// Proxy threads (`None` for the fake).
    threads: Option<usize>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    proc: Proc,
    /// The control endpoint of a `tollgate-leased` target.
    _control: Option<Proc>,
}

impl Target {
    fn label(&self) -> String {
        match self.threads {
            Some(t) => format!("{} t={t}", self.kind.name()),
            None => self.kind.name().to_owned(),
        }
    }
}

fn start_fake(dir: &Path, threads: usize) -> Result<Target> {
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    let mut proc = Proc::spawn(
        "fake provider",
        &exe,
        &["--serve-fake".into(), port.to_string(), threads.to_string()],
        dir.join("fake.log"),
        &[],
        &[],
    )?;
    proc.wait_ready(&[loopback(port)])?;
    Ok(Target {
        kind: Kind::Direct,
        threads: None,
        addr: loopback(port),
        admin: None,
        proc,
        _control: None,
    })
}

fn start_bare(dir: &Path, fake: SocketAddr, threads: usize) -> Result<Target> {
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    let mut proc = Proc::spawn(
        &format!("bare pingora t={threads}"),
        &exe,
        &[
            "--serve-bare".into(),
            port.to_string(),
            fake.to_string(),
            threads.to_string(),
        ],
        dir.join(format!("bare-t{threads}.log")),
        &[],
        &[],
    )?;
    proc.wait_ready(&[loopback(port)])?;
    Ok(Target {
        kind: Kind::Bare,
        threads: Some(threads),
        addr: loopback(port),
        admin: None,
        proc,
        _control: None,
    })
}

/// `generation` numbers the restarts of `--fresh` (each gets an empty store).
fn start_tollgate(
    dir: &Path,
    fake: SocketAddr,
    threads: usize,
    kind: Kind,
    generation: usize,
) -> Result<Target> {
    let port = free_port()?;
    let admin_port = free_port()?;
    let name = format!("{}-t{threads}-{generation}", kind.name());
    let data_dir = dir.join(format!("{name}-data"));
    let sync = kind != Kind::TollgateNoSync;
    // A month's budget far larger than any run spends.
    let budgets = if kind == Kind::TollgateBudget {
        "\n[[budgets]]\nname = \"bench-month\"\nscope = \"account:bench\"\nperiod = \"month\"\nlimit_usd = \"1000000000\"\n"
    } else {
        ""
    };
    let (control, top, credential) = if kind == Kind::TollgateLeased {
        let (proc, url, credential) = start_control(dir, &name)?;
        (Some(proc), format!("control_url = \"{url}\"\n"), credential)
    } else {
        (None, String::new(), String::new())
    };
    // The request's model as an alias of one target.
    let aliases = match kind {
        Kind::TollgateRouted => {
            format!("\n[aliases.\"{MODEL}\"]\ntargets = [\"anthropic/{MODEL}\"]\n")
        }
        Kind::TollgateTranslated => {
            format!("\n[aliases.\"{MODEL}\"]\ntargets = [\"openai/gpt-5\"]\n")
        }
        _ => String::new(),
    };
    // The data-plane rows measure the path to the provider: cache off.
    let cache = if matches!(kind, Kind::TollgateMiss | Kind::TollgateHit) {
        "all"
    } else {
        "off"
    };
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         data_dir = \"{}\"\nthreads = {threads}\ndefault_account = \"bench\"\n{top}\n[outbox]\nsync = {sync}\n\n\
         [cache]\nmode = \"{cache}\"\n\n\
         [providers.anthropic]\nbase_url = \"http://{fake}\"\n\n\
         [providers.openai]\nbase_url = \"http://{fake}/v1\"\n{budgets}{aliases}",
        data_dir.display()
    );
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    // Nothing from the driver's environment may change the config.
    let inherited: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("TOLLGATE_") || k.ends_with("_API_KEY") || k == "RUST_LOG")
        .collect();
    let exe = match kind {
        Kind::TollgateBefore => before_exe()?,
        _ => tollgate_exe(),
    };
    let args = [
        "proxy".to_owned(),
        "--config".to_owned(),
        config_path.display().to_string(),
    ];
    let mut proc = Proc::spawn(
        &name,
        &exe,
        &args,
        dir.join(format!("{name}.log")),
        &[
            ("ANTHROPIC_API_KEY", INJECTED_KEY),
            // A translated route's target needs a key of its own.
            ("OPENAI_API_KEY", INJECTED_KEY),
            ("TOLLGATE_LOG", "warn"),
            ("TOLLGATE_CONTROL_CREDENTIAL", &credential),
        ],
        &inherited,
    )?;
    let addr = loopback(port);
    let admin = loopback(admin_port);
    proc.wait_ready(&[addr, admin])?;
    Ok(Target {
        kind,
        threads: Some(threads),
        addr,
        admin: Some(admin),
        proc,
        _control: control,
    })
}

/// A control endpoint holding account `bench` and its month budget, and
/// a sidecar credential for it: (process, URL, credential).
fn start_control(dir: &Path, name: &str) -> Result<(Proc, String, String)> {
    const TOKEN: &str = "tga_bench0123456789abcdef0123456789abcdef";
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let exe = tollgate_exe();
    let args = [
        "control".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".to_owned(),
        dir.join(format!("{name}-control")).display().to_string(),
    ];
    let mut proc = Proc::spawn(
        &format!("{name} control"),
        &exe,
        &args,
        dir.join(format!("{name}-control.log")),
        &[("TOLLGATE_ADMIN_TOKEN", TOKEN), ("TOLLGATE_LOG", "warn")],
        &[],
    )?;
    proc.wait_ready(&[loopback(port)])?;
    let admin = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new(&exe)
            .args(["admin", "--control", &url, "--token", TOKEN, "--json"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "tollgate admin {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    admin(&["accounts", "create", "bench", "--plan", "pro"])?;
    admin(&[
        "budgets",
        "create",
        "bench-month",
        "--account",
        "bench",
        "--limit-usd",
        "1000000000",
    ])?;
    let credential = admin(&["sidecars", "create", "bench", "--account", "bench"])?["secret"]
        .as_str()
        .context("a sidecar credential")?
        .to_owned();
    Ok((proc, url, credential))
}

// ---------------------------------------------------------------------------
// Probes (sanity checks, calibration, metrics): plain requests, not load

struct Probe {
    status: u16,
    /// How the body is delimited: `content-length`, `chunked` or `close`.
    framing: &'static str,
    events: usize,
    body_len: usize,
    tollgate_headers: usize,
    body: String,
}

async fn probe(
    client: &reqwest::Client,
    addr: SocketAddr,
    workload: Workload,
    big_bytes: u64,
) -> Result<Probe> {
    let mut request = client
        .post(format!("http://{addr}/v1/messages"))
        .header("content-type", "application/json")
        .body(workload.body());
    for (name, value) in workload.headers(big_bytes) {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("probe {addr}"))?;
    let status = response.status().as_u16();
    let headers = response.headers();
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let framing = if chunked {
        "chunked"
    } else if headers.contains_key("content-length") {
        "content-length"
    } else {
        "close"
    };
    let tollgate_headers = response
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("x-tollgate-"))
        .count();
    let body = response.bytes().await?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(Probe {
        status,
        framing,
        events: body.lines().filter(|l| l.starts_with("event: ")).count(),
        body_len: body.len(),
        tollgate_headers,
        body,
    })
}

/// One target's sequential (c=1) latencies for one workload and upstream
/// delay, in µs: response head, first body byte, complete.
struct FirstByteRow {
    workload: Workload,
    delay_ms: u64,
    kind: Kind,
    label: String,
    head: Vec<f64>,
    first: Vec<f64>,
    total: Vec<f64>,
}

/// fdatasyncs spaced like a c=1 request's commits in one first-byte row
/// (workload and delay), taken in turns with the targets' blocks: the
/// disk's drift over the section (a VM's host) falls on them and on the
/// requests alike, unlike a probe run before or after.
struct SpacedSync {
    workload: Workload,
    delay_ms: u64,
    /// Mean sleep before each probe, µs: bare's median request time so
    /// far in the row (the quiet a c=1 request's commit follows).
    gap_us: f64,
    /// Latencies, µs, sorted.
    samples: Vec<f64>,
}

/// Requests per target in a row of the first-byte section, before the
/// next target's turn: targets take turns in blocks (in the orders of
/// [`balanced_orders`]) so that drift of the machine over the section
/// (page cache, host load) and whom a target follows fall on all of them
/// alike, while within a block each target sees requests back to back as
/// at c=1.
const FIRST_BYTE_BLOCK: usize = 50;

/// Orders of `n` targets, one per round, in which every target follows
/// every other equally often over a full cycle (a Williams design: `n`
/// rows for an even `n`, those and their mirrors for an odd one).
/// Starting each round one target later keeps whom each target follows:
/// with three targets, the third always followed the second.
fn balanced_orders(n: usize) -> Vec<Vec<usize>> {
    // 0, 1, n-1, 2, n-2, ...: consecutive differences all distinct mod n.
    let first: Vec<usize> = (0..n)
        .map(|k| {
            if k % 2 == 1 {
                k.div_ceil(2)
            } else {
                (n - k / 2) % n
            }
        })
        .collect();
    let mut orders: Vec<Vec<usize>> = (0..n)
        .map(|r| first.iter().map(|x| (x + r) % n).collect())
        .collect();
    if n % 2 == 1 {
        let mirrors: Vec<Vec<usize>> = orders
            .iter()
            .map(|o| o.iter().rev().copied().collect())
            .collect();
        orders.extend(mirrors);
    }
    orders
}

/// One timed request: (response head, first body chunk, end), µs.
async fn first_byte_sample(
    client: &reqwest::Client,
    target: &Target,
    url: &str,
    body: &str,
    headers: &[(&'static str, String)],
) -> Result<(f64, f64, f64)> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let mut response = request.send().await?;
    let t_head = started.elapsed();
    if !response.status().is_success() {
        bail!(
            "{}: first-byte probe answered {}",
            target.label(),
            response.status()
        );
    }
    let mut t_first = None;
    while let Some(chunk) = response.chunk().await? {
        if t_first.is_none() && !chunk.is_empty() {
            t_first = Some(started.elapsed());
        }
    }
    let t_total = started.elapsed();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok((us(t_head), us(t_first.unwrap_or(t_total)), us(t_total)))
}

/// The first-byte section: for each upstream delay and workload,
/// `first_byte_requests` requests to each target one after another on one
/// kept-alive connection per target (targets taking turns in blocks of
/// [`FIRST_BYTE_BLOCK`]), timed to the response head, the first body chunk
/// and the end of the body (wrk only times complete responses).
async fn first_byte_rows(
    o: &Options,
    targets: &[&Target],
    big_bytes: u64,
    dir: &Path,
) -> Result<(Vec<FirstByteRow>, Vec<SpacedSync>)> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut rows = Vec::new();
    let mut syncs = Vec::new();
    let mut prober = SyncProber::create(dir)?;
    // Whose request time the probes sleep: bare's, else the fake's.
    let floor = targets
        .iter()
        .position(|t| t.kind == Kind::Bare)
        .or_else(|| targets.iter().position(|t| t.kind == Kind::Direct));
    for &delay_ms in &o.first_byte_delays_ms {
        for &workload in &o.workloads {
            let body = workload.body();
            let mut headers = workload.headers(big_bytes);
            if delay_ms > 0 {
                headers.push(("x-fake-ttfb-ms", delay_ms.to_string()));
            }
            let n = o.first_byte_requests;
            let urls: Vec<String> = targets
                .iter()
                .map(|t| format!("http://{}/v1/messages", t.addr))
                .collect();
            // A few unmeasured requests open each connection and warm up.
            for (target, url) in targets.iter().zip(&urls) {
                for _ in 0..20 {
                    first_byte_sample(&client, target, url, &body, &headers).await?;
                }
            }
            let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = targets
                .iter()
                .map(|_| {
                    (
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                    )
                })
                .collect();
            let mut spaced = Vec::with_capacity(n);
            let mut gaps = 0.0;
            let mut done = 0;
            let mut round = 0;
            let orders = balanced_orders(targets.len());
            while done < n {
                let block = FIRST_BYTE_BLOCK.min(n - done);
                // Every target follows every other equally often (in a
                // fixed order, the same build run in two slots measured
                // 14–18 µs apart at 20 ms).
                for &i in &orders[round % orders.len()] {
                    let (head, first, total) = &mut samples[i];
                    for _ in 0..block {
                        let (h, f, t) =
                            first_byte_sample(&client, targets[i], &urls[i], &body, &headers)
                                .await?;
                        head.push(h);
                        first.push(f);
                        total.push(t);
                    }
                }
                round += 1;
                if let Some(i) = floor {
                    // Blocking the (current-thread) runtime: nothing else
                    // runs meanwhile, the kept-alive connections just wait.
                    let mut so_far = samples[i].2.clone();
                    so_far.sort_by(f64::total_cmp);
                    let gap = Duration::from_secs_f64(quantile(&so_far, 0.5) / 1e6);
                    for _ in 0..block {
                        spaced.push(prober.probe(gap)?.0);
                        gaps += gap.as_secs_f64() * 1e6;
                    }
                }
                done += block;
            }
            if !spaced.is_empty() {
                let gap_us = gaps / spaced.len() as f64;
                spaced.sort_by(f64::total_cmp);
                syncs.push(SpacedSync {
                    workload,
                    delay_ms,
                    gap_us,
                    samples: spaced,
                });
            }
            for (target, (mut head, mut first, mut total)) in targets.iter().zip(samples) {
                for v in [&mut head, &mut first, &mut total] {
                    v.sort_by(f64::total_cmp);
                }
                rows.push(FirstByteRow {
                    workload,
                    delay_ms,
                    kind: target.kind,
                    label: target.label(),
                    head,
                    first,
                    total,
                });
            }
        }
    }
    prober.remove()?;
    Ok((rows, syncs))
}

/// The first-byte section `o.first_byte_rounds` times, the proxies (bare
/// and tollgate) started afresh before every round after the first, the
/// rows' samples pooled. One process's p50 here depends on where it
/// landed (its threads' CPUs, its memory's cache sets): two processes of
/// one build differed by ~40 µs at 20 ms, as much as the margins judged.
fn first_byte_rounds(
    o: &Options,
    runtime: &tokio::runtime::Runtime,
    fake: &Target,
    proxies: &mut [Target],
    generation: &mut usize,
    big_bytes: u64,
    dir: &Path,
) -> Result<(Vec<FirstByteRow>, Vec<SpacedSync>)> {
    let mut rows: Vec<FirstByteRow> = Vec::new();
    let mut syncs: Vec<SpacedSync> = Vec::new();
    for round in 0..o.first_byte_rounds {
        if round > 0 {
            for p in proxies.iter_mut() {
                let t = p.threads.unwrap_or(1);
                *p = match p.kind {
                    Kind::Bare => start_bare(dir, fake.addr, t)?,
                    kind => {
                        *generation += 1;
                        start_tollgate(dir, fake.addr, t, kind, *generation)?
                    }
                };
            }
        }
        let targets: Vec<&Target> = std::iter::once(fake).chain(proxies.iter()).collect();
        let (more_rows, more_syncs) =
            runtime.block_on(first_byte_rows(o, &targets, big_bytes, dir))?;
        for row in more_rows {
            match rows.iter_mut().find(|r| {
                r.workload == row.workload && r.delay_ms == row.delay_ms && r.label == row.label
            }) {
                Some(r) => {
                    for (all, more) in [
                        (&mut r.head, row.head),
                        (&mut r.first, row.first),
                        (&mut r.total, row.total),
                    ] {
                        all.extend(more);
                        all.sort_by(f64::total_cmp);
                    }
                }
                None => rows.push(row),
            }
        }
        for sync in more_syncs {
            match syncs
                .iter_mut()
                .find(|p| p.workload == sync.workload && p.delay_ms == sync.delay_ms)
            {
                Some(p) => {
                    let (a, b) = (p.samples.len() as f64, sync.samples.len() as f64);
                    p.gap_us = (p.gap_us * a + sync.gap_us * b) / (a + b).max(1.0);
                    p.samples.extend(sync.samples);
                    p.samples.sort_by(f64::total_cmp);
                }
                None => syncs.push(sync),
            }
        }
    }
    Ok((rows, syncs))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The first-byte table, and the issue's c=1 goal: tollgate's added p50
/// (first byte and total) ≤ bare's + one fdatasync (p50) + 50 µs.
fn first_byte_report(
    rows: &[FirstByteRow],
    rounds: usize,
    fsync_p50: Option<f64>,
    spaced_fsync: &[SpacedSync],
) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    let w = &mut s;
    let _ = writeln!(
        w,
        "\n-- c=1, sequential requests on one kept-alive connection (reqwest): time to the response head, the first body byte and the end; added = target − direct --"
    );
    if rounds > 1 {
        let _ = writeln!(
            w,
            "{rounds} rounds, the proxies started afresh before each after the first; every row pools its rounds' samples"
        );
    }
    let allowance = fsync_p50.map(|f| f + 50.0);
    if let Some(a) = allowance {
        let _ = writeln!(
            w,
            "goal: tollgate's added p50 (first byte and total) ≤ bare's added p50 + fdatasync p50 + 50 µs = bare + {a:.0} µs\n      (spaced: the same with the fdatasync p50 of the row's delay below)"
        );
    }
    for p in spaced_fsync {
        let _ = writeln!(
            w,
            "      {} at {} ms delay: one fdatasync spaced like a c=1 request's commits (after {:.0} µs asleep, bare's request time), taken in turns with the targets' requests: p50 {:.0} µs, p99 {:.0} µs",
            p.workload.name(),
            p.delay_ms,
            p.gap_us,
            quantile(&p.samples, 0.5),
            quantile(&p.samples, 0.99)
        );
    }
    let _ = writeln!(
        w,
        "{:<10} {:>6}  {:<20} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>10} {:>10}  goal",
        "workload",
        "delay",
        "target",
        "head p50",
        "1st p50",
        "1st p99",
        "end p50",
        "end p99",
        "+1st p50",
        "+end p50"
    );
    for r in rows {
        let direct = rows.iter().find(|d| {
            d.kind == Kind::Direct && d.workload == r.workload && d.delay_ms == r.delay_ms
        });
        let bare = rows
            .iter()
            .find(|d| d.kind == Kind::Bare && d.workload == r.workload && d.delay_ms == r.delay_ms);
        let added = |of: &FirstByteRow, pick: fn(&FirstByteRow) -> &Vec<f64>| {
            direct.map(|d| quantile(pick(of), 0.5) - quantile(pick(d), 0.5))
        };
        let first = added(r, |x| &x.first);
        let end = added(r, |x| &x.total);
        let goal = match (r.kind.is_tollgate(), bare, allowance) {
            (true, Some(b), Some(a)) => {
                let ok = |mine: Option<f64>, floor: Option<f64>, a: f64| match (mine, floor) {
                    (Some(m), Some(f)) => m <= f + a,
                    _ => false,
                };
                let first_ok = ok(first, added(b, |x| &x.first), a);
                let end_ok = ok(end, added(b, |x| &x.total), a);
                let mut g = format!("1st {} · end {}", verdict(first_ok), verdict(end_ok));
                // The same goal with the fdatasync measured at this row's
                // spacing: a c=1 request's commit finds the disk as idle
                // as that probe did, not as busy as back-to-back syncs.
                let spaced = spaced_fsync
                    .iter()
                    .find(|p| p.delay_ms == r.delay_ms && p.workload == r.workload);
                if let Some(p) = spaced {
                    let a = quantile(&p.samples, 0.5) + 50.0;
                    let _ = write!(
                        g,
                        "  (spaced: 1st {} · end {})",
                        verdict(ok(first, added(b, |x| &x.first), a)),
                        verdict(ok(end, added(b, |x| &x.total), a))
                    );
                }
                g
            }
            _ => String::new(),
        };
        let fmt_added = |v: Option<f64>| match v {
            Some(v) if r.kind != Kind::Direct => format!("{v:+.0}"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            w,
            "{:<10} {:>4}ms  {:<20} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}  {:>10} {:>10}  {goal}",
            r.workload.name(),
            r.delay_ms,
            r.label,
            quantile(&r.head, 0.5),
            quantile(&r.first, 0.5),
            quantile(&r.first, 0.99),
            quantile(&r.total, 0.5),
            quantile(&r.total, 0.99),
            fmt_added(first),
            fmt_added(end),
        );
    }
    s
}

/// The `x-fake-big-bytes` that makes the `big` scenario answer exactly
/// [`STREAM_EVENTS`] SSE events, and that answer's size.
async fn calibrate_big(client: &reqwest::Client, fake: SocketAddr) -> Result<(u64, usize)> {
    let mut bytes: i64 = 52_000;
    for _ in 0..16 {
        let p = probe(client, fake, Workload::Stream50, bytes as u64).await?;
        if p.status != 200 {
            bail!("fake `big` probe answered {}: {}", p.status, p.body);
        }
        if p.events == STREAM_EVENTS {
            return Ok((bytes as u64, p.body_len));
        }
        let deltas = p.events.saturating_sub(BIG_FIXED_EVENTS).max(1);
        let per_delta = (p.body_len / deltas).max(1) as i64;
        bytes = (bytes + (STREAM_EVENTS as i64 - p.events as i64) * per_delta).max(1);
    }
    bail!("could not size the `big` scenario to {STREAM_EVENTS} events")
}

/// Checks that `target` answers `workload` as the fake would (and, for
/// tollgate, that it metered it).
async fn check_target(
    client: &reqwest::Client,
    target: &Target,
    workload: Workload,
    big_bytes: u64,
) -> Result<&'static str> {
    let p = probe(client, target.addr, workload, big_bytes).await?;
    let what = format!("{} / {}", target.label(), workload.name());
    if p.status != 200 {
        bail!("{what}: status {}: {}", p.status, p.body);
    }
    match workload.expected_events() {
        // A translated stream is the OpenAI fake's chunks re-cut into
        // Anthropic events: the count differs a little, the end must not.
        Some(n)
            if target.kind == Kind::TollgateTranslated
                && (p.events * 10 < n * 8 || !p.body.contains("event: message_stop")) =>
        {
            bail!(
                "{what}: {} SSE events (expected about {n}) or no message_stop",
                p.events
            )
        }
        Some(_) if target.kind == Kind::TollgateTranslated => {}
        Some(n) if p.events != n => bail!("{what}: {} SSE events, expected {n}", p.events),
        Some(_) => {}
        None if !p.body.contains("\"usage\"") => bail!("{what}: no usage in {}", p.body),
        None => {}
    }
    let metered = target.kind.is_tollgate();
    if metered && p.tollgate_headers == 0 {
        bail!("{what}: no x-tollgate-* receipt headers: not metered?");
    }
    Ok(p.framing)
}

/// Every sample of the Prometheus text, summed over label sets, by name.
async fn scrape(client: &reqwest::Client, admin: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let url = format!("http://{admin}/metrics");
    let mut attempt = 0;
    let text = loop {
        attempt += 1;
        match client.get(&url).send().await {
            Ok(response) => break response.text().await?,
            Err(e) if attempt >= 3 => return Err(e).with_context(|| format!("scraping {url}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(out)
}

/// Tollgate's own view of one measured run (metric deltas).
struct TollgateView {
    requests: f64,
    errors: f64,
    added_mean_us: Option<f64>,
    flush_mean_us: Option<f64>,
    batch_mean: Option<f64>,
    /// Events held in the outbox (ledger) at the end of the run.
    outbox_events: f64,
}

impl TollgateView {
    fn between(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> TollgateView {
        let d =
            |name: &str| b.get(name).copied().unwrap_or(0.0) - a.get(name).copied().unwrap_or(0.0);
        let mean = |name: &str, scale: f64| {
            let n = d(&format!("{name}_count"));
            (n > 0.0).then(|| d(&format!("{name}_sum")) / n * scale)
        };
        TollgateView {
            requests: d("tollgate_requests_total"),
            errors: d("tollgate_proxy_errors_total"),
            added_mean_us: mean("tollgate_added_latency_seconds", 1e6),
            flush_mean_us: mean("tollgate_outbox_flush_seconds", 1e6),
            batch_mean: mean("tollgate_outbox_batch_events", 1.0),
            outbox_events: b.get("tollgate_outbox_depth").copied().unwrap_or(0.0),
        }
    }
}

// ---------------------------------------------------------------------------
// wrk

/// Prints one machine-readable line when wrk is done (latencies in µs).
const WRK_DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p90=%d p99=%d p999=%d max=%d mean=%.2f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"#;

/// `unique`: every request gets a body of its own (a per-run salt, the wrk
/// thread and a counter in the prompt), so each one is a cache miss.
fn wrk_script(workload: Workload, big_bytes: u64, ttfb_ms: u64, unique: bool) -> String {
    let mut s = String::from("wrk.method = \"POST\"\n");
    let body = workload.body();
    let _ = writeln!(s, "wrk.body = [==[{body}]==]");
    if unique {
        let (head, tail) = body.split_once(").\"").unwrap_or((&body, ""));
        let _ = writeln!(
            s,
            "local head, tail = [==[{head}).]==], [==[\"{tail}]==]\n\
             local salt = tostring(os.time()) .. tostring(os.clock())\n\
             local next_thread = 0\n\
             setup = function(thread) thread:set(\"tid\", next_thread); next_thread = next_thread + 1 end\n\
             local n = 0\n\
             request = function()\n  n = n + 1\n  \
             return wrk.format(nil, nil, nil, head .. \" \" .. salt .. \"-\" .. tostring(tid) .. \"-\" .. n .. tail)\nend"
        );
    }
    let _ = writeln!(s, "wrk.headers[\"content-type\"] = \"application/json\"");
    for (name, value) in workload.headers(big_bytes) {
        let _ = writeln!(s, "wrk.headers[\"{name}\"] = \"{value}\"");
    }
    if ttfb_ms > 0 {
        let _ = writeln!(s, "wrk.headers[\"x-fake-ttfb-ms\"] = \"{ttfb_ms}\"");
    }
    s.push_str(WRK_DONE);
    s
}

#[derive(Clone, Debug, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl WrkResult {
    /// Two runs as one: counts add up; the latency percentiles and mean
    /// are the runs' own, weighted by their requests (an approximation:
    /// wrk reports percentiles, not its histogram); the max is the larger.
    fn then(self, later: WrkResult) -> WrkResult {
        let (a, b) = (self.requests as f64, later.requests as f64);
        let w = |x: f64, y: f64| {
            if a + b > 0.0 {
                (x * a + y * b) / (a + b)
            } else {
                x
            }
        };
        let mut errors = self.errors;
        for (k, v) in later.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        WrkResult {
            requests: self.requests + later.requests,
            duration_us: self.duration_us + later.duration_us,
            bytes: self.bytes + later.bytes,
            errors,
            p50: w(self.p50, later.p50),
            p90: w(self.p90, later.p90),
            p99: w(self.p99, later.p99),
            p999: w(self.p999, later.p999),
            max: self.max.max(later.max),
            mean: w(self.mean, later.mean),
        }
    }

    fn rps(&self) -> f64 {
        self.requests as f64 * 1e6 / self.duration_us.max(1) as f64
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn parse(stdout: &str) -> Result<WrkResult> {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_RESULT "))
            .ok_or_else(|| anyhow!("no BENCH_RESULT line in wrk's output:\n{stdout}"))?;
        let mut r = WrkResult::default();
        for pair in line.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("bad wrk field {pair:?}"))?;
            let f: f64 = v.parse().with_context(|| format!("wrk field {pair:?}"))?;
            match k {
                "requests" => r.requests = f as u64,
                "duration_us" => r.duration_us = f as u64,
                "bytes" => r.bytes = f as u64,
                "p50" => r.p50 = f,
                "p90" => r.p90 = f,
                "p99" => r.p99 = f,
                "p999" => r.p999 = f,
                "max" => r.max = f,
                "mean" => r.mean = f,
                other => {
                    if f > 0.0 {
                        r.errors.insert(other.to_owned(), f as u64);
                    }
                }
            }
        }
        Ok(r)
    }
}

fn wrk_threads(conns: usize, max: usize) -> usize {
    conns.clamp(1, max)
}

fn run_wrk(
    addr: SocketAddr,
    script: &Path,
    conns: usize,
    threads: usize,
    secs: u64,
) -> Result<WrkResult> {
    let output = guarded("wrk".as_ref())
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{addr}/v1/messages"))
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    WrkResult::parse(&stdout)
}

// ---------------------------------------------------------------------------
// The run

struct Cell {
    workload: Workload,
    conc: usize,
    kind: Kind,
    threads: Option<usize>,
    label: String,
    wrk: WrkResult,
    /// Proxy CPU time per request, µs (`None` for direct).
    proxy_cpu_us: Option<f64>,
    fake_cpu_us: f64,
    /// CPU of wrk (and the idle driver) over the run, % of one core.
    wrk_cpu_pct: f64,
    /// CPU used by everything else on the machine over the run, % of one
    /// core (other users' builds and tests disturb the numbers).
    other_cpu_pct: f64,
    tollgate: Option<TollgateView>,
}

/// One target's measured wrk run in a row, or both passes of it added up.
struct RowRun {
    wall: Duration,
    busy: Duration,
    driver_cpu: Duration,
    proxy_cpu: Duration,
    fake_cpu: Duration,
    wrk: WrkResult,
    /// How the target's metrics moved over the measured run (not its
    /// warm-ups); gauges as they were at its end.
    metrics: Option<BTreeMap<String, f64>>,
}

impl RowRun {
    /// This pass and a later one as one run.
    fn then(self, later: RowRun) -> RowRun {
        RowRun {
            wall: self.wall + later.wall,
            busy: self.busy + later.busy,
            driver_cpu: self.driver_cpu + later.driver_cpu,
            proxy_cpu: self.proxy_cpu + later.proxy_cpu,
            fake_cpu: self.fake_cpu + later.fake_cpu,
            wrk: self.wrk.then(later.wrk),
            metrics: match (self.metrics, later.metrics) {
                (Some(mut sum), Some(later)) => {
                    for (k, v) in later {
                        let gauge = GAUGES.contains(&k.as_str());
                        let e = sum.entry(k).or_insert(0.0);
                        *e = if gauge { v } else { *e + v };
                    }
                    Some(sum)
                }
                (a, b) => a.or(b),
            },
        }
    }
}

/// The metrics [`TollgateView`] reads as they are, not as deltas.
const GAUGES: &[&str] = &["tollgate_outbox_depth"];

/// How the metrics moved from `a` to `b` (gauges: as in `b`).
fn metrics_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| {
            let moved = match GAUGES.contains(&k.as_str()) {
                true => *v,
                false => v - a.get(k).copied().unwrap_or(0.0),
            };
            (k.clone(), moved)
        })
        .collect()
}

/// Memory of one process after a row: (label, VmRSS KiB, VmHWM KiB).
type Memory = (String, u64, u64);

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().round().max(1.0) as u64
}

fn run(o: &Options, args: &[String]) -> Result<()> {
    // reqwest is built without a TLS crypto provider: the process installs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if Command::new("wrk")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("`wrk` is not installed or not on PATH (Debian/Ubuntu: apt-get install wrk); this benchmark needs it as its load generator");
    }
    let ticks = clock_ticks();
    let load_start = loadavg();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-dataplane-")
        .tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // No pooling: a kept-alive connection that a server closed meanwhile
    // would fail the next probe or scrape.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;

    // The data dirs live here: what a group commit costs on this disk.
    eprintln!("measuring fdatasync in {}…", dir.path().display());
    let fsync = fdatasync_latency(dir.path(), Duration::ZERO);
    let fsync_p50 = fsync.as_ref().ok().map(|p| p.p50_us);
    let fsync_cpu = fsync.as_ref().ok().map(|p| p.cpu_us);
    // Informative: the goal uses the back-to-back figure above.
    let idle = Duration::from_millis(20);
    let after_idle = match fdatasync_latency(dir.path(), idle) {
        Ok(p) => format!(
            "; each after {} ms asleep: p50 {:.0} µs, p99 {:.0} µs",
            idle.as_millis(),
            p.p50_us,
            p.p99_us
        ),
        Err(e) => format!("; after sleeping: probe failed: {e}"),
    };
    let fdatasync = fsync
        .map(|p| {
            format!(
                "fdatasync of a {FSYNC_PROBE_BYTES} B append in {} ({FSYNC_PROBES} samples): p50 {:.0} µs, p99 {:.0} µs, CPU {:.1} µs each{after_idle}",
                dir.path().display(),
                p.p50_us,
                p.p99_us,
                p.cpu_us
            )
        })
        .unwrap_or_else(|e| format!("fdatasync probe failed: {e}"));
    let hop = |idle| match handoff_latency(idle) {
        Ok(p50) => format!("{p50:.0} µs"),
        Err(e) => format!("failed ({e})"),
    };
    let fdatasync = format!(
        "{fdatasync}\n           thread round trip (send to another thread and back), p50: back to back {}, each after {} ms asleep {}",
        hop(Duration::ZERO),
        idle.as_millis(),
        hop(idle)
    );
    eprintln!("starting the fake provider…");
    let mut fake = start_fake(dir.path(), o.fake_threads)?;
    let (big_bytes, big_len) = if o.workloads.contains(&Workload::Stream50) {
        runtime.block_on(calibrate_big(&client, fake.addr))?
    } else {
        (0, 0)
    };

    let mut proxies = Vec::new();
    for &t in &o.threads {
        for &kind in &o.kinds {
            match kind {
                Kind::Direct => {}
                Kind::Bare => proxies.push(start_bare(dir.path(), fake.addr, t)?),
                _ => proxies.push(start_tollgate(dir.path(), fake.addr, t, kind, 0)?),
            }
        }
    }
    let mut framing = Vec::new();
    for target in std::iter::once(&fake).chain(&proxies) {
        for &w in &o.workloads {
            let f = runtime.block_on(check_target(&client, target, w, big_bytes))?;
            framing.push((target.label(), w, f));
        }
    }

    let mut generation = 0;
    let (first_bytes, spaced_fsync) = if o.first_byte_requests > 0 {
        eprintln!(
            "first byte: {} sequential requests per target, workload and upstream delay {:?} ms, {} round(s)…",
            o.first_byte_requests, o.first_byte_delays_ms, o.first_byte_rounds
        );
        first_byte_rounds(
            o,
            &runtime,
            &fake,
            &mut proxies,
            &mut generation,
            big_bytes,
            dir.path(),
        )?
    } else {
        (Vec::new(), Vec::new())
    };

    let scripts: Vec<(Workload, PathBuf, PathBuf)> = o
        .workloads
        .iter()
        .map(|&w| {
            let path = dir.path().join(format!("{}.lua", w.name()));
            let unique = dir.path().join(format!("{}-unique.lua", w.name()));
            std::fs::write(&path, wrk_script(w, big_bytes, o.upstream_delay_ms, false))?;
            std::fs::write(&unique, wrk_script(w, big_bytes, o.upstream_delay_ms, true))?;
            Ok((w, path, unique))
        })
        .collect::<std::io::Result<_>>()?;

    let rows = o.workloads.len() * o.concurrency.len() * (1 + proxies.len());
    // Two passes per row, each with its warm-up (see below).
    let eta = rows as u64 * (2 * secs(o.warmup) + secs(o.duration) + 2);
    eprintln!(
        "{rows} runs of {} s + {} s warm-up: about {} min",
        secs(o.duration),
        secs(o.warmup),
        eta.div_ceil(60)
    );
    let mut cells = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    // Each row runs in two passes of half the duration, the second in the
    // reverse order of targets: on this VM, with two tollgate binaries
    // swapped between two positions, whichever ran first was 35-40% slower
    // at c=64, so a single order decided verdicts by position.
    let half = Duration::from_secs_f64(o.duration.as_secs_f64() / 2.0);
    for (workload, same_script, unique_script) in &scripts {
        for &conc in &o.concurrency {
            let threads = wrk_threads(conc, o.wrk_threads);
            if o.fresh {
                for p in proxies.iter_mut().filter(|p| p.kind.is_tollgate()) {
                    generation += 1;
                    let (kind, t) = (p.kind, p.threads.unwrap_or(1));
                    *p = start_tollgate(dir.path(), fake.addr, t, kind, generation)?;
                }
            }
            let order: Vec<usize> = (0..=proxies.len()).collect();
            let mut runs: Vec<Option<RowRun>> = (0..=proxies.len()).map(|_| None).collect();
            for pass in [order.clone(), order.into_iter().rev().collect()] {
                for index in pass {
                    let target = if index == 0 {
                        &fake
                    } else {
                        &proxies[index - 1]
                    };
                    eprintln!("  {:<10} c={conc:<3} {}", workload.name(), target.label());
                    let script = if target.kind == Kind::TollgateMiss {
                        unique_script
                    } else {
                        same_script
                    };
                    run_wrk(target.addr, script, conc, threads, secs(o.warmup))?;
                    let before_metrics = match target.admin {
                        Some(admin) => Some(runtime.block_on(scrape(&client, admin))?),
                        None => None,
                    };
                    let proxy_cpu0 = target.proc.cpu(ticks);
                    let fake_cpu0 = fake.proc.cpu(ticks);
                    let driver_cpu0 = stat_cpu("/proc/self/stat", true, ticks);
                    let busy0 = system_busy(ticks);
                    let started = Instant::now();
                    let wrk = run_wrk(target.addr, script, conc, threads, secs(half))?;
                    let metrics = match (target.admin, &before_metrics) {
                        (Some(admin), Some(before)) => {
                            let after = runtime.block_on(scrape(&client, admin))?;
                            Some(metrics_delta(before, &after))
                        }
                        _ => None,
                    };
                    let part = RowRun {
                        wall: started.elapsed(),
                        busy: system_busy(ticks).saturating_sub(busy0),
                        // wrk is a waited-for child: its CPU is in the driver's cutime/cstime.
                        driver_cpu: stat_cpu("/proc/self/stat", true, ticks)
                            .saturating_sub(driver_cpu0),
                        proxy_cpu: target.proc.cpu(ticks).saturating_sub(proxy_cpu0),
                        fake_cpu: fake.proc.cpu(ticks).saturating_sub(fake_cpu0),
                        wrk,
                        metrics,
                    };
                    runs[index] = Some(match runs[index].take() {
                        Some(first) => first.then(part),
                        None => part,
                    });
                }
            }
            for (index, run) in runs.into_iter().enumerate() {
                let Some(run) = run else { continue };
                let target = if index == 0 {
                    &fake
                } else {
                    &proxies[index - 1]
                };
                let ours = run.driver_cpu
                    + run.fake_cpu
                    + if index > 0 {
                        run.proxy_cpu
                    } else {
                        Duration::ZERO
                    };
                let wall = run.wall.as_secs_f64().max(1e-9);
                let other_cpu_pct = run.busy.saturating_sub(ours).as_secs_f64() * 100.0 / wall;
                let wrk_cpu_pct = run.driver_cpu.as_secs_f64() * 100.0 / wall;
                let tollgate = run
                    .metrics
                    .as_ref()
                    .map(|moved| TollgateView::between(&BTreeMap::new(), moved));
                let per_req = |d: Duration| d.as_secs_f64() * 1e6 / run.wrk.requests.max(1) as f64;
                cells.push(Cell {
                    workload: *workload,
                    conc,
                    kind: target.kind,
                    threads: target.threads,
                    label: target.label(),
                    proxy_cpu_us: (index > 0).then(|| per_req(run.proxy_cpu)),
                    fake_cpu_us: per_req(run.fake_cpu),
                    wrk_cpu_pct,
                    other_cpu_pct,
                    wrk: run.wrk,
                    tollgate,
                });
                let (rss, hwm) = target.proc.rss_kib();
                memory.push((target.label(), rss, hwm));
            }
            fake.proc.check_alive()?;
            for p in &mut proxies {
                p.proc.check_alive()?;
            }
        }
    }

    // Memory freed after the load goes back to the kernel within about a
    // second with tollgate's allocator settings: read it again once idle.
    std::thread::sleep(Duration::from_secs(2));
    let settled: Vec<(String, u64, u64)> = std::iter::once(&fake)
        .chain(&proxies)
        .map(|t| {
            let (rss, _, anon) = t.proc.memory_kib();
            (t.label(), rss, anon)
        })
        .collect();
    let mut facts = Facts::gather(o, args, big_bytes, big_len);
    facts.disk = fdatasync;
    facts.fsync_cpu_us = fsync_cpu;
    facts.machine.push_str(&format!(
        "\n           load average (1/5/15 min) at start {load_start}, at end {}",
        loadavg()
    ));
    print!("{}", report(o, &facts, &cells, &framing, &memory, &settled));
    print!(
        "{}",
        first_byte_report(&first_bytes, o.first_byte_rounds, fsync_p50, &spaced_fsync)
    );
    Ok(())
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------
// The report

struct Facts {
    command: String,
    binary: String,
    git: String,
    machine: String,
    wrk: String,
    stream50: String,
    /// This disk's fdatasync latency (what a usage-journal group commit waits for).
    disk: String,
    /// CPU per append + fdatasync on this disk, µs.
    fsync_cpu_us: Option<f64>,
}

impl Facts {
    fn gather(o: &Options, args: &[String], big_bytes: u64, big_len: usize) -> Facts {
        let extra: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--bench")
            .collect();
        let mut command = "cargo bench --bench dataplane".to_owned();
        if !extra.is_empty() {
            command.push_str(" -- ");
            command.push_str(&extra.join(" "));
        }
        let sh = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.trim().to_owned()
                })
                .unwrap_or_default()
        };
        let rev = sh("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        let git = match (rev.is_empty(), dirty) {
            (true, _) => "unknown".to_owned(),
            (false, true) => format!("{rev} (with uncommitted changes)"),
            (false, false) => rev,
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let wrk = sh("wrk", &["-v"])
            .lines()
            .next()
            .unwrap_or("wrk")
            .to_owned();
        Facts {
            command,
            binary: format!(
                "{} (tollgate: {})",
                std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
                tollgate_exe().display()
            ),
            git,
            machine: format!(
                "nproc {nproc}, {cpu}, {mem_gib:.1} GiB RAM, Linux {}",
                kernel.trim()
            ),
            wrk: format!(
                "{wrk}; closed loop, keep-alive; {} s warm-up + {} s measured per row; wrk threads = min(c, {})",
                secs(o.warmup),
                secs(o.duration),
                o.wrk_threads
            ),
            stream50: if big_bytes > 0 {
                format!(
                    "fake scenario `big`, x-fake-big-bytes={big_bytes}: {STREAM_EVENTS} SSE events \
                     ({} text deltas of ~1.1 KB, packed ~14 per 16 KiB body chunk), {big_len} bytes",
                    STREAM_EVENTS - BIG_FIXED_EVENTS
                )
            } else {
                "not run".to_owned()
            },
            disk: String::new(),
            fsync_cpu_us: None,
        }
    }
}

fn us(v: f64) -> String {
    format!("{v:.0}")
}

fn signed(v: f64) -> String {
    format!("{v:+.0}")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// wrk's socket errors, by kind (`read` counts each server-side close too).
fn errors(r: &WrkResult) -> String {
    if r.error_count() == 0 {
        return "0".to_owned();
    }
    r.errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn report(
    o: &Options,
    f: &Facts,
    cells: &[Cell],
    framing: &[(String, Workload, &'static str)],
    memory: &[Memory],
    settled: &[(String, u64, u64)],
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "\n== tollgate data-plane benchmark ==");
    let _ = writeln!(w, "command  : {}", f.command);
    let _ = writeln!(w, "binaries : {}", f.binary);
    let _ = writeln!(w, "git      : {}", f.git);
    let _ = writeln!(w, "machine  : {}", f.machine);
    let _ = writeln!(w, "load     : {}", f.wrk);
    let _ = writeln!(w, "disk     : {}", f.disk);
    if o.upstream_delay_ms > 0 {
        let _ = writeln!(
            w,
            "upstream : the fake answers after {} ms (x-fake-ttfb-ms) under load; probes without",
            o.upstream_delay_ms
        );
    }
    let _ = writeln!(
        w,
        "fake     : own process, tokio {} workers; POST /v1/messages, model {MODEL}",
        o.fake_threads
    );
    let _ = writeln!(w, "nonstream: JSON answer (~0.7 KB), content-length");
    let _ = writeln!(w, "stream50 : {}", f.stream50);
    if o.workloads.contains(&Workload::Stream11) {
        let _ = writeln!(
            w,
            "stream11 : fake scenario `slow`, x-fake-delay-ms=0: 11 small SSE events, one body chunk each"
        );
    }
    let _ = writeln!(
        w,
        "targets  : direct = the fake; bare = pingora ProxyHttp with only upstream_peer (the floor);\n           \
         tollgate = release binary, key injection, admin on, log warn, outbox.sync=true (open usage record fdatasync'd before the send);\n           \
         tollgate-nosync = same with outbox.sync=false (these two with cache.mode=off);\n           \
         tollgate-miss = cache on, every request unique; tollgate-hit = cache on, every request identical;\n           \
         tollgate-routed = the model an alias of one same-dialect target; tollgate-translated = of one OpenAI-dialect target; t = pingora worker threads"
    );
    let _ = writeln!(
        w,
        "latency  : wrk's per-request latency (µs resolution), request written → response complete"
    );
    let _ = writeln!(
        w,
        "CPU      : proxyCPU/fakeCPU = process CPU time per request; wrk = the load generator's CPU; \
         other = everything else on the machine (not this benchmark), % of one core"
    );

    let _ = writeln!(
        w,
        "\n-- response framing seen by an HTTP/1.1 client (close = no length, no chunking: the connection closes after each response) --"
    );
    for &wl in &o.workloads {
        let line: Vec<String> = framing
            .iter()
            .filter(|(_, w, _)| *w == wl)
            .map(|(label, _, f)| format!("{label}: {f}"))
            .collect();
        let _ = writeln!(w, "{:<10} {}", wl.name(), line.join(", "));
    }

    let _ = writeln!(w, "\n-- results --");
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>6} {:>6}  errors (wrk)",
        "workload",
        "c",
        "target",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "req/s",
        "proxyCPU",
        "fakeCPU",
        "wrk",
        "other",
    );
    let _ = writeln!(w, "{:>108}", "µs/req    µs/req   CPU%   CPU%");
    for c in cells {
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>10} {:>9.1} {:>6.0} {:>6.0}  {}",
            c.workload.name(),
            c.conc,
            c.label,
            us(c.wrk.p50),
            us(c.wrk.p90),
            us(c.wrk.p99),
            us(c.wrk.p999),
            c.wrk.rps(),
            opt(c.proxy_cpu_us, 1),
            c.fake_cpu_us,
            c.wrk_cpu_pct,
            c.other_cpu_pct,
            errors(&c.wrk)
        );
    }
    let disturbed = cells.iter().filter(|c| c.other_cpu_pct > 25.0).count();
    if disturbed > 0 {
        let _ = writeln!(
            w,
            "warning: in {disturbed} of {} rows other processes used more than 25% of a core; \
             those rows are disturbed (rerun on a quiet machine to compare)",
            cells.len()
        );
    }

    let find = |wl: Workload, conc: usize, kind: Kind, threads: Option<usize>| {
        cells
            .iter()
            .find(|c| c.workload == wl && c.conc == conc && c.kind == kind && c.threads == threads)
    };

    let _ = writeln!(
        w,
        "\n-- added latency (target − direct); goal at c=1: added p50 ≤ 150 µs, added p99 ≤ 1000 µs --"
    );
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>10} {:>10}  {:>16}  c=1 goal",
        "workload", "c", "target", "added p50", "added p99", "vs bare p50/p99"
    );
    for c in cells.iter().filter(|c| c.kind != Kind::Direct) {
        let Some(direct) = find(c.workload, c.conc, Kind::Direct, None) else {
            continue;
        };
        let (a50, a99) = (c.wrk.p50 - direct.wrk.p50, c.wrk.p99 - direct.wrk.p99);
        let vs_bare = match (c.kind, find(c.workload, c.conc, Kind::Bare, c.threads)) {
            (
                Kind::Tollgate
                | Kind::TollgateBefore
                | Kind::TollgateNoSync
                | Kind::TollgateMiss
                | Kind::TollgateRouted
                | Kind::TollgateTranslated,
                Some(b),
            ) => format!(
                "{} / {}",
                signed(c.wrk.p50 - b.wrk.p50),
                signed(c.wrk.p99 - b.wrk.p99)
            ),
            _ => "-".to_owned(),
        };
        let goal = if c.conc == 1
            && matches!(
                c.kind,
                Kind::Tollgate | Kind::TollgateBefore | Kind::TollgateNoSync | Kind::TollgateMiss
            ) {
            format!(
                "p50 {} · p99 {}",
                verdict(a50 <= 150.0),
                verdict(a99 <= 1000.0)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>10} {:>10}  {:>16}  {}",
            c.workload.name(),
            c.conc,
            c.label,
            signed(a50),
            signed(a99),
            vs_bare,
            goal
        );
    }

    let _ = writeln!(
        w,
        "\n-- throughput vs the bare pingora floor; goal at c=64: tollgate ≥ 60% of bare --"
    );
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>9} {:>9} {:>7}  goal",
        "workload", "c", "target", "req/s", "bare", "ratio"
    );
    for c in cells.iter().filter(|c| {
        matches!(
            c.kind,
            Kind::Tollgate | Kind::TollgateBefore | Kind::TollgateNoSync | Kind::TollgateMiss
        )
    }) {
        let Some(bare) = find(c.workload, c.conc, Kind::Bare, c.threads) else {
            continue;
        };
        let ratio = c.wrk.rps() / bare.wrk.rps().max(1e-9);
        let goal = if c.conc == 64 {
            verdict(ratio >= 0.6)
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>9.0} {:>9.0} {:>6.0}%  {}",
            c.workload.name(),
            c.conc,
            c.label,
            c.wrk.rps(),
            bare.wrk.rps(),
            ratio * 100.0,
            goal
        );
    }

    let _ = writeln!(
        w,
        "\n-- proxy CPU per request vs the bare pingora floor; goal at c=1 and c=64: tollgate ≤ 2× bare --"
    );
    let _ = writeln!(
        w,
        "commit = tollgate − tollgate-nosync (what the durable mode's open-record commit costs, same run); \
         fdatasync = the disk probe's CPU for one append + sync ({} µs): at c=1 no request shares a commit;\n\
         ÷fake = proxyCPU ÷ the fake's CPU per request in the same row: the fake runs the same code for every \
         target, so this compares builds across rows when the machine's speed drifts between them",
        f.fsync_cpu_us
            .map_or_else(|| "not measured".to_owned(), |c| format!("{c:.1}"))
    );
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>9} {:>9} {:>7} {:>9} {:>6}  goal",
        "workload", "c", "target", "proxyCPU", "bare", "ratio", "commit", "÷fake"
    );
    for c in cells.iter().filter(|c| {
        matches!(
            c.kind,
            Kind::Tollgate | Kind::TollgateBefore | Kind::TollgateNoSync | Kind::TollgateMiss
        )
    }) {
        let (Some(cpu), Some(bare)) = (
            c.proxy_cpu_us,
            find(c.workload, c.conc, Kind::Bare, c.threads).and_then(|b| b.proxy_cpu_us),
        ) else {
            continue;
        };
        let ratio = cpu / bare.max(1e-9);
        let commit = match (
            c.kind,
            find(c.workload, c.conc, Kind::TollgateNoSync, c.threads).and_then(|n| n.proxy_cpu_us),
        ) {
            (Kind::Tollgate, Some(nosync)) => format!("{:.0}", cpu - nosync),
            _ => "-".to_owned(),
        };
        let goal = if matches!(c.kind, Kind::Tollgate) && (c.conc == 1 || c.conc == 64) {
            verdict(ratio <= 2.0)
        } else {
            ""
        };
        let per_fake = cpu / c.fake_cpu_us.max(1e-9);
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>9.0} {:>9.0} {:>6.2}× {:>9} {:>6.2}  {}",
            c.workload.name(),
            c.conc,
            c.label,
            cpu,
            bare,
            ratio,
            commit,
            per_fake,
            goal
        );
    }

    if cells.iter().any(|c| c.kind == Kind::TollgateHit) {
        let _ = writeln!(
            w,
            "\n-- exact cache: tollgate-hit (every request identical: answered from the cache) next to \
             tollgate-miss (every request unique: the miss path, cache on) and direct; goal at c=1: hit p50 ≤ 150 µs --"
        );
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>8} {:>8} {:>9} {:>12} {:>12} {:>10}  goal",
            "workload",
            "c",
            "target",
            "hit p50",
            "hit p99",
            "hits/s",
            "miss p50/p99",
            "direct p50",
            "hits/miss"
        );
        for c in cells.iter().filter(|c| c.kind == Kind::TollgateHit) {
            let miss = find(c.workload, c.conc, Kind::TollgateMiss, c.threads);
            let direct = find(c.workload, c.conc, Kind::Direct, None);
            let goal = if c.conc == 1 {
                verdict(c.wrk.p50 <= 150.0)
            } else {
                ""
            };
            let _ = writeln!(
                w,
                "{:<10} {:>4}  {:<20} {:>8} {:>8} {:>9.0} {:>12} {:>12} {:>10}  {}",
                c.workload.name(),
                c.conc,
                c.label,
                us(c.wrk.p50),
                us(c.wrk.p99),
                c.wrk.rps(),
                miss.map_or("-".to_owned(), |m| format!(
                    "{}/{}",
                    us(m.wrk.p50),
                    us(m.wrk.p99)
                )),
                direct.map_or("-".to_owned(), |d| us(d.wrk.p50)),
                miss.map_or("-".to_owned(), |m| format!(
                    "{:.1}×",
                    c.wrk.rps() / m.wrk.rps().max(1e-9)
                )),
                goal
            );
        }
    }

    let _ = writeln!(
        w,
        "\n-- tollgate's own metrics over each measured run (deltas of /metrics): \
         tollgate_added_latency_seconds, tollgate_outbox_flush_seconds (batch write + flush), \
         tollgate_outbox_batch_events, tollgate_outbox_depth at the end --"
    );
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>9} {:>7} {:>11} {:>12} {:>8} {:>9}",
        "workload",
        "c",
        "target",
        "requests",
        "errors",
        "self-added",
        "group commit",
        "events",
        "outbox"
    );
    let _ = writeln!(
        w,
        "{:<10} {:>4}  {:<20} {:>9} {:>7} {:>11} {:>12} {:>8} {:>9}",
        "", "", "", "", "", "mean µs", "mean µs", "/commit", "events"
    );
    for c in cells {
        let Some(t) = &c.tollgate else { continue };
        let _ = writeln!(
            w,
            "{:<10} {:>4}  {:<20} {:>9.0} {:>7.0} {:>11} {:>12} {:>8} {:>9.0}",
            c.workload.name(),
            c.conc,
            c.label,
            t.requests,
            t.errors,
            opt(t.added_mean_us, 0),
            opt(t.flush_mean_us, 0),
            opt(t.batch_mean, 1),
            t.outbox_events
        );
    }

    let restarted = if o.fresh {
        " (--fresh: each tollgate row on a new process; peak over them)"
    } else {
        ""
    };
    let _ = writeln!(
        w,
        "\n-- memory after the last row (VmRSS), after 2 s idle (of it anonymous: RssAnon), and peak (VmHWM){restarted} --"
    );
    let mut labels: Vec<&str> = Vec::new();
    for (label, _, _) in memory {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    for label in labels {
        let rows = memory.iter().filter(|m| m.0 == label);
        let last = rows.clone().next_back().map_or(0, |m| m.1);
        let peak = rows.map(|m| m.2).max().unwrap_or(0);
        let (idle, anon) = settled
            .iter()
            .rev()
            .find(|(l, _, _)| l == label)
            .map_or((0, 0), |(_, r, a)| (*r, *a));
        let _ = writeln!(
            w,
            "{:<20} {:>8.1} MiB  (after 2 s idle {:.1} MiB, {:.1} MiB anonymous; peak {:.1} MiB)",
            label,
            last as f64 / 1024.0,
            idle as f64 / 1024.0,
            anon as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    s
}
