//! Anthropic Message Batches as a metered route, through the real binary
//! and the official SDK: every item's worst case is reserved at the batch
//! price at create (a batch that does not fit is refused before anything is
//! sent), the reservation is held across a `kill -9`, and once the batch
//! ends each `custom_id` becomes exactly one usage event at its real tokens
//! × the model's batch price, the budget settling to their sum.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::batches::{batch_events, budget, settled};
use support::fake_provider::{FakeProvider, Recorded};
use support::sdk::{run_script, sdk_python};
use support::tollgate::{Builder, ProxyMode, Tollgate};
use tollgate::dialect::Usage;
use tollgate::meter::prices::PriceTable;

const INJECTED: &str = "sk-ant-injected-SETTLE-77c2";
const CLIENT_KEY: &str = "sk-ant-client-SETTLE-never-upstream";
const MODEL: &str = "claude-haiku-4-5-20251001";
const BUDGET: &str =
    "[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"10.00\"\n";

/// The usage the fake reports for the succeeded items (`x-fake-usage`).
const OK_1: &str = "input=1200,output=300,cache_write=400,cache_read=500";
const OK_2: &str = "input=70,output=9";

fn usage(input: u64, output: u64, write: u64, read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: write,
        cache_read_input_tokens: read,
        ..Usage::default()
    }
}

/// What the item costs at the batch price (the built-in table).
fn batch_cost(u: &Usage) -> u64 {
    PriceTable::builtin().cost(MODEL, u, true).nusd
}

/// Every request the fake saw carried the injected key and nothing of the
/// client's.
fn all_keyed(seen: &[Recorded]) {
    assert!(!seen.is_empty());
    for r in seen {
        assert_eq!(
            r.header("x-api-key"),
            Some(INJECTED),
            "{} {}",
            r.method,
            r.path
        );
        assert!(r.header("authorization").is_none(), "{}", r.path);
        r.assert_carries_none(&[CLIENT_KEY]);
    }
}

fn creates(seen: &[Recorded]) -> usize {
    seen.iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/v1/messages/batches"))
        .count()
}

/// A plan for `anthropic_batches.py`: one batch with an item of every
/// outcome. `hold-1` keeps it running until it is cancelled (→ canceled);
/// the others are done by then.
fn every_outcome_plan() -> Value {
    json!([
        {"name": "A", "op": "create", "headers": {"x-fake-batch-ms": "50"}, "requests": [
            {"custom_id": "ok-1", "usage": OK_1},
            {"custom_id": "ok-2", "usage": OK_2},
            {"custom_id": "err-1"},
            {"custom_id": "exp-1"},
            {"custom_id": "hold-1"},
        ]},
        // Still in progress (held): the wait gives up after its timeout.
        {"name": "running", "op": "wait", "batch": "A", "timeout": 0.4},
        {"name": "cancel", "op": "cancel", "batch": "A"},
        {"name": "ended", "op": "wait", "batch": "A"},
        {"name": "results", "op": "results", "batch": "A"},
    ])
}

