//! `tollgate control`: the control endpoint. Holds accounts and their plans,
//! gateway keys and sidecar credentials (hashed), and an audit log of every
//! administrative change; serves them as an HTTP JSON API (see
//! `openapi.json` next to this file).
//!
//! Request handling is split in two: the resource modules' functions are
//! synchronous and talk to the store through its traits (so a PostgreSQL
//! backend can replace sled), and `api` runs them on tokio's blocking pool,
//! so a store write never stalls the async threads.

pub mod accounts;
pub mod aliases;
pub mod api;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod byok;
pub mod cli;
pub mod credentials;
pub mod leases;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod server;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use axum::http::StatusCode;

use crate::config::control::ControlConfig;
use crate::store::{ControlRecords, StoreError};

pub use auth::Principal;
pub use metrics::ControlMetrics;

/// The control endpoint's state, shared by every request.
pub struct Control {
    config: ControlConfig,
    records: ControlRecords,
    metrics: ControlMetrics,
    /// Serialises administrative changes, so a check and the write it
    /// allows (a plan's key count, a name not taken) cannot interleave.
    writes: Mutex<()>,
    /// When each credential's `last_used_at` was last written: written at
    /// most once a minute per credential, not on every request.
    last_used: Mutex<HashMap<String, i64>>,
    /// The master keys that seal and open stored provider keys.
    masters: RwLock<byok::Masters>,
    /// What sidecars sync: the audit log's last number, bumped by every
    /// administrative change (long polls wait on it).
    version: tokio::sync::watch::Sender<u64>,
    /// Set when the endpoint is stopping: long polls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Lease books by `<budget>/<period>`, as stored (read through).
    leases: Mutex<HashMap<String, crate::lease::Book>>,
    /// Fleet-wide budget alerts, delivered by a task the server starts.
    alerts: crate::budget::alerts::AlertSink,
    alert_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::budget::alerts::Alert>>>,
}

impl Control {
    /// The control endpoint over `records`.
    pub fn new(config: ControlConfig, records: ControlRecords, metrics: ControlMetrics) -> Control {
        let masters = RwLock::new(byok::Masters {
            current: config.master_key.clone(),
            previous: config.previous_master_key.clone(),
        });
        let version = records.audit.last().unwrap_or(0);
        let (alerts, alert_rx) = crate::budget::alerts::AlertSink::channel();
        Control {
            leases: Mutex::new(HashMap::new()),
            alerts,
            alert_rx: Mutex::new(Some(alert_rx)),
            version: tokio::sync::watch::Sender::new(version),
            stopping: tokio::sync::watch::Sender::new(false),
            masters,
            config,
            records,
            metrics,
            writes: Mutex::new(()),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    /// Its metrics.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Ends every long poll now (the endpoint is stopping).
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Makes everything written durable (at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.records.flush()
    }

    /// Holds the write lock for one administrative change.
    fn write_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, ApiError> {
        self.writes
            .lock()
            .map_err(|_| ApiError::internal("the write lock is poisoned"))
    }
}

/// An error answer: its status, its `error.type` and a message for people
/// (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or names something invalid.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401: no credential, or one that is unknown or revoked.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid credential without the right to this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403: the account's plan does not allow this.
    pub fn plan_limit(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "plan_limit", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: it exists already.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// Whether this is an authentication or authorisation failure.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.kind, "unauthorized" | "forbidden")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(format!("store: {e}"))
    }
}
