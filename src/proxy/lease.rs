//! Lease: the sidecar's side of fleet budgets (see [`crate::lease`]). A
//! background task keeps a lease of every budget the control endpoint
//! holds: it renews at a low-water mark, sized to this sidecar's recent
//! spend rate, before the lease runs out or expires, and returns what is
//! unused when a request was refused for lack of it (so the last of a
//! budget goes where it is needed) and at shutdown. Requests never wait on
//! it in the common case; one whose worst case the lease cannot cover waits
//! for a grant at most `lease_wait`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::{Held, LeaseView, Ledger};
use crate::config::ControlLink;
use crate::lease::{LeaseAsk, LeaseRequest, LeaseResponse};
use crate::metrics::LeaseMetrics;

/// The file in the data dir naming this sidecar's instance.
pub const INSTANCE_FILE: &str = "instance-id";
/// How often leases are looked at when nothing wakes the task.
const TICK: Duration = Duration::from_millis(250);
/// A lease is sized to cover this long of the recent spend rate.
const HORIZON: Duration = Duration::from_secs(10);
/// Consumption changes are reported at least this often (the control
/// endpoint's fleet-wide figures and thresholds follow them).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Wait between renewals while the control endpoint is unreachable (a
/// request its lease cannot cover is refused meanwhile, without waiting).
const RETRY: Duration = Duration::from_millis(500);
/// One renewal's time limit.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a renewal failed. Never carries the credential.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the control endpoint is unreachable: {0}")]
    Unreachable(String),
    #[error("the control endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What requests share with the renewal task.
pub struct Leases {
    /// Bumped after every renewal attempt: waiting requests look again.
    changed: tokio::sync::watch::Sender<u64>,
    wake: Arc<tokio::sync::Notify>,
    /// Longest a request waits for a grant.
    pub wait: Duration,
    pub metrics: LeaseMetrics,
}

impl Leases {
    /// The handle; `ledger` wakes the task when a lease runs low.
    pub fn new(ledger: &Ledger, wait: Duration, metrics: LeaseMetrics) -> Leases {
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = wake.clone();
        ledger.on_lease_wanted(Box::new(move || w.notify_one()));
        Leases {
            changed: tokio::sync::watch::Sender::new(0),
            wake,
            wait,
            metrics,
        }
    }

    /// Sees every renewal from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// This data dir's instance id (made on first use).
pub fn instance_id(data_dir: &Path) -> Result<String, LeaseError> {
    let path = data_dir.join(INSTANCE_FILE);
    let io = |source| LeaseError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::write(&path, &id).map_err(io)?;
    Ok(id)
}

/// Per budget: the spend rate seen.
#[derive(Default)]
struct Rate {
    last: Option<(Instant, u64)>,
    /// nano-USD per second, smoothed.
    per_sec: f64,
}

impl Rate {
    fn observe(&mut self, now: Instant, consumed: u64) {
        if let Some((t, c)) = self.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt < 0.2 {
                return;
            }
            let r = consumed.saturating_sub(c) as f64 / dt;
            // Rises at once (a busy sidecar must not starve), decays slowly.
            self.per_sec = if r > self.per_sec {
                r
            } else {
                self.per_sec * 0.8 + r * 0.2
            };
        }
        self.last = Some((now, consumed));
    }
}

/// Room wanted beyond what is consumed and in flight.
/// The grant requests may still be admitted under while a renewal is in
/// flight (the control endpoint keeps it from others until the next one).
fn held_now(v: &LeaseView) -> u64 {
    v.held
        .as_ref()
        .filter(|h| h.limit == v.limit_nusd && Instant::now() < h.valid_until)
        .map_or(0, |h| h.granted)
}

fn want(v: &LeaseView, rate: f64) -> u64 {
    if v.starved {
        return 0;
    }
    let by_rate = (rate * HORIZON.as_secs_f64()) as u64;
    let floor = (v.peak_worst_nusd.saturating_mul(2)).max(v.limit_nusd / 100);
    by_rate.max(floor).max(v.need_nusd)
}

