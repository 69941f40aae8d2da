//! Serving the webhook: HTTPS (rustls, a certificate re-read when its files
//! change) with `POST /mutate` and `GET /healthz`, and a plain-HTTP admin
//! listener with `/metrics`, `/healthz` and `/readyz`. Stops on SIGTERM or
//! SIGINT after the reviews in progress.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use super::annotations::Wish;
use super::metrics::InjectMetrics;
use super::namespaces::{Namespaces, SetupError};
use super::review::{self, Decision, Request};
use super::tls::{Reloading, TlsError};
use crate::config::inject::{InjectConfig, SidecarSpec};

/// Why the injector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("namespace lookups: {0}")]
    Namespaces(#[from] SetupError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("runtime: {0}")]
    Runtime(io::Error),
}

/// What every review needs.
struct Injector {
    spec: SidecarSpec,
    namespaces: Namespaces,
    metrics: InjectMetrics,
}

/// Serves until SIGTERM / SIGINT.
pub fn run(config: InjectConfig, env: &BTreeMap<String, String>) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(serve(config, env))
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })
}

async fn serve(config: InjectConfig, env: &BTreeMap<String, String>) -> Result<(), ServeError> {
    let metrics = InjectMetrics::new()?;
    let certs = Reloading::load(&config.tls_cert, &config.tls_key)?;
    let injector = Arc::new(Injector {
        spec: config.sidecar.clone(),
        namespaces: Namespaces::new(&config, env)?,
        metrics: metrics.clone(),
    });
    let listener = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tokio::spawn(certs.clone().watch(config.tls_reload, metrics.clone()));
    let webhook = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(ok))
        .with_state(injector.clone());
    if let Some(admin) = admin {
        let router = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(ok))
            .route("/readyz", get(ok))
            .with_state(injector.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, router).await {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
    }
    tracing::info!(
        listen = %config.listen,
        admin_listen = ?config.admin_listen,
        sidecar_mode = config.sidecar.sidecar_mode.as_str(),
        mode = config.sidecar.mode.as_str(),
        image = %config.sidecar.image,
        "tollgate inject listening"
    );
    // The control endpoint's accept loop and stop signal: the same needs.
    crate::control::server::serve_tls(
        listener,
        webhook,
        certs.server_config(),
        crate::control::server::stop_signal(),
    )
    .await;
    tracing::info!("tollgate inject stopped");
    Ok(())
}

async fn ok() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(injector): State<Arc<Injector>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        injector.metrics.render(),
    )
        .into_response()
}

/// One AdmissionReview. A body that is no review is answered 400 (the API
/// server then applies the webhook's failurePolicy).
async fn mutate(State(injector): State<Arc<Injector>>, body: Bytes) -> Response {
    let started = Instant::now();
    let metrics = &injector.metrics;
    let req = match Request::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            metrics
                .reviews
                .with_label_values(&["invalid", "none"])
                .inc();
            tracing::warn!(error = %e, "not an admission review");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let namespace_wish = match (&req.pod, req.pod_wish()) {
        (Some(_), Wish::Unset) => namespace_wish(&injector, req.namespace()).await,
        _ => Wish::Unset,
    };
    let (res, decision) = review::decide(&req, &injector.spec, namespace_wish);
    let sidecar_mode = match decision {
        Decision::Injected(mode, _) => mode.as_str(),
        _ => "none",
    };
    metrics
        .reviews
        .with_label_values(&[decision.label(), sidecar_mode])
        .inc();
    let (uid, pod, namespace, dry_run) = (
        req.request.uid.as_str(),
        req.pod_name(),
        req.namespace(),
        req.request.dry_run,
    );
    match decision {
        Decision::Denied => {
            let message = res.result.message.as_str();
            tracing::warn!(uid, pod, namespace, dry_run, message, "pod denied");
        }
        Decision::Ignored => {
            tracing::debug!(uid, kind = %req.request.kind.kind, "not a pod create: allowed untouched");
        }
        _ => {
            let decision = decision.label();
            tracing::info!(
                uid,
                pod,
                namespace,
                dry_run,
                decision,
                sidecar_mode,
                "review answered"
            );
        }
    }
    let out = match review::render(res) {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(error = %e, "cannot render the review");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the review",
            )
                .into_response();
        }
    };
    metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// The namespace's wish; a failed lookup counts as no wish (the pod is let
/// through uninjected, never refused for the API server's trouble).
async fn namespace_wish(injector: &Injector, namespace: &str) -> Wish {
    let lookups = &injector.metrics.namespace_lookups;
    match injector.namespaces.wish(namespace).await {
        Ok((wish, cached)) => {
            lookups
                .with_label_values(&[if cached { "hit" } else { "read" }])
                .inc();
            wish
        }
        Err(e) => {
            lookups.with_label_values(&["failed"]).inc();
            tracing::warn!(namespace, error = %e, "cannot read the namespace's annotations; only the pod's count");
            Wish::Unset
        }
    }
}
