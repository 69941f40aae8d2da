//! The exchange: one request on its way through the stages. Built once in
//! `request_filter`; the stages that may end a request (a hit, a follower,
//! the relay, a failure) take it by value, so a request is answered and
//! recorded exactly once and no stage has to ask whether it still exists.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::budget;
use super::lifecycle::{InFlight, InFlightGuard};
use super::State;
use crate::cache::flight::Leader;
use crate::cache::CacheWrite;
use crate::dialect::Dialect;
use crate::limit::{Admission, Limiter};
use crate::meter::event::{CacheOutcome, Charge, OpenRecordRef, Status, UsageEvent};
use crate::proxy::recorder::{Recorder, UpstreamTimes};
use crate::store::journal::Load;

/// Why tollgate cut a relay short; recorded as the event's `error` kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The upstream sent nothing for longer than the idle timeout.
    IdleTimeout,
    /// The upstream connection broke before the answer's end.
    UpstreamCut,
    /// A budget cannot pay for the stream's real input (`message_start`).
    BudgetExceeded,
    /// A non-streaming answer too large to read whole: piped unmetered.
    TooLargeToMeter,
    /// The sidecar shut down before the answer's end.
    Shutdown,
}

impl Cut {
    /// The event's `error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::IdleTimeout => "upstream_idle_timeout",
            Cut::UpstreamCut => "upstream_cut",
            Cut::BudgetExceeded => "budget_exceeded",
            Cut::TooLargeToMeter => "response_too_large_to_meter",
            Cut::Shutdown => "shutdown",
        }
    }
}

/// One request and everything it carries from stage to stage.
pub struct Exchange {
    /// Its usage event, in the making.
    pub draft: Draft,
    /// It leads a coalesced flight: identical requests wait on its answer.
    pub leader: Option<Leader>,
    /// Where its complete answer is to be cached.
    pub cache_write: Option<CacheWrite>,
    /// It is the first with its `Idempotency-Key`: its complete answer is
    /// kept for retries (dropped unused, the key is released).
    pub idempotency: Option<crate::idempotency::Claim>,
    /// Its answer holds Anthropic batch objects: their `results_url` are
    /// pointed at this base (where the client reaches tollgate) before the
    /// client sees them, so the results come through tollgate too.
    pub results_base: Option<String>,
    /// A batch create's reservation and record, concluded by its answer.
    /// (Boxed, like `upload`: rare, and inline they would be copied with
    /// every exchange's every move.)
    pub batch: Option<Box<super::batch::Pending>>,
    /// An OpenAI batch input file's priced items, kept once the provider
    /// names the file.
    pub upload: Option<Box<super::batch::openai::PendingUpload>>,
    /// A gateway batch submit (`POST /api/v1/llm/batch`): an accepted
    /// batch is answered with tollgate's record of it, not the provider's
    /// batch object.
    pub gateway_batch: bool,
    /// Counts it in flight (the SIGTERM drain waits for it) until dropped;
    /// a stage that takes the exchange apart keeps it to its end.
    pub in_flight: InFlightGuard,
}

impl Exchange {
    /// A new request, in the client's `dialect` as far as it is known yet.
    pub fn new(state: &State, started: Instant, dialect: Dialect) -> Exchange {
        Exchange {
            draft: Draft::new(state, uuid::Uuid::now_v7(), started, dialect),
            leader: None,
            cache_write: None,
            idempotency: None,
            results_base: None,
            batch: None,
            upload: None,
            gateway_batch: false,
            in_flight: state.in_flight.enter(),
        }
    }
}

impl Draft {
    fn new(state: &State, id: uuid::Uuid, started: Instant, dialect: Dialect) -> Draft {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Draft {
            event: UsageEvent {
                event_id: id.to_string(),
                ts,
                sidecar_id: state.sidecar_id.clone(),
                account: state.default_identity.account.clone(),
                workload: state.default_identity.workload.clone(),
                tags: state.default_identity.tags.clone(),
                priced: true,
                ..UsageEvent::default()
            },
            started,
            client_dialect: dialect,
            recorder: state.recorder.clone(),
            recorded: false,
            unqueued: None,
            in_flight: state.in_flight.clone(),
            guard: None,
            admission: None,
            sent_upstream: false,
            clamped_max_tokens: None,
            cut: None,
            attempts: None,
        }
    }
}