/// Whether `v` needs a renewal now.
fn due(v: &LeaseView, want: u64, ttl: Duration, last_report: Option<&(Instant, u64)>) -> bool {
    let now = Instant::now();
    let Some(h) = &v.held else {
        return true;
    };
    if h.limit != v.limit_nusd || v.need_nusd > 0 || v.starved {
        return true;
    }
    if h.valid_until.saturating_duration_since(now) < ttl / 2 {
        return true;
    }
    let room = h
        .granted
        .saturating_sub(v.consumed_nusd.saturating_add(v.reserved_nusd));
    if room < h.low_water || room > want.saturating_mul(4).max(v.limit_nusd / 100) {
        return true;
    }
    match last_report {
        Some((at, consumed)) => *consumed != v.consumed_nusd && at.elapsed() >= REPORT_EVERY,
        None => true,
    }
}

/// One renewal call.
async fn renew(
    client: &reqwest::Client,
    link: &ControlLink,
    req: &LeaseRequest,
) -> Result<LeaseResponse, LeaseError> {
    let resp = client
        .post(format!("{}/api/v1/leases", link.url))
        .bearer_auth(link.credential.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(req).map_err(|e| LeaseError::Unreachable(e.to_string()))?)
        .send()
        .await
        .map_err(|e| LeaseError::Unreachable(e.without_url().to_string()))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(LeaseError::Unreachable(format!("status {status}")));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| LeaseError::Unreachable(e.without_url().to_string()))?;
    if !status.is_success() {
        return Err(LeaseError::Refused {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).chars().take(300).collect(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| LeaseError::Refused {
        status: status.as_u16(),
        message: format!("the answer does not decode: {e}"),
    })
}

fn apply(ledger: &Ledger, resp: &LeaseResponse, sent: Instant, wants: &HashMap<String, u64>) {
    let ttl = Duration::from_millis(resp.ttl_ms);
    for g in &resp.leases {
        if let Some(e) = &g.error {
            tracing::warn!(budget = %g.budget, period = %g.period, error = %e, "the control endpoint granted no lease");
        }
        let want = wants.get(&g.budget).copied().unwrap_or(0);
        ledger.apply_lease(
            &g.budget,
            &g.period,
            Held {
                granted: g.granted_nusd,
                overdraft: g.overdraft_nusd,
                limit: g.limit_nusd,
                // From the send time: never later than the control
                // endpoint's own expiry.
                valid_until: sent + ttl,
                low_water: want / 2,
            },
            g.consumed_nusd,
        );
    }
}

/// The renewal background service.
#[derive(Clone)]
pub struct LeaseService {
    pub ledger: Arc<Ledger>,
    pub leases: Arc<Leases>,
    pub link: ControlLink,
    pub sidecar_id: String,
    pub instance: String,
}

impl LeaseService {
    fn client() -> Option<reqwest::Client> {
        match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "leases are off: no HTTP client");
                None
            }
        }
    }

    fn gauges(&self, views: &[LeaseView]) {
        let m = &self.leases.metrics;
        let usd = |n: u64| n as f64 / 1e9;
        for v in views {
            let held = v.held.as_ref().map_or(0, |h| {
                h.granted
                    .saturating_sub(v.consumed_nusd.saturating_add(v.reserved_nusd))
            });
            m.held_usd.with_label_values(&[&v.budget]).set(usd(held));
            m.consumed_usd
                .with_label_values(&[&v.budget])
                .set(usd(v.consumed_nusd));
        }
    }

    /// Takes a lease of every budget before traffic (at start), so the
    /// first requests do not wait for one.
    pub async fn warm(&self) -> Result<(), LeaseError> {
        self.renew_all(true).await
    }

    /// Returns every lease (asks for no room): at shutdown, after the
    /// last request settled.
    pub async fn return_all(&self) -> Result<(), LeaseError> {
        self.renew_all(false).await
    }

    async fn renew_all(&self, take: bool) -> Result<(), LeaseError> {
        let views = self.ledger.lease_views();
        if views.is_empty() {
            return Ok(());
        }
        let Some(client) = Self::client() else {
            return Ok(());
        };
        let req = LeaseRequest {
            sidecar_id: self.sidecar_id.clone(),
            instance: self.instance.clone(),
            leases: views
                .iter()
                .map(|v| LeaseAsk {
                    budget: v.budget.clone(),
                    period: v.period.clone(),
                    consumed_nusd: v.consumed_nusd,
                    reserved_nusd: v.reserved_nusd,
                    want_nusd: if take { want(v, 0.0) } else { 0 },
                    need_nusd: 0,
                    // Returned after the drain: nothing more is admitted.
                    held_nusd: if take { held_now(v) } else { 0 },
                })
                .collect(),
        };
        let wants: HashMap<String, u64> = req
            .leases
            .iter()
            .map(|a| (a.budget.clone(), a.want_nusd))
            .collect();
        let sent = Instant::now();
        let resp = renew(&client, &self.link, &req).await?;
        apply(&self.ledger, &resp, sent, &wants);
        Ok(())
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LeaseService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(client) = Self::client() else {
            return;
        };
        let mut rates: HashMap<String, Rate> = HashMap::new();
        let mut reported: HashMap<(String, String), (Instant, u64)> = HashMap::new();
        let mut ttl = Duration::from_secs(60);
        let mut retry_at: Option<Instant> = None;
        let mut last_loop = Instant::now();
        loop {
            tokio::select! {
                () = self.leases.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            if self.ledger.is_unreachable() {
                self.leases
                    .metrics
                    .unreachable_seconds
                    .inc_by(now.duration_since(last_loop).as_secs_f64());
            }
            last_loop = now;
            let views = self.ledger.lease_views();
            self.gauges(&views);
            if retry_at.is_some_and(|t| now < t) {
                continue;
            }
            let mut wants = HashMap::new();
            let mut asks = Vec::new();
            for v in &views {
                let rate = rates.entry(v.budget.clone()).or_default();
                rate.observe(now, v.consumed_nusd);
                let w = want(v, rate.per_sec);
                let key = (v.budget.clone(), v.period.clone());
                if !due(v, w, ttl, reported.get(&key)) {
                    continue;
                }
                wants.insert(v.budget.clone(), w);
                asks.push(LeaseAsk {
                    budget: v.budget.clone(),
                    period: v.period.clone(),
                    consumed_nusd: v.consumed_nusd,
                    reserved_nusd: v.reserved_nusd,
                    want_nusd: w,
                    need_nusd: v.need_nusd,
                    held_nusd: self.ledger.cap_lease(
                        &v.budget,
                        &v.period,
                        v.consumed_nusd
                            .saturating_add(v.reserved_nusd)
                            .saturating_add(w),
                    ),
                });
            }
            if asks.is_empty() {
                continue;
            }
            let req = LeaseRequest {
                sidecar_id: self.sidecar_id.clone(),
                instance: self.instance.clone(),
                leases: asks,
            };
            let m = &self.leases.metrics;
            match renew(&client, &self.link, &req).await {
                Ok(resp) => {
                    m.renewals.with_label_values(&["ok"]).inc();
                    if self.ledger.is_unreachable() {
                        tracing::info!("the control endpoint answers lease renewals again");
                    }
                    self.ledger.set_unreachable(false);
                    m.unreachable.set(0);
                    retry_at = None;
                    ttl = Duration::from_millis(resp.ttl_ms.max(1));
                    apply(&self.ledger, &resp, now, &wants);
                    let mut cut = false;
                    for a in &req.leases {
                        let key = (a.budget.clone(), a.period.clone());
                        let granted = resp
                            .leases
                            .iter()
                            .find(|g| g.budget == a.budget && g.period == a.period)
                            .map(|g| g.granted_nusd);
                        if granted.is_some_and(|g| g < a.held_nusd) {
                            // The control endpoint keeps the old grant from
                            // others until we confirm the cut: renew again
                            // at once (never reported, so due).
                            reported.remove(&key);
                            cut = true;
                        } else {
                            reported.insert(key, (now, a.consumed_nusd));
                        }
                    }
                    if cut {
                        self.leases.wake.notify_one();
                    }
                }
                Err(LeaseError::Unreachable(e)) => {
                    m.renewals.with_label_values(&["unreachable"]).inc();
                    if !self.ledger.is_unreachable() {
                        tracing::warn!(error = %e, "cannot renew leases: spending what is held, then each budget's on_control_unreachable applies");
                    }
                    self.ledger.set_unreachable(true);
                    m.unreachable.set(1);
                    retry_at = Some(now + RETRY);
                }
                Err(e) => {
                    m.renewals.with_label_values(&["refused"]).inc();
                    tracing::error!(error = %e, "lease renewal refused");
                    self.ledger.set_unreachable(false);
                    m.unreachable.set(0);
                    retry_at = Some(now + RETRY);
                }
            }
            self.leases.changed.send_modify(|g| *g += 1);
        }
    }
}
