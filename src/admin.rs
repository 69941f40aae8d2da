//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! is up) and `/readyz` (ready for traffic: not draining, outbox writable),
//! plus `/usage`, the usage table of the running sidecar (what
//! `tollgate usage` shows while the proxy holds the store) and `/events`, the
//! latest usage events as JSON (`?limit=N`, default 100, oldest first), and
//! `/budgets`, each budget's period, spent, reserved and remaining as JSON,
//! `/cache/stats` (JSON) and `POST /cache/purge[?account=A]`, and `/routes`,
//! the aliases and each routing target's circuit breaker (what `tollgate
//! status` shows).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::budget::Ledger;
use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::proxy::lifecycle::InFlight;
use crate::store::outbox::Outbox;
use crate::usage_report::{GroupBy, UsageReport};

/// The admin HTTP app.
pub struct Admin {
    pub metrics: Metrics,
    pub outbox: Outbox,
    pub in_flight: InFlight,
    pub ledger: Arc<Ledger>,
    pub cache: Arc<Cache>,
    pub router: Arc<crate::route::Router>,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len());
    // Like every answer tollgate makes itself, an error says its kind.
    if let Some(kind) = error_kind(status) {
        r = r.header("x-tollgate-error", kind);
    }
    r.body(body).unwrap_or_else(|_| Response::new(Vec::new()))
}

/// The `x-tollgate-error` kind of an admin error status.
fn error_kind(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "bad_request",
        404 => "not_found",
        403 => "forbidden",
        405 => "method_not_allowed",
        503 => "unavailable",
        s if s >= 500 => "internal_error",
        s if s >= 400 => "bad_request",
        _ => return None,
    })
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Bound beyond loopback (in a pod, for probes and Prometheus), the
        // listener serves only those to other hosts: usage, budgets, events
        // and cache purges stay with whoever is inside (`kubectl exec`).
        let local = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_none_or(|a| a.ip().is_loopback());
        let req = session.req_header();
        let path = req.uri.path().to_string();
        if !local && !matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz") {
            return respond(
                403,
                "text/plain",
                b"only /metrics, /healthz and /readyz are served to other hosts; ask from inside (loopback)\n"
                    .to_vec(),
            );
        }
        let query = req.uri.query().unwrap_or("").to_string();
        match path.as_str() {
            "/metrics" => respond(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/budgets" => match serde_json::to_vec(&self.ledger.status()) {
                Ok(body) => respond(200, "application/json", body),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            "/routes" => match serde_json::to_vec(&routes_json(&self.router)) {
                Ok(body) => respond(200, "application/json", body),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            "/cache/stats" => match serde_json::to_vec(&self.cache.stats()) {
                Ok(body) => respond(200, "application/json", body),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            "/cache/purge" => {
                if req.method != http::Method::POST {
                    return respond(405, "text/plain", b"POST only\n".to_vec());
                }
                let account = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("account="))
                    .map(str::to_string);
                let cache = self.cache.clone();
                // A purge scans the store: disk work, off the async threads.
                let removed =
                    tokio::task::spawn_blocking(move || cache.store.purge(account.as_deref()))
                        .await;
                match removed {
                    Ok(Ok(n)) => respond(
                        200,
                        "application/json",
                        format!("{{\"removed\":{n}}}\n").into_bytes(),
                    ),
                    Ok(Err(e)) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                    Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                }
            }
            "/readyz" => {
                if self.in_flight.draining() {
                    respond(503, "text/plain", b"draining\n".to_vec())
                } else if !self.outbox.healthy() {
                    respond(503, "text/plain", b"outbox not writable\n".to_vec())
                } else {
                    respond(200, "text/plain", b"ready\n".to_vec())
                }
            }
            "/usage" => {
                let by = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("by="))
                    .unwrap_or("account,model,day");
                let group = match GroupBy::parse(by) {
                    Ok(g) => g,
                    Err(e) => return respond(400, "text/plain", format!("{e}\n").into_bytes()),
                };
                let outbox = self.outbox.clone();
                // Reading the whole ledger is disk work: keep it off the async threads.
                let table = tokio::task::spawn_blocking(move || {
                    let mut report = UsageReport::new(&group);
                    outbox
                        .for_each_event(&mut |e| report.add(&e))
                        .map(|()| report.render())
                })
                .await;
                match table {
                    Ok(Ok(text)) => respond(200, "text/plain; charset=utf-8", text.into_bytes()),
                    Ok(Err(e)) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                    Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                }
            }
            "/events" => {
                let limit = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("limit="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(100);
                let outbox = self.outbox.clone();
                let events = tokio::task::spawn_blocking(move || outbox.latest(limit)).await;
                match events {
                    Ok(Ok(events)) => match serde_json::to_vec(&events) {
                        Ok(body) => respond(200, "application/json", body),
                        Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                    },
                    Ok(Err(e)) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                    Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
                }
            }
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// Shared handle type for the admin app.
pub type AdminApp = Arc<Admin>;

/// `/routes`: the aliases as configured and every routing target's breaker
/// state, transitions and time to first byte.
fn routes_json(router: &crate::route::Router) -> serde_json::Value {
    let routing = router.routing();
    let aliases: serde_json::Map<String, serde_json::Value> = router
        .aliases()
        .iter()
        .map(|(name, a)| {
            let targets: Vec<String> = a.targets.iter().map(|t| t.target.to_string()).collect();
            (
                name.clone(),
                serde_json::json!({"policy": a.policy.as_str(), "targets": targets}),
            )
        })
        .collect();
    let targets: Vec<serde_json::Value> = router
        .health()
        .snapshot(std::time::Instant::now())
        .into_iter()
        .map(|t| {
            serde_json::json!({
                "target": t.target.to_string(),
                "state": t.state.as_str(),
                "opened": t.transitions.opened,
                "half_opened": t.transitions.half_opened,
                "closed": t.transitions.closed,
                "ttft_ms": t.ttft.map(|d| d.as_secs_f64() * 1e3),
            })
        })
        .collect();
    serde_json::json!({
        "default_alias": routing.default_alias,
        "aliases": aliases,
        "targets": targets,
    })
}
