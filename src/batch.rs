//! Provider batches as tollgate tracks them: the record kept from submit
//! to settlement, and the settlement arithmetic. Rules only, no I/O: the
//! store keeps records as opaque bytes (`crate::store::BatchRecords`), the
//! proxy's batch stage (`crate::proxy::batch`) reserves, submits, polls and
//! records; the dialect supplies the parsers (`dialect::anthropic::batch`
//! today, OpenAI's Batch API later: the record and its items name no
//! provider's wire format).
//!
//! # Life of a record
//!
//! ```text
//! Submitting ──(provider accepted)──▶ Open ──(batch ended, results read)──▶ Settling ──▶ Settled
//!      │                                                                   (events committed)
//!      └──(provider refused: removed, reservation released)
//!      └──(outcome unknown: crash or cut while submitting) ──▶ Settled, charged its worst case
//! ```
//!
//! Events are one per item (`custom_id`), with ids derived from (provider,
//! batch id, custom id): recording a settlement again after a crash yields
//! the same ids, which the local ledger and the control endpoint's ledger
//! store once.

use serde::{Deserialize, Serialize};

use crate::dialect::anthropic::batch::{Outcome, ResultLine};
use crate::dialect::openai::batch::BatchResult as OpenAiResult;
use crate::dialect::Usage;
use crate::meter::event::{Charge, RouteKind, Status, UsageEvent};
use crate::meter::prices::PriceTable;

/// Where a tracked batch is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Reserved and stored; the create is on its way to the provider.
    Submitting,
    /// The provider accepted it: its reservation is held until it ends.
    Open,
    /// Ended and its results read (kept in the record); its events are
    /// being recorded.
    Settling,
    /// Its events are recorded and its reservation settled.
    Settled,
}

impl BatchState {
    /// The reservation is held (counted against the budgets).
    pub fn holds(self) -> bool {
        matches!(
            self,
            BatchState::Submitting | BatchState::Open | BatchState::Settling
        )
    }
}

/// One request of a batch, as reserved at submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub custom_id: String,
    /// The model the item asked for.
    pub model: String,
    /// Its worst case at the batch price, nano-USD.
    pub reserved_nusd: u64,
}

/// How one item ended, as settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    Succeeded,
    Errored,
    Canceled,
    Expired,
    /// Not in the results file (charged nothing; the event says so).
    Missing,
}

impl ItemOutcome {
    /// The label used in events (`error`) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Succeeded => "succeeded",
            ItemOutcome::Errored => "errored",
            ItemOutcome::Canceled => "canceled",
            ItemOutcome::Expired => "expired",
            ItemOutcome::Missing => "missing",
        }
    }
}

/// One item's settlement: what it used and cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    pub custom_id: String,
    /// The model that answered (else the one asked for).
    pub model: String,
    pub outcome: ItemOutcome,
    pub usage: Usage,
    /// At the model's batch price; 0 unless it succeeded.
    pub cost_nusd: u64,
    /// False when the model was priced by the fallback row.
    pub priced: bool,
    /// The provider's error type of an errored item.
    pub error: Option<String>,
    /// The provider's message id (`msg_…`) of a succeeded item.
    pub message_id: Option<String>,
}

