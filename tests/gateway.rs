//! The gateway surface end to end (`/api/v1/llm/chat`, `/chat/stream`,
//! `/usage`): the real binary in front of the fake provider, spoken to with
//! `curl` (as a process) and with a plain HTTP client. Chat runs the same
//! stages as `/v1/messages`: receipts, exact usage events, budgets, rate
//! limits, routing to an OpenAI-dialect target, Idempotency-Key replays;
//! usage is scoped to the caller's account (local ledger, or the control
//! endpoint's with `control_url`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::control::{Control, ADMIN_TOKEN};
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-GATEWAY-5a1f";
const BACKUP_KEY: &str = "sk-backup-injected-GATEWAY-0b3c";
/// `x-fake-usage` of most requests here, and its cost on claude-sonnet-4-5
/// ($3 / $15 per MTok).
const USAGE: &str = "input=120,output=30";
const COST_NUSD: u64 = 120 * 3_000 + 30 * 15_000;

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 64,
           "messages": [{"role": "user", "content": text}]})
}

/// POST `body` to the gateway `path` with `headers` (no provider headers:
/// the surface needs none).
async fn post(
    t: &Tollgate,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", t.url()))
        .header("x-fake-usage", USAGE)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn nusd(usd: &str) -> u64 {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<9}");
    int.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

/// `curl -sS -i <args>`: the status, the lower-cased headers and the body.
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn curl_header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The SSE event names of a stream (keep-alive `ping`s aside), and its
/// closing receipt comment.
fn sse(text: &str) -> (Vec<String>, Value) {
    let events = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .filter(|e| *e != "ping")
        .map(str::to_string)
        .collect();
    let at = text
        .rfind(": tollgate ")
        .expect("a closing receipt comment");
    let receipt = text[at + ": tollgate ".len()..].trim_end();
    assert!(
        !receipt.contains('\n'),
        "the receipt is the stream's last line: {receipt}"
    );
    (events, serde_json::from_str(receipt).unwrap())
}

fn started(fake: &FakeProvider) -> Builder {
    Builder::new(&fake.base_url()).env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
}

/// What reached the fake: a Messages call with the injected key, the
/// default version, JSON, and nothing of tollgate's.
fn assert_upstream(fake: &FakeProvider, n: usize, stream: bool) {
    let seen = fake.requests();
    assert_eq!(seen.len(), n, "{seen:?}");
    for s in &seen {
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.header("x-api-key"), Some(ANTHROPIC_KEY));
        assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert!(s.headers.iter().all(|(k, _)| !k.starts_with("x-tollgate-")));
        assert_eq!(s.json()["stream"].as_bool().unwrap_or(false), stream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_a_message_with_receipts_and_an_exact_usage_event() {
    let fake = FakeProvider::start().await;
    let t = started(&fake).no_cache().start();

    // A plain HTTP client.
    let r = post(
        &t,
        "/api/v1/llm/chat",
        &chat_body("claude-sonnet-4-5", "Hello"),
        &[
            ("x-tollgate-account", "acme"),
            ("x-tollgate-tags", "team=search"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), "anthropic");
    assert_eq!(header(&r, "x-tollgate-model"), "claude-sonnet-4-5");
    assert_eq!(header(&r, "x-tollgate-cache"), "bypass");
    assert_eq!(nusd(&header(&r, "x-tollgate-cost-usd")), COST_NUSD);
    let id = header(&r, "x-tollgate-request-id");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["usage"]["input_tokens"], 120);
    assert_upstream(&fake, 1, false);
    let e = t.wait_event(&id).await;
    assert_eq!(e["account"], "acme");
    assert_eq!(e["tags"], json!([["team", "search"]]));
    assert_eq!(e["provider"], "anthropic");
    assert_eq!(e["model"], "claude-sonnet-4-5");
    assert_eq!(e["route"], "sync");
    assert_eq!(e["status"], "ok");
    assert_eq!(e["input_tokens"], 120);
    assert_eq!(e["output_tokens"], 30);
    assert_eq!(e["cost_nusd"], COST_NUSD);

    // curl as a process, with `-d` (a form content-type) and no version header.
    let (status, headers, body) = curl(&[
        &format!("{}/api/v1/llm/chat", t.url()),
        "-H",
        &format!("x-fake-usage: {USAGE}"),
        "-H",
        "x-tollgate-account: acme",
        "-d",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi from curl"}]}"#,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(curl_header(&headers, "x-tollgate-provider"), "anthropic");
    assert_eq!(
        nusd(curl_header(&headers, "x-tollgate-cost-usd")),
        COST_NUSD
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_upstream(&fake, 2, false);
    let e = t
        .wait_event(curl_header(&headers, "x-tollgate-request-id"))
        .await;
    assert_eq!(
        (e["cost_nusd"].as_u64(), e["route"].as_str()),
        (Some(COST_NUSD), Some("sync"))
    );

    // A body that asks for the other kind of answer: 400, nothing sent.
    let mut streaming = chat_body("claude-sonnet-4-5", "Hello");
    streaming["stream"] = json!(true);
    let r = post(&t, "/api/v1/llm/chat", &streaming, &[]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "x-tollgate-error"), "bad_request");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/llm/chat/stream"),
        "{v}"
    );
    streaming["stream"] = json!(false);
    let r = post(&t, "/api/v1/llm/chat/stream", &streaming, &[]).await;
    assert_eq!(r.status(), 400);
    // The wrong method, and an empty batch: Anthropic-shaped.
    let r = client()
        .get(format!("{}/api/v1/llm/chat", t.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "x-tollgate-error"), "method_not_allowed");
    let r = post(&t, "/api/v1/llm/batch", &json!({"requests": []}), &[]).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(fake.requests().len(), 2, "refusals reach no provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_relays_sse_and_ends_with_the_receipt() {
    let fake = FakeProvider::start().await;
    let t = started(&fake).start();
    let want = [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];

    // A plain HTTP client; the body says nothing of streaming.
    let r = post(
        &t,
        "/api/v1/llm/chat/stream",
        &chat_body("claude-sonnet-4-5", "Stream me"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&r, "x-tollgate-cache"), "miss");
    assert_eq!(
        header(&r, "x-tollgate-cost-usd"),
        "",
        "not known when headers leave"
    );
    let id = header(&r, "x-tollgate-request-id");
    let text = r.text().await.unwrap();
    let (events, receipt) = sse(&text);
    let mut distinct = events.clone();
    distinct.dedup();
    assert_eq!(distinct, want, "{text}");
    assert_eq!(receipt["request_id"], id.as_str());
    assert_eq!(receipt["status"], "ok");
    assert_eq!(nusd(receipt["cost_usd"].as_str().unwrap()), COST_NUSD);
    assert_eq!(receipt["input_tokens"], 120);
    assert_eq!(receipt["output_tokens"], 30);
    assert_upstream(&fake, 1, true);
    let e = t.wait_event(&id).await;
    assert_eq!(e["route"], "stream");
    assert_eq!(e["cost_nusd"], COST_NUSD);

    // curl, the same body again: the exact cache answers it as a stream
    // (the sync and stream paths share /v1/messages' cache entries).
    let (status, headers, body) = curl(&[
        "-N",
        &format!("{}/api/v1/llm/chat/stream", t.url()),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Stream me"}]}"#,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(curl_header(&headers, "x-tollgate-cache"), "hit");
    let (events, receipt) = sse(&body);
    let mut distinct = events;
    distinct.dedup();
    assert_eq!(distinct, want, "{body}");
    assert_eq!(receipt["cache"], "hit");
    assert_eq!(nusd(receipt["cost_usd"].as_str().unwrap()), 0);
    assert_eq!(fake.requests().len(), 1, "a hit reaches no provider");
    // The same question on the sync path is the same cache entry, as JSON.
    let r = post(
        &t,
        "/api/v1/llm/chat",
        &chat_body("claude-sonnet-4-5", "Stream me"),
        &[],
    )
    .await;
    assert_eq!(header(&r, "x-tollgate-cache"), "hit");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_rate_limits_refuse_in_the_anthropic_shape() {
    let fake = FakeProvider::start().await;
    let t = started(&fake)
        .no_cache()
        // The worst case of a 64-token answer is ~$0.001: this pays for none.
        .config("[[budgets]]\nname = \"tiny\"\nscope = \"account:poor\"\nperiod = \"day\"\nlimit_usd = \"0.0001\"\n")
        .config("[[rate_limits]]\nscope = \"account:busy\"\nrpm = 1\n")
        .start();
    let b = chat_body("claude-sonnet-4-5", "Hello");

    let r = post(
        &t,
        "/api/v1/llm/chat",
        &b,
        &[("x-tollgate-account", "poor")],
    )
    .await;
    assert_eq!(r.status(), 402);
    assert_eq!(header(&r, "x-tollgate-error"), "budget_exceeded");
    assert_eq!(header(&r, "x-should-retry"), "false");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "budget_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tiny"),
        "{v}"
    );
    let r = post(
        &t,
        "/api/v1/llm/chat/stream",
        &b,
        &[("x-tollgate-account", "poor")],
    )
    .await;
    assert_eq!(r.status(), 402, "a stream is refused before it starts");
    assert_eq!(fake.requests().len(), 0);

    let r = post(
        &t,
        "/api/v1/llm/chat",
        &b,
        &[("x-tollgate-account", "busy")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(
        &t,
        "/api/v1/llm/chat/stream",
        &b,
        &[("x-tollgate-account", "busy")],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-tollgate-error"), "rate_limited");
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(fake.requests().len(), 1);

    // curl sees the same refusal.
    let (status, headers, body) = curl(&[
        &format!("{}/api/v1/llm/chat", t.url()),
        "-H",
        "x-tollgate-account: poor",
        "-d",
        &b.to_string(),
    ]);
    assert_eq!(status, 402);
    assert_eq!(curl_header(&headers, "x-tollgate-error"), "budget_exceeded");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "budget_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_routes_chat_to_an_openai_dialect_target() {
    let a = FakeProvider::start().await;
    let b = FakeProvider::start().await;
    let t = started(&a)
        .no_cache()
        .env("BACKUP_KEY", BACKUP_KEY)
        .config(&format!(
            "[providers.backup]\ndialect = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"BACKUP_KEY\"\n",
            b.base_url()
        ))
        .config("[aliases.smart]\ntargets = [\"backup/gpt-5\"]\n")
        .start();
    let r = post(&t, "/api/v1/llm/chat", &chat_body("smart", "Route me"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), "backup");
    assert_eq!(header(&r, "x-tollgate-model"), "gpt-5");
    assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5=200");
    let id = header(&r, "x-tollgate-request-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message", "the client's dialect: {v}");
    assert_eq!(v["role"], "assistant");
    let seen = b.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].json()["model"], "gpt-5");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {BACKUP_KEY}").as_str())
    );
    assert!(a.requests().is_empty());
    let e = t.wait_event(&id).await;
    assert_eq!(e["provider"], "backup");
    assert_eq!(e["model"], "gpt-5");
    // gpt-5: $1.25 / $10 per MTok.
    assert_eq!(e["cost_nusd"], 120 * 1_250 + 30 * 10_000);

    // Streamed: Anthropic events translated from the OpenAI chunks.
    let r = post(
        &t,
        "/api/v1/llm/chat/stream",
        &chat_body("smart", "Route me"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), "backup");
    let text = r.text().await.unwrap();
    let (events, receipt) = sse(&text);
    assert_eq!(
        events.first().map(String::as_str),
        Some("message_start"),
        "{text}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("message_stop"),
        "{text}"
    );
    assert_eq!(receipt["provider"], "backup");
    assert_eq!(b.requests().len(), 2);
    assert_eq!(b.requests()[1].json()["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_on_chat_replays_the_first_answer() {
    let fake = FakeProvider::start().await;
    let t = started(&fake).no_cache().start();
    let b = chat_body("claude-sonnet-4-5", "Once only");
    let key = [("idempotency-key", "order-42")];
    let first = post(&t, "/api/v1/llm/chat", &b, &key).await;
    assert_eq!(first.status(), 200);
    let first_id = header(&first, "x-tollgate-request-id");
    let first_body = first.text().await.unwrap();
    // The kept answer is written just after the first one left.
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let r = post(&t, "/api/v1/llm/chat", &b, &key).await;
        if header(&r, "x-tollgate-idempotent-replay") == "true" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "x-tollgate-idempotent-replay"), "true");
    assert_eq!(
        header(&again, "x-tollgate-request-id"),
        first_id,
        "the original's receipts"
    );
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(fake.requests().len(), 1, "one provider call");

    // Same key, another question: 422. The stream path asks another
    // question of the provider (stream: true), so the key is reused there too.
    let r = post(
        &t,
        "/api/v1/llm/chat",
        &chat_body("claude-sonnet-4-5", "Other"),
        &key,
    )
    .await;
    assert_eq!(r.status(), 422);
    assert_eq!(header(&r, "x-tollgate-error"), "idempotency_key_reused");
    let r = post(&t, "/api/v1/llm/chat/stream", &b, &key).await;
    assert_eq!(r.status(), 422);

    // A stream replays as a stream (curl, the same key twice).
    let stream_args = |t: &Tollgate| {
        vec![
            "-N".to_string(),
            format!("{}/api/v1/llm/chat/stream", t.url()),
            "-H".into(),
            "idempotency-key: stream-7".into(),
            "-H".into(),
            format!("x-fake-usage: {USAGE}"),
            "-d".into(),
            b.to_string(),
        ]
    };
    let args = stream_args(&t);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, first) = curl(&args);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (headers, replay) = loop {
        let (status, headers, body) = curl(&args);
        assert_eq!(status, 200);
        if curl_header(&headers, "x-tollgate-idempotent-replay") == "true"
            || Instant::now() > deadline
        {
            break (headers, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        curl_header(&headers, "x-tollgate-idempotent-replay"),
        "true"
    );
    assert!(curl_header(&headers, "content-type").starts_with("text/event-stream"));
    assert_eq!(replay, first);
    assert_eq!(fake.requests().len(), 2);
}

/// Runs `tollgate keys new`; the key and its config entry.
fn new_key(account: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "keys",
            "new",
            "--account",
            account,
            "--name",
            &format!("{account}-app"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().to_string();
    let entry = text[text.find("[[gateway_keys]]").unwrap()..].to_string();
    (key, entry)
}

/// GET the gateway usage with `query` and `headers`: (status, JSON).
async fn usage(t: &Tollgate, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().get(format!("{}/api/v1/llm/usage?{query}", t.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn accounts(v: &Value) -> Vec<String> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["account"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_scoped_to_the_callers_account() {
    let fake = FakeProvider::start().await;
    let t = started(&fake).no_cache().start();
    let b = chat_body("claude-sonnet-4-5", "Count me");
    for account in ["alpha", "alpha", "beta"] {
        let r = post(
            &t,
            "/api/v1/llm/chat",
            &b,
            &[("x-tollgate-account", account)],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    t.wait_events(3).await;
    let (s, v) = usage(
        &t,
        "group_by=account,model",
        &[("x-tollgate-account", "alpha")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["account"], "alpha");
    assert_eq!(v["source"], "sidecar");
    assert_eq!(v["group_by"], json!(["account", "model"]));
    assert_eq!(accounts(&v), ["alpha"]);
    assert_eq!(v["rows"][0]["model"], "claude-sonnet-4-5");
    assert_eq!(v["total"]["requests"], 2);
    assert_eq!(v["total"]["cost_nusd"], 2 * COST_NUSD);
    assert_eq!(v["total"]["input_tokens"], 240);
    // `by=` as on the admin listener; beta sees only its own.
    let (s, v) = usage(&t, "by=account,day", &[("x-tollgate-account", "beta")]).await;
    assert_eq!(s, 200);
    assert_eq!(accounts(&v), ["beta"]);
    assert_eq!(v["total"]["requests"], 1);
    // Asking for another account's rows is refused; so is a bad grouping.
    let (s, v) = usage(&t, "account=alpha", &[("x-tollgate-account", "beta")]).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
    let (s, v) = usage(&t, "group_by=colour", &[]).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    // The default account has no events; the read itself records none.
    let (s, v) = usage(&t, "", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["account"], "default");
    assert_eq!(v["total"]["requests"], 0);
    assert_eq!(
        t.events().await.len(),
        3,
        "usage reads are not usage events"
    );

    // curl.
    let (status, headers, body) = curl(&[
        &format!("{}/api/v1/llm/usage?group_by=account", t.url()),
        "-H",
        "x-tollgate-account: alpha",
    ]);
    assert_eq!(status, 200);
    assert!(curl_header(&headers, "content-type").starts_with("application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accounts(&v), ["alpha"]);
    assert_eq!(v["rows"][0]["requests"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_gateway_keys_usage_needs_a_key_and_reads_its_account() {
    let fake = FakeProvider::start().await;
    let (key_a, entry_a) = new_key("alpha");
    let (key_b, entry_b) = new_key("beta");
    let t = started(&fake)
        .no_cache()
        .config(&format!("{entry_a}\n{entry_b}"))
        .start();
    let b = chat_body("claude-sonnet-4-5", "Keyed");
    for key in [&key_a, &key_b, &key_b] {
        let r = post(&t, "/api/v1/llm/chat", &b, &[("x-api-key", key)]).await;
        assert_eq!(r.status(), 200);
    }
    for s in fake.requests() {
        assert_eq!(
            s.header("x-api-key"),
            Some(ANTHROPIC_KEY),
            "the gateway key never goes upstream"
        );
    }
    t.wait_events(3).await;
    let (s, v) = usage(&t, "group_by=account", &[]).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (s, v) = usage(&t, "group_by=account", &[("x-api-key", "tg_live_wrong")]).await;
    assert_eq!(s, 401, "{v}");
    let bearer = format!("Bearer {key_b}");
    let (s, v) = usage(&t, "group_by=account", &[("authorization", &bearer)]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(accounts(&v), ["beta"]);
    assert_eq!(v["total"]["requests"], 2);
    // The key decides: a header naming another account is refused.
    let (s, _) = usage(
        &t,
        "group_by=account",
        &[("x-api-key", &key_a), ("x-tollgate-account", "beta")],
    )
    .await;
    assert_eq!(s, 403);
    let (status, _, body) = curl(&[
        &format!("{}/api/v1/llm/usage?by=account", t.url()),
        "-H",
        &format!("x-api-key: {key_a}"),
    ]);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accounts(&v), ["alpha"]);
    assert_eq!(v["total"]["requests"], 1);
    let (status, headers, _) = curl(&[&format!("{}/api/v1/llm/usage", t.url())]);
    assert_eq!(status, 401);
    assert_eq!(curl_header(&headers, "x-tollgate-error"), "unauthorized");
    // Refused usage reads count like refused chats.
    let metrics = t.metrics().await;
    for line in [
        "tollgate_gateway_key_rejections_total{reason=\"missing\"} 2",
        "tollgate_gateway_key_rejections_total{reason=\"invalid\"} 1",
        "tollgate_gateway_key_rejections_total{reason=\"account\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_control_endpoint_usage_is_the_accounts_ledger_there() {
    let fake = FakeProvider::start().await;
    let control = Control::start("");
    control.admin_json(&["accounts", "create", "acme", "--plan", "growth"]);
    control.admin_json(&["accounts", "create", "other", "--plan", "growth"]);
    let key_acme = control.admin_secret(&["keys", "create", "acme", "web"]);
    let key_other = control.admin_secret(&["keys", "create", "other", "web"]);
    let cred = control.admin_secret(&["sidecars", "create", "gw"]);
    let t = started(&fake)
        .no_cache()
        .top(&format!("control_url = \"{}\"", control.url()))
        .config("[ship]\ninterval = \"100ms\"\n")
        .env("TOLLGATE_CONTROL_CREDENTIAL", &cred)
        .start();
    let b = chat_body("claude-sonnet-4-5", "Fleet");
    // The synced keys reach the sidecar shortly after it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post(&t, "/api/v1/llm/chat", &b, &[("x-api-key", &key_acme)]).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in [&key_other, &key_other] {
        assert_eq!(
            post(&t, "/api/v1/llm/chat", &b, &[("x-api-key", key)])
                .await
                .status(),
            200
        );
    }
    // Shipped and acknowledged: the sidecar's outbox no longer holds them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (s, v) = control
            .call(
                reqwest::Method::GET,
                "/api/v1/llm/usage?group_by=account",
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(s, 200);
        if v["total"]["requests"] == 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(accounts(&v), ["acme", "other"]);

    let (s, v) = usage(&t, "group_by=account,model", &[("x-api-key", &key_other)]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["source"], "control");
    assert_eq!(v["account"], "other");
    assert_eq!(accounts(&v), ["other"]);
    assert_eq!(v["total"]["requests"], 2);
    assert_eq!(v["total"]["cost_nusd"], 2 * COST_NUSD);
    let (s, v) = usage(&t, "by=account", &[("x-api-key", &key_acme)]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(accounts(&v), ["acme"]);
    assert_eq!(v["total"]["requests"], 1);
    let (s, v) = usage(&t, "", &[]).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    // Control down: a bad gateway, in the Anthropic shape.
    drop(control);
    let (s, v) = usage(&t, "", &[("x-api-key", &key_acme)]).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(!v.to_string().contains(&key_acme), "no key in an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_what_is_served() {
    let doc: Value = serde_json::from_str(tollgate::proxy::gateway::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut served = tollgate::proxy::gateway::PATHS.to_vec();
    served.sort_unstable();
    assert_eq!(documented, served);
    // Every $ref resolves.
    let text = tollgate::proxy::gateway::OPENAPI;
    for r in text.split("\"$ref\": \"#/").skip(1) {
        let target = &r[..r.find('"').unwrap()];
        let mut node = &doc;
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref {target}");
    }
    // Each documented operation is answered by the sidecar (not a 404);
    // the batch submit first, whose id the status path takes.
    let fake = FakeProvider::start().await;
    let t = started(&fake).start();
    let mut batch_id = String::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let url = format!("{}{}", t.url(), path.replace("{id}", &batch_id));
            let mut req = client().request(m, url);
            if path == "/api/v1/llm/batch" {
                req = req.json(&batch_request(&["doc-1"]));
            } else if method == "post" {
                req = req.json(&chat_body("claude-sonnet-4-5", "doc"));
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{method} {path}");
            if path == "/api/v1/llm/batch" {
                let v: Value = r.json().await.unwrap();
                batch_id = v["id"].as_str().unwrap().to_string();
            }
            assert!(
                ops[method]["responses"]["200"].is_object(),
                "{method} {path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_https_proxy_tunnel_the_paths_are_the_providers() {
    let fake = FakeProvider::start().await;
    let ca = tempfile::tempdir().unwrap();
    let ca_dir = ca.path().join("ca");
    support::tollgate::ca_init(&ca_dir);
    let port = support::tollgate::free_port();
    let t = started(&fake)
        .top(&format!(
            "forward_proxy_listen = \"127.0.0.1:{port}\"\nca_dir = \"{}\"\n",
            ca_dir.display()
        ))
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", t.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let proxy = format!("http://127.0.0.1:{port}");
    let cacert = ca_dir.join("ca.pem");
    let through = |method: &str, path: &str| {
        curl(&[
            "--proxy",
            &proxy,
            "--cacert",
            cacert.to_str().unwrap(),
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}"#,
            &format!("https://api.anthropic.com{path}"),
        ])
    };
    // The provider host's own paths: forwarded as they are, not the gateway's.
    let (_, headers, body) = through("POST", "/api/v1/llm/chat");
    assert_eq!(curl_header(&headers, "x-tollgate-provider"), "", "{body}");
    let (_, _, body) = through("GET", "/api/v1/llm/usage");
    assert!(!body.contains("\"source\""), "{body}");
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/v1/llm/chat", "/api/v1/llm/usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_example_runs_against_the_sidecar() {
    let fake = FakeProvider::start().await;
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = std::fs::read_to_string(format!("{dir}/examples/gateway/tollgate.toml")).unwrap();
    let t = started(&fake)
        .env("OPENAI_API_KEY", "sk-openai-injected-GATEWAY")
        .config(&config)
        .start();
    let out = Command::new("sh")
        .arg(format!("{dir}/examples/gateway/curl.sh"))
        .env("TOLLGATE", t.url())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "x-tollgate-provider: anthropic",
        ": tollgate {",
        "x-tollgate-idempotent-replay: true",
        "x-tollgate-provider: openai",
        "x-tollgate-attempts: openai/gpt-4o=200",
        "\"source\":\"sidecar\"",
        "\"account\":\"acme\"",
        "\"object\":\"batch\"",
        "\"status\":\"in_progress\"",
        "\"status\":\"settled\"",
        "\"custom_id\":\"q2\"",
        "\"result\":\"succeeded\"",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
}

// === batches ===

/// The model of the batch tests, and its batch price (the built-in table).
const BATCH_MODEL: &str = "claude-haiku-4-5-20251001";
const MONTHLY: &str =
    "[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"10.00\"\n";

/// A gateway batch body: one Messages request per id, each reporting the
/// usage the fake is told in its `metadata.user_id` (the fake's control).
fn batch_request(ids: &[&str]) -> Value {
    let requests: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let usage = format!("x-fake-usage:input={},output={}", 100 + i * 10, 20 + i);
            json!({"custom_id": id, "params": {
                "model": BATCH_MODEL, "max_tokens": 200,
                "metadata": {"user_id": usage},
                "messages": [{"role": "user", "content": format!("item {id}")}]}})
        })
        .collect();
    json!({ "requests": requests })
}

fn batch_creates(fake: &FakeProvider) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/messages/batches")
        .count()
}

/// GET the gateway's status of batch `id`: (status, JSON).
async fn batch_status(t: &Tollgate, id: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().get(format!("{}/api/v1/llm/batch/{id}", t.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Reads the batch's status until it is settled.
async fn until_settled(t: &Tollgate, id: &str, headers: &[(&str, &str)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = batch_status(t, id, headers).await;
        assert_eq!(s, 200, "{v}");
        if v["status"] == "settled" {
            return v;
        }
        assert!(
            ["in_progress", "ended"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
        assert!(Instant::now() < deadline, "{v}\n{}", t.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checks of a settled batch: every item's result is the fake's, its
/// tokens the ones it reported, its cost those tokens at the batch price
/// and exactly its usage event's (route `batch`, one per `custom_id`);
/// the totals add up and equal the budget's spend.
async fn check_settled(t: &Tollgate, fake: &FakeProvider, v: &Value, account: &str) {
    let id = v["id"].as_str().unwrap();
    let truth = &fake.batches()["anthropic"][id]["items"];
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), v["item_count"].as_u64().unwrap() as usize);
    // Journaled before the record says settled; in the ledger just after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events: Vec<Value> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e["batch"]["batch_id"] == id)
            .collect();
        if events.len() >= items.len() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        events.len(),
        items.len(),
        "one event per custom_id: {events:?}"
    );
    let mut spent = 0;
    for item in items {
        let cid = item["custom_id"].as_str().unwrap();
        let fake_item = &truth[cid];
        assert_eq!(item["result"], fake_item["outcome"], "{cid}: {item}");
        let e = events
            .iter()
            .find(|e| e["batch"]["custom_id"] == cid)
            .unwrap();
        assert_eq!(e["route"], "batch");
        assert_eq!(e["account"], account);
        for kind in [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ] {
            assert_eq!(item["usage"][kind], e[kind], "{cid} {kind}");
            let reported = fake_item["reported_usage"][kind].as_u64().unwrap_or(0);
            assert_eq!(item["usage"][kind], reported, "{cid} {kind}");
        }
        let usage = tollgate::dialect::Usage {
            input_tokens: item["usage"]["input_tokens"].as_u64().unwrap(),
            output_tokens: item["usage"]["output_tokens"].as_u64().unwrap(),
            ..Default::default()
        };
        let cost = item["cost_nusd"].as_u64().unwrap();
        assert_eq!(e["cost_nusd"], cost, "{cid}");
        assert_eq!(nusd(item["cost_usd"].as_str().unwrap()), cost);
        if item["result"] == "succeeded" {
            let at_batch_price = tollgate::meter::prices::PriceTable::builtin()
                .cost(BATCH_MODEL, &usage, true)
                .nusd;
            assert_eq!(cost, at_batch_price, "{cid}");
            assert!(cost > 0);
        } else {
            assert_eq!(cost, 0, "{cid}");
        }
        spent += cost;
    }
    let reserved = v["reserved_nusd"].as_u64().unwrap();
    assert_eq!(v["spent_nusd"], spent);
    assert_eq!(v["released_nusd"], reserved - spent);
    assert_eq!(nusd(v["spent_usd"].as_str().unwrap()), spent);
    assert!(v["settled_at"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_submitted_and_settled_per_item_at_the_batch_price() {
    let fake = FakeProvider::start().await;
    let (key_a, entry_a) = new_key("alpha");
    let (key_b, entry_b) = new_key("beta");
    let t = started(&fake)
        .no_cache()
        .config(&format!("{MONTHLY}{entry_a}\n{entry_b}"))
        .start();
    let alpha = [("x-api-key", key_a.as_str())];

    // A plain HTTP client: succeeded, errored and expired items.
    let r = post(
        &t,
        "/api/v1/llm/batch",
        &batch_request(&["ok-1", "ok-2", "err-1", "exp-1"]),
        &[("x-api-key", &key_a), ("x-fake-batch-ms", "300")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), "anthropic");
    assert!(!header(&r, "x-tollgate-request-id").is_empty());
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("msgbatch_"), "{created}");
    assert_eq!(created["object"], "batch");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["provider"], "anthropic");
    assert_eq!(created["account"], "alpha");
    assert_eq!(created["item_count"], 4);
    assert_eq!(created["models"], json!([BATCH_MODEL]));
    assert!(created["created_at"].is_string());
    assert!(created.get("items").is_none(), "{created}");
    let reserved = created["reserved_nusd"].as_u64().unwrap();
    assert_eq!(nusd(created["reserved_usd"].as_str().unwrap()), reserved);
    // Each item's bound (200 output tokens) at the batch price, at least.
    assert!(reserved > 4 * 200 * 2_500, "{created}");
    assert_eq!(
        support::batches::budget(&t).await,
        (0, reserved),
        "held while it runs"
    );
    // One create reached the provider, with the injected key only.
    assert_eq!(batch_creates(&fake), 1);
    for s in fake.requests() {
        assert_eq!(s.header("x-api-key"), Some(ANTHROPIC_KEY), "{}", s.path);
        assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
        assert!(s.headers.iter().all(|(_, v)| !v.contains(&key_a)));
    }

    // Another account's key, an unknown id: the same 404.
    let (s, v) = batch_status(&t, &id, &[("x-api-key", &key_b)]).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    let (s, unknown) = batch_status(&t, "msgbatch_nobody", &alpha).await;
    assert_eq!(s, 404);
    assert_eq!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .replace("msgbatch_nobody", &id),
        v["error"]["message"]
            .as_str()
            .unwrap()
            .replace("beta", "alpha"),
        "nothing tells the two apart"
    );
    let (s, _) = batch_status(&t, &id, &[]).await;
    assert_eq!(s, 401, "a key is required");

    // Polled until settled: per item, the usage events' numbers.
    let settled = until_settled(&t, &id, &alpha).await;
    assert_eq!(settled["items"].as_array().unwrap().len(), 4);
    let results: Vec<&str> = settled["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["succeeded", "succeeded", "errored", "expired"]);
    check_settled(&t, &fake, &settled, "alpha").await;
    let spent = settled["spent_nusd"].as_u64().unwrap();
    assert_eq!(
        support::batches::budget(&t).await,
        (spent, 0),
        "the budget spent their sum"
    );
    let (s, again) = batch_status(&t, &id, &alpha).await;
    assert_eq!(
        (s, &again),
        (200, &settled),
        "a settled batch reads the same"
    );
    // Still nobody else's.
    let (s, _) = batch_status(&t, &id, &[("x-api-key", &key_b)]).await;
    assert_eq!(s, 404);

    // curl as a process: submit, then read until settled.
    let body = batch_request(&["curl-ok", "err-curl"]).to_string();
    let (status, headers, text) = curl(&[
        &format!("{}/api/v1/llm/batch", t.url()),
        "-H",
        &format!("x-api-key: {key_b}"),
        "-H",
        "x-fake-batch-ms: 50",
        "-d",
        &body,
    ]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(curl_header(&headers, "x-tollgate-provider"), "anthropic");
    let v: Value = serde_json::from_str(&text).unwrap();
    let curl_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (&v["account"], &v["item_count"]),
        (&json!("beta"), &json!(2))
    );
    let url = format!("{}/api/v1/llm/batch/{curl_id}", t.url());
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (status, headers, text) = curl(&[&url, "-H", &format!("x-api-key: {key_b}")]);
        assert_eq!(status, 200, "{text}");
        assert!(curl_header(&headers, "content-type").starts_with("application/json"));
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["status"] == "settled" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    check_settled(&t, &fake, &v, "beta").await;
    let (status, _, _) = curl(&[&url, "-H", &format!("x-api-key: {key_a}")]);
    assert_eq!(status, 404);
    let total = spent + v["spent_nusd"].as_u64().unwrap();
    assert_eq!(support::batches::budget(&t).await, (total, 0));
    assert_eq!(batch_creates(&fake), 2);
}

/// `batches.retention`: a settled batch's record goes at a poll once it is
/// older; its usage events and its spend stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_batch_record_goes_after_the_retention_and_its_events_stay() {
    let fake = FakeProvider::start().await;
    let (key, entry) = new_key("alpha");
    let t = started(&fake)
        .no_cache()
        .config(&format!(
            "{MONTHLY}{entry}\n[batches]\npoll_interval = \"200ms\"\nretention = \"2s\"\n"
        ))
        .start();
    let alpha = [("x-api-key", key.as_str())];
    let r = post(
        &t,
        "/api/v1/llm/batch",
        &batch_request(&["ok-1", "ok-2"]),
        &[("x-api-key", &key), ("x-fake-batch-ms", "50")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let settled = until_settled(&t, &id, &alpha).await;
    let spent = settled["spent_nusd"].as_u64().unwrap();
    assert!(spent > 0, "{settled}");
    let settled_at = Instant::now();
    // Kept for the retention (a poll every 200 ms does not take it early).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (s, v) = batch_status(&t, &id, &alpha).await;
    assert_eq!(s, 200, "{v}");
    // Then gone, within a few polls past it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = batch_status(&t, &id, &alpha).await;
        if s == 404 {
            assert_eq!(v["error"]["type"], "not_found_error", "{v}");
            break;
        }
        assert_eq!(s, 200, "{v}");
        assert!(Instant::now() < deadline, "never pruned: {v}\n{}", t.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled_at.elapsed() >= Duration::from_millis(1_500),
        "pruned before the retention"
    );
    assert!(t.log().contains("pruned batch records"), "{}", t.log());
    // The ledger and the budget keep what it spent.
    let events = support::batches::batch_events(&t.events().await);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(support::batches::budget(&t).await, (spent, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_fit_the_budget_is_a_402_before_anything_is_sent() {
    let fake = FakeProvider::start().await;
    // $0.001: one item of 200 output tokens at Haiku's batch price
    // ($2.50 / MTok) fits, four do not.
    let t = started(&fake)
        .no_cache()
        .config(&MONTHLY.replace("10.00", "0.001"))
        .start();
    let r = post(
        &t,
        "/api/v1/llm/batch",
        &batch_request(&["a", "b", "c", "d"]),
        &[("x-tollgate-account", "acme")],
    )
    .await;
    assert_eq!(r.status(), 402);
    assert_eq!(header(&r, "x-tollgate-error"), "budget_exceeded");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "budget_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("monthly"),
        "{v}"
    );
    assert!(fake.requests().is_empty(), "nothing reached the provider");
    assert_eq!(support::batches::budget(&t).await, (0, 0), "nothing held");
    // curl sees the same refusal.
    let (status, headers, body) = curl(&[
        &format!("{}/api/v1/llm/batch", t.url()),
        "-d",
        &batch_request(&["a", "b", "c", "d"]).to_string(),
    ]);
    assert_eq!(status, 402, "{body}");
    assert_eq!(curl_header(&headers, "x-tollgate-error"), "budget_exceeded");
    assert!(fake.requests().is_empty());
    // One item fits, and is sent.
    let r = post(&t, "/api/v1/llm/batch", &batch_request(&["a"]), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(batch_creates(&fake), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_submit_retried_with_its_idempotency_key_creates_one_batch() {
    let fake = FakeProvider::start().await;
    let t = started(&fake).no_cache().config(MONTHLY).start();
    let body = batch_request(&["ok-1", "err-1"]);
    let headers = [
        ("x-tollgate-account", "acme"),
        ("idempotency-key", "nightly-eval-42"),
        ("x-fake-batch-ms", "100"),
    ];
    let first = post(&t, "/api/v1/llm/batch", &body, &headers).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-tollgate-idempotent-replay"), "");
    let first: Value = first.json().await.unwrap();
    for _ in 0..2 {
        let again = post(&t, "/api/v1/llm/batch", &body, &headers).await;
        assert_eq!(again.status(), 200);
        assert_eq!(header(&again, "x-tollgate-idempotent-replay"), "true");
        let again: Value = again.json().await.unwrap();
        assert_eq!(again, first, "the same record, replayed");
    }
    assert_eq!(batch_creates(&fake), 1, "one batch at the provider");
    let reserved = first["reserved_nusd"].as_u64().unwrap();
    assert_eq!(
        support::batches::budget(&t).await.1,
        reserved,
        "reserved once"
    );
    // The same key with another body is a 422; on the provider's own path
    // (another answer shape) too.
    let other = post(&t, "/api/v1/llm/batch", &batch_request(&["x"]), &headers).await;
    assert_eq!(other.status(), 422);
    let native = client()
        .post(format!("{}/v1/messages/batches", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-tollgate-account", "acme")
        .header("idempotency-key", "nightly-eval-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(native.status(), 422);
    assert_eq!(batch_creates(&fake), 1);
    // It settles once.
    let id = first["id"].as_str().unwrap();
    let acme = [("x-tollgate-account", "acme")];
    let settled = until_settled(&t, id, &acme).await;
    check_settled(&t, &fake, &settled, "acme").await;
    assert_eq!(
        support::batches::budget(&t).await,
        (settled["spent_nusd"].as_u64().unwrap(), 0)
    );
}
