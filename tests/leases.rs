//! Fleet budgets through leases: one control endpoint, several real
//! sidecar processes, one hard budget. The fake provider is the ground
//! truth of what was billed: everything it served must fit the budget,
//! whatever happens to the control endpoint or a sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use support::control::{Control, ADMIN_TOKEN};
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};
use support::Rng;

const ANTHROPIC_KEY: &str = "sk-ant-injected-LEASES-51d0";
/// claude-sonnet-4-5: $3 / $15 per million tokens.
const INPUT_NUSD: u64 = 3_000;
const OUTPUT_NUSD: u64 = 15_000;
/// The largest request the tests send: its worst case bounds what a
/// fleet may leave unspent.
const MAX_TOKENS: u64 = 512;
/// Its worst case, with room for the estimate of its input.
const WORST_NUSD: u64 = MAX_TOKENS * OUTPUT_NUSD + 1_000_000;

fn usd(nusd: u64) -> String {
    format!("{}.{:09}", nusd / 1_000_000_000, nusd % 1_000_000_000)
}

fn nusd(usd: &str) -> u64 {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<9}");
    int.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

/// Calls that reached the fake provider, answered or not (a sidecar killed
/// while the fake was still thinking leaves one unanswered).
fn received(fake: &FakeProvider) -> u64 {
    fake.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .count() as u64
}

/// What the fake provider billed: every answer it served, at list price.
fn billed(fake: &FakeProvider) -> (u64, u64) {
    let served: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/messages") && r.status == 200)
        .collect();
    let cost = served
        .iter()
        .map(|r| {
            let u = r.usage.expect("usage of a served call");
            u.input_tokens * INPUT_NUSD + u.output_tokens * OUTPUT_NUSD
        })
        .sum();
    (served.len() as u64, cost)
}

/// A control endpoint with one `pro` account and one sidecar credential.
fn control(config: &str) -> (Control, String) {
    let control = Control::start(config);
    control.admin_json(&["accounts", "create", "acme", "--plan", "pro"]);
    let cred = control.admin_secret(&["sidecars", "create", "fleet", "--account", "acme"]);
    (control, cred)
}

fn sidecar(fake: &FakeProvider, control: &Control, cred: &str, id: &str) -> Builder {
    Builder::new(&fake.base_url())
        .no_cache()
        .top(&format!(
            "control_url = \"{}\"\nsidecar_id = \"{id}\"\ndefault_account = \"acme\"",
            control.url()
        ))
        .config("[ship]\ninterval = \"100ms\"\nmax_backoff = \"300ms\"\n")
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("TOLLGATE_CONTROL_CREDENTIAL", cred)
        .log_level("info")
}

/// `n` sidecars, `s0`…, on one credential.
fn fleet(fake: &FakeProvider, control: &Control, cred: &str, n: usize) -> Vec<Tollgate> {
    (0..n)
        .map(|i| sidecar(fake, control, cred, &format!("s{i}")).start())
        .collect()
}