/// A batch tollgate reserved for, from submit to settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// tollgate's own id of the batch (`tgb_<uuid>`), known before the
    /// provider names it.
    pub local_id: String,
    /// The configured provider's name.
    pub provider: String,
    /// The provider's id (`msgbatch_…`), once it accepted the batch.
    pub batch_id: Option<String>,
    pub account: String,
    pub workload: String,
    pub tags: Vec<(String, String)>,
    /// Submit time, microseconds since the epoch.
    pub created_ts: i64,
    pub items: Vec<BatchItem>,
    /// The sum of the items' worst cases, nano-USD.
    pub reserved_nusd: u64,
    /// What is held per budget period (each `nusd` = `reserved_nusd`).
    pub reserved: Vec<Charge>,
    pub state: BatchState,
    /// When it was settled (the events' time), microseconds.
    pub settled_ts: Option<i64>,
    /// Per item, once read (state `Settling` and after).
    pub results: Vec<ItemResult>,
    /// The endpoint every item calls, for an OpenAI batch
    /// (`/v1/chat/completions`, `/v1/responses`, `/v1/embeddings`); `None`
    /// for an Anthropic Message Batch (always `/v1/messages`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl BatchRecord {
    /// Whether the record can go at `now_us`: settled (its events are in
    /// the ledger) more than `retention_us` ago.
    pub fn expired(&self, now_us: i64, retention_us: i64) -> bool {
        self.state == BatchState::Settled
            && self
                .settled_ts
                .unwrap_or(self.created_ts)
                .saturating_add(retention_us)
                < now_us
    }

    /// The store key of a record: `provider/batch id` once accepted,
    /// `provider/local id` before.
    pub fn key(&self) -> String {
        key(
            &self.provider,
            self.batch_id.as_deref().unwrap_or(&self.local_id),
        )
    }

    /// What its items cost in all, once settled.
    pub fn spent_nusd(&self) -> u64 {
        self.results
            .iter()
            .fold(0u64, |a, r| a.saturating_add(r.cost_nusd))
    }

    /// The usage event of each item (settled records only), with
    /// deterministic ids and time: recording them again yields the same
    /// events.
    pub fn events(&self, sidecar_id: &str) -> Vec<UsageEvent> {
        let batch_id = self.batch_id.as_deref().unwrap_or(&self.local_id);
        let ts = self.settled_ts.unwrap_or(self.created_ts);
        self.results
            .iter()
            .map(|r| {
                let mut e = self.event(
                    sidecar_id,
                    ts,
                    item_event_id(&self.provider, batch_id, &r.custom_id, ts),
                );
                e.model.clone_from(&r.model);
                e.usage = r.usage;
                e.cost_nusd = r.cost_nusd;
                e.priced = r.priced;
                e.upstream_request_id.clone_from(&r.message_id);
                e.batch = Some(Box::new(crate::meter::event::BatchRef {
                    batch_id: batch_id.to_string(),
                    custom_id: r.custom_id.clone(),
                }));
                match r.outcome {
                    ItemOutcome::Succeeded => {}
                    ItemOutcome::Errored => {
                        e.status = Status::ProviderError;
                        e.error = Some(r.error.clone().unwrap_or_else(|| "errored".into()));
                    }
                    o @ (ItemOutcome::Canceled | ItemOutcome::Expired) => {
                        e.error = Some(o.as_str().to_string());
                    }
                    ItemOutcome::Missing => {
                        e.error = Some("missing_from_results".into());
                        e.usage_incomplete = true;
                    }
                }
                e.charges = charges(&self.reserved, r.cost_nusd);
                e
            })
            .collect()
    }

    /// The one event of a batch whose submit ended unknown (a crash or a
    /// cut while the provider had it): charged its whole worst case, as an
    /// interrupted request is.
    pub fn interrupted_event(&self, sidecar_id: &str) -> UsageEvent {
        let id = item_event_id(&self.provider, &self.local_id, "", self.created_ts);
        let mut e = self.event(sidecar_id, self.created_ts, id);
        e.status = Status::Interrupted;
        e.usage_incomplete = true;
        e.cost_nusd = self.reserved_nusd;
        e.error = Some("batch_submit_interrupted".into());
        e.charges = self.reserved.clone();
        e
    }

    fn event(&self, sidecar_id: &str, ts: i64, event_id: String) -> UsageEvent {
        UsageEvent {
            event_id,
            ts,
            sidecar_id: sidecar_id.to_string(),
            account: self.account.clone(),
            workload: self.workload.clone(),
            tags: self.tags.clone(),
            provider: self.provider.clone(),
            route: RouteKind::Batch,
            http_status: 200,
            priced: true,
            ..UsageEvent::default()
        }
    }
}

/// A batch input file uploaded through this sidecar (OpenAI's Files API,
/// `purpose=batch`): its items priced when it was read, kept (across runs
/// of the sidecar) for `batches.retention` after the upload, for the
/// batches created over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedInput {
    /// The configured provider's name.
    pub provider: String,
    /// The provider's file id (`file-…`).
    pub file_id: String,
    /// The endpoint every line calls (`/v1/chat/completions`, …).
    pub endpoint: String,
    /// Who uploaded it (the batch is charged to whoever creates it).
    pub account: String,
    /// Upload time, microseconds since the epoch.
    pub uploaded_ts: i64,
    /// Each item's worst case at the batch price, in file order.
    pub items: Vec<BatchItem>,
}

impl UploadedInput {
    /// Whether the priced copy can go at `now_us`: uploaded more than
    /// `retention_us` ago (a create over the file reads it again).
    pub fn expired(&self, now_us: i64, retention_us: i64) -> bool {
        self.uploaded_ts.saturating_add(retention_us) < now_us
    }

    /// Its store key: `provider/file id`.
    pub fn key(&self) -> String {
        key(&self.provider, &self.file_id)
    }

