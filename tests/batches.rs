//! Anthropic Message Batches through the real binary: every batch object
//! tollgate returns has its `results_url` pointed back at tollgate (the
//! listener and path prefix the client used), so the official SDK's
//! `results()` comes through tollgate and reaches the provider with the
//! injected key, never the client's credential or gateway key.
//! (Reservation and settlement: `tests/batch_settlement.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_provider::{FakeProvider, Recorded};
use support::sdk::{run_script, sdk_python};
use support::tollgate::{ca_init, free_port, Builder, Tollgate};

const INJECTED: &str = "sk-ant-injected-BATCHES-5e1d";
const CLIENT_KEY: &str = "sk-ant-client-BATCHES-never-upstream";

/// Runs `tollgate keys new`; returns the key and its config entry.
fn new_key(account: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["keys", "new", "--account", account, "--name", "batch-app"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().to_string();
    let entry = text[text.find("[[gateway_keys]]").unwrap()..].to_string();
    (key, entry)
}

/// Every request the fake saw carried the injected key and nothing of the
/// client's: no other `x-api-key`, no `authorization`, no gateway key.
fn all_keyed(seen: &[Recorded], client: &str) {
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
        r.assert_carries_none(&[client, "tg_live_"]);
    }
}

/// The results GETs the fake saw for batch `id` (under any base path) on
/// behalf of a client (tollgate's own read when it settles the batch is
/// not one of them).
fn results_gets<'a>(seen: &'a [Recorded], id: &str) -> Vec<&'a Recorded> {
    let tail = format!("/v1/messages/batches/{id}/results");
    seen.iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&tail))
        .filter(|r| {
            r.header("user-agent")
                .is_none_or(|ua| !ua.contains("(batch settlement)"))
        })
        .collect()
}

/// The official SDK in base-URL mode, with `api_key` (a gateway key or a
/// client credential) and `base` (tollgate's URL, with or without a
/// provider prefix): create, wait, results, list. Returns the batch id.
async fn sdk_round(fake: &FakeProvider, base: &str, api_key: &str) -> String {
    let python = sdk_python("anthropic-current").await;
    fake.clear();
    let plan = json!([
        {"name": "A", "op": "create", "headers": {"x-fake-batch-ms": "200"}, "requests": [
            {"custom_id": "ok-1", "usage": "input=100,output=20"},
            {"custom_id": "ok-2"},
            {"custom_id": "err-1"},
        ]},
        {"name": "A-ended", "op": "wait", "batch": "A"},
        {"name": "A-again", "op": "retrieve", "batch": "A"},
        {"name": "A-results", "op": "results", "batch": "A"},
        {"name": "list", "op": "list", "limit": 5},
    ]);
    let run = run_script(
        &python,
        "anthropic_batches.py",
        &[("ANTHROPIC_BASE_URL", base), ("ANTHROPIC_API_KEY", api_key)],
        &plan,
    )
    .await;
    let created = &run.ok("A")["batch"];
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["results_url"].is_null(), "not ended yet: {created}");
    let ours = format!("{base}/v1/messages/batches/{id}/results");
    let ended = run.ok("A-ended");
    assert_eq!(ended["batch"]["processing_status"], "ended");
    assert_eq!(ended["batch"]["results_url"], ours.as_str());
    assert_eq!(run.ok("A-again")["batch"]["results_url"], ours.as_str());
    // The SDK followed the rewritten URL and got every item.
    let results = run.ok("A-results")["results"].as_array().unwrap().clone();
    let mut kinds: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                r["custom_id"].as_str().unwrap().to_string(),
                r["result"]["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("err-1".into(), "errored".into()),
            ("ok-1".into(), "succeeded".into()),
            ("ok-2".into(), "succeeded".into())
        ]
    );
    let list = run.ok("list");
    assert_eq!(list["first_page"]["ids"][0], id.as_str());
    assert_eq!(list["first_page"]["results_urls"][0], ours.as_str());

    // Every call, the results GET included, reached the fake through
    // tollgate: with the injected key, never the client's.
    let seen = fake.requests();
    let gets = results_gets(&seen, &id);
    assert_eq!(gets.len(), 1, "the results came through tollgate once");
    all_keyed(&seen, api_key);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_results_come_through_tollgate_with_the_injected_key() {
    let fake = FakeProvider::start().await;
    let (gateway_key, entry) = new_key("acme");
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(&entry)
        .start();
    // A gateway key as the SDK's api key, tollgate's base URL as is.
    sdk_round(&fake, &t.url(), &gateway_key).await;
    // The provider prefix is kept in the rewritten URL.
    sdk_round(&fake, &format!("{}/anthropic", t.url()), &gateway_key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_results_never_carry_the_clients_own_credential() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .start();
    sdk_round(&fake, &t.url(), CLIENT_KEY).await;
    sdk_round(&fake, &format!("{}/anthropic", t.url()), CLIENT_KEY).await;
}

/// Sends a request to tollgate; status, headers and body.
async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, url)
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-batch-ms", "50");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap())
}