/// The checks of a settled every-outcome batch: one event per `custom_id`,
/// exact tokens at the batch price, the budget's spend their sum, nothing
/// left reserved, no client credential at the provider.
async fn check_settlement(t: &Tollgate, fake: &FakeProvider, run: &support::sdk::SdkRun) {
    let created = &run.ok("A")["batch"];
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        run.ok("running")["batch"]["processing_status"],
        "in_progress"
    );
    assert_eq!(run.ok("ended")["batch"]["processing_status"], "ended");
    let results = run.ok("results")["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 5, "the client got every result: {results:?}");

    settled(t, 5).await;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = batch_events(&t.events().await)
        .into_iter()
        .filter(|(_, e)| e[0]["batch"]["batch_id"] == id.as_str())
        .collect::<BTreeMap<_, _>>();
    assert_eq!(events.len(), 5, "{events:?}");
    for (custom_id, list) in &events {
        assert_eq!(
            list.len(),
            1,
            "one event per custom_id: {custom_id} {list:?}"
        );
    }
    let one = |id: &str| events[id][0].clone();
    let ok1 = usage(1200, 300, 400, 500);
    let ok2 = usage(70, 9, 0, 0);
    for (cid, u) in [("ok-1", &ok1), ("ok-2", &ok2)] {
        let e = one(cid);
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["model"], MODEL);
        assert_eq!(e["input_tokens"], u.input_tokens);
        assert_eq!(e["output_tokens"], u.output_tokens);
        assert_eq!(
            e["cache_creation_input_tokens"],
            u.cache_creation_input_tokens
        );
        assert_eq!(e["cache_read_input_tokens"], u.cache_read_input_tokens);
        assert_eq!(e["cost_nusd"], batch_cost(u), "{cid} at the batch price");
    }
    // Half of the standard price, exactly as the table says.
    assert_eq!(
        batch_cost(&ok2),
        PriceTable::builtin()
            .cost(MODEL, &ok2, false)
            .nusd
            .div_ceil(2)
    );
    assert_eq!(one("err-1")["status"], "provider_error");
    assert_eq!(one("err-1")["error"], "invalid_request_error");
    assert_eq!(one("exp-1")["error"], "expired");
    assert_eq!(one("hold-1")["error"], "canceled");
    for cid in ["err-1", "exp-1", "hold-1"] {
        assert_eq!(one(cid)["cost_nusd"], 0, "{cid}");
        assert_eq!(one(cid)["output_tokens"], 0, "{cid}");
    }
    // The budget spent exactly their sum and holds nothing more.
    let sum = batch_cost(&ok1) + batch_cost(&ok2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (spent, reserved) = budget(t).await;
        if reserved == 0 {
            assert_eq!(spent, sum, "spent = the items' sum");
            break;
        }
        assert!(Instant::now() < deadline, "still reserved: {reserved}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_batches_total{outcome=\"settled\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_batch_items_total{result=\"canceled\"} 1"));
    assert!(metrics.contains("tollgate_batch_reserved_usd 0"));
    let seen = fake.requests();
    assert_eq!(creates(&seen), 1);
    all_keyed(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batch_in_base_url_mode_is_reserved_and_settled_per_custom_id() {
    let python = sdk_python("anthropic-current").await;
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\npoll_interval = \"1h\"\n")
        .start();
    let run = run_script(
        &python,
        "anthropic_batches.py",
        &[
            ("ANTHROPIC_BASE_URL", &t.url()),
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
        ],
        &every_outcome_plan(),
    )
    .await;
    // Settled by the client's retrieve showing it ended (no poll in an hour).
    check_settlement(&t, &fake, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batch_in_https_proxy_mode_is_reserved_and_settled_per_custom_id() {
    let python = sdk_python("anthropic-current").await;
    let fake = FakeProvider::start().await;
    let mode = ProxyMode::new();
    let t = mode
        .on(Builder::new(&fake.base_url()))
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\npoll_interval = \"200ms\"\n")
        .start();
    mode.wait(&t);
    let (proxy, ca_file) = (mode.url(), mode.ca_file());
    let run = run_script(
        &python,
        "anthropic_batches.py",
        &[
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
            ("HTTPS_PROXY", proxy.as_str()),
            ("SSL_CERT_FILE", ca_file.as_str()),
        ],
        &every_outcome_plan(),
    )
    .await;
    check_settlement(&t, &fake, &run).await;
}

/// Sends a request to tollgate.
async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn batch_body(ids: &[&str], max_tokens: u64) -> Value {
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"custom_id": id, "params": {
                "model": MODEL, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "Hi"}]}})
        })
        .collect();
    json!({ "requests": requests })
}

