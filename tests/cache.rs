//! The exact cache and request coalescing end to end: the real `tollgate`
//! binary in front of the in-repo fake provider, driven over HTTP.
//! (The official SDKs' view of replayed streams is in `tests/sdk.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::reply::{post, Reply};
use support::tollgate::{Builder, Tollgate};

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn keyed(b: Builder) -> Builder {
    b.env("ANTHROPIC_API_KEY", "sk-ant-cache-test")
        .env("OPENAI_API_KEY", "sk-openai-cache-test")
}

fn messages(prompt: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

/// `data:` payloads of an SSE body (JSON ones parsed; `[DONE]` as a string).
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into())))
        .collect()
}

/// The text an Anthropic stream carries.
fn anthropic_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| d["type"] == "content_block_delta" && d["delta"]["type"] == "text_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `/metrics` contains `needle` (the cache writer stores answers
/// off the request path).
async fn wait_metric(t: &Tollgate, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = t.metrics().await;
        if m.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event_by_id<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("no event {id} in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_free_and_answers_both_forms() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let miss = post(&t, "/v1/messages", &messages("hit me", false), &[]).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("x-tollgate-cache"), "miss");
    let cost = miss.header("x-tollgate-cost-usd").to_string();
    assert_ne!(cost, "0.00");
    // Same request: served locally, byte for byte, at no cost.
    let hit = post(&t, "/v1/messages", &messages("hit me", false), &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-tollgate-cache"), "hit");
    assert_eq!(hit.header("x-tollgate-cost-usd"), "0.00");
    assert_eq!(hit.header("x-tollgate-saved-usd"), cost);
    assert_eq!(hit.body, miss.body);
    assert_eq!(hit.header("request-id"), miss.header("request-id"));
    // As a stream: re-synthesised from the stored message.
    let stream = post(&t, "/v1/messages", &messages("hit me", true), &[]).await;
    assert_eq!(stream.header("x-tollgate-cache"), "hit");
    assert!(stream
        .header("content-type")
        .starts_with("text/event-stream"));
    let sse = stream.text();
    let original = miss.json();
    assert_eq!(anthropic_text(&sse), original["content"][0]["text"]);
    let names: Vec<&str> = sse
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("event: ")))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(sse.contains(": tollgate {"), "receipt comment: {sse}");
    assert!(sse.contains("\"cache\":\"hit\""));
    assert_eq!(
        fake.requests().len(),
        1,
        "only the miss reached the provider"
    );

    // Ledger: the miss paid, the hits record what they saved.
    let events = t.wait_events(3).await;
    let miss_e = event_by_id(&events, miss.header("x-tollgate-request-id"));
    let hit_e = event_by_id(&events, hit.header("x-tollgate-request-id"));
    let stream_e = event_by_id(&events, stream.header("x-tollgate-request-id"));
    assert_eq!(miss_e["cache"], "miss");
    assert!(miss_e["cost_nusd"].as_u64().unwrap() > 0);
    for e in [hit_e, stream_e] {
        assert_eq!(e["cache"], "hit");
        assert_eq!(e["cost_nusd"], 0);
        assert_eq!(e["saved_nusd"], miss_e["cost_nusd"]);
        assert_eq!(e["input_tokens"], miss_e["input_tokens"]);
        assert_eq!(e["output_tokens"], miss_e["output_tokens"]);
        assert_eq!(e["upstream_request_id"], miss_e["upstream_request_id"]);
        assert_eq!(e["status"], "ok");
    }
    assert_eq!(stream_e["route"], "stream");
    wait_metric(&t, "tollgate_cache_entries 1").await;
    let metrics = t.metrics().await;
    assert!(metrics.contains("tollgate_cache_requests_total{result=\"hit\"} 2"));
    assert!(metrics.contains("tollgate_cache_requests_total{result=\"miss\"} 1"));
    assert!(!metrics.contains("tollgate_cache_saved_usd_total 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_entry_answers_json_and_streams_with_or_without_usage() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    // Stored from a stream (the client did not ask for usage; tollgate did).
    let miss = post(&t, "/v1/chat/completions", &chat("openai hit", true), &[]).await;
    assert_eq!(miss.header("x-tollgate-cache"), "miss");
    let miss_chunks = sse_data(&miss.text());
    let miss_text: String = miss_chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    // As JSON: the assembled chat.completion.
    let json_hit = post(&t, "/v1/chat/completions", &chat("openai hit", false), &[]).await;
    assert_eq!(json_hit.header("x-tollgate-cache"), "hit");
    let c = json_hit.json();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["content"], miss_text.as_str());
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // A stream without include_usage: no usage chunk.
    let plain = post(&t, "/v1/chat/completions", &chat("openai hit", true), &[]).await;
    let chunks = sse_data(&plain.text());
    assert_eq!(chunks.last().unwrap(), &Value::String("[DONE]".into()));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    // With include_usage: the usage chunk comes back.
    let mut body = chat("openai hit", true);
    body["stream_options"] = json!({"include_usage": true});
    let with_usage = post(&t, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(with_usage.header("x-tollgate-cache"), "hit");
    let chunks = sse_data(&with_usage.text());
    let usage_chunk = chunks
        .iter()
        .find(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
        .expect("usage chunk");
    assert_eq!(usage_chunk["usage"], c["usage"]);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_and_is_not_part_of_the_key() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let mut base = messages("keyed", false);
    base["temperature"] = json!(1);
    assert_eq!(
        post(&t, "/v1/messages", &base, &[])
            .await
            .header("x-tollgate-cache"),
        "miss"
    );
    let cache_of = |r: Reply| r.header("x-tollgate-cache").to_string();
    // Misses: another account, another anthropic-beta, another max_tokens.
    let other_account = post(
        &t,
        "/v1/messages",
        &base,
        &[("x-tollgate-account", "other")],
    )
    .await;
    assert_eq!(cache_of(other_account), "miss");
    let beta = post(
        &t,
        "/v1/messages",
        &base,
        &[("anthropic-beta", "tools-2024")],
    )
    .await;
    assert_eq!(cache_of(beta), "miss");
    let mut bigger = base.clone();
    bigger["max_tokens"] = json!(257);
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &bigger, &[]).await),
        "miss"
    );
    // Hits: stream flag, metadata, key order and spelling, client headers.
    let mut streamed = base.clone();
    streamed["stream"] = json!(true);
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &streamed, &[]).await),
        "hit"
    );
    let mut meta = base.clone();
    meta["metadata"] = json!({"user_id": "someone"});
    assert_eq!(cache_of(post(&t, "/v1/messages", &meta, &[]).await), "hit");
    let respelled = r#"{ "messages":[{"content":"keyed","role":"user"}], "max_tokens":256, "temperature": 1.0, "model":"claude-sonnet-4-5" }"#;
    let resp = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("user-agent", "another-agent/9")
        .header("x-stainless-retry-count", "3")
        .header("x-api-key", "sk-some-client-key")
        .body(respelled)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-tollgate-cache"], "hit");
    // The other account now has its own entry; still not the default's.
    let again = post(
        &t,
        "/v1/messages",
        &base,
        &[("x-tollgate-account", "other")],
    )
    .await;
    assert_eq!(cache_of(again), "hit");
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_headers() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let cache_of = |r: &Reply| r.header("x-tollgate-cache").to_string();
    // no-store: neither read nor written.
    let body = messages("no-store", false);
    let r = post(&t, "/v1/messages", &body, &[("cache-control", "no-store")]).await;
    assert_eq!(cache_of(&r), "bypass");
    assert_eq!(
        cache_of(&post(&t, "/v1/messages", &body, &[]).await),
        "miss"
    );
    assert_eq!(cache_of(&post(&t, "/v1/messages", &body, &[]).await), "hit");
    // bypass: neither.
    let r = post(&t, "/v1/messages", &body, &[("x-tollgate-cache", "bypass")]).await;
    assert_eq!(cache_of(&r), "bypass");
    assert_eq!(fake.requests().len(), 3);
    // no-cache and refresh: the provider is asked, the fresh answer stored.
    let r = post(&t, "/v1/messages", &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_of(&r), "refresh");
    let refreshed = post(
        &t,
        "/v1/messages",
        &body,
        &[("x-tollgate-cache", "refresh")],
    )
    .await;
    assert_eq!(cache_of(&refreshed), "refresh");
    assert_eq!(fake.requests().len(), 5);
    let hit = post(&t, "/v1/messages", &body, &[]).await;
    assert_eq!(cache_of(&hit), "hit");
    assert_eq!(hit.body, refreshed.body, "the refreshed answer was stored");
    // Refresh writes without reading: a never-seen request is stored too.
    let fresh = messages("refresh-first", false);
    post(
        &t,
        "/v1/messages",
        &fresh,
        &[("x-tollgate-cache", "refresh")],
    )
    .await;
    assert_eq!(
        cache_of(&post(&t, "/v1/messages", &fresh, &[]).await),
        "hit"
    );
    // A bad value is the client's mistake, in the provider's error shape.
    let bad = post(
        &t,
        "/v1/messages",
        &body,
        &[("x-tollgate-cache", "sometimes")],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    assert_eq!(bad.header("x-tollgate-error"), "bad_header");
    // The headers never reach the provider.
    for r in fake.requests() {
        assert!(r.header("x-tollgate-cache").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_broken_streams_are_not_cached() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    for (i, scenario) in ["error-500", "error-429", "cut", "midstream-error"]
        .iter()
        .enumerate()
    {
        let body = messages(
            &format!("broken {scenario}"),
            scenario.starts_with('c') || scenario.starts_with('m'),
        );
        for _ in 0..2 {
            let r = post(&t, "/v1/messages", &body, &[("x-fake-scenario", scenario)]).await;
            assert_eq!(r.header("x-tollgate-cache"), "miss", "{scenario}");
        }
        assert_eq!(fake.requests().len(), 2 * (i + 1), "{scenario} was cached");
    }
    let metrics = t.metrics().await;
    assert!(metrics.contains("tollgate_cache_entries 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_and_per_model_rules() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).config(
        "[cache]\nttl = \"2s\"\n[[cache.rules]]\nscope = \"model:gpt-4o\"\nmode = \"off\"\n[[cache.rules]]\nscope = \"account:long\"\nttl = \"1h\"\n",
    ))
    .start();
    let body = messages("ttl", false);
    let cache_of = |r: Reply| r.header("x-tollgate-cache").to_string();
    assert_eq!(cache_of(post(&t, "/v1/messages", &body, &[]).await), "miss");
    let long = [("x-tollgate-account", "long")];
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &body, &long).await),
        "miss"
    );
    assert_eq!(cache_of(post(&t, "/v1/messages", &body, &[]).await), "hit");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(cache_of(post(&t, "/v1/messages", &body, &[]).await), "miss");
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &body, &long).await),
        "hit"
    );
    // gpt-4o: off by rule.
    let c = chat("ruled off", false);
    assert_eq!(
        cache_of(post(&t, "/v1/chat/completions", &c, &[]).await),
        "bypass"
    );
    assert_eq!(
        cache_of(post(&t, "/v1/chat/completions", &c, &[]).await),
        "bypass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_under_a_small_cap_and_persistence_across_restart() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    // One answer is ~2.3 KB stored (message and its stream form): room for two.
    let cap = "[cache]\nmax_bytes = 5500\n";
    let cache_of = |r: Reply| r.header("x-tollgate-cache").to_string();
    let (a, b, c) = (
        messages("A", false),
        messages("B", false),
        messages("C", false),
    );
    {
        let mut t = keyed(
            Builder::new(&fake.base_url())
                .data_dir(data.path())
                .config(cap),
        )
        .start();
        assert_eq!(cache_of(post(&t, "/v1/messages", &a, &[]).await), "miss");
        assert_eq!(cache_of(post(&t, "/v1/messages", &b, &[]).await), "miss");
        assert_eq!(cache_of(post(&t, "/v1/messages", &a, &[]).await), "hit");
        // C evicts the least recently used: B.
        assert_eq!(cache_of(post(&t, "/v1/messages", &c, &[]).await), "miss");
        wait_metric(&t, "tollgate_cache_evictions_total 1").await;
        wait_metric(&t, "tollgate_cache_entries 2").await;
        // A graceful stop flushes the cache (a crash may lose its last
        // half second: a few misses, nothing else).
        t.stop();
    }
    // Restarted on the same store: A and C are still there, B is not.
    let t = keyed(
        Builder::new(&fake.base_url())
            .data_dir(data.path())
            .config(cap),
    )
    .start();
    assert_eq!(cache_of(post(&t, "/v1/messages", &a, &[]).await), "hit");
    assert_eq!(cache_of(post(&t, "/v1/messages", &c, &[]).await), "hit");
    assert_eq!(cache_of(post(&t, "/v1/messages", &b, &[]).await), "miss");
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stats_and_purge_from_the_cli() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--admin-listen")
            .arg("")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    {
        let mut t = keyed(Builder::new(&fake.base_url()).data_dir(data.path())).start();
        post(&t, "/v1/messages", &messages("one", false), &[]).await;
        post(
            &t,
            "/v1/messages",
            &messages("two", false),
            &[("x-tollgate-account", "acme")],
        )
        .await;
        post(
            &t,
            "/v1/messages",
            &messages("three", false),
            &[("x-tollgate-account", "acme")],
        )
        .await;
        wait_metric(&t, "tollgate_cache_entries 3").await;
        // While running: the proxy answers (the store is locked).
        let stats = reqwest::get(format!("{}/cache/stats", t.admin_url()))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(stats["entries"], 3);
        assert_eq!(stats["requests"]["miss"], 3);
        let purged = client()
            .post(format!("{}/cache/purge?account=nobody", t.admin_url()))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(purged["removed"], 0);
        t.stop();
    }
    let stats = cli(&["cache", "stats", "--json"]);
    let v: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["entries"], 3);
    assert!(cli(&["cache", "stats"]).contains("entries     3"));
    assert!(cli(&["cache", "purge", "--account", "acme"]).contains("removed 2"));
    let v: Value = serde_json::from_str(&cli(&["cache", "stats", "--json"])).unwrap();
    assert_eq!(v["entries"], 1);
    assert!(cli(&["cache", "purge"]).contains("removed 1"));
}

