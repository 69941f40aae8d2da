//! HTTPS_PROXY mode benchmark: the latency an intercepted call adds over
//! base-URL mode, on a reused tunnel and on a new tunnel per request.
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench cargo bench --bench forward
//! CARGO_TARGET_DIR=target/bench cargo bench --bench forward -- --requests 5000
//! ```
//!
//! The release `tollgate` runs as a child process (cache off, so every call
//! goes to the provider; `outbox.sync = true`) in front of the in-repo fake
//! provider (in this process). One client, one request at a time, four ways:
//!
//! * base-URL, kept-alive connection (the baseline);
//! * base-URL, a new TCP connection per request;
//! * HTTPS_PROXY, one tunnel reused for every request (CONNECT and TLS once);
//! * HTTPS_PROXY, a new tunnel per request (CONNECT + TLS handshake + leaf
//!   from the cache every time).
//!
//! The report gives p50 / p90 / p99 per way and the intercepted ways minus
//! their base-URL counterparts. Not run by CI.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

const BODY: &str = r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}"#;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

struct Row {
    name: &'static str,
    p50: f64,
    p90: f64,
    p99: f64,
}

/// `n` sequential requests; `client` is called per request (a new client
/// per request means a new connection / tunnel).
async fn measure(
    name: &'static str,
    n: usize,
    url: &str,
    mut client: impl FnMut() -> Result<reqwest::Client>,
) -> Result<Row> {
    let mut us = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let c = client()?;
        let started = Instant::now();
        let r = c
            .post(url)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await?;
        if r.status() != 200 {
            bail!("{name}: status {}", r.status());
        }
        r.bytes().await?;
        // The first tenth warms up.
        if i >= n / 10 {
            us.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    us.sort_by(f64::total_cmp);
    Ok(Row {
        name,
        p50: percentile(&us, 0.5),
        p90: percentile(&us, 0.9),
        p99: percentile(&us, 0.99),
    })
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut n = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--requests" => n = args.next().context("--requests N")?.parse()?,
            other => bail!("unknown argument {other:?} (--requests N)"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fake = runtime.block_on(fake_provider::FakeProvider::start());
    let dir = tempfile::tempdir()?;
    let exe = Path::new(env!("CARGO_BIN_EXE_tollgate"));
    let ca = dir.path().join("ca");
    let status = Command::new(exe)
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("tollgate ca init failed");
    }
    let (listen, admin, forward) = (free_port()?, free_port()?, free_port()?);
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             forward_proxy_listen = \"127.0.0.1:{forward}\"\nca_dir = \"{}\"\ndata_dir = \"{}\"\n\
             threads = 2\n[cache]\nmode = \"off\"\n[providers.anthropic]\nbase_url = \"{}\"\n",
            ca.display(),
            dir.path().join("data").display(),
            fake.base_url()
        ),
    )?;
    let _tollgate = Killed(
        Command::new(exe)
            .args(["proxy", "--config"])
            .arg(&config)
            .env("ANTHROPIC_API_KEY", "sk-ant-bench")
            .env("TOLLGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_listening(listen)?;
    wait_listening(forward)?;
    let ca_pem = std::fs::read(ca.join("ca.pem"))?;
    let root = reqwest::Certificate::from_pem(&ca_pem)?;
    let proxy_url = format!("http://127.0.0.1:{forward}");
    let base = format!("http://127.0.0.1:{listen}/v1/messages");
    let intercepted = "https://api.anthropic.com/v1/messages";
    let via_proxy = |root: reqwest::Certificate, pool: bool| -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .proxy(reqwest::Proxy::https(&proxy_url)?)
            .add_root_certificate(root)
            .http1_only();
        if !pool {
            b = b.pool_max_idle_per_host(0);
        }
        Ok(b.build()?)
    };
    let rows = runtime.block_on(async {
        let kept = reqwest::Client::builder().no_proxy().http1_only().build()?;
        let tunnel = via_proxy(root.clone(), true)?;
        let a = measure("base-URL, kept-alive", n, &base, || Ok(kept.clone())).await?;
        let b = measure("base-URL, new connection", n, &base, || {
            Ok(reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .pool_max_idle_per_host(0)
                .build()?)
        })
        .await?;
        let c = measure("HTTPS_PROXY, reused tunnel", n, intercepted, || {
            Ok(tunnel.clone())
        })
        .await?;
        let d = measure("HTTPS_PROXY, new tunnel", n, intercepted, || {
            via_proxy(root.clone(), false)
        })
        .await?;
        anyhow::Ok(vec![a, b, c, d])
    })?;
    println!("\n== tollgate HTTPS_PROXY benchmark ==");
    println!(
        "command  : cargo bench --bench forward -- --requests {n}   (git {})",
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    println!("setup    : release tollgate (threads 2, cache off, outbox.sync on) → in-process fake provider; one client, sequential, HTTP/1.1; {n} requests per row after {} warm-up", n / 10);
    println!(
        "\n{:<30} {:>9} {:>9} {:>9}",
        "way", "p50 µs", "p90 µs", "p99 µs"
    );
    for r in &rows {
        println!(
            "{:<30} {:>9.0} {:>9.0} {:>9.0}",
            r.name, r.p50, r.p90, r.p99
        );
    }
    println!("\nadded by interception (p50 / p99):");
    println!(
        "  reused tunnel vs base-URL kept-alive : {:+.0} µs / {:+.0} µs",
        rows[2].p50 - rows[0].p50,
        rows[2].p99 - rows[0].p99
    );
    println!(
        "  new tunnel vs base-URL new connection: {:+.0} µs / {:+.0} µs",
        rows[3].p50 - rows[1].p50,
        rows[3].p99 - rows[1].p99
    );
    Ok(())
}
