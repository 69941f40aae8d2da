//! Soft-threshold alerts: a JSON POST to the budget's `alert_webhook`,
//! sent in the background (never on a request's path), retried with
//! backoff. Each threshold fires once per period; the ledger keeps which
//! have fired in its durable state.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

/// Attempts per alert.
const ATTEMPTS: u32 = 6;
/// First retry delay; doubles each attempt (0.5, 1, 2, 4, 8 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Per-attempt timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One threshold crossing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub budget: String,
    pub scope: String,
    /// `day` / `month`.
    pub period: String,
    /// `2026-11-23` / `2026-11`.
    pub period_key: String,
    /// Decimal USD strings, exact.
    pub spent_usd: String,
    pub limit_usd: String,
    pub threshold: f64,
    #[serde(skip)]
    pub webhook: Option<String>,
    #[serde(skip)]
    pub index: usize,
}

/// Where the ledger hands alerts; cheap to clone, never blocks.
#[derive(Clone, Default)]
pub struct AlertSink {
    tx: Option<mpsc::UnboundedSender<Alert>>,
}

impl AlertSink {
    /// A sink and the receiver [`deliver`] drains.
    pub fn channel() -> (AlertSink, mpsc::UnboundedReceiver<Alert>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (AlertSink { tx: Some(tx) }, rx)
    }

    /// Logs the alert and queues its webhook call.
    pub fn fire(&self, alert: Alert) {
        tracing::warn!(
            budget = %alert.budget,
            period = %alert.period_key,
            threshold = alert.threshold,
            spent_usd = %alert.spent_usd,
            limit_usd = %alert.limit_usd,
            "budget soft threshold crossed"
        );
        if alert.webhook.is_none() {
            return;
        }
        if let Some(tx) = &self.tx {
            if tx.send(alert).is_err() {
                tracing::error!("budget alert not sent: the alert sender has stopped");
            }
        }
    }
}

/// Sends every queued alert until the sink side is dropped; each alert in
/// its own task so a slow webhook delays no other.
pub async fn deliver(mut rx: mpsc::UnboundedReceiver<Alert>, failures: prometheus::IntCounter) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the alert webhook client; alerts are only logged");
            return;
        }
    };
    while let Some(alert) = rx.recv().await {
        let client = client.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            if !send(&client, &alert).await {
                failures.inc();
            }
        });
    }
}

async fn send(client: &reqwest::Client, alert: &Alert) -> bool {
    let Some(url) = alert.webhook.as_deref() else {
        return true;
    };
    let body = match serde_json::to_vec(alert) {
        Ok(b) => b,
        Err(_) => return false,
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result = client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::warn!(budget = %alert.budget, status = %r.status(), attempt, "budget alert webhook refused")
            }
            Err(e) => {
                tracing::warn!(budget = %alert.budget, error = %e.without_url(), attempt, "budget alert webhook failed")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(budget = %alert.budget, threshold = alert.threshold, "budget alert webhook gave up");
    false
}

/// The pingora background service that runs [`deliver`].
pub struct AlertService {
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Alert>>>,
    failures: prometheus::IntCounter,
}

impl AlertService {
    pub fn new(
        rx: mpsc::UnboundedReceiver<Alert>,
        failures: prometheus::IntCounter,
    ) -> AlertService {
        AlertService {
            rx: std::sync::Mutex::new(Some(rx)),
            failures,
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AlertService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let Some(rx) = rx else { return };
        tokio::select! {
            () = deliver(rx, self.failures.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}
