//! Issue 12 ("Hardening"): requests a demanding client or a misbehaving
//! network sends, through the real binary in front of the fake provider.
//! Each test reproduces one defect of that issue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::raw;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-HARDEN-3c1d";
const OPENAI_KEY: &str = "sk-openai-injected-HARDEN-9e2b";
const WAIT: Duration = Duration::from_secs(20);

fn start(fake: &FakeProvider) -> Tollgate {
    start_with(fake, "")
}

/// With `toml` (tables) added to the config.
fn start_with(fake: &FakeProvider, toml: &str) -> Tollgate {
    Builder::new(&fake.base_url())
        .no_cache()
        .config(toml)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .start()
}

fn addr(t: &Tollgate) -> String {
    t.addr.to_string()
}

fn messages_body() -> Vec<u8> {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Hello"}]})
    .to_string()
    .into_bytes()
}

fn chat_body() -> Vec<u8> {
    json!({"model": "gpt-4o", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Hello"}]})
    .to_string()
    .into_bytes()
}

/// POSTs `body` to `path` with `anthropic-version` (when `anthropic`).
async fn post(t: &Tollgate, path: &str, anthropic: bool, body: &[u8]) -> raw::Response {
    let line = format!("POST {path} HTTP/1.1");
    let mut head = vec![line.as_str(), "content-type: application/json"];
    if anthropic {
        head.push("anthropic-version: 2023-06-01");
    }
    raw::send(&addr(t), &head, body, WAIT).await
}

/// An error tollgate made itself, in Anthropic's shape.
fn assert_anthropic_error(r: &raw::Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tollgate-error"), Some(kind), "{r:?}");
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

/// An error tollgate made itself, in OpenAI's shape.
fn assert_openai_error(r: &raw::Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tollgate-error"), Some(kind), "{r:?}");
    let v = r.json();
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["type"], Value::Null, "{v}");
}

// === item 1: odd paths ===

/// Every spelling of `/v1/messages` that a path-normalising provider or
/// front proxy would bill as a messages call is routed, forwarded and
/// metered as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_spellings_of_a_metered_path_are_normalised_and_metered() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let paths = [
        "//v1/messages",
        "/v1//messages",
        "/v1/./messages",
        "/./v1/messages",
        "/v1/../v1/messages",
        "/v1/models/../messages",
        "/%2e%2e/v1/messages",
        "/v1/%2e%2e/v1/messages",
        "/v1/%2E/messages",
        "/v1/mess%61ges",
        "/anthropic//v1/./messages",
    ];
    for path in paths {
        fake.clear();
        let r = post(&t, path, true, &messages_body()).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let sent = fake.requests();
        assert_eq!(sent.len(), 1, "{path}");
        assert_eq!(sent[0].path, "/v1/messages", "{path} was forwarded as is");
        let e = event_of(&t, &r).await;
        assert_eq!(e["model"], "claude-sonnet-4-5", "{path}: {e}");
        assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{path}: {e}");
        assert_eq!(e["status"], "ok", "{path}: {e}");
    }
    // The OpenAI side too, query kept.
    fake.clear();
    let r = post(&t, "/v1/./chat//completions?x=1", false, &chat_body()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(fake.requests()[0].path, "/v1/chat/completions?x=1");
    let e = event_of(&t, &r).await;
    assert_eq!(e["model"], "gpt-4o", "{e}");
}

/// A path that cannot be normalised without guessing (an encoded slash or
/// backslash, a NUL, a broken escape) is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_be_normalised_are_refused_with_400() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    for path in [
        "/v1%2fmessages",
        "/v1/%2E%2E%2Fv1/messages",
        "/v1%5cmessages",
        "/v1/messages%00",
        "/v1/mess%zzages",
        "/v1/messages%",
    ] {
        let r = post(&t, path, true, &messages_body()).await;
        assert_anthropic_error(&r, 400, "bad_path");
    }
    let r = post(&t, "/v1/chat%2fcompletions", false, &chat_body()).await;
    assert_openai_error(&r, 400, "bad_path");
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    let events = t.wait_events(7).await;
    assert!(
        events.iter().all(|e| e["status"] == "proxy_error"),
        "{events:?}"
    );
}

