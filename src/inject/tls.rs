//! The webhook's certificate, re-read when its files change: a renewed
//! Secret (cert-manager, or the chart's next upgrade) is picked up without a
//! restart, and a half-written pair never replaces a good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::metrics::InjectMetrics;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("the key of {path}: {message}")]
    Key { path: String, message: String },
}

/// The current certificate, swapped in whole on reload.
#[derive(Debug)]
pub struct Reloading {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
}

impl Reloading {
    /// Loads the pair once; an error here stops the start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloading>, TlsError> {
        let (pair, _) = read_pair(cert, key)?;
        Ok(Arc::new(Reloading {
            current: ArcSwap::from_pointee(pair),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }))
    }

    /// Checks the files every `every`; a changed pair that loads replaces the
    /// current one, one that does not is logged and counted.
    pub async fn watch(self: Arc<Self>, every: Duration, metrics: InjectMetrics) {
        let mut seen = read_bytes(&self.cert, &self.key);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = read_bytes(&self.cert, &self.key);
            if now == seen {
                continue;
            }
            seen = now;
            match read_pair(&self.cert, &self.key) {
                Ok((pair, not_after)) => {
                    self.current.store(Arc::new(pair));
                    metrics.tls_reloads.with_label_values(&["reloaded"]).inc();
                    tracing::info!(cert = %self.cert.display(), not_after, "webhook certificate reloaded");
                }
                Err(e) => {
                    metrics.tls_reloads.with_label_values(&["failed"]).inc();
                    tracing::warn!(error = %e, "webhook certificate changed but does not load; keeping the previous one");
                }
            }
        }
    }

    /// A server config that asks this resolver on every handshake.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_bytes(cert: &Path, key: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
}

/// The pair, and the leaf's expiry (for the log).
fn read_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, String), TlsError> {
    let read = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read(cert, &e))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c.validity().not_after.to_string())
        .unwrap_or_default();
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            message: e.to_string(),
        })?;
    let pair = CertifiedKey::new(certs, signing);
    // A key that is not the certificate's would fail every handshake.
    pair.keys_match().map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: format!("does not match {}: {e}", cert.display()),
    })?;
    Ok((pair, not_after))
}
