//! OpenAI Batch API (`/v1/files` + `/v1/batches`) as a metered route,
//! through the real binary, the official `openai` SDK and the in-repo fake:
//! the input file is read and priced once at upload, every item's worst
//! case is reserved at the batch price at create (a batch that does not fit
//! is refused before the create is sent), the reservation is held across a
//! `kill -9`, and once the batch is terminal each `custom_id` becomes
//! exactly one usage event at its real tokens × the model's batch price.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::batches::{batch_events, budget, budget_becomes, settled};
use support::fake_provider::{FakeProvider, Recorded};
use support::sdk::{run_script, sdk_python, SdkRun};
use support::tollgate::{Builder, ProxyMode, Tollgate};
use tollgate::dialect::Usage;
use tollgate::meter::prices::PriceTable;

const INJECTED: &str = "sk-openai-injected-OABATCH-5d1e";
const CLIENT_KEY: &str = "sk-client-OABATCH-never-upstream";
const CHAT: &str = "gpt-4o-mini";
const EMBED: &str = "text-embedding-3-small";
const BUDGET: &str =
    "[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"10.00\"\n";

fn usage(input: u64, output: u64, read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_input_tokens: read,
        ..Usage::default()
    }
}

/// What an item costs at the batch price (the built-in table).
fn batch_cost(model: &str, u: &Usage) -> u64 {
    PriceTable::builtin().cost(model, u, true).nusd
}

fn line(custom_id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
}

fn chat(custom_id: &str, fake_usage: Option<&str>, max_tokens: Option<u64>) -> String {
    let mut body = json!({"model": CHAT, "messages": [{"role": "user", "content": "Hi"}]});
    if let Some(u) = fake_usage {
        body["user"] = json!(format!("x-fake-usage:{u}"));
    }
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    line(custom_id, "/v1/chat/completions", body)
}

/// Every request the fake saw carried the injected key and nothing of the
/// client's.
fn all_keyed(seen: &[Recorded]) {
    assert!(!seen.is_empty());
    for r in seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {INJECTED}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
        r.assert_carries_none(&[CLIENT_KEY]);
    }
}

fn creates(seen: &[Recorded]) -> usize {
    seen.iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/v1/batches"))
        .count()
}

// ---------------------------------------------------------------------------
// The SDK, both modes

const OK_1: (u64, u64, u64) = (100, 20, 30);
const OK_2: (u64, u64, u64) = (70, 9, 0);
const EMB_1: u64 = 8;
const RESP_1: (u64, u64) = (40, 9);

/// A plan for `openai_batches.py`: a chat batch with an item of every
/// outcome (`hold-1` keeps it running until it is cancelled; `exp-1`
/// expires), an embeddings batch and a Responses batch.
fn every_outcome_plan() -> Value {
    let u = |(i, o, r): (u64, u64, u64)| format!("input={i},output={o},cache_read={r}");
    json!([
        {"name": "F1", "op": "upload", "lines": [
            chat("ok-1", Some(&u(OK_1)), Some(300)),
            chat("ok-2", Some(&u(OK_2)), None),
            chat("err-1", None, None),
            chat("exp-1", None, None),
            chat("hold-1", None, None),
        ]},
        {"name": "B1", "op": "create", "file": "F1", "headers": {"x-fake-batch-ms": "60"}},
        {"name": "running", "op": "wait", "batch": "B1", "timeout": 0.4},
        {"name": "cancel", "op": "cancel", "batch": "B1"},
        {"name": "B1-done", "op": "wait", "batch": "B1"},
        {"name": "B1-out", "op": "content", "batch": "B1", "which": "output_file_id"},
        {"name": "B1-err", "op": "content", "batch": "B1", "which": "error_file_id"},
        {"name": "F2", "op": "upload", "lines": [
            line("e-1", "/v1/embeddings", json!({"model": EMBED, "input": ["a", "b"],
                "user": format!("x-fake-usage:input={EMB_1}")})),
        ]},
        {"name": "B2", "op": "create", "file": "F2", "endpoint": "/v1/embeddings",
         "headers": {"x-fake-batch-ms": "40"}},
        {"name": "B2-done", "op": "wait", "batch": "B2"},
        {"name": "B2-out", "op": "content", "batch": "B2", "which": "output_file_id"},
        {"name": "F3", "op": "upload", "lines": [
            line("r-1", "/v1/responses", json!({"model": CHAT, "input": "Hi",
                "user": format!("x-fake-usage:input={},output={}", RESP_1.0, RESP_1.1)})),
        ]},
        {"name": "B3", "op": "create", "file": "F3", "endpoint": "/v1/responses",
         "headers": {"x-fake-batch-ms": "40"}},
        {"name": "B3-done", "op": "wait", "batch": "B3"},
        {"name": "B3-out", "op": "content", "batch": "B3", "which": "output_file_id"},
    ])
}

