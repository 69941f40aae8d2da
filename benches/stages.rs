//! Cost-control stages benchmark: what identify + limit + budget add to a
//! request, with 64 concurrent requests contending for one budget and one
//! rate-limit bucket.
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench cargo bench --bench stages
//! cargo bench --bench stages -- --tasks 64 --iterations 20000
//! ```
//!
//! In process, on a 2-worker tokio runtime (the sidecar's default on this
//! machine), each of `--tasks` tasks runs the real stage functions in a loop:
//! `identify` (gateway key: SHA-256 + constant-time compare, identity
//! headers), `limit::admit` (rpm + tpm buckets), `budget::reserve` (worst-case
//! estimate + all-or-nothing reservation against a day budget and a
//! per-request ceiling), then yields (standing in for the upstream call, so
//! reservations of all tasks overlap) and settles (`Guard::settle`, the
//! limiter's correction). Reported: p50 / p90 / p99 / max of the admission
//! stages and of settlement, per request, in microseconds, for three
//! configurations: no controls (the stages' skip path), controls without
//! gateway keys, and controls with gateway keys. Not run by CI.

#![allow(clippy::expect_used)] // a failed stage aborts the bench run

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use tollgate::budget::alerts::AlertSink;
use tollgate::budget::{Ledger, SystemClock};
use tollgate::config::{self, Flags};
use tollgate::dialect::Usage;
use tollgate::meter::event::UsageEvent;
use tollgate::metrics::Metrics;
use tollgate::proxy::lifecycle::InFlight;
use tollgate::proxy::recorder::Recorder;
use tollgate::proxy::{budget, identify, ingress, limit, State};
use tollgate::store::outbox::{Outbox, OutboxOptions};

const KEY: &str = "tg_live_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn state(controls: bool, keys: bool, dir: &std::path::Path) -> anyhow::Result<Arc<State>> {
    let mut toml = String::new();
    if controls {
        toml.push_str(
            "[[rate_limits]]\nscope = \"account:*\"\nrpm = 1000000000\ntpm = 1000000000000\n\n\
             [[budgets]]\nname = \"shared-day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"1000000000\"\n\n\
             [[budgets]]\nname = \"per-request\"\nscope = \"account:acme\"\nperiod = \"request\"\nlimit_usd = \"5\"\n",
        );
    }
    if keys {
        toml.push_str(&tollgate::keys::config_entry(KEY, "acme", "bench"));
        // Nine more keys: verification compares against every one.
        for i in 0..9 {
            let other = format!("tg_live_{i:064}");
            toml.push_str(&tollgate::keys::config_entry(
                &other,
                "other",
                &format!("k{i}"),
            ));
        }
    }
    let config = config::parse_str(&toml, &Default::default(), &Flags::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = Metrics::new()?;
    let db = sled::open(dir)?;
    let ledger = Arc::new(Ledger::new(
        config.budgets.clone(),
        Some(Arc::new(tollgate::store::sled::SpendTree::open(&db)?)),
        Arc::new(SystemClock),
        AlertSink::default(),
        metrics.ledger(&config.budgets),
    ));
    let (outbox, _) = Outbox::open(
        Arc::new(tollgate::store::sled::EventTree::open(&db)?),
        &dir.join(tollgate::store::journal::DIR),
        OutboxOptions {
            retention: Duration::from_secs(3600),
            sync: false,
        },
        metrics.outbox.clone(),
        None,
    )?;
    let recorder = Arc::new(Recorder::new(
        config.prices.clone(),
        outbox,
        metrics.clone(),
    ));
    let in_flight = InFlight::new(metrics.in_flight.clone());
    let cache = Arc::new(tollgate::cache::Cache::open(
        Arc::new(tollgate::store::sled::CacheTree::new(
            db.open_tree("cache")?,
        )),
        config.cache.clone(),
        metrics.cache.clone(),
    )?);
    let idempotency = Arc::new(tollgate::idempotency::Idempotency::new(
        Arc::new(tollgate::store::sled::IdempotencyTree::open(&db)?),
        config.idempotency_ttl,
        config.idempotency_wait,
        metrics.idempotency.clone(),
    ));
    let batches = Arc::new(tollgate::proxy::batch::Batches::new(
        config.batches.clone(),
        config.sidecar_id.clone(),
        Arc::new(tollgate::store::sled::BatchTree::open(&db)?),
        ledger.clone(),
        recorder.clone(),
        metrics.clone(),
    ));
    Ok(Arc::new(State::new(
        &config,
        recorder,
        ledger,
        cache,
        idempotency,
        metrics,
        in_flight,
        batches,
    )))
}

