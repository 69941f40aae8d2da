//! Helpers of the routing tests: a small request and pinned jitter.

use super::{Jitter, Sizing};

/// A one-message request body.
pub(super) const BODY: &[u8] = br#"{"messages":[{"role":"user","content":"hi"}]}"#;

/// [`BODY`] with 1000 output tokens, one choice.
pub(super) fn sizing() -> Sizing<'static> {
    Sizing {
        body: BODY,
        max_tokens: 1000,
        choices: 1,
    }
}

/// Jitter that always waits the longest.
pub(super) struct Max;

impl Jitter for Max {
    fn upto(&mut self, max: u64) -> u64 {
        max
    }
}
