//! Starts the real `tollgate inject` on ephemeral ports with a fresh
//! self-signed certificate, posts AdmissionReviews to it over HTTPS, and
//! stops it on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tollgate::free_port;

/// A running injector.
pub struct Inject {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log_path: PathBuf,
    /// The webhook's certificate and key (PEM files), and its CA bundle.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// A self-signed certificate for localhost / 127.0.0.1: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

impl Inject {
    /// Starts one with `config` (extra TOML keys) and `env`.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Inject {
        super::install_tls_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem) = self_signed();
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert_path, &cert_pem).expect("write cert");
        std::fs::write(&key_path, &key_pem).expect("write key");
        let port = free_port();
        let admin_port = free_port();
        let config_path = dir.path().join("inject.toml");
        // Off unless the test points it at an API server.
        let kube_api = if config.contains("kube_api_url") {
            ""
        } else {
            "kube_api_url = \"off\"\n"
        };
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{kube_api}{config}\n",
                cert_path.display(),
                key_path.display()
            ),
        )
        .expect("write config");
        let log_path = dir.path().join("inject.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("inject")
            .arg("--config")
            .arg(&config_path)
            .env("TOLLGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tollgate inject");
        let client = client_trusting(&cert_pem);
        let mut inject = Inject {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log_path,
            cert_path,
            key_path,
            cert_pem,
            client,
            dir,
        };
        inject.wait_ready();
        inject
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() || TcpStream::connect(self.admin).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("tollgate inject exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "inject did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// POSTs `review` to /mutate; the answer's status and JSON body.
    pub async fn review(&self, review: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/mutate", self.url()))
            .json(review)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /mutate: {e}\n{}", self.log()));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, body)
    }

    /// The admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

/// An HTTPS client that trusts only `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client")
}

impl Drop for Inject {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