/// A usage event in the making. Recorded exactly once: by the meter, by the
/// error path, or, when the request is dropped half-way (client gone,
/// shutdown), by `Drop`, so no request ever goes unrecorded.
pub struct Draft {
    pub event: UsageEvent,
    pub started: Instant,
    /// The client's dialect (its errors and answers are in it); the
    /// route carries the upstream's.
    pub client_dialect: Dialect,
    recorder: Arc<Recorder>,
    recorded: bool,
    /// What the recorded event spent, until the event is queued.
    unqueued: Option<Vec<Charge>>,
    /// Tells a request dropped by the shutdown from one its client left.
    in_flight: InFlight,
    /// The budget reservation, settled when the event is recorded.
    pub guard: Option<budget::Guard>,
    /// The rate-limit charge, corrected when the event is recorded.
    pub admission: Option<(Arc<Limiter>, Admission)>,
    /// The request went out to the provider (which may bill it).
    pub sent_upstream: bool,
    /// `max_tokens` lowered by a clamp budget (a receipt header).
    pub clamped_max_tokens: Option<u64>,
    /// Why the relay was cut short, if it was.
    pub cut: Option<Cut>,
    /// A routed request's attempts, `provider/model=outcome, …` (the
    /// `x-tollgate-attempts` receipt).
    pub attempts: Option<String>,
}

impl Draft {
    /// Marks the relay as cut short by `cut`.
    pub fn cut(&mut self, cut: Cut) {
        self.cut = Some(cut);
        self.event.error = Some(cut.as_str().to_owned());
    }

    /// Records an event that carries no spend (a cache hit, a coalesced
    /// request).
    pub fn record_detached(&mut self) {
        self.record(None);
    }

    /// Records the event: the budget is settled and the metrics count it
    /// now (the next request and a scrape see both), and the event is
    /// queued for the usage journal's next group commit by [`Draft::queue`]
    /// once the client has its answer, or when the draft is dropped. The
    /// request was made durable by its open record before it was sent, so
    /// a crash in between leaves it `interrupted`, never lost.
    pub fn record(&mut self, times: Option<UpstreamTimes>) {
        self.event.latency_us = self.started.elapsed().as_micros() as u64;
        self.recorded = true;
        // Settled before the event is queued: the journal's watermark
        // counts on it (see `crate::store::journal`).
        let charges = self.settle();
        if !charges.is_empty() {
            self.event.charges = charges.clone();
        }
        self.recorder.count(&self.event, times);
        self.unqueued = Some(charges);
    }

    /// Queues the recorded event for the journal (no wait), off the path
    /// to the client's last byte: call it after the last write. Once only;
    /// a no-op before [`Draft::record`].
    pub fn queue(&mut self) {
        if let Some(charges) = self.unqueued.take() {
            self.recorder
                .queue(std::mem::take(&mut self.event), charges);
        }
    }

    /// Journals the open record (what the request may cost and what it
    /// reserved) and waits for it to be committed: right before the
    /// request's first byte goes to the provider, and again when a stream's
    /// reservation grows (the later record replaces the earlier).
    pub async fn open(&mut self, worst_nusd: u64) {
        let (reserved_nusd, reserved) = self
            .guard
            .as_ref()
            .map(budget::Guard::reserved)
            .unwrap_or_default();
        let record = OpenRecordRef::of(&self.event, worst_nusd.max(reserved_nusd), &reserved);
        let load = if self.in_flight.alone() {
            Load::Alone
        } else {
            Load::Shared
        };
        if let Err(e) = self.recorder.open(record, load).await {
            // Like a full disk for events: the traffic goes on, the log and
            // `tollgate_outbox_errors_total` say what was not recorded.
            tracing::error!(request_id = %self.event.event_id, error = %e, "open usage record not durable");
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if self.recorded {
            self.queue();
            return;
        }
        if self.event.status == Status::Ok {
            // Dropped after the grace: the shutdown's doing, not the client's.
            self.event.status = if self.in_flight.cutting() {
                Status::Shutdown
            } else {
                Status::ClientAborted
            };
            self.event.usage_incomplete = true;
        }
        self.record(None);
        self.queue();
    }
}

impl Draft {
    /// Settles the budget reservation and the rate-limit charge to the
    /// event's real cost and tokens; returns what was spent per budget period.
    fn settle(&mut self) -> Vec<Charge> {
        let charges = match self.guard.take() {
            Some(guard) => guard.settle(&self.event, self.sent_upstream),
            None => Vec::new(),
        };
        if let Some((limiter, admission)) = self.admission.take() {
            let e = &self.event;
            // Served without the provider: no provider tokens were used.
            let local = matches!(e.cache, CacheOutcome::Hit | CacheOutcome::Coalesced);
            let tokens = if local { 0 } else { e.usage.total() };
            limiter.settle(&admission, tokens, Instant::now());
        }
        charges
    }
}
