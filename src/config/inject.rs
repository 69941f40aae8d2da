//! `tollgate inject`'s configuration: built-in defaults < file <
//! environment (`TOLLGATE_INJECT_<KEY>`) < flags, checked like the
//! sidecar's: unknown keys are errors and every problem is reported at once.
//!
//! It holds two things: how the webhook serves (listeners, certificate) and
//! what it injects (image, resources, ports, modes), the latter overridable
//! per pod by `tollgate.dev/*` annotations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use super::loader;
use super::schema::{Key, Type};
use super::values::{duration, socket_addr};
use super::{ConfigError, Problem};

const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9465";
/// The image the chart and `deploy/` ship (the repository's Dockerfile).
pub const DEFAULT_IMAGE: &str = "ghcr.io/tollgate-dev/tollgate:0.1.0";
const DEFAULT_CA_SECRET: &str = "tollgate-ca";

/// The injector's environment prefix.
pub const ENV_PREFIX: &str = "TOLLGATE_INJECT_";
/// Variables with the prefix that are not keys of this config.
const NON_KEY_ENV: &[&str] = &["TOLLGATE_INJECT_CONFIG"];

#[rustfmt::skip]
static KEYS: &[Key] = &[
    Key::new("listen", Type::SocketAddr, DEFAULT_LISTEN,
     "The webhook (HTTPS only): POST /mutate, GET /healthz. In a pod, 0.0.0.0:8443. Flag --listen."),
    Key::new("admin_listen", Type::SocketAddrOrOff, DEFAULT_ADMIN_LISTEN,
     "Plain-HTTP listener for /metrics, /healthz and /readyz; \"\" turns it off."),
    Key::new("tls_cert", Type::Path, "\"\"",
     "PEM certificate chain of the webhook (required). Re-read when the file changes."),
    Key::new("tls_key", Type::Path, "\"\"",
     "PEM private key of tls_cert (required). Re-read when the file changes."),
    Key::new("tls_reload", Type::Duration, "10s",
     "How often tls_cert and tls_key are checked for a change (a renewed Secret)."),
    Key::new("image", Type::Str, DEFAULT_IMAGE,
     "Sidecar image. Annotation tollgate.dev/image."),
    Key::new("image_pull_policy", Type::Str, "IfNotPresent",
     "Always, IfNotPresent or Never."),
    Key::new("sidecar_mode", Type::Str, "native",
     "native: an init container with restartPolicy Always (Kubernetes 1.29+), ready before the app starts and stopped after it; classic: one more app container (older clusters). Annotation tollgate.dev/sidecar-mode."),
    Key::new("mode", Type::Str, "base-url",
     "How apps reach the sidecar: base-url (ANTHROPIC_BASE_URL / OPENAI_BASE_URL) or https-proxy (HTTPS_PROXY and the CA bundle). Annotation tollgate.dev/mode."),
    Key::new("ports.base_url", Type::Integer, "8787",
     "The sidecar's base-URL listener on the pod's loopback. Annotation tollgate.dev/port."),
    Key::new("ports.https_proxy", Type::Integer, "8788",
     "The sidecar's HTTPS_PROXY listener on the pod's loopback (https-proxy mode). Annotation tollgate.dev/proxy-port."),
    Key::new("ports.admin", Type::Integer, "9464",
     "The sidecar's /metrics, /healthz, /readyz port, on the pod's address (probes, Prometheus). Annotation tollgate.dev/admin-port."),
    Key::new("cpu_request", Type::Str, "50m",
     "Sidecar CPU request (a Kubernetes quantity; \"\" = none). Annotation tollgate.dev/cpu-request."),
    Key::new("memory_request", Type::Str, "64Mi",
     "Sidecar memory request. Annotation tollgate.dev/memory-request."),
    Key::new("cpu_limit", Type::Str, "\"\"",
     "Sidecar CPU limit (\"\" = none). Annotation tollgate.dev/cpu-limit."),
    Key::new("memory_limit", Type::Str, "256Mi",
     "Sidecar memory limit. Annotation tollgate.dev/memory-limit."),
    Key::new("control_url", Type::Url, "\"\"",
     "Control endpoint the sidecars ship usage to and take leases from; \"\" = standalone sidecars."),
    Key::new("credential_secret", Type::Str, "\"\"",
     "Secret in the pod's namespace whose key `credential` holds the sidecar credential (tgs_…); \"\" = none."),
    Key::new("ca_secret", Type::Str, DEFAULT_CA_SECRET,
     "Secret in the pod's namespace with ca.pem and ca.key (`tollgate ca init`) for https-proxy mode: the sidecar mounts both, apps only ca.pem."),
    Key::new("tag_labels", Type::Strings, "[\"app.kubernetes.io/name\", \"app\"]",
     "Pod labels that become the sidecar's default tags (label=value)."),
    Key::new("kube_api_url", Type::Str, "\"\"",
     "API server to read namespaces' tollgate.dev/inject annotation from: \"\" = in-cluster (KUBERNETES_SERVICE_HOST and the service account), \"off\" = pods' own annotations only."),
    Key::new("kube_token_file", Type::Path, "/var/run/secrets/kubernetes.io/serviceaccount/token",
     "Bearer token for kube_api_url (re-read on each lookup: projected tokens rotate)."),
    Key::new("kube_ca_file", Type::Path, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
     "CA of kube_api_url's certificate."),
    Key::new("namespace_cache", Type::Duration, "30s",
     "How long a namespace's annotations are reused before they are read again."),
];

