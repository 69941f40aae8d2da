//! The control endpoint under a fleet's load, through its real binary:
//!
//! 1. ingest: N concurrent simulated sidecars each POST MessagePack batches
//!    of usage events as fast as acks come back: events/s, ack p50/p99,
//!    control CPU per event;
//! 2. rollup: one account's month of events (spread over 30 days), rolled
//!    up by model and day: the answer time;
//! 3. long poll: P simulated sidecars hold `GET /api/v1/sync` open: memory
//!    per waiting sidecar, and the time for one change to reach all of them;
//! 4. leases: N simulated sidecars renew budget leases as fast as grants
//!    come back, all against one budget, then spread over 1,000 budgets:
//!    grants/s and grant p50/p99.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --bench control
//! CARGO_TARGET_DIR=target/bench cargo bench --bench control -- --sidecars 100 --batch 100 --duration 10 --pollers 1000 --month 300000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const TOKEN: &str = "tga_bench0123456789abcdef0123456789abcdef";

struct Options {
    sidecars: usize,
    batch: usize,
    duration: u64,
    pollers: usize,
    month: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        sidecars: 100,
        batch: 100,
        duration: 10,
        pollers: 1000,
        month: 300_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{a} needs a value"))?
                .parse()
                .with_context(|| format!("{a}: not a number"))
        };
        match a.as_str() {
            "--sidecars" => o.sidecars = value()?,
            "--batch" => o.batch = value()?,
            "--duration" => o.duration = value()? as u64,
            "--pollers" => o.pollers = value()?,
            "--month" => o.month = value()?,
            // cargo bench passes --bench
            "--bench" => {}
            other => {
                bail!("unknown option {other} (--sidecars --batch --duration --pollers --month)")
            }
        }
    }
    Ok(o)
}

fn tollgate_exe() -> PathBuf {
    std::env::var_os("TOLLGATE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate")))
}

