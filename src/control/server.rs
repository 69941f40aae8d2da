//! Serving the control API: plain HTTP, or HTTPS (rustls) when a
//! certificate and key are configured; stops on SIGTERM or SIGINT after
//! the requests in progress, then makes the store durable.

use std::io;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::{api, Control, ControlMetrics};
use crate::config::control::ControlConfig;
use crate::store::StoreError;

/// Why the control endpoint could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir { path: String, source: io::Error },
    #[error("the control store in {0} is in use by another process")]
    StoreInUse(String),
    #[error("control store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("BYOK: {0}")]
    MasterKey(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("runtime: {0}")]
    Runtime(io::Error),
}

/// sled's page cache for the control store.
const STORE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Opens the store, serves until SIGTERM / SIGINT, flushes the store.
pub fn run(config: ControlConfig) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(serve(config))
}

fn private_dir(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("reading {}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(config: ControlConfig) -> Result<(), ServeError> {
    private_dir(&config.data_dir)?;
    let db = crate::store::sled::open_db(&config.data_dir, STORE_CACHE_BYTES)?
        .ok_or_else(|| ServeError::StoreInUse(config.data_dir.display().to_string()))?;
    let records = crate::store::sled::control_records(&db)?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let listen = config.listen;
    let control = Arc::new(Control::new(config, records, ControlMetrics::new()?));
    control
        .count_accounts()
        .and_then(|()| control.count_ledger())
        .map_err(|e| StoreError(e.message))?;
    // A wrong master key must stop the start, not look like a broken store.
    let sealed = control.check_master_keys().map_err(ServeError::MasterKey)?;
    tracing::info!(
        provider_keys = sealed,
        master_key = control.config().master_key.as_ref().map(|k| k.id()),
        "stored provider keys open under the configured master key"
    );
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    if let Some(rx) = control.take_alerts() {
        tokio::spawn(crate::budget::alerts::deliver(
            rx,
            control.metrics().alert_failures.clone(),
        ));
    }
    let router = api::router(control.clone());
    tracing::info!(%listen, tls = tls.is_some(), "tollgate control listening");
    let stopper = control.clone();
    let stop = async move {
        stop_signal().await;
        stopper.begin_stop();
    };
    match tls {
        None => axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|e| ServeError::Listen {
                addr: listen.to_string(),
                source: e,
            })?,
        Some(tls) => serve_tls(listener, router, tls, stop).await,
    }
    control.flush()?;
    tracing::info!("tollgate control stopped");
    Ok(())
}

/// The TLS accept loop: each connection's handshake and requests run in
/// their own task; a failed handshake only ends that connection. The
/// injector serves its webhook with it too.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    tls: rustls::ServerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let mut stop = std::pin::pin!(stop);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tasks.spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in progress get a bounded time to finish.
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