fn request() -> anyhow::Result<RequestHeader> {
    let mut r = RequestHeader::build("POST", b"/v1/messages", None)?;
    r.insert_header("anthropic-version", "2023-06-01")?;
    r.insert_header("x-api-key", KEY)?;
    r.insert_header("x-tollgate-account", "acme")?;
    r.insert_header("x-tollgate-workload", "bench")?;
    r.insert_header("x-tollgate-tags", "team=search,feature=summaries")?;
    Ok(r)
}

fn event() -> UsageEvent {
    UsageEvent {
        event_id: String::new(),
        ts: 0,
        sidecar_id: String::new(),
        account: "acme".into(),
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5".into(),
        usage: Usage {
            input_tokens: 20,
            output_tokens: 30,
            cache_creation_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: 0,
            reported_cost_nusd: None,
            fast: false,
            us_only: false,
        },
        cost_nusd: 510_000,
        http_status: 200,
        priced: true,
        ..UsageEvent::default()
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn run(
    label: &str,
    controls: bool,
    keys: bool,
    tasks: usize,
    iterations: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = state(controls, keys, dir.path())?;
    let header = Arc::new(request()?);
    let body = bytes::Bytes::from_static(
        br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Summarise the attached quarterly report in three bullet points."}]}"#,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (mut admit, mut settle) = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let state = state.clone();
            let header = header.clone();
            let body = body.clone();
            handles.push(tokio::spawn(async move {
                let mut admit = Vec::with_capacity(iterations);
                let mut settle = Vec::with_capacity(iterations);
                let route = state.routes.resolve(&header, None).expect("route");
                let ev = event();
                for _ in 0..iterations {
                    let mut req = ingress::parse(&route, body.clone()).expect("parse");
                    let t0 = Instant::now();
                    let id = identify::identify(
                        &header,
                        &state.default_identity,
                        &state.fleet.keyring(),
                    )
                    .expect("identify");
                    let admission = limit::admit(&state, &id, &req).expect("limit");
                    let guard =
                        budget::reserve(&state, &id, &route, &http::Method::POST, &mut req, None)
                            .await
                            .expect("budget");
                    admit.push(t0.elapsed().as_nanos() as u64);
                    // The upstream call: every task's reservation is outstanding here.
                    tokio::task::yield_now().await;
                    let t1 = Instant::now();
                    if let Some(g) = guard {
                        g.settle(&ev, true);
                    }
                    if let Some((limiter, a)) = admission {
                        limiter.settle(&a, 50, Instant::now());
                    }
                    settle.push(t1.elapsed().as_nanos() as u64);
                }
                (admit, settle)
            }));
        }
        let mut admit = Vec::new();
        let mut settle = Vec::new();
        for h in handles {
            let (a, s) = h.await.expect("task");
            admit.extend(a);
            settle.extend(s);
        }
        (admit, settle)
    });
    let secs = started.elapsed().as_secs_f64();
    admit.sort_unstable();
    settle.sort_unstable();
    let n = admit.len();
    println!(
        "{label:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.1} | {:>8.2} {:>8.2} {:>8.2} | {:>9.0}",
        pct(&admit, 0.5),
        pct(&admit, 0.9),
        pct(&admit, 0.99),
        pct(&admit, 1.0),
        pct(&settle, 0.5),
        pct(&settle, 0.99),
        pct(&settle, 1.0),
        n as f64 / secs,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let tasks = arg("--tasks", 64);
    let iterations = arg("--iterations", 20_000);
    println!("identify + limit + budget stages, {tasks} concurrent tasks x {iterations} requests, 2 worker threads");
    println!("one shared day budget, one per-request ceiling, one rpm+tpm bucket per account (all contended)");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>9}",
        "config (µs)", "admit p50", "p90", "p99", "max", "settle50", "p99", "max", "req/s"
    );
    run("no controls", false, false, tasks, iterations)?;
    run("limits + budgets", true, false, tasks, iterations)?;
    run("limits + budgets + keys", true, true, tasks, iterations)?;
    Ok(())
}
