//! Starts the real `tollgate` binary on ephemeral ports with a temp config
//! and data dir, and stops it (SIGTERM, then kill) on drop.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port for a process to bind later. Taken below the
/// kernel's ephemeral range (32768+), where sockets bound to port 0 (fake
/// providers, clients) land, and never handed out twice in one test binary:
/// so a port picked here is not taken by someone else before the process
/// binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test binary starts at its own offset (its pid), then walks on.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 10_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (port - 20_000) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `tollgate ca init --dir <dir>`: a CA for HTTPS_PROXY mode (the built-in
/// providers' hosts); panics with its stderr when it fails.
pub fn ca_init(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .output()
        .expect("run tollgate ca init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a tollgate process.
pub struct Builder {
    top: String,
    config: String,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    log_level: String,
    /// Where the admin listener binds (loopback unless a test asks).
    admin_host: &'static str,
    umask: Option<u32>,
}

/// A running tollgate.
pub struct Tollgate {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Builder {
    /// Both dialects' default providers pointed at `fake` (an `http://host:port` base).
    pub fn new(fake: &str) -> Builder {
        Builder {
            top: String::new(),
            config: format!(
                "[providers.anthropic]\nbase_url = \"{fake}\"\n\n[providers.openai]\nbase_url = \"{fake}/v1\"\n\n[providers.openrouter]\nbase_url = \"{fake}/api/v1\"\n\n"
            ),
            env: Vec::new(),
            data_dir: None,
            log_level: "debug".into(),
            admin_host: "127.0.0.1",
            umask: None,
        }
    }

    /// Adds top-level keys (they must precede every table).
    pub fn top(mut self, toml: &str) -> Builder {
        self.top.push_str(toml);
        self.top.push('\n');
        self
    }

    /// Appends TOML (tables) to the config file.
    pub fn config(mut self, toml: &str) -> Builder {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// Turns the exact cache off: for tests that repeat identical requests
    /// to exercise something else (budgets, limits, metering).
    pub fn no_cache(self) -> Builder {
        self.config("[cache]\nmode = \"off\"\n")
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Uses this data dir (to restart on the same store).
    pub fn data_dir(mut self, dir: &Path) -> Builder {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Binds the admin listener on every address (as in a pod).
    pub fn admin_on_all_addresses(mut self) -> Builder {
        self.admin_host = "0.0.0.0";
        self
    }

    pub fn log_level(mut self, level: &str) -> Builder {
        self.log_level = level.into();
        self
    }

    /// Runs the process under this umask (through `sh`, which then execs it).
    pub fn umask(mut self, mask: u32) -> Builder {
        self.umask = Some(mask);
        self
    }

    /// Starts the binary and waits until both listeners accept.
    pub fn start(self) -> Tollgate {
        super::install_tls_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_port = free_port();
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let config_path = dir.path().join("tollgate.toml");
        // One sidecar_id per process unless the test names one: sidecars
        // sharing a control credential must not share it (leases).
        let id = if self.top.contains("sidecar_id") {
            String::new()
        } else {
            format!("sidecar_id = \"tg-{port}\"\n")
        };
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"{}:{admin_port}\"\ndata_dir = \"{}\"\nshutdown_grace = \"5s\"\nthreads = 2\n{id}{}\n{}",
            self.admin_host,
            data_dir.display(),
            self.top,
            self.config
        );
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let bin = env!("CARGO_BIN_EXE_tollgate");
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(bin);
                sh
            }
            None => Command::new(bin),
        };
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENROUTER_API_KEY")
            .env("TOLLGATE_LOG", &self.log_level)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tollgate");
        let mut t = Tollgate {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            data_dir,
            log_path,
            _dir: dir,
        };
        t.wait_ready();
        t
    }
}

impl Tollgate {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(self.addr).is_ok() && TcpStream::connect(self.admin).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("tollgate exited early ({status}):\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT` (the Anthropic base URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal (libc name, e.g. libc::SIGTERM).
    pub fn signal(&self, sig: i32) {
        let pid = self.pid() as i32;
        let rc = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(rc.success());
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(15);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "tollgate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Latest usage events (admin `/events`).
    pub async fn events(&self) -> Vec<serde_json::Value> {
        serde_json::from_value(self.admin_json("/events?limit=100000").await).expect("events")
    }

    /// The admin `/events` once it holds at least `n` events (folding into
    /// the ledger is asynchronous); at most 10 s.
    pub async fn events_at_least(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events().await;
            if events.len() >= n {
                return events;
            }
            assert!(Instant::now() < deadline, "{events:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Budget statuses (admin `/budgets`).
    pub async fn budgets(&self) -> serde_json::Value {
        self.admin_json("/budgets").await
    }

    /// GET `path` on the admin listener, as JSON.
    async fn admin_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}{path}", self.admin_url()))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path} json: {e}"))
    }

    /// Waits until at least `n` events are recorded, returns them all.
    pub async fn wait_events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events().await;
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} events, have {}: {events:?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the event of request `id` (events reach the ledger just
    /// after their answer), returns it.
    pub async fn wait_event(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .events()
                .await
                .into_iter()
                .find(|e| e["event_id"] == id)
            {
                return e;
            }
            assert!(Instant::now() < deadline, "no event {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// HTTPS_PROXY mode for a test: a fresh CA and a free port for the
/// forward-proxy listener.
pub struct ProxyMode {
    pub port: u16,
    pub ca: tempfile::TempDir,
}

impl ProxyMode {
    pub fn new() -> ProxyMode {
        let ca = tempfile::tempdir().expect("temp dir");
        ca_init(ca.path());
        ProxyMode {
            port: free_port(),
            ca,
        }
    }

    /// `b` with the forward-proxy listener on and this CA.
    pub fn on(&self, b: Builder) -> Builder {
        b.top(&format!(
            "forward_proxy_listen = \"127.0.0.1:{}\"\nca_dir = \"{}\"",
            self.port,
            self.ca.path().display()
        ))
    }

    /// Waits until `t`'s forward-proxy listener accepts connections.
    pub fn wait(&self, t: &Tollgate) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "{}", t.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> String {
        self.ca.path().join("ca.pem").display().to_string()
    }
}