/// Anthropic's OpenAI-compatible endpoint is billed by Anthropic but not
/// metered by tollgate: refused clearly instead of slipping through; paths
/// that name no provider endpoint are 404 whatever their headers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_anthropic_endpoints_and_unknown_prefixes_are_refused() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let r = post(&t, "/v1/chat/completions", true, &chat_body()).await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/v1/messages"), "{message}");
    let r = post(&t, "/anthropic/v1/chat/completions", false, &chat_body()).await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    let r = post(
        &t,
        "/anthropic/v1/../v1/chat/completions",
        false,
        &chat_body(),
    )
    .await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    for path in ["/v2/messages", "/nosuchprovider/v1/messages", "/messages"] {
        let r = post(&t, path, true, &messages_body()).await;
        assert_anthropic_error(&r, 404, "unknown_route");
    }
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    // The plain routes still work.
    let r = post(&t, "/v1/chat/completions", false, &chat_body()).await;
    assert_eq!(r.status, 200);
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
    assert_eq!(fake.requests().len(), 2);
}

// === item 8: a private data dir ===

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and directory below `dir` (itself excluded).
fn tree(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if path.is_dir() {
            tree(&path, out);
        }
    }
}

/// Even under a umask that hides nothing, the data dir (ledger, journal,
/// cached prompts and answers) is the owner's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_created_private_whatever_the_umask() {
    let fake = FakeProvider::start().await;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("a").join("data");
    let mut t = Builder::new(&fake.base_url())
        .data_dir(&data)
        .umask(0)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .start();
    // A cached answer and a ledger entry on disk.
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
    event_of(&t, &r).await;
    assert_eq!(mode(&data), 0o700, "data dir");
    let mut files = Vec::new();
    tree(&data, &mut files);
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let m = mode(f);
        assert_eq!(m & 0o077, 0, "{} is {m:o}", f.display());
    }
    t.stop();
    // What the run created after start is private too (the sweep at the
    // next start, or the modes it was created with).
    let mut files = Vec::new();
    tree(&data, &mut files);
    for f in &files {
        let m = mode(f);
        assert_eq!(m & 0o077, 0, "{} is {m:o} after the run", f.display());
    }
}

/// Runs `cmd` to its exit (killed after `timeout`: `None`), with its stderr.
fn run_to_exit(mut cmd: std::process::Command, timeout: Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// Anyone who can write to the data dir can rewrite the ledger or plant
/// cached answers: tollgate refuses to start there, and says why.
#[test]
fn a_group_or_world_writable_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    for bits in [0o777, 0o770, 0o703] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(bits)).unwrap();
        let port = support::tollgate::free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["proxy", "--admin-listen", "", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .current_dir(dir.path());
        let (status, err) = run_to_exit(cmd, Duration::from_secs(10));
        assert_eq!(status, Some(1), "{bits:o}: {err}");
        assert!(err.contains(&data.display().to_string()), "{err}");
        assert!(err.contains("writable"), "{err}");
        assert!(err.contains("chmod 700"), "{err}");
        // Nothing was opened (or created) inside it.
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "{err}");
    }
}

/// A data dir others can read (an operator's choice, e.g. for a backup
/// agent) is used, with a warning; the files tollgate keeps in it are not
/// readable by others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Builder::new(&fake.base_url())
        .data_dir(&data)
        .umask(0)
        .log_level("info")
        .start();
    let log = t.log();
    assert!(
        log.contains("WARN") && log.contains("readable by others"),
        "{log}"
    );
    assert_eq!(mode(&data), 0o755, "the operator's choice is kept");
    let mut files = Vec::new();
    tree(&data, &mut files);
    for f in &files {
        let m = mode(f);
        assert_eq!(m & 0o077, 0, "{} is {m:o}", f.display());
    }
}

// === item 4: invalid UTF-8 ===

