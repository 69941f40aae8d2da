//! `Idempotency-Key` end to end: the real `tollgate` binary in front of the
//! in-repo fake provider. A retry replays the first answer (a stream as a
//! stream) with no second provider call and no second charge; a retry
//! while the first runs waits for it or gets 409; another body is a 422;
//! tollgate's own refusals are not kept; answers survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::reply::{post as send, Reply};
use support::tollgate::Builder;

const REPLAY: &str = "x-tollgate-idempotent-replay";

fn keyed(b: Builder) -> Builder {
    b.env("ANTHROPIC_API_KEY", "sk-ant-idem-test")
        .env("OPENAI_API_KEY", "sk-openai-idem-test")
}

fn messages(prompt: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Whether the answer is a replay of a kept one.
fn replayed(r: &Reply) -> bool {
    r.header(REPLAY) == "true"
}

/// Requests the fake received on `path`.
fn calls(fake: &FakeProvider, path: &str) -> usize {
    fake.requests().iter().filter(|r| r.path == path).count()
}

/// SSE events as (name, data JSON), receipt comments left out.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter_map(|ev| {
            let name = ev.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_retries_make_one_call_and_one_charge() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let body = messages("create once", false);
    let headers = [("idempotency-key", "order-1"), ("x-fake-ttfb-ms", "400")];
    let (a, b, c, d, e) = tokio::join!(
        send(&t, "/v1/messages", &body, &headers),
        send(&t, "/v1/messages", &body, &headers),
        send(&t, "/v1/messages", &body, &headers),
        send(&t, "/v1/messages", &body, &headers),
        send(&t, "/v1/messages", &body, &headers),
    );
    let answers = [a, b, c, d, e];
    assert_eq!(calls(&fake, "/v1/messages"), 1, "one provider call");
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, answers[0].body, "identical answers");
        // The original's receipts, on every copy.
        assert_eq!(
            r.header("x-tollgate-request-id"),
            answers[0].header("x-tollgate-request-id")
        );
    }
    assert_eq!(answers.iter().filter(|r| replayed(r)).count(), 4);
    let first = answers.iter().find(|r| !replayed(r)).unwrap();
    assert_ne!(first.header("x-tollgate-cost-usd"), "0.00");
    // One charged event; four replays at cost 0, with no tokens.
    let events = t.wait_events(5).await;
    let charged: Vec<&Value> = events
        .iter()
        .filter(|e| e["cost_nusd"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(charged.len(), 1, "{events:?}");
    assert_eq!(charged[0]["idempotency_key"], "order-1");
    let replays: Vec<&Value> = events.iter().filter(|e| e["route"] == "replay").collect();
    assert_eq!(replays.len(), 4, "{events:?}");
    for r in replays {
        assert_eq!(r["cost_nusd"], 0);
        assert_eq!(r["input_tokens"], 0);
        assert_eq!(r["status"], "ok");
    }
    let m = t.metrics().await;
    assert!(
        m.contains("tollgate_idempotency_requests_total{outcome=\"first\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_idempotency_requests_total{outcome=\"replay\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_body_is_422_and_another_account_runs_on_its_own() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let key = [("idempotency-key", "k-422")];
    let first = send(&t, "/v1/messages", &messages("one", false), &key).await;
    assert_eq!(first.status, 200);
    // Same key, another body: refused in Anthropic's shape, nothing sent.
    let other = send(&t, "/v1/messages", &messages("two", false), &key).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.header("x-tollgate-error"), "idempotency_key_reused");
    let v = other.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(calls(&fake, "/v1/messages"), 1);
    // Same key and body from another account: its own first request.
    let acme = [("idempotency-key", "k-422"), ("x-tollgate-account", "acme")];
    let theirs = send(&t, "/v1/messages", &messages("one", false), &acme).await;
    assert_eq!(theirs.status, 200);
    assert!(!replayed(&theirs));
    assert_eq!(calls(&fake, "/v1/messages"), 2);
    let again = send(&t, "/v1/messages", &messages("one", false), &acme).await;
    assert!(replayed(&again));
    assert_eq!(again.body, theirs.body);
    // A malformed key is a 400 before anything runs.
    let long = "k".repeat(256);
    let bad = send(
        &t,
        "/v1/messages",
        &messages("one", false),
        &[("idempotency-key", &long)],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(calls(&fake, "/v1/messages"), 2);
    let m = t.metrics().await;
    assert!(
        m.contains("tollgate_idempotency_requests_total{outcome=\"mismatch\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_survives_a_restart() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let start = || {
        keyed(Builder::new(&fake.base_url()).no_cache())
            .data_dir(data.path())
            .start()
    };
    let mut t = start();
    let key = [("idempotency-key", "restart-1")];
    let first = send(&t, "/v1/messages", &messages("durable", false), &key).await;
    assert_eq!(first.status, 200);
    t.stop();
    let mut t = start();
    let again = send(&t, "/v1/messages", &messages("durable", false), &key).await;
    assert_eq!(again.status, 200);
    assert!(replayed(&again));
    assert_eq!(again.body, first.body);
    assert_eq!(calls(&fake, "/v1/messages"), 1);
    // A crash (kill -9) just after an answer: it was flushed right away.
    let key = [("idempotency-key", "crash-1")];
    let before = send(&t, "/v1/messages", &messages("crash", false), &key).await;
    assert_eq!(before.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.signal(9);
    t.wait_exit(Duration::from_secs(10));
    let t = start();
    let after = send(&t, "/v1/messages", &messages("crash", false), &key).await;
    assert!(replayed(&after));
    assert_eq!(after.body, before.body);
    assert_eq!(calls(&fake, "/v1/messages"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replays_as_the_same_stream() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let key = [("idempotency-key", "stream-1")];
    let first = send(&t, "/v1/messages", &messages("stream me", true), &key).await;
    assert_eq!(first.status, 200);
    let again = send(&t, "/v1/messages", &messages("stream me", true), &key).await;
    assert_eq!(again.status, 200);
    assert!(replayed(&again));
    assert!(again
        .header("content-type")
        .starts_with("text/event-stream"));
    let (a, b) = (sse_events(&first.body), sse_events(&again.body));
    assert_eq!(a, b, "event by event");
    let names: Vec<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    // Byte for byte, the original's receipt comment included.
    assert_eq!(again.body, first.body);
    assert!(std::str::from_utf8(&again.body)
        .unwrap()
        .contains(": tollgate {"));
    assert_eq!(calls(&fake, "/v1/messages"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_409_without_waiting_or_waits_for_the_replay() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let body = messages("slow create", false);
    let slow = [("idempotency-key", "slow-1"), ("x-fake-ttfb-ms", "1500")];
    let first = {
        let t_url = t.url();
        let body = body.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{t_url}/v1/messages"))
                .header("anthropic-version", "2023-06-01")
                .header(slow[0].0, slow[0].1)
                .header(slow[1].0, slow[1].1)
                .json(&body)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    };
    // The first is at the provider (its answer 1.5 s away).
    for _ in 0..200 {
        if calls(&fake, "/v1/messages") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls(&fake, "/v1/messages"), 1);
    let busy = send(
        &t,
        "/v1/messages",
        &body,
        &[("idempotency-key", "slow-1"), ("idempotency-wait", "false")],
    )
    .await;
    assert_eq!(busy.status, 409);
    assert_eq!(busy.header("x-tollgate-error"), "idempotency_in_progress");
    assert_eq!(busy.json()["error"]["type"], "conflict_error");
    let waited = send(&t, "/v1/messages", &body, &[("idempotency-key", "slow-1")]).await;
    let first = first.await.unwrap();
    assert_eq!(waited.status, 200);
    assert!(replayed(&waited));
    assert_eq!(waited.body, first.to_vec());
    assert_eq!(calls(&fake, "/v1/messages"), 1);
    let m = t.metrics().await;
    assert!(
        m.contains("tollgate_idempotency_requests_total{outcome=\"conflict\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_idempotency_requests_total{outcome=\"wait\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refusal_is_not_kept() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let start = |limit: &str| {
        keyed(Builder::new(&fake.base_url()).no_cache())
            .data_dir(data.path())
            .config(&format!(
                "[[budgets]]\nname = \"day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"{limit}\"\n"
            ))
            .start()
    };
    let mut t = start("0.00001");
    let key = [("idempotency-key", "budget-1")];
    let body = messages("too dear", false);
    let refused = send(&t, "/v1/messages", &body, &key).await;
    assert_eq!(refused.status, 402);
    // Released at once: the retry is refused again by the budget itself.
    let again = send(&t, "/v1/messages", &body, &key).await;
    assert_eq!(again.status, 402);
    assert!(!replayed(&again));
    assert_eq!(calls(&fake, "/v1/messages"), 0);
    t.stop();
    // The budget raised: the retry runs, and is then replayed.
    let t = start("10");
    let ran = send(&t, "/v1/messages", &body, &key).await;
    assert_eq!(ran.status, 200);
    assert!(!replayed(&ran));
    assert_eq!(calls(&fake, "/v1/messages"), 1);
    let copy = send(&t, "/v1/messages", &body, &key).await;
    assert!(replayed(&copy));
    assert_eq!(copy.body, ran.body);
    assert_eq!(calls(&fake, "/v1/messages"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_replays_and_refuses_in_its_shape() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let chat = |prompt: &str| json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]});
    let key = [("idempotency-key", "chat-1")];
    let first = send(&t, "/v1/chat/completions", &chat("hi"), &key).await;
    assert_eq!(first.status, 200);
    let again = send(&t, "/v1/chat/completions", &chat("hi"), &key).await;
    assert!(replayed(&again));
    assert_eq!(again.body, first.body);
    let other = send(&t, "/v1/chat/completions", &chat("bye"), &key).await;
    assert_eq!(other.status, 422);
    let v = other.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    assert_eq!(calls(&fake, "/v1/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_create_creates_one_batch() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let batch = json!({"requests": [{"custom_id": "a", "params": messages("batched", false)}]});
    let key = [("idempotency-key", "batch-1")];
    let first = send(&t, "/v1/messages/batches", &batch, &key).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = send(&t, "/v1/messages/batches", &batch, &key).await;
    assert!(replayed(&again));
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(calls(&fake, "/v1/messages/batches"), 1);
}

/// The official `anthropic` SDK reads a replayed stream as the stream it
/// first got: the same events, text and usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_reads_a_replayed_stream() {
    let python = support::sdk::sdk_python("anthropic-current").await;
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).no_cache()).start();
    let call = |name: &str| {
        json!({"name": name, "op": "create_stream", "prompt": "sdk stream",
               "usage": "input=30,output=12",
               "headers": {"idempotency-key": "sdk-stream-1"}})
    };
    let plan = json!([call("first"), call("retry")]);
    let run = support::sdk::run_script(
        &python,
        "anthropic_calls.py",
        &[
            ("ANTHROPIC_BASE_URL", &t.url()),
            ("ANTHROPIC_API_KEY", "sk-client-idem"),
        ],
        &plan,
    )
    .await;
    let (first, retry) = (run.ok("first"), run.ok("retry"));
    assert_eq!(retry["headers"][REPLAY], "true", "{retry:#}");
    assert!(first["headers"].get(REPLAY).is_none());
    assert!(!first["text"].as_str().unwrap().is_empty(), "{first:#}");
    assert!(first["usage"].is_object(), "{first:#}");
    for field in ["events", "text", "usage", "stop_reason"] {
        assert_eq!(first[field], retry[field], "{field}");
    }
    assert_eq!(
        retry["events"].as_array().unwrap().last().unwrap(),
        "message_stop"
    );
    assert_eq!(calls(&fake, "/v1/messages"), 1);
}

/// A provider answer the SDKs retry (529 overloaded) is not kept: the
/// retry runs; a final one (400) is kept and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_provider_errors_are_not_kept_final_ones_are() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).no_cache()).start();
    let body = messages("overloaded", false);
    let overloaded = send(
        &t,
        "/v1/messages",
        &body,
        &[("idempotency-key", "o-1"), ("x-fake-scenario", "error-529")],
    )
    .await;
    assert_eq!(overloaded.status, 529);
    let retry = send(&t, "/v1/messages", &body, &[("idempotency-key", "o-1")]).await;
    assert_eq!(retry.status, 200);
    assert!(!replayed(&retry));
    assert_eq!(calls(&fake, "/v1/messages"), 2);
    let bad = [("idempotency-key", "b-1"), ("x-fake-scenario", "error-400")];
    let refused = send(&t, "/v1/messages", &body, &bad).await;
    assert_eq!(refused.status, 400);
    let again = send(&t, "/v1/messages", &body, &[("idempotency-key", "b-1")]).await;
    assert_eq!(again.status, 400);
    assert!(replayed(&again));
    assert_eq!(again.body, refused.body);
    assert_eq!(calls(&fake, "/v1/messages"), 3);
}