/// Every key of the injector's config, in the README's order.
pub fn keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter()
}

/// The config as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    admin_listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_reload: Option<String>,
    image: Option<String>,
    image_pull_policy: Option<String>,
    sidecar_mode: Option<String>,
    mode: Option<String>,
    ports: Option<RawPorts>,
    cpu_request: Option<String>,
    memory_request: Option<String>,
    cpu_limit: Option<String>,
    memory_limit: Option<String>,
    control_url: Option<String>,
    credential_secret: Option<String>,
    ca_secret: Option<String>,
    tag_labels: Option<Vec<String>>,
    kube_api_url: Option<String>,
    kube_token_file: Option<String>,
    kube_ca_file: Option<String>,
    namespace_cache: Option<String>,
}

/// The sidecar's ports: a table, so that no key ends in `_port` (a Service
/// named `tollgate-inject` puts `TOLLGATE_INJECT_PORT=tcp://…` into the
/// injector's pod, and a key `port` would take it).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    base_url: Option<i64>,
    https_proxy: Option<i64>,
    admin: Option<i64>,
}

/// How the sidecar sits in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+).
    Native,
    /// One more container next to the app's.
    Classic,
}

impl SidecarMode {
    /// From its config / annotation spelling.
    pub fn parse(s: &str) -> Option<SidecarMode> {
        match s {
            "native" => Some(SidecarMode::Native),
            "classic" => Some(SidecarMode::Classic),
            _ => None,
        }
    }

    /// As config and annotations spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }
}

/// How the app reaches the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL`.
    BaseUrl,
    /// `HTTPS_PROXY` and the CA bundle.
    HttpsProxy,
}

impl AppMode {
    /// From its config / annotation spelling.
    pub fn parse(s: &str) -> Option<AppMode> {
        match s {
            "base-url" => Some(AppMode::BaseUrl),
            "https-proxy" => Some(AppMode::HttpsProxy),
            _ => None,
        }
    }

    /// As config and annotations spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AppMode::BaseUrl => "base-url",
            AppMode::HttpsProxy => "https-proxy",
        }
    }
}

/// Where namespaces' annotations are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeApi {
    /// From the pod's environment and service account, if it has them.
    InCluster,
    /// This URL.
    Url(String),
    /// Not at all: only pods' own annotations count.
    Off,
}