/// A JSON text is UTF-8 (RFC 8259 §8.1); a body with invalid bytes inside
/// a string (one tollgate does not read, such as a message's text) is
/// refused as the provider would, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_json_string_is_refused_before_sending() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let with = |prefix: &str, bad: &[u8], suffix: &str| {
        let mut b = prefix.as_bytes().to_vec();
        b.extend_from_slice(bad);
        b.extend_from_slice(suffix.as_bytes());
        b
    };
    let messages =
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hel"#;
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hel"#;
    for bad in [&b"\xff"[..], b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x9f\x98"] {
        for path in ["/v1/messages", "/v1/messages/count_tokens"] {
            let r = post(&t, path, true, &with(messages, bad, r#"lo"}]}"#)).await;
            assert_anthropic_error(&r, 400, "bad_request");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        }
        let r = post(
            &t,
            "/v1/chat/completions",
            false,
            &with(chat, bad, r#"lo"}]}"#),
        )
        .await;
        assert_openai_error(&r, 400, "bad_request");
        // In a field tollgate never reads, too.
        let body = with(
            r#"{"model":"gpt-4o","metadata":{"k":""#,
            bad,
            r#""},"messages":[]}"#,
        );
        let r = post(&t, "/v1/chat/completions", false, &body).await;
        assert_openai_error(&r, 400, "bad_request");
    }
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    // Valid multi-byte UTF-8 still passes.
    let ok = with(messages, "ö😀".as_bytes(), r#"lo"}]}"#);
    let r = post(&t, "/v1/messages", true, &ok).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(fake.requests()[0].body, ok);
}

// === item 6: slow clients ===

/// Writes `parts` one by one, `gap` apart, ignoring write errors (the
/// server may have answered and closed meanwhile); then reads the answer.
async fn trickle(
    conn: tokio::net::TcpStream,
    parts: Vec<Vec<u8>>,
    gap: Duration,
) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        for p in parts {
            if wr.write_all(&p).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        // Keep the write side open: a slow client does not hang up.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(read.is_ok(), "no answer within {WAIT:?}: {got:?}");
    (got, started.elapsed())
}

/// One header line at a time, 300 ms apart, never finishing: the head must
/// be complete within `timeouts.request_head`, else 408 in the shape of the
/// dialect the bytes so far speak; on a fresh and on a reused connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_is_answered_408() {
    let fake = FakeProvider::start().await;
    let t = start_with(&fake, "[timeouts]\nrequest_head = \"1s\"\n");
    let lines = |first: &str| -> Vec<Vec<u8>> {
        let mut v = vec![first.as_bytes().to_vec()];
        for i in 0..40 {
            v.push(format!("x-slow-{i}: {i}\r\n").into_bytes());
        }
        v
    };
    // Fresh connection, Anthropic.
    let conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let (got, took) = trickle(
        conn,
        lines("POST /v1/messages HTTP/1.1\r\nanthropic-version: 2023-06-01\r\n"),
        Duration::from_millis(300),
    )
    .await;
    let r = raw::parse(&got);
    assert_anthropic_error(&r, 408, "request_timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // One byte at a time, OpenAI.
    let conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let bytes =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let parts = bytes.bytes().map(|b| vec![b]).collect();
    let (got, took) = trickle(conn, parts, Duration::from_millis(100)).await;
    let r = raw::parse(&got);
    assert_openai_error(&r, 408, "request_timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // A reused connection: a prompt first request, then a slow one.
    let conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let body = chat_body();
    let mut first = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    first.extend_from_slice(&body);
    let mut parts = vec![first];
    parts.extend(lines("GET /v1/models HTTP/1.1\r\n"));
    let (got, took) = trickle(conn, parts, Duration::from_millis(300)).await;
    assert_eq!(raw::parse(&got).status, 200, "the first answer");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-tollgate-error: request_timeout"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(fake.requests().len(), 1, "only the prompt request was sent");
    assert_no_error_lines(&t);
}

/// A body that stops arriving, or trickles in, is cut at
/// `timeouts.request_body` with a 408 (nothing is sent upstream) and the
/// refusal is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_or_trickles_is_answered_408() {
    let fake = FakeProvider::start().await;
    let t = start_with(&fake, "[timeouts]\nrequest_body = \"1s\"\n");
    let body = messages_body();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // Stalls after 10 bytes.
    let conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let mut part = head.clone().into_bytes();
    part.extend_from_slice(&body[..10]);
    let (got, took) = trickle(conn, vec![part], Duration::from_millis(10)).await;
    let r = raw::parse(&got);
    assert_anthropic_error(&r, 408, "request_timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let e = event_of(&t, &r).await;
    assert_eq!(e["status"], "proxy_error", "{e}");
    assert_eq!(e["error"], "request_timeout", "{e}");
    // Trickles: one byte every 100 ms never finishes within 1 s.
    let conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let mut parts = vec![head.into_bytes()];
    parts.extend(body.iter().map(|b| vec![*b]));
    let (got, took) = trickle(conn, parts, Duration::from_millis(100)).await;
    let r = raw::parse(&got);
    assert_anthropic_error(&r, 408, "request_timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
}

// === item 2: shutdown mid-stream ===

/// A stream still running when `shutdown_grace` is over is ended with the
/// dialect's error event, and recorded with what was seen (the input of
/// `message_start`, the output so far) under a status of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_shutdown_ends_with_an_error_event_and_keeps_its_usage() {
    use futures_util::StreamExt;
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let budget =
        "[[budgets]]\nname = \"day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"100\"\n";
    let mut t = Builder::new(&fake.base_url())
        .no_cache()
        .config(budget)
        .data_dir(data.path())
        .env("TOLLGATE_SHUTDOWN_GRACE", "1s")
        .start();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", t.url()))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("x-fake-scenario", "slow")
        .header("x-fake-delay-ms", "1000")
        .header("x-fake-usage", "input=1000")
        .body(
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                   "messages": [{"role": "user", "content": "Hello"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-tollgate-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let reader = tokio::spawn(async move {
        let mut body = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(Ok(chunk)) = s.next().await {
            body.extend_from_slice(&chunk);
        }
        body
    });
    // And one still waiting for its answer's head.
    let url = t.url();
    let waiting_body = messages_body();
    let waiting_len = waiting_body.len() as u64;
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .header("x-fake-scenario", "hang")
            .body(waiting_body)
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.signal(15);
    let body = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream ends soon after the grace period")
        .unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(!text.contains("event: message_stop"), "{text}");
    assert!(text.contains("event: error"), "no error event: {text}");
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered soon after the grace period")
        .unwrap();
    assert_eq!(r.status(), 503);
    let waiting_id = r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.headers()["x-tollgate-error"], "shutting_down");
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "error");
    let status = t.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let t2 = Builder::new(&fake.base_url())
        .no_cache()
        .config(budget)
        .data_dir(data.path())
        .start();
    // Both settled at their worst case ($3 / $15 per MTok; 64 output
    // tokens each): the waiting one's input bound is its size, the
    // stream's grew to its real input at message_start.
    let spent = t2.budgets().await;
    let worst = (waiting_len * 3_000 + 64 * 15_000) + (1000 * 3_000 + 64 * 15_000);
    assert_eq!(spent[0]["spent_nusd"], worst, "{spent}");
    let e = t2.wait_event(&waiting_id).await;
    assert_eq!(e["status"], "shutdown", "{e}");
    assert_eq!(e["usage_incomplete"], true, "{e}");
    let e = t2.wait_event(&id).await;
    assert_eq!(e["status"], "shutdown", "{e}");
    assert_eq!(e["input_tokens"], 1000, "{e}");
    assert!(e["output_tokens"].as_u64().unwrap() >= 1, "{e}");
    assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["usage_incomplete"], true, "{e}");
    assert_eq!(e["error"], "shutdown", "{e}");
}

// === item 3: unreadable usage is not free ===

/// An upstream that answers every request with `answer` (a raw HTTP/1.1
/// response) and closes; returns its base URL.
async fn canned_upstream(answer: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and its (small) body, then answer.
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// The usage event of the request `r` answered.
async fn event_of(t: &Tollgate, r: &raw::Response) -> Value {
    t.wait_event(r.header("x-tollgate-request-id").unwrap())
        .await
}

/// Input from the request's size, output its bound (64), both estimated.
fn assert_charged_the_request_bound(e: &Value, body: &[u8]) {
    assert_eq!(e["input_tokens"], body.len() as u64, "{e}");
    assert_eq!(e["output_tokens"], 64, "the request's bound: {e}");
    assert_eq!(e["estimated"]["input"], true, "{e}");
    assert_eq!(e["estimated"]["output"], true, "{e}");
}

/// The usage of a 200 whose JSON cannot be read is charged at the best
/// bound available, and the event says which figures are estimated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_whose_usage_cannot_be_read_is_charged_its_bound() {
    support::install_tls_provider();
    let garbage: &[&'static [u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"id\":\"msg_1\",\"type\":\"mess",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\nnot json!",
    ];
    for answer in garbage {
        let base = canned_upstream(answer).await;
        let t = Builder::new(&base).no_cache().start();
        let body = messages_body();
        let r = post(&t, "/v1/messages", true, &body).await;
        assert_eq!(r.status, 200);
        let e = event_of(&t, &r).await;
        assert_eq!(e["usage_incomplete"], true, "{e}");
        assert_charged_the_request_bound(&e, &body);
        // claude-sonnet-4-5: $3 / MTok in, $15 / MTok out.
        assert_eq!(
            e["cost_nusd"],
            body.len() as u64 * 3_000 + 64 * 15_000,
            "{e}"
        );
    }
}

/// A JSON answer over the metering limit, and an OpenAI stream cut before
/// its usage chunk, are charged their bound too: input from the request,
/// output the request's bound (nothing countable) or the deltas seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_and_cut_openai_streams_are_charged_their_bound() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .no_cache()
        .top("max_body_bytes = 300")
        .start();
    let body = messages_body();
    let r = post(&t, "/v1/messages", true, &body).await;
    assert_eq!(r.status, 200);
    let e = event_of(&t, &r).await;
    assert_eq!(e["error"], "response_too_large_to_meter", "{e}");
    assert_charged_the_request_bound(&e, &body);
    assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{e}");
    // A stream cut after two content deltas, before its usage chunk.
    let chat = json!({"model": "gpt-4o", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "Hi"}]})
    .to_string()
    .into_bytes();
    let line = "POST /v1/chat/completions HTTP/1.1";
    let r = raw::send(
        &addr(&t),
        &[
            line,
            "content-type: application/json",
            "x-fake-scenario: cut",
        ],
        &chat,
        WAIT,
    )
    .await;
    assert_eq!(r.status, 200);
    let e = event_of(&t, &r).await;
    assert_eq!(e["status"], "upstream_aborted", "{e}");
    assert!(e["input_tokens"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["estimated"]["input"], true, "{e}");
    assert_eq!(e["output_tokens"], 2, "the deltas seen: {e}");
    assert_eq!(e["estimated"]["output"], true, "{e}");
    assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{e}");
    // Complete usage is measured, not estimated.
    let r = raw::send(
        &addr(&t),
        &[line, "content-type: application/json"],
        &chat,
        WAIT,
    )
    .await;
    let e = event_of(&t, &r).await;
    assert_eq!(e["estimated"]["input"], false, "{e}");
    assert_eq!(e["estimated"]["output"], false, "{e}");
}

// === item 5: parser-level errors ===

/// Sends `bytes` as they are, reads the answer to the connection's end.
async fn send_raw(t: &Tollgate, bytes: &[u8]) -> raw::Response {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = conn.write_all(bytes).await;
    raw::read_response(&mut conn, WAIT).await
}

/// An error tollgate made, whatever the dialect: its kind, a JSON error body.
fn assert_tollgate_error(r: &raw::Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("x-tollgate-error"), Some(kind), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert!(r.json()["error"]["message"].is_string(), "{r:?}");
}

/// What pingora's HTTP parser refuses gets tollgate's error kind and, where
/// the dialect shows, the provider's error shape; nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_get_a_provider_shaped_error() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let anthropic = "POST /v1/messages HTTP/1.1\r\nhost: x\r\nanthropic-version: 2023-06-01\r\n";
    // A malformed chunk size.
    let r = send_raw(
        &t,
        format!("{anthropic}transfer-encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_anthropic_error(&r, 400, "malformed_request");
    // A NUL in a header value.
    let r = send_raw(&t, format!("{anthropic}x-a: a\0b\r\n\r\n").as_bytes()).await;
    assert_anthropic_error(&r, 400, "malformed_request");
    // 1,000 headers.
    let many: String = (0..1000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = send_raw(&t, format!("{anthropic}{many}\r\n").as_bytes()).await;
    assert!(r.status == 400 || r.status == 431, "{r:?}");
    assert_anthropic_error(&r, r.status, "malformed_request");
    // A 1 MB header.
    let big = "a".repeat(1 << 20);
    let r = send_raw(&t, format!("{anthropic}x-big: {big}\r\n\r\n").as_bytes()).await;
    assert!(r.status == 400 || r.status == 431, "{}", r.status);
    assert_anthropic_error(&r, r.status, "malformed_request");
    // An 800 KB header block (100 headers of 8 KB): within pingora's
    // limits, so the (empty) body is what is refused.
    let block: String = (0..100)
        .map(|i| format!("x-b{i}: {}\r\n", "b".repeat(8 << 10)))
        .collect();
    let r = send_raw(
        &t,
        format!("{anthropic}connection: close\r\n{block}\r\n").as_bytes(),
    )
    .await;
    assert_anthropic_error(&r, 400, "bad_request");
    // A garbage request line, and TLS on the plain port.
    let r = send_raw(&t, b"\x01\x02garbage garbage\r\n\r\n").await;
    assert_tollgate_error(&r, 400, "malformed_request");
    let r = send_raw(&t, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
    assert_tollgate_error(&r, 400, "malformed_request");
    // CONNECT on the base-URL port (HTTPS_PROXY mode is another listener).
    let r = send_raw(
        &t,
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nhost: api.openai.com:443\r\n\r\n",
    )
    .await;
    assert_openai_error(&r, 405, "method_not_allowed");
    // Connections closed before or amid their first request.
    for partial in [&b""[..], b"POST /v1/mess", b"GET / HTTP/1.1\r\nhost: x\r\n"] {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        conn.write_all(partial).await.unwrap();
        drop(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    assert_no_error_lines(&t);
}

/// Nothing a client did was logged at ERROR (pingora's or tollgate's).
fn assert_no_error_lines(t: &Tollgate) {
    let log = t.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

// === item 7: compressed upstream answers ===

/// A raw HTTP/1.1 200 carrying `body` gzip-compressed.
fn gzipped_answer(content_type: &str, body: &str) -> &'static [u8] {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    out.extend_from_slice(&gz);
    Box::leak(out.into_boxed_slice())
}

/// An upstream that compresses although tollgate asked for plain bytes:
/// the tap reads the decoded answer, and the client gets it decoded, marked
/// as such, stream and JSON alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_encoded_answers_are_decoded_for_the_tap_and_the_client() {
    support::install_tls_provider();
    let usage = r#""usage":{"input_tokens":100,"output_tokens":1}"#;
    let sse = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],{usage}}}}}\n\n\
         event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hi\"}}}}\n\n\
         event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":7}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    let json_answer = r#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":100,"output_tokens":7}}"#;
    for (answer, plain) in [
        (gzipped_answer("text/event-stream", &sse), sse.as_str()),
        (gzipped_answer("application/json", json_answer), json_answer),
    ] {
        let base = canned_upstream(answer).await;
        let t = Builder::new(&base).no_cache().start();
        let r = post(&t, "/v1/messages", true, &messages_body()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "{r:?}");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(text.starts_with(plain), "{text}");
        assert!(!text.contains("event: error"), "{text}");
        let e = event_of(&t, &r).await;
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["usage_incomplete"], false, "{e}");
        assert_eq!(e["input_tokens"], 100, "{e}");
        assert_eq!(e["output_tokens"], 7, "{e}");
        assert_eq!(e["cost_nusd"], 100 * 3_000 + 7 * 15_000, "{e}");
    }
}

