//! Gateway keys, rate limits and budgets end to end: the real `tollgate`
//! binary in front of the in-repo fake provider, driven over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-BUDGET-19ce";

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn keyed(b: Builder) -> Builder {
    b.env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
}

/// `"stream": true` and `"stream":false` have the same length, so both
/// kinds of request have the same worst case.
fn body(stream: bool, max_tokens: u64) -> String {
    let s = if stream {
        "\"stream\": true"
    } else {
        "\"stream\":false"
    };
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{max_tokens},{s},"messages":[{{"role":"user","content":"Hello"}}]}}"#
    )
}

/// Worst case of a claude-sonnet-4-5 request: every body byte an input
/// token at $3/MTok, `max_tokens` at $15/MTok (nano-USD per token: 3000, 15000).
fn worst_nusd(body: &str, max_tokens: u64) -> u64 {
    body.len() as u64 * 3000 + max_tokens * 15000
}

fn usd(nusd: u64) -> String {
    format!("{}.{:09}", nusd / 1_000_000_000, nusd % 1_000_000_000)
}

async fn budgets(t: &Tollgate) -> Vec<Value> {
    client()
        .get(format!("{}/budgets", t.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(t: &Tollgate, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overshoot_under_64_concurrent_requests() {
    const K: u64 = 5;
    let fake = FakeProvider::start().await;
    let b = body(false, 256);
    let worst = worst_nusd(&b, 256);
    let t = keyed(Builder::new(&fake.base_url()).no_cache())
        .config(&format!(
            "[[budgets]]\nname = \"acme-day\"\nscope = \"account:acme\"\nperiod = \"day\"\nlimit_usd = \"{}\"\n",
            usd(K * worst)
        ))
        .start();
    let t = Arc::new(t);
    // Every admitted call is held upstream for a while, so all 64 reserve
    // before any settles.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                let r = post(
                    &t,
                    &body(i % 2 == 0, 256),
                    &[
                        ("x-tollgate-account", "acme"),
                        ("x-fake-scenario", "hang"),
                        ("x-fake-delay-ms", "1500"),
                        ("x-fake-usage", "input=10,output=20"),
                    ],
                )
                .await;
                let status = r.status().as_u16();
                let retry = header(&r, "x-should-retry").to_string();
                let text = r.text().await.unwrap();
                (status, retry, text)
            })
        })
        .collect();
    let mut admitted = 0;
    let mut denied = 0;
    for task in tasks {
        let (status, retry, text) = task.await.unwrap();
        match status {
            200 => {
                admitted += 1;
                assert!(!text.contains("\"error\""), "{text}");
            }
            402 => {
                denied += 1;
                assert_eq!(retry, "false");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["type"], "budget_exceeded", "{text}");
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!(
        admitted, K,
        "exactly the worst cases that fit were admitted"
    );
    assert_eq!(denied, 64 - K);
    assert_eq!(fake.requests().len() as u64, K);
    // Every admitted request settled to its actual cost: 10 in, 20 out.
    let actual = 10 * 3000 + 20 * 15000;
    let s = &budgets(&t).await[0];
    assert_eq!(s["spent_nusd"], K * actual);
    assert_eq!(s["reserved_nusd"], 0);
    assert!(s["spent_nusd"].as_u64().unwrap() <= K * worst);
    let events = t.wait_events(64).await;
    let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
    assert_eq!(ok.len() as u64, K);
    assert!(ok.iter().all(|e| e["cost_nusd"] == actual));
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tollgate_budget_denials_total{{budget=\"acme-day\",reason=\"denied\"}} {}",
            64 - K
        )),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_budget_reserved_usd{budget=\"acme-day\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_lowers_max_tokens_and_says_so() {
    let fake = FakeProvider::start().await;
    let b = body(false, 4000);
    // Room for the input plus exactly 1000 output tokens.
    let limit = b.len() as u64 * 3000 + 1000 * 15000;
    let t = keyed(Builder::new(&fake.base_url()).no_cache())
        .config(&format!(
            "[[budgets]]\nname = \"clamped\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"{}\"\non_insufficient = \"clamp\"\n",
            usd(limit)
        ))
        .start();
    let r = post(&t, &b, &[("x-fake-usage", "input=10,output=20")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-clamped-max-tokens"), "1000");
    let seen = fake.requests();
    assert_eq!(
        seen[0].json()["max_tokens"],
        1000,
        "the fake sees the lowered value"
    );
    // The rest of the body is what the client sent.
    assert_eq!(seen[0].json()["messages"][0]["content"], "Hello");
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_budget_denials_total{budget=\"clamped\",reason=\"clamped\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_at_message_start_ends_with_an_error_event() {
    // Events one by one; then the whole stream at once, so the head is
    // held for `message_start` (ingress::held) and goes out with the
    // error event instead.
    let all_at_once = [("x-fake-scenario", "big"), ("x-fake-big-bytes", "2000")];
    for extra in [&[][..], &all_at_once[..]] {
        let fake = FakeProvider::start().await;
        let t = keyed(Builder::new(&fake.base_url()).no_cache())
            .config("[[budgets]]\nname = \"tiny\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"0.05\"\n")
            .start();
        let mut headers = vec![("x-fake-usage", "input=100000,output=5")];
        headers.extend_from_slice(extra);
        let r = post(&t, &body(true, 256), &headers).await;
        assert_eq!(r.status(), 200);
        let text = tokio::time::timeout(Duration::from_secs(10), r.text())
            .await
            .expect("the cut stream ends")
            .unwrap();
        assert!(text.starts_with("event: error\n"), "{text}");
        assert!(text.contains("\"type\":\"budget_exceeded\""), "{text}");
        assert!(
            !text.contains("event: message_start") && !text.contains("message_stop"),
            "{text}"
        );
        assert!(
            text.contains("has $0.05 remaining"),
            "what the budget could hold: {text}"
        );
        let e = &t.wait_events(1).await[0];
        assert_eq!(e["error"], "budget_exceeded");
        assert_eq!(e["input_tokens"], 100000);
        // The provider billed the input it read: the spend says so.
        let s = &budgets(&t).await[0];
        assert!(s["spent_nusd"].as_u64().unwrap() >= 100_000 * 3000, "{s}");
        assert_eq!(s["reserved_nusd"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_restart_and_budget_status_prints_it() {
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = "[[budgets]]\nname = \"acme-month\"\nscope = \"account:acme\"\nperiod = \"month\"\nlimit_usd = \"10\"\n";
    let start = || {
        keyed(Builder::new(&fake.base_url()).no_cache())
            .data_dir(data.path())
            .config(config)
            .start()
    };
    let mut t = start();
    for _ in 0..3 {
        let r = post(
            &t,
            &body(false, 100),
            &[
                ("x-tollgate-account", "acme"),
                ("x-fake-usage", "input=1000,output=100"),
            ],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let spent = 3 * (1000 * 3000 + 100 * 15000);
    assert_eq!(budgets(&t).await[0]["spent_nusd"], spent);
    // While the proxy runs, the CLI asks its admin listener.
    let cfg_path = data.path().join("status.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "data_dir = \"{}\"\nadmin_listen = \"{}\"\n{config}",
            data.path().display(),
            t.admin_url().trim_start_matches("http://")
        ),
    )
    .unwrap();
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["budget", "status", "--config"]).arg(&cfg_path);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let live: Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(live[0]["spent_nusd"], spent);
    t.stop();
    // Stopped: the CLI reads the store itself.
    let table = status(false);
    assert!(
        table.contains("acme-month") && table.contains("0.0135"),
        "{table}"
    );
    let t = start();
    let s = &budgets(&t).await[0];
    assert_eq!(s["spent_nusd"], spent, "spend survived the restart");
    assert_eq!(s["remaining_nusd"], 10_000_000_000u64 - spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_thresholds_fire_the_webhook_once_each() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let mut got = sink.lock().unwrap();
                got.push(v);
                // The first delivery fails: it must be retried.
                if got.len() == 1 {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let fake = FakeProvider::start().await;
    // Each call costs 1000·3000 + 100·15000 = 4 500 000 nano-USD; the limit is 10 calls.
    let t = keyed(Builder::new(&fake.base_url()).no_cache())
        .config(&format!(
            "[[budgets]]\nname = \"team\"\nscope = \"tag:team=search\"\nperiod = \"day\"\nlimit_usd = \"0.045\"\nsoft_thresholds = [0.5, 0.8]\nalert_webhook = \"{hook}\"\n"
        ))
        .start();
    for _ in 0..9 {
        let r = post(
            &t,
            &body(false, 10),
            &[
                ("x-tollgate-tags", "team=search"),
                ("x-fake-usage", "input=1000,output=100"),
            ],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // Another team's calls are not in scope.
    let r = post(&t, &body(false, 10), &[("x-tollgate-tags", "team=ads")]).await;
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = received.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        3,
        "two alerts, the first delivered twice: {got:#?}"
    );
    // The refused delivery was retried (after 0.5 s, so the 0.8 alert came in between).
    let first = got.remove(0);
    let retried = got
        .iter()
        .position(|a| *a == first)
        .expect("the refused alert was retried");
    got.remove(retried);
    got.insert(0, first);
    got.sort_by(|a, b| {
        a["threshold"]
            .as_f64()
            .partial_cmp(&b["threshold"].as_f64())
            .unwrap()
    });
    assert_eq!(got[0]["threshold"], 0.5);
    assert_eq!(got[0]["budget"], "team");
    assert_eq!(got[0]["scope"], "tag:team=search");
    assert_eq!(got[0]["period"], "day");
    assert_eq!(got[0]["spent_usd"], "0.0225");
    assert_eq!(got[0]["limit_usd"], "0.045");
    assert_eq!(got[1]["threshold"], 0.8);
    assert_eq!(got[1]["spent_usd"], "0.036");
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tollgate_budget_alerts_total{budget=\"team\"} 2"),
        "{metrics}"
    );
}

/// Runs `tollgate keys new`; returns the key and the config entry.
fn new_key(account: &str, name: &str, test: bool) -> (String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["keys", "new", "--account", account, "--name", name]);
    if test {
        cmd.arg("--test");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().to_string();
    let entry = text[text.find("[[gateway_keys]]").unwrap()..].to_string();
    assert!(
        !entry.contains(&key),
        "the config entry holds only the hash"
    );
    (key, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keys_and_rate_limits() {
    let fake = FakeProvider::start().await;
    let (live, live_entry) = new_key("acme", "acme-app", false);
    let (test, test_entry) = new_key("acme", "acme-ci", true);
    assert!(live.starts_with("tg_live_") && test.starts_with("tg_test_"));
    let t = keyed(Builder::new(&fake.base_url()).no_cache())
        .config(&format!(
            "{live_entry}rpm = 2\n\n{test_entry}\n[[rate_limits]]\nscope = \"account:*\"\nrpm = 100\n"
        ))
        .start();
    let b = body(false, 10);
    // Valid live key, as x-api-key and as a bearer token.
    let bearer = format!("Bearer {live}");
    let r = post(
        &t,
        &b,
        &[("authorization", &bearer), ("x-tollgate-workload", "web")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(
        &t,
        &b,
        &[("x-api-key", &live), ("x-tollgate-account", "acme")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.header("x-api-key"),
            Some(ANTHROPIC_KEY),
            "the provider key is injected"
        );
        assert!(s.header("authorization").is_none());
        for (name, value) in &s.headers {
            assert!(
                !name.starts_with("x-tollgate-"),
                "{name} reached the provider"
            );
            assert!(
                !value.contains("tg_live_"),
                "the gateway key reached the provider"
            );
        }
    }
    // The key's rpm = 2: the third request is refused, with SDK-readable headers.
    let r = post(&t, &b, &[("x-api-key", &live)]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-tollgate-error"), "rate_limited");
    assert_eq!(header(&r, "retry-after"), "30");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Missing, wrong, another account, and a test key on a live sidecar.
    for (headers, reason) in [
        (vec![], "missing"),
        (vec![("x-api-key", "tg_live_0000")], "invalid"),
        (vec![("x-api-key", ANTHROPIC_KEY)], "invalid"),
        (vec![("x-api-key", test.as_str())], "wrong_mode"),
    ] {
        let r = post(&t, &b, &headers).await;
        assert_eq!(r.status(), 401, "{reason}");
        assert_eq!(header(&r, "x-tollgate-error"), "unauthorized");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "authentication_error", "{reason}");
        assert!(
            !v.to_string().contains("tg_test_"),
            "no key in an error body"
        );
    }
    let r = post(
        &t,
        &b,
        &[("x-api-key", &test), ("x-tollgate-account", "evil")],
    )
    .await;
    assert_eq!(r.status(), 401, "mode is checked before the account");
    let other_account = post(
        &t,
        &b,
        &[("x-api-key", &live), ("x-tollgate-account", "evil")],
    )
    .await;
    assert_eq!(other_account.status(), 403);
    assert_eq!(fake.requests().len(), 2, "no refused request went upstream");
    let events = t.wait_events(9).await;
    let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
    assert!(ok.iter().all(|e| e["account"] == "acme"));
    let metrics = t.metrics().await;
    for line in [
        "tollgate_rate_limited_total{kind=\"requests\",rule=\"key:acme-app\"} 1",
        "tollgate_gateway_key_rejections_total{reason=\"invalid\"} 2",
        "tollgate_gateway_key_rejections_total{reason=\"wrong_mode\"} 2",
        "tollgate_gateway_key_rejections_total{reason=\"account\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let log = t.log();
    assert!(
        !log.contains(&live[8..]) && !log.contains(&test[8..]),
        "a gateway key was logged"
    );

    // With no provider key configured, the gateway key is still never passed on.
    let bare = Builder::new(&fake.base_url())
        .no_cache()
        .config(&live_entry)
        .start();
    fake.clear();
    assert_eq!(post(&bare, &b, &[("x-api-key", &live)]).await.status(), 200);
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("x-api-key").is_none() && seen[0].header("authorization").is_none());

    // A test sidecar takes the test key and refuses the live one.
    let staging = keyed(Builder::new(&fake.base_url()).no_cache())
        .top("gateway_keys_mode = \"test\"")
        .config(&format!("{live_entry}\n{test_entry}"))
        .start();
    assert_eq!(
        post(&staging, &b, &[("x-api-key", &test)]).await.status(),
        200
    );
    assert_eq!(
        post(&staging, &b, &[("x-api-key", &live)]).await.status(),
        401
    );
    let _ = json!({});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_and_failure_leaves_the_budget_consistent() {
    let fake = FakeProvider::start().await;
    let t = keyed(Builder::new(&fake.base_url()).no_cache())
        .config("[timeouts]\nfirst_byte = \"300ms\"\n\n[[budgets]]\nname = \"day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"10\"\n")
        .start();
    // No max_tokens (the default bound is written in) and a number the
    // rewrite cannot parse: 400, and the reservation is released.
    let odd =
        r#"{"model":"claude-sonnet-4-5","x":1e400,"messages":[{"role":"user","content":"Hi"}]}"#;
    let r = post(&t, odd, &[]).await;
    assert_eq!(r.status(), 400);
    let s = &budgets(&t).await[0];
    assert_eq!(
        (s["spent_nusd"].as_u64(), s["reserved_nusd"].as_u64()),
        (Some(0), Some(0))
    );
    // An unmetered endpoint cannot spend under a budget; reads still pass.
    let r = client()
        .post(format!("{}/v1/complete", t.url()))
        .header("anthropic-version", "2023-06-01")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-tollgate-error"), "forbidden");
    // A batch create is reserved per item (tests/batch_settlement.rs); one
    // without requests is refused before anything is reserved or sent.
    let r = client()
        .post(format!("{}/v1/messages/batches", t.url()))
        .header("anthropic-version", "2023-06-01")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let s = &budgets(&t).await[0];
    assert_eq!(s["reserved_nusd"].as_u64(), Some(0));
    let r = client()
        .get(format!("{}/v1/models", t.url()))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Sent, then no answer within first_byte: the provider may bill it, so
    // the worst case stays spent.
    let b = body(false, 100);
    let r = post(
        &t,
        &b,
        &[("x-fake-scenario", "hang"), ("x-fake-delay-ms", "2000")],
    )
    .await;
    assert_eq!(r.status(), 504);
    let s = &budgets(&t).await[0];
    assert_eq!(s["spent_nusd"], worst_nusd(&b, 100));
    assert_eq!(s["reserved_nusd"], 0);
}

/// Embeddings have no output: a budget reserves their input estimate
/// (every body byte a token) and never adds an output bound to the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_reserve_their_input_and_get_no_output_bound() {
    let fake = FakeProvider::start().await;
    let small = r#"{"model":"text-embedding-3-large","input":"hi"}"#;
    let big = format!(
        r#"{{"model":"text-embedding-3-large","input":"{}"}}"#,
        "word ".repeat(100)
    );
    // $0.13 / MTok = 130 nano-USD a token: the small body fits, the big one not.
    let ceiling = small.len() as u64 * 130;
    let t = Builder::new(&fake.base_url())
        .no_cache()
        .env("OPENAI_API_KEY", "sk-openai-BUDGET-emb")
        .config(&format!(
            "[[budgets]]\nname = \"per-call\"\nscope = \"all\"\nperiod = \"request\"\nlimit_usd = \"{}\"\n\n\
             [[budgets]]\nname = \"day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"1\"\n",
            usd(ceiling)
        ))
        .start();
    let send = |body: String| {
        let url = format!("{}/v1/embeddings", t.url());
        async move {
            client()
                .post(url)
                .header("content-type", "application/json")
                .header("x-fake-usage", "input=2")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let ok = send(small.to_string()).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-tollgate-cost-usd"], "0.00000026");
    ok.bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&fake.requests()[0].body).unwrap();
    assert_eq!(sent, serde_json::from_str::<Value>(small).unwrap());
    let refused = send(big).await;
    assert_eq!(refused.status(), 402);
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    assert_eq!(fake.requests().len(), 1);
    // The day budget was charged the real cost.
    let day = budgets(&t)
        .await
        .into_iter()
        .find(|b| b["name"] == "day")
        .unwrap();
    assert_eq!(day["spent_nusd"], 260, "{day}");
}