    /// The sum of its items' worst cases, nano-USD.
    pub fn reserved_nusd(&self) -> u64 {
        self.items
            .iter()
            .fold(0u64, |a, i| a.saturating_add(i.reserved_nusd))
    }
}

/// The store key of a batch: `provider/id`.
pub fn key(provider: &str, id: &str) -> String {
    format!("{provider}/{id}")
}

/// `reserved`'s budget periods, each charged `nusd` (none when 0).
pub fn charges(reserved: &[Charge], nusd: u64) -> Vec<Charge> {
    if nusd == 0 {
        return Vec::new();
    }
    reserved
        .iter()
        .map(|c| Charge {
            budget: c.budget.clone(),
            period: c.period.clone(),
            nusd,
        })
        .collect()
}

/// The event id of an item: a UUID with version 7's layout (so it sorts
/// by `ts` like every other event id) whose other bits are a hash of
/// (provider, batch id, custom id). Same inputs, same id: on every
/// sidecar, after every restart.
pub fn item_event_id(provider: &str, batch_id: &str, custom_id: &str, ts_us: i64) -> String {
    let mut h = blake3::Hasher::new();
    for part in [provider, batch_id, custom_id] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let hash = h.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&hash.as_bytes()[..10]);
    let millis = u64::try_from(ts_us / 1000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// Reads a batch's results into per-item settlements, one line at a time.
pub struct Settlement<'a> {
    record: &'a BatchRecord,
    prices: &'a PriceTable,
    /// custom id → position in `record.items`.
    index: std::collections::HashMap<&'a str, usize>,
    results: Vec<Option<ItemResult>>,
    /// Lines naming an id the batch does not have, or seen twice.
    pub strays: usize,
}

