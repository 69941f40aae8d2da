//! A namespace's `tollgate.dev/inject` annotation, read from the API
//! server (a MutatingWebhookConfiguration's `namespaceSelector` sees labels
//! only) and kept for a short while, since every pod of a namespace asks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::annotations::{self, Wish};
use crate::config::inject::{InjectConfig, KubeApi};

/// Longest a lookup may take: the API server's call to the webhook has a
/// timeout of its own (10 s at most, 5 s in the chart).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a namespace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading the token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("GET {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url}: not a Namespace: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("namespace {namespace}: {source}")]
    Annotation {
        namespace: String,
        source: annotations::BadAnnotation,
    },
}

/// Why the lookup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the API server's CA {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("the API server's CA {path}: {source}")]
    BadCa {
        path: String,
        source: reqwest::Error,
    },
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Reads and caches namespaces' wishes.
pub struct Namespaces {
    api: Option<Api>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Wish)>>,
}

struct Api {
    base: String,
    client: reqwest::Client,
    token_file: PathBuf,
}

/// The `metadata.annotations` of a Namespace, all that is read of it.
#[derive(serde::Deserialize)]
struct Namespace {
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Default, serde::Deserialize)]
struct Metadata {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Namespaces {
    /// From the config: the API server's address (in-cluster from the
    /// environment the kubelet sets), its CA and token.
    pub fn new(
        config: &InjectConfig,
        env: &BTreeMap<String, String>,
    ) -> Result<Namespaces, SetupError> {
        let base = match &config.kube_api {
            KubeApi::Off => None,
            KubeApi::Url(url) => Some(url.clone()),
            KubeApi::InCluster => in_cluster(env),
        };
        let api = match base {
            None => None,
            Some(base) => {
                let mut builder = reqwest::Client::builder().timeout(LOOKUP_TIMEOUT);
                if base.starts_with("https://") {
                    let path = config.kube_ca_file.display().to_string();
                    let pem =
                        std::fs::read(&config.kube_ca_file).map_err(|source| SetupError::Ca {
                            path: path.clone(),
                            source,
                        })?;
                    let ca = reqwest::Certificate::from_pem(&pem)
                        .map_err(|source| SetupError::BadCa { path, source })?;
                    builder = builder.tls_certs_only([ca]);
                }
                Some(Api {
                    base,
                    client: builder.build().map_err(SetupError::Client)?,
                    token_file: config.kube_token_file.clone(),
                })
            }
        };
        match &api {
            Some(api) => {
                tracing::info!(api = %api.base, "namespace annotations are read from the API server")
            }
            None => tracing::info!(
                "no API server: only pods' own tollgate.dev/inject annotations count"
            ),
        }
        Ok(Namespaces {
            api,
            ttl: config.namespace_cache,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The namespace's wish, and whether it came from the cache. Without an
    /// API server, `Unset`.
    pub async fn wish(&self, namespace: &str) -> Result<(Wish, bool), LookupError> {
        let Some(api) = &self.api else {
            return Ok((Wish::Unset, true));
        };
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, wish)) = cache.get(namespace) {
                if at.elapsed() < self.ttl {
                    return Ok((*wish, true));
                }
            }
        }
        let wish = api.read(namespace).await?;
        if let Ok(mut cache) = self.cache.lock() {
            // Namespaces come and go; a stale entry is only re-read.
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            cache.insert(namespace.to_string(), (Instant::now(), wish));
        }
        Ok((wish, false))
    }
}

impl Api {
    async fn read(&self, namespace: &str) -> Result<Wish, LookupError> {
        let url = format!("{}/api/v1/namespaces/{namespace}", self.base);
        let mut req = self.client.get(&url);
        // Re-read on every lookup: projected service account tokens rotate.
        match std::fs::read_to_string(&self.token_file) {
            Ok(token) => req = req.bearer_auth(token.trim()),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && self.base.starts_with("http://") => {
            }
            Err(source) => {
                return Err(LookupError::Token {
                    path: self.token_file.display().to_string(),
                    source,
                })
            }
        }
        let http = |source| LookupError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(LookupError::Status {
                url,
                status: resp.status().as_u16(),
            });
        }
        let body = resp.bytes().await.map_err(http)?;
        let ns: Namespace =
            serde_json::from_slice(&body).map_err(|source| LookupError::Json { url, source })?;
        annotations::wish(&ns.metadata.annotations).map_err(|source| LookupError::Annotation {
            namespace: namespace.to_string(),
            source,
        })
    }
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, if set.
fn in_cluster(env: &BTreeMap<String, String>) -> Option<String> {
    let host = env.get("KUBERNETES_SERVICE_HOST")?;
    let port = env.get("KUBERNETES_SERVICE_PORT")?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Some(format!("https://{host}:{port}"))
}
