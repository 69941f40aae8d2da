//! Limit: the rate-limit stage. Takes one request and the request's
//! estimated tokens from every bucket that applies, or answers 429 with
//! `retry-after` and `x-ratelimit-*` headers (see [`crate::limit`]).

use std::sync::Arc;
use std::time::Instant;

use super::error::ProxyError;
use super::ingress::RequestModel;
use super::State;
use crate::identity::Identity;
use crate::limit::{Admission, Limiter};

/// Admits the request or refuses it; `None` when no limit is in force.
/// The admission comes with the limiter that made it (a sync may put
/// another in force before the request settles).
pub fn admit(
    state: &State,
    id: &Identity,
    request: &RequestModel,
) -> Result<Option<(Arc<Limiter>, Admission)>, ProxyError> {
    let limiter = state.fleet.limiter();
    if limiter.is_empty() {
        return Ok(None);
    }
    // Input ≈ a token per 4 bytes until the real count is known.
    let tokens = (request.body.len() as u64)
        .div_ceil(4)
        .saturating_add(request.max_tokens.unwrap_or(0));
    match limiter.admit(id, tokens, Instant::now()) {
        Ok(admission) => Ok(Some((limiter, admission))),
        Err(limited) => {
            state
                .metrics
                .rate_limited
                .with_label_values(&[&limited.rule, limited.kind.as_str()])
                .inc();
            Err(ProxyError::RateLimited(limited))
        }
    }
}
