//! Routing: which targets (`provider/model`) a request may be sent to, in
//! which order, and what to do after each attempt. Pure: time is passed in
//! as `Instant`s, jitter through [`Jitter`]; the proxy does the I/O.
//!
//! How the proxy uses it, per request:
//! 1. [`Router::plan`] with the requested model, the provider the path
//!    selects, the account and the `x-tollgate-fallback` header: the
//!    ordered [`Plan`] (a [`RouteError`] is a 400 or 403).
//! 2. [`Plan::worst_case`]: what the budget reserves (the largest worst case
//!    among the candidates, each with its `max_tokens` cap).
//! 3. [`Plan::attempts`] then [`Attempts::first`]: the first candidate to
//!    try; after each attempt [`Attempts::report`] with its [`Outcome`]:
//!    [`Next::Try`] another (after a wait) or [`Next::Stop`].
//!
//! Resolution of the requested model:
//! - `auto` → `[routing] default_alias` (without one: the model `auto`,
//!   passed through as today).
//! - An alias name → its targets, ordered by its [`Policy`].
//! - Anything else → one native target: the path's provider and the model
//!   as sent (today's behaviour).
//! - The header's targets follow as fallbacks (a target already in the
//!   plan is kept once, at its first place).
//!
//! Circuit breakers skip a candidate whose breaker is open, but only when
//! the plan has another: a lone target is always tried (its outcome still
//! feeds its breaker), so a request without alternatives is never refused
//! by a breaker where it would have been sent before routing existed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::budget::estimate::Estimate;
use crate::meter::prices::PriceTable;

mod attempts;
pub mod breaker;
mod health;
mod policy;
pub mod retry;
mod target;

pub use attempts::{Attempts, Next, Step, StepKind, StopReason};
pub use breaker::{BreakerSettings, BreakerState, Transitions};
pub use health::{Health, TargetStatus, MAX_TRACKED, TTFT_ALPHA};
pub use policy::{order, worst_case, Policy, Sizing};
pub use retry::{parse_retry_after, Jitter, Outcome, SplitMix, UpstreamError};
pub use target::{parse_header, Target, TargetPattern, MAX_HEADER_TARGETS};

/// The model name that resolves to the default alias.
pub const AUTO: &str = "auto";

/// A request the router cannot plan; the proxy answers it itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The `x-tollgate-fallback` header is malformed.
    #[error("x-tollgate-fallback: {0}")]
    BadHeader(String),
    /// The header names a provider that is not configured.
    #[error("x-tollgate-fallback: {0}: no such provider")]
    UnknownProvider(Target),
    /// The header names a target this account may not use.
    #[error("x-tollgate-fallback: {0} is not allowed for this account")]
    NotAllowed(Target),
}

impl RouteError {
    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::BadHeader(_) | RouteError::UnknownProvider(_) => 400,
            RouteError::NotAllowed(_) => 403,
        }
    }

    /// The `x-tollgate-error` kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::BadHeader(_) => "bad_fallback_header",
            RouteError::UnknownProvider(_) => "unknown_fallback_provider",
            RouteError::NotAllowed(_) => "fallback_not_allowed",
        }
    }
}

/// One target of an alias, with its overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasTarget {
    /// Where to send.
    pub target: Target,
    /// Caps the request's output bound for this target.
    pub max_tokens: Option<u64>,
}

/// A configured alias (`[aliases.<name>]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// How its targets are ordered per request.
    pub policy: Policy,
    /// In config order.
    pub targets: Vec<AliasTarget>,
}

/// The routing settings (`[aliases.*]` and `[routing]`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// By name.
    pub aliases: BTreeMap<String, Alias>,
    /// What `auto` resolves to.
    pub default_alias: Option<String>,
    /// Attempts per request, all targets together (at least 1).
    pub max_attempts: u32,
    /// Time for all attempts of a request, backoff included.
    pub deadline: Duration,
    /// First retry's backoff ceiling; doubles per retry.
    pub backoff_base: Duration,
    /// Largest backoff ceiling (a `retry-after` may ask for more).
    pub backoff_max: Duration,
    /// Per-target circuit breakers.
    pub breaker: BreakerSettings,
    /// Whether 400/401/402/403/404/413 fall back to another target.
    pub fallback_on_client_errors: bool,
    /// Targets an `x-tollgate-fallback` header may name.
    pub header_targets: Vec<TargetPattern>,
    /// Per-account replacements of `header_targets`.
    pub account_header_targets: BTreeMap<String, Vec<TargetPattern>>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            aliases: BTreeMap::new(),
            default_alias: None,
            max_attempts: 3,
            deadline: Duration::from_secs(60),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            breaker: BreakerSettings::default(),
            fallback_on_client_errors: false,
            header_targets: vec![TargetPattern::Any],
            account_header_targets: BTreeMap::new(),
        }
    }
}