/// Reads a stream, noting when its first and last chunks arrived.
async fn timed_stream(resp: reqwest::Response) -> (Vec<u8>, Instant, Instant) {
    let mut body = Vec::new();
    let mut first = None;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first.get_or_insert_with(Instant::now);
        body.extend_from_slice(&chunk);
    }
    let last = Instant::now();
    (body, first.unwrap_or(last), last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_identical_requests_reach_the_provider_once() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    // ~3 s of stream: room for 31 clients to join on a loaded machine.
    let slow = [("x-fake-scenario", "slow"), ("x-fake-delay-ms", "300")];
    let send = |stream: bool| {
        let mut req = client()
            .post(format!("{}/v1/messages", t.url()))
            .header("anthropic-version", "2023-06-01")
            .json(&messages("together", stream));
        for (k, v) in slow {
            req = req.header(k, v);
        }
        req.send()
    };
    // The leader streams; the others join once its stream has begun.
    let leader_resp = send(true).await.unwrap();
    let mut followers = Vec::new();
    for i in 0..31 {
        let stream = i % 2 == 0;
        let fut = send(stream);
        followers.push(tokio::spawn(async move {
            let resp = fut.await.unwrap();
            let cache = resp.headers()["x-tollgate-cache"]
                .to_str()
                .unwrap()
                .to_string();
            let (body, first, last) = timed_stream(resp).await;
            (stream, cache, body, first, last)
        }));
    }
    assert_eq!(leader_resp.headers()["x-tollgate-cache"], "miss");
    let (leader_body, _, leader_end) = timed_stream(leader_resp).await;
    let leader_text = anthropic_text(&String::from_utf8(leader_body).unwrap());
    assert!(!leader_text.is_empty());
    let mut coalesced_streams = 0;
    let mut outcomes = Vec::new();
    let mut results = Vec::new();
    for f in followers {
        let r = f.await.unwrap();
        outcomes.push(r.1.clone());
        results.push(r);
    }
    assert!(
        outcomes.iter().all(|c| c == "coalesced"),
        "{outcomes:?}\n{:?}",
        fake.requests().len()
    );
    for (stream, _, body, first, _last) in results {
        let body = String::from_utf8(body).unwrap();
        if stream {
            assert_eq!(anthropic_text(&body), leader_text);
            assert!(body.contains("event: message_stop"));
            // Live fan-out: the first chunk came well before the leader's end.
            assert!(
                first + Duration::from_millis(300) < leader_end,
                "a stream follower got its first chunk only at the end: {:?} before it",
                leader_end.saturating_duration_since(first)
            );
            coalesced_streams += 1;
        } else {
            let m: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(m["content"][0]["text"], leader_text.as_str());
            assert_eq!(m["stop_reason"], "end_turn");
        }
    }
    assert_eq!(coalesced_streams, 16);
    assert_eq!(fake.requests().len(), 1, "exactly one upstream call");
    let events = t.wait_events(32).await;
    let paid: Vec<&Value> = events.iter().filter(|e| e["cost_nusd"] != 0).collect();
    assert_eq!(paid.len(), 1);
    assert_eq!(
        events.iter().filter(|e| e["cache"] == "coalesced").count(),
        31
    );
    let saved: u64 = events
        .iter()
        .map(|e| e["saved_nusd"].as_u64().unwrap())
        .sum();
    assert_eq!(saved, 31 * paid[0]["cost_nusd"].as_u64().unwrap());
    // And the answer is now cached.
    let hit = post(&t, "/v1/messages", &messages("together", false), &[]).await;
    assert_eq!(hit.header("x-tollgate-cache"), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_goes_on_for_followers_when_the_leader_leaves() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let url = t.url();
    let send = move || {
        client()
            .post(format!("{url}/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-scenario", "slow")
            .header("x-fake-delay-ms", "200")
            .json(&messages("leaving", true))
            .send()
    };
    let leader = send().await.unwrap();
    let leader_id = leader.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let send2 = send.clone();
    let follower = tokio::spawn(async move {
        let resp = send2().await.unwrap();
        String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
    });
    // Both are in (the follower joins its leader's flight straight after).
    wait_metric(&t, "tollgate_requests_in_flight 2\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(leader); // the leader's client goes away mid-stream
    let body = follower.await.unwrap();
    assert!(body.contains("event: message_stop"), "{body}");
    assert!(!anthropic_text(&body).is_empty());
    assert_eq!(fake.requests().len(), 1);
    let events = t.wait_events(2).await;
    let leader_e = event_by_id(&events, &leader_id);
    assert_eq!(leader_e["status"], "client_aborted");
    // It ran to the end for the follower, so its usage is complete and paid.
    assert_eq!(leader_e["usage_incomplete"], false);
    assert!(leader_e["cost_nusd"].as_u64().unwrap() > 0);
    assert_eq!(
        post(&t, "/v1/messages", &messages("leaving", false), &[])
            .await
            .header("x-tollgate-cache"),
        "hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_gets_the_same_upstream_error() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url())).start();
    let send = |stream: bool| {
        client()
            .post(format!("{}/v1/messages", t.url()))
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-scenario", "error-529")
            .header("x-fake-delay-ms", "2000")
            .json(&messages("overloaded", stream))
            .send()
    };
    let leader = tokio::spawn(send(false));
    // The leader is in before the others come.
    wait_metric(&t, "tollgate_requests_in_flight 1\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let followers: Vec<_> = (0..4).map(|i| tokio::spawn(send(i % 2 == 0))).collect();
    let leader = leader.await.unwrap().unwrap();
    assert_eq!(leader.status(), 529);
    let leader_body = leader.bytes().await.unwrap();
    for f in followers {
        let r = f.await.unwrap().unwrap();
        assert_eq!(r.status(), 529);
        assert_eq!(r.headers()["x-tollgate-cache"], "coalesced");
        assert_eq!(r.bytes().await.unwrap(), leader_body);
    }
    assert_eq!(fake.requests().len(), 1);
    // Not cached: the next one asks again.
    let again = post(
        &t,
        "/v1/messages",
        &messages("overloaded", false),
        &[("x-fake-scenario", "error-529")],
    )
    .await;
    assert_eq!(again.header("x-tollgate-cache"), "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_spend_nothing_from_a_budget() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).config(
        "[[budgets]]\nname = \"daily\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"1.00\"\n",
    ))
    .start();
    let spent = || async {
        let v: Value = reqwest::get(format!("{}/budgets", t.admin_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[0]["spent_nusd"].clone()
    };
    let body = messages("budgeted", false);
    assert_eq!(post(&t, "/v1/messages", &body, &[]).await.status, 200);
    let after_miss = spent().await;
    assert_ne!(after_miss, json!(0));
    for _ in 0..5 {
        let r = post(&t, "/v1/messages", &body, &[]).await;
        assert_eq!(r.header("x-tollgate-cache"), "hit");
    }
    assert_eq!(spent().await, after_miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_through_credential_is_part_of_the_key() {
    let fake = FakeProvider::start().await;
    // No provider key configured: each client's own key goes upstream, and
    // decides what the provider answers (or refuses).
    let mut t = Builder::new(&fake.base_url()).start();
    let body = messages("whose key", false);
    let with_key = |k: &'static str| [("x-api-key", k)];
    let cache_of = |r: Reply| r.header("x-tollgate-cache").to_string();
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &body, &with_key("sk-a")).await),
        "miss"
    );
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &body, &with_key("sk-a")).await),
        "hit"
    );
    assert_eq!(
        cache_of(post(&t, "/v1/messages", &body, &with_key("sk-b")).await),
        "miss"
    );
    assert_eq!(cache_of(post(&t, "/v1/messages", &body, &[]).await), "miss");
    // Never stored: the key itself is nowhere in the cache's files.
    t.stop();
    for entry in walk(&t.data_dir.join("cache")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(4).any(|w| w == b"sk-a" || w == b"sk-b"),
            "a credential is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_bound_answer_is_cached_only_when_it_did_not_cut() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).config(
        "[[budgets]]\nname = \"daily\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"5.00\"\n",
    ))
    .start();
    // No max_tokens: the budget sends its default bound upstream. The
    // answer ends on its own (finish_reason "stop"), so it is cached.
    let body = chat("bounded", false);
    let first = post(&t, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(first.header("x-tollgate-cache"), "miss");
    assert_eq!(first.json()["choices"][0]["finish_reason"], "stop");
    let sent = fake.requests()[0].json();
    assert!(
        sent["max_completion_tokens"].is_u64() || sent["max_tokens"].is_u64(),
        "{sent}"
    );
    let again = post(&t, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(again.header("x-tollgate-cache"), "hit");
}
