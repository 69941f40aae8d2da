//! Crash safety of usage and spend: the real binary is `kill -9`ed at
//! random moments while stream and non-stream clients run against the fake
//! provider (with a provider-like delay), and restarted on the same data
//! dir each time. Afterwards every request the provider served has exactly
//! one usage event, complete or `interrupted` at its worst case, and the
//! day budget's spend covers everything the provider billed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};
use support::Rng;

const STREAM_CLIENTS: usize = 6;
const SYNC_CLIENTS: usize = 6;
/// Large enough that no request is refused.
const ROOMY_USD: &str = "1000";

fn budget(limit_usd: &str) -> String {
    format!("[[budgets]]\nname = \"acme-day\"\nscope = \"account:acme\"\nperiod = \"day\"\nlimit_usd = \"{limit_usd}\"\n")
}
/// claude-sonnet-4-5, nano-USD per token.
const INPUT_NUSD: u64 = 3_000;
const OUTPUT_NUSD: u64 = 15_000;
const MAX_TOKENS: u64 = 64;

fn body(stream: bool, marker: &str) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{MAX_TOKENS},"stream":{stream},"messages":[{{"role":"user","content":"crash test {marker}"}}]}}"#
    )
}

/// What the budget reserves for a body (no tools): every byte an input token.
fn worst_nusd(body: &[u8]) -> u64 {
    body.len() as u64 * INPUT_NUSD + MAX_TOKENS * OUTPUT_NUSD
}

fn start(fake: &FakeProvider, data: &std::path::Path) -> Tollgate {
    start_with(fake, data, true, ROOMY_USD)
}

fn start_with(
    fake: &FakeProvider,
    data: &std::path::Path,
    sync: bool,
    limit_usd: &str,
) -> Tollgate {
    Builder::new(&fake.base_url())
        .no_cache()
        .data_dir(data)
        .config(&budget(limit_usd))
        .config(&format!("[outbox]\nsync = {sync}\n"))
        .log_level("info")
        .start()
}

