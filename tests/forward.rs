//! HTTPS_PROXY mode end to end: the real binary's forward-proxy listener,
//! its name-constrained CA, curl as the client, the in-repo fake provider
//! behind `base_url` (so `api.anthropic.com` reaches it without a DNS trick).
//! (The official SDKs through HTTPS_PROXY are in `tests/sdk.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::fake_provider::FakeProvider;
use support::tollgate::{free_port, Builder, Tollgate};

const INJECTED: &str = "sk-ant-injected-FORWARD-91c2";
const OPENAI_INJECTED: &str = "sk-openai-injected-FORWARD-77aa";
const CLIENT_KEY: &str = "sk-client-FORWARD-never-upstream";
const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"via the tunnel"}]}"#;

/// Creates a CA for the built-in providers' hosts in a fresh directory.
pub fn ca_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    support::tollgate::ca_init(&dir.path().join("ca"));
    dir
}

/// A tollgate with HTTPS_PROXY mode on; returns it and the proxy URL.
fn start(fake: &str, ca: &Path, extra_top: &str) -> (Tollgate, String) {
    start_on("127.0.0.1", fake, ca, extra_top)
}

/// The forward proxy listening on `ip` (reached over loopback either way).
fn start_on(ip: &str, fake: &str, ca: &Path, extra_top: &str) -> (Tollgate, String) {
    let port = free_port();
    let t = Builder::new(fake)
        .top(&format!(
            "forward_proxy_listen = \"{ip}:{port}\"\nca_dir = \"{}\"\n{extra_top}",
            ca.display()
        ))
        .env("ANTHROPIC_API_KEY", INJECTED)
        .env("OPENAI_API_KEY", OPENAI_INJECTED)
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "forward proxy did not listen:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (t, format!("http://127.0.0.1:{port}"))
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("curl")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ca_pem(dir: &Path) -> PathBuf {
    dir.join("ca").join("ca.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_is_metered_cached_and_keyed() {
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let (t, proxy) = start(&fake.base_url(), &ca.path().join("ca"), "");
    let cacert = ca_pem(ca.path());
    let cacert = cacert.to_str().unwrap();
    let common = [
        "--proxy",
        &proxy,
        "--cacert",
        cacert,
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "-H",
    ];
    let auth = format!("x-api-key: {CLIENT_KEY}");
    // Two requests over one tunnel (HTTP/2): the second is a cache hit.
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        auth.as_str(),
        "-d",
        BODY,
        // One -o per URL.
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{num_connects} %{http_version} %{http_code} %header{x-tollgate-cache}\n",
        "https://api.anthropic.com/v1/messages",
        "https://api.anthropic.com/v1/messages",
    ]);
    let out = curl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text(&out), "1 2 200 miss\n0 2 200 hit\n", "{}", t.log());
    // HTTP/1.1 through the tunnel, and a stream.
    let stream_body = BODY.replace("\"max_tokens\":64", "\"max_tokens\":65,\"stream\":true");
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        auth.as_str(),
        "--http1.1",
        "-N",
        "-d",
        &stream_body,
        "https://api.anthropic.com/v1/messages",
    ]);
    let out = curl(&args);
    let sse = text(&out);
    assert!(sse.contains("event: message_stop"), "{sse}");
    assert!(sse.contains(": tollgate {"), "the receipt: {sse}");
    // The provider saw the injected key, never the client's.
    let seen = fake.requests();
    assert_eq!(seen.len(), 2, "the hit never reached it");
    for r in &seen {
        assert_eq!(r.header("x-api-key"), Some(INJECTED));
        assert!(!format!("{:?}", r.headers).contains(CLIENT_KEY));
    }
    // OpenAI's host goes to the openai provider, with its key.
    let out = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        cacert,
        "-H",
        "content-type: application/json",
        "-H",
        &format!("authorization: Bearer {CLIENT_KEY}"),
        "-d",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        "-D",
        "-",
        "https://api.openai.com/v1/chat/completions",
    ]);
    let reply = text(&out);
    assert!(reply.contains("x-tollgate-provider: openai"), "{reply}");
    assert!(reply.contains("chat.completion"), "{reply}");
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {OPENAI_INJECTED}").as_str())
    );
    // The base-URL listener never routes by host: a Host naming openrouter
    // still goes to the default OpenAI-compatible provider by its path.
    let out = curl(&[
        "-H",
        "host: openrouter.ai",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"by path"}]}"#,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/v1/chat/completions", t.url()),
    ]);
    assert!(
        text(&out).contains("x-tollgate-provider: openai"),
        "{}",
        text(&out)
    );
    // Inside a tunnel the tunnel's host routes: a request there naming
    // another host is refused (421), whatever its path, and goes nowhere.
    let before = fake.requests().len();
    let out = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        cacert,
        "--http1.1",
        "-H",
        "host: api.openai.com",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"misdirected"}]}"#,
        "-D",
        "-",
        "https://api.anthropic.com/v1/chat/completions",
    ]);
    let reply = text(&out);
    assert!(
        reply.contains("\nHTTP/1.1 421 Misdirected Request"),
        "{reply}"
    );
    assert!(reply.contains("x-tollgate-error: misdirected"), "{reply}");
    assert!(reply.contains("open a tunnel to api.openai.com"), "{reply}");
    assert_eq!(fake.requests().len(), before);
    // Metered like base-URL mode.
    let events = t.wait_events(6).await;
    assert_eq!(events.iter().filter(|e| e["cache"] == "hit").count(), 1);
    assert_eq!(
        events.iter().filter(|e| e["status"] != "ok").count(),
        1,
        "only the misdirected one failed: {events:?}"
    );
    assert!(events.iter().any(|e| e["provider"] == "openai"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_ca_fails_and_nothing_is_sent() {
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let (t, proxy) = start(&fake.base_url(), &ca.path().join("ca"), "");
    let out = curl(&[
        "--proxy",
        &proxy,
        "-d",
        BODY,
        "https://api.anthropic.com/v1/messages",
    ]);
    assert_eq!(out.status.code(), Some(60), "certificate problem expected");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.log().contains("intercepted TLS handshake failed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t.log().contains("intercepted TLS handshake failed"));
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_are_tunnelled_blind_or_denied() {
    let (other, other_cert) = FakeProvider::start_tls().await;
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_ca.path(), other_cert).unwrap();
    let url = format!("https://localhost:{}/v1/models", other.addr.port());
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let (_t, proxy) = start(&fake.base_url(), &ca.path().join("ca"), "");
    // Verified against the other server's own certificate only: a minted
    // leaf would fail this.
    let out = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        other_ca.path().to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect} %{http_code}",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text(&out), "200 200");
    assert_eq!(other.requests().len(), 1);
    assert!(fake.requests().is_empty());
    // tunnel_policy = "deny": 403 to the CONNECT.
    let (_t2, deny) = start(
        &fake.base_url(),
        &ca.path().join("ca"),
        "tunnel_policy = \"deny\"",
    );
    let out = curl(&[
        "--proxy",
        &deny,
        "--cacert",
        other_ca.path().to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        &url,
    ]);
    assert!(!out.status.success());
    assert_eq!(text(&out), "403");
    assert_eq!(other.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authentication() {
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let hash = tollgate::keys::to_hex(&tollgate::keys::sha256("app:s3cret"));
    let (_t, proxy) = start(
        &fake.base_url(),
        &ca.path().join("ca"),
        &format!("forward_proxy_auth_sha256 = \"{hash}\""),
    );
    let cacert = ca_pem(ca.path());
    let base = [
        "--proxy",
        proxy.as_str(),
        "--cacert",
        cacert.to_str().unwrap(),
        "-H",
        "anthropic-version: 2023-06-01",
        "-d",
        BODY,
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect} %{http_code}",
    ];
    let mut none = base.to_vec();
    none.push("https://api.anthropic.com/v1/messages");
    assert_eq!(text(&curl(&none)), "407 000");
    let mut wrong = base.to_vec();
    wrong.extend([
        "--proxy-user",
        "app:wrong",
        "https://api.anthropic.com/v1/messages",
    ]);
    assert_eq!(text(&curl(&wrong)), "407 000");
    let mut right = base.to_vec();
    right.extend([
        "--proxy-user",
        "app:s3cret",
        "https://api.anthropic.com/v1/messages",
    ]);
    assert_eq!(text(&curl(&right)), "200 200");
}

/// Listening off loopback (behind proxy auth), tunnels and forwarded
/// requests never reach this host's own loopback or link-local services on a
/// remote client's behalf; provider hosts are still intercepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_proxy_never_reaches_local_services() {
    let (other, other_cert) = FakeProvider::start_tls().await;
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_ca.path(), other_cert).unwrap();
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let hash = tollgate::keys::to_hex(&tollgate::keys::sha256("app:s3cret"));
    let (t, proxy) = start_on(
        "0.0.0.0",
        &fake.base_url(),
        &ca.path().join("ca"),
        &format!("forward_proxy_auth_sha256 = \"{hash}\""),
    );
    let via = |url: &str, cacert: &str| {
        curl(&[
            "--proxy",
            &proxy,
            "--proxy-user",
            "app:s3cret",
            "--cacert",
            cacert,
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect} %{http_code}",
            url,
        ])
    };
    let other_ca = other_ca.path().to_str().unwrap();
    // A blind tunnel to a loopback service: refused, by name and by address.
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        let url = format!("https://{host}:{}/v1/models", other.addr.port());
        assert_eq!(text(&via(&url, other_ca)), "403 000", "{host}");
    }
    assert!(other.requests().is_empty());
    // Plain-HTTP forwarding to loopback or a metadata endpoint: refused.
    let url = format!("http://127.0.0.1:{}/v1/models", fake.addr.port());
    assert_eq!(text(&via(&url, other_ca)), "000 403");
    let out = via("http://169.254.169.254/latest/meta-data/", other_ca);
    assert_eq!(text(&out), "000 403");
    assert!(fake.requests().is_empty());
    assert!(t.log().contains("tunnel to a local address refused"));
    // Provider hosts are intercepted as ever.
    let cacert = ca_pem(ca.path());
    let out = curl(&[
        "--proxy",
        &proxy,
        "--proxy-user",
        "app:s3cret",
        "--cacert",
        cacert.to_str().unwrap(),
        "-H",
        "anthropic-version: 2023-06-01",
        "-d",
        BODY,
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect} %{http_code}",
        "https://api.anthropic.com/v1/messages",
    ]);
    assert_eq!(text(&out), "200 200");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn the_ca_is_name_constrained_and_the_sidecar_refuses_a_weak_setup() {
    let ca = ca_dir();
    let dir = ca.path().join("ca");
    let show = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["ca", "show", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains(
            "name constraints critical (permitted DNS: api.anthropic.com, api.openai.com, openrouter.ai; excluded: every IP address)"
        ),
        "{shown}"
    );
    assert!(shown.contains("-----BEGIN CERTIFICATE-----"));
    let refuses = |top: &str, extra: &str| -> String {
        let cfg = ca.path().join("t.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\nadmin_listen = \"\"\nforward_proxy_listen = \"127.0.0.1:{}\"\nca_dir = \"{}\"\ndata_dir = \"{}\"\n{top}\n{extra}",
                free_port(),
                free_port(),
                dir.display(),
                ca.path().join("data").display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["proxy", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "it started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A host the CA's constraints do not cover.
    let err = refuses(
        "",
        "[providers.anthropic]\nhosts = [\"api.anthropic.com\", \"evil.example\"]\n",
    );
    assert!(err.contains("evil.example"), "{err}");
    // A key readable by others.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = refuses("", "");
        assert!(err.contains("chmod 600"), "{err}");
    }
    // Never overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["ca", "init", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_are_forwarded_but_never_to_a_provider_in_the_clear() {
    let other = FakeProvider::start().await;
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let (_t, proxy) = start(&fake.base_url(), &ca.path().join("ca"), "");
    let url = format!("http://localhost:{}/v1/models", other.addr.port());
    let out = curl(&[
        "--proxy",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(text(&out), "200");
    let seen = other.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/models");
    assert!(seen[0].header("proxy-authorization").is_none());
    // A provider host over plain HTTP: refused (its key would travel in the
    // clear and skip every cost control).
    let out = curl(&[
        "--proxy",
        &proxy,
        "-H",
        &format!("x-api-key: {CLIENT_KEY}"),
        "-d",
        BODY,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://api.anthropic.com/v1/messages",
    ]);
    assert_eq!(text(&out), "403");
    assert!(fake.requests().is_empty());
}

/// A request head trickling into an HTTP/1.1 tunnel is cut at
/// `timeouts.request_head` with a 408 in the provider's shape, as on the
/// base-URL listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_in_a_tunnel_is_answered_408() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::install_tls_provider();
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let port = free_port();
    let t = Builder::new(&fake.base_url())
        .top(&format!(
            "forward_proxy_listen = \"127.0.0.1:{port}\"\nca_dir = \"{}\"\n",
            ca.path().join("ca").display()
        ))
        .env("TOLLGATE_TIMEOUTS__REQUEST_HEAD", "1s")
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tcp = loop {
        if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            break c;
        }
        assert!(Instant::now() < deadline, "no forward proxy:\n{}", t.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tcp.write_all(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nhost: api.anthropic.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 256];
        let n = tcp.read(&mut b).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&b[..n]);
    }
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca_pem(ca.path())).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("api.anthropic.com").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut lines =
            vec!["POST /v1/messages HTTP/1.1\r\nanthropic-version: 2023-06-01\r\n".to_string()];
        lines.extend((0..40).map(|i| format!("x-slow-{i}: {i}\r\n")));
        for l in lines {
            if wr.write_all(l.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-tollgate-error: request_timeout"), "{text}");
    assert!(text.contains("\"type\":\"error\""), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(fake.requests().is_empty());
}

/// `Idempotency-Key` works the same inside an intercepted tunnel (HTTP/2):
/// the retry is a replay, the provider is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_through_the_proxy_is_replayed() {
    let fake = FakeProvider::start().await;
    let ca = ca_dir();
    let (_t, proxy) = start(&fake.base_url(), &ca.path().join("ca"), "");
    let cacert = ca_pem(ca.path());
    let send = || {
        curl(&[
            "--proxy",
            &proxy,
            "--cacert",
            cacert.to_str().unwrap(),
            "-H",
            "anthropic-version: 2023-06-01",
            "-H",
            "content-type: application/json",
            "-H",
            "idempotency-key: tunnel-1",
            "-H",
            "x-tollgate-cache: bypass",
            "-D",
            "-",
            "-d",
            BODY,
            "https://api.anthropic.com/v1/messages",
        ])
    };
    let first = text(&send());
    let again = text(&send());
    assert!(!first.contains("x-tollgate-idempotent-replay"), "{first}");
    assert!(
        again.contains("x-tollgate-idempotent-replay: true"),
        "{again}"
    );
    let body = |s: &str| s.split("\r\n\r\n").last().unwrap_or("").to_string();
    assert_eq!(body(&first), body(&again));
    let calls = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .count();
    assert_eq!(calls, 1);
}