struct ControlProc {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for ControlProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlProc {
    fn start() -> Result<ControlProc> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(tollgate_exe())
            .args(["control", "--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.path().join("control-data"))
            .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
            .env("TOLLGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("tollgate control did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ControlProc {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// (RSS KiB, CPU seconds) of `pid`.
fn usage_of(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    (rss, ticks / 100.0)
}

async fn api(
    c: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut req = c
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn event(account: &str, ts: i64, model: &str) -> tollgate::meter::event::UsageEvent {
    serde_json::from_value(json!({
        "event_id": uuid::Uuid::now_v7().to_string(),
        "ts": ts,
        "sidecar_id": "bench",
        "account": account,
        "workload": "w",
        "tags": [["team", "search"]],
        "provider": "anthropic",
        "model": model,
        "route": "sync",
        "cache": "miss",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cost_nusd": 8_100_000,
        "saved_nusd": 0,
        "status": "ok",
        "latency_us": 900_000,
        "ttfb_us": 400_000,
        "upstream_request_id": "req_bench",
        "idempotency_key": null,
    }))
    .expect("a usage event")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let o = options()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let control = ControlProc::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&o, &control))
}

async fn run(o: &Options, control: &ControlProc) -> Result<()> {
    let c = reqwest::Client::new();
    let base = control.url.clone();
    for i in 0..10 {
        api(
            &c,
            &base,
            reqwest::Method::POST,
            "/api/v1/accounts",
            Some(json!({"name": format!("acme-{i}"), "plan": "pro"})),
        )
        .await?;
    }
    api(
        &c,
        &base,
        reqwest::Method::POST,
        "/api/v1/accounts",
        Some(json!({"name": "month", "plan": "pro"})),
    )
    .await?;
    let cred = api(
        &c,
        &base,
        reqwest::Method::POST,
        "/api/v1/sidecars",
        Some(json!({"name": "bench"})),
    )
    .await?["secret"]
        .as_str()
        .context("a credential")?
        .to_string();

    println!("== tollgate control benchmark ==");
    println!(
        "binary   : {}\nmachine  : nproc {}, the simulated sidecars run in this process on the same machine",
        tollgate_exe().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. ingest
    let events = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.duration);
    let (_, cpu0) = usage_of(control.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..o.sidecars {
        let (c, base, cred, events) = (c.clone(), base.clone(), cred.clone(), events.clone());
        let batch = o.batch;
        tasks.push(tokio::spawn(async move {
            let account = format!("acme-{}", s % 10);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let batch: Vec<_> = (0..batch)
                    .map(|_| event(&account, now_us(), "claude-sonnet-4-5"))
                    .collect();
                let body = rmp_serde::to_vec_named(&batch).expect("encode");
                let t = Instant::now();
                let resp = c
                    .post(format!("{base}/api/v1/ingest"))
                    .bearer_auth(&cred)
                    .header("content-type", "application/msgpack")
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        events.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("ingest answered {}", r.status()),
                    Err(e) => panic!("ingest failed: {e}"),
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    let (rss, cpu1) = usage_of(control.pid());
    lat.sort_by(|a, b| a.total_cmp(b));
    let n = events.load(Ordering::Relaxed);
    println!(
        "\n-- ingest: {} sidecars, batches of {} events, {:.1} s --",
        o.sidecars, o.batch, secs
    );
    println!(
        "events/s          : {:.0}  (target >= 50000)",
        n as f64 / secs
    );
    println!("acks/s            : {:.0}", lat.len() as f64 / secs);
    println!(
        "ack p50 / p99 ms  : {:.2} / {:.2}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "control CPU/event : {:.1} µs",
        (cpu1 - cpu0) / n.max(1) as f64 * 1e6
    );
    println!("control RSS       : {:.1} MiB", rss as f64 / 1024.0);

    // 2. rollup of one account's month
    let month_start = now_us() - 30 * 86_400_000_000;
    let step = 30 * 86_400_000_000 / o.month.max(1) as i64;
    let models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"];
    for chunk in (0..o.month).collect::<Vec<_>>().chunks(5000) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|&i| event("month", month_start + i as i64 * step, models[i % 3]))
            .collect();
        let r = c
            .post(format!("{base}/api/v1/ingest"))
            .bearer_auth(&cred)
            .header("content-type", "application/msgpack")
            .body(rmp_serde::to_vec_named(&batch)?)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("loading the month: {}", r.status());
        }
    }
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let v = api(
            &c,
            &base,
            reqwest::Method::GET,
            "/api/v1/llm/usage?account=month&group_by=model,day",
            None,
        )
        .await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        rows = v["rows"].as_array().map_or(0, Vec::len);
        assert_eq!(v["total"]["requests"].as_u64(), Some(o.month as u64));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("\n-- rollup: one account's month ({} events over 30 days, {} other events in the ledger), by model,day --", o.month, n);
    println!(
        "answer ms min / median : {:.0} / {:.0}  ({} rows)",
        times[0], times[2], rows
    );

    // 3. long polls
    // Let the allocator return what the rollup freed before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss0, _) = usage_of(control.pid());
    let version = reqwest::Client::new()
        .get(format!("{base}/api/v1/sync"))
        .bearer_auth(&cred)
        .send()
        .await?
        .json::<Value>()
        .await?["version"]
        .as_u64()
        .context("a version")?;
    let mut polls = Vec::new();
    let changed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    for _ in 0..o.pollers {
        let (base, cred) = (base.clone(), cred.clone());
        polls.push(tokio::spawn(async move {
            // One connection per simulated sidecar.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            let r = c
                .get(format!("{base}/api/v1/sync?version={version}&wait=30"))
                .bearer_auth(&cred)
                .send()
                .await
                .expect("sync");
            let v: Value = r.json().await.expect("snapshot");
            (Instant::now(), v["version"].as_u64().unwrap_or(0))
        }));
    }
    let wait_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = c
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let waiting: usize = m
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_control_sync_clients "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if waiting >= o.pollers {
            break;
        }
        if Instant::now() > wait_deadline {
            bail!("only {waiting} of {} pollers are waiting", o.pollers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss1, _) = usage_of(control.pid());
    let t0 = Instant::now();
    *changed_at.lock().expect("lock") = Some(t0);
    api(
        &c,
        &base,
        reqwest::Method::POST,
        "/api/v1/accounts",
        Some(json!({"name": "late"})),
    )
    .await?;
    let mut arrivals = Vec::new();
    for p in polls {
        let (at, v) = p.await?;
        if v <= version {
            bail!("a poller got no change");
        }
        arrivals.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
    }
    arrivals.sort_by(|a, b| a.total_cmp(b));
    println!("\n-- long poll: {} waiting sidecars --", o.pollers);
    println!(
        "control RSS before / while waiting : {:.1} / {:.1} MiB  ({:.1} KiB per waiting sidecar)",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / o.pollers as f64
    );
    println!(
        "one change reaches all of them     : p50 {:.0} ms, last {:.0} ms (including building each snapshot)",
        percentile(&arrivals, 0.5),
        arrivals.last().copied().unwrap_or(f64::NAN)
    );

    // 4. lease renewals
    leases(o, &c, &base, &cred).await
}

/// `o.sidecars` simulated sidecars renew leases as fast as grants come
/// back, against one shared budget, then against 1,000 budgets.
async fn leases(o: &Options, c: &reqwest::Client, base: &str, cred: &str) -> Result<()> {
    api(
        c,
        base,
        reqwest::Method::POST,
        "/api/v1/budgets",
        Some(json!({"name": "lease-one", "account": "month", "period": "month", "limit_usd": "1000000"})),
    )
    .await?;
    for i in 0..1000 {
        api(
            c,
            base,
            reqwest::Method::POST,
            "/api/v1/budgets",
            Some(json!({"name": format!("lease-{i}"), "account": format!("acme-{}", i % 10), "period": "month", "limit_usd": "1000"})),
        )
        .await?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let period = tollgate::budget::Period::Month
        .window(now)
        .context("this month")?
        .0;
    println!(
        "\n-- lease renewals: {} sidecars, {} s each --",
        o.sidecars, o.duration
    );
    for budgets in [1usize, 1000] {
        let deadline = Instant::now() + Duration::from_secs(o.duration);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..o.sidecars {
            let (c, base, cred, period) = (
                c.clone(),
                base.to_string(),
                cred.to_string(),
                period.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut consumed = std::collections::HashMap::<usize, u64>::new();
                let mut lat = Vec::new();
                let mut n = s;
                while Instant::now() < deadline {
                    let b = if budgets == 1 {
                        0
                    } else {
                        (n * 7919) % budgets
                    };
                    n += 1;
                    let name = if budgets == 1 {
                        "lease-one".to_string()
                    } else {
                        format!("lease-{b}")
                    };
                    let spent = consumed.entry(b).or_default();
                    *spent += 1000;
                    let body = json!({
                        "sidecar_id": format!("sim-{s}"),
                        "instance": format!("i-{s}"),
                        "leases": [{"budget": name, "period": period, "consumed_nusd": *spent,
                                    "reserved_nusd": 0, "want_nusd": 10_000_000, "need_nusd": 0}],
                    });
                    let t = Instant::now();
                    let resp = c
                        .post(format!("{base}/api/v1/leases"))
                        .bearer_auth(&cred)
                        .json(&body)
                        .send()
                        .await
                        .expect("a renewal");
                    assert!(resp.status().is_success(), "renewal: {}", resp.status());
                    let v: Value = resp.json().await.expect("a grant");
                    assert!(v["leases"][0]["error"].is_null(), "{v}");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:>5} budget(s): {:.0} grants/s, grant p50 {:.2} ms, p99 {:.2} ms (each durable before its answer)",
            budgets,
            lat.len() as f64 / secs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    Ok(())
}