/// One event per `custom_id` with exact tokens at the batch price, the
/// budget's spend their sum, nothing left reserved, no client credential
/// at the provider.
async fn check_settlement(t: &Tollgate, fake: &FakeProvider, run: &SdkRun) {
    assert_eq!(run.ok("running")["batch"]["status"], "in_progress");
    assert_eq!(run.ok("B1-done")["batch"]["status"], "cancelled");
    assert_eq!(run.ok("B2-done")["batch"]["status"], "completed");
    assert_eq!(run.ok("B3-done")["batch"]["status"], "completed");
    let out = run.ok("B1-out")["lines"].as_array().unwrap().len();
    let err = run.ok("B1-err")["lines"].as_array().unwrap().len();
    assert_eq!(out + err, 5, "the client got every result");

    settled(t, 7).await;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = batch_events(&t.events().await);
    assert_eq!(events.len(), 7, "{events:?}");
    for (custom_id, list) in &events {
        assert_eq!(
            list.len(),
            1,
            "one event per custom_id: {custom_id} {list:?}"
        );
    }
    let one = |id: &str| events[id][0].clone();
    let ok1 = usage(OK_1.0, OK_1.1, OK_1.2);
    let ok2 = usage(OK_2.0, OK_2.1, OK_2.2);
    let emb = usage(EMB_1, 0, 0);
    let resp = usage(RESP_1.0, RESP_1.1, 0);
    let b1 = run.ok("B1")["batch"]["id"].as_str().unwrap().to_string();
    for (cid, model, u) in [
        ("ok-1", CHAT, &ok1),
        ("ok-2", CHAT, &ok2),
        ("e-1", EMBED, &emb),
        ("r-1", CHAT, &resp),
    ] {
        let e = one(cid);
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["provider"], "openai", "{e}");
        assert!(e["model"].as_str().unwrap().starts_with(model), "{e}");
        assert_eq!(e["input_tokens"], u.input_tokens, "{cid}: {e}");
        assert_eq!(e["output_tokens"], u.output_tokens, "{cid}: {e}");
        assert_eq!(
            e["cache_read_input_tokens"], u.cache_read_input_tokens,
            "{cid}"
        );
        assert_eq!(
            e["cost_nusd"],
            batch_cost(model, u),
            "{cid} at the batch price"
        );
        assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{cid}");
    }
    assert_eq!(one("ok-1")["batch"]["batch_id"], b1.as_str());
    // Half of the standard price.
    assert_eq!(
        batch_cost(CHAT, &ok2),
        PriceTable::builtin()
            .cost(CHAT, &ok2, false)
            .nusd
            .div_ceil(2)
    );
    assert_eq!(one("err-1")["status"], "provider_error");
    assert_eq!(one("exp-1")["error"], "expired");
    assert_eq!(one("hold-1")["error"], "canceled");
    for cid in ["err-1", "exp-1", "hold-1"] {
        assert_eq!(one(cid)["cost_nusd"], 0, "{cid}");
        assert_eq!(one(cid)["output_tokens"], 0, "{cid}");
    }
    let sum = [
        batch_cost(CHAT, &ok1),
        batch_cost(CHAT, &ok2),
        batch_cost(EMBED, &emb),
        batch_cost(CHAT, &resp),
    ]
    .iter()
    .sum::<u64>();
    budget_becomes(t, (sum, 0)).await;
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_batches_total{outcome=\"settled\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_batch_items_total{result=\"canceled\"} 1"));
    assert!(metrics.contains("tollgate_batch_reserved_usd 0"));
    let seen = fake.requests();
    assert_eq!(creates(&seen), 3);
    all_keyed(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batches_in_base_url_mode_are_reserved_and_settled_per_custom_id() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("OPENAI_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\npoll_interval = \"1h\"\n")
        .start();
    let base = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_batches.py",
        &[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", CLIENT_KEY)],
        &every_outcome_plan(),
    )
    .await;
    // Settled by the client's retrieves showing them terminal (no poll in an hour).
    check_settlement(&t, &fake, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batches_in_https_proxy_mode_are_reserved_and_settled_per_custom_id() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let mode = ProxyMode::new();
    let t = mode
        .on(Builder::new(&fake.base_url()))
        .env("OPENAI_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\npoll_interval = \"200ms\"\n")
        .start();
    mode.wait(&t);
    let (proxy, ca_file) = (mode.url(), mode.ca_file());
    let run = run_script(
        &python,
        "openai_batches.py",
        &[
            ("OPENAI_API_KEY", CLIENT_KEY),
            ("HTTPS_PROXY", proxy.as_str()),
            ("SSL_CERT_FILE", ca_file.as_str()),
        ],
        &every_outcome_plan(),
    )
    .await;
    check_settlement(&t, &fake, &run).await;
}

// ---------------------------------------------------------------------------
// Plain HTTP

const BOUNDARY: &str = "tollgate-test-boundary-7f3a";

/// A `purpose` + `file` multipart body holding `lines`.
fn multipart(purpose: &str, lines: &[String]) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{}\n\r\n--{BOUNDARY}--\r\n",
        lines.join("\n")
    )
    .into_bytes()
}