// === fuzz: mutated bodies ===

/// xorshift64*: a fixed seed gives the same bodies on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `body` with one to four random edits: byte flips, insertions (invalid
/// UTF-8 among them), deletions, truncation, duplication.
fn mutate(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => b.insert(at, rng.next() as u8),
            2 => {
                let bad: &[&[u8]] = &[b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x9f"];
                let bad = bad[rng.below(bad.len())];
                b.splice(at..at, bad.iter().copied());
            }
            3 => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                b.drain(at..end);
            }
            4 => b.truncate(at),
            5 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            _ => {
                let tokens: &[&[u8]] =
                    &[b"\"", b"{", b"}", b"[", b",", b"\\u0000", b"1e999", b"null"];
                let t = tokens[rng.below(tokens.len())];
                b.splice(at..at, t.iter().copied());
            }
        }
        if b.is_empty() {
            b.push(b'{');
        }
    }
    b
}

/// A few thousand mutated bodies, fixed seed: no crash, no hang, no 5xx,
/// every error tollgate makes in the provider's shape, and nothing reaches
/// the provider that is not valid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_bodies_never_crash_and_never_forward_malformed_json() {
    use futures_util::StreamExt;
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let bases: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/messages", messages_body()),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": true,
                   "system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi ö"}]}]})
            .to_string()
            .into_bytes(),
        ),
        ("/v1/chat/completions", chat_body()),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true, "n": 2, "max_completion_tokens": 8,
                   "messages": [{"role": "user", "content": "Hi 😀"}]})
            .to_string()
            .into_bytes(),
        ),
    ];
    let mut rng = Rng(0x7011_6a7e_2026_1203);
    let cases: Vec<(&str, Vec<u8>)> = (0..2000)
        .map(|_| {
            let (path, base) = &bases[rng.below(bases.len())];
            (*path, mutate(&mut rng, base))
        })
        .collect();
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let url = t.url();
    let started = std::time::Instant::now();
    let results: Vec<_> = futures_util::stream::iter(cases)
        .map(|(path, body)| {
            let client = client.clone();
            let url = format!("{url}{path}");
            async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(20),
                    client
                        .post(url)
                        .header("anthropic-version", "2023-06-01")
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send(),
                )
                .await
                .expect("no hang")
                .expect("no dropped connection");
                let status = r.status().as_u16();
                let kind = r
                    .headers()
                    .get("x-tollgate-error")
                    .map(|v| v.to_str().unwrap().to_string());
                let text = r.bytes().await.expect("a whole answer");
                (path, body, status, kind, text)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let mut refused = 0;
    for (path, body, status, kind, text) in &results {
        let show = || {
            format!(
                "{path} {:?} → {status} {}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(text)
            )
        };
        assert!(*status < 500, "{}", show());
        if let Some(kind) = kind {
            refused += 1;
            let v: Value = serde_json::from_slice(text).unwrap_or_else(|_| panic!("{}", show()));
            assert!(v["error"]["message"].is_string(), "{kind}: {}", show());
            if *path == "/v1/messages" {
                assert_eq!(v["type"], "error", "{}", show());
            }
        }
    }
    assert!(
        refused > 100,
        "the mutations should break many bodies: {refused}"
    );
    for r in fake.requests() {
        assert!(
            std::str::from_utf8(&r.body).is_ok()
                && serde_json::from_slice::<Value>(&r.body).is_ok(),
            "forwarded malformed: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Still serving.
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
}

/// A client that stops reading a stream holds its relay in a write when
/// the grace is over: the relay is dropped, and its event still says
/// `shutdown` and keeps the input `message_start` reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stuck_on_a_slow_reader_at_shutdown_keeps_its_usage() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeProvider::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut t = Builder::new(&fake.base_url())
        .no_cache()
        .data_dir(data.path())
        .env("TOLLGATE_SHUTDOWN_GRACE", "1s")
        .start();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "Hello"}]})
    .to_string();
    let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\nx-fake-scenario: big\r\nx-fake-usage: input=1000\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Read the head and a little, then stop reading.
    let mut first = vec![0u8; 4096];
    let n = conn.read(&mut first).await.unwrap();
    let text = String::from_utf8_lossy(&first[..n]).into_owned();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-tollgate-request-id: "))
        .unwrap_or_else(|| panic!("{text}"))
        .trim()
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.signal(15);
    let status = t.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    drop(conn);
    let t2 = Builder::new(&fake.base_url())
        .no_cache()
        .data_dir(data.path())
        .start();
    let e = t2.wait_event(&id).await;
    assert_eq!(e["status"], "shutdown", "{e}");
    assert_eq!(e["input_tokens"], 1000, "{e}");
    assert_eq!(e["usage_incomplete"], true, "{e}");
}

