//! The data plane end to end: the real `tollgate` binary on ephemeral ports
//! in front of the in-repo fake provider, driven over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-SECRET-7f3a9c";
const OPENAI_KEY: &str = "sk-openai-injected-SECRET-51d2e8";
const OPENROUTER_KEY: &str = "sk-or-v1-injected-SECRET-aa11";
const CLIENT_KEY: &str = "sk-client-own-key-SHOULD-NOT-PASS";

fn with_keys(b: Builder) -> Builder {
    b.env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENROUTER_API_KEY", OPENROUTER_KEY)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn messages_body(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
           "messages": [{"role": "user", "content": "Hello"}]})
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "Hello"}]})
}

/// Asserts that no configured key ever reached the log.
fn assert_no_keys_in_log(t: &Tollgate) {
    let log = t.log();
    for key in [ANTHROPIC_KEY, OPENAI_KEY, OPENROUTER_KEY, CLIENT_KEY] {
        assert!(!log.contains(key), "key {key} leaked into the log");
        assert!(
            !log.contains(&key[key.len() - 10..]),
            "part of key {key} leaked into the log"
        );
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The cost of claude-sonnet-4-5 usage, computed by hand from providers.md
/// §7 ($ per MTok: input 3, 5m write 3.75, 1h write 6, read 0.30, output 15).
fn sonnet_45_nusd(input: u64, w5: u64, w1h: u64, read: u64, output: u64) -> u64 {
    // In nano-USD per token: 3000, 3750, 6000, 300, 15000.
    input * 3000 + w5 * 3750 + w1h * 6000 + read * 300 + output * 15000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_non_stream_is_metered_with_receipts_and_key_injection() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let resp = client()
        .post(format!("{}/v1/messages?beta=true", t.url()))
        .header("x-api-key", CLIENT_KEY)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("anthropic-version", "2023-06-01")
        .header("x-tollgate-cost-usd", "0.00")
        .header(
            "x-fake-usage",
            "input=1000,output=500,cache_write=200,cache_write_1h=50,cache_read=300",
        )
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = sonnet_45_nusd(1000, 150, 50, 300, 500);
    assert_eq!(expected, 11_452_500);
    assert_eq!(header(&resp, "x-tollgate-cost-usd"), "0.0114525");
    assert_eq!(header(&resp, "x-tollgate-provider"), "anthropic");
    assert_eq!(header(&resp, "x-tollgate-cache"), "bypass");
    assert!(header(&resp, "x-tollgate-model").starts_with("claude-sonnet-4-5"));
    let request_id = header(&resp, "x-tollgate-request-id").to_string();
    assert!(header(&resp, "request-id").starts_with("req_"));
    let body = resp.bytes().await.unwrap();

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/messages?beta=true");
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(
        r.header("authorization"),
        None,
        "the client's bearer token must not pass"
    );
    assert!(r.headers.iter().all(|(n, _)| !n.starts_with("x-tollgate-")));
    assert!(r.headers.iter().all(|(_, v)| !v.contains(CLIENT_KEY)));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    // Passthrough fidelity: exactly the provider's bytes.
    assert_eq!(&body[..], &r.response[..]);

    let events = t.wait_events(1).await;
    let e = &events[0];
    assert_eq!(e["event_id"], request_id.as_str());
    assert_eq!(e["status"], "ok");
    assert_eq!(e["route"], "sync");
    assert_eq!(e["provider"], "anthropic");
    assert_eq!(e["input_tokens"], 1000);
    assert_eq!(e["output_tokens"], 500);
    assert_eq!(e["cache_creation_input_tokens"], 200);
    assert_eq!(e["cache_creation_1h_input_tokens"], 50);
    assert_eq!(e["cache_read_input_tokens"], 300);
    assert_eq!(e["cost_nusd"], expected);
    assert_eq!(e["http_status"], 200);
    assert!(e["upstream_request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    assert!(!serde_json::to_string(&events).unwrap().contains("SECRET"));
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_requests_total{provider=\"anthropic\",route=\"sync\",status=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_tokens_total{kind=\"output\",provider=\"anthropic\"} 500"),
        "{metrics}"
    );
    assert!(!metrics.contains("SECRET"));
    assert_no_keys_in_log(&t);
}

/// Reads an SSE response whole, returning (bytes, time of first chunk).
async fn read_stream(resp: reqwest::Response) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut first = None;
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first.get_or_insert_with(|| start.elapsed());
        out.extend_from_slice(&chunk);
    }
    (out, first.unwrap_or_default())
}

/// Splits off the trailing `: tollgate {...}` receipt comment.
fn split_receipt(bytes: &[u8]) -> (&[u8], Value) {
    let text = std::str::from_utf8(bytes).unwrap();
    let at = text.rfind(": tollgate ").expect("stream receipt comment");
    let json_line = text[at + ": tollgate ".len()..].trim_end();
    assert!(text.ends_with("\n\n"));
    (&bytes[..at], serde_json::from_str(json_line).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream_passes_bytes_through_and_meters() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    for scenario in ["text", "tool_use", "thinking"] {
        fake.clear();
        let resp = client()
            .post(format!("{}/v1/messages", t.url()))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("anthropic-version", "2023-06-01")
            .header("accept", "application/json")
            .header("x-fake-scenario", scenario)
            .header(
                "x-fake-usage",
                "input=40,output=12,cache_write=8,cache_read=4",
            )
            .json(&messages_body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(header(&resp, "content-type").starts_with("text/event-stream"));
        // Chunked, so the client keeps its connection (not close-delimited).
        assert_eq!(header(&resp, "transfer-encoding"), "chunked");
        assert_eq!(
            header(&resp, "x-tollgate-cost-usd"),
            "",
            "a stream's cost is in its receipt, not a header"
        );
        assert_eq!(header(&resp, "x-tollgate-provider"), "anthropic");
        let request_id = header(&resp, "x-tollgate-request-id").to_string();
        let (bytes, _) = read_stream(resp).await;
        let r = &fake.requests()[0];
        let (provider_part, receipt) = split_receipt(&bytes);
        assert_eq!(
            provider_part,
            &r.response[..],
            "scenario {scenario}: client bytes differ from the provider's"
        );
        assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
        assert_eq!(r.header("authorization"), None);
        let cost = sonnet_45_nusd(40, 8, 0, 4, 12);
        assert_eq!(receipt["request_id"], request_id.as_str());
        assert_eq!(receipt["output_tokens"], 12);
        assert_eq!(receipt["status"], "ok");
        let e = t.wait_event(&request_id).await;
        assert_eq!(e["route"], "stream");
        assert_eq!(e["status"], "ok");
        assert_eq!(e["input_tokens"], 40);
        assert_eq!(e["output_tokens"], 12);
        assert_eq!(e["cache_creation_input_tokens"], 8);
        assert_eq!(e["cache_read_input_tokens"], 4);
        assert_eq!(e["cost_nusd"], cost);
    }
    assert_no_keys_in_log(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_gets_usage_without_showing_it_to_the_client() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    // The client did not ask for usage: tollgate asks, meters, and cuts the chunk out.
    let resp = client()
        .post(format!("{}/v1/chat/completions", t.url()))
        .bearer_auth(CLIENT_KEY)
        .header("x-fake-usage", "input=30,output=7,cache_read=10")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (bytes, _) = read_stream(resp).await;
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.json()["stream_options"]["include_usage"], true);
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let (client_part, receipt) = split_receipt(&bytes);
    let upstream = String::from_utf8(r.response.clone()).unwrap();
    let usage_event = upstream
        .split_inclusive("\n\n")
        .find(|e| e.contains("\"usage\"") && e.contains("\"choices\":[]"))
        .expect("the fake sent a usage chunk");
    assert_eq!(
        std::str::from_utf8(client_part).unwrap(),
        upstream.replace(usage_event, "")
    );
    assert!(std::str::from_utf8(client_part)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
    assert_eq!(receipt["output_tokens"], 7);
    // The fake's prompt_tokens = 30 uncached + 10 cached.
    // gpt-4o: $2.50 input, $1.25 cached, $10 output per MTok.
    let expected = 30 * 2500 + 10 * 1250 + 7 * 10_000;
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["input_tokens"], 30);
    assert_eq!(e["cache_read_input_tokens"], 10);
    assert_eq!(e["output_tokens"], 7);
    assert_eq!(e["cost_nusd"], expected);

    // The client asked for usage itself: it gets every byte.
    fake.clear();
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = client()
        .post(format!("{}/v1/chat/completions", t.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (bytes, _) = read_stream(resp).await;
    let r = fake.requests().pop().unwrap();
    let (client_part, _) = split_receipt(&bytes);
    assert_eq!(client_part, &r.response[..]);
    assert_no_keys_in_log(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_openrouter_non_stream() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let resp = client()
        .post(format!("{}/v1/chat/completions", t.url()))
        .bearer_auth(CLIENT_KEY)
        .header("x-fake-usage", "input=100,output=50")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-provider"), "openai");
    // gpt-4o: 100 × 2500 + 50 × 10000 nano-USD.
    assert_eq!(header(&resp, "x-tollgate-cost-usd"), "0.00075");
    let body = resp.bytes().await.unwrap();
    let r = fake.requests().pop().unwrap();
    assert_eq!(&body[..], &r.response[..]);
    assert_eq!(r.path, "/v1/chat/completions");

    // OpenRouter by prefix: its reported usage.cost wins over the table.
    fake.clear();
    let resp = client()
        .post(format!("{}/openrouter/v1/chat/completions", t.url()))
        .bearer_auth(CLIENT_KEY)
        .header("x-fake-scenario", "openrouter")
        .header("x-fake-usage", "input=100,output=50")
        .json(&json!({"model": "anthropic/claude-sonnet-4.5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-provider"), "openrouter");
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.path, "/api/v1/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENROUTER_KEY}").as_str())
    );
    let reported = r.reported_cost.unwrap();
    let expected_nusd = (reported * 1e9).round() as u64;
    let events = t.wait_events(2).await;
    assert_eq!(events[1]["cost_nusd"], expected_nusd);
    assert_no_keys_in_log(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_key_the_clients_own_passes() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url()).no_cache().start();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.requests()[0].header("x-api-key"), Some(CLIENT_KEY));
    assert_no_keys_in_log(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_paths_and_count_tokens_are_forwarded() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let c = client();
    let models = c
        .get(format!("{}/v1/models", t.url()))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let body = models.bytes().await.unwrap();
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.path, "/v1/models");
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(&body[..], &r.response[..]);
    let openai_models = c
        .get(format!("{}/v1/models", t.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_models.status(), 200);
    assert_eq!(
        fake.requests().pop().unwrap().header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );

    let count = c
        .post(format!("{}/v1/messages/count_tokens", t.url()))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    let status = count.status();
    let v: Value = count.json().await.unwrap();
    assert_eq!(
        status,
        200,
        "{v} {:?}",
        fake.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    let events = t.wait_events(3).await;
    assert!(events.iter().all(|e| e["cost_nusd"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_errors_use_the_provider_shape() {
    let fake = FakeProvider::start().await;
    let t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .top("max_body_bytes = 1024"),
    )
    .start();
    let c = client();
    // Bad JSON, Anthropic shape.
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "x-tollgate-error"), "bad_request");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Bad JSON, OpenAI shape.
    let r = c
        .post(format!("{}/v1/chat/completions", t.url()))
        .body("[1,")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "bad_request");
    // Too large.
    let big = json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(header(&r, "x-tollgate-error"), "body_too_large");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "request_too_large");
    // Unknown route.
    let r = c.get(format!("{}/nope", t.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "x-tollgate-error"), "unknown_route");
    // Provider errors pass through unchanged and are recorded.
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-scenario", "error-429")
        .header("x-fake-retry-after", "7")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "7");
    assert_eq!(header(&r, "x-tollgate-error"), "");
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &fake.requests().pop().unwrap().response[..]);
    let events = t.wait_events(5).await;
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "proxy_error",
            "proxy_error",
            "proxy_error",
            "proxy_error",
            "provider_error"
        ]
    );
    assert_eq!(events[4]["error"], "rate_limit_error");
    assert_eq!(events[4]["http_status"], 429);
    assert_eq!(
        fake.requests().len(),
        1,
        "refused requests never reach the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_is_502_and_a_slow_one_504() {
    let dead_port = support::tollgate::free_port();
    let fake = FakeProvider::start().await;
    let t = Builder::new(&format!("http://127.0.0.1:{dead_port}")).no_cache()
        .config(&format!(
            "[providers.slow]\ndialect = \"anthropic\"\nbase_url = \"{}\"\n\n[timeouts]\nconnect = \"1s\"\nfirst_byte = \"500ms\"\n",
            fake.base_url()
        ))
        .start();
    let c = client();
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(header(&r, "x-tollgate-error"), "upstream_unreachable");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");

    let started = Instant::now();
    let r = c
        .post(format!("{}/slow/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-scenario", "hang")
        .header("x-fake-delay-ms", "10000")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(header(&r, "x-tollgate-error"), "upstream_timeout");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "timeout_error");
    let events = t.wait_events(2).await;
    assert_eq!(events[0]["error"], "upstream_unreachable");
    assert_eq!(events[1]["error"], "upstream_timeout");
    assert_eq!(events[1]["provider"], "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_cancels_upstream_and_is_recorded() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-scenario", "slow")
        .header("x-fake-delay-ms", "300")
        .header("x-fake-usage", "input=25,output=9")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    let seen = fake.wait_for(1, Duration::from_secs(10)).await;
    assert!(seen[0].client_gone, "the upstream call was not cancelled");
    assert!(!seen[0].completed);
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["status"], "client_aborted");
    assert_eq!(
        e["input_tokens"], 25,
        "tokens seen so far (message_start) are kept"
    );
    assert_eq!(e["usage_incomplete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_ends_the_stream_promptly_with_an_error_event() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    for (path, body) in [
        ("/v1/messages", messages_body(true)),
        ("/v1/chat/completions", chat_body(true)),
    ] {
        let started = Instant::now();
        let resp = client()
            .post(format!("{}{path}", t.url()))
            .header("x-fake-scenario", "cut")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (bytes, _) = read_stream(resp).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("upstream stream ended before its final event"),
            "{text}"
        );
    }
    let events = t.wait_events(2).await;
    for e in &events {
        assert_eq!(e["status"], "upstream_aborted");
        assert_eq!(e["usage_incomplete"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_stream_is_not_buffered() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache().log_level("info")).start();
    // Warm up so allocator and pools are in their steady state.
    client()
        .post(format!("{}/v1/messages", t.url()))
        .json(&messages_body(false))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rss_before = t.rss_kib();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("x-fake-scenario", "big")
        .header("x-fake-big-bytes", "104857600")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    let mut peak = rss_before;
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        if total % (8 << 20) < chunk.len() as u64 {
            peak = peak.max(t.rss_kib());
        }
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    peak = peak.max(t.rss_kib());
    assert!(total >= 100_000_000, "got {total} bytes");
    let growth_kib = peak.saturating_sub(rss_before);
    println!(
        "rss before {rss_before} KiB, peak {peak} KiB, growth {growth_kib} KiB over {total} bytes"
    );
    assert!(growth_kib < 20 * 1024, "RSS grew by {growth_kib} KiB");
    assert!(String::from_utf8_lossy(&tail).contains("event: message_stop"));
    let e = t.wait_events(2).await.pop().unwrap();
    assert_eq!(e["status"], "ok");
}

/// A stream's first chunk goes to the client on its own and at once, even
/// when the rest of the stream is already waiting: it is not held back
/// while the rest is read and tapped (the client's time to first token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_first_chunk_is_not_held_back_for_the_rest() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let body = serde_json::to_vec(&messages_body(true)).unwrap();
    let raw = support::raw::send_raw(
        &t.addr.to_string(),
        &[
            "POST /v1/messages HTTP/1.1",
            "content-type: application/json",
            "anthropic-version: 2023-06-01",
            "x-fake-scenario: big",
            "x-fake-big-bytes: 300000",
            // The whole stream is written right after the head.
            "x-fake-ttfb-ms: 50",
        ],
        &body,
        Duration::from_secs(10),
    )
    .await;
    let chunks = support::raw::chunks(&raw);
    let total: usize = chunks.iter().map(Vec::len).sum();
    assert!(total >= 290_000, "{total} bytes");
    let first = String::from_utf8_lossy(&chunks[0]);
    assert!(first.starts_with("event: message_start"), "{first}");
    // It came with the provider's head (pingora reads that in 4 KiB).
    assert!(
        chunks[0].len() < 16 << 10,
        "the first chunk waited for more: {} of {total} bytes in {} chunks",
        chunks[0].len(),
        chunks.len()
    );
    assert!(String::from_utf8_lossy(chunks.last().unwrap()).contains("message_stop"));
}

/// A stream's head waits for its first event when that is already there,
/// and its last events for the chunked terminator: each pair reaches the
/// client in one write, so the client is not woken for a head without an
/// event, or for events without the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_head_comes_with_its_first_event_and_its_end_with_the_last() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let body = serde_json::to_vec(&messages_body(true)).unwrap();
    for bytes in ["2000", "300000"] {
        let reads = support::raw::send_reads(
            &t.addr.to_string(),
            &[
                "POST /v1/messages HTTP/1.1",
                "content-type: application/json",
                "anthropic-version: 2023-06-01",
                "x-fake-scenario: big",
                &format!("x-fake-big-bytes: {bytes}"),
                // The client is waiting in `read` when the answer starts.
                "x-fake-ttfb-ms: 50",
            ],
            &body,
            Duration::from_secs(10),
        )
        .await;
        let first = String::from_utf8_lossy(&reads[0]);
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(
            first.contains("\r\n\r\n") && first.contains("event: message_start"),
            "the head came alone ({bytes} bytes): {first}"
        );
        let last = String::from_utf8_lossy(reads.last().unwrap());
        assert!(last.ends_with("\r\n0\r\n\r\n"), "{last}");
        assert!(
            last.contains("event: message_stop"),
            "the terminator came alone ({bytes} bytes, {} reads): {last:?}",
            reads.len()
        );
        let raw = reads.concat();
        let chunks = support::raw::chunks(&raw);
        let text = String::from_utf8_lossy(&chunks.concat()).into_owned();
        assert_eq!(text.matches("event: message_start").count(), 1);
        assert_eq!(text.matches("event: message_stop").count(), 1);
    }
    let events = t.wait_events(2).await;
    assert!(events.iter().all(|e| e["status"] == "ok"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_restart_and_sigterm_drains() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .data_dir(data.path()),
    )
    .start();
    for _ in 0..3 {
        client()
            .post(format!("{}/v1/messages", t.url()))
            .json(&messages_body(false))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    // A slow stream in flight when SIGTERM arrives finishes.
    let url = t.url();
    let in_flight = tokio::spawn(async move {
        let resp = client()
            .post(format!("{url}/v1/messages"))
            .header("x-fake-scenario", "slow")
            .header("x-fake-delay-ms", "200")
            .json(&messages_body(true))
            .send()
            .await
            .unwrap();
        read_stream(resp).await.0
    });
    fake.wait_for(4, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.signal(15);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(format!("{}/readyz", t.admin_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "draining sidecar is not ready");
    let streamed = String::from_utf8(in_flight.await.unwrap()).unwrap();
    assert!(
        streamed.contains("event: message_stop"),
        "the in-flight stream was cut: {streamed}"
    );
    let status = t.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");

    let t2 = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .data_dir(data.path()),
    )
    .start();
    let events = t2.events().await;
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["status"] == "ok"));
    assert_eq!(events[3]["route"], "stream");
    drop(t2);
    // `tollgate usage` on the stopped sidecar's store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--by", "account,model", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("default"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.split_whitespace().nth(1) == Some("4")),
        "{table}"
    );
}