impl<'a> Settlement<'a> {
    /// Starts settling `record` with `prices` (in force at its submit).
    pub fn new(record: &'a BatchRecord, prices: &'a PriceTable) -> Settlement<'a> {
        let index = record
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.custom_id.as_str(), i))
            .collect();
        Settlement {
            record,
            prices,
            index,
            results: vec![None; record.items.len()],
            strays: 0,
        }
    }

    /// Takes one results line: a succeeded item at its tokens × its
    /// model's batch price (cache writes and reads included), any other
    /// outcome at 0.
    pub fn add(&mut self, line: ResultLine) {
        let Some(i) = self.slot(&line.custom_id) else {
            return;
        };
        let item = &self.record.items[i];
        let result = match line.outcome {
            Outcome::Succeeded {
                model,
                usage,
                message_id,
            } => {
                let model = model.unwrap_or_else(|| item.model.clone());
                self.succeeded(line.custom_id, model, usage, message_id)
            }
            other => {
                let (outcome, error) = match other {
                    Outcome::Errored { error_type } => (ItemOutcome::Errored, error_type),
                    Outcome::Canceled => (ItemOutcome::Canceled, None),
                    Outcome::Expired => (ItemOutcome::Expired, None),
                    Outcome::Succeeded { .. } => (ItemOutcome::Succeeded, None),
                };
                ItemResult {
                    custom_id: line.custom_id,
                    model: item.model.clone(),
                    outcome,
                    usage: Usage::default(),
                    cost_nusd: 0,
                    priced: true,
                    error,
                    message_id: None,
                }
            }
        };
        self.results[i] = Some(result);
    }

    /// A succeeded item: its tokens × `model`'s batch price at submit.
    fn succeeded(
        &self,
        custom_id: String,
        model: String,
        usage: Usage,
        message_id: Option<String>,
    ) -> ItemResult {
        let at = self.record.created_ts / 1_000_000;
        let cost = self.prices.cost_at(&model, &usage, true, at);
        ItemResult {
            custom_id,
            model,
            outcome: ItemOutcome::Succeeded,
            usage,
            cost_nusd: cost.nusd,
            priced: cost.priced,
            error: None,
            message_id,
        }
    }

    /// The position of `custom_id`'s item, if it is one of the batch's and
    /// not settled yet (else the line is counted as a stray).
    fn slot(&mut self, custom_id: &str) -> Option<usize> {
        match self.index.get(custom_id) {
            Some(&i) if self.results[i].is_none() => Some(i),
            _ => {
                self.strays += 1;
                None
            }
        }
    }

    /// Takes one line of an OpenAI batch's output or error file, as
    /// [`Settlement::add`] does an Anthropic results line. A succeeded item
    /// whose body reported no usage is charged nothing and flagged (its
    /// event says `usage_incomplete`).
    pub fn add_openai(&mut self, line: OpenAiResult) {
        use crate::dialect::openai::batch::ItemOutcome as O;
        let Some(i) = self.slot(&line.custom_id) else {
            return;
        };
        let item = &self.record.items[i];
        let model = line.model.unwrap_or_else(|| item.model.clone());
        let result = match line.outcome {
            O::Succeeded => self.succeeded(
                line.custom_id,
                model,
                line.usage.unwrap_or_default(),
                line.request_id,
            ),
            other => ItemResult {
                custom_id: line.custom_id,
                model,
                outcome: match other {
                    O::Errored | O::Succeeded => ItemOutcome::Errored,
                    O::Cancelled => ItemOutcome::Canceled,
                    O::Expired => ItemOutcome::Expired,
                },
                usage: Usage::default(),
                cost_nusd: 0,
                priced: true,
                error: line.error.and_then(|e| e.code),
                message_id: line.request_id,
            },
        };
        self.results[i] = Some(result);
    }

    /// Every item's settlement, in the batch's order; items the results
    /// did not name are `Missing` (cost 0).
    pub fn finish(self) -> Vec<ItemResult> {
        let items = &self.record.items;
        self.results
            .into_iter()
            .zip(items)
            .map(|(r, item)| {
                r.unwrap_or_else(|| ItemResult {
                    custom_id: item.custom_id.clone(),
                    model: item.model.clone(),
                    outcome: ItemOutcome::Missing,
                    usage: Usage::default(),
                    cost_nusd: 0,
                    priced: true,
                    error: None,
                    message_id: None,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::anthropic::batch::parse_result_line;

    fn record() -> BatchRecord {
        BatchRecord {
            local_id: "tgb_1".into(),
            provider: "anthropic".into(),
            batch_id: Some("msgbatch_1".into()),
            account: "acme".into(),
            workload: "w".into(),
            tags: vec![("team".into(), "x".into())],
            created_ts: 1_780_000_000_000_000,
            items: ["ok", "err", "can", "exp", "gone"]
                .iter()
                .map(|id| BatchItem {
                    custom_id: id.to_string(),
                    model: "claude-sonnet-4-5".into(),
                    reserved_nusd: 1_000_000,
                })
                .collect(),
            reserved_nusd: 5_000_000,
            reserved: vec![Charge {
                budget: "b".into(),
                period: "2026-06".into(),
                nusd: 5_000_000,
            }],
            state: BatchState::Open,
            settled_ts: Some(1_780_000_100_000_000),
            results: Vec::new(),
            endpoint: None,
        }
    }

    #[test]
    fn settlement_prices_succeeded_items_at_the_batch_rate_and_the_rest_at_zero() {
        let mut r = record();
        let prices = PriceTable::builtin();
        let mut s = Settlement::new(&r, &prices);
        for line in [
            r#"{"custom_id":"ok","result":{"type":"succeeded","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":1000,"output_tokens":100,"cache_creation_input_tokens":200,"cache_read_input_tokens":300}}}}"#,
            r#"{"custom_id":"err","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"x"}}}}"#,
            r#"{"custom_id":"can","result":{"type":"canceled"}}"#,
            r#"{"custom_id":"exp","result":{"type":"expired"}}"#,
            r#"{"custom_id":"nobody","result":{"type":"expired"}}"#,
            r#"{"custom_id":"exp","result":{"type":"expired"}}"#,
        ] {
            s.add(parse_result_line(line.as_bytes()).expect("line"));
        }
        assert_eq!(s.strays, 2);
        r.results = s.finish();
        // Sonnet 4.5: $3 in, $15 out, $3.75 5m write, $0.30 read; ×0.5.
        let full = 1000 * 3_000 + 100 * 15_000 + 200 * 3_750 + 300 * 300;
        assert_eq!(r.results[0].cost_nusd, full / 2);
        assert_eq!(r.spent_nusd(), full / 2);
        let outcomes: Vec<_> = r.results.iter().map(|x| x.outcome).collect();
        assert_eq!(
            outcomes,
            [
                ItemOutcome::Succeeded,
                ItemOutcome::Errored,
                ItemOutcome::Canceled,
                ItemOutcome::Expired,
                ItemOutcome::Missing
            ]
        );
        let events = r.events("sc");
        assert_eq!(events.len(), 5);
        assert!(events
            .iter()
            .all(|e| e.route == RouteKind::Batch && e.account == "acme"));
        assert_eq!(events[0].charges[0].nusd, full / 2);
        assert!(events[1].charges.is_empty());
        assert_eq!(events[1].error.as_deref(), Some("invalid_request_error"));
        assert_eq!(events[0].upstream_request_id.as_deref(), Some("msg_1"));
        // The same record settles to the same events, ids included.
        assert_eq!(events, r.events("sc"));
        let ids: std::collections::HashSet<_> = events.iter().map(|e| &e.event_id).collect();
        assert_eq!(ids.len(), 5);
    }

    #[test]
    fn openai_result_lines_settle_as_anthropic_ones_do() {
        use crate::dialect::openai::batch::{parse_results, BatchEndpoint};
        let mut r = record();
        r.provider = "openai".into();
        r.endpoint = Some("/v1/chat/completions".into());
        for item in &mut r.items {
            item.model = "gpt-4o-mini".into();
        }
        let prices = PriceTable::builtin();
        let mut s = Settlement::new(&r, &prices);
        let lines = [
            r#"{"custom_id":"ok","error":null,"id":"batch_req_1","response":{"status_code":200,"request_id":"req_1","body":{"model":"gpt-4o-mini","object":"chat.completion","choices":[],"usage":{"prompt_tokens":130,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":30}}}}}"#,
            r#"{"custom_id":"err","error":null,"id":"batch_req_2","response":{"status_code":400,"request_id":"req_2","body":{"error":{"type":"invalid_request_error","code":null,"message":"x","param":null}}}}"#,
            r#"{"custom_id":"can","error":{"code":"batch_cancelled","message":"x"},"id":"batch_req_3","response":null}"#,
            r#"{"custom_id":"exp","error":{"code":"batch_expired","message":"x"},"id":"batch_req_4","response":null}"#,
            r#"{"custom_id":"ok","error":{"code":"batch_expired","message":"x"},"id":"batch_req_5","response":null}"#,
        ]
        .join("\n");
        for line in parse_results(BatchEndpoint::ChatCompletions, lines.as_bytes(), 1 << 20) {
            s.add_openai(line.expect("line"));
        }
        assert_eq!(s.strays, 1, "a second line for one custom_id");
        r.results = s.finish();
        // gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out; ×0.5.
        let u = Usage {
            input_tokens: 100,
            cache_read_input_tokens: 30,
            output_tokens: 20,
            ..Usage::default()
        };
        assert_eq!(r.results[0].usage, u);
        assert_eq!(
            r.results[0].cost_nusd,
            prices.cost("gpt-4o-mini", &u, true).nusd
        );
        assert_eq!(r.results[0].message_id.as_deref(), Some("req_1"));
        let outcomes: Vec<_> = r.results.iter().map(|x| x.outcome).collect();
        assert_eq!(
            outcomes,
            [
                ItemOutcome::Succeeded,
                ItemOutcome::Errored,
                ItemOutcome::Canceled,
                ItemOutcome::Expired,
                ItemOutcome::Missing
            ]
        );
        assert_eq!(r.spent_nusd(), r.results[0].cost_nusd);
        let events = r.events("sc");
        assert_eq!(events[1].error.as_deref(), Some("invalid_request_error"));
        assert_eq!(events[2].error.as_deref(), Some("canceled"));
        assert!(events.iter().all(|e| e.provider == "openai"));
    }

    #[test]
    fn item_ids_are_deterministic_time_ordered_uuids() {
        let a = item_event_id("anthropic", "msgbatch_1", "x", 1_000_000_000);
        assert_eq!(
            a,
            item_event_id("anthropic", "msgbatch_1", "x", 1_000_000_000)
        );
        assert_ne!(
            a,
            item_event_id("anthropic", "msgbatch_1", "y", 1_000_000_000)
        );
        assert_ne!(
            a,
            item_event_id("anthropic", "msgbatch_2", "x", 1_000_000_000)
        );
        // No ambiguity in how the parts are joined.
        assert_ne!(
            item_event_id("a", "b/c", "", 0),
            item_event_id("a", "b", "c", 0)
        );
        let id = uuid::Uuid::parse_str(&a).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        assert!(a < item_event_id("anthropic", "msgbatch_1", "x", 2_000_000_000));
    }

    #[test]
    fn an_interrupted_submit_is_charged_its_worst_case() {
        let r = record();
        let e = r.interrupted_event("sc");
        assert_eq!(e.status, Status::Interrupted);
        assert_eq!(e.cost_nusd, 5_000_000);
        assert_eq!(e.charges, r.reserved);
        assert_eq!(e, r.interrupted_event("sc"));
        assert!(BatchState::Submitting.holds() && !BatchState::Settled.holds());
        assert_eq!(charges(&r.reserved, 0), Vec::new());
    }
}
