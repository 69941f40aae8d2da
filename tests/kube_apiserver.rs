//! The real round trip: etcd and a real kube-apiserver 1.20 (with
//! kube-controller-manager for Deployments) on loopback, the chart's
//! MutatingWebhookConfiguration pointed at `tollgate inject`, and pods
//! created through the API server's REST API. 1.20 has no native sidecars
//! (it drops `restartPolicy` from init containers), so the injector runs in
//! classic mode here; the native form is validated against the 1.29+
//! schemas in tests/inject.rs. `.ci/kube-apiserver` builds the API server
//! (about 10 minutes, cached outside the clone) and installs etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use support::inject::client_trusting;
use support::tollgate::free_port;
use support::tools;

const TOKEN: &str = "tollgate-test-admin-token";

/// A process killed on drop, its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc { child, log }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text[text.len().saturating_sub(4000)..].to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and what it signed, as PEM files in `dir`.
struct Pki {
    ca_pem: String,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tollgate-test-ca");
        let ca = params.clone().self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let pki = Pki {
            ca_pem: ca.pem(),
            dir: dir.to_path_buf(),
        };
        std::fs::write(dir.join("ca.crt"), &pki.ca_pem).unwrap();
        for name in ["apiserver", "webhook"] {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        let sa = KeyPair::generate().unwrap();
        std::fs::write(dir.join("sa.key"), sa.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem()).unwrap();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .unwrap();
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// etcd, kube-apiserver and kube-controller-manager on loopback.
struct Cluster {
    url: String,
    client: reqwest::Client,
    _etcd: Proc,
    apiserver: Proc,
    _controllers: Proc,
}

fn wait_port(addr: SocketAddr, what: &str, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    async fn start(dir: &Path, pki: &Pki) -> Cluster {
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = Proc::spawn(
            Command::new(tools::etcd())
                .args(["--name", "t", "--data-dir"])
                .arg(dir.join("etcd"))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{client_port}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{client_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!("--initial-cluster=t=http://127.0.0.1:{peer_port}")),
            dir.join("etcd.log"),
        );
        wait_port(
            SocketAddr::from(([127, 0, 0, 1], client_port)),
            "etcd",
            &etcd,
        );
        let apiserver = Proc::spawn(
            Command::new(tools::kube_apiserver())
                .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
                .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={api_port}"))
                .arg("--insecure-port=0")
                .arg(format!("--tls-cert-file={}", pki.path("apiserver.crt")))
                .arg(format!(
                    "--tls-private-key-file={}",
                    pki.path("apiserver.key")
                ))
                .arg(format!("--client-ca-file={}", pki.path("ca.crt")))
                .arg(format!("--token-auth-file={}", pki.path("tokens.csv")))
                .arg("--authorization-mode=RBAC")
                .arg(format!("--service-account-key-file={}", pki.path("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    pki.path("sa.key")
                ))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg("--service-cluster-ip-range=10.0.0.0/24")
                // No kubelet, no token controller: pods need no service account token.
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg(format!("--cert-dir={}", dir.join("certs").display()))
                .arg("-v=1"),
            dir.join("apiserver.log"),
        );
        let url = format!("https://127.0.0.1:{api_port}");
        let client = client_trusting(&pki.ca_pem);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = client
                .get(format!("{url}/readyz"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apiserver not ready:\n{}",
                apiserver.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{url}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: admin, user: {{token: {TOKEN}}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: admin}}}}]\ncurrent-context: t\n",
                pki.path("ca.crt")
            ),
        )
        .unwrap();
        let controllers = Proc::spawn(
            Command::new(tools::kube_controller_manager())
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args([
                    "--leader-elect=false",
                    "--controllers=deployment,replicaset",
                    "--port=0",
                ])
                .arg(format!("--secure-port={}", free_port()))
                .arg(format!("--cert-dir={}", dir.join("kcm-certs").display())),
            dir.join("controller-manager.log"),
        );
        let cluster = Cluster {
            url,
            client,
            _etcd: etcd,
            apiserver,
            _controllers: controllers,
        };
        // The default namespace exists once the API server's own
        // controllers ran.
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.get("/api/v1/namespaces/default").await.0 != 200 {
            assert!(Instant::now() < deadline, "{}", cluster.apiserver.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a pod in `ns`: the API server's answer (the stored pod or
    /// the Status of a refusal).
    async fn create_pod(&self, ns: &str, name: &str, annotations: Value) -> (u16, Value) {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}
        });
        self.post(&format!("/api/v1/namespaces/{ns}/pods"), &pod)
            .await
    }
}

fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn app_env(pod: &Value, name: &str) -> Option<String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or("").to_string())
}

/// `helm install` of the chart into `tollgate` on the cluster: classic
/// sidecars (1.20), the webhook as the chart makes it.
fn helm_install(kubeconfig: &Path) {
    let tmp = std::env::temp_dir();
    let out = Command::new(tools::helm())
        .args(["install", "tollgate"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/tollgate"))
        .args(["--namespace", "tollgate", "--create-namespace"])
        .args(["--set", "injector.sidecar.mode=classic"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("HELM_CACHE_HOME", tmp.join("tollgate-helm-cache"))
        .env("HELM_CONFIG_HOME", tmp.join("tollgate-helm-config"))
        .env("HELM_DATA_HOME", tmp.join("tollgate-helm-data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const MWC: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/tollgate-injector";

/// Points the chart's webhook at `url` (its Service has no endpoints here:
/// no kubelet runs the injector's pods) and sets its failurePolicy.
async fn point_webhook(cluster: &Cluster, url: &str, ca_pem: &str, failure_policy: &str) {
    use base64::Engine as _;
    let (status, mut mwc) = cluster.get(MWC).await;
    assert_eq!(status, 200, "{mwc}");
    let hook = &mut mwc["webhooks"][0];
    hook["clientConfig"] = json!({
        "url": url,
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
    });
    hook["failurePolicy"] = json!(failure_policy);
    let (status, answer) = cluster.call(reqwest::Method::PUT, MWC, Some(&mwc)).await;
    assert_eq!(status, 200, "{answer}");
    // The API server picks a changed webhook configuration up within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_back_injected_from_a_real_api_server() {
    support::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cluster = Cluster::start(dir.path(), &pki).await;
    // The version helm checks the chart's kubeVersion against.
    let version = cluster.get("/version").await.1;
    assert_eq!(version["gitVersion"], "v1.20.2", "{version}");

    // The injector: classic sidecars (1.20), namespaces read from this API
    // server with the admin token.
    let port = free_port();
    let admin = free_port();
    let config = dir.path().join("inject.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nsidecar_mode = \"classic\"\nkube_api_url = \"{}\"\nkube_token_file = \"{}\"\nkube_ca_file = \"{}\"\nnamespace_cache = \"0s\"\n",
            pki.path("webhook.crt"),
            pki.path("webhook.key"),
            cluster.url,
            pki.path("token"),
            pki.path("ca.crt"),
        ),
    )
    .unwrap();
    let mut inject = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["inject", "--config"])
            .arg(&config)
            .env("TOLLGATE_LOG", "debug"),
        dir.path().join("inject.log"),
    );
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "tollgate inject",
        &inject,
    );
    helm_install(&dir.path().join("kubeconfig"));
    let webhook_url = format!("https://127.0.0.1:{port}/mutate");
    point_webhook(&cluster, &webhook_url, &pki.ca_pem, "Fail").await;
    let installed = cluster.get(MWC).await.1;
    assert_eq!(installed["webhooks"][0]["reinvocationPolicy"], "IfNeeded");

    // An annotated pod comes back with the sidecar and the base URLs.
    let (status, pod) = cluster
        .create_pod(
            "default",
            "annotated",
            json!({"tollgate.dev/inject": "true"}),
        )
        .await;
    assert_eq!(status, 201, "{pod}\n{}", inject.log());
    assert_eq!(container_names(&pod), ["app", "tollgate"], "{pod}");
    let stored = cluster
        .get("/api/v1/namespaces/default/pods/annotated")
        .await
        .1;
    assert_eq!(container_names(&stored), ["app", "tollgate"]);
    assert_eq!(
        app_env(&stored, "ANTHROPIC_BASE_URL").as_deref(),
        Some("http://127.0.0.1:8787")
    );
    assert_eq!(
        stored["metadata"]["annotations"]["tollgate.dev/injected"],
        "classic"
    );

    // A plain pod does not.
    let (status, pod) = cluster.create_pod("default", "plain", json!({})).await;
    assert_eq!(status, 201, "{pod}");
    assert_eq!(container_names(&pod), ["app"]);

    // A bad annotation is refused with its message.
    let (status, refusal) = cluster
        .create_pod(
            "default",
            "bad",
            json!({"tollgate.dev/inject": "true", "tollgate.dev/memory-limit": "lots"}),
        )
        .await;
    assert_eq!(status, 400, "{refusal}");
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.contains("tollgate.dev/memory-limit=\"lots\": must be a Kubernetes quantity"),
        "{message}"
    );

    // A namespace annotated for injection: its pods without a wish of their
    // own are injected, read through the API server.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "team-a", "annotations": {"tollgate.dev/inject": "true"}}});
    assert_eq!(cluster.post("/api/v1/namespaces", &ns).await.0, 201);
    let (status, pod) = cluster
        .create_pod("team-a", "by-namespace", json!({}))
        .await;
    assert_eq!(status, 201, "{pod}\n{}", inject.log());
    assert_eq!(
        container_names(&pod),
        ["app", "tollgate"],
        "{}",
        inject.log()
    );
    let (_, pod) = cluster
        .create_pod(
            "team-a",
            "opted-out",
            json!({"tollgate.dev/inject": "false"}),
        )
        .await;
    assert_eq!(container_names(&pod), ["app"]);

    // A Deployment's pods (generateName, created by the ReplicaSet
    // controller) come back injected.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"tollgate.dev/inject": "true"}},
                              "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}}
    });
    let (status, answer) = cluster
        .post("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    assert_eq!(status, 201, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pods = loop {
        let list = cluster
            .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
            .await
            .1;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.len() == 2 {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "{list}\n{}",
            cluster._controllers.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for pod in &pods {
        assert!(pod["metadata"]["generateName"]
            .as_str()
            .unwrap()
            .starts_with("web-"));
        assert_eq!(container_names(pod), ["app", "tollgate"], "{pod}");
    }
    let log = std::fs::read_to_string(dir.path().join("inject.log")).unwrap();
    assert!(log.contains("pod=\"web-"), "{log}");
    // The chart's own injector pods were created (the webhook's
    // objectSelector leaves them out, so they never wait on themselves) and
    // not injected; the PodDisruptionBudget took 1.20's policy/v1beta1.
    let sel =
        "/api/v1/namespaces/tollgate/pods?labelSelector=app.kubernetes.io%2Fcomponent%3Dinjector";
    let deadline = Instant::now() + Duration::from_secs(60);
    let own = loop {
        let items = cluster.get(sel).await.1["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if items.len() == 2 {
            break items;
        }
        assert!(Instant::now() < deadline, "{items:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for pod in &own {
        assert_eq!(container_names(pod), ["injector"]);
    }
    assert!(!log.contains("tollgate-injector-"), "{log}");
    let pdb = cluster
        .get("/apis/policy/v1beta1/namespaces/tollgate/poddisruptionbudgets/tollgate-injector")
        .await;
    assert_eq!(pdb.0, 200, "{}", pdb.1);

    // The injector down: failurePolicy Fail refuses annotated pods (and,
    // the webhook seeing every pod, plain ones too) ...
    let _ = inject.child.kill();
    let _ = inject.child.wait();
    let (status, refusal) = cluster
        .create_pod(
            "default",
            "while-down",
            json!({"tollgate.dev/inject": "true"}),
        )
        .await;
    assert_eq!(status, 500, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("failed calling webhook"),
        "{refusal}"
    );
    // ... and Ignore lets them through uninjected.
    point_webhook(&cluster, &webhook_url, &pki.ca_pem, "Ignore").await;
    let (status, pod) = cluster
        .create_pod("default", "ignored", json!({"tollgate.dev/inject": "true"}))
        .await;
    assert_eq!(status, 201, "{pod}");
    assert_eq!(container_names(&pod), ["app"]);
}
