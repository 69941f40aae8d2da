//! Sidecars and the control endpoint together: usage shipped from real
//! sidecars into one ledger, exactly once, across a control endpoint that
//! is killed and restarted while the sidecars keep serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::control::{Control, ADMIN_TOKEN};
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-FLEET-7c1e";

fn nusd(usd: &str) -> u64 {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<9}");
    int.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

fn sidecar(fake: &FakeProvider, control: &Control, credential: &str) -> Tollgate {
    Builder::new(&fake.base_url())
        .no_cache()
        .top(&format!("control_url = \"{}\"", control.url()))
        .config("[ship]\ninterval = \"100ms\"\nmax_backoff = \"300ms\"\n")
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("TOLLGATE_CONTROL_CREDENTIAL", credential)
        .start()
}

/// One Messages request with `header`: its response.
async fn request(t: &Tollgate, header: (&str, &str)) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", t.url()))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header(header.0, header.1)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}"#)
        .send()
        .await
        .unwrap()
}

/// One request for `account`; its receipt's cost in nano-USD.
async fn send(t: &Tollgate, account: &str) -> u64 {
    let resp = request(t, ("x-tollgate-account", account)).await;
    assert_eq!(resp.status(), 200);
    let cost = resp.headers()["x-tollgate-cost-usd"]
        .to_str()
        .unwrap()
        .to_string();
    resp.bytes().await.unwrap();
    nusd(&cost)
}

