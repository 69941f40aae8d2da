//! Starts the real `tollgate control` on an ephemeral port with a temp data
//! dir, runs `tollgate admin` against it, and stops it on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::tollgate::free_port;

/// The bootstrap admin token of test control endpoints.
pub const ADMIN_TOKEN: &str = "tga_test0123456789abcdef0123456789abcdef";

/// A running control endpoint.
pub struct Control {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    config: String,
    scheme: &'static str,
    /// Extra environment (master keys).
    pub env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Control {
    /// Starts one with `config` (extra TOML) and the test admin token.
    pub fn start(config: &str) -> Control {
        Control::start_in(config, None, "http")
    }

    /// Starts one; `data_dir` to restart on a store, `scheme` "https" when
    /// `config` sets TLS.
    pub fn start_in(config: &str, data_dir: Option<&Path>, scheme: &'static str) -> Control {
        Control::start_env(config, data_dir, scheme, &[])
    }

    /// Starts one with extra environment variables.
    pub fn start_env(
        config: &str,
        data_dir: Option<&Path>,
        scheme: &'static str,
        env: &[(&str, &str)],
    ) -> Control {
        super::install_tls_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("control-data"));
        let log_path = dir.path().join("control.log");
        let mut c = Control {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir,
            log_path,
            config: config.to_string(),
            scheme,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        // A port found free can still be taken before the control binds it
        // (by a process of another test binary): then it starts on another.
        for _ in 0..5 {
            match c.try_spawn() {
                Ok(()) => return c,
                Err(log) if log.contains("Address already in use") => {
                    c.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                }
                Err(log) => panic!("tollgate control exited early:\n{log}"),
            }
        }
        panic!("tollgate control found no free port:\n{}", c.log());
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("tollgate control exited early:\n{log}");
        }
    }

    /// Starts it and waits until it listens: its own listener, so the
    /// child must be alive and have said so (a connect alone could reach
    /// another process on the port). Err: it exited, with its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        // The log is appended to across restarts: this start's line is new.
        let said = |log: &str| log.matches("tollgate control listening").count();
        let before = said(&self.log());
        let child = self.command().spawn().expect("spawn tollgate control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("({status}) {}", self.log()));
            }
            if said(&self.log()) > before && TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "control did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it (stopped) with `env` instead, expecting it to fail:
    /// returns its exit code and what it logged.
    pub fn start_failing(&mut self, env: &[(&str, &str)]) -> (Option<i32>, String) {
        assert!(self.child.is_none(), "stop it first");
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut child = self.command().spawn().expect("run tollgate control");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("it started and kept running:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "it started:\n{}", self.log());
        (status.code(), self.log())
    }

    /// Starts it (stopped) again with `env`.
    pub fn start_again(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    fn command(&mut self) -> Command {
        let config_path = self._dir.path().join("control.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"{}\"\ndata_dir = \"{}\"\n{}",
                self.addr,
                self.data_dir.display(),
                self.config
            ),
        )
        .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("control")
            .arg("--config")
            .arg(&config_path)
            .env_remove("TOLLGATE_MASTER_KEY")
            .env_remove("TOLLGATE_PREVIOUS_MASTER_KEY")
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, wait for the exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-15")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "control did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts it again on the same store and port.
    pub fn restart(&mut self) {
        assert!(self.stop(), "control did not stop cleanly:\n{}", self.log());
        self.spawn();
    }

    /// Runs `tollgate admin --control URL <args>` with `token`.
    pub fn admin(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("admin")
            .arg("--control")
            .arg(self.url())
            .args(args)
            .env("TOLLGATE_ADMIN_TOKEN", token)
            .output()
            .expect("run tollgate admin")
    }

    /// `tollgate admin --json <args>` as the admin; its JSON (panics on failure).
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.admin(ADMIN_TOKEN, &all);
        assert!(
            out.status.success(),
            "tollgate admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("admin --json prints JSON")
    }

    /// The secret a `tollgate admin … create` shows once.
    pub fn admin_secret(&self, args: &[&str]) -> String {
        self.admin_json(args)["secret"]
            .as_str()
            .expect("a secret in the answer")
            .to_string()
    }

    /// One API call with `token` (none: unauthenticated): (status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control call");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