async fn wait_ready(t: &Tollgate) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = reqwest::get(format!("{}/readyz", t.admin_url()))
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", t.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One client: requests in a loop against whichever tollgate is up, each
/// with a unique idempotency key (forwarded upstream: it names the request
/// at the fake and in the usage event).
async fn client(
    id: usize,
    stream: bool,
    url: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("crash-{id}-{n}");
        let base = url.lock().unwrap().clone();
        let mut req = http
            .post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-tollgate-account", "acme")
            .header("idempotency-key", &key)
            .header("x-fake-usage", format!("input=10,output={}", 20 + id))
            .body(body(stream, &key));
        // A provider's pace: a stream of 11 events 15 ms apart, or a
        // non-stream answer after 40–160 ms.
        req = if stream {
            req.header("x-fake-scenario", "slow")
                .header("x-fake-delay-ms", "15")
        } else {
            req.header(
                "x-fake-ttfb-ms",
                (40 + (n * 37 + id as u64 * 11) % 120).to_string(),
            )
        };
        match req.send().await {
            Ok(r) => {
                let refused = r.status() == 402;
                if r.bytes().await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if refused {
                    // The budget is spent: no need to spin on 402s.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            // Refused while tollgate restarts: try again shortly.
            Err(e) if e.is_connect() => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_request_and_no_spend() {
    let run = kills_under_load(30, true, ROOMY_USD).await;
    assert!(run.interrupted > 0, "no kill landed on a request in flight");
}

/// `outbox.sync = false` survives a crash of the process (the open record
/// is in the kernel before the send), which is what kill -9 is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_without_sync_loses_no_request_and_no_spend() {
    let run = kills_under_load(10, false, ROOMY_USD).await;
    assert!(run.interrupted > 0, "no kill landed on a request in flight");
}

/// Before the journal, a $0.05 budget under 30 kills was overshot by 13.8%:
/// every restart forgot the spend in flight. Now the provider never bills
/// more than the limit (about 140 requests' worth here; then 402s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_sidecar_never_overshoots_a_hard_budget() {
    let run = kills_under_load(10, true, "0.05").await;
    assert!(
        run.billed <= 50_000_000,
        "billed {} nUSD over the $0.05 limit",
        run.billed
    );
}

/// What a run of [`kills_under_load`] saw.
struct Run {
    /// What the fake billed, nano-USD.
    billed: u64,
    /// Served requests recorded as interrupted.
    interrupted: usize,
}

/// Runs the clients, kills and restarts; checks every served request's
/// event and the spend.
async fn kills_under_load(kills: usize, sync: bool, limit_usd: &str) -> Run {
    let started = Instant::now();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = start_with(&fake, data.path(), sync, limit_usd);
    wait_ready(&t).await;
    let url = Arc::new(Mutex::new(t.url()));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..STREAM_CLIENTS + SYNC_CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                i < STREAM_CLIENTS,
                url.clone(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    for _ in 0..kills {
        // Somewhere between mid-stream and between requests.
        tokio::time::sleep(Duration::from_millis(250 + rng.below(700))).await;
        t.signal(libc::SIGKILL);
        t.wait_exit(Duration::from_secs(10));
        t = start_with(&fake, data.path(), sync, limit_usd);
        wait_ready(&t).await;
        *url.lock().unwrap() = t.url();
    }
    // A last stretch of traffic, then the clients stop and everything in
    // flight completes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let served: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/v1/messages"))
        .collect();
    let mut events: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        events.clear();
        for e in t.events().await {
            let key = e["idempotency_key"].as_str().unwrap_or("").to_string();
            events.entry(key).or_default().push(e);
        }
        let missing = served
            .iter()
            .filter(|r| !events.contains_key(r.header("idempotency-key").unwrap()))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} served requests have no event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = t.events().await;
    t.stop();

    let mut ids = std::collections::HashSet::new();
    for e in &all {
        assert!(
            ids.insert(e["event_id"].as_str().unwrap().to_string()),
            "duplicate event {e}"
        );
    }
    let mut billed = 0u64;
    let mut interrupted = 0usize;
    for r in &served {
        let key = r.header("idempotency-key").unwrap();
        let evs = &events[key];
        assert_eq!(evs.len(), 1, "{key}: {evs:?}");
        let e = &evs[0];
        let cost = r.usage.map_or(0, |u| {
            u.input_tokens * INPUT_NUSD + u.output_tokens * OUTPUT_NUSD
        });
        billed += cost;
        match e["status"].as_str().unwrap() {
            "ok" => assert_eq!(e["cost_nusd"], cost, "{key}: {e}"),
            "interrupted" => {
                interrupted += 1;
                // From the body sent (the fake records none when tollgate
                // died while sending it).
                let client: usize = key.split('-').nth(1).unwrap().parse().unwrap();
                let sent = body(client < STREAM_CLIENTS, key);
                assert_eq!(e["cost_nusd"], worst_nusd(sent.as_bytes()), "{key}: {e}");
                assert_eq!(e["usage_incomplete"], true);
                assert_eq!(e["account"], "acme");
            }
            other => panic!("{key}: unexpected status {other}: {e}"),
        }
    }
    // Spend as the stopped sidecar left it on disk.
    let cfg = data.path().join("status.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n{}",
            data.path().display(),
            budget(limit_usd)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["budget", "status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let spent = status[0]["spent_nusd"].as_u64().unwrap();
    eprintln!(
        "crash test (outbox.sync = {sync}): {kills} kills, {} served, {} events, {interrupted} interrupted, {} completed by clients; spend {spent} nUSD vs billed {billed} nUSD (+{:.1}%), {:.1} s",
        served.len(),
        all.len(),
        done.load(Ordering::Relaxed),
        (spent as f64 / billed.max(1) as f64 - 1.0) * 100.0,
        started.elapsed().as_secs_f64()
    );
    assert!(
        spent >= billed,
        "spend {spent} is less than the provider billed ({billed})"
    );
    // The offline report shows them too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--by", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(interrupted == 0 || table.contains("interrupted"), "{table}");
    Run {
        billed,
        interrupted,
    }
}

/// A stream whose real input (at `message_start`) outgrew the estimate
/// grows its reservation; a crash after that charges the grown worst case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_stream_grew_its_reservation_charges_the_grown_worst_case() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = start(&fake, data.path());
    let url = format!("{}/v1/messages", t.url());
    let request = tokio::spawn(async move {
        let sent = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-tollgate-account", "acme")
            .header("idempotency-key", "grown")
            .header("x-fake-scenario", "slow")
            .header("x-fake-delay-ms", "300")
            // Far more input than the body's bytes can hold.
            .header("x-fake-usage", "input=5000,output=10")
            .body(body(true, "grown"))
            .send()
            .await;
        if let Ok(r) = sent {
            // Cut by the kill.
            let _ = r.bytes().await;
        }
    });
    // message_start (with the real input) is the first event; the rest
    // come 300 ms apart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    t.signal(libc::SIGKILL);
    t.wait_exit(Duration::from_secs(10));
    let _ = request.await;
    // Before any restart, the offline report already shows it (from the journal).
    let cfg = data.path().join("usage.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n", data.path().display())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--by", "account,status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains("acme") && l.contains("interrupted")),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = start(&fake, data.path());
    let events = t.events().await;
    let e = events
        .iter()
        .find(|e| e["idempotency_key"] == "grown")
        .expect("an event for the request");
    assert_eq!(e["status"], "interrupted", "{e}");
    let grown = 5000 * INPUT_NUSD + MAX_TOKENS * OUTPUT_NUSD;
    assert_eq!(e["cost_nusd"], grown, "{e}");
    let budgets: Value = reqwest::get(format!("{}/budgets", t.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(budgets[0]["spent_nusd"], grown);
}