/// A batch created through tollgate at `base`, once it ended.
async fn ended_batch(base: &str) -> Value {
    let item = json!({"custom_id": "ok-1", "params": {
        "model": "claude-haiku-4-5-20251001", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}]}});
    let (status, _, body) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/messages/batches"),
        Some(json!({"requests": [item]})),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let created: Value = serde_json::from_slice(&body).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, body) = call(
            reqwest::Method::GET,
            &format!("{base}/v1/messages/batches/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        // The length is the rewritten body's.
        assert_eq!(
            headers["content-length"].to_str().unwrap(),
            body.len().to_string()
        );
        let batch: Value = serde_json::from_slice(&body).unwrap();
        if batch["processing_status"] == "ended" {
            return batch;
        }
        assert!(Instant::now() < deadline, "{batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrieved_batch_points_at_tollgates_own_port() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .start();
    let port = t.addr.port();
    let batch = ended_batch(&t.url()).await;
    let id = batch["id"].as_str().unwrap();
    let url = batch["results_url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("http://127.0.0.1:{port}/v1/messages/batches/{id}/results")
    );
    // The fake itself answered with its own host: the rewrite is tollgate's.
    let seen = fake.requests();
    let answered = seen
        .iter()
        .rev()
        .find(|r| r.method == "GET" && r.path == format!("/v1/messages/batches/{id}"))
        .unwrap()
        .response_json();
    assert_eq!(
        answered["results_url"],
        format!("{}/v1/messages/batches/{id}/results", fake.base_url())
    );
    // The results (JSONL, piped) through that URL, with the injected key.
    let (status, _, body) = call(reqwest::Method::GET, url, None).await;
    assert_eq!(status, 200);
    let line: Value = serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["custom_id"], "ok-1");
    let seen = fake.requests();
    assert_eq!(results_gets(&seen, id).len(), 1);
    all_keyed(&seen, CLIENT_KEY);
}

// ---------------------------------------------------------------------------
// HTTPS_PROXY mode

/// curl through tollgate's forward proxy; the body.
fn curl(proxy: &str, cacert: &Path, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "20",
            "--proxy",
            proxy,
        ])
        .arg("--cacert")
        .arg(cacert)
        .args([
            "-H",
            "anthropic-version: 2023-06-01",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("x-api-key: {CLIENT_KEY}"),
            "-H",
            "x-fake-batch-ms: 50",
        ])
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Through an intercepted tunnel the client spoke to `api.anthropic.com`:
/// its batches name that host again (whatever the upstream's own host), so
/// fetching the results goes through the proxy and is keyed like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_https_proxy_results_url_names_the_tunnels_host() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ca_init(&ca);
    let port = free_port();
    let t: Tollgate = Builder::new(&fake.base_url())
        .top(&format!(
            "forward_proxy_listen = \"127.0.0.1:{port}\"\nca_dir = \"{}\"",
            ca.display()
        ))
        .env("ANTHROPIC_API_KEY", INJECTED)
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", t.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let proxy = format!("http://127.0.0.1:{port}");
    let cacert = ca.join("ca.pem");
    let item = json!({"custom_id": "ok-1", "params": {
        "model": "claude-haiku-4-5-20251001", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}]}});
    let body = json!({"requests": [item]}).to_string();
    let created: Value = serde_json::from_str(&curl(
        &proxy,
        &cacert,
        &["-d", &body, "https://api.anthropic.com/v1/messages/batches"],
    ))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let retrieve = format!("https://api.anthropic.com/v1/messages/batches/{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let batch = loop {
        let batch: Value = serde_json::from_str(&curl(&proxy, &cacert, &[&retrieve])).unwrap();
        if batch["processing_status"] == "ended" {
            break batch;
        }
        assert!(Instant::now() < deadline, "{batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = batch["results_url"].as_str().unwrap();
    assert_eq!(url, format!("{retrieve}/results"));
    let results = curl(&proxy, &cacert, &[url]);
    let line: Value = serde_json::from_str(results.lines().next().unwrap()).unwrap();
    assert_eq!(line["custom_id"], "ok-1");
    let seen = fake.requests();
    assert_eq!(results_gets(&seen, &id).len(), 1);
    all_keyed(&seen, CLIENT_KEY);
}