/// The ledger's (requests, cost_nusd) total, as the admin sees it.
async fn ledger_total(control: &Control, query: &str) -> (u64, u64) {
    let (s, v) = control
        .call(
            Method::GET,
            &format!("/api/v1/llm/usage?{query}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    (
        v["total"]["requests"].as_u64().unwrap(),
        v["total"]["cost_nusd"].as_u64().unwrap(),
    )
}

async fn wait_ledger(control: &Control, requests: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = ledger_total(control, "group_by=account").await;
        if t.0 >= requests {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "ledger holds {t:?}, want {requests} requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_ship_into_one_ledger_exactly_once_across_a_control_crash() {
    let fake = FakeProvider::start().await;
    let mut control = Control::start("");
    control.admin_json(&["accounts", "create", "acme"]);
    control.admin_json(&["accounts", "create", "beta", "--plan", "pro"]);
    let cred = control.admin_secret(&[
        "sidecars",
        "create",
        "fleet",
        "--account",
        "acme",
        "--account",
        "beta",
    ]);
    let a = sidecar(&fake, &control, &cred);
    let b = sidecar(&fake, &control, &cred);

    let mut receipts = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..20 {
        let (t, account) = if i % 2 == 0 {
            (&a, "acme")
        } else {
            (&b, if i % 3 == 0 { "acme" } else { "beta" })
        };
        *receipts.entry(account).or_default() += send(t, account).await;
    }
    let (requests, cost) = wait_ledger(&control, 20).await;
    assert_eq!(requests, 20);
    assert_eq!(
        cost,
        receipts.values().sum::<u64>(),
        "ledger total = the receipts' sum"
    );
    for (account, sum) in &receipts {
        let (_, c) = ledger_total(&control, &format!("account={account}")).await;
        assert_eq!(c, *sum, "{account}");
    }
    // Shipped events leave the outbox.
    for t in [&a, &b] {
        let m = t.metrics().await;
        assert_eq!(metric(&m, "tollgate_outbox_depth"), 0.0, "{m}");
        assert_eq!(metric(&m, "tollgate_shipped_events_total"), 10.0);
    }

    // The control endpoint dies; the sidecars keep serving and recording.
    control.kill9();
    for i in 0..20 {
        let (t, account) = if i % 2 == 0 {
            (&a, "acme")
        } else {
            (&b, "beta")
        };
        *receipts.entry(account).or_default() += send(t, account).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = a.metrics().await;
    assert!(metric(&m, "tollgate_ship_errors_total") >= 1.0, "{m}");
    assert_eq!(metric(&m, "tollgate_outbox_depth"), 10.0);
    assert!(metric(&m, "tollgate_ship_lag_seconds") > 0.0);

    control.start_again(&[]);
    let (requests, cost) = wait_ledger(&control, 40).await;
    // Settled: nothing more arrives, nothing counted twice.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        ledger_total(&control, "group_by=account").await,
        (requests, cost)
    );
    assert_eq!(requests, 40);
    assert_eq!(
        fake.requests().len(),
        40,
        "one event per request the provider served"
    );
    assert_eq!(cost, receipts.values().sum::<u64>());

    // The same table from the CLI, with exact costs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--by", "account", "--control", &control.url()])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let total_line = table.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert!(total_line.contains(" 40 "), "{table}");
    let total_usd = format!("{}.{:09}", cost / 1_000_000_000, cost % 1_000_000_000);
    assert!(
        total_line.contains(total_usd.trim_end_matches('0')),
        "{table} lacks {total_usd}"
    );
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "usage",
            "--by",
            "account,model",
            "--format",
            "csv",
            "--control",
            &control.url(),
        ])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(
        csv.starts_with(
            "account,model,requests,input,output,cache_write,cache_read,cost_usd,saved_usd"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // A gateway key reads its own account's usage only.
    let key = control.admin_secret(&["keys", "create", "beta", "reader"]);
    let (s, own) = control
        .call(
            Method::GET,
            "/api/v1/llm/usage?group_by=account",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(own["rows"].as_array().unwrap().len(), 1);
    assert_eq!(own["rows"][0]["account"], "beta");
    let (s, _) = control
        .call(
            Method::GET,
            "/api/v1/llm/usage?account=acme",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = control
        .call(Method::GET, "/api/v1/llm/usage", Some(&cred), None)
        .await;
    assert_eq!(s, 403, "a sidecar credential reads no usage");
}

/// Ingest is idempotent by event id, and a sidecar credential writes only
/// the accounts it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_idempotent_and_scoped() {
    let fake = FakeProvider::start().await;
    // A standalone sidecar makes real events.
    let t = Builder::new(&fake.base_url())
        .no_cache()
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .start();
    for _ in 0..3 {
        send(&t, "acme").await;
    }
    let events: Vec<tollgate::meter::event::UsageEvent> =
        serde_json::from_value(Value::Array(t.wait_events(3).await)).unwrap();
    let batch = rmp_serde::to_vec_named(&events).unwrap();

    let control = Control::start("");
    control.admin_json(&["accounts", "create", "acme"]);
    control.admin_json(&["accounts", "create", "other"]);
    let cred = control.admin_secret(&["sidecars", "create", "s", "--account", "acme"]);
    let other = control.admin_secret(&["sidecars", "create", "o", "--account", "other"]);
    let post = |token: String, body: Vec<u8>| {
        let url = format!("{}/api/v1/ingest", control.url());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/msgpack")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        post(cred.clone(), batch.clone()).await,
        (200, json!({"accepted": 3, "duplicates": 0, "refused": 0}))
    );
    assert_eq!(
        post(cred.clone(), batch.clone()).await,
        (200, json!({"accepted": 0, "duplicates": 3, "refused": 0}))
    );
    assert_eq!(ledger_total(&control, "").await.0, 3);
    // Whole days are read from the rollup rows, a range inside a day from
    // the events: the same answer.
    let q = "group_by=account,workload,model,day,provider,tag,cache,route,status";
    let (_, by_rollups) = control
        .call(
            Method::GET,
            &format!("/api/v1/llm/usage?{q}&from=2020-01-01"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let (_, by_events) = control
        .call(
            Method::GET,
            &format!("/api/v1/llm/usage?{q}&from=2020-01-01T00:00:00.000001Z"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(by_rollups["total"]["requests"], 3, "{by_rollups}");
    assert_eq!(by_rollups, by_events);
    // Another account's events are never stored: refused, acknowledged.
    assert_eq!(
        post(other, batch.clone()).await,
        (200, json!({"accepted": 0, "duplicates": 0, "refused": 3}))
    );
    assert_eq!(ledger_total(&control, "").await.0, 3);
    let (s, _) = post(ADMIN_TOKEN.to_string(), batch).await;
    assert_eq!(s, 403, "only sidecars ship");
    let (s, _) = post(cred, b"not msgpack".to_vec()).await;
    assert_eq!(s, 400);
    let (_, m) = control.call(Method::GET, "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_string();
    assert_eq!(metric(&m, "tollgate_control_ledger_events"), 3.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "tollgate_control_ingest_events_total{result=\"duplicate\"}"
        ),
        3.0
    );
}

/// The x-api-key the fake provider saw on its latest request.
fn last_upstream_key(fake: &FakeProvider) -> String {
    let reqs = fake.requests();
    let last = reqs.last().expect("a request reached the provider");
    last.headers
        .iter()
        .find(|(k, _)| k == "x-api-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A request with gateway key `key`: its status.
async fn with_key(t: &Tollgate, key: &str) -> u16 {
    let resp = request(t, ("x-api-key", key)).await;
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

/// Polls both sidecars until `key` gets `want` from each; the time it took.
async fn until_status(sidecars: &[&Tollgate], key: &str, want: u16) -> Duration {
    let start = Instant::now();
    for t in sidecars {
        while with_key(t, key).await != want {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{key} never got {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

/// Gateway keys and BYOK provider keys come from the control endpoint: the
/// app never holds the provider key; a revocation and a key change reach
/// running sidecars in under 2 s; a sidecar restarted with the control
/// endpoint down serves from its sealed snapshot; no secret is ever at
/// rest or in a log in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_brings_keys_to_running_sidecars_and_survives_a_control_outage() {
    let master = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["control", "new-master-key"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let fake = FakeProvider::start().await;
    let mut control = Control::start_env("", None, "http", &[("TOLLGATE_MASTER_KEY", &master)]);
    control.admin_json(&["accounts", "create", "acme", "--plan", "growth"]);
    let byok1 = "sk-ant-BYOK-FIRST-0001";
    let byok2 = "sk-ant-BYOK-SECOND-0002";
    let put_byok = |key: &'static str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "admin",
                "--control",
                &control.url(),
                "byok",
                "add",
                "acme",
                "anthropic",
                "--key-env",
                "K",
            ])
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("K", key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    put_byok(byok1);
    let k1 = control.admin_secret(&["keys", "create", "acme", "web"]);
    let cred = control.admin_secret(&["sidecars", "create", "fleet", "--account", "acme"]);
    let control_url = control.url();
    let start = |data_dir: Option<&std::path::Path>| {
        let mut b = Builder::new(&fake.base_url())
            .no_cache()
            .top(&format!("control_url = \"{control_url}\""))
            .config("[ship]\ninterval = \"100ms\"\n")
            .env("TOLLGATE_CONTROL_CREDENTIAL", &cred);
        if let Some(d) = data_dir {
            b = b.data_dir(d);
        }
        b.start()
    };
    // A's data dir outlives the process (a restart below reuses it).
    let a_dir = tempfile::tempdir().unwrap();
    let a = start(Some(&a_dir.path().join("data")));
    let b = start(None);

    // The app presents only its gateway key; the provider sees the BYOK key.
    for t in [&a, &b] {
        assert_eq!(with_key(t, &k1).await, 200);
        assert_eq!(last_upstream_key(&fake), byok1);
        assert_eq!(with_key(t, "tg_live_not-a-key").await, 401);
        assert!(
            t.log().contains("from=\"the control endpoint\""),
            "{}",
            t.log()
        );
    }
    let keyless = reqwest::Client::new()
        .post(format!("{}/v1/messages", a.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status(), 401);

    // Revoking the key takes effect on both running sidecars in under 2 s.
    let id = control.admin_json(&["keys", "list", "acme"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k2 = control.admin_secret(&["keys", "create", "acme", "web2"]);
    until_status(&[&a, &b], &k2, 200).await;
    control.admin_json(&["keys", "revoke", &id]);
    let took = until_status(&[&a, &b], &k1, 401).await;
    assert!(took < Duration::from_secs(2), "revocation took {took:?}");
    // A new provider key too.
    let t0 = Instant::now();
    put_byok(byok2);
    loop {
        assert_eq!(with_key(&a, &k2).await, 200);
        if last_upstream_key(&fake) == byok2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the new provider key took over 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(with_key(&b, &k2).await, 200);
    assert_eq!(last_upstream_key(&fake), byok2);

    // A budget created and then raised with `tollgate admin` binds and frees
    // both running sidecars in under 2 s; the plan caps its size.
    let over = control.admin(
        ADMIN_TOKEN,
        &[
            "budgets",
            "create",
            "big",
            "--account",
            "acme",
            "--limit-usd",
            "20000",
        ],
    );
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("plan \"growth\" allows budgets up to"),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
    control.admin_json(&[
        "budgets",
        "create",
        "acme-month",
        "--account",
        "acme",
        "--limit-usd",
        "0.000001",
    ]);
    let took = until_status(&[&a, &b], &k2, 402).await;
    assert!(took < Duration::from_secs(2), "the budget took {took:?}");
    control.admin_json(&["budgets", "set-limit", "acme-month", "100"]);
    let took = until_status(&[&a, &b], &k2, 200).await;
    assert!(took < Duration::from_secs(2), "the new limit took {took:?}");

    // Both sidecars shipped every call they made for the account: the
    // ledger's successful requests are the provider's, and its cost is
    // theirs at the receipts' price.
    let one = request(&a, ("x-api-key", k2.as_str())).await;
    assert_eq!(one.status(), 200);
    let price = nusd(one.headers()["x-tollgate-cost-usd"].to_str().unwrap());
    one.bytes().await.unwrap();
    let served = fake.requests().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = control
            .call(
                Method::GET,
                "/api/v1/llm/usage?account=acme&group_by=status",
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let ok = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "ok")
            .map(|r| {
                (
                    r["requests"].as_u64().unwrap(),
                    r["cost_nusd"].as_u64().unwrap(),
                )
            });
        if ok == Some((served, served * price)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {ok:?}, provider served {served} at {price} each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The control endpoint goes away; a sidecar restarted now starts from
    // its sealed snapshot and still serves the synced keys. (The fleet
    // budget goes first: a sidecar that cannot reach the control endpoint
    // holds no lease of it, and its `deny` would refuse; see leases.rs.)
    control.admin_json(&["budgets", "delete", "acme-month"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let dir = a.data_dir.clone();
    let a_log = a.log();
    drop(a);
    assert!(control.stop());
    let a = start(Some(&dir));
    assert_eq!(with_key(&a, &k2).await, 200);
    assert_eq!(last_upstream_key(&fake), byok2);
    assert_eq!(with_key(&a, &k1).await, 401);
    assert!(
        a.log().contains("the sealed snapshot in the data dir"),
        "{}",
        a.log()
    );

    // No secret in the clear in any data dir or log.
    let logs = [a_log, a.log(), b.log(), control.log()].join("\n");
    let secrets = [
        byok1,
        byok2,
        k1.as_str(),
        k2.as_str(),
        cred.as_str(),
        master.as_str(),
        ADMIN_TOKEN,
    ];
    for s in secrets {
        assert!(!logs.contains(s), "a log holds a secret");
    }
    for d in [&dir, &b.data_dir, &control.data_dir] {
        for (entry, bytes) in support::files_under(d) {
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{entry} holds a secret in the clear"
                );
            }
        }
    }
    assert!(dir.join("control-snapshot").exists());
}

/// A plan without the cache: its accounts are never answered from it, on
/// the same sidecar that answers other accounts' repeats from it; a plan's
/// rpm binds its accounts there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_cache_is_never_answered_from_it() {
    let fake = FakeProvider::start().await;
    let control = Control::start("[plans.nocache]\nmax_gateway_keys = 5\ncache = false\nrpm = 2\n");
    control.admin_json(&["accounts", "create", "free", "--plan", "nocache"]);
    control.admin_json(&["accounts", "create", "paid", "--plan", "pro"]);
    let cred = control.admin_secret(&["sidecars", "create", "s"]);
    let t = Builder::new(&fake.base_url())
        .top(&format!("control_url = \"{}\"", control.url()))
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("TOLLGATE_CONTROL_CREDENTIAL", &cred)
        .start();
    let cache_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-tollgate-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut seen = Vec::new();
    for account in ["paid", "paid", "free", "free"] {
        let r = request(&t, ("x-tollgate-account", account)).await;
        assert_eq!(r.status(), 200);
        seen.push((account, cache_of(&r)));
        r.bytes().await.unwrap();
    }
    assert_eq!(
        seen,
        [
            ("paid", "miss".to_string()),
            ("paid", "hit".into()),
            ("free", "bypass".into()),
            ("free", "bypass".into())
        ]
    );
    assert_eq!(
        fake.requests().len(),
        3,
        "the free account's repeat went to the provider"
    );

    // A plan without batch access (trial) gets a clear 403 from the batch
    // APIs, in the provider's shape; one with it goes through.
    control.admin_json(&["accounts", "create", "tri", "--plan", "trial"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch = |account: &'static str, path: &'static str| {
        let url = format!("{}{path}", t.url());
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("anthropic-version", "2023-06-01")
                .header("x-tollgate-account", account)
                .body(r#"{"requests":[{"custom_id":"a","params":{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}}]}"#)
                .send()
                .await
                .unwrap()
        }
    };
    for path in [
        "/v1/messages/batches",
        "/anthropic/v1/messages/batches/msgbatch_1/cancel",
    ] {
        let r = batch("tri", path).await;
        assert_eq!(r.status(), 403, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("without batch access"),
            "{v}"
        );
    }
    let before = fake.requests().len();
    let r = batch("paid", "/v1/messages/batches").await;
    assert_ne!(r.status(), 403);
    assert_eq!(
        fake.requests().len(),
        before + 1,
        "a batch of a plan with access is forwarded"
    );
}