/// What is injected: the defaults that annotations override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarSpec {
    pub image: String,
    pub image_pull_policy: String,
    pub sidecar_mode: SidecarMode,
    pub mode: AppMode,
    pub port: u16,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// Kubernetes quantities; `""` = unset.
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub control_url: String,
    pub credential_secret: String,
    pub ca_secret: String,
    pub tag_labels: Vec<String>,
}

/// The injector's validated configuration.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub listen: SocketAddr,
    /// `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_reload: Duration,
    pub sidecar: SidecarSpec,
    pub kube_api: KubeApi,
    pub kube_token_file: PathBuf,
    pub kube_ca_file: PathBuf,
    pub namespace_cache: Duration,
}

/// Flags of `tollgate inject` that set keys.
#[derive(Clone, Debug, Default)]
pub struct InjectFlags {
    /// `--listen`
    pub listen: Option<String>,
}

/// Loads the injector config from `file` (if any), `env` and `flags`.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &InjectFlags,
) -> Result<InjectConfig, ConfigError> {
    let mut problems = Vec::new();
    let text = file.and_then(|path| {
        loader::read_file(path)
            .map_err(|p| problems.push(p))
            .ok()
            .map(|text| (path.display().to_string(), text))
    });
    let flag_list: Vec<(&str, &str, &str)> = flags
        .listen
        .as_deref()
        .map(|v| ("listen", "--listen", v))
        .into_iter()
        .collect();
    let file = text.as_ref().map(|(l, t)| (l.as_str(), t.as_str()));
    let schema = loader::Schema {
        keys: KEYS,
        replacing: &[],
        env_prefix: ENV_PREFIX,
        non_key_env: NON_KEY_ENV,
        foreign_prefixes: &[],
    };
    let layers = loader::Layers {
        defaults: Table::new(),
        file,
        env,
        flags: &flag_list,
    };
    loader::load(layers, &schema, problems, validate)
}

fn validate(tree: Table, problems: &mut Vec<Problem>) -> Option<InjectConfig> {
    let raw: Raw = match Value::Table(tree).try_into() {
        Ok(r) => r,
        Err(e) => {
            // The key check guarantees the shape; this is a safety net.
            problems.push(Problem::new("config", e.to_string()));
            return None;
        }
    };
    let listen = socket_addr(
        "listen",
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        problems,
    );
    let admin_listen = match raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
        "" => Some(None),
        s => socket_addr("admin_listen", s, problems).map(Some),
    };
    let mut required_path = |key: &str, v: &Option<String>| match v.as_deref() {
        Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => {
            problems.push(Problem::new(
                key,
                "required: the webhook serves HTTPS only (the API server calls it over TLS)",
            ));
            None
        }
    };
    let tls_cert = required_path("tls_cert", &raw.tls_cert);
    let tls_key = required_path("tls_key", &raw.tls_key);
    let tls_reload = duration(
        "tls_reload",
        raw.tls_reload.as_deref(),
        "10s",
        true,
        problems,
    );
    let namespace_cache = duration(
        "namespace_cache",
        raw.namespace_cache.as_deref(),
        "30s",
        false,
        problems,
    );
    let sidecar = sidecar_spec(&raw, problems);
    let kube_api = match raw.kube_api_url.as_deref().unwrap_or("") {
        "" => Some(KubeApi::InCluster),
        "off" => Some(KubeApi::Off),
        url if url.starts_with("https://") || url.starts_with("http://") => {
            Some(KubeApi::Url(url.trim_end_matches('/').to_string()))
        }
        url => {
            problems.push(Problem::new(
                "kube_api_url",
                format!("{url:?} is not \"\", \"off\" or an http(s):// URL"),
            ));
            None
        }
    };
    Some(InjectConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        tls_cert: tls_cert?,
        tls_key: tls_key?,
        tls_reload: tls_reload?,
        sidecar: sidecar?,
        kube_api: kube_api?,
        kube_token_file: PathBuf::from(
            raw.kube_token_file
                .as_deref()
                .unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ),
        kube_ca_file: PathBuf::from(
            raw.kube_ca_file
                .as_deref()
                .unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        ),
        namespace_cache: namespace_cache?,
    })
}

