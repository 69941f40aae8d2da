//! Budget: the stage that reserves a request's worst case against every
//! budget that applies before it is forwarded (see [`crate::budget`]),
//! lowers `max_tokens` when a `clamp` budget cannot pay for it, checks a
//! stream's real input at `message_start`, and settles the reservation to
//! the real cost when the usage event is recorded.

use std::sync::Arc;

use super::error::ProxyError;
use super::ingress::{Endpoint, RequestModel, Route};
use super::State;
use crate::budget::estimate::{estimate, output_cost, Estimate};
use crate::budget::{Decision, Denied, Ledger, Reservation};
use crate::dialect::Usage;
use crate::identity::Identity;
use crate::meter::event::{Charge, UsageEvent};

/// A request's hold on its budgets, from reservation to settlement.
pub struct Guard {
    ledger: Arc<Ledger>,
    /// `None` once settled.
    reservation: Option<Reservation>,
    pub estimate: Estimate,
    /// `max_tokens` lowered by a clamp budget.
    pub clamped: Option<u64>,
    /// The `message_start` check was done (streams).
    pub start_checked: bool,
    /// The output bound sent upstream is not the client's (a clamp, or
    /// `budget_default_max_tokens` for a request without one).
    pub bound_rewritten: bool,
    /// What earlier attempts of a routed request may have been billed
    /// without an answer (a first-byte timeout): settled with the rest.
    pub also_spent: u64,
}

/// Reserves the request's worst case, rewriting its `max_tokens` when a
/// budget clamps it or when it has none. `None` when no budget applies.
pub async fn reserve(
    state: &State,
    id: &Identity,
    route: &Route,
    method: &http::Method,
    request: &mut RequestModel,
    routed: Option<&Estimate>,
) -> Result<Option<Guard>, ProxyError> {
    let ledger = &state.ledger;
    if ledger.is_empty() {
        return Ok(None);
    }
    if route.is_batch() || super::batch::openai::is_files(route) {
        // Batches (Anthropic and OpenAI): a create reserves its items in
        // the batch stage; the other calls (retrieve, list, cancel,
        // results, OpenAI's file uploads and downloads) spend nothing.
        return Ok(None);
    }
    if route.endpoint == Endpoint::Passthrough {
        // Unmetered endpoints (batches, embeddings, responses…) cannot be
        // reserved for: under a budget, only reads pass.
        let read = matches!(*method, http::Method::GET | http::Method::HEAD);
        if !read && ledger.applies(id) {
            return Err(ProxyError::Forbidden(format!(
                "{method} {} is not metered by tollgate and a budget applies to account {:?}: only metered endpoints (messages, chat completions) may spend",
                route.upstream_path, id.account
            )));
        }
        return Ok(None);
    }
    if route.endpoint == Endpoint::CountTokens {
        return Ok(None);
    }
    // Embeddings have no output to bound: their worst case is their input.
    let has_output = route.endpoint.has_output();
    let max_tokens = match has_output {
        true => request
            .max_tokens
            .unwrap_or(state.budget_default_max_tokens),
        false => 0,
    };
    // A routed request reserves the largest worst case among its targets.
    let est = match routed {
        Some(worst) => *worst,
        None => estimate(
            state.recorder.prices(),
            &request.model,
            &request.body,
            max_tokens,
            request.choices,
        ),
    };
    let (reservation, clamped) = match decide(state, id, &est).await {
        Decision::Admit(r) => (r, None),
        Decision::Clamp(r, n, budget) => {
            state
                .metrics
                .budget_denials
                .with_label_values(&[&budget, "clamped"])
                .inc();
            (r, Some(n))
        }
        Decision::Deny(denied) => {
            state
                .metrics
                .budget_denials
                .with_label_values(&[&denied.budget, "denied"])
                .inc();
            if denied.lease {
                state
                    .leases
                    .metrics
                    .denials
                    .with_label_values(&[&denied.budget])
                    .inc();
            }
            return Err(ProxyError::BudgetExceeded(denied));
        }
        // `decide` never answers this.
        Decision::AwaitLease => return Err(ProxyError::Internal("lease wait".into())),
    };
    if reservation.is_empty() {
        return Ok(None);
    }
    // From here on the guard owns the reservation: an error below drops it,
    // which releases it.
    let mut guard = Guard {
        ledger: ledger.clone(),
        reservation: Some(reservation),
        estimate: est,
        clamped,
        start_checked: false,
        bound_rewritten: false,
        also_spent: 0,
    };
    let bound = clamped.or((has_output && request.max_tokens.is_none()).then_some(max_tokens));
    if let Some(n) = bound {
        guard.bound_rewritten = true;
        // The bound reserved must be the bound sent.
        request.set_max_tokens(n, &route.provider.name, route.dialect())?;
        guard.estimate = guard.estimate.with_max_tokens(n);
    }
    Ok(Some(guard))
}

