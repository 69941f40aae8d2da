//! Batch: the stage that makes a provider batch (Anthropic Message Batches)
//! cost what it costs. At create, every item's worst case is reserved at
//! the batch price against every budget that applies (all or nothing,
//! before anything is sent) and the batch is recorded in the sidecar's
//! store ([`crate::store::BatchRecords`]); once the provider says it has
//! ended, its results are read once, line by line, and each item becomes
//! one usage event (route `batch`) while the reservation settles to what
//! the items really cost. The rules (record, settlement arithmetic, event
//! ids) are in [`crate::batch`]; the wire format in
//! [`crate::dialect::anthropic::batch`].
//!
//! # Durability and exactly-once
//!
//! - **Submit.** The record is stored (durably) in state `Submitting`
//!   *before* the create is sent. The provider's answer renames it to its
//!   batch id (`Open`) in one atomic store write, or removes it (a refusal:
//!   the reservation is released). A crash or cut in between leaves a
//!   `Submitting` record: the sidecar cannot know whether the provider took
//!   the batch, so it is charged its whole worst case (one `interrupted`
//!   event), as an interrupted request is. Spend is never under-counted.
//! - **Restart.** Every record still `Submitting`, `Open` or `Settling`
//!   holds its reservation again at start-up ([`Batches::resume`]), so an
//!   open batch keeps counting against its budgets across restarts.
//! - **Settle.** The results are read into the record (`Settling`, with
//!   the settlement time) and stored; then the item events (ids derived
//!   from provider, batch id and `custom_id`; time = settlement time) are
//!   journaled and waited for; then the record is marked `Settled`. A
//!   crash anywhere in between settles again from the stored record: events
//!   already in the local ledger (every journaled event is, after recovery)
//!   are skipped, so nothing is recorded or charged twice. The control
//!   endpoint stores an event once per (account, time, id), and these are
//!   the same on every attempt. (With a control endpoint, an event shipped
//!   and deleted from the local outbox in the milliseconds between its
//!   journal commit and the settled marker is recorded again after such a
//!   crash: the control ledger still stores it once; the local budget
//!   counts it twice, an over-count, never an under-count.)
//!
//! Settlement runs on one task ([`BatchService`]): on its poll interval,
//! and as soon as a client's retrieve (or list) shows a tracked batch
//! ended.

pub mod openai;
mod settle;

pub use settle::{refresh, BatchService, SETTLEMENT_AGENT};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::error::ProxyError;
use super::ingress::{Endpoint, Route};
use super::recorder::Recorder;
use super::State;
use crate::batch::{BatchItem, BatchRecord, BatchState};
use crate::budget::estimate::estimate;
use crate::budget::{Decision, Ledger, Reservation};
use crate::config::BatchesConfig;
use crate::dialect::anthropic::batch as wire;
use crate::dialect::{request, Dialect};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::store::outbox::OutboxError;
use crate::store::{BatchRecords, StoreError};