/// What the router needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The model the client asked for.
    pub model: &'a str,
    /// The provider the request's path selects (its prefix, or the default
    /// provider of the client's dialect): where a native model goes.
    pub native_provider: &'a str,
    /// The request's account.
    pub account: &'a str,
    /// The `x-tollgate-fallback` header, if sent.
    pub fallback_header: Option<&'a str>,
    /// The request's size, for `cheapest`.
    pub sizing: Sizing<'a>,
}

/// One target a request may be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Where.
    pub target: Target,
    /// Caps the output bound for this target (an alias override).
    pub max_tokens: Option<u64>,
}

impl Candidate {
    /// The output bound sent to this target: the request's, capped.
    pub fn output_bound(&self, requested: u64) -> u64 {
        self.max_tokens.map_or(requested, |cap| cap.min(requested))
    }
}

/// The ordered candidates of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The alias the model named, if it named one (`auto` resolved).
    pub alias: Option<String>,
    /// In the order they are tried.
    pub candidates: Vec<Candidate>,
}

impl Plan {
    /// The largest worst case among the candidates: what the budget reserves.
    pub fn worst_case(&self, prices: &PriceTable, sizing: &Sizing<'_>) -> Option<Estimate> {
        worst_case(&self.candidates, prices, sizing)
    }

    /// The attempts of this plan, starting at `now`.
    pub fn attempts(self, routing: &Routing, now: Instant) -> Attempts {
        Attempts::new(self, routing, now)
    }
}

/// The router: settings, the configured provider names, and the health of
/// every target. Shared by all worker threads (`Arc<Router>`).
#[derive(Debug)]
pub struct Router {
    routing: Routing,
    providers: Vec<String>,
    health: Health,
    /// The config's aliases joined by a control endpoint's (swapped whole
    /// when a snapshot lands; a config alias keeps its name).
    aliases: ArcSwap<BTreeMap<String, Alias>>,
}

impl Router {
    /// A router over `routing`; `providers` are the configured provider
    /// names the header may name.
    pub fn new(routing: Routing, providers: Vec<String>) -> Router {
        let health = Health::new(routing.breaker);
        Router {
            aliases: ArcSwap::from_pointee(routing.aliases.clone()),
            routing,
            providers,
            health,
        }
    }

    /// The aliases in force: the config's and the control endpoint's.
    pub fn aliases(&self) -> Arc<BTreeMap<String, Alias>> {
        self.aliases.load_full()
    }

    /// Whether `name` is an alias in force.
    pub fn is_alias(&self, name: &str) -> bool {
        self.aliases.load().contains_key(name)
    }

    /// Replaces the control endpoint's aliases by `synced`. A name the
    /// config already defines keeps the config's alias; those names are
    /// returned (for a warning).
    pub fn set_synced_aliases(&self, synced: BTreeMap<String, Alias>) -> Vec<String> {
        let mut all = self.routing.aliases.clone();
        let mut shadowed = Vec::new();
        for (name, alias) in synced {
            match all.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => shadowed.push(e.key().clone()),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(alias);
                }
            }
        }
        self.aliases.store(Arc::new(all));
        shadowed
    }

    /// The settings.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// The targets' breakers and latency averages.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The candidates of `req`, in the order they are tried.
    pub fn plan(&self, req: &RouteRequest<'_>, prices: &PriceTable) -> Result<Plan, RouteError> {
        let header = match req.fallback_header {
            Some(v) => parse_header(v, &self.providers, self.allowed(req.account))?,
            None => Vec::new(),
        };
        let name = match req.model {
            AUTO => self.routing.default_alias.as_deref().unwrap_or(AUTO),
            m => m,
        };
        let aliases = self.aliases.load();
        let (alias, mut candidates) = match aliases.get(name) {
            Some(a) => {
                let mut c: Vec<Candidate> = a
                    .targets
                    .iter()
                    .map(|t| Candidate {
                        target: t.target.clone(),
                        max_tokens: t.max_tokens,
                    })
                    .collect();
                order(a.policy, &mut c, prices, &req.sizing, |c| {
                    self.health.ttft(&c.target)
                });
                (Some(name.to_string()), c)
            }
            None => (
                None,
                vec![Candidate {
                    target: Target::new(req.native_provider, req.model),
                    max_tokens: None,
                }],
            ),
        };
        for t in header {
            if !candidates.iter().any(|c| c.target == t) {
                candidates.push(Candidate {
                    target: t,
                    max_tokens: None,
                });
            }
        }
        Ok(Plan { alias, candidates })
    }

    /// The patterns the header of `account`'s requests must match.
    fn allowed(&self, account: &str) -> &[TargetPattern] {
        self.routing
            .account_header_targets
            .get(account)
            .unwrap_or(&self.routing.header_targets)
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