/// The ledger's decision; when a leased budget's lease is short, after
/// waiting at most `lease_wait` for the renewal task to grant more.
async fn decide(state: &State, id: &Identity, est: &Estimate) -> Decision {
    let ledger = &state.ledger;
    let leases = &state.leases;
    // Subscribed before asking, so a grant landing in between is seen.
    let mut changed = leases.subscribe();
    changed.borrow_and_update();
    let first = ledger.reserve_or_wait(id, est);
    if !matches!(first, Decision::AwaitLease) {
        return first;
    }
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + leases.wait;
    // The first renewal to land may have left before this request asked;
    // the second surely carried its need. After it, the answer is final.
    let mut renewals = 0;
    let decision = loop {
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            break ledger.reserve(id, est);
        }
        renewals += 1;
        if renewals >= 2 {
            break ledger.reserve(id, est);
        }
        match ledger.reserve_or_wait(id, est) {
            Decision::AwaitLease => continue,
            d => break d,
        }
    };
    let m = &leases.metrics;
    m.wait_seconds.observe(started.elapsed().as_secs_f64());
    let outcome = match decision {
        Decision::Deny(_) => "denied",
        _ => "granted",
    };
    m.waits.with_label_values(&[outcome]).inc();
    decision
}

/// The worst case of a request no budget reserved for (its open record
/// still carries one, so a crash while it is at the provider is priced):
/// the output bound is the request's, else `budget_default_max_tokens`.
/// Unmetered endpoints cost nothing tollgate can price.
pub fn worst_case(state: &State, route: &Route, request: &RequestModel) -> u64 {
    if !route.endpoint.is_metered() {
        return 0;
    }
    let max_tokens = match route.endpoint.has_output() {
        true => request
            .max_tokens
            .unwrap_or(state.budget_default_max_tokens),
        false => 0,
    };
    estimate(
        state.recorder.prices(),
        &request.model,
        &request.body,
        max_tokens,
        request.choices,
    )
    .worst_nusd
}

impl Guard {
    /// At a stream's `message_start`: when the real input costs more than
    /// estimated, grow the reservation; refuse when a budget cannot cover it.
    pub fn check_start(&mut self, state: &State, model: &str, usage: &Usage) -> Result<(), Denied> {
        self.start_checked = true;
        let input = Usage {
            output_tokens: 0,
            reported_cost_nusd: None,
            ..*usage
        };
        let (price, _) = state.recorder.prices().price_or_fallback(model);
        let rate = crate::meter::prices::premium_rate(
            price.rates_for(input.total_input()).output,
            usage.fast,
            usage.us_only,
        );
        let needed = price
            .cost(&input, false)
            .saturating_add(output_cost(rate, self.estimate.max_tokens));
        let Some(reservation) = self.reservation.as_mut() else {
            return Ok(());
        };
        let extra = needed.saturating_sub(reservation.amount);
        let result = self.ledger.extend(reservation, extra);
        if let Err(denied) = &result {
            state
                .metrics
                .budget_denials
                .with_label_values(&[&denied.budget, "stream_input"])
                .inc();
        }
        result
    }

    /// Replaces the reservation by what the call really cost. When the
    /// usage is incomplete (an abort, a cut) but the request reached the
    /// provider, the provider may have billed up to the worst case: the
    /// reservation is kept as spent, never less.
    /// Returns what was spent per budget period (for the usage journal).
    pub fn settle(mut self, event: &UsageEvent, sent_upstream: bool) -> Vec<Charge> {
        let Some(reservation) = self.reservation.take() else {
            return Vec::new();
        };
        let actual = if !event.usage_incomplete || !sent_upstream {
            event.cost_nusd
        } else {
            event.cost_nusd.max(reservation.amount)
        }
        .saturating_add(self.also_spent);
        let charges = self.ledger.charges(&reservation, Some(actual));
        self.ledger.settle(reservation, actual);
        charges
    }

    /// The worst case the guard holds, nano-USD.
    pub fn reserved_nusd(&self) -> u64 {
        self.reservation.as_ref().map_or(0, |r| r.amount)
    }

    /// What the guard holds: the worst case and its parts per budget period
    /// (a request's open record).
    pub fn reserved(&self) -> (u64, Vec<Charge>) {
        match &self.reservation {
            Some(r) => (r.amount, self.ledger.charges(r, None)),
            None => (0, Vec::new()),
        }
    }
}

impl Drop for Guard {
    /// A guard dropped unsettled never reached the provider (every path
    /// that sends settles explicitly): release its reservation.
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.ledger.settle(reservation, 0);
        }
    }
}
