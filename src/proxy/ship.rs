//! Ship: the outbox's usage events go to the control endpoint in
//! MessagePack batches (`POST /api/v1/ingest` with this sidecar's
//! credential) and are deleted only after its ack. Delivery is
//! at-least-once (a lost ack re-sends the batch; the ledger keeps each
//! event id once). Failures back off exponentially with jitter; serving
//! never depends on any of it. While the control endpoint is away the
//! outbox grows up to `ship.max_outbox_events`, with a warning from 80%;
//! past it the oldest events are dropped, counted and logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntGauge;

use crate::config::ControlLink;
use crate::meter::event::UsageEvent;
use crate::metrics::ShipMetrics;
use crate::store::EventRecords;

/// One attempt's time limit.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How often the outbox-full warning may repeat.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why an attempt failed. Never carries the credential.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the control endpoint is unreachable: {0}")]
    Send(String),
    #[error("the control endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("encoding the batch: {0}")]
    Encode(String),
}

/// The shipping background service.
pub struct Shipper {
    link: ControlLink,
    events: Arc<dyn EventRecords>,
    /// `tollgate_outbox_depth`, kept in step as shipped events are deleted.
    depth: IntGauge,
    metrics: ShipMetrics,
}

/// One batch read from the outbox.
struct Batch {
    keys: Vec<Vec<u8>>,
    /// A MessagePack array of the stored events (their stored bytes as
    /// they are: no decoding and re-encoding).
    body: Vec<u8>,
    /// Time of the oldest event, µs.
    oldest_ts: Option<i64>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A random fraction in [0.5, 1.0): jitter, so a fleet does not retry in step.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0
}

impl Shipper {
    /// Ships `events` to `link`.
    pub fn new(
        link: ControlLink,
        events: Arc<dyn EventRecords>,
        depth: IntGauge,
        metrics: ShipMetrics,
    ) -> Shipper {
        Shipper {
            link,
            events,
            depth,
            metrics,
        }
    }

    /// Reads up to `ship.batch` events, oldest first.
    fn read_batch(events: &dyn EventRecords, max: usize) -> Result<Batch, ShipError> {
        let mut keys = Vec::new();
        let mut values: Vec<Vec<u8>> = Vec::new();
        events.scan(&mut |k, v| {
            keys.push(k.to_vec());
            values.push(v.to_vec());
            keys.len() < max
        })?;
        let oldest_ts = values
            .first()
            .and_then(|v| rmp_serde::from_slice::<UsageEvent>(v).ok())
            .map(|e| e.ts);
        let mut body = Vec::with_capacity(values.iter().map(Vec::len).sum::<usize>() + 5);
        rmp::encode::write_array_len(&mut body, values.len() as u32)
            .map_err(|e| ShipError::Encode(e.to_string()))?;
        for v in &values {
            body.extend_from_slice(v);
        }
        Ok(Batch {
            keys,
            body,
            oldest_ts,
        })
    }

    /// Drops the oldest events past the bound; warns near it. The depth
    /// gauge counts the outbox (sled's own count walks the whole tree).
    async fn bound(&self, last_warn: &mut Option<std::time::Instant>) -> Result<(), ShipError> {
        let len = usize::try_from(self.depth.get()).unwrap_or(0);
        let max = self.link.ship.max_outbox_events;
        if len * 5 >= max * 4 && last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last_warn = Some(std::time::Instant::now());
            tracing::warn!(
                events = len,
                max,
                "the usage outbox is near its bound: is the control endpoint reachable?"
            );
        }
        if len <= max {
            return Ok(());
        }
        let excess = len - max;
        let events = self.events.clone();
        let doomed = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, ShipError> {
            let mut doomed = Vec::with_capacity(excess);
            events.scan(&mut |k, _| {
                doomed.push(k.to_vec());
                doomed.len() < excess
            })?;
            events.remove_all(&doomed)?;
            Ok(doomed)
        })
        .await??;
        self.depth.sub(doomed.len() as i64);
        self.metrics.dropped.inc_by(doomed.len() as u64);
        tracing::error!(
            dropped = doomed.len(),
            max,
            "usage outbox full: dropped its oldest events unshipped"
        );
        Ok(())
    }

    /// Ships one batch; returns how many events it held.
    async fn ship_once(&self, client: &reqwest::Client) -> Result<usize, ShipError> {
        let events = self.events.clone();
        let max = self.link.ship.batch;
        let batch = tokio::task::spawn_blocking(move || Shipper::read_batch(events.as_ref(), max))
            .await??;
        let lag = batch
            .oldest_ts
            .map_or(0.0, |ts| (now_us() - ts).max(0) as f64 / 1e6);
        self.metrics.lag_seconds.set(lag);
        if batch.keys.is_empty() {
            return Ok(0);
        }
        let resp = client
            .post(format!("{}/api/v1/ingest", self.link.url))
            .bearer_auth(self.link.credential.expose())
            .header("content-type", "application/msgpack")
            .body(batch.body)
            .send()
            .await
            .map_err(|e| ShipError::Send(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(ShipError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let n = batch.keys.len();
        // The control endpoint keeps only the accounts this sidecar's
        // credential serves; the rest are acknowledged as refused.
        let ack: serde_json::Value = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if let Some(refused) = ack["refused"].as_u64().filter(|r| *r > 0) {
            self.metrics.refused.inc_by(refused);
            tracing::warn!(
                refused,
                "the control endpoint refused usage events of accounts this sidecar's credential does not serve"
            );
        }
        let events = self.events.clone();
        let keys = batch.keys;
        tokio::task::spawn_blocking(move || -> Result<(), ShipError> {
            Ok(events.remove_all(&keys)?)
        })
        .await??;
        self.depth.sub(n as i64);
        self.metrics.shipped.inc_by(n as u64);
        Ok(n)
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Shipper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "usage shipping is off: no HTTP client");
                return;
            }
        };
        tracing::info!(control = %self.link.url, "shipping usage to the control endpoint");
        let ship = &self.link.ship;
        let mut wait = Duration::ZERO;
        let mut backoff = ship.interval;
        let mut last_warn = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.bound(&mut last_warn).await {
                tracing::warn!(error = %e, "checking the outbox bound failed");
            }
            match self.ship_once(&client).await {
                // A full batch: there is a backlog, go on at once.
                Ok(n) if n >= ship.batch => {
                    backoff = ship.interval;
                    wait = Duration::ZERO;
                }
                Ok(_) => {
                    backoff = ship.interval;
                    wait = ship.interval;
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "shipping usage failed");
                    wait = backoff.mul_f64(jitter());
                    backoff = (backoff * 2).min(ship.max_backoff);
                }
            }
        }
    }
}