/// Item 9: after 2,000 idle connections open and close, the sidecar's RSS
/// returns near where it started (jemalloc hands freed pages back within
/// about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_given_back_after_2000_idle_connections() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    // Warm up: one request, so that lazily built state is counted at start.
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start_kib = t.rss_kib();
    let mut conns = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        // One byte of a request head: pingora reads (and buffers) for it.
        tokio::io::AsyncWriteExt::write_all(&mut s, b"G")
            .await
            .unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held_kib = t.rss_kib();
    drop(conns);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after_kib = t.rss_kib();
    while after_kib > start_kib + 8 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after_kib = t.rss_kib();
    }
    eprintln!("RSS: start {start_kib} KiB, 2,000 idle connections {held_kib} KiB, after they close {after_kib} KiB");
    assert!(
        held_kib > start_kib,
        "the connections cost nothing? {held_kib} vs {start_kib}"
    );
    assert!(
        after_kib <= start_kib + 8 * 1024,
        "RSS stayed up: start {start_kib} KiB, held {held_kib} KiB, after {after_kib} KiB"
    );
    // Still serving.
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
}

/// Item 5: the admin listener's own errors say their kind too.
#[tokio::test]
async fn admin_errors_carry_their_kind() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let r = reqwest::get(format!("{}/nope", t.admin_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-tollgate-error"], "not_found");
    let r = reqwest::get(format!("{}/cache/purge", t.admin_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["x-tollgate-error"], "method_not_allowed");
    let ok = reqwest::get(format!("{}/healthz", t.admin_url()))
        .await
        .unwrap();
    assert!(ok.headers().get("x-tollgate-error").is_none());
}

/// An admin listener bound beyond loopback (a pod's, for probes and
/// Prometheus) serves other hosts only /metrics, /healthz and /readyz:
/// usage, events, budgets and cache purges are for loopback callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_listener_serves_others_only_probes_and_metrics() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .admin_on_all_addresses()
        .start();
    // This machine's own non-loopback address, if it has one.
    let Some(ip) = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.254:9").map(|()| s))
        .ok()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    else {
        panic!("this test needs a non-loopback IPv4 address on the machine");
    };
    let port = t.admin.port();
    let client = reqwest::Client::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = client
            .get(format!("http://{ip}:{port}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for (method, path) in [
        ("GET", "/usage"),
        ("GET", "/events"),
        ("GET", "/budgets"),
        ("GET", "/cache/stats"),
        ("POST", "/cache/purge"),
    ] {
        let url = format!("http://{ip}:{port}{path}");
        let r = match method {
            "POST" => client.post(url).send().await.unwrap(),
            _ => client.get(url).send().await.unwrap(),
        };
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(r.headers()["x-tollgate-error"], "forbidden");
        // From loopback the same paths answer.
        let local = format!("http://127.0.0.1:{port}{path}");
        let r = match method {
            "POST" => client.post(local).send().await.unwrap(),
            _ => client.get(local).send().await.unwrap(),
        };
        assert_eq!(r.status(), 200, "{path} from loopback");
    }
}