/// What went wrong tracking or settling a batch (logged; the batch is
/// tried again on the next poll).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("decoding a batch record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("encoding a batch record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the batch store task failed: {0}")]
    Task(String),
    #[error("calling the provider: {0}")]
    Upstream(String),
    #[error("the provider answered {status} to {what}")]
    Status { status: u16, what: &'static str },
    #[error("reading the results: {0}")]
    Results(String),
    #[error("no provider named {0:?} is configured")]
    NoProvider(String),
    #[error(transparent)]
    Journal(#[from] OutboxError),
}

/// The batches this sidecar tracks, and their reservations.
pub struct Batches {
    store: Arc<dyn BatchRecords>,
    ledger: Arc<Ledger>,
    recorder: Arc<Recorder>,
    /// Record key → what it holds (`None`: no budget applied), for every
    /// batch accepted and not yet settled.
    tracked: Mutex<HashMap<String, Option<Reservation>>>,
    /// Uploaded OpenAI batch input files, priced (`None`: not kept; a
    /// create then reads the file from the provider).
    inputs: Option<Arc<dyn BatchRecords>>,
    wake: mpsc::UnboundedSender<String>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Counts the batches settled since the start (readers waiting for one
    /// to settle watch it: the gateway surface's status read).
    settled: watch::Sender<u64>,
    pub config: BatchesConfig,
    metrics: Metrics,
    sidecar_id: String,
}

impl Batches {
    /// The batches kept in `store`; call [`Batches::resume`] before traffic.
    pub fn new(
        config: BatchesConfig,
        sidecar_id: String,
        store: Arc<dyn BatchRecords>,
        ledger: Arc<Ledger>,
        recorder: Arc<Recorder>,
        metrics: Metrics,
    ) -> Batches {
        let (wake, woken) = mpsc::unbounded_channel();
        Batches {
            store,
            ledger,
            recorder,
            tracked: Mutex::new(HashMap::new()),
            inputs: None,
            wake,
            woken: Mutex::new(Some(woken)),
            settled: watch::channel(0).0,
            config,
            metrics,
            sidecar_id,
        }
    }

    /// Keeps uploaded OpenAI batch input files in `store` (see [`openai`]).
    pub fn with_inputs(mut self, store: Arc<dyn BatchRecords>) -> Batches {
        self.inputs = Some(store);
        self
    }

    /// At start-up, before traffic: every batch not yet settled holds its
    /// reservation again; those left mid-submit or mid-settlement are
    /// queued for [`BatchService`]. Returns how many are tracked.
    pub fn resume(&self) -> Result<usize, BatchError> {
        let mut records = Vec::new();
        self.store.scan(&mut |key, bytes| {
            match rmp_serde::from_slice::<BatchRecord>(bytes) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::error!(batch = %key, error = %e, "unreadable batch record; skipped")
                }
            }
            true
        })?;
        let mut n = 0;
        for r in records.into_iter().filter(|r| r.state.holds()) {
            let held = (!r.reserved.is_empty()).then(|| self.ledger.hold(&r.reserved));
            let key = r.key();
            self.track(key.clone(), held);
            if r.state != BatchState::Open {
                self.wake(key);
            }
            n += 1;
        }
        Ok(n)
    }

    /// An answer holding batch objects passed through (retrieve, list,
    /// cancel): a tracked batch shown ended is settled now.
    pub fn observe(&self, provider: &str, body: &[u8]) {
        for status in wire::batch_statuses(body) {
            let key = crate::batch::key(provider, &status.id);
            if status.ended && self.lock().contains_key(&key) {
                self.wake(key);
            }
        }
    }

    /// The record of `provider`'s batch `id`, if this sidecar tracked it.
    pub async fn record(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<Option<BatchRecord>, BatchError> {
        self.load(&crate::batch::key(provider, id)).await
    }

    /// Changes whenever a batch has been settled (its record marked
    /// `Settled`).
    pub fn settlements(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<Reservation>>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, key: String) {
        // Only fails once the service is gone (shutdown): the next start resumes.
        let _ = self.wake.send(key);
    }

    fn track(&self, key: String, held: Option<Reservation>) {
        self.lock().insert(key, held);
        self.update_gauge();
    }

    fn untrack(&self, key: &str) -> Option<Reservation> {
        let held = self.lock().remove(key).flatten();
        self.update_gauge();
        held
    }

    fn update_gauge(&self) {
        let held: u64 = self
            .lock()
            .values()
            .flatten()
            .fold(0u64, |a, r| a.saturating_add(r.amount));
        self.metrics.batch_reserved_usd.set(held as f64 / 1e9);
    }

    fn count(&self, outcome: &str) {
        self.metrics.batches.with_label_values(&[outcome]).inc();
    }

    async fn put(&self, record: &BatchRecord, replaces: Option<String>) -> Result<(), BatchError> {
        put_in(self.store.clone(), record.key(), record, replaces).await
    }

    async fn remove(&self, key: String) -> Result<(), BatchError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove(&key))
            .await
            .map_err(|e| BatchError::Task(e.to_string()))??;
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<BatchRecord>, BatchError> {
        load_from(self.store.clone(), key.to_string()).await
    }

    /// Deletes the settled records and the priced input file copies older
    /// than `batches.retention` at `now_us`; returns how many of each.
    pub async fn prune(&self, now_us: i64) -> Result<(usize, usize), BatchError> {
        let retention = i64::try_from(self.config.retention.as_micros()).unwrap_or(i64::MAX);
        let records = prune_in(self.store.clone(), move |bytes| {
            rmp_serde::from_slice::<BatchRecord>(bytes).is_ok_and(|r| r.expired(now_us, retention))
        })
        .await?;
        let inputs = match self.inputs.clone() {
            Some(store) => {
                prune_in(store, move |bytes| {
                    rmp_serde::from_slice::<crate::batch::UploadedInput>(bytes)
                        .is_ok_and(|i| i.expired(now_us, retention))
                })
                .await?
            }
            None => 0,
        };
        if records + inputs > 0 {
            tracing::info!(
                records,
                inputs,
                "pruned batch records and input file copies past batches.retention"
            );
        }
        Ok((records, inputs))
    }

    /// The keys of the tracked batches.
    fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A submit whose outcome is unknown: its whole worst case is spent.
    async fn interrupt(&self, mut record: BatchRecord) -> Result<(), BatchError> {
        let key = record.key();
        let event = record.interrupted_event(&self.sidecar_id);
        let fresh = !self.recorder.outbox().contains(&event.event_id, event.ts)?;
        let spent = if fresh { record.reserved_nusd } else { 0 };
        match self.untrack(&key) {
            Some(held) => self.ledger.settle(held, spent),
            None if fresh => self.ledger.charge(&event.charges),
            None => {}
        }
        if fresh {
            tracing::warn!(batch = %record.local_id, provider = %record.provider, "a batch create's outcome is unknown (a crash or a cut while the provider had it): charged its worst case");
            let charges = event.charges.clone();
            self.recorder
                .record_committed(vec![(event, charges)])
                .await?;
            self.count("interrupted");
        }
        record.state = BatchState::Settled;
        record.settled_ts = Some(now_us());
        self.put(&record, None).await?;
        self.settled.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Records the events of a `Settling` record not yet in the ledger,
    /// settles its reservation and marks it `Settled`.
    async fn finish(&self, mut record: BatchRecord) -> Result<(), BatchError> {
        let key = record.key();
        let outbox = self.recorder.outbox();
        let mut fresh = Vec::new();
        let mut spent = 0u64;
        for e in record.events(&self.sidecar_id) {
            if outbox.contains(&e.event_id, e.ts)? {
                continue;
            }
            spent = spent.saturating_add(e.cost_nusd);
            let charges = e.charges.clone();
            fresh.push((e, charges));
        }
        // Settled before the events are journaled (the journal's watermark
        // counts on it, as for every request).
        if let Some(held) = self.untrack(&key) {
            self.ledger.settle(held, spent);
        }
        let recorded = fresh.len();
        self.recorder.record_committed(fresh).await?;
        for r in &record.results {
            self.metrics
                .batch_items
                .with_label_values(&[r.outcome.as_str()])
                .inc();
        }
        record.state = BatchState::Settled;
        self.put(&record, None).await?;
        self.settled.send_modify(|n| *n += 1);
        self.count("settled");
        tracing::info!(batch = %key, items = record.results.len(), recorded, cost_nusd = record.spent_nusd(), reserved_nusd = record.reserved_nusd, "batch settled");
        Ok(())
    }
}

/// Removes every record of `store` that `expired` says can go, off the
/// async threads; returns how many.
async fn prune_in(
    store: Arc<dyn BatchRecords>,
    expired: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Result<usize, BatchError> {
    tokio::task::spawn_blocking(move || {
        let mut doomed = Vec::new();
        store.scan(&mut |key, bytes| {
            if expired(bytes) {
                doomed.push(key.to_string());
            }
            true
        })?;
        for key in &doomed {
            store.remove(key)?;
        }
        Ok::<_, StoreError>(doomed.len())
    })
    .await
    .map_err(|e| BatchError::Task(e.to_string()))?
    .map_err(BatchError::from)
}

/// Stores `record` (MessagePack) under `key` in `store`, off the async
/// threads; durable on return.
async fn put_in<T: serde::Serialize>(
    store: Arc<dyn BatchRecords>,
    key: String,
    record: &T,
    replaces: Option<String>,
) -> Result<(), BatchError> {
    let bytes = rmp_serde::to_vec_named(record)?;
    tokio::task::spawn_blocking(move || store.put(&key, &bytes, replaces.as_deref()))
        .await
        .map_err(|e| BatchError::Task(e.to_string()))??;
    Ok(())
}

/// The record under `key` in `store`, read off the async threads.
async fn load_from<T: serde::de::DeserializeOwned>(
    store: Arc<dyn BatchRecords>,
    key: String,
) -> Result<Option<T>, BatchError> {
    let bytes = tokio::task::spawn_blocking(move || store.get(&key))
        .await
        .map_err(|e| BatchError::Task(e.to_string()))??;
    Ok(match bytes {
        Some(b) => Some(rmp_serde::from_slice(&b)?),
        None => None,
    })
}

/// Whether the request creates a batch: an Anthropic Message Batch
/// (`POST …/v1/messages/batches`) or an OpenAI batch (`POST …/v1/batches`).
pub fn is_create(route: &Route, method: &http::Method) -> bool {
    if route.dialect() == Dialect::OpenAi {
        return openai::is_create(route, method);
    }
    let path = route
        .upstream_path
        .split_once('?')
        .map_or(route.upstream_path.as_str(), |(p, _)| p);
    *method == http::Method::POST
        && route.dialect() == Dialect::Anthropic
        && route.endpoint == Endpoint::Passthrough
        && wire::is_collection(path)
}

/// The batch price of a worst case: `nusd` × the model's batch multiplier
/// (parts per million), rounded up.
fn at_batch_price(nusd: u64, ppm: u32) -> u64 {
    let scaled = u128::from(nusd) * u128::from(ppm);
    u64::try_from(scaled.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

pub(super) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Reserves a batch create: parses every item once, prices its worst case
/// at the batch price, reserves the sum against every budget that applies
/// (402 naming the budget when it does not fit) and stores the record
/// before anything is sent.
pub async fn reserve(
    state: &State,
    id: &Identity,
    route: &Route,
    body: &Bytes,
) -> Result<Pending, ProxyError> {
    if route.dialect() == Dialect::OpenAi {
        return openai::reserve(state, id, route, body).await;
    }
    let items = wire::parse_create(body).map_err(|e| match e {
        wire::BatchError::BadJson(m) => ProxyError::BadJson(m),
        other => ProxyError::InvalidRequest(other.to_string()),
    })?;
    let prices = state.recorder.prices();
    let mut reserved_items = Vec::with_capacity(items.len());
    for item in &items {
        let head = request::parse_head(item.params).map_err(|e| match e {
            request::RequestError::BadJson(m) => {
                ProxyError::BadJson(format!("the params of {:?}: {m}", item.custom_id))
            }
            request::RequestError::Encode(m) => ProxyError::Internal(m),
        })?;
        let max_tokens = head.max_tokens.unwrap_or(state.budget_default_max_tokens);
        reserved_items.push(price_item(
            prices,
            item.custom_id.clone(),
            head.model,
            item.params,
            max_tokens,
            1,
        ));
    }
    hold_and_record(state, id, route, reserved_items, None).await
}

/// One item's worst case at the model's batch price, as a direct call with
/// the same body would be estimated.
fn price_item(
    prices: &crate::meter::prices::PriceTable,
    custom_id: String,
    model: String,
    body: &[u8],
    max_tokens: u64,
    choices: u64,
) -> BatchItem {
    let est = estimate(prices, &model, body, max_tokens, choices);
    let (price, _) = prices.price_or_fallback(&model);
    BatchItem {
        custom_id,
        reserved_nusd: at_batch_price(est.worst_nusd, price.batch_multiplier_ppm),
        model,
    }
}

/// Reserves the sum of `items`' worst cases against every budget that
/// applies (402 naming the budget when it does not fit) and stores the
/// batch's record (`Submitting`) before anything is sent. `endpoint`: an
/// OpenAI batch's endpoint (`None`: Anthropic).
async fn hold_and_record(
    state: &State,
    id: &Identity,
    route: &Route,
    items: Vec<BatchItem>,
    endpoint: Option<String>,
) -> Result<Pending, ProxyError> {
    let (total, largest) = items.iter().fold((0u64, 0u64), |(t, l), i| {
        (t.saturating_add(i.reserved_nusd), l.max(i.reserved_nusd))
    });
    let held = decide(state, id, total, largest).await?;
    let reserved = held
        .as_ref()
        .map(|r| state.ledger.charges(r, None))
        .unwrap_or_default();
    let record = BatchRecord {
        local_id: format!("tgb_{}", uuid::Uuid::now_v7().simple()),
        provider: route.provider.name.clone(),
        batch_id: None,
        account: id.account.clone(),
        workload: id.workload.clone(),
        tags: id.tags.clone(),
        created_ts: now_us(),
        items,
        reserved_nusd: total,
        reserved,
        state: BatchState::Submitting,
        settled_ts: None,
        results: Vec::new(),
        endpoint,
    };
    let batches = state.batches.clone();
    // Durable before the first byte leaves: from here on a crash charges
    // the batch its worst case at the next start.
    if let Err(e) = batches.put(&record, None).await {
        if let Some(held) = held {
            state.ledger.settle(held, 0);
        }
        return Err(ProxyError::Internal(format!("recording the batch: {e}")));
    }
    Ok(Pending {
        batches,
        inner: Some((record, held)),
    })
}

/// The ledger's answer for a batch; a short lease gets one renewal's wait.
async fn decide(
    state: &State,
    id: &Identity,
    total: u64,
    largest: u64,
) -> Result<Option<Reservation>, ProxyError> {
    let ledger = &state.ledger;
    if ledger.is_empty() {
        return Ok(None);
    }
    let mut changed = state.leases.subscribe();
    changed.borrow_and_update();
    let mut decision = ledger.reserve_batch(id, total, largest, true);
    if matches!(decision, Decision::AwaitLease) {
        let _ = tokio::time::timeout(state.leases.wait, changed.changed()).await;
        decision = ledger.reserve_batch(id, total, largest, false);
    }
    match decision {
        Decision::Admit(r) => Ok((!r.is_empty()).then_some(r)),
        Decision::Deny(denied) => {
            state
                .metrics
                .budget_denials
                .with_label_values(&[&denied.budget, "denied"])
                .inc();
            state.batches.count("denied");
            Err(ProxyError::BudgetExceeded(denied))
        }
        // Neither is answered for a batch (no output to clamp; no waiting).
        Decision::Clamp(r, _, _) => {
            ledger.settle(r, 0);
            Err(ProxyError::Internal("a batch cannot be clamped".into()))
        }
        Decision::AwaitLease => Err(ProxyError::Internal("lease wait".into())),
    }
}

/// A batch create on its way to the provider: its record is stored and its
/// reservation held until the answer says what became of it.
pub struct Pending {
    batches: Arc<Batches>,
    /// `None` once concluded.
    inner: Option<(BatchRecord, Option<Reservation>)>,
}

impl Pending {
    /// The provider's answer to the create: an accepted batch is tracked
    /// under its id (before the client sees the answer, so its next
    /// retrieve finds it); a refusal releases everything.
    pub async fn conclude(mut self, status: u16, body: &[u8]) {
        let Some((mut record, held)) = self.inner.take() else {
            return;
        };
        let b = &self.batches;
        let ok = (200..300).contains(&status);
        let accepted = match &record.endpoint {
            _ if !ok => None,
            Some(_) => openai::created_id(body),
            None => match wire::batch_statuses(body).as_slice() {
                [one] => Some(one.id.clone()),
                _ => None,
            },
        };
        if let Some(id) = accepted {
            let old = record.key();
            record.batch_id = Some(id);
            record.state = BatchState::Open;
            let key = record.key();
            if let Err(e) = b.put(&record, Some(old)).await {
                // Still `Submitting` in the store: the next start charges
                // its worst case. Until then it is settled as usual.
                tracing::error!(batch = %key, error = %e, "batch accepted but its record could not be updated");
            }
            b.track(key, held);
            b.count("created");
            return;
        }
        let key = record.key();
        if ok {
            // Accepted, but not a batch tollgate can read: its outcome is unknown.
            b.track(key.clone(), held);
            b.wake(key);
            return;
        }
        if let Some(held) = held {
            b.ledger.settle(held, 0);
        }
        if let Err(e) = b.remove(key.clone()).await {
            tracing::warn!(batch = %key, error = %e, "removing a refused batch's record failed; it is charged at the next start");
        }
        b.count("refused");
    }

    /// The create never reached the provider: release everything.
    pub async fn release(mut self) {
        let Some((record, held)) = self.inner.take() else {
            return;
        };
        if let Some(held) = held {
            self.batches.ledger.settle(held, 0);
        }
        let key = record.key();
        if let Err(e) = self.batches.remove(key.clone()).await {
            tracing::warn!(batch = %key, error = %e, "removing an unsent batch's record failed; it is charged at the next start");
        }
    }
}

impl Drop for Pending {
    /// Dropped without an answer (a cut, a timeout, a shutdown): the
    /// provider may have the batch. Its worst case is charged by the
    /// settlement task.
    fn drop(&mut self) {
        if let Some((record, held)) = self.inner.take() {
            let key = record.key();
            self.batches.track(key.clone(), held);
            self.batches.wake(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::{ItemOutcome, ItemResult};
    use crate::budget::alerts::AlertSink;
    use crate::budget::{Budget, OnInsufficient, Period, SystemClock};
    use crate::dialect::Usage;
    use crate::meter::prices::PriceTable;
    use crate::store::outbox::{Outbox, OutboxOptions};

    /// A sidecar's batch engine on the stores in `dir` (as after a start).
    fn engine(dir: &std::path::Path) -> (Arc<Batches>, Arc<Ledger>, Outbox) {
        let db = sled::open(dir.join("db")).unwrap();
        let metrics = Metrics::new().unwrap();
        let ledger = Arc::new(Ledger::new(
            vec![Budget {
                name: "month".into(),
                scope: crate::scope::Scope::All,
                period: Period::Month,
                limit_nusd: 1_000_000_000,
                soft_thresholds: vec![],
                alert_webhook: None,
                on_insufficient: OnInsufficient::Deny,
                lease: None,
                retired: false,
            }],
            Some(Arc::new(crate::store::sled::SpendTree::open(&db).unwrap())),
            Arc::new(SystemClock),
            AlertSink::default(),
            Default::default(),
        ));
        let (outbox, _) = Outbox::open(
            Arc::new(crate::store::sled::EventTree::open(&db).unwrap()),
            &dir.join("journal"),
            OutboxOptions {
                retention: std::time::Duration::from_secs(3600),
                sync: true,
            },
            metrics.outbox.clone(),
            Some(ledger.clone()),
        )
        .unwrap();
        let recorder = Arc::new(Recorder::new(
            PriceTable::builtin(),
            outbox.clone(),
            metrics.clone(),
        ));
        let batches = Arc::new(Batches::new(
            BatchesConfig::default(),
            "sc".into(),
            Arc::new(crate::store::sled::BatchTree::open(&db).unwrap()),
            ledger.clone(),
            recorder,
            metrics,
        ));
        (batches, ledger, outbox)
    }

    fn settling(reserved: Vec<crate::meter::event::Charge>) -> BatchRecord {
        let result = |id: &str, outcome, cost| ItemResult {
            custom_id: id.into(),
            model: "claude-haiku-4-5".into(),
            outcome,
            usage: Usage {
                input_tokens: cost,
                ..Usage::default()
            },
            cost_nusd: cost,
            priced: true,
            error: None,
            message_id: None,
        };
        BatchRecord {
            local_id: "tgb_1".into(),
            provider: "anthropic".into(),
            batch_id: Some("msgbatch_1".into()),
            account: "acme".into(),
            workload: String::new(),
            tags: Vec::new(),
            created_ts: now_us(),
            items: Vec::new(),
            reserved_nusd: 10_000,
            reserved,
            state: BatchState::Settling,
            settled_ts: Some(now_us()),
            results: vec![
                result("a", ItemOutcome::Succeeded, 700),
                result("b", ItemOutcome::Errored, 0),
            ],
            endpoint: None,
        }
    }

    /// A crash after a settlement's events were journaled but before the
    /// record was marked settled: the next start settles it again, and
    /// neither an event nor its spend is counted twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settling_again_after_a_crash_records_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity {
            account: "acme".into(),
            ..Identity::default()
        };
        let record = {
            let (b, ledger, outbox) = engine(dir.path());
            let held = match ledger.reserve_batch(&id, 10_000, 10_000, false) {
                Decision::Admit(r) => r,
                other => panic!("{other:?}"),
            };
            let record = settling(ledger.charges(&held, None));
            b.put(&record, None).await.unwrap();
            b.track(record.key(), Some(held));
            b.finish(record.clone()).await.unwrap();
            assert_eq!(ledger.status()[0].spent_nusd, 700);
            assert_eq!(ledger.status()[0].reserved_nusd, 0);
            // The crash: the record is still `Settling` on disk.
            b.put(&record, None).await.unwrap();
            outbox.close();
            record
        };
        let (b, ledger, outbox) = engine(dir.path());
        assert_eq!(b.resume().unwrap(), 1);
        // Held again until settled.
        assert_eq!(ledger.status()[0].reserved_nusd, 10_000);
        let again = b.load(&record.key()).await.unwrap().unwrap();
        assert_eq!(again.state, BatchState::Settling);
        b.finish(again).await.unwrap();
        assert_eq!(ledger.status()[0].spent_nusd, 700, "spent once");
        assert_eq!(ledger.status()[0].reserved_nusd, 0);
        assert_eq!(
            b.load(&record.key()).await.unwrap().unwrap().state,
            BatchState::Settled
        );
        outbox.close();
        let events = outbox.latest(100).unwrap();
        assert_eq!(events.len(), 2, "one event per item: {events:?}");
    }

    /// Settled records and input copies past `batches.retention` go at a
    /// poll; open and settling records, and recent ones, stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_deletes_only_what_is_settled_or_uploaded_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _ledger, outbox) = engine(dir.path());
        let db = sled::open(dir.path().join("inputs")).unwrap();
        let inputs = Arc::new(crate::store::sled::BatchTree::open_inputs(&db).unwrap());
        let b = Arc::try_unwrap(b).ok().unwrap().with_inputs(inputs.clone());
        let day = 86_400_000_000_i64;
        let now = now_us();
        let record = |id: &str, state, settled_days_ago: Option<i64>| BatchRecord {
            batch_id: Some(id.into()),
            state,
            created_ts: now - 60 * day,
            settled_ts: settled_days_ago.map(|d| now - d * day),
            ..settling(Vec::new())
        };
        for r in [
            record("old_settled", BatchState::Settled, Some(31)),
            record("new_settled", BatchState::Settled, Some(29)),
            record("old_open", BatchState::Open, None),
            record("old_settling", BatchState::Settling, Some(31)),
        ] {
            b.put(&r, None).await.unwrap();
        }
        let input = |id: &str, days_ago: i64| crate::batch::UploadedInput {
            provider: "openai".into(),
            file_id: id.into(),
            endpoint: "/v1/chat/completions".into(),
            account: "acme".into(),
            uploaded_ts: now - days_ago * day,
            items: Vec::new(),
        };
        for i in [input("file-old", 31), input("file-new", 1)] {
            let bytes = rmp_serde::to_vec_named(&i).unwrap();
            inputs.put(&i.key(), &bytes, None).unwrap();
        }

        assert_eq!(b.prune(now).await.unwrap(), (1, 1));
        let left = |id: &str| crate::batch::key("anthropic", id);
        assert!(b.load(&left("old_settled")).await.unwrap().is_none());
        for id in ["new_settled", "old_open", "old_settling"] {
            assert!(b.load(&left(id)).await.unwrap().is_some(), "{id}");
        }
        assert!(inputs.get("openai/file-old").unwrap().is_none());
        assert!(inputs.get("openai/file-new").unwrap().is_some());
        // Nothing more to do.
        assert_eq!(b.prune(now).await.unwrap(), (0, 0));
        outbox.close();
    }

    #[test]
    fn the_batch_price_rounds_up() {
        assert_eq!(at_batch_price(1_000, 500_000), 500);
        assert_eq!(at_batch_price(1_001, 500_000), 501);
        assert_eq!(at_batch_price(u64::MAX, 1_000_000), u64::MAX);
        assert_eq!(at_batch_price(7, 0), 0);
    }
}