/// Retrieves the batch through tollgate until it has ended.
async fn until_ended(t: &Tollgate, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, batch) = call(
            reqwest::Method::GET,
            &format!("{}/v1/messages/batches/{id}", t.url()),
            None,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{batch}");
        if batch["processing_status"] == "ended" {
            return batch;
        }
        assert!(Instant::now() < deadline, "{batch}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_fit_is_refused_before_anything_is_sent() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        // $0.01: one item of 1,000 output tokens at Haiku's batch price
        // ($2.50 / MTok) fits, four do not.
        .config("[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"0.01\"\n")
        .start();
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&["a", "b", "c", "d"], 1000)),
        &[],
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("monthly"),
        "{body}"
    );
    assert_eq!(creates(&fake.requests()), 0, "nothing was sent");
    assert_eq!(budget(&t).await, (0, 0));
    // One item fits, and is sent.
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&["a"], 1000)),
        &[("x-fake-batch-ms", "5000")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(creates(&fake.requests()), 1);
    let (_, reserved) = budget(&t).await;
    assert!(
        reserved > 1000 * 2_500,
        "the output bound at the batch price: {reserved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_releases_its_unspent_reservation() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(BUDGET)
        .start();
    let (status, batch) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&["hold-1", "hold-2", "hold-3"], 4000)),
        &[("x-fake-batch-ms", "50")],
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let (spent, reserved) = budget(&t).await;
    assert_eq!(spent, 0);
    assert!(
        reserved >= 3 * 4000 * 2_500,
        "three items' worst case: {reserved}"
    );
    assert!(t
        .metrics()
        .await
        .contains("tollgate_batch_reserved_usd 0.03"));
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches/{id}/cancel", t.url()),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    until_ended(&t, &id).await;
    let events = settled(&t, 3).await;
    assert!(events
        .values()
        .all(|e| e[0]["error"] == "canceled" && e[0]["cost_nusd"] == 0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget(&t).await != (0, 0) {
        assert!(Instant::now() < deadline, "{:?}", budget(&t).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_submit_and_settlement_settles_once_and_holds_the_reservation() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Builder::new(&fake.base_url())
            .env("ANTHROPIC_API_KEY", INJECTED)
            .config(BUDGET)
            .config("[batches]\npoll_interval = \"100ms\"\n")
            .data_dir(data.path())
            .start()
    };
    let mut t = start();
    let mut body = batch_body(&["ok-a", "ok-b", "err-c"], 500);
    body["requests"][0]["params"]["metadata"] =
        json!({"user_id": "x-fake-usage:input=800,output=120"});
    body["requests"][1]["params"]["metadata"] =
        json!({"user_id": "x-fake-usage:input=15,output=3,cache_read=40"});
    let (status, batch) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(body),
        &[("x-fake-batch-ms", "2500")],
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let (_, reserved) = budget(&t).await;
    assert!(reserved > 0);
    t.signal(9);
    t.wait_exit(Duration::from_secs(10));

    // Restarted on the same store: the batch still holds its reservation.
    let mut t = start();
    let (spent, held) = budget(&t).await;
    assert_eq!((spent, held), (0, reserved), "held across the restart");
    // Settled by the poller once the provider says it ended.
    let events = settled(&t, 3).await;
    let expected = batch_cost(&usage(800, 120, 0, 0)) + batch_cost(&usage(15, 3, 0, 40));
    assert_eq!(
        events["ok-a"][0]["cost_nusd"],
        batch_cost(&usage(800, 120, 0, 0))
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget(&t).await != (expected, 0) {
        assert!(
            Instant::now() < deadline,
            "{:?} != ({expected}, 0)",
            budget(&t).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed again after settling, and restarted: nothing settles twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.signal(9);
    t.wait_exit(Duration::from_secs(10));
    let t = start();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = batch_events(&t.events().await);
    assert_eq!(events.len(), 3);
    assert!(events.values().all(|e| e.len() == 1), "{events:?}");
    assert_eq!(budget(&t).await, (expected, 0));
    let results = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/results"))
        .count();
    assert_eq!(results, 1, "the results were read once");
    all_keyed(&fake.requests());
}

// ---------------------------------------------------------------------------
// Two sidecars, one control endpoint

/// The control ledger's rows for `account` grouped by model.
async fn ledger_by_model(control: &support::control::Control) -> Vec<Value> {
    let (s, v) = control
        .call(
            reqwest::Method::GET,
            "/api/v1/llm/usage?group_by=model&account=acme",
            Some(support::control::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_retrieving_one_ended_batch_ship_one_event_per_custom_id() {
    let fake = FakeProvider::start().await;
    let control = support::control::Control::start("");
    control.admin_json(&["accounts", "create", "acme", "--plan", "pro"]);
    let cred = control.admin_secret(&["sidecars", "create", "fleet", "--account", "acme"]);
    let sidecar = || {
        Builder::new(&fake.base_url())
            .top(&format!("control_url = \"{}\"", control.url()))
            .config("[ship]\ninterval = \"100ms\"\nmax_backoff = \"300ms\"\n")
            .config("[batches]\npoll_interval = \"150ms\"\n")
            .env("ANTHROPIC_API_KEY", INJECTED)
            .env("TOLLGATE_CONTROL_CREDENTIAL", &cred)
            .start()
    };
    let (a, b) = (sidecar(), sidecar());
    let acme = ("x-tollgate-account", "acme");
    let mut body = batch_body(&["ok-1", "err-2", "exp-3"], 200);
    body["requests"][0]["params"]["metadata"] =
        json!({"user_id": "x-fake-usage:input=40,output=7"});
    let (status, batch) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", a.url()),
        Some(body),
        &[acme, ("x-fake-batch-ms", "100")],
    )
    .await;
    assert_eq!(status, 200, "{batch}\n{}", a.log());
    let id = batch["id"].as_str().unwrap().to_string();
    // Both retrieve it until it has ended, then fetch its results.
    for t in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = call(
                reqwest::Method::GET,
                &format!("{}/v1/messages/batches/{id}", t.url()),
                None,
                &[acme],
            )
            .await;
            assert_eq!(s, 200, "{v}");
            if v["processing_status"] == "ended" {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let (s, _) = call(
            reqwest::Method::GET,
            &format!("{}/v1/messages/batches/{id}/results", t.url()),
            None,
            &[acme],
        )
        .await;
        assert_eq!(s, 200);
    }
    // The items' events reach the control ledger once each: model rows
    // count the items only (the API calls themselves carry no model).
    let cost = batch_cost(&usage(40, 7, 0, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let rows = ledger_by_model(&control).await;
        let items = rows.iter().find(|r| r["model"] == MODEL).cloned();
        if let Some(r) = items.filter(|r| r["requests"] == 3) {
            assert_eq!(r["cost_nusd"], cost, "{r}");
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "{rows:?}\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Settling again (as after a crash, or by another holder of the record)
    // sends the same events again: the control ledger keeps them once. (A
    // standalone sidecar's, as A's leave its outbox once shipped.)
    let c = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config("[batches]\npoll_interval = \"150ms\"\n")
        .start();
    let mut body = batch_body(&["ok-1", "err-2"], 200);
    body["requests"][0]["params"]["metadata"] =
        json!({"user_id": "x-fake-usage:input=40,output=7"});
    let (status, batch) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", c.url()),
        Some(body),
        &[acme, ("x-fake-batch-ms", "50")],
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let mine: Vec<tollgate::meter::event::UsageEvent> = serde_json::from_value(Value::Array(
        settled(&c, 2).await.into_values().flatten().collect(),
    ))
    .unwrap();
    assert_eq!(mine.len(), 2);
    let ingest = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/ingest", control.url()))
            .bearer_auth(&cred)
            .header("content-type", "application/msgpack")
            .body(rmp_serde::to_vec_named(&mine).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    assert_eq!(ingest().await["accepted"], 2);
    assert_eq!(ingest().await["duplicates"], 2, "re-sent: stored once");
    let rows = ledger_by_model(&control).await;
    let now = rows.iter().find(|r| r["model"] == MODEL).unwrap();
    assert_eq!(now["requests"], events["requests"].as_u64().unwrap() + 2);
    // Only the sidecar that created the batch recorded its items.
    assert!(b.events().await.iter().all(|e| e["batch"].is_null()));
    all_keyed(&fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_body_limit_is_a_413_in_anthropics_shape() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\nmax_body_bytes = \"2KiB\"\n")
        .start();
    let ids: Vec<String> = (0..40).map(|i| format!("item-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&ids, 10)),
        &[],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "request_too_large", "{body}");
    assert_eq!(creates(&fake.requests()), 0);
    assert_eq!(budget(&t).await, (0, 0));
    // A batch under the limit goes through.
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&ids[..2], 10)),
        &[],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_provider_refuses_releases_its_reservation() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(BUDGET)
        .start();
    // The API allows [A-Za-z0-9_-] in a custom_id: the fake refuses it.
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/messages/batches", t.url()),
        Some(batch_body(&["ok", "not ok"], 1000)),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["type"], "invalid_request_error",
        "the provider's own answer"
    );
    assert_eq!(creates(&fake.requests()), 1);
    assert_eq!(budget(&t).await, (0, 0), "released");
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_batches_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_batch_reserved_usd 0"));
}