#[test]
fn check_config_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"nope\"\nmax_body_bytes = 0\nbogus = 1\n[providers.anthropic]\nbase_url = \"ftp://x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    for key in [
        "listen",
        "max_body_bytes",
        "bogus",
        "providers.anthropic.base_url",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_ends_at_the_idle_timeout() {
    let fake = FakeProvider::start().await;
    let t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .config("[timeouts]\nidle = \"300ms\"\n"),
    )
    .start();
    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("x-fake-scenario", "slow")
        .header("x-fake-delay-ms", "3000")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    let (bytes, _) = read_stream(resp).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("event: error") && text.contains("idle timeout"),
        "{text}"
    );
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["status"], "upstream_aborted");
    assert_eq!(e["error"], "upstream_idle_timeout");
    assert_eq!(e["input_tokens"], 11, "message_start usage is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_stream_provider_error_is_passed_and_recorded() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("x-fake-scenario", "midstream-error")
        .header("x-fake-usage", "input=50,output=3")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (bytes, _) = read_stream(resp).await;
    let r = fake.requests().pop().unwrap();
    let (provider_part, receipt) = split_receipt(&bytes);
    assert_eq!(provider_part, &r.response[..]);
    assert_eq!(receipt["status"], "provider_error");
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["error"], "overloaded_error");
    assert_eq!(e["input_tokens"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_use_the_fallback_price_and_are_counted() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache().config(
        "[price_fallback]\ninput = \"1.00\"\noutput = \"2.00\"\n\n[prices.\"my-finetune\"]\ninput = \"0.50\"\noutput = \"1.50\"\n",
    ))
    .start();
    for model in ["mystery-model-9", "mystery-model-9", "my-finetune"] {
        let body = json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
        let r = client()
            .post(format!("{}/v1/messages", t.url()))
            .header("x-fake-usage", "input=1000,output=100")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let events = t.wait_events(3).await;
    // Fallback: 1000 × $1/M + 100 × $2/M; override: 1000 × $0.50/M + 100 × $1.50/M.
    assert_eq!(events[0]["cost_nusd"], 1_000_000 + 200_000);
    assert_eq!(events[0]["priced"], false);
    assert_eq!(events[2]["cost_nusd"], 500_000 + 150_000);
    assert_eq!(events[2]["priced"], true);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_unpriced_requests_total{model=\"mystery-model-9\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        t.log().matches("not in the price table").count(),
        1,
        "warned once per model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_speaks_h2_with_a_private_ca() {
    let (fake, ca_pem) = FakeProvider::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let t = with_keys(Builder::new("http://127.0.0.1:9").no_cache().config(&format!(
        "[providers.secure]\ndialect = \"anthropic\"\nbase_url = \"https://localhost:{}\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nca_file = {:?}\n",
        fake.addr.port(),
        ca.display().to_string()
    )))
    .start();
    for stream in [false, true, false] {
        let resp = client()
            .post(format!("{}/secure/v1/messages", t.url()))
            .header("x-fake-usage", "input=10,output=5")
            .json(&messages_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r.version == "HTTP/2.0"),
        "{:?}",
        seen.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    let events = t.wait_events(3).await;
    assert!(
        events
            .iter()
            .all(|e| e["status"] == "ok" && e["output_tokens"] == 5),
        "{events:?}"
    );

    // A server whose certificate is not trusted is never sent the request.
    let (untrusted, _) = FakeProvider::start_tls().await;
    let t2 = Builder::new(&format!("https://localhost:{}", untrusted.addr.port()))
        .no_cache()
        .start();
    let resp = client()
        .post(format!("{}/v1/messages", t2.url()))
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(untrusted.requests().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_receipt_can_be_turned_off_and_probes_answer() {
    let fake = FakeProvider::start().await;
    let t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .top("stream_receipt = false"),
    )
    .start();
    for probe in ["healthz", "readyz"] {
        let r = reqwest::get(format!("{}/{probe}", t.admin_url()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    assert!(!header(&resp, "x-tollgate-request-id").is_empty());
    let (bytes, _) = read_stream(resp).await;
    assert_eq!(
        bytes,
        fake.requests()[0].response,
        "exactly the provider's bytes"
    );
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_non_stream_answer_is_piped_not_lost() {
    let fake = FakeProvider::start().await;
    let t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .top("max_body_bytes = 300"),
    )
    .start();
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-cost-usd"), "");
    let body = resp.bytes().await.unwrap();
    let r = fake.requests().pop().unwrap();
    assert!(r.response.len() > 300);
    assert_eq!(&body[..], &r.response[..]);
    let e = t.wait_events(1).await.pop().unwrap();
    assert_eq!(e["usage_incomplete"], true);
    assert_eq!(e["error"], "response_too_large_to_meter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_outbox_still_records_every_event() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .data_dir(data.path())
            .config("[outbox]\nsync = false\n"),
    )
    .start();
    for stream in [false, true] {
        let r = client()
            .post(format!("{}/v1/messages", t.url()))
            .json(&messages_body(stream))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    assert_eq!(t.wait_events(2).await.len(), 2);
    assert!(t.stop().success());
    let t2 = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .data_dir(data.path()),
    )
    .start();
    assert_eq!(t2.events().await.len(), 2, "flushed at shutdown");
}

#[test]
fn a_busy_port_fails_fast_with_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--admin-listen", "", "--listen"])
        .arg(addr.to_string())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// A small tmpfs, unmounted on drop (the test needs root, as CI has).
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount(size: &str) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        TinyFs(dir)
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte[..]).is_ok() {
            byte[0] = 1;
        }
        let _ = f.sync_all();
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_serving_and_logs_the_events() {
    let fake = FakeProvider::start().await;
    let fs = TinyFs::mount("16m");
    let t = with_keys(
        Builder::new(&fake.base_url())
            .no_cache()
            .data_dir(&fs.0.path().join("data")),
    )
    .start();
    fs.fill();
    // sled writes into a segment it already holds until that is full.
    let mut sent = 0;
    loop {
        let batch: Vec<_> = (0..25)
            .map(|_| {
                let url = format!("{}/v1/messages", t.url());
                tokio::spawn(async move {
                    let r = client()
                        .post(url)
                        .json(&messages_body(false))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "a full disk does not stop the traffic");
                    r.bytes().await.unwrap();
                })
            })
            .collect();
        for task in batch {
            task.await.unwrap();
        }
        sent += 25;
        let ready = reqwest::get(format!("{}/readyz", t.admin_url()))
            .await
            .unwrap();
        if ready.status() == 503 {
            break;
        }
        assert!(sent < 20_000, "the outbox never failed on a full disk");
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = client()
            .post(format!("{}/v1/messages", t.url()))
            .json(&messages_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a full disk does not stop the traffic");
        ids.push(header(&r, "x-tollgate-request-id").to_string());
        r.bytes().await.unwrap();
    }
    assert!(t.metrics().await.contains("tollgate_outbox_errors_total"));
    // Events are written (or found unwritable) just after the response.
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in &ids {
        while !t
            .log()
            .lines()
            .any(|l| l.contains("usage event not written") && l.contains(id.as_str()))
        {
            assert!(
                Instant::now() < deadline,
                "event {id} is neither in the outbox nor in the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_no_keys_in_log(&t);
    drop(t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_scope_the_ledger_and_never_reach_the_provider() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = with_keys(Builder::new(&fake.base_url()).no_cache().data_dir(data.path()).top(
        "default_account = \"shared\"\ndefault_workload = \"web\"\ndefault_tags = \"env=prod\"",
    ))
    .start();
    let c = client();
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .header("x-tollgate-account", "acme")
        .header("x-tollgate-workload", "summaries")
        .header("x-tollgate-tags", "team=search, feature=digest")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = c
        .post(format!("{}/v1/messages", t.url()))
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    read_stream(r).await;
    let bad = c
        .post(format!("{}/v1/messages", t.url()))
        .header("x-tollgate-account", "not valid!")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(header(&bad, "x-tollgate-error"), "bad_identity");
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    for r in fake.requests() {
        assert!(
            r.headers.iter().all(|(n, _)| !n.starts_with("x-tollgate")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        fake.requests().len(),
        2,
        "a bad identity never reaches the provider"
    );
    let events = t.wait_events(3).await;
    assert_eq!(events[0]["account"], "acme");
    assert_eq!(events[0]["workload"], "summaries");
    assert_eq!(
        events[0]["tags"],
        json!([["feature", "digest"], ["team", "search"]])
    );
    assert_eq!(events[1]["account"], "shared");
    assert_eq!(events[1]["workload"], "web");
    assert_eq!(events[1]["tags"], json!([["env", "prod"]]));
    assert_eq!(events[2]["status"], "proxy_error");
    assert!(t.stop().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--by", "account", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().any(|l| l.starts_with("acme ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("shared ")), "{table}");
}

/// A keep-alive client that sends its next request while the previous answer
/// is still streaming: tollgate watches the client for leaving with a
/// one-byte read, and that byte must stay part of the next request (before
/// the fix it was dropped: the stream was cut and `POST` arrived as `OST`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_during_a_stream_is_served_whole_after_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let addr = t.url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = messages_body(true).to_string();
    let first = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\nx-fake-scenario: slow\r\nx-fake-delay-ms: 200\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(first.as_bytes()).await.unwrap();
    // The stream has started (its head is back) when the next request goes out.
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        seen.extend_from_slice(&buf[..n]);
    }
    let count =
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hello"}]})
            .to_string();
    let second = format!(
        "POST /v1/messages/count_tokens HTTP/1.1\r\nhost: {addr}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{count}",
        count.len()
    );
    // Mid-stream (it lasts ~2 s), or this tests nothing.
    assert!(!String::from_utf8_lossy(&seen).contains("message_stop"));
    conn.write_all(second.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut seen))
        .await
        .expect("both answers within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("event: message_stop"),
        "first stream cut: {text}"
    );
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("\"input_tokens\""), "{text}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, "/v1/messages/count_tokens");
    let events = t.wait_events(2).await;
    assert!(events.iter().all(|e| e["status"] == "ok"), "{events:?}");
}

/// h2c with prior knowledge on the base-URL listener (local HTTP/2
/// clients): chat completions, JSON and stream, metered like HTTP/1.1;
/// HTTP/1 on the same listener is unchanged, even a head shorter than
/// the HTTP/2 preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served_and_metered() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let dir = tempfile::tempdir().unwrap();
    let curl = |name: &str, stream: bool| {
        let head = dir.path().join(format!("{name}.head"));
        let body = dir.path().join(format!("{name}.body"));
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                "%{http_version}",
                "-D",
            ])
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                &format!("authorization: Bearer {CLIENT_KEY}"),
                "-H",
                "x-fake-usage: input=100,output=20",
                "--data",
                &chat_body(stream).to_string(),
                &format!("{}/v1/chat/completions", t.url()),
            ])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "not HTTP/2");
        (
            std::fs::read_to_string(head).unwrap().to_lowercase(),
            std::fs::read_to_string(body).unwrap(),
        )
    };
    // gpt-4o: $2.50 / $10 per MTok → 100·2500 + 20·10000 nano-USD.
    let (head, body) = curl("json", false);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("x-tollgate-cost-usd: 0.00045"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 100);
    let (head, body) = curl("stream", true);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(body.contains("data: [DONE]"), "{body}");
    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
    }
    let events = t.events_at_least(2).await;
    let mut routes: Vec<&str> = events
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    routes.sort_unstable();
    assert_eq!(routes, ["stream", "sync"]);
    for e in &events {
        assert_eq!(e["cost_nusd"], 450_000, "{e}");
        assert_eq!(e["output_tokens"], 20, "{e}");
    }
    // HTTP/1: a head shorter than the preface is answered at once.
    let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let r = support::raw::read_response(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(r.status, 404);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_no_keys_in_log(&t);
}

/// Anthropic's premiums, as the usage reports them: fast mode ×2 and
/// US-only inference ×1.1 on every token, JSON and stream; a budget
/// reserves at the premium the request asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_mode_and_us_only_inference_are_priced_at_their_premium() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    // claude-opus-5-5: $4 / $20 per MTok → 1000·4000 + 100·20000 nano-USD.
    let base: u64 = 1000 * 4000 + 100 * 20_000;
    let call = |extra: Value, stream: bool| {
        let mut body = json!({"model": "claude-opus-5-5", "max_tokens": 256, "stream": stream,
                              "messages": [{"role": "user", "content": "Hello"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let url = format!("{}/v1/messages", t.url());
        async move {
            let r = client()
                .post(url)
                .header("anthropic-version", "2023-06-01")
                .header("x-fake-usage", "input=1000,output=100")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let id = header(&r, "x-tollgate-request-id").to_string();
            r.bytes().await.unwrap();
            id
        }
    };
    let cases = [
        (json!({}), base),
        (json!({"speed": "fast"}), base * 2),
        (json!({"inference_geo": "us"}), base * 11 / 10),
        (
            json!({"speed": "fast", "inference_geo": "us"}),
            base * 22 / 10,
        ),
    ];
    let mut ids = Vec::new();
    for (extra, cost) in &cases {
        for stream in [false, true] {
            ids.push((call(extra.clone(), stream).await, *cost, extra.clone()));
        }
    }
    let events = t.events_at_least(ids.len()).await;
    for (id, cost, extra) in &ids {
        let e = events
            .iter()
            .find(|e| e["event_id"] == id.as_str())
            .unwrap();
        assert_eq!(e["cost_nusd"], *cost, "{extra} {e}");
        assert_eq!(e["fast"] == true, extra.get("speed").is_some(), "{e}");
    }
}

/// Anthropic server-side fallback: each iteration is billed at the model
/// that ran it, and the event names the model that answered, JSON and
/// stream (whose `message_start` names the requested model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_iterations_are_priced_per_model() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    // Opus 5.5 ($4 in) read the prompt, then Sonnet 4.5 ($3 / $15) answered.
    let cost: u64 = 1000 * 4000 + (1000 * 3000 + 100 * 15_000);
    let mut ids = Vec::new();
    for stream in [false, true] {
        let r = client()
            .post(format!("{}/v1/messages", t.url()))
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-usage", "input=1000,output=100")
            .header("x-fake-fallback", "claude-sonnet-4-5")
            .json(
                &json!({"model": "claude-opus-5-5", "max_tokens": 256, "stream": stream,
                          "messages": [{"role": "user", "content": "Hello"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if !stream {
            assert_eq!(header(&r, "x-tollgate-cost-usd"), "0.0085");
            assert_eq!(header(&r, "x-tollgate-model"), "claude-sonnet-4-5");
        }
        ids.push(header(&r, "x-tollgate-request-id").to_string());
        r.bytes().await.unwrap();
    }
    let events = t.events_at_least(2).await;
    for id in &ids {
        let e = events
            .iter()
            .find(|e| e["event_id"] == id.as_str())
            .unwrap();
        assert_eq!(e["cost_nusd"], cost, "{e}");
        assert_eq!(e["model"], "claude-sonnet-4-5", "{e}");
        assert_eq!(e["input_tokens"], 2000, "{e}");
        assert_eq!(e["output_tokens"], 100, "{e}");
    }
}

/// A Responses stream that ends `response.failed` is metered with the usage
/// it carries and recorded as the provider's error; one cut before its
/// terminal event is charged its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_streams_that_fail_or_are_cut_are_still_metered() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let send = |header: (&'static str, &'static str)| {
        let url = format!("{}/v1/responses", t.url());
        async move {
            let r = client()
                .post(url)
                .header("x-fake-usage", "input=100,output=20")
                .header(header.0, header.1)
                .json(&json!({"model": "gpt-5", "input": "Hi", "stream": true,
                              "max_output_tokens": 50}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let id = header_of(&r, "x-tollgate-request-id");
            let body = String::from_utf8_lossy(&r.bytes().await.unwrap_or_default()).to_string();
            (id, body)
        }
    };
    let (failed, body) = send(("x-fake-response-failed", "1")).await;
    assert!(body.contains("event: response.failed"), "{body}");
    let (cut, _) = send(("x-fake-scenario", "cut")).await;
    let events = t.events_at_least(2).await;
    let e = events
        .iter()
        .find(|e| e["event_id"] == failed.as_str())
        .unwrap();
    assert_eq!(e["status"], "provider_error", "{e}");
    assert_eq!(e["error"], "server_error", "{e}");
    assert_eq!(e["cost_nusd"], 100 * 1250 + 20 * 10_000, "{e}");
    assert_eq!(e["usage_incomplete"], false, "{e}");
    let e = events
        .iter()
        .find(|e| e["event_id"] == cut.as_str())
        .unwrap();
    assert_eq!(e["usage_incomplete"], true, "{e}");
    // Charged its bound: the output cap at least.
    assert!(e["output_tokens"].as_u64().unwrap() >= 2, "{e}");
    assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{e}");
}

fn header_of(r: &reqwest::Response, name: &str) -> String {
    header(r, name).to_string()
}

/// Prices as data: a `prices_file` row is in force from its
/// `effective_from` on (a future row changes nothing today), `tollgate
/// prices` shows the table in force, and a malformed row stops the start
/// with its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prices_file_is_in_force_from_its_dates() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.txt");
    std::fs::write(
        &file,
        "# gpt-4o repriced today, and again in 2099\n\
         gpt-4o  2020-01-01  1  2  1  1  0.5  0.5  -\n\
         gpt-4o  2099-01-01  100  200  100  100  50  0.5  -\n",
    )
    .unwrap();
    let t = with_keys(Builder::new(&fake.base_url()).no_cache())
        .top(&format!("prices_file = \"{}\"", file.display()))
        .start();
    let r = client()
        .post(format!("{}/v1/chat/completions", t.url()))
        .header("x-fake-usage", "input=1000,output=100")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // $1 / $2 per MTok: 1000·1000 + 100·2000 nano-USD.
    assert_eq!(header(&r, "x-tollgate-cost-usd"), "0.0012");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let prices_file = format!("prices_file = \"{}\"\n", file.display());
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, &prices_file).unwrap();
    let cfg = cfg.display().to_string();
    let (ok, out, err) = run(&["prices", "--config", &cfg, "--model", "gpt-4o"]);
    assert!(ok.success(), "{err}");
    assert!(
        out.contains("gpt-4o") && out.contains("2020-01-01"),
        "{out}"
    );
    let (_, out, _) = run(&[
        "prices",
        "--config",
        &cfg,
        "--model",
        "gpt-4o",
        "--at",
        "2099-06-01",
    ]);
    assert!(out.contains("2099-01-01") && out.contains(" 100"), "{out}");
    // The built-in rows, with their dates.
    let (_, out, _) = run(&[
        "prices",
        "--model",
        "claude-sonnet-5-5",
        "--at",
        "2026-10-01",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["read"], "0.20", "{v}");
    let (_, out, _) = run(&[
        "prices",
        "--model",
        "claude-sonnet-5-5",
        "--at",
        "2026-10-07",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["read"], "0.10", "{v}");
    // A malformed row: the start is refused, naming the file and the line.
    std::fs::write(
        &file,
        "gpt-4o 2020-01-01 1 2 1 1 0.5 0.5 -\ngpt-4o 2020-02-30 1 2 1 1 0.5 0.5 -\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["proxy", "--check-config", "--config", &cfg]);
    assert!(!ok.success());
    let all = format!("{out}{err}");
    assert!(
        all.contains("prices_file") && all.contains("line 2: effective_from"),
        "{all}"
    );
}