fn sidecar_spec(raw: &Raw, problems: &mut Vec<Problem>) -> Option<SidecarSpec> {
    let before = problems.len();
    let image = raw.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into());
    if image.trim().is_empty() {
        problems.push(Problem::new("image", "must not be empty"));
    }
    let image_pull_policy = raw
        .image_pull_policy
        .clone()
        .unwrap_or_else(|| "IfNotPresent".into());
    if !["Always", "IfNotPresent", "Never"].contains(&image_pull_policy.as_str()) {
        problems.push(Problem::new(
            "image_pull_policy",
            format!("{image_pull_policy:?} is not Always, IfNotPresent or Never"),
        ));
    }
    let sidecar_mode = raw.sidecar_mode.as_deref().unwrap_or("native");
    let sidecar_mode = SidecarMode::parse(sidecar_mode).or_else(|| {
        problems.push(Problem::new(
            "sidecar_mode",
            format!("{sidecar_mode:?} is not native or classic"),
        ));
        None
    });
    let mode = raw.mode.as_deref().unwrap_or("base-url");
    let mode = AppMode::parse(mode).or_else(|| {
        problems.push(Problem::new(
            "mode",
            format!("{mode:?} is not base-url or https-proxy"),
        ));
        None
    });
    let mut port = |key: &str, v: Option<i64>, default: u16| match v {
        None => Some(default),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(Problem::new(key, format!("{p} is not a port (1-65535)")));
                None
            }
        },
    };
    let ports = raw.ports.clone().unwrap_or_default();
    let (port, proxy_port, admin_port) = (
        port("ports.base_url", ports.base_url, 8787),
        port("ports.https_proxy", ports.https_proxy, 8788),
        port("ports.admin", ports.admin, 9464),
    );
    let mut quantity = |key: &str, v: &Option<String>, default: &str| {
        let q = v.clone().unwrap_or_else(|| default.into());
        if !q.is_empty() && !crate::kube_values::is_quantity(&q) {
            problems.push(Problem::new(
                key,
                format!("{q:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)"),
            ));
        }
        q
    };
    let cpu_request = quantity("cpu_request", &raw.cpu_request, "50m");
    let memory_request = quantity("memory_request", &raw.memory_request, "64Mi");
    let cpu_limit = quantity("cpu_limit", &raw.cpu_limit, "");
    let memory_limit = quantity("memory_limit", &raw.memory_limit, "256Mi");
    let control_url = raw.control_url.clone().unwrap_or_default();
    let url_ok = control_url.is_empty()
        || control_url.starts_with("http://")
        || control_url.starts_with("https://");
    if !url_ok {
        problems.push(Problem::new(
            "control_url",
            format!("{control_url:?} is not an http:// or https:// URL"),
        ));
    }
    let mut secret_name = |key: &str, v: &Option<String>, default: &str| {
        let name = v.clone().unwrap_or_else(|| default.into());
        if !name.is_empty() && !crate::kube_values::is_dns_subdomain(&name) {
            problems.push(Problem::new(
                key,
                format!("{name:?} is not a Secret name (lower-case letters, digits, '-' and '.')"),
            ));
        }
        name
    };
    let credential_secret = secret_name("credential_secret", &raw.credential_secret, "");
    let ca_secret = secret_name("ca_secret", &raw.ca_secret, DEFAULT_CA_SECRET);
    let tag_labels = raw
        .tag_labels
        .clone()
        .unwrap_or_else(|| vec!["app.kubernetes.io/name".into(), "app".into()]);
    if problems.len() != before {
        return None;
    }
    Some(SidecarSpec {
        image,
        image_pull_policy,
        sidecar_mode: sidecar_mode?,
        mode: mode?,
        port: port?,
        proxy_port: proxy_port?,
        admin_port: admin_port?,
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
        control_url,
        credential_secret,
        ca_secret,
        tag_labels,
    })
}
