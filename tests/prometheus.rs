//! The three programs' `/metrics` as Prometheus reads them: a sidecar
//! shipping to a control endpoint, and the injector, each after real
//! traffic. `promtool check metrics` passes with no warning on each, and a
//! real Prometheus (Debian's, from `.ci/k8s-tools`) scrapes all three on
//! loopback and answers queries for their counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::control::Control;
use support::fake_provider::FakeProvider;
use support::inject::Inject;
use support::tollgate::{free_port, Builder, Tollgate};
use support::tools;

/// A sidecar shipping to a control endpoint, and an injector, each after
/// traffic: one metered request (account acme) and one admission review.
struct Fleet {
    _fake: FakeProvider,
    control: Control,
    sidecar: Tollgate,
    inject: Inject,
}

impl Fleet {
    async fn start() -> Fleet {
        let fake = FakeProvider::start().await;
        let control = Control::start("");
        control.admin_json(&["accounts", "create", "acme"]);
        let cred = control.admin_secret(&["sidecars", "create", "s", "--account", "acme"]);
        let sidecar = Builder::new(&fake.base_url())
            .top(&format!("control_url = \"{}\"", control.url()))
            .config("[ship]\ninterval = \"100ms\"\n")
            .env("ANTHROPIC_API_KEY", "sk-ant-PROMETHEUS-test")
            .env("TOLLGATE_CONTROL_CREDENTIAL", &cred)
            .start();
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/messages", sidecar.url()))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-tollgate-account", "acme")
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        let inject = Inject::start("", &[]);
        let review: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/k8s/review-pod-create.json"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(inject.review(&review).await.0, 200);
        let fleet = Fleet {
            _fake: fake,
            control,
            sidecar,
            inject,
        };
        // The event reaches the control endpoint's ledger.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fleet
            .control_metrics()
            .await
            .contains("tollgate_control_ingest_events_total{result=\"new\"} 1")
        {
            assert!(
                Instant::now() < deadline,
                "no event shipped:\n{}",
                fleet.sidecar.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fleet
    }

    async fn control_metrics(&self) -> String {
        get(&format!("{}/metrics", self.control.url())).await
    }
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// `promtool check metrics` on `text`: exit 0 and nothing said.
fn promtool_check(what: &str, text: &str) {
    let out = tools::run_with_stdin(
        Command::new(tools::promtool()).args(["check", "metrics"]),
        text.as_bytes(),
    );
    let said = tools::said(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{what}: promtool check metrics ({}):\n{said}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_passes_promtool() {
    let fleet = Fleet::start().await;
    let sidecar = fleet.sidecar.metrics().await;
    assert!(sidecar.contains("tollgate_requests_total{"), "{sidecar}");
    promtool_check("sidecar", &sidecar);
    let control = fleet.control_metrics().await;
    promtool_check("control endpoint", &control);
    let inject = fleet.inject.metrics().await;
    assert!(
        inject.contains("tollgate_inject_reviews_total{"),
        "{inject}"
    );
    promtool_check("injector", &inject);
    for text in [&sidecar, &control, &inject] {
        documented(text);
    }
    // promtool does find problems: a counter without _total and no HELP.
    let bad = tools::run_with_stdin(
        Command::new(tools::promtool()).args(["check", "metrics"]),
        b"# TYPE tollgate_bad counter\ntollgate_bad 1\n",
    );
    assert!(!bad.status.success(), "{}", tools::said(&bad));
}

/// Every metric family in `text` has a README row `| name | type | labels |`
/// with its type and its labels (a histogram's without `le`).
fn documented(text: &str) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, ty) = rest.split_once(' ').unwrap();
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README lists no metric {name}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], ty, "README's type of {name}");
        let mut documented: Vec<&str> = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        documented.sort();
        // The label names of the family's first sample that has labels.
        let mut seen: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .find_map(|l| {
                let labels = l[name.len()..]
                    .trim_start_matches("_bucket")
                    .strip_prefix('{')?;
                let labels = &labels[..labels.find('}')?];
                Some(
                    labels
                        .split(',')
                        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                        .filter(|k| *k != "le")
                        .collect(),
                )
            })
            .unwrap_or_default();
        seen.sort();
        if !seen.is_empty() || ty != "histogram" {
            assert_eq!(documented, seen, "README's labels of {name}");
        }
    }
}

/// Prometheus on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tools::prometheus())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        // Its port opens before its query API is up (503 meanwhile):
        // wait for /-/ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(addr) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not start:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `query` (empty until scraped).
    async fn query(&self, query: &str) -> Vec<Value> {
        // The query's few special characters, percent-encoded.
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let resp: Value = reqwest::get(format!("http://{}/api/v1/query?query={q}", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["status"], "success", "{resp}");
        resp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (scrapes start a few seconds after the server) until `query`
    /// returns a sample whose value is at least `min`; returns the samples.
    async fn wait_for(&self, query: &str, min: f64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(query).await;
            let top = result
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .fold(f64::MIN, f64::max);
            if top >= min {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{query}: {result:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_sidecar_the_control_endpoint_and_the_injector() {
    let fleet = Fleet::start().await;
    let prometheus = Prometheus::start(&[
        ("tollgate-sidecar", fleet.sidecar.admin),
        ("tollgate-control", fleet.control.addr),
        ("tollgate-inject", fleet.inject.admin),
    ]);
    let up = prometheus.wait_for("sum(up)", 3.0).await;
    assert_eq!(up.len(), 1, "{up:?}");
    let requests = prometheus
        .wait_for("tollgate_requests_total{job=\"tollgate-sidecar\"}", 1.0)
        .await;
    assert_eq!(
        requests[0]["metric"]["provider"], "anthropic",
        "{requests:?}"
    );
    prometheus
        .wait_for(
            "tollgate_control_ingest_events_total{job=\"tollgate-control\",result=\"new\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            "tollgate_inject_reviews_total{job=\"tollgate-inject\",decision=\"injected\"}",
            1.0,
        )
        .await;
}

/// Whether Prometheus at `addr` answers `/-/ready` with 200.
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