/// Uploads `lines` at `base` (`…/v1`); (status, body).
async fn upload(base: &str, key: &str, purpose: &str, lines: &[String]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart(purpose, lines))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A JSON call at `base` (`…/v1`) with the client's key.
async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(CLIENT_KEY);
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

async fn create(base: &str, file: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        &format!("{base}/batches"),
        Some(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}),
        ),
        headers,
    )
    .await
}

/// Retrieves the batch through tollgate until it is terminal.
async fn until_terminal(base: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, batch) = call(
            reqwest::Method::GET,
            &format!("{base}/batches/{id}"),
            None,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{batch}");
        if ["completed", "failed", "expired", "cancelled"]
            .contains(&batch["status"].as_str().unwrap_or_default())
        {
            return batch;
        }
        assert!(Instant::now() < deadline, "{batch}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_fit_is_refused_before_the_create_is_sent() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("OPENAI_API_KEY", INJECTED)
        // $0.01: one item of 10,000 output tokens at gpt-4o-mini's batch
        // price ($0.30 / MTok) fits, four do not.
        .config("[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"0.01\"\n")
        .start();
    // With the provider prefix, as a client naming the provider would.
    let base = format!("{}/openai/v1", t.url());
    let four: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| chat(id, None, Some(10_000)))
        .collect();
    let (status, file) = upload(&base, CLIENT_KEY, "batch", &four).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(budget(&t).await, (0, 0), "an upload reserves nothing");
    let (status, body) = create(&base, &file, &[]).await;
    assert_eq!(status, 402, "{body}");
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

    // A file uploaded straight to the provider (not through this sidecar)
    // is read from the provider at create and priced the same way.
    let (status, direct) = upload(&fake.openai_base_url(), INJECTED, "batch", &four[..1]).await;
    assert_eq!(status, 200, "{direct}");
    let (status, body) = create(&base, &direct, &[("x-fake-batch-ms", "5000")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(creates(&fake.requests()), 1);
    let (_, reserved) = budget(&t).await;
    assert!(
        reserved > 10_000 * 300,
        "the output bound at the batch price: {reserved}"
    );
    let direct_id = direct["id"].as_str().unwrap();
    let read = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/files/{direct_id}/content")))
        .count();
    assert_eq!(read, 1, "the unknown file was read once");
    // Uploads with another purpose pass through untouched.
    let (status, other) = upload(&base, CLIENT_KEY, "fine-tune", &["not jsonl".into()]).await;
    assert_eq!(status, 200, "{other}");
    // (The direct upload used the injected key too.)
    all_keyed(&fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_file_is_a_400_naming_its_line_and_a_large_one_a_413() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("OPENAI_API_KEY", INJECTED)
        .config(BUDGET)
        .config("[batches]\nmax_body_bytes = \"4KiB\"\n")
        .start();
    let base = format!("{}/v1", t.url());
    let (status, body) = upload(
        &base,
        CLIENT_KEY,
        "batch",
        &[chat("a", None, None), "{not json".into()],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json_line", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    let (status, body) = upload(
        &base,
        CLIENT_KEY,
        "batch",
        &[chat("a", None, None), chat("a", None, None)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_custom_id");
    assert_eq!(body["error"]["param"], "custom_id");
    let many: Vec<String> = (0..60)
        .map(|i| chat(&format!("i-{i}"), None, None))
        .collect();
    let (status, body) = upload(&base, CLIENT_KEY, "batch", &many).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(fake.requests().is_empty(), "nothing was sent");
    // A batch over a file whose endpoint is not the batch's is refused too.
    let (status, file) = upload(&base, CLIENT_KEY, "batch", &many[..2]).await;
    assert_eq!(status, 200, "{file}");
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{base}/batches"),
        Some(
            json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                    "completion_window": "24h"}),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "url_mismatch", "{body}");
    assert_eq!(creates(&fake.requests()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_releases_its_unspent_reservation() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("OPENAI_API_KEY", INJECTED)
        .config(BUDGET)
        .start();
    let base = format!("{}/v1", t.url());
    let holds: Vec<String> = (1..=3)
        .map(|i| chat(&format!("hold-{i}"), None, Some(4000)))
        .collect();
    let (status, file) = upload(&base, CLIENT_KEY, "batch", &holds).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = create(&base, &file, &[("x-fake-batch-ms", "50")]).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let (spent, reserved) = budget(&t).await;
    assert_eq!(spent, 0);
    assert!(
        reserved >= 3 * 4000 * 300,
        "three items' worst case: {reserved}"
    );
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{base}/batches/{id}/cancel"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(until_terminal(&base, &id).await["status"], "cancelled");
    let events = settled(&t, 3).await;
    assert!(events
        .values()
        .all(|e| e[0]["error"] == "canceled" && e[0]["cost_nusd"] == 0));
    budget_becomes(&t, (0, 0)).await;
    all_keyed(&fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_upload_create_and_settlement_settles_once() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Builder::new(&fake.base_url())
            .env("OPENAI_API_KEY", INJECTED)
            .config(BUDGET)
            .config("[batches]\npoll_interval = \"100ms\"\n")
            .data_dir(data.path())
            .start()
    };
    let mut t = start();
    let base = format!("{}/v1", t.url());
    let lines = [
        chat("ok-a", Some("input=800,output=120"), Some(500)),
        chat("ok-b", Some("input=15,output=3,cache_read=40"), Some(500)),
        chat("err-c", None, Some(500)),
    ];
    let (status, file) = upload(&base, CLIENT_KEY, "batch", &lines).await;
    assert_eq!(status, 200, "{file}");
    // Killed between the upload and the create: the priced items survive.
    t.signal(9);
    t.wait_exit(Duration::from_secs(10));
    let mut t = start();
    let base = format!("{}/v1", t.url());
    let (status, batch) = create(&base, &file, &[("x-fake-batch-ms", "2500")]).await;
    assert_eq!(status, 200, "{batch}");
    let file_id = file["id"].as_str().unwrap();
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(file_id)),
        "the stored items were used, the file not read again"
    );
    let (_, reserved) = budget(&t).await;
    assert!(reserved > 0);
    t.signal(9);
    t.wait_exit(Duration::from_secs(10));

    // Restarted on the same store: the batch still holds its reservation.
    let mut t = start();
    assert_eq!(budget(&t).await, (0, reserved), "held across the restart");
    // Settled by the poller once the provider says it is terminal.
    let events = settled(&t, 3).await;
    let a = batch_cost(CHAT, &usage(800, 120, 0));
    let expected = a + batch_cost(CHAT, &usage(15, 3, 40));
    assert_eq!(events["ok-a"][0]["cost_nusd"], a);
    budget_becomes(&t, (expected, 0)).await;
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
    let contents = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/content"))
        .count();
    assert_eq!(
        contents, 2,
        "the output and error files were read once each"
    );
    all_keyed(&fake.requests());
}