/// Lets the load run until `denials` requests were refused, then stops it.
async fn until_denied(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>, denials: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.denied.load(Ordering::Relaxed) < denials {
        assert!(Instant::now() < deadline, "the budget never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// One call: a stream or not, `max_tokens` and the output the fake bills.
async fn call(
    client: &reqwest::Client,
    base: &str,
    max_tokens: u64,
    output: u64,
    stream: bool,
    ttfb_ms: u64,
) -> Option<u16> {
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{max_tokens},"stream":{stream},"messages":[{{"role":"user","content":"Hi"}}]}}"#
    );
    let resp = client
        .post(format!("{base}/v1/messages"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-usage", format!("input=1,output={output}"))
        .header("x-fake-ttfb-ms", ttfb_ms.to_string())
        .body(body)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    resp.bytes().await.ok()?;
    Some(status)
}

/// Shared by the load tasks: where the sidecars are, and what they saw.
#[derive(Default)]
struct Load {
    urls: RwLock<Vec<String>>,
    stop: AtomicBool,
    ok: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
}

/// 64 tasks sending random calls round-robin until `stop`.
fn start_load(load: &Arc<Load>, ttfb_ms: u64) -> Vec<tokio::task::JoinHandle<()>> {
    (0..64u64)
        .map(|i| {
            let load = load.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1));
                let mut n = i;
                while !load.stop.load(Ordering::Relaxed) {
                    let url = {
                        let urls = load.urls.read().unwrap();
                        urls[(n as usize) % urls.len()].clone()
                    };
                    n += 1;
                    let max_tokens = rng.between(16, MAX_TOKENS);
                    let output = rng.between(1, max_tokens);
                    let stream = rng.next().is_multiple_of(2);
                    match call(&client, &url, max_tokens, output, stream, ttfb_ms).await {
                        Some(200) => load.ok.fetch_add(1, Ordering::Relaxed),
                        Some(402) => {
                            // Exhausted here: slow down rather than spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            load.denied.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            load.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect()
}

/// Sends the largest call to every sidecar in turn until each refuses it
/// twice in a row: then every lease has gone back and what is left of the
/// budget is less than one such call.
async fn drain(urls: &[String]) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refusals = vec![0; urls.len()];
    while refusals.iter().any(|r| *r < 2) {
        assert!(Instant::now() < deadline, "the budget never ran out");
        for (i, url) in urls.iter().enumerate() {
            match call(&client, url, MAX_TOKENS, MAX_TOKENS, false, 0).await {
                Some(402) => {
                    refusals[i] += 1;
                    // A refusal asks the control endpoint for more lease;
                    // the next call to it comes after that had time to
                    // land (the suite's load once made two refusals land
                    // before it, with room left in the budget).
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Some(200) => refusals[i] = 0,
                other => panic!("{other:?} from {url}"),
            }
        }
    }
}

async fn status(control: &Control, budget: &str) -> Value {
    let (s, v) = control
        .call(
            Method::GET,
            &format!("/api/v1/budgets/{budget}/status"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until the control endpoint counts `want` spent for `budget`.
async fn wait_spent(control: &Control, budget: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = status(control, budget).await;
        if nusd(v["spent_usd"].as_str().unwrap()) == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the control endpoint counts {v}, the provider billed {}",
            usd(want)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ledger's events by status.
async fn ledger_by_status(control: &Control) -> std::collections::BTreeMap<String, u64> {
    let (s, v) = control
        .call(
            Method::GET,
            "/api/v1/llm/usage?account=acme&group_by=status",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sidecars_never_overshoot_one_budget_and_use_all_of_it() {
    let fake = FakeProvider::start().await;
    let (control, cred) = control("");
    let limit = 400_000_000; // $0.40: about a hundred calls
    control.admin_json(&[
        "budgets",
        "create",
        "fleet-month",
        "--account",
        "acme",
        "--limit-usd",
        &usd(limit),
    ]);
    let sidecars = fleet(&fake, &control, &cred, 4);
    let urls: Vec<String> = sidecars.iter().map(Tollgate::url).collect();
    let load = Arc::new(Load::default());
    *load.urls.write().unwrap() = urls.clone();
    let tasks = start_load(&load, 5);
    until_denied(&load, tasks, 200).await;
    drain(&urls).await;

    let (served, cost) = billed(&fake);
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    assert!(
        cost <= limit,
        "overshoot: billed {} of {}",
        usd(cost),
        usd(limit)
    );
    assert!(
        cost >= limit - WORST_NUSD,
        "starved: billed {} of {} ({served} calls)",
        usd(cost),
        usd(limit)
    );
    // Every sidecar spent from the budget, through its own lease.
    for t in &sidecars {
        let m = t.metrics().await;
        assert!(
            m.contains("tollgate_lease_consumed_usd{budget=\"fleet-month\"}"),
            "{m}"
        );
        assert!(metric(&m, "tollgate_lease_renewals_total{outcome=\"ok\"}") >= 1.0);
    }
    // The control endpoint's figure (renewals and shipped events agree)
    // is what the provider billed; the ledger has one ok event per call.
    let v = wait_spent(&control, "fleet-month", cost).await;
    assert_eq!(v["sidecars"].as_array().unwrap().len(), 4, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while ledger_by_status(&control).await.get("ok").copied() != Some(served) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            ledger_by_status(&control).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The CLI shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "budget",
            "status",
            "--control",
            &control.url(),
            "fleet-month",
        ])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(usd(cost).trim_end_matches('0')), "{table}");
    assert!(table.contains("fleet/s3"), "{table}");
}

/// Kills the control endpoint twice, keeps it away for longer than a
/// lease lives, and kills a sidecar mid-run: with `deny`, still no
/// overshoot, and the ledger holds one event per call the provider served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_overshoot_a_deny_budget_and_lose_no_event() {
    let fake = FakeProvider::start().await;
    let (mut control, cred) = control("lease_ttl = \"2s\"\n");
    let limit = 1_500_000_000; // $1.50
    control.admin_json(&[
        "budgets",
        "create",
        "fleet-day",
        "--account",
        "acme",
        "--period",
        "day",
        "--limit-usd",
        &usd(limit),
    ]);
    let mut sidecars = fleet(&fake, &control, &cred, 4);
    let load = Arc::new(Load::default());
    *load.urls.write().unwrap() = sidecars.iter().map(Tollgate::url).collect();
    // Slower calls: the run outlasts the faults.
    let tasks = start_load(&load, 150);
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    pause(600);
    control.kill9();
    pause(400);
    control.start_again(&[]);
    pause(500);
    // A sidecar dies mid-run and comes back on its data dir.
    let dir = sidecars[2].data_dir.clone();
    sidecars[2].signal(9);
    pause(300);
    control.kill9();
    pause(300);
    control.start_again(&[]);
    let s2 = sidecar(&fake, &control, &cred, "s2").data_dir(&dir).start();
    load.urls.write().unwrap()[2] = s2.url();
    sidecars[2] = s2;
    pause(500);
    // Unreachable for longer than a lease lives (2 s): once the leases
    // expire (and the calls they admitted finish), spending stops. A lease
    // renewed just before the kill lives 2 s more and a call it admitted
    // takes 150 ms; the rest is slack for a loaded CI machine.
    control.kill9();
    pause(3_000);
    let at_expiry = billed(&fake).1;
    pause(1_000);
    let after_expiry = billed(&fake).1 - at_expiry;
    control.start_again(&[]);
    let deadline = Instant::now() + Duration::from_secs(40);
    while load.denied.load(Ordering::Relaxed) < 300 || billed(&fake).1 < limit / 2 {
        assert!(Instant::now() < deadline, "the budget never ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let urls: Vec<String> = sidecars.iter().map(Tollgate::url).collect();
    drain(&urls).await;

    let (served, cost) = billed(&fake);
    assert!(
        cost <= limit,
        "overshoot: billed {} of {}",
        usd(cost),
        usd(limit)
    );
    assert_eq!(
        after_expiry,
        0,
        "spent {} after the leases expired",
        usd(after_expiry)
    );
    let m = sidecars[0].metrics().await;
    assert!(
        metric(&m, "tollgate_lease_unreachable_seconds_total") > 1.0,
        "{m}"
    );
    assert!(metric(&m, "tollgate_lease_renewals_total{outcome=\"unreachable\"}") >= 1.0);
    // One event per call that reached the provider: those the kill cut
    // come back as interrupted; none is lost, no answer counted twice. (A
    // call journaled just before the kill but never sent is interrupted
    // too: the journal errs on the side of counting.)
    let reached = received(&fake);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let by = ledger_by_status(&control).await;
        let ok = by.get("ok").copied().unwrap_or(0);
        let cut = by.get("interrupted").copied().unwrap_or(0);
        // A call the provider answered just as its sidecar died is
        // interrupted too (recorded at its worst case).
        if ok <= served && served - ok <= cut && ok + cut >= reached && ok + cut <= reached + 64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {by:?}, provider served {served} of {reached} calls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Consumption the control endpoint counts covers what was billed
    // (interrupted calls count at their worst case).
    let v = status(&control, "fleet-day").await;
    assert!(nusd(v["spent_usd"].as_str().unwrap()) >= cost, "{v}");
}

/// With `allow`, a fleet cut off from the control endpoint goes on past
/// its leases, by at most the budget's allowance in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_budget_overshoots_by_at_most_its_allowance() {
    let fake = FakeProvider::start().await;
    let (mut control, cred) = control("");
    let limit = 300_000_000;
    let allowance = 60_000_000;
    control.admin_json(&[
        "budgets",
        "create",
        "fleet-month",
        "--account",
        "acme",
        "--limit-usd",
        &usd(limit),
        "--on-control-unreachable",
        "allow",
        "--unreachable-allowance-usd",
        &usd(allowance),
    ]);
    let sidecars = fleet(&fake, &control, &cred, 4);
    // Every sidecar holds a lease and its share of the allowance.
    let client = reqwest::Client::new();
    for t in &sidecars {
        assert_eq!(call(&client, &t.url(), 16, 1, false, 0).await, Some(200));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = billed(&fake).1;
    control.kill9();
    let load = Arc::new(Load::default());
    *load.urls.write().unwrap() = sidecars.iter().map(Tollgate::url).collect();
    let tasks = start_load(&load, 5);
    until_denied(&load, tasks, 200).await;
    let (_, cost) = billed(&fake);
    assert!(cost > before, "nothing was spent while unreachable");
    assert!(
        cost <= limit + allowance,
        "billed {} with limit {} and allowance {}",
        usd(cost),
        usd(limit),
        usd(allowance)
    );
    for t in &sidecars {
        let m = t.metrics().await;
        assert!(
            metric(&m, "tollgate_lease_unreachable_seconds_total") > 0.0,
            "{m}"
        );
    }
    // Back: what was spent while away is reported, and the fleet goes on
    // to the limit, plus at most the allowance already spent.
    control.start_again(&[]);
    wait_spent(&control, "fleet-month", cost).await;
    for t in &sidecars {
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&t.metrics().await, "tollgate_lease_unreachable") != 0.0 {
            assert!(Instant::now() < deadline, "{}", t.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let urls: Vec<String> = sidecars.iter().map(Tollgate::url).collect();
    drain(&urls).await;
    let total = billed(&fake).1;
    assert!(
        total <= limit + allowance && total >= cost,
        "billed {} in all",
        usd(total)
    );
    assert!(
        total >= limit - WORST_NUSD,
        "starved: {}\n{}\n{}",
        usd(total),
        status(&control, "fleet-month").await,
        sidecars[0].log()
    );
}

/// A limit raised or lowered while sidecars run takes effect within 2 s;
/// lowered below what is spent, it refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_limit_reaches_the_fleet_within_two_seconds() {
    let fake = FakeProvider::start().await;
    let (control, cred) = control("");
    control.admin_json(&[
        "budgets",
        "create",
        "fleet-month",
        "--account",
        "acme",
        "--limit-usd",
        "1",
    ]);
    let sidecars = fleet(&fake, &control, &cred, 2);
    let client = reqwest::Client::new();
    for t in &sidecars {
        for _ in 0..3 {
            assert_eq!(call(&client, &t.url(), 64, 64, false, 0).await, Some(200));
        }
    }
    let until = |want: u16| {
        let client = client.clone();
        let urls: Vec<String> = sidecars.iter().map(Tollgate::url).collect();
        async move {
            let t0 = Instant::now();
            loop {
                let mut all = true;
                for u in &urls {
                    all &= call(&client, u, 64, 1, false, 0).await == Some(want);
                }
                if all {
                    return t0.elapsed();
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "never {want}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Below what the six calls spent: refused at once, everywhere.
    control.admin_json(&["budgets", "set-limit", "fleet-month", "0.001"]);
    let took = until(402).await;
    assert!(took < Duration::from_secs(2), "lowering took {took:?}");
    let before = billed(&fake).1;
    control.admin_json(&["budgets", "set-limit", "fleet-month", "2"]);
    let took = until(200).await;
    assert!(took < Duration::from_secs(2), "raising took {took:?}");
    assert!(billed(&fake).1 > before);

    // A sidecar that stops gracefully hands its unused lease back.
    let holder = |v: &Value, name: &str| {
        v["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["sidecar"] == name)
            .cloned()
            .unwrap()
    };
    let v = status(&control, "fleet-month").await;
    assert_ne!(holder(&v, "fleet/s0")["held_usd"], "0.00", "{v}");
    let mut sidecars = sidecars;
    assert!(sidecars[0].stop().success());
    let v = status(&control, "fleet-month").await;
    let s0 = holder(&v, "fleet/s0");
    assert_eq!(s0["held_usd"], "0.00", "{v}");
    assert_eq!(s0["granted_usd"], s0["spent_usd"], "{v}");
}

/// Soft thresholds fire once per budget and period for the whole fleet,
/// from the control endpoint, however many sidecars cross them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_fire_once_per_period_across_the_fleet() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let fake = FakeProvider::start().await;
    let (control, cred) = control("");
    control.admin_json(&[
        "budgets",
        "create",
        "fleet-month",
        "--account",
        "acme",
        "--limit-usd",
        "0.05",
        "--soft-threshold",
        "0.5",
        "--soft-threshold",
        "0.8",
        "--alert-webhook",
        &hook,
    ]);
    let sidecars = fleet(&fake, &control, &cred, 3);
    // Each call: 1 input + 200 output tokens = 3,003,000 nano-USD; about
    // sixteen fit. All three sidecars cross both thresholds together.
    let client = reqwest::Client::new();
    let mut ok = 0;
    for round in 0..12 {
        for t in &sidecars {
            if call(&client, &t.url(), 200, 200, round % 2 == 0, 0).await == Some(200) {
                ok += 1;
            }
        }
    }
    assert!(ok >= 10, "{ok} calls served");
    let spent = billed(&fake).1;
    assert!(spent >= 40_000_000, "spent {}", usd(spent));
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more, however long the sidecars keep reporting.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    let thresholds: Vec<f64> = got
        .iter()
        .map(|a| a["threshold"].as_f64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![0.5, 0.8]);
    assert_eq!(got[0]["budget"], "fleet-month");
    assert_eq!(got[0]["scope"], "account:acme");
    // No sidecar fired its own.
    for t in &sidecars {
        assert!(
            !t.log().contains("budget soft threshold crossed"),
            "{}",
            t.log()
        );
    }
    assert!(control.log().contains("budget soft threshold crossed"));
}
